//! The journal and snapshot bytes that hold the engine's rules, pinned, so a data directory
//! written by an older build decodes byte for byte: these tests compare today's encodings with
//! hex dumps under `tests/pinned/` and decode the dumps back. The rules' dumps were made by the
//! code before a product became one struct (issue 13; `EngineConfig` was archived itself then,
//! its `ConfigRecord` is now); the snapshot dump of image format 0 by the code before images
//! were numbered, and image format 1's, 2's, 3's and the UPGRADE record's by the code that
//! added them.
//! A dump is never regenerated to make a test pass; a change that needs new bytes is a format
//! change: a new number, a new dump, and the old dumps still read.

use pinswitch_core::encode_entry;
use pinswitch_core::{
    Body, Command, ConfigRecord, ENGINE_FORMAT_CURRENT, EngineConfig, JournalEntry, Reply, Shard,
    decode_entry,
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

/// The UPGRADE record a switch journals when it finds a shard in engine format 1.
fn upgrade_entry() -> JournalEntry {
    JournalEntry {
        now_ms: NOW_MS,
        command: Command {
            op_id: 0,
            deadline_at_ms: 0,
            body: Body::Upgrade {
                engine_format: 2,
                approval_key: [0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210],
            },
        },
        reply: Reply::code(ResultCode::Approved),
    }
}

#[test]
fn an_upgrade_record_archives_and_decodes_as_pinned() {
    let bytes = pinned(include_str!("pinned/entry_upgrade_format_2.hex"));
    assert_same_bytes("UPGRADE entry", &encode_entry(&upgrade_entry()), &bytes);
    assert_eq!(decode_entry(&bytes).unwrap(), upgrade_entry());
}

/// A shard in engine format `engine_format` that took the CONFIGURE above, then issued,
/// activated and recharged a promotional card: its snapshot image holds the rules beside the
/// card, and the three approval codes its format drew.
fn pinned_shard(engine_format: u16) -> Shard {
    let mut shard = Shard::first_format(0, 1, EngineConfig::production(), [0, 0]);
    if engine_format == 2 {
        assert!(shard.apply(NOW_MS, &upgrade_entry().command).changed);
    }
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
    shard
}

/// Image format 0 (written until snapshots numbered their images) is still read: the pinned
/// image, made by that code, restores to the shard that the same commands make in engine
/// format 1, which then writes it in today's image format.
#[test]
fn a_format_0_snapshot_restores_as_pinned() {
    let bytes = pinned(include_str!("pinned/snapshot_test_min.hex"));
    let restored = Shard::from_snapshot_image(0, &bytes).unwrap();
    assert_eq!(restored.config(), &EngineConfig::test_min());
    assert_eq!(restored.engine_format(), 1);
    assert_same_bytes(
        "format 0 restored",
        &restored.to_snapshot_bytes(),
        &pinned_shard(1).to_snapshot_bytes(),
    );
    assert!(Shard::from_snapshot_image(1, &bytes).is_err(), "format 0 is not format 1");
}

/// Image format 1 (engine format 2), pinned when it was written: read, and written again in
/// today's image format as the shard that the same commands make.
#[test]
fn a_format_1_snapshot_restores_as_pinned() {
    let bytes = pinned(include_str!("pinned/snapshot_format_1_engine_2.hex"));
    let restored = Shard::from_snapshot_image(1, &bytes).unwrap();
    assert_eq!((restored.engine_format(), restored.config()), (2, &EngineConfig::test_min()));
    assert_same_bytes(
        "format 1 restored",
        &restored.to_snapshot_bytes(),
        &pinned_shard(2).to_snapshot_bytes(),
    );
    // The engine format never falls, and a format this code does not know is refused.
    let mut shard = restored;
    let upgrade = |shard: &mut Shard, engine_format| {
        let body = Body::Upgrade { engine_format, approval_key: [1, 2] };
        let applied = shard.apply(NOW_MS, &Command { op_id: 0, deadline_at_ms: 0, body });
        (applied.reply.result_code(), applied.changed)
    };
    let unknown = ENGINE_FORMAT_CURRENT + 1;
    for engine_format in [1, 2, unknown] {
        assert_eq!(upgrade(&mut shard, engine_format), (ResultCode::FormatError, false));
        assert_eq!(shard.engine_format(), 2);
    }
    assert_eq!(upgrade(&mut shard, ENGINE_FORMAT_CURRENT), (ResultCode::Approved, true));
    assert_eq!(upgrade(&mut shard, 2), (ResultCode::FormatError, false), "never falls");
}

/// test_min's rules with a password rule of their own on two products: rules the frozen
/// record cannot hold.
fn rules_with_product_passwords() -> EngineConfig {
    let mut config = EngineConfig::test_min();
    config.products[0].session_password_required = Some(true);
    config.products[3].session_password_required = Some(false);
    config
}

/// The CONFIGURE_EXTENDED record a switch journals for those rules.
fn configure_extended_entry() -> JournalEntry {
    JournalEntry {
        now_ms: NOW_MS,
        command: Command {
            op_id: 0,
            deadline_at_ms: 0,
            body: Body::configure(&rules_with_product_passwords()),
        },
        reply: Reply::code(ResultCode::Approved),
    }
}

#[test]
fn a_configure_extended_record_archives_and_decodes_as_pinned() {
    let entry = configure_extended_entry();
    assert!(matches!(entry.command.body, Body::ConfigureExtended(_)));
    let bytes = pinned(include_str!("pinned/entry_configure_extended.hex"));
    assert_same_bytes("CONFIGURE_EXTENDED entry", &encode_entry(&entry), &bytes);
    assert_eq!(decode_entry(&bytes).unwrap(), entry);
}

/// Image format 2 holds the added rules: a shard under them, pinned when format 2 was written,
/// restores to the shard the same commands make, which writes it in today's image format.
#[test]
fn a_format_2_snapshot_restores_as_pinned() {
    let mut shard = pinned_shard(2);
    assert!(shard.apply(NOW_MS, &configure_extended_entry().command).changed);
    let bytes = pinned(include_str!("pinned/snapshot_format_2_engine_2.hex"));
    let restored = Shard::from_snapshot_image(2, &bytes).unwrap();
    // The same rules (a product without a rule of its own comes back with the global one).
    assert!(restored.config().same_record(&rules_with_product_passwords()));
    assert_same_bytes(
        "format 2 restored",
        &restored.to_snapshot_bytes(),
        &shard.to_snapshot_bytes(),
    );
}

/// Image format 3 holds the op-id records in their compact form (fingerprints of the bodies,
/// the replies' numbers): the same shard, pinned, restored, and a newer image format refused.
#[test]
fn a_format_3_snapshot_archives_and_restores_as_pinned() {
    let mut shard = pinned_shard(2);
    assert!(shard.apply(NOW_MS, &configure_extended_entry().command).changed);
    let bytes = pinned(include_str!("pinned/snapshot_format_3_engine_2.hex"));
    assert_same_bytes("format 3 snapshot", &shard.to_snapshot_bytes(), &bytes);
    let restored = Shard::from_snapshot_image(3, &bytes).unwrap();
    assert!(restored.config().same_record(&rules_with_product_passwords()));
    assert_same_bytes("format 3 restored", &restored.to_snapshot_bytes(), &bytes);
    // The restored records answer retries as the first ones did.
    let op_id = (u128::from(NOW_MS) << 80) | 3;
    let mut restored = restored;
    let retry = Body::Load { pin_hash: 7, amount_won: 10_000, funding: 4 };
    let replayed = restored.apply(NOW_MS, &Command { op_id, deadline_at_ms: 0, body: retry });
    assert!(replayed.reply.replayed && replayed.reply.result_code() == ResultCode::Approved);
    assert_eq!(replayed.reply.balance_won, 30_000);
    let newer = Shard::from_snapshot_image(4, &bytes).err().unwrap();
    assert!(newer.contains("image format 4 is newer"), "{newer}");
}

/// Format 2's approval codes are not format 1's counter: the first three differ from 100001,
/// 100002, 100003 and are six digits.
#[test]
fn format_2_approval_codes_are_keyed_not_counted() {
    let codes = |engine_format| {
        let mut shard = pinned_shard(engine_format);
        let op_id = (u128::from(NOW_MS) << 80) | 9;
        let body = Body::Load { pin_hash: 7, amount_won: 10_000, funding: 4 };
        shard.apply(NOW_MS, &Command { op_id, deadline_at_ms: 0, body }).reply.approval_code
    };
    assert_eq!(codes(1), 100_004, "format 1 counts");
    let keyed = codes(2);
    assert!((100_000..1_000_000).contains(&keyed) && keyed != 100_004, "{keyed}");
    // The key decides the codes: another key, other codes for the same approvals.
    let first_code = |approval_key| {
        let mut shard = Shard::first_format(0, 1, EngineConfig::production(), [0, 0]);
        let body = Body::Upgrade { engine_format: 2, approval_key };
        assert!(shard.apply(NOW_MS, &Command { op_id: 0, deadline_at_ms: 0, body }).changed);
        let op_id = (u128::from(NOW_MS) << 80) | 1;
        let body = Body::Issue { pin_hash: 7, face_value_won: 20_000 };
        shard.apply(NOW_MS, &Command { op_id, deadline_at_ms: 0, body }).reply.approval_code
    };
    assert_ne!(first_code([7, 7]), first_code([7, 8]));
}

/// Writes a dump in the layout `pinned` reads (for a new format's first dump only).
#[expect(dead_code, reason = "run by hand when a new format is pinned")]
fn dump(bytes: &[u8]) -> String {
    bytes
        .chunks(48)
        .map(|line| line.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
        .collect()
}
