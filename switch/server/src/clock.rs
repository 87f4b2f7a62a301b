//! The time a shard gives its engine: the wall clock, with its forward steps bounded. The
//! engine's clock never goes back (`max(previous, now)`), so one reading far ahead (an NTP step,
//! a VM resumed with a wrong clock) would move it into the future for good, expiring holds and
//! cards. So each reading is checked against the monotonic clock's projection of the last one
//! taken: up to `step_max_ms` ahead of it is taken as it is; further ahead, the reading is held
//! in quarantine and the shard runs on the projection instead, until readings have stayed that
//! far ahead for `confirm_ms` of monotonic time (then the step is real and taken) or come back.
//! Backward steps are taken as they are (the engine holds its clock until the wall catches up,
//! as before). At start the first reading is taken as it is: a restart may follow any downtime.
//!
//! Pure: the wall and monotonic readings come in as arguments, so the tests drive it directly.

use pinswitch_core::Ms;

/// What became of one reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reading {
    /// Within the bound (or behind): the reading is the time.
    Taken,
    /// Too far ahead of the projection: the projection is the time; `ahead_ms` is by how much
    /// the reading is ahead of it.
    Quarantined { ahead_ms: u64 },
    /// Ahead for `confirm_ms`: the step is taken from now on.
    Confirmed { step_ms: u64 },
}

#[derive(Debug)]
pub(crate) struct EngineClock {
    step_max_ms: u64,
    confirm_ms: u64,
    /// The last reading taken, and the monotonic time (ms) it was taken at.
    anchor: Option<(Ms, u64)>,
    /// The monotonic time since which readings have been too far ahead.
    ahead_since_ms: Option<u64>,
}

impl EngineClock {
    pub(crate) fn new(step_max_ms: u64, confirm_ms: u64) -> EngineClock {
        EngineClock { step_max_ms, confirm_ms, anchor: None, ahead_since_ms: None }
    }

    /// The time to give the engine for the wall reading `wall_ms` taken at monotonic `mono_ms`.
    pub(crate) fn now(&mut self, wall_ms: Ms, mono_ms: u64) -> (Ms, Reading) {
        let Some((anchor_wall_ms, anchor_mono_ms)) = self.anchor else {
            self.anchor = Some((wall_ms, mono_ms));
            return (wall_ms, Reading::Taken);
        };
        let projected_ms = anchor_wall_ms.saturating_add(mono_ms.saturating_sub(anchor_mono_ms));
        if wall_ms <= projected_ms.saturating_add(self.step_max_ms) {
            self.anchor = Some((wall_ms, mono_ms));
            self.ahead_since_ms = None;
            return (wall_ms, Reading::Taken);
        }
        let ahead_ms = wall_ms - projected_ms;
        let since_ms = *self.ahead_since_ms.get_or_insert(mono_ms);
        if mono_ms.saturating_sub(since_ms) >= self.confirm_ms {
            self.anchor = Some((wall_ms, mono_ms));
            self.ahead_since_ms = None;
            return (wall_ms, Reading::Confirmed { step_ms: ahead_ms });
        }
        // The projection becomes the anchor, so the quarantine measures from real elapsed time.
        self.anchor = Some((projected_ms, mono_ms));
        (projected_ms, Reading::Quarantined { ahead_ms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Ms = 1_800_000_000_000;

    #[test]
    fn small_steps_and_backward_steps_are_taken() {
        let mut clock = EngineClock::new(60_000, 300_000);
        assert_eq!(clock.now(T0, 0), (T0, Reading::Taken));
        assert_eq!(clock.now(T0 + 1_000, 1_000), (T0 + 1_000, Reading::Taken));
        // 59 s ahead of the projection: within the bound.
        assert_eq!(clock.now(T0 + 61_000, 2_000), (T0 + 61_000, Reading::Taken));
        // A backward step is taken (the engine keeps its own clock until the wall catches up).
        assert_eq!(clock.now(T0, 3_000), (T0, Reading::Taken));
    }

    #[test]
    fn a_far_forward_reading_is_quarantined_until_it_goes_away() {
        let mut clock = EngineClock::new(60_000, 300_000);
        clock.now(T0, 0);
        let hour = 3_600_000;
        assert_eq!(
            clock.now(T0 + 10_000 + hour, 10_000),
            (T0 + 10_000, Reading::Quarantined { ahead_ms: hour })
        );
        // The shard's time goes on with the monotonic clock meanwhile.
        assert_eq!(
            clock.now(T0 + 20_000 + hour, 20_000),
            (T0 + 20_000, Reading::Quarantined { ahead_ms: hour })
        );
        // The wall comes back: taken, and nothing of the hour was ever given to the engine.
        assert_eq!(clock.now(T0 + 30_500, 30_000), (T0 + 30_500, Reading::Taken));
    }

    #[test]
    fn a_forward_step_that_holds_for_the_confirmation_time_is_taken() {
        let mut clock = EngineClock::new(60_000, 300_000);
        clock.now(T0, 0);
        let step = 7_200_000;
        for mono in (1_000..300_000).step_by(10_000) {
            let (now, reading) = clock.now(T0 + mono + step, mono);
            assert_eq!((now, reading), (T0 + mono, Reading::Quarantined { ahead_ms: step }));
        }
        let mono = 301_000;
        assert_eq!(
            clock.now(T0 + mono + step, mono),
            (T0 + mono + step, Reading::Confirmed { step_ms: step })
        );
        assert_eq!(
            clock.now(T0 + mono + step + 5, mono + 5),
            (T0 + mono + step + 5, Reading::Taken)
        );
    }
}
