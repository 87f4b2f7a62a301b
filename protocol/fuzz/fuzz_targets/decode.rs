//! Fuzz target: arbitrary bytes through the frame decoder and every message type's body
//! validators (`pinswitch_protocol::fuzz_decode`). Any panic is a bug: outside bytes must only
//! ever produce errors.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pinswitch_protocol::fuzz_decode(data);
});
