//! What every driver that runs a node on a real host does at its edge, once:
//! convert the monotonic clock to and from the core's [`raft_core::Instant`],
//! and seed the core's election jitter from ambient entropy (the core never
//! reads a clock or draws randomness itself).

use std::time::Duration;

/// The monotonic clock as the core sees it: nanoseconds since the node
/// started. `now` never goes backwards.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: std::time::Instant,
}

impl Clock {
    /// A clock whose zero is now.
    pub fn start() -> Clock {
        Clock {
            epoch: std::time::Instant::now(),
        }
    }

    /// A clock whose zero is `epoch`.
    pub fn since(epoch: std::time::Instant) -> Clock {
        Clock { epoch }
    }

    /// The current time, for `step(now, ..)`.
    pub fn now(&self) -> raft_core::Instant {
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        raft_core::Instant::from_nanos(nanos)
    }

    /// When a core deadline (a `SetTimer`'s) falls on the monotonic clock.
    pub fn deadline(&self, at: raft_core::Instant) -> std::time::Instant {
        self.epoch + Duration::from_nanos(at.as_nanos())
    }
}

/// A seed for the core's election jitter from ambient entropy (the standard
/// library's random hasher keys, the wall clock and the process id), mixed
/// with `salt` (the node id, say). A real driver may use it; the simulator
/// never does.
pub fn seed_from_entropy(salt: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(salt);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_map_back_to_the_instant_they_name() {
        let clock = Clock::start();
        let now = clock.now();
        let later = raft_core::Instant::from_nanos(now.as_nanos() + 1_000_000);
        let at = clock.deadline(later);
        assert!(at > std::time::Instant::now() - Duration::from_secs(1));
        assert_eq!(at - clock.deadline(now), Duration::from_millis(1));
        assert!(clock.now() >= now);
    }

    #[test]
    fn seeds_differ_between_calls() {
        assert_ne!(seed_from_entropy(1), seed_from_entropy(1));
    }
}
