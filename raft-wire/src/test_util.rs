//! Helpers for tests that run nodes on loopback TCP (feature `test-util`).

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;

/// Loopback addresses for a cluster's nodes: every one distinct from every
/// other this process handed out, free when picked, and in 20000–31999,
/// below Linux's ephemeral range (32768 and up). A port-0 bind would pick
/// from that range, where the nodes' own outgoing connections also take
/// their ports: a killed node's port could be taken by a connection before
/// its restart binds it again, and two port-0 picks in a row can return the
/// same port. Different processes pick from different points of the range.
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    static TAKEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    assert!(taken.len() + n <= 12_000, "the port range is exhausted");
    let mut seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let mut addrs = Vec::new();
    while addrs.len() < n {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let port = 20_000 + (seed >> 33) as u16 % 12_000;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if !taken.contains(&port) && TcpListener::bind(addr).is_ok() {
            taken.insert(port);
            addrs.push(addr);
        }
    }
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_in_range() {
        let mut all = free_addrs(10);
        all.extend(free_addrs(10));
        let ports: BTreeSet<u16> = all.iter().map(SocketAddr::port).collect();
        assert_eq!(ports.len(), 20);
        assert!(ports.iter().all(|p| (20_000..32_000).contains(p)));
    }
}
