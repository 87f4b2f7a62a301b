//! Deterministic pseudo-random numbers for the load generator: xoshiro256** seeded through
//! SplitMix64. Not cryptographic; it only picks cards, amounts and operation kinds so that a run
//! with the same seed and connection count makes the same choices. (The workspace has no `rand`
//! dependency, and a loader needs nothing more than this.)

/// One SplitMix64 step: advances `state` and returns a well-mixed 64-bit value.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256** generator.
#[derive(Clone, Debug)]
pub(crate) struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// A generator whose whole sequence is fixed by `seed`.
    pub(crate) fn new(seed: u64) -> Rng {
        let mut mix = seed;
        let state = [
            splitmix64(&mut mix),
            splitmix64(&mut mix),
            splitmix64(&mut mix),
            splitmix64(&mut mix),
        ];
        // SplitMix64 never yields four zero words in a row, but keep the invariant explicit.
        if state == [0; 4] {
            return Rng { state: [1, 2, 3, 4] };
        }
        Rng { state }
    }

    /// An independent stream for (`seed`, `stream`), e.g. one per connection and purpose.
    pub(crate) fn stream(seed: u64, stream: u64) -> Rng {
        let mut mix = stream ^ 0x5053_4C47_5354_524D; // "PSLGSTRM"
        Rng::new(seed ^ splitmix64(&mut mix))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..bound` without modulo bias (Lemire's method); `bound` 0 gives 0.
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(bound);
            #[expect(clippy::cast_possible_truncation, reason = "the cast keeps the low half")]
            let low = product as u64;
            if low >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// `below` for a `u32` bound (the same draw, so it fits a `u32`).
    pub(crate) fn below_u32(&mut self, bound: u32) -> u32 {
        u32::try_from(self.below(u64::from(bound))).expect("a draw below a u32 fits a u32")
    }

    /// `below` for an index into `0..len` (the same draw, so it fits a `usize`).
    pub(crate) fn index_below(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).expect("a draw below a usize fits a usize")
    }

    /// Uniform in `low..=high` (`high < low` gives `low`).
    pub(crate) fn range_inclusive(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        match (high - low).checked_add(1) {
            Some(span) => low + self.below(span),
            None => self.next_u64(),
        }
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `percent`/100.
    pub(crate) fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_streams_differ() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let first: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
        let second: Vec<u64> = (0..16).map(|_| b.next_u64()).collect();
        assert_eq!(first, second);
        let mut other = Rng::stream(7, 1);
        let third: Vec<u64> = (0..16).map(|_| other.next_u64()).collect();
        assert_ne!(first, third);
    }

    #[test]
    fn bounded_draws_stay_in_bounds_and_cover_the_range() {
        let mut rng = Rng::new(1);
        let mut seen = [false; 10];
        for _ in 0..10_000 {
            let value = rng.below(10);
            assert!(value < 10);
            seen[value as usize] = true;
            let ranged = rng.range_inclusive(10, 500);
            assert!((10..=500).contains(&ranged));
            let unit = rng.next_f64();
            assert!((0.0..1.0).contains(&unit));
        }
        assert!(seen.iter().all(|hit| *hit));
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.range_inclusive(5, 5), 5);
        let _ = rng.range_inclusive(0, u64::MAX);
    }
}
