//! A KV cluster's state in one line per server, for failure reports (a test
//! over its time limit, a liveness failure).

use kv_core::KvServer;

/// Server `i`'s line: incarnation `gen`, term, role, leader hint, commit,
/// applied, log and snapshot indices, requests waiting, and `links` (one
/// character per server, `1` where its link is up); "down" if `server` is
/// `None`.
pub fn server_status(i: usize, server: Option<(u64, &KvServer)>, links: &str) -> String {
    let Some((gen, server)) = server else {
        return format!("  server {i}: down, links {links}\n");
    };
    let r = server.raft();
    format!(
        "  server {i}: gen {gen} term {} {:?} leader {:?} commit {} applied {} last {} snapshot {} durable {} waiting {} links {links}\n",
        r.term(),
        r.role(),
        r.leader_hint(),
        r.commit_index(),
        r.last_applied(),
        r.log().last_index(),
        r.log().snapshot().index,
        r.durable_index(),
        server.waiting()
    )
}

/// The `links` column: server `i`'s link to each of `n` servers.
pub fn links_column(n: usize, up: impl Fn(usize) -> bool) -> String {
    (0..n).map(|j| if up(j) { '1' } else { '.' }).collect()
}
