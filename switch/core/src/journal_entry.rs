//! The journal record of one applied command: the server time it ran at, the command, and the
//! reply it produced. Recovery re-applies `command` at `now_ms` and asserts that the engine
//! answers `reply` again, so a divergence between the code and the journal is caught at start-up
//! instead of serving different balances. The encoding is an rkyv archive, validated on decode.

use rkyv::rancor::Error as RkyvError;
use rkyv::{Archive, Deserialize, Serialize};

use crate::types::{Command, Ms, Reply};

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    pub now_ms: Ms,
    pub command: Command,
    pub reply: Reply,
}

/// Serializes an entry for `Journal::append`.
pub fn encode_entry(entry: &JournalEntry) -> Vec<u8> {
    let mut buffer = Vec::new();
    encode_entry_into(entry, &mut buffer);
    buffer
}

/// Serializes an entry into `buffer` (cleared first), reusing its allocation: the shard loop
/// encodes one entry per changed command, so it keeps one buffer instead of allocating each time.
pub fn encode_entry_into(entry: &JournalEntry, buffer: &mut Vec<u8>) {
    let mut writer = std::mem::take(buffer);
    writer.clear();
    *buffer = rkyv::api::high::to_bytes_in::<_, RkyvError>(entry, writer)
        .expect("serializing a journal entry into memory cannot fail");
}

/// Decodes a journal payload, validating the archive first (journal bytes are checksummed, but a
/// record written by another version of the code must still fail cleanly, never crash).
pub fn decode_entry(bytes: &[u8]) -> Result<JournalEntry, String> {
    rkyv::from_bytes::<JournalEntry, RkyvError>(bytes).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Body;

    #[test]
    fn entries_round_trip_and_garbage_is_an_error() {
        let entry = JournalEntry {
            now_ms: 1_700_000_000_000,
            command: Command {
                op_id: 42,
                deadline_at_ms: 7,
                body: Body::Sale {
                    pin_hash: 9,
                    password_mac: 3,
                    amount_won: 1500,
                    merchant_id: 5,
                    category: 1,
                },
            },
            reply: crate::types::Reply::code(pinswitch_protocol::ResultCode::Approved),
        };
        let bytes = encode_entry(&entry);
        assert_eq!(decode_entry(&bytes).unwrap(), entry);
        let mut reused = vec![0xAB; 3];
        encode_entry_into(&entry, &mut reused);
        assert_eq!(reused, bytes, "a reused buffer holds exactly the encoding");
        assert!(decode_entry(&bytes[..bytes.len() / 2]).is_err());
        assert!(decode_entry(&[0xFF; 64]).is_err());
    }
}
