//! Three `raft-node` processes on loopback: they elect a leader and commit;
//! the leader is killed (SIGKILL) and the other two elect another and keep
//! committing; the killed node restarts from its data directory and catches
//! up with everything committed.
//!
//! Each node prints `applied index=I ... digest=D` for every entry it applies
//! (and `snapshot index=I digest=D` when its service is replaced by a
//! snapshot), the digest chaining every command through I. The test checks
//! after every poll that no two nodes, and no two lives of one node, ever
//! report different digests at one index: that is "applied identically" and
//! "nothing lost" in one rule.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft_wire::test_util::free_addrs;

const NODES: usize = 3;
/// Generous for a loaded two-core machine; each phase takes about a second.
const PHASE_TIMEOUT: Duration = Duration::from_secs(30);

/// What one node has printed, across its lives.
#[derive(Default)]
struct NodeLog {
    alive: bool,
    /// The role and term of its latest `role` line in this life.
    role: Option<(String, u64)>,
    /// Every index it reported, with the digest through it.
    digests: BTreeMap<u64, u64>,
    /// Its highest index in this life.
    max_index: u64,
    /// Lines of each life, for the failure report and the restart check.
    lives: Vec<Vec<String>>,
    /// Disagreements with itself (a restarted node applying differently).
    conflicts: Vec<String>,
}

impl NodeLog {
    fn leader_term(&self) -> Option<u64> {
        match &self.role {
            Some((role, term)) if self.alive && role == "leader" => Some(*term),
            _ => None,
        }
    }

    fn record(&mut self, line: String) {
        let mut words = line.split_whitespace();
        let kind = words.next().unwrap_or("");
        let fields: BTreeMap<&str, &str> = words.filter_map(|w| w.split_once('=')).collect();
        let number = |key: &str, radix: u32| {
            fields
                .get(key)
                .and_then(|v| u64::from_str_radix(v, radix).ok())
        };
        match kind {
            "applied" | "snapshot" => {
                if let (Some(index), Some(digest)) = (number("index", 10), number("digest", 16)) {
                    if let Some(old) = self.digests.insert(index, digest) {
                        if old != digest {
                            self.conflicts.push(format!(
                                "index {index}: digest {old:016x} before, {digest:016x} now"
                            ));
                        }
                    }
                    self.max_index = self.max_index.max(index);
                }
            }
            "role" => {
                // `role leader term=3 leader=0`
                let name = line.split_whitespace().nth(1).unwrap_or("").to_string();
                if let Some(term) = number("term", 10) {
                    self.role = Some((name, term));
                }
            }
            _ => {}
        }
        self.lives.last_mut().expect("a life").push(line);
    }
}

/// The processes, their output and their data; kills every child on drop
/// (and, if the test is failing, prints what they said and keeps the data).
struct Cluster {
    dir: Option<tempfile::TempDir>,
    peers: String,
    children: Vec<Option<Child>>,
    logs: Arc<Mutex<Vec<NodeLog>>>,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let peers = free_addrs(NODES)
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("{i}={addr}"))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            dir: Some(dir),
            peers,
            children: (0..NODES).map(|_| None).collect(),
            logs: Arc::new(Mutex::new((0..NODES).map(|_| NodeLog::default()).collect())),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.as_ref().expect("dir").path().join(name)
    }

    fn start(&mut self, i: usize) {
        assert!(self.children[i].is_none(), "node {i} is running");
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("node{i}.stderr")))
            .expect("stderr file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_raft-node"))
            .args(["--id", &i.to_string(), "--peers", &self.peers])
            .arg("--data-dir")
            .arg(self.path(&format!("data{i}")))
            .args(["--cluster-id", "42"])
            .args(["--propose-every-ms", "40"])
            .args(["--snapshot-every", "25"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn raft-node");
        let stdout = child.stdout.take().expect("piped stdout");
        {
            let mut logs = self.logs.lock().unwrap();
            let log = &mut logs[i];
            log.alive = true;
            log.role = None;
            log.max_index = 0;
            log.lives.push(Vec::new());
        }
        let logs = Arc::clone(&self.logs);
        let life = self.logs.lock().unwrap()[i].lives.len();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut logs = logs.lock().unwrap();
                if logs[i].lives.len() == life {
                    logs[i].record(line);
                }
            }
        });
        self.children[i] = Some(child);
    }

    /// SIGKILL: no chance to flush or sync anything.
    fn kill(&mut self, i: usize) {
        let mut child = self.children[i].take().expect("node is running");
        child.kill().expect("kill");
        child.wait().expect("reap");
        self.logs.lock().unwrap()[i].alive = false;
    }

    /// Polls until `ready` returns something, checking agreement each time.
    fn wait_for<T>(&mut self, what: &str, ready: impl Fn(&[NodeLog]) -> Option<T>) -> T {
        let deadline = Instant::now() + PHASE_TIMEOUT;
        loop {
            for (i, child) in self.children.iter_mut().enumerate() {
                if let Some(child) = child {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("node {i} exited by itself ({status}) while waiting for {what}");
                    }
                }
            }
            {
                let logs = self.logs.lock().unwrap();
                check_agreement(&logs);
                if let Some(result) = ready(&logs) {
                    return result;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {PHASE_TIMEOUT:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            return;
        }
        let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        for (i, log) in logs.iter().enumerate() {
            for (life, lines) in log.lives.iter().enumerate() {
                eprintln!("--- node {i}, life {life}: last lines of stdout");
                for line in &lines[lines.len().saturating_sub(12)..] {
                    eprintln!("    {line}");
                }
            }
            let mut stderr = String::new();
            if let Ok(mut f) = File::open(self.path(&format!("node{i}.stderr"))) {
                let _ = f.read_to_string(&mut stderr);
            }
            let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
            eprintln!("--- node {i}: last lines of stderr");
            for line in tail.into_iter().rev() {
                eprintln!("    {line}");
            }
        }
        if let Some(dir) = self.dir.take() {
            eprintln!("--- data kept in {}", dir.keep().display());
        }
    }
}

/// No index is reported with two digests, by two nodes or by two lives of
/// one node.
fn check_agreement(logs: &[NodeLog]) {
    for (i, log) in logs.iter().enumerate() {
        assert!(
            log.conflicts.is_empty(),
            "node {i} disagrees with its earlier life: {:?}",
            log.conflicts
        );
        for (j, other) in logs.iter().enumerate().skip(i + 1) {
            for (index, digest) in &log.digests {
                if let Some(theirs) = other.digests.get(index) {
                    assert_eq!(
                        digest, theirs,
                        "nodes {i} and {j} applied different logs through index {index}"
                    );
                }
            }
        }
    }
}

/// The live leader with the highest term, if any.
fn leader(logs: &[NodeLog]) -> Option<(usize, u64)> {
    logs.iter()
        .enumerate()
        .filter_map(|(i, l)| l.leader_term().map(|t| (i, t)))
        .max_by_key(|&(_, t)| t)
}

#[test]
fn three_processes_survive_a_leader_kill_and_restart() {
    let started = Instant::now();
    let mut cluster = Cluster::new();
    for i in 0..NODES {
        cluster.start(i);
    }

    // 1. One leader; all three apply the same entries.
    let (old_leader, old_term) =
        cluster.wait_for("a leader and 30 entries on every node", |logs| {
            let (l, term) = leader(logs)?;
            logs.iter().all(|n| n.max_index >= 30).then_some((l, term))
        });
    let elected = started.elapsed();
    let (before, before_digest) = {
        let logs = cluster.logs.lock().unwrap();
        let (&i, &d) = logs[old_leader].digests.last_key_value().expect("applied");
        (i, d)
    };

    // 2. Kill the leader; the other two elect another and keep committing,
    //    with everything the old leader had applied.
    cluster.kill(old_leader);
    let killed_at = Instant::now();
    let survivors: Vec<usize> = (0..NODES).filter(|&i| i != old_leader).collect();
    let (new_leader, committed) = cluster.wait_for("a new leader committing", |logs| {
        let (l, term) = leader(logs)?;
        if term <= old_term || l == old_leader {
            return None;
        }
        // Sixty entries: past two snapshots (one every 25), so the survivors'
        // logs start after the old leader's ends, and it will need the
        // leader's snapshot to catch up.
        let low = survivors.iter().map(|&s| logs[s].max_index).min()?;
        if low < before + 60 {
            return None;
        }
        let kept = survivors
            .iter()
            .any(|&s| logs[s].digests.get(&before) == Some(&before_digest));
        assert!(
            kept || survivors
                .iter()
                .all(|&s| !logs[s].digests.contains_key(&before)),
            "index {before} applied by the old leader differs on the survivors"
        );
        kept.then_some((l, low))
    });
    let failover = killed_at.elapsed();

    // 3. Restart the old leader from its data directory: it recovers and
    //    catches up past everything the survivors had committed.
    cluster.start(old_leader);
    let restarted_at = Instant::now();
    let caught_up = cluster.wait_for("the restarted node to catch up", |logs| {
        let me = &logs[old_leader];
        if me.max_index < committed + 5 {
            return None;
        }
        // Agreement is checked on common indices; require one past `committed`.
        let common = me.digests.range(committed..).any(|(index, _)| {
            survivors
                .iter()
                .any(|&s| logs[s].digests.contains_key(index))
        });
        common.then_some(me.max_index)
    });
    let catch_up = restarted_at.elapsed();

    let logs = cluster.logs.lock().unwrap();
    let life = logs[old_leader].lives.last().expect("second life");
    assert!(
        life.first().is_some_and(|l| l.starts_with("snapshot ")),
        "node {old_leader} had snapshotted (every 25 entries, {before} applied) and \
         should restore its snapshot from disk first; it printed {:?}",
        &life[..life.len().min(3)]
    );
    let after_ready = life.iter().skip_while(|l| !l.starts_with("ready "));
    let installed = after_ready.filter(|l| l.starts_with("snapshot ")).count();
    assert!(
        installed > 0,
        "the leader had compacted its log past node {old_leader}'s: it should have \
         sent its snapshot"
    );
    eprintln!(
        "leader {old_leader} (term {old_term}) elected and 30 committed in {elected:.1?}; \
         applied through {before} when killed; node {new_leader} took over and the survivors \
         committed through {committed} in {failover:.1?}; node {old_leader} restarted and \
         applied through {caught_up} in {catch_up:.1?}; total {:.1?}",
        started.elapsed()
    );
}
