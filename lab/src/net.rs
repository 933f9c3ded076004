//! labrpc's fault model (lab-tests.md §2.1) as fate decisions: a driver's
//! network asks what happens to each request and reply and schedules the
//! deliveries itself. Every random draw comes from the generator the caller
//! passes in (the simulation's one generator, or a threads network's own),
//! in a fixed order, so a seeded run is the same run.

use std::time::Duration;

use raft_core::SplitMix64;

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

/// labrpc's fault settings: how a network loses and delays messages.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// When false: 0–26 ms request delays, 10% of requests and 10% of replies
    /// dropped.
    pub reliable: bool,
    /// When true: 2/3 of replies delayed 200–2200 ms.
    pub long_reordering: bool,
    /// Added to every delivery ([`HOP_LATENCY`] in the lab harnesses; zero
    /// delivers at once).
    pub hop_latency: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            reliable: true,
            long_reordering: false,
            hop_latency: HOP_LATENCY,
        }
    }
}

impl Faults {
    /// A request on an end that is `enabled` (end enabled and target server
    /// present, read now): its fate.
    pub fn send_request(&self, enabled: bool, rng: &mut SplitMix64) -> RequestFate {
        if !enabled {
            return RequestFate::Fail;
        }
        RequestFate::Deliver {
            delay: self.request_delay(rng),
        }
    }

    /// The delay of a request that will be delivered: the hop latency, plus
    /// 0–26 ms when unreliable.
    pub fn request_delay(&self, rng: &mut SplitMix64) -> Duration {
        let delay = if self.reliable { 0 } else { rng.below(27) };
        self.hop_latency + Duration::from_millis(delay)
    }

    /// After the short delay: is the request dropped before its handler runs?
    pub fn drop_request_now(&self, rng: &mut SplitMix64) -> bool {
        !self.reliable && rng.chance(100, 1000)
    }

    /// A handler produced a reply; `alive` is whether the end is still
    /// enabled and the server still the same instance (else the reply is
    /// discarded, as a killed server's would be).
    pub fn send_reply(&self, alive: bool, rng: &mut SplitMix64) -> ReplyFate {
        if !alive {
            return ReplyFate::Drop;
        }
        if !self.reliable && rng.chance(100, 1000) {
            return ReplyFate::Drop;
        }
        if self.long_reordering && rng.below(900) < 600 {
            // 200 + rand(0..=rand(0..2000)) ms: skewed towards short delays.
            let upper = rng.below(2000);
            let ms = 200 + rng.below(1 + upper);
            return ReplyFate::Deliver {
                delay: self.hop_latency + Duration::from_millis(ms),
            };
        }
        ReplyFate::Deliver {
            delay: self.hop_latency,
        }
    }

    /// How long a client call on a disabled end (or to a missing server)
    /// takes to return false: 0–99 ms, or 0–6999 ms with labrpc's
    /// LongDelays.
    pub fn failed_call_delay(long_delays: bool, rng: &mut SplitMix64) -> Duration {
        let bound = if long_delays { 7000 } else { 100 };
        Duration::from_millis(rng.below(bound))
    }
}

/// A network's counters, as the result lines report them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Traffic {
    /// Requests sent (counted at send, delivered or not).
    pub rpc_total: u64,
    /// Request bytes at send plus reply bytes at delivery.
    pub bytes_total: u64,
}

impl Traffic {
    /// A request of `bytes` left.
    pub fn request_sent(&mut self, bytes: usize) {
        self.rpc_total += 1;
        self.bytes_total += bytes as u64;
    }

    /// A reply of `bytes` reached its caller.
    pub fn reply_delivered(&mut self, bytes: usize) {
        self.bytes_total += bytes as u64;
    }
}
