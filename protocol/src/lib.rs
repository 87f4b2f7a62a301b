//! The Pinswitch wire contract, protocol v1: length-prefixed, checksummed frames whose bodies are
//! rkyv archives of batches of events; the stable result codes; PIN number rules; and (feature
//! `client`) the async client library that the CLI, the load generator and the tests use.
//! PROTOCOL.md beside this crate specifies every byte. This crate does no server-side work.

#![forbid(unsafe_code)]

pub mod codes;
pub mod diameter;
pub mod frame;
pub mod iso8583;
pub mod messages;
pub mod pin;
mod wire_enum;

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod tls;

#[cfg(feature = "client")]
pub use client::{Client, ClientError, ClientOptions};
pub use codes::{Category, Field, ResultCode};
pub use frame::{
    BatchSlice, BodyAccess, BodyDecode, BodyEncode, DecodeError, FLAG_PUSH, FLAG_RESPONSE,
    FLAG_RETRANSMIT, Frame, FrameError, FrameHeader, HEADER_BYTES, MAGIC, PendingFrame, VERSION,
    access_body, decode_body, decode_frame, encode_body, encode_frame, encode_frame_body,
    fuzz_decode, pending_frame,
};
pub use messages::*;

/// Makes a fresh op id laid out like a UUIDv7: the top 48 bits are milliseconds since the Unix
/// epoch (the server uses them to enforce the idempotency window), the low 80 bits are unique to
/// this process (a random per-process prefix and a counter), so ids sort by time and never repeat.
pub fn new_op_id() -> u128 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS; good enough to keep processes apart.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(u64::from(std::process::id()));
        hasher.finish()
    });
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        // Saturates: u64 milliseconds last 584 million years, and `op_id_at` keeps 48 bits.
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    // 40 bits of prefix above 40 bits of counter fill the 80 low bits; widened first so the
    // prefix is not shifted out of a u64.
    op_id_at(
        now_ms,
        (u128::from(prefix & 0xFF_FFFF_FFFF) << 40) | u128::from(count & 0xFF_FFFF_FFFF),
    )
}

/// An op id with an explicit time and 80 low bits (tests and simulators use it for determinism).
pub fn op_id_at(time_ms: u64, low_bits: u128) -> u128 {
    (u128::from(time_ms & 0xFFFF_FFFF_FFFF) << 80) | (low_bits & ((1u128 << 80) - 1))
}

/// The time embedded in an op id (ms since the Unix epoch).
pub fn op_id_time_ms(op_id: u128) -> u64 {
    (op_id >> 80) as u64
}
