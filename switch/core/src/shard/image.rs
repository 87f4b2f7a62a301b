//! The shard as bytes and back: `ShardImage` and `ShardImageFormat1` to `3` are the snapshot
//! formats (rkyv; their fields and order are the format, so they change only with a new image
//! format, and every earlier one stays readable), and `check_invariants` is the full scan
//! recovery runs over a restored shard before it serves anything.

use std::sync::Arc;

use pinswitch_protocol::OpStatus;
use rkyv::rancor::Error as RkyvError;
use rkyv::{Archive, Deserialize, Serialize};

use super::{Card, Hold, OpRecord, OpTable, Session, Shard};
use crate::config::EngineConfig;
use crate::config_record::{ConfigRecord, ConfigRecordAdded};
use crate::dense_map::DenseMap;
use crate::hasher::{KeyHasherBuilder, KeyMap};
use crate::types::{Body, ForeignCode, Ms, OpId, PinHash, Reply, Totals};

/// The serialized form of a shard (snapshots), image format 0 (the layout before image formats
/// were numbered; image format 1 wraps it). Never change it: images in this format are read
/// as written. The big tables go in as their `DenseMap` parts:
/// taking them shares the chunks (no copy), and restoring them keeps the index (no rehash of
/// millions of keys); rkyv's shared-pointer support writes each chunk once.
#[derive(Archive, Serialize, Deserialize)]
struct ShardImage {
    hash_key: [u64; 2],
    shard_id: u16,
    shard_count: u16,
    /// The rules as the journal holds them (`EngineConfig` itself is not archived).
    config: ConfigRecord,
    now_ms: Ms,
    evicted_floor_ms: Ms,
    approvals: u32,
    totals: Totals,
    cards: TableImage<Card>,
    holds: Vec<(OpId, Hold)>,
    /// Empty from image format 3 on (the compact records are in `ShardImageFormat3`).
    ops_current: TableImage<OpRecordFormat0>,
    ops_previous: TableImage<OpRecordFormat0>,
    ops_current_max_time_ms: Ms,
    ops_previous_max_time_ms: Ms,
    foreign_pools: Vec<(u32, Vec<ForeignCode>)>,
    foreign_known: Vec<(u128, u32)>,
    foreign_conversions: Vec<(OpId, ForeignCode)>,
    gift_recipients: Vec<(PinHash, u64)>,
    sessions: Vec<(u128, Session)>,
    /// Expired sessions, oldest first.
    expired_sessions: Vec<(u128, Session)>,
}

/// Image format 1: format 0's image, then what the engine format added. Read, no longer
/// written.
#[derive(Archive, Serialize, Deserialize)]
struct ShardImageFormat1 {
    shard: ShardImage,
    engine_format: u16,
    approval_key: [u64; 2],
}

/// Image format 2: format 1's fields, then the rules added to the frozen record.
#[derive(Archive, Serialize, Deserialize)]
struct ShardImageFormat2 {
    shard: ShardImage,
    engine_format: u16,
    approval_key: [u64; 2],
    config_added: ConfigRecordAdded,
}

/// Image format 3: format 2's fields with the op-id records in their compact form (the
/// format-0 tables of `shard` are written empty), each generation with its wide replies.
#[derive(Archive, Serialize, Deserialize)]
struct ShardImageFormat3 {
    shard: ShardImage,
    engine_format: u16,
    approval_key: [u64; 2],
    config_added: ConfigRecordAdded,
    ops_current: TableImage<OpRecord>,
    ops_previous: TableImage<OpRecord>,
    ops_current_wide: Vec<(OpId, Reply)>,
    ops_previous_wide: Vec<(OpId, Reply)>,
}

/// An op-id record as image formats 0 to 2 hold it: the whole first body and reply. Read at
/// an upgrade and turned into the compact `OpRecord`, never written.
#[derive(Archive, Serialize, Deserialize, Clone)]
struct OpRecordFormat0 {
    body: Body,
    reply: Reply,
    status: u8,
    debited_won: u64,
    refunded_won: u64,
}

/// The compact records of a format-0 table, in the same order, under the same op ids.
fn compact_table(
    hasher: KeyHasherBuilder,
    table: TableImage<OpRecordFormat0>,
    what: &str,
) -> Result<(DenseMap<OpRecord>, KeyMap<Reply>), String> {
    let full = table.restore(hasher, what)?;
    let mut compact = OpTable::new(hasher);
    for (op_id, record) in full.iter() {
        let status = OpStatus::from_u8(record.status)
            .ok_or_else(|| format!("{what}: op status {}", record.status))?;
        compact.insert(*op_id, &record.body, record.reply, status, record.debited_won);
        if record.refunded_won > 0 {
            compact.get_mut(op_id).expect("inserted above").add_refunded(record.refunded_won);
        }
    }
    Ok((compact.current, compact.current_wide))
}

/// A `DenseMap`'s chunks and index.
#[derive(Archive, Serialize, Deserialize)]
struct TableImage<V: Clone> {
    chunks: Vec<Arc<Vec<(u128, V)>>>,
    slots: Arc<Vec<u64>>,
}

impl<V: Clone> TableImage<V> {
    fn of(map: &DenseMap<V>) -> TableImage<V> {
        let (chunks, slots) = map.parts();
        TableImage { chunks, slots }
    }

    fn restore(self, hasher: KeyHasherBuilder, what: &str) -> Result<DenseMap<V>, String> {
        DenseMap::from_parts(hasher, self.chunks, self.slots)
            .map_err(|why| format!("{what}: {why}"))
    }
}

impl Shard {
    /// Full scan: the totals equal the sum over cards and holds. O(cards); tests and recovery.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut balances_won = 0u128;
        let mut held_won = 0u128;
        let mut held_cards = 0usize;
        let session_cards = self.sessions.reserved_by_card();
        let mut sessions = 0usize;
        for (pin_hash, card) in self.cards.iter() {
            if card.held_won > card.balance_won {
                return Err(format!(
                    "card {pin_hash:x}: held {} > balance {}",
                    card.held_won, card.balance_won
                ));
            }
            sessions += usize::from(card.sessions);
            // Only cards with holds are looked up: this scan runs at every recovery, over
            // millions of cards, and a lookup per card was most of its time.
            if card.holds > 0 || card.held_won > 0 || card.sessions > 0 {
                let (reserved_won, session_count) =
                    session_cards.get(pin_hash).copied().unwrap_or_default();
                if session_count != usize::from(card.sessions) {
                    return Err(format!(
                        "card {pin_hash:x}: {} sessions counted, {session_count} live",
                        card.sessions
                    ));
                }
                let (holds_won, hold_count) = self.holds.card_pending(*pin_hash);
                if holds_won + reserved_won != card.held_won
                    || hold_count != usize::from(card.holds)
                {
                    return Err(format!(
                        "card {pin_hash:x}: holds disagree with held {}",
                        card.held_won
                    ));
                }
            }
            held_cards += usize::from(card.holds > 0);
            balances_won += u128::from(card.balance_won);
            held_won += u128::from(card.held_won);
        }
        if balances_won != self.totals.balances_won || held_won != self.totals.held_won {
            return Err(format!(
                "totals {:?} disagree with cards: balances {balances_won}, held {held_won}",
                self.totals
            ));
        }
        if sessions != self.sessions.len() {
            return Err(format!(
                "cards count {sessions} sessions, {} are live",
                self.sessions.len()
            ));
        }
        self.sessions.check(self.config.expired_sessions_max as usize)?;
        // Every card with hold ids is a card with holds (checked one way above).
        if !self.holds.indexes_agree(held_cards) {
            return Err("index sizes disagree".into());
        }
        Ok(())
    }

    /// A snapshot image of the whole shard, in image format `SNAPSHOT_IMAGE_FORMAT`.
    pub fn to_snapshot_bytes(&self) -> Vec<u8> {
        let (foreign_pools, foreign_known, foreign_conversions) = self.foreign.to_image();
        let (sessions, expired_sessions) = self.sessions.to_image();
        let image = ShardImage {
            hash_key: self.hash_key,
            shard_id: self.shard_id,
            shard_count: self.shard_count,
            config: ConfigRecord::from(&self.config),
            now_ms: self.now_ms,
            evicted_floor_ms: self.ops.evicted_floor_ms,
            approvals: self.approvals,
            totals: self.totals,
            cards: TableImage::of(&self.cards),
            holds: self.holds.to_image(),
            ops_current: TableImage::of(&DenseMap::with_hasher(self.ops.hasher)),
            ops_previous: TableImage::of(&DenseMap::with_hasher(self.ops.hasher)),
            ops_current_max_time_ms: self.ops.current_max_time_ms,
            ops_previous_max_time_ms: self.ops.previous_max_time_ms,
            foreign_pools,
            foreign_known,
            foreign_conversions,
            gift_recipients: self
                .gift_recipients
                .iter()
                .map(|(pin_hash, recipient)| (*pin_hash, *recipient))
                .collect(),
            sessions,
            expired_sessions,
        };
        let wide = |map: &KeyMap<Reply>| {
            let mut replies: Vec<(OpId, Reply)> =
                map.iter().map(|(op_id, reply)| (*op_id, *reply)).collect();
            // Sorted, so snapshots of equal shards are equal.
            replies.sort_unstable_by_key(|(op_id, _)| *op_id);
            replies
        };
        let image = ShardImageFormat3 {
            shard: image,
            engine_format: self.engine_format,
            approval_key: self.approval_key,
            config_added: ConfigRecordAdded::from(&self.config),
            ops_current: TableImage::of(&self.ops.current),
            ops_previous: TableImage::of(&self.ops.previous),
            ops_current_wide: wide(&self.ops.current_wide),
            ops_previous_wide: wide(&self.ops.previous_wide),
        };
        // Sized up front: growing a buffer of hundreds of megabytes by doubling copies it again
        // and again (measured: a third of the time).
        let estimate_bytes = 4096
            + self.cards.len() * 88
            + image.shard.holds.len() * 72
            + (self.ops.current.len() + self.ops.previous.len()) * 96;
        let buffer = rkyv::util::AlignedVec::<16>::with_capacity(estimate_bytes);
        rkyv::api::high::to_bytes_in::<_, RkyvError>(&image, buffer)
            .expect("serializing a shard into memory cannot fail")
            .into_vec()
    }

    /// Rebuilds a shard from `to_snapshot_bytes` output (validated; bad bytes are an error).
    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<Shard, String> {
        Shard::from_snapshot_image(super::SNAPSHOT_IMAGE_FORMAT, bytes)
    }

    /// Rebuilds a shard from an image in `image_format` (0 to 3): the images of every release
    /// since snapshots existed. A newer format is refused, by number, never guessed at.
    pub fn from_snapshot_image(image_format: u32, bytes: &[u8]) -> Result<Shard, String> {
        let (image, engine_format, approval_key, config_added, compact) = match image_format {
            0 => {
                let image = rkyv::from_bytes::<ShardImage, RkyvError>(bytes)
                    .map_err(|error| error.to_string())?;
                (image, super::ENGINE_FORMAT_FIRST, [0, 0], ConfigRecordAdded::default(), None)
            }
            1 => {
                let image = rkyv::from_bytes::<ShardImageFormat1, RkyvError>(bytes)
                    .map_err(|error| error.to_string())?;
                let added = ConfigRecordAdded::default();
                (image.shard, image.engine_format, image.approval_key, added, None)
            }
            2 => {
                let image = rkyv::from_bytes::<ShardImageFormat2, RkyvError>(bytes)
                    .map_err(|error| error.to_string())?;
                (image.shard, image.engine_format, image.approval_key, image.config_added, None)
            }
            3 => {
                let image = rkyv::from_bytes::<ShardImageFormat3, RkyvError>(bytes)
                    .map_err(|error| error.to_string())?;
                let compact = (
                    image.ops_current,
                    image.ops_previous,
                    image.ops_current_wide,
                    image.ops_previous_wide,
                );
                let (shard, added) = (image.shard, image.config_added);
                (shard, image.engine_format, image.approval_key, added, Some(compact))
            }
            newer => {
                return Err(format!(
                    "image format {newer} is newer than this release reads (0 to {})",
                    super::SNAPSHOT_IMAGE_FORMAT
                ));
            }
        };
        if !(super::ENGINE_FORMAT_FIRST..=super::ENGINE_FORMAT_CURRENT).contains(&engine_format) {
            return Err(format!(
                "engine format {engine_format} is not one this release runs ({} to {})",
                super::ENGINE_FORMAT_FIRST,
                super::ENGINE_FORMAT_CURRENT
            ));
        }
        if image.shard_count == 0 || image.shard_id >= image.shard_count {
            return Err(format!("shard {} of {}", image.shard_id, image.shard_count));
        }
        let config = EngineConfig::from_records(&image.config, &config_added)
            .map_err(|why| format!("rules: {why}"))?;
        let mut shard =
            Shard::first_format(image.shard_id, image.shard_count, config, image.hash_key);
        let hasher = KeyHasherBuilder { key: image.hash_key };
        shard.engine_format = engine_format;
        shard.approval_key = approval_key;
        shard.now_ms = image.now_ms;
        shard.ops.evicted_floor_ms = image.evicted_floor_ms;
        shard.approvals = image.approvals;
        shard.totals = image.totals;
        shard.cards = image.cards.restore(hasher, "cards")?;
        shard.holds.restore(image.holds);
        match compact {
            Some((current, previous, current_wide, previous_wide)) => {
                if !image.ops_current.chunks.is_empty() || !image.ops_previous.chunks.is_empty() {
                    return Err("image format 3 with format-0 op records".into());
                }
                shard.ops.current = current.restore(hasher, "current op records")?;
                shard.ops.previous = previous.restore(hasher, "previous op records")?;
                shard.ops.current_wide.extend(current_wide);
                shard.ops.previous_wide.extend(previous_wide);
            }
            None => {
                // An image from before compact records: the same records, fingerprinted now.
                let current = compact_table(hasher, image.ops_current, "current op records")?;
                let previous = compact_table(hasher, image.ops_previous, "previous op records")?;
                (shard.ops.current, shard.ops.current_wide) = current;
                (shard.ops.previous, shard.ops.previous_wide) = previous;
            }
        }
        shard.ops.current_max_time_ms = image.ops_current_max_time_ms;
        shard.ops.previous_max_time_ms = image.ops_previous_max_time_ms;
        shard.foreign.restore((
            image.foreign_pools,
            image.foreign_known,
            image.foreign_conversions,
        ));
        shard.gift_recipients.extend(image.gift_recipients);
        shard.sessions.restore(image.sessions, image.expired_sessions);
        shard.check_invariants()?;
        Ok(shard)
    }
}
