//! Helpers shared by the criterion benchmarks in `benches/` (the benchmarks themselves are
//! separate targets): a seeded card chooser and a shard filled with active cards.

use pinswitch_core::{Body, Command, EngineConfig, PasswordMac, PinHash, Shard};
use pinswitch_protocol::op_id_at;

/// splitmix64: a seeded, deterministic card chooser.
pub fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One shard holding `cards` issued and activated cards of 100,000 won, card `index` named by
/// `card(index)` (its PIN hash and password MAC), all at time `t0_ms`.
pub fn active_shard(
    config: EngineConfig,
    cards: u64,
    t0_ms: u64,
    card: impl Fn(u64) -> (PinHash, PasswordMac),
) -> Shard {
    let mut shard = Shard::new(0, 1, config);
    let mut op = 0u128;
    for index in 0..cards {
        let (pin_hash, password_mac) = card(index);
        for body in [
            Body::Issue { pin_hash, face_value_won: 100_000 },
            Body::Activate { pin_hash, password_mac },
        ] {
            op += 1;
            let applied = shard
                .apply(t0_ms, &Command { op_id: op_id_at(t0_ms, op), deadline_at_ms: 0, body });
            assert!(applied.changed, "preparing card {index}");
        }
    }
    shard
}
