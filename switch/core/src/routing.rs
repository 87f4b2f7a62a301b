//! Routing is a pure function: one card lives on exactly one shard, chosen from the keyed hash
//! of its PIN. CARD_ISSUE is routed by its op id instead (the server then draws a PIN whose hash
//! lands on that same shard), so a retried issue meets its own idempotency record.

use crate::types::{OpId, PinHash};

/// The shard that owns the card with this PIN hash.
pub fn shard_of_card(pin_hash: PinHash, shard_count: u16) -> u16 {
    assert!(shard_count > 0, "at least one shard");
    // The PIN hash is a keyed PRF output, so its high bits are already uniform.
    ((pin_hash >> 64) as u64 % u64::from(shard_count)) as u16
}

/// The shard that executes a CARD_ISSUE with this op id.
pub fn shard_of_op(op_id: OpId, shard_count: u16) -> u16 {
    assert!(shard_count > 0, "at least one shard");
    // Op ids carry a timestamp in their high bits; mix the low bits so consecutive ids spread.
    #[expect(clippy::cast_possible_truncation, reason = "`op_id as u64` keeps the low half")]
    let mixed = (op_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((op_id >> 64) as u64);
    u16::try_from((mixed >> 32) % u64::from(shard_count)).expect("a remainder below a u16 fits")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_is_stable_and_spreads() {
        let shard_count = 4;
        let mut counts = [0u32; 4];
        for index in 0..4000u128 {
            let pin_hash = index.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
            let shard = shard_of_card(pin_hash, shard_count);
            assert_eq!(shard, shard_of_card(pin_hash, shard_count));
            counts[usize::from(shard)] += 1;
            counts[usize::from(shard_of_op(index, shard_count))] += 1;
        }
        for count in counts {
            assert!(count > 1600, "uneven spread: {counts:?}");
        }
    }
}
