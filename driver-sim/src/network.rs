//! The lab's labrpc network semantics (lab-tests.md §2.1) as fate decisions
//! plus accounting. A harness asks what happens to each request and reply and
//! schedules the deliveries itself; all randomness comes from the
//! simulation's one generator.

use std::time::Duration;

use crate::executor::with_rng;

/// The one-way time every delivered message takes, on top of labrpc's own
/// delays. labrpc adds none on a reliable network, but in the Go lab a call
/// costs real time (gob encoding and decoding, goroutine and channel
/// hand-offs): on the order of a millisecond per hop. Without some cost an
/// operation could complete within one virtual instant, a client loop would
/// never let time advance, and latencies (the lab's ms-per-op bound) would
/// read zero; with too little, the KV tests' clients issue an order of
/// magnitude more operations than the Go suite's. A fixed value keeps the
/// random stream unchanged.
pub const HOP_LATENCY: Duration = Duration::from_millis(1);

/// What happens to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFate {
    /// The handler runs after `delay`, unless the request is then dropped
    /// (decided at that moment by [`Network::drop_request_now`]).
    Deliver {
        /// [`HOP_LATENCY`] plus the short delay before the handler runs.
        delay: Duration,
    },
    /// The end is disabled or the server is gone: the handler never runs.
    Fail,
}

/// What happens to a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyFate {
    /// The caller gets it after `delay`.
    Deliver {
        /// [`HOP_LATENCY`], plus a long-reordering delay of 200–2200 ms.
        delay: Duration,
    },
    /// Lost.
    Drop,
}

/// Global network flags and counters.
#[derive(Clone, Debug)]
pub struct Network {
    /// When false: 0–26 ms request delays, 10% of requests and 10% of replies
    /// dropped.
    pub reliable: bool,
    /// When true: 2/3 of replies delayed 200–2200 ms.
    pub long_reordering: bool,
    /// Requests sent (counted at send, delivered or not).
    pub rpc_total: u64,
    /// Request bytes at send plus reply bytes at delivery.
    pub bytes_total: u64,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            reliable: true,
            long_reordering: false,
            rpc_total: 0,
            bytes_total: 0,
        }
    }
}

impl Network {
    /// A request of `bytes` leaves on an end that is `enabled` (end enabled
    /// and target server present, read now).
    pub fn send_request(&mut self, bytes: usize, enabled: bool) -> RequestFate {
        self.rpc_total += 1;
        self.bytes_total += bytes as u64;
        if !enabled {
            return RequestFate::Fail;
        }
        let delay = if self.reliable {
            0
        } else {
            with_rng(|r| r.below(27))
        };
        RequestFate::Deliver {
            delay: HOP_LATENCY + Duration::from_millis(delay),
        }
    }

    /// After the short delay: is the request dropped before its handler runs?
    pub fn drop_request_now(&self) -> bool {
        !self.reliable && with_rng(|r| r.chance(100, 1000))
    }

    /// A handler produced a reply; `alive` is whether the end is still
    /// enabled and the server still the same instance (else the reply is
    /// discarded, as a killed server's would be).
    pub fn send_reply(&mut self, alive: bool) -> ReplyFate {
        if !alive {
            return ReplyFate::Drop;
        }
        if !self.reliable && with_rng(|r| r.chance(100, 1000)) {
            return ReplyFate::Drop;
        }
        if self.long_reordering && with_rng(|r| r.below(900) < 600) {
            // 200 + rand(0..=rand(0..2000)) ms: skewed towards short delays.
            let ms = with_rng(|r| {
                let upper = r.below(2000);
                200 + r.below(1 + upper)
            });
            return ReplyFate::Deliver {
                delay: HOP_LATENCY + Duration::from_millis(ms),
            };
        }
        ReplyFate::Deliver { delay: HOP_LATENCY }
    }

    /// A reply of `bytes` reached its caller.
    pub fn reply_delivered(&mut self, bytes: usize) {
        self.bytes_total += bytes as u64;
    }
}
