//! Which card an operation touches: `uniform` over all cards, `zipf:S` (rank k drawn with
//! probability proportional to 1/k^S, card index k-1, so card 0 is the hottest), or
//! `hot:F,P` (a fraction F of the cards, the first ones, receives a share P of the operations,
//! each set drawn uniformly). Card order in a cards file follows issue order while PINs are
//! random, so hot cards are spread over shards like any others.
//!
//! The Zipf sampler is rejection-inversion (W. Hörmann and G. Derflinger, "Rejection-inversion
//! to generate variates from monotone discrete distributions", 1996), as used by Apache Commons
//! RNG: O(1) per draw and no table, so it works for a million cards as well as for ten.

use std::fmt;
use std::str::FromStr;

use crate::rng::Rng;

/// A card-choice distribution as given on the command line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum DistSpec {
    Uniform,
    Zipf { exponent: f64 },
    Hot { hot_fraction: f64, hot_probability: f64 },
}

impl FromStr for DistSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<DistSpec, String> {
        let text = text.trim();
        let (name, parameters) = match text.split_once(':') {
            Some((name, parameters)) => (name, Some(parameters)),
            None => (text, None),
        };
        let number = |value: &str| -> Result<f64, String> {
            value
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|number| number.is_finite())
                .ok_or_else(|| format!("{value:?} is not a number"))
        };
        match (name, parameters) {
            ("uniform", None) => Ok(DistSpec::Uniform),
            ("zipf", None) => Ok(DistSpec::Zipf { exponent: 0.99 }),
            ("zipf", Some(exponent)) => {
                let exponent = number(exponent)?;
                if exponent <= 0.0 || exponent > 10.0 {
                    return Err("the zipf exponent must be in (0, 10]".into());
                }
                Ok(DistSpec::Zipf { exponent })
            }
            ("hot", Some(parameters)) => {
                let (fraction, probability) = parameters
                    .split_once(',')
                    .ok_or("hot takes two numbers: hot:FRACTION,PROBABILITY (e.g. hot:0.01,0.9)")?;
                let hot_fraction = number(fraction)?;
                let hot_probability = number(probability)?;
                if !(hot_fraction > 0.0 && hot_fraction <= 1.0) {
                    return Err("the hot fraction must be in (0, 1]".into());
                }
                if !(0.0..=1.0).contains(&hot_probability) {
                    return Err("the hot probability must be in [0, 1]".into());
                }
                Ok(DistSpec::Hot { hot_fraction, hot_probability })
            }
            _ => Err(format!(
                "unknown distribution {text:?}: use uniform, zipf:S (e.g. zipf:0.99) or hot:F,P (e.g. hot:0.01,0.9)"
            )),
        }
    }
}

impl fmt::Display for DistSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DistSpec::Uniform => write!(f, "uniform"),
            DistSpec::Zipf { exponent } => write!(f, "zipf:{exponent}"),
            DistSpec::Hot { hot_fraction, hot_probability } => {
                write!(f, "hot:{hot_fraction},{hot_probability}")
            }
        }
    }
}

/// Draws card indexes in `0..card_count` by a distribution.
#[derive(Clone, Debug)]
pub(crate) struct CardPicker {
    card_count: u32,
    kind: PickerKind,
}

#[derive(Clone, Debug)]
enum PickerKind {
    Uniform,
    Zipf(ZipfSampler),
    /// Cards `0..hot_count` get `hot_probability` of the draws.
    Hot {
        hot_count: u32,
        hot_probability: f64,
    },
}

impl CardPicker {
    /// A picker over `card_count` (at least 1) cards.
    pub(crate) fn new(spec: DistSpec, card_count: u32) -> CardPicker {
        let card_count = card_count.max(1);
        let kind = match spec {
            DistSpec::Uniform => PickerKind::Uniform,
            DistSpec::Zipf { exponent } => {
                PickerKind::Zipf(ZipfSampler::new(u64::from(card_count), exponent))
            }
            DistSpec::Hot { hot_fraction, hot_probability } => {
                #[expect(
                    clippy::cast_possible_truncation,
                    reason = "a count of cards, not money: `as` saturates, the clamp bounds it"
                )]
                let hot_count =
                    ((f64::from(card_count) * hot_fraction).round() as u32).clamp(1, card_count);
                PickerKind::Hot { hot_count, hot_probability }
            }
        };
        CardPicker { card_count, kind }
    }

    pub(crate) fn pick(&self, rng: &mut Rng) -> u32 {
        match &self.kind {
            PickerKind::Uniform => rng.below_u32(self.card_count),
            // A rank in 1..=card_count, so the card index fits.
            PickerKind::Zipf(sampler) => {
                u32::try_from(sampler.sample(rng) - 1).expect("a Zipf rank is at most card_count")
            }
            PickerKind::Hot { hot_count, hot_probability } => {
                let cold_count = self.card_count - hot_count;
                if cold_count == 0 || rng.next_f64() < *hot_probability {
                    rng.below_u32(*hot_count)
                } else {
                    hot_count + rng.below_u32(cold_count)
                }
            }
        }
    }
}

/// Zipf over ranks `1..=element_count` with the given exponent (> 0), by rejection-inversion.
#[derive(Clone, Debug)]
pub(crate) struct ZipfSampler {
    element_count: u64,
    exponent: f64,
    h_integral_x1: f64,
    h_integral_element_count: f64,
    squeeze: f64,
}

impl ZipfSampler {
    pub(crate) fn new(element_count: u64, exponent: f64) -> ZipfSampler {
        let element_count = element_count.max(1);
        let mut sampler = ZipfSampler {
            element_count,
            exponent,
            h_integral_x1: 0.0,
            h_integral_element_count: 0.0,
            squeeze: 0.0,
        };
        sampler.h_integral_x1 = sampler.h_integral(1.5) - 1.0;
        sampler.h_integral_element_count = sampler.h_integral(element_count as f64 + 0.5);
        sampler.squeeze =
            2.0 - sampler.h_integral_inverse(sampler.h_integral(2.5) - sampler.h(2.0));
        sampler
    }

    /// A rank in `1..=element_count`.
    pub(crate) fn sample(&self, rng: &mut Rng) -> u64 {
        loop {
            let u = self.h_integral_element_count
                + rng.next_f64() * (self.h_integral_x1 - self.h_integral_element_count);
            let x = self.h_integral_inverse(u);
            let rank = (x + 0.5).floor().clamp(1.0, self.element_count as f64);
            if rank - x <= self.squeeze || u >= self.h_integral(rank + 0.5) - self.h(rank) {
                #[expect(
                    clippy::cast_possible_truncation,
                    reason = "a whole number in 1..=element_count (floored and clamped above)"
                )]
                return rank as u64;
            }
        }
    }

    /// H(x) = ((x^(1-s)) - 1) / (1 - s), continuous at s = 1 (log x).
    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.exponent) * log_x) * log_x
    }

    /// h(x) = x^-s.
    fn h(&self, x: f64) -> f64 {
        (-self.exponent * x.ln()).exp()
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.exponent)).max(-1.0);
        (helper1(t) * x).exp()
    }
}

/// ln(1+x)/x, accurate near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 { x.ln_1p() / x } else { 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x)) }
}

/// (e^x - 1)/x, accurate near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_stays_in_bounds_for_many_sizes_and_exponents() {
        let mut rng = Rng::new(3);
        for &count in &[1u64, 2, 3, 10, 1000, 1_000_000] {
            for &exponent in &[0.5, 0.99, 1.0, 1.2, 2.5] {
                let sampler = ZipfSampler::new(count, exponent);
                for _ in 0..2000 {
                    let rank = sampler.sample(&mut rng);
                    assert!((1..=count).contains(&rank), "rank {rank} of {count} at s={exponent}");
                }
            }
        }
    }

    #[test]
    fn zipf_frequencies_follow_the_law() {
        // n = 10, s = 1: P(1) = 1 / H_10 ≈ 0.3414, P(2) = P(1)/2.
        let sampler = ZipfSampler::new(10, 1.0);
        let mut rng = Rng::new(11);
        let draws = 200_000;
        let mut counts = [0u64; 11];
        for _ in 0..draws {
            counts[sampler.sample(&mut rng) as usize] += 1;
        }
        let harmonic: f64 = (1..=10).map(|k| 1.0 / f64::from(k)).sum();
        for rank in 1..=10usize {
            let expected = 1.0 / (rank as f64 * harmonic);
            let observed = counts[rank] as f64 / f64::from(draws);
            assert!(
                (observed - expected).abs() < 0.01,
                "rank {rank}: observed {observed}, expected {expected}"
            );
        }
    }

    #[test]
    fn pickers_stay_in_bounds_and_hot_set_is_hot() {
        let mut rng = Rng::new(5);
        for spec in ["uniform", "zipf:0.99", "hot:0.01,0.9", "hot:1,0.5"] {
            let picker = CardPicker::new(spec.parse().expect("spec"), 1000);
            for _ in 0..10_000 {
                assert!(picker.pick(&mut rng) < 1000);
            }
        }
        let picker = CardPicker::new("hot:0.01,0.9".parse().expect("spec"), 1000);
        let hot = (0..100_000).filter(|_| picker.pick(&mut rng) < 10).count();
        assert!((88_000..92_000).contains(&hot), "hot share {hot}");
        let single = CardPicker::new(DistSpec::Uniform, 0);
        assert_eq!(single.pick(&mut rng), 0);
    }

    #[test]
    fn specs_parse_and_print() {
        assert_eq!("uniform".parse::<DistSpec>(), Ok(DistSpec::Uniform));
        assert_eq!("zipf:1.2".parse::<DistSpec>(), Ok(DistSpec::Zipf { exponent: 1.2 }));
        assert_eq!(
            "hot:0.01,0.9".parse::<DistSpec>(),
            Ok(DistSpec::Hot { hot_fraction: 0.01, hot_probability: 0.9 })
        );
        assert!("zipf:-1".parse::<DistSpec>().is_err());
        assert!("hot:0.5".parse::<DistSpec>().is_err());
        assert!("normal".parse::<DistSpec>().is_err());
        assert_eq!(DistSpec::Zipf { exponent: 0.99 }.to_string(), "zipf:0.99");
    }
}
