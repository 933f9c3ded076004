//! TLS for every link (rustls, the `ring` provider), and the one stream type
//! the transport and the client read and write, plaintext or TLS.
//!
//! What is verified:
//!
//! - Peer links are mutual TLS. The acceptor takes a peer only with a
//!   certificate that chains to the cluster's CA (`--tls-ca`); the dialler
//!   presents the node's own certificate (`--tls-cert`, `--tls-key`) and
//!   verifies the acceptor's against the CA and the IP address it dialled.
//! - Client links are server TLS: the client verifies the server's
//!   certificate against its CA and the IP address it dialled; with
//!   `--client-cert-auth` the server also demands a client certificate that
//!   chains to the CA.
//!
//! So a node's certificate names its addresses as IP subject alternative
//! names (peer and client address, which `--peers`, `--client-addr` and the
//! members' recorded addresses give as IPs), and serves both as a server and
//! as a client certificate (it dials its peers, and asks other servers for
//! their status when it joins). A certificate binds no node id: any holder
//! of a certificate from the cluster's CA may claim any id in its hello.
//!
//! Without `--tls-*` every link is plaintext (the loopback quick start). A
//! port tells a caller that speaks the other way what is wrong from the
//! connection's first two bytes ([`raft_wire::looks_like_tls`]): a TLS port
//! answers a plaintext hello with a plaintext `Refused(TlsRequired)`, and a
//! plaintext port a TLS handshake with `Refused(PlaintextOnly)`, which the
//! TLS client reads as a corrupt record and reports as a TLS failure ("does
//! the server speak TLS?").

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{info, warn};

/// A node's TLS files, as `rkv serve` takes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The node's certificate chain (PEM), leaf first (`--tls-cert`).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1) (`--tls-key`).
    pub key: PathBuf,
    /// The cluster's CA certificates (PEM) (`--tls-ca`).
    pub ca: PathBuf,
    /// Demand a client certificate from the CA on the client port too
    /// (`--client-cert-auth`).
    pub client_cert_auth: bool,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the certificates or the key (a key that does not
    /// match the certificate, say).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The CA could not serve to verify client certificates.
    #[error("TLS configuration: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A node's TLS, loaded: how it accepts peers and clients and how it dials
/// (its peers, and other servers as a client).
#[derive(Clone)]
pub struct NodeTls {
    peers: TlsAcceptor,
    clients: TlsAcceptor,
    dialler: ClientTls,
}

impl NodeTls {
    /// Loads the files and builds the configurations.
    pub fn load(files: &TlsFiles) -> Result<NodeTls, TlsError> {
        let roots = Arc::new(load_roots(&files.ca)?);
        let chain = load_chain(&files.cert)?;
        let key = load_key(&files.key)?;
        let provider = provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let server = || {
            ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
        };
        let peers = server()?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(chain.clone(), key.clone_key())?;
        let clients = if files.client_cert_auth {
            server()?.with_client_cert_verifier(verifier)
        } else {
            server()?.with_no_client_auth()
        }
        .with_single_cert(chain.clone(), key.clone_key())?;
        let dialler = ClientTls::build(roots, Some((chain, key)))?;
        Ok(NodeTls {
            peers: TlsAcceptor::from(Arc::new(peers)),
            clients: TlsAcceptor::from(Arc::new(clients)),
            dialler,
        })
    }

    /// How the node dials: its certificate presented, the other side's
    /// verified against the CA.
    pub fn dialler(&self) -> &ClientTls {
        &self.dialler
    }

    /// The acceptor of the peer port (a certificate from the CA demanded).
    pub fn peer_acceptor(&self) -> &TlsAcceptor {
        &self.peers
    }

    /// The acceptor of the client port.
    pub fn client_acceptor(&self) -> &TlsAcceptor {
        &self.clients
    }
}

/// A client's TLS: the CA that the servers' certificates must chain to,
/// and optionally the certificate it presents (for `--client-cert-auth`).
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// Loads the CA certificates (`ca`, PEM) and, if given, the client's
    /// certificate chain and key (PEM).
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, TlsError> {
        let roots = Arc::new(load_roots(ca)?);
        let identity = match identity {
            Some((cert, key)) => Some((load_chain(cert)?, load_key(key)?)),
            None => None,
        };
        ClientTls::build(roots, identity)
    }

    fn build(
        roots: Arc<RootCertStore>,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<ClientTls, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
            None => builder.with_no_client_auth(),
        };
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// The TLS handshake over `tcp`, connected to `addr`, whose certificate
    /// must name `addr`'s IP.
    pub async fn connect(&self, addr: SocketAddr, tcp: TcpStream) -> io::Result<Stream> {
        let name = ServerName::IpAddress(addr.ip().into());
        let tls = self.connector.connect(name, tcp).await?;
        Ok(Stream::Tls(Box::new(tls.into())))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(path, e))?;
    if chain.is_empty() {
        return Err(file_error(path, "no PEM certificate in it"));
    }
    Ok(chain)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_chain(path)? {
        roots.add(cert).map_err(|e| file_error(path, e))?;
    }
    Ok(roots)
}

/// Says how the links are secured (once, as a node starts): plaintext is
/// for a loopback cluster.
pub fn log_link_security(tls: Option<&TlsFiles>, listening: &[SocketAddr]) {
    match tls {
        Some(files) => info!(
            ca = %files.ca.display(),
            client_cert_auth = files.client_cert_auth,
            "links are TLS: peers mutually authenticated by the CA"
        ),
        None if listening.iter().all(|a| a.ip().is_loopback()) => {
            info!("links are plaintext (no --tls-cert): fine on loopback only")
        }
        None => warn!("links are plaintext (no --tls-cert) on a non-loopback address"),
    }
}

/// A connection, plaintext or TLS: what the transport and the client read
/// and write.
pub enum Stream {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS, client or server side.
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Stream {
    /// Its read and write halves, to use from two tasks. A plaintext
    /// connection splits into the socket's own halves (no lock between
    /// them); a TLS one, whose session state both halves share, behind
    /// `tokio::io::split`'s lock.
    pub fn split(self) -> (StreamRead, StreamWrite) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (StreamRead::Plain(r), StreamWrite::Plain(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (StreamRead::Tls(r), StreamWrite::Tls(w))
            }
        }
    }
}

type TlsHalves = tokio_rustls::TlsStream<TcpStream>;

/// The read half of a [`Stream`] ([`Stream::split`]).
pub enum StreamRead {
    /// Plaintext.
    Plain(tokio::net::tcp::OwnedReadHalf),
    /// TLS.
    Tls(tokio::io::ReadHalf<TlsHalves>),
}

/// The write half of a [`Stream`] ([`Stream::split`]).
pub enum StreamWrite {
    /// Plaintext.
    Plain(tokio::net::tcp::OwnedWriteHalf),
    /// TLS.
    Tls(tokio::io::WriteHalf<TlsHalves>),
}

/// `AsyncRead` for a connection type with `Plain` and `Tls` variants: each
/// call goes to the variant's stream.
macro_rules! delegate_read {
    ($ty:ident) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    $ty::Tls(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

/// `AsyncWrite` likewise.
macro_rules! delegate_write {
    ($ty:ident) => {
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    $ty::Tls(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_flush(cx),
                    $ty::Tls(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    $ty::Tls(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

delegate_read!(Stream);
delegate_write!(Stream);
delegate_read!(StreamRead);
delegate_write!(StreamWrite);

/// What the first bytes of an accepted connection say it speaks.
pub enum Opening {
    /// A TLS handshake.
    Tls,
    /// Anything else (a plaintext hello, or junk the hello check refuses).
    Plain,
}

/// Waits (up to `within`) for a new connection's first two bytes, without
/// consuming them, and tells what it speaks.
pub async fn opening(tcp: &TcpStream, within: Duration) -> io::Result<Opening> {
    let deadline = tokio::time::Instant::now() + within;
    let mut first = [0u8; 2];
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.peek(&mut first))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "nothing sent in time"))??;
        match n {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            1 => {
                // Half of the first segment: the rest is on its way.
                tokio::time::sleep(Duration::from_millis(5)).await;
                if tokio::time::Instant::now() >= deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "one byte in time"));
                }
            }
            _ if raft_wire::looks_like_tls(first) => return Ok(Opening::Tls),
            _ => return Ok(Opening::Plain),
        }
    }
}

/// The TLS error inside `e`, if it is a TLS failure (rather than the
/// network failing).
pub fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A TLS failure as the dialling side reports it, with a hint at the
/// likely cause.
pub fn explain(error: &rustls::Error) -> String {
    use rustls::AlertDescription as Alert;
    let hint = match error {
        rustls::Error::AlertReceived(Alert::CertificateRequired | Alert::HandshakeFailure) => {
            " (the server demands a client certificate: give --tls-cert and --tls-key)"
        }
        rustls::Error::AlertReceived(
            Alert::UnknownCA | Alert::BadCertificate | Alert::CertificateUnknown,
        ) => " (the server does not accept our certificate)",
        rustls::Error::InvalidCertificate(_) => {
            " (the server's certificate does not chain to --tls-ca or does not name the address dialled)"
        }
        rustls::Error::InvalidMessage(_) => " (does the server speak TLS?)",
        _ => "",
    };
    format!("{error}{hint}")
}
