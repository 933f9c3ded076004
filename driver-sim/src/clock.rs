//! Clocks that drift: every simulated node reads its own local clock, a
//! monotone mapping of the simulation's global virtual time.
//!
//! Node `i`'s local time is
//!
//! ```text
//! local_i(t) = anchor_local_i + floor((t - anchor_global_i) * rate_ppm_i / 1_000_000)
//! ```
//!
//! for global virtual time `t` at or after the anchor. The rate is an
//! integer in parts per million of real time (`1_000_000` keeps perfect
//! time, `1_050_000` runs 5% fast, `950_000` 5% slow), so every conversion
//! is exact integer arithmetic: nothing that decides the order of events
//! passes through floating point. A node is always stepped with its local
//! `now`, and the deadline of its `SetTimer` (a local instant) is converted
//! back with [`NodeClock::global_at`] to the first global nanosecond at which
//! the local clock has reached it, so a timer never fires early in the
//! node's own time.
//!
//! The clock belongs to the node's machine, not to one incarnation of it: a
//! crash and restart keep it, and it keeps running while the node is down,
//! so local time never goes backwards for a node. [`NodeClock::set_rate`]
//! re-anchors at the current instant, which keeps the mapping continuous.
//!
//! [`ClockDrift`] is the configured bound. With a bound of zero (the
//! default everywhere) every clock is the global clock itself and nothing is
//! drawn from the simulation's generator, so runs are bit-identical to a
//! simulator without drift.

use raft_core::{Instant, SplitMix64};

/// Parts per million in one: the rate of a clock that keeps perfect time.
pub const PERFECT_PPM: u64 = 1_000_000;

/// How far any node's clock rate may stray from real time: every rate lies
/// in `[1 - max_ppm / 10^6, 1 + max_ppm / 10^6]`. Zero (the default) means
/// perfect clocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClockDrift {
    /// The bound, in parts per million (50_000 is 5%). Below 1_000_000.
    pub max_ppm: u64,
}

impl ClockDrift {
    /// Perfect clocks: no drift, nothing drawn.
    pub const NONE: ClockDrift = ClockDrift { max_ppm: 0 };

    /// The bound chaos draws within, and the drift scenarios use: 5%.
    pub const CHAOS: ClockDrift = ClockDrift { max_ppm: 50_000 };

    /// A bound of `max_ppm` parts per million.
    pub const fn ppm(max_ppm: u64) -> ClockDrift {
        assert!(max_ppm < PERFECT_PPM, "a clock must move forward");
        ClockDrift { max_ppm }
    }

    /// True when clocks drift at all.
    pub const fn is_on(self) -> bool {
        self.max_ppm > 0
    }

    /// The slowest and fastest rates within the bound, in ppm.
    pub const fn rate_range(self) -> (u64, u64) {
        (PERFECT_PPM - self.max_ppm, PERFECT_PPM + self.max_ppm)
    }

    /// True if `rate_ppm` lies within the bound.
    pub const fn allows(self, rate_ppm: u64) -> bool {
        let (low, high) = self.rate_range();
        low <= rate_ppm && rate_ppm <= high
    }

    /// A rate drawn uniformly within the bound (inclusive at both ends).
    /// With no drift, exactly [`PERFECT_PPM`] and nothing drawn.
    pub fn draw_rate(self, rng: &mut SplitMix64) -> u64 {
        if !self.is_on() {
            return PERFECT_PPM;
        }
        let (low, high) = self.rate_range();
        rng.range(low, high + 1)
    }

    /// A rate drawn *beyond* the bound: its distance from perfect time is
    /// uniform in `(max_ppm, factor * max_ppm]`, fast or slow with equal
    /// chance, never zero or slower than a tenth of real time. This breaks
    /// the assumption a lease rests on, so a lease canary can show that the
    /// checks catch what follows. `factor` is at least 2.
    pub fn draw_rate_beyond(self, factor: u64, rng: &mut SplitMix64) -> u64 {
        assert!(factor >= 2, "beyond the bound means at least twice it");
        let bound = self.max_ppm.max(1);
        let excess = rng.range(bound + 1, factor * bound + 1);
        if rng.chance(1, 2) {
            PERFECT_PPM + excess
        } else {
            PERFECT_PPM.saturating_sub(excess).max(PERFECT_PPM / 10)
        }
    }
}

/// One node's local clock: a monotone, piecewise-linear function of global
/// virtual time (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeClock {
    rate_ppm: u64,
    anchor_global: Instant,
    anchor_local: Instant,
}

impl Default for NodeClock {
    fn default() -> Self {
        NodeClock::PERFECT
    }
}

impl NodeClock {
    /// The global clock itself.
    pub const PERFECT: NodeClock = NodeClock {
        rate_ppm: PERFECT_PPM,
        anchor_global: Instant::ZERO,
        anchor_local: Instant::ZERO,
    };

    /// A clock that reads `offset` at global time `start` and runs at
    /// `rate_ppm` parts per million of real time from then on.
    pub fn new(start: Instant, offset: Instant, rate_ppm: u64) -> NodeClock {
        assert!(rate_ppm > 0, "a clock must move forward");
        NodeClock {
            rate_ppm,
            anchor_global: start,
            anchor_local: offset,
        }
    }

    /// The rate, in parts per million of real time.
    pub fn rate_ppm(&self) -> u64 {
        self.rate_ppm
    }

    /// The local time at global time `global` (at or after the anchor;
    /// earlier instants read as the anchor).
    pub fn local(&self, global: Instant) -> Instant {
        let elapsed = u128::from(
            global
                .as_nanos()
                .saturating_sub(self.anchor_global.as_nanos()),
        );
        let scaled = elapsed * u128::from(self.rate_ppm) / u128::from(PERFECT_PPM);
        let nanos = u128::from(self.anchor_local.as_nanos()) + scaled;
        Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The first global instant at which the local clock reads `local` or
    /// later (the anchor, for a local instant at or before it). Rounds up:
    /// `self.local(self.global_at(l)) >= l`, and one nanosecond earlier the
    /// clock still reads less than `l`.
    pub fn global_at(&self, local: Instant) -> Instant {
        let ahead = u128::from(
            local
                .as_nanos()
                .saturating_sub(self.anchor_local.as_nanos()),
        );
        let rate = u128::from(self.rate_ppm);
        let elapsed = (ahead * u128::from(PERFECT_PPM)).div_ceil(rate);
        let nanos = u128::from(self.anchor_global.as_nanos()) + elapsed;
        Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// From global time `now` on, runs at `rate_ppm`; the local time at
    /// `now` is unchanged, so the clock stays continuous and monotone.
    pub fn set_rate(&mut self, now: Instant, rate_ppm: u64) {
        assert!(rate_ppm > 0, "a clock must move forward");
        assert!(now >= self.anchor_global, "global time went backwards");
        *self = NodeClock::new(now, self.local(now), rate_ppm);
    }
}

/// Draws the clocks of `n` nodes for a run with `drift`, starting at global
/// time `start`: each rate uniform within the bound and each offset uniform
/// in `[0, 1 s)` (a node's epoch is its own). With no drift, `n` perfect
/// clocks and nothing drawn.
pub fn draw_clocks(
    n: usize,
    start: Instant,
    drift: ClockDrift,
    rng: &mut SplitMix64,
) -> Vec<NodeClock> {
    (0..n).map(|_| draw_clock(start, drift, rng)).collect()
}

/// One node's clock for a run with `drift` (see [`draw_clocks`]).
pub fn draw_clock(start: Instant, drift: ClockDrift, rng: &mut SplitMix64) -> NodeClock {
    if !drift.is_on() {
        return NodeClock::PERFECT;
    }
    let rate = drift.draw_rate(rng);
    let offset = Instant::from_nanos(rng.below(1_000_000_000));
    NodeClock::new(start, offset, rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOW: u64 = 950_000;
    const FAST: u64 = 1_050_000;

    #[test]
    fn perfect_clock_is_the_global_clock() {
        let c = NodeClock::PERFECT;
        for t in [0, 1, 999, 1_000_000, 123_456_789_012] {
            let t = Instant::from_nanos(t);
            assert_eq!(c.local(t), t);
            assert_eq!(c.global_at(t), t);
        }
    }

    #[test]
    fn local_time_is_monotone_at_every_rate_and_across_rate_changes() {
        let mut rng = SplitMix64::new(7);
        for rate in [1, 333_333, SLOW, PERFECT_PPM, FAST, 3_000_000] {
            let mut clock =
                NodeClock::new(Instant::from_millis(5), Instant::from_millis(700), rate);
            let mut global = Instant::from_millis(5);
            let mut last = clock.local(global);
            for step in 0..10_000u64 {
                global = Instant::from_nanos(global.as_nanos() + rng.below(5_000_000));
                if step % 1000 == 999 {
                    clock.set_rate(global, 900_000 + rng.below(200_001));
                }
                let local = clock.local(global);
                assert!(
                    local >= last,
                    "rate {rate}: local time went backwards at step {step}"
                );
                last = local;
            }
        }
    }

    #[test]
    fn rates_scale_elapsed_time_exactly() {
        let start = Instant::from_millis(100);
        let slow = NodeClock::new(start, Instant::ZERO, SLOW);
        let fast = NodeClock::new(start, Instant::ZERO, FAST);
        let later = Instant::from_millis(1100);
        assert_eq!(slow.local(later), Instant::from_millis(950));
        assert_eq!(fast.local(later), Instant::from_millis(1050));
    }

    /// A timer set for a local deadline fires at the first global instant
    /// whose local reading has reached it: never before, and no later than
    /// needed.
    #[test]
    fn timers_fire_at_not_before_their_local_deadline() {
        let mut rng = SplitMix64::new(11);
        for rate in [SLOW, FAST, 999_999, 1_000_001, 7, 2_500_000] {
            let clock = NodeClock::new(
                Instant::from_nanos(rng.below(1 << 40)),
                Instant::from_nanos(rng.below(1 << 40)),
                rate,
            );
            for _ in 0..10_000 {
                let now =
                    Instant::from_nanos(clock.local(Instant::ZERO).as_nanos() + rng.below(1 << 42));
                let deadline = Instant::from_nanos(now.as_nanos() + rng.below(1 << 30));
                let fires = clock.global_at(deadline);
                assert!(clock.local(fires) >= deadline, "rate {rate}: fired early");
                if fires > clock.global_at(Instant::ZERO) {
                    let before = Instant::from_nanos(fires.as_nanos() - 1);
                    assert!(clock.local(before) < deadline, "rate {rate}: fired late");
                }
            }
        }
    }

    #[test]
    fn a_deadline_already_passed_maps_to_no_later_than_now() {
        let clock = NodeClock::new(Instant::from_millis(10), Instant::from_millis(500), FAST);
        let now = Instant::from_millis(2000);
        let passed = clock.local(now);
        assert!(clock.global_at(passed) <= now);
        assert!(clock.global_at(Instant::from_millis(1)) <= now);
    }

    #[test]
    fn drawn_rates_stay_within_the_bound_and_beyond_ones_outside_it() {
        let drift = ClockDrift::CHAOS;
        let mut rng = SplitMix64::new(3);
        let (mut lowest, mut highest) = (u64::MAX, 0);
        for _ in 0..10_000 {
            let r = drift.draw_rate(&mut rng);
            assert!(drift.allows(r), "{r} outside the bound");
            lowest = lowest.min(r);
            highest = highest.max(r);
            let b = drift.draw_rate_beyond(4, &mut rng);
            assert!(!drift.allows(b), "{b} within the bound");
            assert!(b >= PERFECT_PPM / 10 && b <= PERFECT_PPM + 4 * drift.max_ppm);
        }
        assert!(
            lowest < 951_000 && highest > 1_049_000,
            "rates cover the bound"
        );
        assert_eq!(ClockDrift::NONE.draw_rate(&mut rng), PERFECT_PPM);
    }

    #[test]
    fn no_drift_draws_nothing() {
        let mut a = SplitMix64::new(5);
        let mut untouched = a.clone();
        let clocks = draw_clocks(5, Instant::ZERO, ClockDrift::NONE, &mut a);
        assert!(clocks.iter().all(|c| *c == NodeClock::PERFECT));
        assert_eq!(a.next_u64(), untouched.next_u64());
    }
}
