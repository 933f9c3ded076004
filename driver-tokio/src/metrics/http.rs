//! `GET /metrics` over a minimal HTTP/1.1 handler on tokio: one request per
//! connection (`Connection: close`), any other path 404, any other method
//! 405. Connections are served one at a time, each within
//! [`REQUEST_TIMEOUT`], with the request head capped at [`MAX_HEAD`] bytes:
//! a scraper is one client polling every few seconds, and a slow or
//! hostile one cannot hold the node's resources.
//!
//! Before encoding, the handler asks the event loop for its status (the
//! request `rkv status` sends) and records it ([`Metrics::record_status`]);
//! if the loop does not answer within [`STATUS_TIMEOUT`] the scrape is
//! served with the state recorded last.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::Metrics;
use crate::node::{Input, NodeError};
use crate::wire::{ClientRequest, ClientResponse};

/// The most a request head may take, in bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a connection has to send its request and take the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a scrape waits for the event loop's status.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// The exposition's content type (OpenMetrics text, as Prometheus asks for).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds the endpoint's listener (`--metrics-addr`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, NodeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { addr, source })?;
    info!(%addr, "serving metrics at /metrics");
    Ok(listener)
}

/// Serves `GET /metrics` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, node: mpsc::Sender<Input>) {
    loop {
        let (stream, addr) = crate::transport::accept(&listener, "metrics").await;
        let served = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &metrics, &node)).await;
        match served {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(%addr, error = %e, "metrics request failed"),
            Err(_) => debug!(%addr, "metrics request timed out"),
        }
    }
}

async fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    node: &mpsc::Sender<Input>,
) -> std::io::Result<()> {
    let head = read_head(&mut stream).await?;
    let (status, content_type, body) = match request_line(&head) {
        Some(("GET", "/metrics")) => {
            refresh(metrics, node).await;
            ("200 OK", CONTENT_TYPE, metrics.encode())
        }
        Some(("GET", _)) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".into(),
        ),
        Some(_) => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
        None => ("400 Bad Request", "text/plain", "bad request\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the blank line that ends a request head.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(std::io::Error::other("request head too long"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(head)
}

/// The method and path (without a query) of `METHOD PATH HTTP/1.x`.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = std::str::from_utf8(head).ok()?.lines().next()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    Some((method, target.split('?').next().unwrap_or(target)))
}

/// Records the event loop's status, if it answers in time.
async fn refresh(metrics: &Metrics, node: &mpsc::Sender<Input>) {
    let (respond, mut answers) = mpsc::channel(1);
    let ask = Input::Client {
        request: ClientRequest::Status { id: 0 },
        respond,
    };
    if node.send(ask).await.is_err() {
        return;
    }
    match tokio::time::timeout(STATUS_TIMEOUT, answers.recv()).await {
        Ok(Some(ClientResponse::Status { status, .. })) => metrics.record_status(&status),
        _ => debug!("no status from the event loop for the scrape"),
    }
}

#[cfg(test)]
mod tests {
    use super::request_line;

    #[test]
    fn request_lines() {
        let get = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(request_line(get), Some(("GET", "/metrics")));
        assert_eq!(
            request_line(b"POST / HTTP/1.0\r\n\r\n"),
            Some(("POST", "/"))
        );
        assert_eq!(request_line(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(request_line(b"GET /metrics SPDY/3\r\n\r\n"), None);
    }
}
