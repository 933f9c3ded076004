//! The tester's appliers (the Go `applier` and `applierSnap`, lab-tests.md
//! §2.6): what each server applied, checked against every other server as it
//! arrives, and the snapshots the tester hands back to Raft.
//!
//! Invariants, checked on every applied entry (a violation panics with the
//! lab's message): no two servers apply different commands at one index
//! ("commit index=…"); a server applies index `k > 1` only after `k - 1`
//! ("apply out of order"); with the snapshotting applier, exactly
//! `last_applied + 1` comes next.
//!
//! Entries without a command (a leader's no-op, a configuration) take
//! their index like any entry: they keep the order checks going, carry no
//! command, and count as nobody's commit for `n_committed`. The lab suites
//! log only commands; the membership scenarios log configurations too.

use std::collections::{BTreeMap, BTreeSet};

use raft_core::{Entry, Index};

use super::Cmd;

/// The tester snapshots when `(index + 1) % SNAPSHOT_INTERVAL == 0`.
pub const SNAPSHOT_INTERVAL: u64 = 10;

/// What the appliers keep (the Go config's `logs`, `lastApplied`,
/// `maxIndex`). A driver calls it from wherever its servers apply: the
/// simulator's event loop, or node threads under a mutex.
pub struct Appliers {
    snapshot_applier: bool,
    logs: Vec<BTreeMap<Index, Cmd>>,
    /// The indices each server applied that carried no command.
    without_command: Vec<BTreeSet<Index>>,
    last_applied: Vec<Index>,
    max_index: Index,
}

impl Appliers {
    /// Appliers for `n` servers; the snapshotting one if `snapshot_applier`.
    pub fn new(n: usize, snapshot_applier: bool) -> Self {
        Appliers {
            snapshot_applier,
            logs: vec![BTreeMap::new(); n],
            without_command: vec![BTreeSet::new(); n],
            last_applied: vec![0; n],
            max_index: 0,
        }
    }

    /// One more server, numbered `n` (the number of servers so far): a
    /// server added to a running cluster, which has applied nothing.
    pub fn add_server(&mut self) -> usize {
        self.logs.push(BTreeMap::new());
        self.without_command.push(BTreeSet::new());
        self.last_applied.push(0);
        self.logs.len() - 1
    }

    /// Server `i` (re)starts from `snapshot`, what it persisted: it applies
    /// from the start, or from the tester's snapshot in it.
    pub fn restarted(&mut self, i: usize, snapshot: Option<&[u8]>) {
        self.last_applied[i] = 0;
        if let Some(data) = snapshot {
            if !data.is_empty() {
                if let Err(e) = self.ingest_snapshot(i, data, None) {
                    panic!("{e}");
                }
            }
        }
    }

    /// Server `i` applied `entries`. Returns the snapshot the tester takes
    /// (its index and data, for `Event::SnapshotTaken`) if this batch
    /// reached one.
    pub fn apply_entries(&mut self, i: usize, entries: &[Entry]) -> Option<(Index, Vec<u8>)> {
        let mut snap = None;
        for e in entries {
            let cmd = e.command().map(Cmd::decode);
            if self.snapshot_applier && e.index != self.last_applied[i] + 1 {
                panic!(
                    "server {i} apply out of order, expected index {}, got {}",
                    self.last_applied[i] + 1,
                    e.index
                );
            }
            let checked = match cmd {
                Some(cmd) => self.check_logs(i, e.index, cmd),
                None => Ok(self.note_without_command(i, e.index)),
            };
            match checked {
                Err(err) => panic!("{err}"),
                Ok(prev_ok) => {
                    if e.index > 1 && !prev_ok {
                        panic!("server {i} apply out of order {}", e.index);
                    }
                }
            }
            self.last_applied[i] = e.index;
            if self.snapshot_applier && (e.index + 1) % SNAPSHOT_INTERVAL == 0 {
                // Indices without a command are `None`, like index 0.
                let xlog: Vec<Option<Cmd>> = (0..=e.index)
                    .map(|k| self.logs[i].get(&k).cloned())
                    .collect();
                let data = postcard::to_allocvec(&(e.index, xlog)).expect("snapshots encode");
                snap = Some((e.index, data));
            }
        }
        snap
    }

    /// Server `i` was told to install the snapshot `data` through `index`:
    /// the snapshotting applier loads it (the plain one ignores it).
    pub fn apply_snapshot(&mut self, i: usize, data: &[u8], index: Index) {
        if self.snapshot_applier {
            if let Err(e) = self.ingest_snapshot(i, data, Some(index)) {
                panic!("{e}");
            }
        }
    }

    /// How many servers have applied `index`, and the command there.
    pub fn n_committed(&self, index: Index) -> (usize, Option<Cmd>) {
        let mut count = 0;
        let mut cmd: Option<&Cmd> = None;
        for log in &self.logs {
            if let Some(c) = log.get(&index) {
                if let Some(prev) = cmd {
                    assert_eq!(prev, c, "committed values do not match: index {index}");
                }
                count += 1;
                cmd = Some(c);
            }
        }
        (count, cmd.cloned())
    }

    /// The highest index any server applied (or loaded from a snapshot).
    pub fn max_index(&self) -> Index {
        self.max_index
    }

    /// Did server `i` apply `index` (a command or not)?
    fn has_applied(&self, i: usize, index: Index) -> bool {
        self.logs[i].contains_key(&index) || self.without_command[i].contains(&index)
    }

    /// Server `i` applied an entry without a command at `index`; returns
    /// whether it had applied the index before.
    fn note_without_command(&mut self, i: usize, index: Index) -> bool {
        let prev_ok = self.has_applied(i, index - 1);
        self.without_command[i].insert(index);
        self.max_index = self.max_index.max(index);
        prev_ok
    }

    /// The Go `checkLogs`: no other server applied something else at `index`.
    fn check_logs(&mut self, i: usize, index: Index, cmd: Cmd) -> Result<bool, String> {
        for (j, log) in self.logs.iter().enumerate() {
            if let Some(old) = log.get(&index) {
                if *old != cmd {
                    return Err(format!(
                        "commit index={index} server={i} {cmd} != server={j} {old}"
                    ));
                }
            }
        }
        let prev_ok = self.has_applied(i, index - 1);
        self.logs[i].insert(index, cmd);
        self.max_index = self.max_index.max(index);
        Ok(prev_ok)
    }

    /// The Go `ingestSnap`: load the tester's snapshot into server `i`'s log.
    fn ingest_snapshot(
        &mut self,
        i: usize,
        data: &[u8],
        index: Option<Index>,
    ) -> Result<(), String> {
        let (last_included, xlog): (Index, Vec<Option<Cmd>>) =
            postcard::from_bytes(data).map_err(|e| format!("snapshot decode error: {e}"))?;
        if let Some(index) = index {
            if index != last_included {
                return Err(format!("server {i} snapshot doesn't match m.SnapshotIndex"));
            }
        }
        // What the snapshot holds no command for (after index 0) was an
        // entry without one.
        self.without_command[i] = (1..xlog.len())
            .filter(|&k| xlog[k].is_none())
            .map(|k| k as Index)
            .collect();
        self.logs[i] = xlog
            .into_iter()
            .enumerate()
            .filter_map(|(k, c)| c.map(|c| (k as Index, c)))
            .collect();
        self.last_applied[i] = last_included;
        self.max_index = self.max_index.max(last_included);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(from: Index, cmds: &[i64]) -> Vec<Entry> {
        cmds.iter()
            .zip(from..)
            .map(|(&c, index)| Entry {
                index,
                term: 1,
                payload: raft_core::Payload::Command((Cmd::Int(c).encode()).into()),
            })
            .collect()
    }

    #[test]
    fn servers_agree_and_the_tester_snapshots_every_interval() {
        let mut a = Appliers::new(2, true);
        let cmds: Vec<i64> = (1..=10).collect();
        let snap = a.apply_entries(0, &entries(1, &cmds[..9]));
        let (index, data) = snap.expect("index 9 completes an interval");
        assert_eq!(index, 9);
        assert_eq!(a.apply_entries(1, &entries(1, &cmds[..3])), None);
        assert_eq!(a.n_committed(3), (2, Some(Cmd::Int(3))));
        assert_eq!(a.n_committed(9), (1, Some(Cmd::Int(9))));
        assert_eq!(a.max_index(), 9);
        // Server 1 installs server 0's snapshot and continues after it.
        a.apply_snapshot(1, &data, 9);
        assert_eq!(a.n_committed(9), (2, Some(Cmd::Int(9))));
        assert_eq!(a.apply_entries(1, &entries(10, &cmds[9..])), None);
        // A restart from that snapshot applies from 10 again.
        a.restarted(1, Some(&data));
        assert_eq!(a.apply_entries(1, &entries(10, &cmds[9..])), None);
    }

    #[test]
    #[should_panic(expected = "commit index=2 server=1 7 != server=0 2")]
    fn different_commands_at_one_index_fail() {
        let mut a = Appliers::new(2, false);
        a.apply_entries(0, &entries(1, &[1, 2]));
        a.apply_entries(1, &entries(1, &[1, 7]));
    }

    #[test]
    #[should_panic(expected = "server 0 apply out of order, expected index 1, got 2")]
    fn the_snapshotting_applier_wants_the_next_index() {
        let mut a = Appliers::new(1, true);
        a.apply_entries(0, &entries(2, &[2]));
    }
}
