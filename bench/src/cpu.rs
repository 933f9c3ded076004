//! CPU use over a measured window, from /proc: the load generator's own
//! process, the servers' processes (by pid), and everything else on the
//! machine (total busy time minus those two), each in cores (CPU seconds per
//! wall second). On a 2-core machine shared with other work, `other_cores`
//! says whether the window was disturbed, and `gen_cores` whether the load
//! generator itself was the bottleneck.

use std::time::Instant;

/// Linux's USER_HZ, the unit of /proc's tick counts (100 on every
/// architecture this runs on).
const TICKS_PER_SEC: f64 = 100.0;

/// Cores used during one window (NaN where /proc could not be read).
#[derive(Clone, Copy, Debug)]
pub struct WindowCpu {
    pub gen_cores: f64,
    pub server_cores: f64,
    pub other_cores: f64,
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    gen_ticks: Option<u64>,
    server_ticks: Option<u64>,
    busy_ticks: Option<u64>,
}

/// utime + stime of a process (all its threads), in ticks.
fn process_ticks(stat_path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    // The command name (field 2) may hold spaces; fields after it start at
    // the last ')'. utime and stime are fields 14 and 15, so 11 and 12 after
    // the state field.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy ticks of all CPUs together (everything but idle and iowait).
fn machine_busy_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is already in
    // user).
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    Some(get(0) + get(1) + get(2) + get(5) + get(6) + get(7))
}

fn sample(server_pids: &[u32]) -> Sample {
    let server_ticks = server_pids
        .iter()
        .map(|p| process_ticks(&format!("/proc/{p}/stat")))
        .sum::<Option<u64>>();
    Sample {
        at: Instant::now(),
        gen_ticks: process_ticks("/proc/self/stat"),
        server_ticks: if server_pids.is_empty() {
            None
        } else {
            server_ticks
        },
        busy_ticks: machine_busy_ticks(),
    }
}

fn cores(a: Option<u64>, b: Option<u64>, secs: f64) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) if b >= a && secs > 0.0 => (b - a) as f64 / TICKS_PER_SEC / secs,
        _ => f64::NAN,
    }
}

/// Samples at `start` and at `end` (sleeping until each) and returns the
/// cores used in between.
pub async fn sample_window(server_pids: Vec<u32>, start: Instant, end: Instant) -> WindowCpu {
    tokio::time::sleep_until(start.into()).await;
    let a = sample(&server_pids);
    tokio::time::sleep_until(end.into()).await;
    let b = sample(&server_pids);
    let secs = (b.at - a.at).as_secs_f64();
    let gen_cores = cores(a.gen_ticks, b.gen_ticks, secs);
    let server_cores = cores(a.server_ticks, b.server_ticks, secs);
    let busy = cores(a.busy_ticks, b.busy_ticks, secs);
    let known = gen_cores
        + if server_cores.is_nan() {
            0.0
        } else {
            server_cores
        };
    WindowCpu {
        gen_cores,
        server_cores,
        other_cores: if busy.is_nan() {
            f64::NAN
        } else {
            (busy - known).max(0.0)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process_and_machine() {
        assert!(process_ticks("/proc/self/stat").is_some());
        assert!(machine_busy_ticks().is_some());
        assert!(process_ticks("/proc/0/stat").is_none());
    }
}
