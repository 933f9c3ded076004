//! The two systems under test behind [`Target`].

use std::time::Duration;

#[cfg(feature = "ours")]
use anyhow::anyhow;
use anyhow::{bail, Context, Result};
use etcd_client::{Client, ConnectOptions, GetOptions, KvClient};

use crate::{Consistency, Target};

fn etcd_urls(endpoints: &[String]) -> Vec<String> {
    endpoints
        .iter()
        .map(|e| {
            if e.contains("://") {
                e.clone()
            } else {
                format!("http://{e}")
            }
        })
        .collect()
}

/// etcd through the `etcd-client` crate (gRPC over tonic).
///
/// Connection model: by default one `etcd_client::Client` per logical
/// client, each a tonic channel balanced over all three endpoints (so a
/// logical client's puts may land on any member; followers forward them to
/// the leader, as with any etcd v3 client that is given all endpoints). With
/// `--etcd-conns K` the logical clients instead share K such Clients
/// round-robin, like etcd's own `benchmark --conns K --clients N`.
///
/// Gets are Range requests: linearizable (etcd's default, served after a
/// ReadIndex round by whichever member the channel picked) or, for
/// [`Consistency::Local`], serializable (that member's own state).
pub struct EtcdTarget {
    kvs: Vec<KvClient>,
}

impl EtcdTarget {
    pub async fn connect(
        endpoints: &[String],
        clients: usize,
        conns: usize,
        op_timeout: Duration,
    ) -> Result<Self> {
        let k = if conns == 0 {
            clients
        } else {
            conns.min(clients)
        };
        let urls = etcd_urls(endpoints);
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(op_timeout);
        let mut kvs = Vec::with_capacity(k);
        for _ in 0..k {
            let c = Client::connect(&urls, Some(opts.clone()))
                .await
                .context("connecting to etcd")?;
            kvs.push(c.kv_client());
        }
        Ok(EtcdTarget { kvs })
    }
}

impl Target for EtcdTarget {
    async fn put(&self, client: usize, key: String, value: Vec<u8>) -> Result<()> {
        // A KvClient clone is a handle on the same channel (cheap).
        let mut kv = self.kvs[client % self.kvs.len()].clone();
        kv.put(key, value, None).await?;
        Ok(())
    }

    async fn get(&self, client: usize, key: String, consistency: Consistency) -> Result<bool> {
        let mut kv = self.kvs[client % self.kvs.len()].clone();
        let opts = match consistency {
            Consistency::Linearizable => None,
            Consistency::Local => Some(GetOptions::new().with_serializable()),
            Consistency::Lease => bail!("etcd has no lease read"),
        };
        let r = kv.get(key, opts).await?;
        Ok(r.kvs().first().is_some_and(|kv| !kv.value().is_empty()))
    }
}

/// Ready when every member answers Status with the same, non-zero leader and
/// a put through all endpoints succeeds.
pub async fn etcd_ready(endpoints: &[String]) -> Result<()> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(2));
    let mut leader = None;
    for url in etcd_urls(endpoints) {
        let mut c = Client::connect([url.as_str()], Some(opts.clone())).await?;
        let st = c
            .status()
            .await
            .with_context(|| format!("status of {url}"))?;
        if st.leader() == 0 {
            bail!("{url} has no leader yet");
        }
        match leader {
            None => leader = Some(st.leader()),
            Some(l) if l != st.leader() => bail!("members disagree on the leader"),
            Some(_) => {}
        }
    }
    let mut c = Client::connect(etcd_urls(endpoints), Some(opts)).await?;
    c.put("__bench_probe", "ok", None)
        .await
        .context("probe put")?;
    Ok(())
}

#[cfg(feature = "ours")]
fn parse_addrs(endpoints: &[String]) -> Result<Vec<std::net::SocketAddr>> {
    endpoints
        .iter()
        .map(|e| {
            e.parse()
                .with_context(|| format!("bad endpoint {e:?} (want ip:port)"))
        })
        .collect()
}

/// Our cluster through `driver_tokio::client::Client`: one Client (one
/// session) per logical client, each given all members' client addresses.
/// Gets are `Client::get_with`: linearizable to the leader (or round-robin
/// over follower-read members when the servers run `--follower-reads`),
/// lease to the leader, local round-robin over the given servers.
/// With `--conns K` (K > 0) the sessions share K
/// `driver_tokio::SharedConns` pools round-robin, each pool one connection
/// per server (as etcd's K shared `Client`s are); each logical client is
/// still its own session.
/// The mutex is uncontended (one task per logical client); it only lets the
/// same code work whether `put` takes `&self` or `&mut self`.
#[cfg(feature = "ours")]
pub struct OursTarget {
    clients: Vec<tokio::sync::Mutex<driver_tokio::client::Client>>,
}

#[cfg(feature = "ours")]
impl OursTarget {
    pub async fn connect(
        endpoints: &[String],
        cluster_id: u64,
        tls_ca: Option<&std::path::Path>,
        clients: usize,
        conns: usize,
        op_timeout: Duration,
    ) -> Result<Self> {
        let addrs = parse_addrs(endpoints)?;
        let tls = ours_tls(tls_ca)?;
        let pools: Vec<driver_tokio::SharedConns> = if conns == 0 || conns >= clients {
            Vec::new()
        } else {
            (0..conns)
                .map(|_| driver_tokio::SharedConns::new(cluster_id, tls.clone()))
                .collect()
        };
        let mut set = tokio::task::JoinSet::new();
        for i in 0..clients {
            let addrs = addrs.clone();
            let tls = tls.clone();
            let pool = (!pools.is_empty()).then(|| pools[i % pools.len()].clone());
            set.spawn(async move {
                #[allow(unused_mut)]
                let mut c = driver_tokio::client::Client::connect(cluster_id, addrs)
                    .await
                    .map_err(|e| anyhow!("connecting client {i}: {e:?}"))?
                    .with_tls(tls);
                if let Some(pool) = pool {
                    c = c.with_shared(pool);
                }
                // The client's own overall deadline for one operation (it
                // retries across servers within it), so the load generator's
                // outer timeout never cancels an operation half-way.
                c.op_timeout = op_timeout;
                Ok::<_, anyhow::Error>((i, c))
            });
        }
        let mut slots: Vec<Option<driver_tokio::client::Client>> =
            (0..clients).map(|_| None).collect();
        while let Some(r) = set.join_next().await {
            let (i, c) = r.context("connect task panicked")??;
            slots[i] = Some(c);
        }
        Ok(OursTarget {
            clients: slots
                .into_iter()
                .map(|c| tokio::sync::Mutex::new(c.expect("every slot filled")))
                .collect(),
        })
    }
}

#[cfg(feature = "ours")]
impl Target for OursTarget {
    async fn put(&self, client: usize, key: String, value: Vec<u8>) -> Result<()> {
        let value = String::from_utf8(value).context("value must be UTF-8 for our API")?;
        #[allow(unused_mut)]
        let mut c = self.clients[client].lock().await;
        c.put(&key, &value)
            .await
            .map_err(|e| anyhow!("put: {e:?}"))?;
        Ok(())
    }

    async fn get(&self, client: usize, key: String, consistency: Consistency) -> Result<bool> {
        #[allow(unused_mut)]
        let mut c = self.clients[client].lock().await;
        let consistency = match consistency {
            Consistency::Linearizable => driver_tokio::ReadConsistency::Linearizable,
            Consistency::Lease => driver_tokio::ReadConsistency::Lease,
            Consistency::Local => driver_tokio::ReadConsistency::Local,
        };
        // Sessionless, never through the log; routed by consistency (see
        // driver_tokio::client's module doc).
        let v = c
            .get_with(&key, consistency)
            .await
            .map_err(|e| anyhow!("get: {e:?}"))?;
        Ok(!v.is_empty())
    }
}

/// Our client's TLS: the servers' certificates checked against `ca`.
#[cfg(feature = "ours")]
fn ours_tls(ca: Option<&std::path::Path>) -> Result<Option<driver_tokio::ClientTls>> {
    ca.map(|ca| driver_tokio::ClientTls::load(ca, None))
        .transpose()
        .map_err(|e| anyhow!("TLS: {e}"))
}

#[cfg(feature = "ours")]
pub async fn ours_ready(
    endpoints: &[String],
    cluster_id: u64,
    tls_ca: Option<&std::path::Path>,
) -> Result<()> {
    let addrs = parse_addrs(endpoints)?;
    let tls = ours_tls(tls_ca)?;
    let probe = async {
        #[allow(unused_mut)]
        let mut c = driver_tokio::client::Client::connect(cluster_id, addrs)
            .await
            .map_err(|e| anyhow!("connect: {e:?}"))?
            .with_tls(tls);
        c.op_timeout = Duration::from_secs(4);
        c.put("__bench_probe", "ok")
            .await
            .map_err(|e| anyhow!("probe put: {e:?}"))?;
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(5), probe)
        .await
        .map_err(|_| anyhow!("probe timed out"))?
}
