//! The journal and snapshot bytes that hold the engine's rules, pinned. There is no format
//! version yet, so a data directory written by an older build must decode byte for byte: these
//! tests compare today's encodings with hex dumps under `tests/pinned/`, made by the code before
//! a product became one struct (issue 13; `EngineConfig` was archived itself then, its
//! `ConfigRecord` is now), and decode the dumps back.
//! A dump is never regenerated to make a test pass; a change that needs new bytes is a format
//! change, with a version and a migration.

use pinswitch_core::encode_entry;
use pinswitch_core::{
    Body, Command, ConfigRecord, EngineConfig, JournalEntry, Reply, Shard, decode_entry,
};
use pinswitch_protocol::ResultCode;

/// The time every pinned command ran at.
const NOW_MS: u64 = 1_700_000_000_000;

/// A pinned dump as bytes (hex, 48 bytes a line).
fn pinned(hex: &str) -> Vec<u8> {
    let digits: Vec<u8> = hex.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// Equal bytes, or a failure naming the first offset that differs (an assert on two long
/// vectors would print them whole).
fn assert_same_bytes(what: &str, today: &[u8], pinned: &[u8]) {
    let first = today.iter().zip(pinned).position(|(a, b)| a != b);
    assert!(
        first.is_none() && today.len() == pinned.len(),
        "{what}: {} bytes today, {} pinned, first difference at {first:?}",
        today.len(),
        pinned.len()
    );
}

/// The rules as the journal and snapshots archive them.
fn archived_config(config: &EngineConfig) -> Vec<u8> {
    rkyv::to_bytes::<rkyv::rancor::Error>(&ConfigRecord::from(config)).unwrap().to_vec()
}

/// The CONFIGURE record a switch journals when it starts under `test_min` rules.
fn configure_entry() -> JournalEntry {
    JournalEntry {
        now_ms: NOW_MS,
        command: Command {
            op_id: 0,
            deadline_at_ms: 0,
            body: Body::configure(&EngineConfig::test_min()),
        },
        reply: Reply::code(ResultCode::Approved),
    }
}

#[test]
fn the_rules_archive_as_pinned() {
    assert_same_bytes(
        "production()",
        &archived_config(&EngineConfig::production()),
        &pinned(include_str!("pinned/config_production.hex")),
    );
    // test_min sets every per-product rule (categories, points, validity, recharge unit, cap,
    // promotional), so every per-product vector of the record is pinned non-empty.
    assert_same_bytes(
        "test_min()",
        &archived_config(&EngineConfig::test_min()),
        &pinned(include_str!("pinned/config_test_min.hex")),
    );
}

/// The pinned archives decode into records that convert to the same rules.
#[test]
fn the_pinned_rules_decode_to_the_same_rules() {
    for (config, hex) in [
        (EngineConfig::production(), include_str!("pinned/config_production.hex")),
        (EngineConfig::test_min(), include_str!("pinned/config_test_min.hex")),
    ] {
        let record = rkyv::from_bytes::<ConfigRecord, rkyv::rancor::Error>(&pinned(hex)).unwrap();
        assert_eq!(EngineConfig::try_from(&record).unwrap(), config);
    }
}

#[test]
fn a_configure_record_archives_and_decodes_as_pinned() {
    let bytes = pinned(include_str!("pinned/entry_configure_test_min.hex"));
    assert_same_bytes("CONFIGURE entry", &encode_entry(&configure_entry()), &bytes);
    assert_eq!(decode_entry(&bytes).unwrap(), configure_entry());
}

/// A shard that took the CONFIGURE above, then issued, activated and recharged a promotional
/// card: its snapshot image holds the rules beside the card.
#[test]
fn a_snapshot_archives_and_restores_as_pinned() {
    let mut shard = Shard::new(0, 1, EngineConfig::production());
    assert!(shard.apply(NOW_MS, &configure_entry().command).changed);
    let op_id = |n: u128| (u128::from(NOW_MS) << 80) | n;
    for (n, body) in [
        (1, Body::Issue { pin_hash: 7, face_value_won: 20_000 }),
        (2, Body::Activate { pin_hash: 7, password_mac: 99 }),
        (3, Body::Load { pin_hash: 7, amount_won: 10_000, funding: 4 }),
    ] {
        let applied = shard.apply(NOW_MS, &Command { op_id: op_id(n), deadline_at_ms: 0, body });
        assert_eq!(applied.reply.result_code(), ResultCode::Approved);
    }
    let bytes = pinned(include_str!("pinned/snapshot_test_min.hex"));
    assert_same_bytes("snapshot", &shard.to_snapshot_bytes(), &bytes);
    let restored = Shard::from_snapshot_bytes(&bytes).unwrap();
    assert_eq!(restored.config(), &EngineConfig::test_min());
    assert_same_bytes("snapshot restored", &restored.to_snapshot_bytes(), &bytes);
}
