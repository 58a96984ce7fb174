//! What the helpdesk reports, charged to a window (`limiter::reconcile`).
//! `reconcile.lua` does the same arithmetic on the Redis value; the table
//! tests here pin the numbers both must produce.
//!
//! Both charges only add credits (never give any back) and are placed so
//! that the window stays exact: they are counted, and leave, like calls.

use super::{Window, RING, SLOTS};

impl Window {
    /// The helpdesk has `left` credits left now: charges, at `now_us`, what
    /// makes the window hold at least `quota - left`. Returns the credits
    /// charged (0 when the window already holds that much).
    ///
    /// Charged now, not earlier: the calls the gateway did not see happened
    /// at or before this instant, so counting them from now keeps them in
    /// the window at least as long as the helpdesk does (never shorter, at
    /// most one window longer). Any earlier guess could free them while the
    /// helpdesk still counts them.
    pub fn settle_left(&mut self, now_us: u64, quota: u32, left: u32) -> u32 {
        let want = u64::from(quota.saturating_sub(left));
        let used = self.used(now_us);
        if used >= want {
            return 0;
        }
        let n = u32::try_from(want - used).unwrap_or(u32::MAX);
        self.charge(now_us, n);
        n
    }

    /// The helpdesk refuses until `until_us`: charges the slot that leaves
    /// the window first at or after `until_us` (see [`close_slot`]) with what
    /// makes that slot and the newer ones hold the whole `quota`, so that no
    /// call fits before then and every refusal's retry time is then or later.
    /// Filling the window now instead would close it for a whole window;
    /// counting the older slots too would let it open when they leave,
    /// before `until_us`. A refusal longer than the window closes it for the
    /// window (the next 429 closes it again). Returns the credits charged.
    pub fn close_until(&mut self, now_us: u64, quota: u32, until_us: u64) -> u32 {
        let now_slot = self.slot_of(now_us);
        self.evict(now_slot);
        let target = close_slot(now_slot, until_us, self.slot_us);
        let held: u64 = (target.max(self.oldest)..=now_slot).map(|s| u64::from(self.counts[ring(s)])).sum();
        let quota = u64::from(quota);
        if held >= quota {
            return 0;
        }
        let n = u32::try_from(quota - held).unwrap_or(u32::MAX);
        let c = &mut self.counts[ring(target)];
        *c = c.saturating_add(n);
        self.total += u64::from(n);
        // Cells older than `oldest` are empty (see `evict`): the charge's
        // slot becomes the oldest that holds calls.
        self.oldest = self.oldest.min(target);
        n
    }
}

fn ring(slot: u64) -> usize {
    (slot % RING as u64) as usize
}

/// The slot a charge must go to so that it leaves the window at `until_us`
/// or at most one slot later: slot `s` stops being counted at
/// `(s + SLOTS + 1) * slot_us`. Kept within the live window ending at
/// `now_slot` (a time past the window's end takes the newest slot).
pub fn close_slot(now_slot: u64, until_us: u64, slot_us: u64) -> u64 {
    until_us.div_ceil(slot_us).saturating_sub(SLOTS + 1).clamp(now_slot.saturating_sub(SLOTS), now_slot)
}

#[cfg(test)]
mod tests {
    use super::super::Window;

    const S: u64 = 1_000_000;

    #[test]
    fn a_lower_count_is_charged_now_and_leaves_a_window_later() {
        let mut w = Window::new(60);
        w.charge(10 * S, 5);
        // The helpdesk has 20 left of 100: 80 must be held, 5 are.
        assert_eq!(w.settle_left(30 * S, 100, 20), 75);
        assert_eq!(w.used(30 * S), 80);
        // Agreeing (or reporting more) charges nothing: no credit back.
        assert_eq!(w.settle_left(30 * S, 100, 20), 0);
        assert_eq!(w.settle_left(30 * S, 100, 90), 0);
        assert_eq!(w.used(30 * S), 80);
        // The first 5 leave at 70.5 s, the 75 charged at 30 s at 90.5 s.
        assert_eq!(w.used(71 * S), 75);
        assert_eq!(w.used(90 * S), 75);
        assert_eq!(w.used(91 * S), 0);
    }

    #[test]
    fn a_close_refuses_until_its_time_and_not_a_slot_longer() {
        let mut w = Window::new(60);
        w.charge(5 * S, 10); // leaves at 65.5 s: before the close ends
        w.charge(20 * S, 3); // leaves at 80.5 s: after it
                             // At 30 s the helpdesk says: nothing until 30 s + 40 s = 70 s.
        assert_eq!(w.close_until(30 * S, 50, 70 * S), 47);
        let v = w.judge(30 * S, 50, 1);
        assert!(!v.fits);
        // Room comes at 70 s exactly (a slot edge), not when the first 10 leave.
        assert_eq!(v.retry_us, 40 * S);
        // A second close inside the first charges nothing more.
        assert_eq!(w.close_until(31 * S, 50, 60 * S), 0);
        assert!(!w.judge(66 * S, 50, 1).fits);
        assert!(!w.judge(70 * S - 1, 50, 1).fits);
        let open = w.judge(70 * S, 50, 1);
        assert!(open.fits);
        // What is left then: the 3 charged at 20 s still count.
        assert_eq!(open.left, 47);
    }

    #[test]
    fn a_close_longer_than_the_window_closes_it_for_the_window() {
        let mut w = Window::new(10);
        assert_eq!(w.close_until(100 * S, 7, 500 * S), 7);
        let v = w.judge(100 * S, 7, 1);
        // Closed for the window, at most one slot (10 s / 120) more.
        let slot = super::super::slot_us(10);
        assert!(v.retry_us >= 10 * S && v.retry_us <= 10 * S + slot, "{}", v.retry_us);
        assert!(!w.judge(100 * S + v.retry_us - 1, 7, 1).fits);
        assert!(w.judge(100 * S + v.retry_us, 7, 1).fits);
    }

    #[test]
    fn a_close_on_an_idle_window_then_calls_still_count_exactly() {
        let mut w = Window::new(60);
        assert_eq!(w.close_until(1000 * S, 5, 1010 * S), 5);
        assert!(!w.judge(1009 * S, 5, 1).fits);
        assert!(w.judge(1010 * S, 5, 5).fits);
        w.charge(1010 * S, 5);
        assert!(!w.judge(1069 * S, 5, 1).fits);
        assert_eq!(w.used(1070 * S + 500_000), 0);
    }
}
