//! The rolling window shared by every store (docs/reference.md "Budgets"): a ring of
//! `SLOTS + 1` per-slot counters over one window.
//!
//! Why this shape: an exact sliding log needs one entry per admitted call, so
//! its memory grows with the budget (2,000 timestamps for an Enterprise add-on).
//! Counting per slot bounds memory at `SLOTS + 1` counters whatever the
//! budget. To stay exact for ANY interval of `window` we count every slot that
//! the window `(now - window, now]` touches, including the oldest one in full,
//! i.e. the `SLOTS + 1` slots `now_slot - SLOTS ..= now_slot`. Proof sketch: for
//! an interval `[a, a + window)`, every call admitted in it lies in slots
//! `slot(a) ..= slot(t)` where `t` is the time of its last admission, and
//! `slot(t) - SLOTS <= slot(a)`; that admission saw all of them and fit the
//! quota. The price is the oldest slot counted whole: under sustained demand
//! the quota spreads over `SLOTS + 1` slots, so at least `SLOTS / (SLOTS + 1)`
//! = 99.2 % of the budget is used per window.
//!
//! `window.lua` (the Redis store's script) implements the same arithmetic
//! against Redis `TIME`; the table tests here pin the numbers both must
//! produce.

mod settle;

pub use settle::close_slot;

/// Slots per window. 120 gives 0.5 s slots for a 60 s window and ≥ 99 % use.
pub const SLOTS: u64 = 120;
/// Ring length: the slots one window can touch.
pub const RING: usize = SLOTS as usize + 1;

/// Width of one slot in microseconds for a window of `window_s` seconds,
/// rounded up so that `SLOTS` slots always cover the whole window.
pub const fn slot_us(window_s: u32) -> u64 {
    (window_s as u64 * 1_000_000).div_ceil(SLOTS)
}

/// One policy's counters.
#[derive(Debug, Clone)]
pub struct Window {
    slot_us: u64,
    /// Sum of `counts` (what the window holds now, after `evict`).
    total: u64,
    /// Absolute index of the oldest slot that may still hold calls; once
    /// `evict` ran, the oldest slot that does (or the current one when empty).
    oldest: u64,
    counts: [u32; RING],
}

/// What one policy says about a call of some cost at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The call fits what is left.
    pub fits: bool,
    /// Credits left now, before any charge.
    pub left: u64,
    /// Microseconds until enough leaves the window for the call to fit
    /// (0 when it fits; `u64::MAX` when the cost exceeds the quota itself).
    pub retry_us: u64,
    /// Microseconds until anything held now leaves the window (0 if empty).
    pub reset_us: u64,
}

impl Window {
    /// An empty window of `window_s` seconds.
    pub fn new(window_s: u32) -> Window {
        Window { slot_us: slot_us(window_s), total: 0, oldest: 0, counts: [0; RING] }
    }

    /// Slot width in µs (changes only when the window length is reconfigured).
    pub fn slot_width_us(&self) -> u64 {
        self.slot_us
    }

    /// Drops the slots that no longer touch the window ending at `now_slot`,
    /// then moves `oldest` to the oldest slot that holds calls, so the next
    /// exit is found without a scan. (Each slot is passed over once: `oldest`
    /// only moves forward. A tenant calling now and then would otherwise
    /// walk up to 120 empty slots per look, four looks per call.)
    fn evict(&mut self, now_slot: u64) {
        let live_from = now_slot.saturating_sub(SLOTS);
        if live_from > self.oldest {
            if live_from - self.oldest >= RING as u64 {
                self.counts = [0; RING];
                self.total = 0;
            } else {
                for s in self.oldest..live_from {
                    let c = &mut self.counts[(s % RING as u64) as usize];
                    self.total -= u64::from(*c);
                    *c = 0;
                }
            }
            self.oldest = live_from;
        }
        if self.total == 0 {
            self.oldest = self.oldest.max(now_slot);
        } else {
            while self.oldest < now_slot && self.counts[(self.oldest % RING as u64) as usize] == 0 {
                self.oldest += 1;
            }
        }
    }

    /// The slot of `now_us`; never before `oldest` (the clocks used are
    /// monotonic, but a call must never land in a slot already passed over).
    fn slot_of(&self, now_us: u64) -> u64 {
        (now_us / self.slot_us).max(self.oldest)
    }

    /// Judges a call of `cost` against `quota` at `now_us`, without charging.
    pub fn judge(&mut self, now_us: u64, quota: u32, cost: u32) -> Verdict {
        let now_slot = self.slot_of(now_us);
        self.evict(now_slot);
        let quota = u64::from(quota);
        let cost = u64::from(cost);
        let reset_us = self.first_exit_after(now_us, now_slot, |_| true);
        if self.total + cost <= quota {
            return Verdict { fits: true, left: quota - self.total, retry_us: 0, reset_us };
        }
        let left = quota.saturating_sub(self.total);
        if cost > quota {
            return Verdict { fits: false, left, retry_us: u64::MAX, reset_us };
        }
        // Walk from the oldest slot, freeing as slots leave, until the call fits.
        let need = self.total + cost - quota;
        let mut freed = 0u64;
        let retry_us = self.first_exit_after(now_us, now_slot, |c| {
            freed += u64::from(c);
            freed >= need
        });
        Verdict { fits: false, left, retry_us, reset_us }
    }

    /// Time until the first non-empty slot for which `stop` says yes leaves the window.
    fn first_exit_after(&self, now_us: u64, now_slot: u64, mut stop: impl FnMut(u32) -> bool) -> u64 {
        for s in self.oldest..=now_slot {
            let c = self.counts[(s % RING as u64) as usize];
            if c > 0 && stop(c) {
                // Slot `s` stops being counted once `now_slot - SLOTS > s`.
                return (s + SLOTS + 1) * self.slot_us - now_us;
            }
        }
        0
    }

    /// Charges `cost` at `now_us` (call after a fitting `judge` at the same
    /// instant). Returns the slot the charge went to, which is what a
    /// [`Window::refund`] of it needs.
    pub fn charge(&mut self, now_us: u64, cost: u32) -> u64 {
        let now_slot = self.slot_of(now_us);
        self.evict(now_slot);
        let c = &mut self.counts[(now_slot % RING as u64) as usize];
        *c = c.saturating_add(cost);
        self.total += u64::from(cost);
        now_slot
    }

    /// Gives back up to `cost` credits charged to `slot` (what
    /// [`Window::charge`] returned), at `now_us`; returns how many were given
    /// back. Only that slot is credited, and never below zero: a slot that
    /// has left the window (or is newer than any seen) is a no-op, since its
    /// charge no longer counts (or never did).
    pub fn refund(&mut self, now_us: u64, slot: u64, cost: u32) -> u32 {
        let now_slot = self.slot_of(now_us);
        self.evict(now_slot);
        // After `evict`, slots before `oldest` hold nothing.
        if slot < self.oldest || slot > now_slot {
            return 0;
        }
        let c = &mut self.counts[(slot % RING as u64) as usize];
        let back = (*c).min(cost);
        *c -= back;
        self.total -= u64::from(back);
        // `oldest` may now name an empty slot: the next `evict` moves it on.
        back
    }

    /// Microseconds until anything held now leaves the window (0 if empty).
    pub fn reset_us(&mut self, now_us: u64) -> u64 {
        let now_slot = self.slot_of(now_us);
        self.evict(now_slot);
        self.first_exit_after(now_us, now_slot, |_| true)
    }

    /// What the window holds now.
    pub fn used(&mut self, now_us: u64) -> u64 {
        self.evict(self.slot_of(now_us));
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    /// The arithmetic of the module comment done the slow, obvious way: every
    /// charge kept as (slot, cost), every question answered by a full scan.
    struct Reference {
        slot_us: u64,
        charges: Vec<(u64, u64)>,
    }

    impl Reference {
        fn live(&self, now_us: u64) -> Vec<(u64, u64)> {
            let from = (now_us / self.slot_us).saturating_sub(SLOTS);
            let mut live: Vec<_> = self.charges.iter().copied().filter(|&(s, _)| s >= from).collect();
            live.sort();
            live
        }

        fn judge(&self, now_us: u64, quota: u64, cost: u64) -> Verdict {
            let live = self.live(now_us);
            let total: u64 = live.iter().map(|c| c.1).sum();
            let exit = |s: u64| (s + SLOTS + 1) * self.slot_us - now_us;
            let reset_us = live.first().map_or(0, |c| exit(c.0));
            let left = quota.saturating_sub(total);
            if total + cost <= quota {
                return Verdict { fits: true, left, retry_us: 0, reset_us };
            }
            if cost > quota {
                return Verdict { fits: false, left, retry_us: u64::MAX, reset_us };
            }
            let mut freed = 0;
            let s = live.iter().find(|c| {
                freed += c.1;
                freed >= total + cost - quota
            });
            Verdict { fits: false, left, retry_us: exit(s.expect("enough leaves").0), reset_us }
        }
    }

    #[test]
    fn the_ring_agrees_with_a_full_scan_of_every_charge() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..200 {
            let window_s = [1, 60, 3600][round % 3];
            let mut w = Window::new(window_s);
            let mut r = Reference { slot_us: slot_us(window_s), charges: Vec::new() };
            let quota = rng.gen_range(1..40);
            let mut now = 3600 * S + rng.gen_range(0..S);
            for step in 0..400 {
                // Bursts, pauses of a few slots, and now and then a long silence.
                now += match rng.gen_range(0..10) {
                    0..=5 => rng.gen_range(0..r.slot_us / 4),
                    6..=8 => rng.gen_range(0..r.slot_us * 8),
                    _ => rng.gen_range(0..r.slot_us * 150),
                };
                let cost = rng.gen_range(1..4);
                let got = w.judge(now, quota, cost);
                let want = r.judge(now, u64::from(quota), u64::from(cost));
                assert_eq!(got, want, "round {round} step {step}");
                if got.fits {
                    w.charge(now, cost);
                    r.charges.push((now / r.slot_us, u64::from(cost)));
                }
                let live: u64 = r.live(now).iter().map(|c| c.1).sum();
                assert_eq!(w.used(now), live, "round {round} step {step}");
                assert_eq!(w.reset_us(now), r.judge(now, u64::MAX, 0).reset_us);
            }
        }
    }

    #[test]
    fn a_full_window_admits_exactly_the_quota() {
        let mut w = Window::new(60);
        let mut admitted = 0;
        for _ in 0..100 {
            let v = w.judge(5 * S, 50, 1);
            if v.fits {
                w.charge(5 * S, 1);
                admitted += 1;
            }
        }
        assert_eq!(admitted, 50);
    }

    #[test]
    fn retry_is_when_the_oldest_slot_leaves_and_never_early() {
        let mut w = Window::new(60);
        w.charge(10 * S, 3); // slot 20 (0.5 s slots)
        w.charge(20 * S, 2); // slot 40
        let v = w.judge(30 * S, 5, 1);
        assert!(!v.fits);
        // slot 20 leaves when now_slot > 140, i.e. at 70.5 s.
        assert_eq!(v.retry_us, 70_500_000 - 30 * S);
        let just_before = 30 * S + v.retry_us - 1;
        assert!(!w.judge(just_before, 5, 1).fits);
        assert!(w.judge(30 * S + v.retry_us, 5, 1).fits);
    }

    #[test]
    fn a_costlier_call_waits_for_more_slots() {
        let mut w = Window::new(60);
        w.charge(10 * S, 3);
        w.charge(20 * S, 2);
        let v = w.judge(30 * S, 5, 4);
        assert_eq!(v.retry_us, 80_500_000 - 30 * S);
    }

    #[test]
    fn no_interval_of_one_window_exceeds_the_quota() {
        // Greedy demand every 100 ms for 5 windows; then check every interval.
        let mut w = Window::new(10);
        let quota = 37;
        let mut log = Vec::new();
        let mut t = 0;
        while t < 50 * S {
            for _ in 0..3 {
                if w.judge(t, quota, 1).fits {
                    w.charge(t, 1);
                    log.push(t);
                }
            }
            t += 100_000;
        }
        for (i, &start) in log.iter().enumerate() {
            let n = log[i..].iter().take_while(|&&x| x < start + 10 * S).count();
            assert!(n <= quota as usize, "{n} calls in the window starting at {start}");
        }
        // Sustained demand uses at least 99 % of the budget.
        let used_last_windows = log.iter().filter(|&&x| x >= 10 * S).count() as f64;
        assert!(used_last_windows >= 0.99 * 4.0 * quota as f64 - 1.0, "{used_last_windows}");
    }

    #[test]
    fn a_cost_above_the_quota_never_fits() {
        let mut w = Window::new(60);
        let v = w.judge(0, 5, 7);
        assert!(!v.fits);
        assert_eq!(v.retry_us, u64::MAX);
    }

    #[test]
    fn a_refund_gives_back_exactly_its_own_slot() {
        let mut w = Window::new(60);
        let a = w.charge(10 * S, 3); // slot 20 (0.5 s slots)
        let b = w.charge(20 * S, 2); // slot 40
        assert_eq!((a, b), (20, 40));
        assert_eq!(w.refund(25 * S, b, 2), 2);
        assert_eq!(w.used(25 * S), 3);
        // The oldest slot still decides when room comes back.
        let v = w.judge(30 * S, 3, 1);
        assert_eq!(v.retry_us, 70_500_000 - 30 * S);
        // Never below zero, and never from another slot's calls.
        assert_eq!(w.refund(25 * S, b, 2), 0);
        assert_eq!(w.refund(25 * S, a, 5), 3);
        assert_eq!(w.used(25 * S), 0);
        assert_eq!(w.reset_us(25 * S), 0);
        assert!(w.judge(25 * S, 5, 5).fits);
    }

    #[test]
    fn a_refund_after_its_slot_left_the_window_is_a_no_op() {
        let mut w = Window::new(60);
        let a = w.charge(10 * S, 3); // slot 20: counted until 70.5 s
        let b = w.charge(70 * S, 1); // slot 140
        assert_eq!(w.refund(71 * S, a, 3), 0);
        assert_eq!(w.used(71 * S), 1);
        // A slot newer than the clock was never charged.
        assert_eq!(w.refund(71 * S, b + 5, 1), 0);
        assert_eq!(w.used(71 * S), 1);
        assert_eq!(w.refund(71 * S, b, 1), 1);
        assert_eq!(w.used(71 * S), 0);
    }

    #[test]
    fn refunds_keep_the_ring_in_agreement_with_a_full_scan() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for round in 0..100 {
            let window_s = [1, 60][round % 2];
            let mut w = Window::new(window_s);
            let mut r = Reference { slot_us: slot_us(window_s), charges: Vec::new() };
            let quota = rng.gen_range(1..40);
            let mut now = 3600 * S;
            for step in 0..300 {
                now += rng.gen_range(0..r.slot_us * 6);
                let cost = rng.gen_range(1..4);
                let got = w.judge(now, quota, cost);
                assert_eq!(got, r.judge(now, u64::from(quota), u64::from(cost)), "round {round} step {step}");
                if got.fits {
                    let slot = w.charge(now, cost);
                    r.charges.push((slot, u64::from(cost)));
                }
                // Now and then give back one earlier charge (some already gone).
                if !r.charges.is_empty() && rng.gen_range(0..3) == 0 {
                    let i = rng.gen_range(0..r.charges.len());
                    let (slot, cost) = r.charges[i];
                    let live = slot >= (now / r.slot_us).saturating_sub(SLOTS);
                    let back = w.refund(now, slot, cost as u32);
                    assert_eq!(u64::from(back), if live { cost } else { 0 }, "round {round} step {step}");
                    r.charges.swap_remove(i);
                }
                let live: u64 = r.live(now).iter().map(|c| c.1).sum();
                assert_eq!(w.used(now), live, "round {round} step {step}");
                assert_eq!(w.reset_us(now), r.judge(now, u64::MAX, 0).reset_us);
            }
        }
    }

    #[test]
    fn an_idle_window_forgets_everything() {
        let mut w = Window::new(60);
        w.charge(S, 50);
        assert_eq!(w.used(S + 61 * S), 0);
        assert_eq!(w.judge(10_000 * S, 50, 50).left, 50);
    }
}
