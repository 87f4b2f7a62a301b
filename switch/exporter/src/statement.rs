//! The card usage statement index (the seed's FIG. 10H summary and FIG. 10I detail list), kept
//! by the exporter as it tails the journals, so a statement is never a scan of the journal.
//!
//! Per shard, under `<state>/statements/`:
//! - `shard-NNN.entries`: an append-only log of fixed 104-byte entries, one per event that
//!   concerns a card (issue, sale by a channel, activation, recharge, payment, merchant refund,
//!   reversal, balance refund, expiry, status change, other debit or credit), in journal order.
//!   Each entry carries the card's state after the record (balance, points, validity) and the
//!   index of the same card's previous entry, so a card's entries form a chain, newest first.
//! - `shard-NNN.heads`: an open-addressing hash table on disk (32-byte slots: PIN hash, index of
//!   the card's newest entry + 1, entry count), read and written with positioned I/O.
//! - `committed.bin`: per shard, how many entries the last checkpoint made durable; readers never
//!   look past it.
//!
//! A query looks the card up in its shard's heads table (a few 32-byte reads) and walks its chain
//! (one 104-byte read per entry): its cost grows with the card's entries, not with the journal.
//!
//! Exactly-once: entries are a deterministic function of the journal record, so a re-run yields
//! the same bytes. A checkpoint flushes and fsyncs the entry logs, then writes the heads changed
//! since the previous checkpoint (kept in memory until then) and fsyncs them, then
//! `committed.bin`, and only then does the exporter write its state with the cursors. Opening for
//! writing cuts each log back to the last entry whose journal seq is at or below the shard's
//! cursor and walks the heads of the cards in the cut-off part back below the cut, so records
//! applied again after a crash or a `--max-records` stop are counted once.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use pinswitch_core::{Body, CardView, JournalEntry, PinHash, shard_of_card};
use pinswitch_protocol::{ResultCode, StatementLine, StatementRecharge, StatementResult};

use crate::error::{ExportError, Result};
use crate::facts::{Fact, MerchantKind};
use crate::follower::Effects;

/// Bytes of one entry in a `.entries` file.
pub const ENTRY_BYTES: usize = 104;
const SLOT_BYTES: usize = 32;
const HEADS_HEADER_BYTES: u64 = 64;
const HEADS_MAGIC: &[u8; 8] = b"PSSTHD01";
const COMMITTED_MAGIC: &[u8; 8] = b"PSSTCM01";
const COMMITTED_FILE: &str = "committed.bin";
/// Slots of a new heads table (2 MiB); it doubles when more than 70 % of the slots are taken.
const HEADS_INITIAL_SLOTS: u64 = 1 << 16;
/// The six service categories (`Category` 1..=6).
pub const CATEGORY_COUNT: usize = 6;

/// What an entry records.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// CARD_ISSUE: `amount_won` = face value.
    Issue = 1,
    /// CARD_SELL: `amount_won` = price paid, `counterparty` = channel, `means` = payment means.
    Sell = 2,
    /// CARD_ACTIVATE or CARD_CLAIM (validity starts here for a card never sold).
    Activate = 3,
    /// CARD_LOAD: `amount_won`, `means` = funding.
    Recharge = 4,
    /// SALE or CAPTURE (`counterparty` = merchant), or what a session record debited
    /// (`counterparty` = the destination at its start, else 0): `amount_won`, `category`.
    Payment = 5,
    /// REFUND by a merchant: `amount_won`, merchant and category of the payment.
    MerchantRefund = 6,
    /// REVERSE crediting money back: `amount_won`, merchant and category of the payment.
    Reversal = 7,
    /// CARD_REFUND: the balance paid out, `counterparty` = payout account reference.
    BalanceRefund = 8,
    /// The card expired when a command touched it: `amount_won` = the balance lost (breakage).
    Expiry = 9,
    /// A change without money (block, unblock, consign, register).
    Status = 10,
    /// FOREIGN_CONVERT (the product's won price), or another approved command that lowered the
    /// balance (a later message type).
    OtherDebit = 11,
    /// Another approved command that raised the balance.
    OtherCredit = 12,
}

impl EntryKind {
    fn from_u8(value: u8) -> Option<EntryKind> {
        use EntryKind::*;
        [
            Issue,
            Sell,
            Activate,
            Recharge,
            Payment,
            MerchantRefund,
            Reversal,
            BalanceRefund,
            Expiry,
            Status,
            OtherDebit,
            OtherCredit,
        ]
        .into_iter()
        .find(|kind| *kind as u8 == value)
    }
}

/// One entry of a card's chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub pin_hash: PinHash,
    pub op_id: u128,
    pub time_ms: u64,
    pub seq: u64,
    /// Index of the card's previous entry + 1 (0: none).
    pub prev_plus_one: u64,
    pub counterparty: u64,
    pub amount_won: u64,
    /// The card after the record.
    pub balance_won: u64,
    pub face_value_won: u64,
    pub valid_until_s: u32,
    pub points: u32,
    pub kind: EntryKind,
    pub category: u8,
    pub means: u8,
    /// A `CardState` number.
    pub state: u8,
}

impl Entry {
    pub fn encode(&self) -> [u8; ENTRY_BYTES] {
        let mut bytes = [0u8; ENTRY_BYTES];
        bytes[0..16].copy_from_slice(&self.pin_hash.to_le_bytes());
        bytes[16..32].copy_from_slice(&self.op_id.to_le_bytes());
        for (at, value) in [
            (32, self.time_ms),
            (40, self.seq),
            (48, self.prev_plus_one),
            (56, self.counterparty),
            (64, self.amount_won),
            (72, self.balance_won),
            (80, self.face_value_won),
        ] {
            bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        bytes[88..92].copy_from_slice(&self.valid_until_s.to_le_bytes());
        bytes[92..96].copy_from_slice(&self.points.to_le_bytes());
        bytes[96] = self.kind as u8;
        bytes[97] = self.category;
        bytes[98] = self.means;
        bytes[99] = self.state;
        let crc = crc32c::crc32c(&bytes[..100]);
        bytes[100..104].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// `Err` names what is wrong (a checksum or kind that does not match).
    pub fn decode(bytes: &[u8; ENTRY_BYTES]) -> std::result::Result<Entry, String> {
        let crc = u32::from_le_bytes([bytes[100], bytes[101], bytes[102], bytes[103]]);
        if crc != crc32c::crc32c(&bytes[..100]) {
            return Err("entry checksum mismatch".into());
        }
        let u64_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(word)
        };
        let u128_at = |at: usize| {
            let mut word = [0u8; 16];
            word.copy_from_slice(&bytes[at..at + 16]);
            u128::from_le_bytes(word)
        };
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let kind = EntryKind::from_u8(bytes[96])
            .ok_or_else(|| format!("unknown entry kind {}", bytes[96]))?;
        Ok(Entry {
            pin_hash: u128_at(0),
            op_id: u128_at(16),
            time_ms: u64_at(32),
            seq: u64_at(40),
            prev_plus_one: u64_at(48),
            counterparty: u64_at(56),
            amount_won: u64_at(64),
            balance_won: u64_at(72),
            face_value_won: u64_at(80),
            valid_until_s: u32_at(88),
            points: u32_at(92),
            kind,
            category: bytes[97],
            means: bytes[98],
            state: bytes[99],
        })
    }
}

/// The entries one journal record makes (before chaining): derived from the command, its reply,
/// the record's facts (merchant lines know the payment's merchant and category) and the card
/// after the record. `balance_before_won` is the card's balance after its previous entry;
/// `session_category` the category of the session a SESSION_UPDATE or SESSION_END names, read
/// from the shadow before the record (SESSION_END forgets it).
pub fn entries_of(
    seq: u64,
    entry: &JournalEntry,
    effects: &Effects,
    card_after: Option<&CardView>,
    balance_before_won: Option<u64>,
    session_category: Option<u8>,
) -> Vec<Entry> {
    let Some(pin_hash) = entry.command.body.pin_hash() else { return Vec::new() };
    let Some(card) = card_after else { return Vec::new() };
    let approved = entry.reply.code == ResultCode::Approved.as_u16();
    let base = Entry {
        pin_hash,
        op_id: entry.command.op_id,
        time_ms: effects.time_ms,
        seq,
        prev_plus_one: 0,
        counterparty: 0,
        amount_won: 0,
        balance_won: card.balance_won,
        face_value_won: card.face_value_won,
        valid_until_s: card.valid_until_s,
        points: card.points,
        kind: EntryKind::Status,
        category: 0,
        means: 0,
        state: card.state as u8,
    };
    let mut out = Vec::new();
    // Expiry first: the engine expires the card before it runs the command.
    for fact in &effects.facts {
        if let Fact::Breakage(line) = fact
            && !line.after_expiry
            && line.card == pin_hash
        {
            out.push(Entry { kind: EntryKind::Expiry, amount_won: line.amount_won, ..base });
        }
    }
    if let Some((category, counterparty)) = charge_of(&entry.command.body, session_category) {
        // What the record debited is usage of its category (an over-use capped at the balance
        // is debited too).
        let charged = entry.reply.code == ResultCode::SessionUsageCapped.as_u16()
            || entry.reply.code == ResultCode::SessionExpiredCharged.as_u16();
        if (approved || charged) && entry.reply.amount_won > 0 {
            out.push(Entry {
                kind: EntryKind::Payment,
                amount_won: entry.reply.amount_won,
                category,
                counterparty,
                ..base
            });
        }
        return out;
    }
    let merchant_lines = push_merchant_lines(&mut out, effects, base);
    if !approved || merchant_lines > 0 {
        return out;
    }
    out.extend(command_entry(
        &entry.command.body,
        entry.reply.amount_won,
        balance_before_won,
        base,
    ));
    out
}

/// For a charging command, the (category, counterparty) of the usage it debits: a call or other
/// metered session (the destination at its start; a later report names the session, whose
/// category is `session_category`), or an event charge (a phone information call priced per
/// event) with its number. `None` for every other command.
fn charge_of(body: &Body, session_category: Option<u8>) -> Option<(u8, u64)> {
    match body {
        Body::SessionStart(open) => Some((open.category, open.destination)),
        Body::EventCharge { category, destination, .. } => Some((*category, *destination)),
        Body::SessionUpdate { .. } | Body::SessionEnd { .. } => {
            Some((session_category.unwrap_or(0), 0))
        }
        _ => None,
    }
}

/// Pushes an entry for each merchant line of the record's card (a sale, capture, refund or
/// reversal, with the payment's merchant and category); returns how many.
fn push_merchant_lines(out: &mut Vec<Entry>, effects: &Effects, base: Entry) -> usize {
    let mut merchant_lines = 0;
    for fact in &effects.facts {
        if let Fact::Merchant(line) = fact
            && line.card == base.pin_hash
        {
            merchant_lines += 1;
            let kind = match line.kind {
                MerchantKind::Sale | MerchantKind::Capture => EntryKind::Payment,
                MerchantKind::Refund => EntryKind::MerchantRefund,
                MerchantKind::Reversal => EntryKind::Reversal,
            };
            out.push(Entry {
                kind,
                amount_won: line.amount_won,
                counterparty: line.merchant_id,
                category: line.category,
                ..base
            });
        }
    }
    merchant_lines
}

/// The entry an approved command without merchant lines makes, by its body (`amount_won` from
/// its reply), if any; a command `entries_of` does not know is told by the change of the
/// card's balance since `balance_before_won`.
fn command_entry(
    body: &Body,
    amount_won: u64,
    balance_before_won: Option<u64>,
    base: Entry,
) -> Option<Entry> {
    let entry = match body {
        Body::Issue { face_value_won, .. } => {
            Entry { kind: EntryKind::Issue, amount_won: *face_value_won, ..base }
        }
        Body::Sell { channel_id, price_won, payment_means, .. } => Entry {
            kind: EntryKind::Sell,
            amount_won: *price_won,
            counterparty: u64::from(*channel_id),
            means: *payment_means,
            ..base
        },
        Body::Activate { .. } | Body::Claim { .. } => Entry { kind: EntryKind::Activate, ..base },
        // A conversion into a foreign PIN: the card pays the product's won price.
        Body::ForeignConvert { .. } => Entry { kind: EntryKind::OtherDebit, amount_won, ..base },
        Body::Load { funding, .. } => {
            Entry { kind: EntryKind::Recharge, amount_won, means: *funding, ..base }
        }
        Body::BalanceRefund { payout_account_ref, .. } => Entry {
            kind: EntryKind::BalanceRefund,
            amount_won,
            counterparty: *payout_account_ref,
            ..base
        },
        Body::Block { .. }
        | Body::Unblock { .. }
        | Body::Consign { .. }
        | Body::Register { .. } => base,
        // Holds move no posted money (the balance includes held funds); their captures do.
        Body::Authorize { .. }
        | Body::Void { .. }
        | Body::Capture { .. }
        | Body::Reverse { .. }
        | Body::Sale { .. }
        | Body::Refund { .. } => return None,
        _ => return balance_change_entry(balance_before_won, base),
    };
    Some(entry)
}

/// An entry for a command `entries_of` does not know: the change of the card's balance
/// (`base.balance_won`, after the record) since `balance_before_won`, as another debit or
/// credit; `None` when the balance did not move.
fn balance_change_entry(balance_before_won: Option<u64>, base: Entry) -> Option<Entry> {
    let after_won = base.balance_won;
    let before_won = balance_before_won.unwrap_or(after_won);
    if after_won < before_won {
        Some(Entry { kind: EntryKind::OtherDebit, amount_won: before_won - after_won, ..base })
    } else if after_won > before_won {
        Some(Entry { kind: EntryKind::OtherCredit, amount_won: after_won - before_won, ..base })
    } else {
        None
    }
}

/// Whether `entries_of` knows what the command does (else it compares balances).
fn known_kind(body: &Body) -> bool {
    matches!(
        body,
        Body::Issue { .. }
            | Body::Sell { .. }
            | Body::Activate { .. }
            | Body::Claim { .. }
            | Body::ForeignConvert { .. }
            | Body::SessionStart { .. }
            | Body::SessionUpdate { .. }
            | Body::SessionEnd { .. }
            | Body::Load { .. }
            | Body::BalanceRefund { .. }
            | Body::Block { .. }
            | Body::Unblock { .. }
            | Body::Consign { .. }
            | Body::Register { .. }
            | Body::Authorize { .. }
            | Body::Void { .. }
            | Body::Capture { .. }
            | Body::Reverse { .. }
            | Body::Sale { .. }
            | Body::Refund { .. }
    )
}

/// A card's head in a heads table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Head {
    /// Index of the newest entry + 1 (0: none).
    newest_plus_one: u64,
    count: u64,
}

/// The on-disk heads table of one shard (positioned reads and writes, no mapping).
struct HeadsTable {
    path: PathBuf,
    file: File,
    slot_count: u64,
    used: u64,
}

fn slot_start(pin_hash: PinHash, slot_count: u64) -> u64 {
    // The low half: routing to shards uses the high half.
    #[expect(clippy::cast_possible_truncation, reason = "the low 64 bits, on purpose")]
    let low_half = pin_hash as u64;
    low_half.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32 & (slot_count - 1)
}

impl HeadsTable {
    fn create(path: &Path, slot_count: u64) -> Result<HeadsTable> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(ExportError::io(path, "create heads table"))?;
        let bytes = slot_count
            .checked_mul(SLOT_BYTES as u64)
            .and_then(|slots| slots.checked_add(HEADS_HEADER_BYTES))
            .ok_or(ExportError::Overflow("heads table size"))?;
        file.set_len(bytes).map_err(ExportError::io(path, "size heads table"))?;
        let mut table = HeadsTable { path: path.to_path_buf(), file, slot_count, used: 0 };
        table.write_header()?;
        Ok(table)
    }

    fn open(path: &Path, writable: bool) -> Result<HeadsTable> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(ExportError::io(path, "open heads table"))?;
        let mut header = [0u8; 24];
        file.read_exact_at(&mut header, 0)
            .map_err(ExportError::io(path, "read heads table header"))?;
        let bad =
            |reason: &str| ExportError::State { path: path.to_path_buf(), reason: reason.into() };
        if &header[..8] != HEADS_MAGIC {
            return Err(bad("not a heads table"));
        }
        let slot_count =
            u64::from_le_bytes(header[8..16].try_into().map_err(|_| bad("short header"))?);
        let used = u64::from_le_bytes(header[16..24].try_into().map_err(|_| bad("short header"))?);
        let length = file.metadata().map_err(ExportError::io(path, "stat heads table"))?.len();
        if !slot_count.is_power_of_two()
            || used > slot_count
            || slot_count
                .checked_mul(SLOT_BYTES as u64)
                .and_then(|bytes| bytes.checked_add(HEADS_HEADER_BYTES))
                != Some(length)
        {
            return Err(bad("header does not match the file"));
        }
        Ok(HeadsTable { path: path.to_path_buf(), file, slot_count, used })
    }

    fn write_header(&mut self) -> Result<()> {
        let mut header = [0u8; 24];
        header[..8].copy_from_slice(HEADS_MAGIC);
        header[8..16].copy_from_slice(&self.slot_count.to_le_bytes());
        header[16..24].copy_from_slice(&self.used.to_le_bytes());
        self.file
            .write_all_at(&header, 0)
            .map_err(ExportError::io(&self.path, "write heads table header"))
    }

    /// (slot index, stored head) of `pin_hash`, or (the free slot where it would go, None).
    fn probe(&self, pin_hash: PinHash) -> Result<(u64, Option<Head>)> {
        let mut slot = slot_start(pin_hash, self.slot_count);
        for _ in 0..self.slot_count {
            let mut bytes = [0u8; SLOT_BYTES];
            self.file
                .read_exact_at(&mut bytes, HEADS_HEADER_BYTES + slot * SLOT_BYTES as u64)
                .map_err(ExportError::io(&self.path, "read heads slot"))?;
            let occupied = bytes[31] & 1 == 1;
            if !occupied {
                return Ok((slot, None));
            }
            let key = u128::from_le_bytes(
                bytes[..16].try_into().map_err(|_| ExportError::Overflow("slot"))?,
            );
            if key == pin_hash {
                let newest_plus_one = u64::from_le_bytes(
                    bytes[16..24].try_into().map_err(|_| ExportError::Overflow("slot"))?,
                );
                let mut count = [0u8; 8];
                count[..7].copy_from_slice(&bytes[24..31]);
                return Ok((
                    slot,
                    Some(Head { newest_plus_one, count: u64::from_le_bytes(count) }),
                ));
            }
            slot = (slot + 1) & (self.slot_count - 1);
        }
        Err(ExportError::State { path: self.path.clone(), reason: "heads table full".into() })
    }

    fn get(&self, pin_hash: PinHash) -> Result<Option<Head>> {
        Ok(self.probe(pin_hash)?.1)
    }

    /// Stores a head (the caller keeps the load under 70 %).
    fn put(&mut self, pin_hash: PinHash, head: Head) -> Result<()> {
        let (slot, old) = self.probe(pin_hash)?;
        if old.is_none() {
            self.used += 1;
        }
        let mut bytes = [0u8; SLOT_BYTES];
        bytes[..16].copy_from_slice(&pin_hash.to_le_bytes());
        bytes[16..24].copy_from_slice(&head.newest_plus_one.to_le_bytes());
        // The count takes 7 bytes (56 bits); the last byte's bit 0 marks the slot taken.
        bytes[24..31].copy_from_slice(&head.count.to_le_bytes()[..7]);
        bytes[31] = 1;
        self.file
            .write_all_at(&bytes, HEADS_HEADER_BYTES + slot * SLOT_BYTES as u64)
            .map_err(ExportError::io(&self.path, "write heads slot"))
    }

    /// Every taken slot (for growing).
    fn for_each(&self, mut visit: impl FnMut(PinHash, Head) -> Result<()>) -> Result<()> {
        const CHUNK_SLOTS: usize = 32_768;
        let mut buffer = vec![0u8; CHUNK_SLOTS * SLOT_BYTES];
        let mut first = 0;
        while first < self.slot_count {
            let slots = usize::try_from(self.slot_count - first)
                .map_or(CHUNK_SLOTS, |left_slots| left_slots.min(CHUNK_SLOTS));
            let chunk = &mut buffer[..slots * SLOT_BYTES];
            self.file
                .read_exact_at(chunk, HEADS_HEADER_BYTES + first * SLOT_BYTES as u64)
                .map_err(ExportError::io(&self.path, "read heads table"))?;
            for bytes in chunk.chunks_exact(SLOT_BYTES) {
                if bytes[31] & 1 == 1 {
                    let key = u128::from_le_bytes(
                        bytes[..16].try_into().map_err(|_| ExportError::Overflow("slot"))?,
                    );
                    let newest_plus_one = u64::from_le_bytes(
                        bytes[16..24].try_into().map_err(|_| ExportError::Overflow("slot"))?,
                    );
                    let mut count = [0u8; 8];
                    count[..7].copy_from_slice(&bytes[24..31]);
                    visit(key, Head { newest_plus_one, count: u64::from_le_bytes(count) })?;
                }
            }
            first += slots as u64;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.write_header()?;
        self.file.sync_data().map_err(ExportError::io(&self.path, "fsync heads table"))
    }
}

/// One shard's entry log being written.
struct ShardWriter {
    shard: u16,
    entries_path: PathBuf,
    reader: File,
    writer: BufWriter<File>,
    /// Entries appended (durable or not).
    written: u64,
    heads: HeadsTable,
    /// Heads changed since the last checkpoint, with the card's balance after its newest entry.
    delta: HashMap<PinHash, (Head, u64)>,
}

fn entries_path(dir: &Path, shard: u16) -> PathBuf {
    dir.join(format!("shard-{shard:03}.entries"))
}

fn heads_path(dir: &Path, shard: u16) -> PathBuf {
    dir.join(format!("shard-{shard:03}.heads"))
}

fn read_entry(file: &File, path: &Path, index: u64) -> Result<Entry> {
    let mut bytes = [0u8; ENTRY_BYTES];
    let offset =
        index.checked_mul(ENTRY_BYTES as u64).ok_or(ExportError::Overflow("entry offset"))?;
    file.read_exact_at(&mut bytes, offset)
        .map_err(ExportError::io(path, "read statement entry"))?;
    Entry::decode(&bytes).map_err(|reason| ExportError::State {
        path: path.to_path_buf(),
        reason: format!("entry {index}: {reason}"),
    })
}

impl ShardWriter {
    /// Opens (or creates) the shard's files and cuts them back to the journal cursor.
    /// `committed` entries were made durable by the last checkpoint: those must be intact.
    fn open(dir: &Path, shard: u16, cursor_seq: u64, committed: u64) -> Result<ShardWriter> {
        let entries_path = entries_path(dir, shard);
        let heads_path = heads_path(dir, shard);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&entries_path)
            .map_err(ExportError::io(&entries_path, "open statement entries"))?;
        let mut heads = if heads_path.exists() {
            HeadsTable::open(&heads_path, true)?
        } else {
            HeadsTable::create(&heads_path, HEADS_INITIAL_SLOTS)?
        };
        let length = file
            .metadata()
            .map_err(ExportError::io(&entries_path, "stat statement entries"))?
            .len();
        // A torn last entry (power loss) is past the cursor by construction: cut it too.
        let stored = length / ENTRY_BYTES as u64;
        // Entries are in seq order: the first one past the cursor, by binary search.
        // An entry past the last checkpoint may be torn (power loss): it counts as past the
        // cursor. One the checkpoint made durable must be intact.
        if committed > stored {
            return Err(ExportError::State {
                path: entries_path,
                reason: format!("{stored} entries, the last checkpoint made {committed} durable"),
            });
        }
        let (mut low, mut high) = (0u64, stored);
        while low < high {
            let middle = low + (high - low) / 2;
            let seq = match read_entry(&file, &entries_path, middle) {
                Ok(entry) => entry.seq,
                Err(error) if middle < committed => return Err(error),
                Err(_) => u64::MAX,
            };
            if seq <= cursor_seq {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        let keep = low;
        if keep < stored {
            // Heads written by a checkpoint whose state was never saved point into the cut part:
            // walk each such card back below the cut.
            let mut cards = Vec::new();
            for index in keep..stored {
                if let Ok(entry) = read_entry(&file, &entries_path, index) {
                    cards.push(entry.pin_hash);
                }
            }
            cards.sort_unstable();
            cards.dedup();
            for pin_hash in cards {
                let Some(mut head) = heads.get(pin_hash)? else { continue };
                while head.newest_plus_one > keep {
                    let entry = read_entry(&file, &entries_path, head.newest_plus_one - 1)?;
                    head.newest_plus_one = entry.prev_plus_one;
                    head.count = head.count.saturating_sub(1);
                }
                heads.put(pin_hash, head)?;
            }
            heads.sync()?;
        }
        if keep * ENTRY_BYTES as u64 != length {
            file.set_len(keep * ENTRY_BYTES as u64)
                .map_err(ExportError::io(&entries_path, "cut statement entries back"))?;
            file.sync_all().map_err(ExportError::io(&entries_path, "fsync statement entries"))?;
        }
        let append = OpenOptions::new()
            .append(true)
            .open(&entries_path)
            .map_err(ExportError::io(&entries_path, "open statement entries"))?;
        Ok(ShardWriter {
            shard,
            entries_path,
            reader: file,
            writer: BufWriter::with_capacity(1 << 20, append),
            written: keep,
            heads,
            delta: HashMap::new(),
        })
    }

    /// The card's head (no entries: the default).
    fn head(&self, pin_hash: PinHash) -> Result<Head> {
        if let Some((head, _)) = self.delta.get(&pin_hash) {
            return Ok(*head);
        }
        Ok(self.heads.get(pin_hash)?.unwrap_or_default())
    }

    /// The card's balance after its newest entry (`None`: no entry yet).
    fn balance_won(&self, pin_hash: PinHash) -> Result<Option<u64>> {
        if let Some((_, balance_won)) = self.delta.get(&pin_hash) {
            return Ok(Some(*balance_won));
        }
        match self.heads.get(pin_hash)? {
            // Only durable entries are in the table, so this one is on disk (not in the buffer).
            Some(head) if head.newest_plus_one > 0 => Ok(Some(
                read_entry(&self.reader, &self.entries_path, head.newest_plus_one - 1)?.balance_won,
            )),
            _ => Ok(None),
        }
    }

    fn append(&mut self, mut entry: Entry) -> Result<()> {
        let head = self.head(entry.pin_hash)?;
        entry.prev_plus_one = head.newest_plus_one;
        self.writer
            .write_all(&entry.encode())
            .map_err(ExportError::io(&self.entries_path, "append statement entry"))?;
        self.written += 1;
        let count =
            head.count.checked_add(1).ok_or(ExportError::Overflow("statement entry count"))?;
        self.delta.insert(
            entry.pin_hash,
            (Head { newest_plus_one: self.written, count }, entry.balance_won),
        );
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.writer
            .flush()
            .map_err(ExportError::io(&self.entries_path, "flush statement entries"))?;
        self.writer
            .get_ref()
            .sync_data()
            .map_err(ExportError::io(&self.entries_path, "fsync statement entries"))
    }

    /// Writes the heads changed since the last checkpoint (the entries must be durable first).
    fn write_heads(&mut self, dir: &Path) -> Result<()> {
        let wanted = self.heads.used + self.delta.len() as u64;
        if wanted * 10 > self.heads.slot_count * 7 {
            let mut slot_count = self.heads.slot_count;
            while wanted * 10 > slot_count * 7 {
                slot_count *= 2;
            }
            let final_path = heads_path(dir, self.shard);
            let tmp = final_path.with_extension("heads-tmp");
            let mut grown = HeadsTable::create(&tmp, slot_count)?;
            self.heads.for_each(|pin_hash, head| grown.put(pin_hash, head))?;
            grown.sync()?;
            std::fs::rename(&tmp, &final_path)
                .map_err(ExportError::io(&final_path, "rename grown heads table"))?;
            grown.path = final_path;
            self.heads = grown;
        }
        let mut changed: Vec<(PinHash, Head)> =
            self.delta.drain().map(|(pin_hash, (head, _))| (pin_hash, head)).collect();
        // Slot order: neighbouring writes share pages.
        let slot_count = self.heads.slot_count;
        changed.sort_unstable_by_key(|(pin_hash, _)| slot_start(*pin_hash, slot_count));
        for (pin_hash, head) in changed {
            self.heads.put(pin_hash, head)?;
        }
        self.heads.sync()
    }
}

/// The statement index being written by a running exporter.
pub struct StatementWriter {
    dir: PathBuf,
    shards: Vec<ShardWriter>,
}

impl StatementWriter {
    /// Opens the index under `state_dir` for the exporter whose cursors are `cursors` (one per
    /// shard). A state without an index (made before statements existed) is refused: the index
    /// must hold every record up to the cursor.
    pub fn open(state_dir: &Path, cursors: &[u64]) -> Result<StatementWriter> {
        let dir = state_dir.join("statements");
        let committed = dir.join(COMMITTED_FILE);
        if !committed.exists() && cursors.iter().any(|cursor| *cursor > 0) {
            return Err(ExportError::Config(format!(
                "{} is missing but the exporter state is past seq 0: delete the state directory and export again from seq 1",
                committed.display()
            )));
        }
        std::fs::create_dir_all(&dir)
            .map_err(ExportError::io(&dir, "create statement directory"))?;
        let committed = if committed.exists() {
            read_committed(&dir, cursors.len())?
        } else {
            vec![0; cursors.len()]
        };
        let shards = cursors
            .iter()
            .zip(committed)
            .enumerate()
            .map(|(shard, (cursor, committed))| {
                // One cursor per shard, and shard numbers are u16.
                let shard =
                    u16::try_from(shard).map_err(|_| ExportError::Overflow("shard count"))?;
                ShardWriter::open(&dir, shard, *cursor, committed)
            })
            .collect::<Result<Vec<_>>>()?;
        let writer = StatementWriter { dir, shards };
        writer.write_committed()?;
        Ok(writer)
    }

    /// Adds the entries of journal record `seq` of shard `shard`.
    pub fn record(
        &mut self,
        shard: u16,
        seq: u64,
        entry: &JournalEntry,
        effects: &Effects,
        card_after: Option<&CardView>,
        session_category: Option<u8>,
    ) -> Result<()> {
        let writer = self
            .shards
            .get_mut(usize::from(shard))
            .ok_or(ExportError::Config(format!("no statement log for shard {shard}")))?;
        let Some(pin_hash) = entry.command.body.pin_hash() else { return Ok(()) };
        if card_after.is_none() {
            return Ok(());
        }
        // Only commands of kinds `entries_of` does not know need the balance before (a read).
        let balance_before_won =
            if known_kind(&entry.command.body) { None } else { writer.balance_won(pin_hash)? };
        for made in
            entries_of(seq, entry, effects, card_after, balance_before_won, session_category)
        {
            writer.append(made)?;
        }
        Ok(())
    }

    /// Appends one entry to shard `shard`'s log, chained to the card's previous entry (what
    /// `record` does for each entry of a record; benchmarks build indexes with it).
    pub fn append(&mut self, shard: u16, entry: Entry) -> Result<()> {
        self.shards
            .get_mut(usize::from(shard))
            .ok_or(ExportError::Config(format!("no statement log for shard {shard}")))?
            .append(entry)
    }

    /// Makes every entry durable, then the heads, then `committed.bin` (before the exporter's
    /// state, which holds the cursors).
    pub fn checkpoint(&mut self) -> Result<()> {
        for shard in &mut self.shards {
            shard.flush()?;
        }
        for shard in &mut self.shards {
            shard.write_heads(&self.dir)?;
        }
        self.write_committed()
    }

    fn write_committed(&self) -> Result<()> {
        let mut bytes = COMMITTED_MAGIC.to_vec();
        bytes.extend_from_slice(&(self.shards.len() as u64).to_le_bytes());
        for shard in &self.shards {
            bytes.extend_from_slice(&shard.written.to_le_bytes());
        }
        crate::exporter::write_atomic(&self.dir.join(COMMITTED_FILE), &bytes)
    }
}

/// `committed.bin`: the entries per shard the last checkpoint made durable.
fn read_committed(dir: &Path, shard_count: usize) -> Result<Vec<u64>> {
    let path = dir.join(COMMITTED_FILE);
    let bytes =
        std::fs::read(&path).map_err(ExportError::io(&path, "read committed statement entries"))?;
    let bad = |reason: &str| ExportError::State { path: path.clone(), reason: reason.into() };
    if bytes.len() < 16 || &bytes[..8] != COMMITTED_MAGIC || bytes.len() % 8 != 0 {
        return Err(bad("wrong magic or length"));
    }
    let words: Vec<u64> = bytes[8..]
        .chunks_exact(8)
        .map(|word| u64::from_le_bytes(word.try_into().unwrap_or([0; 8])))
        .collect();
    if words.first().copied() != Some(shard_count as u64) || words.len() != shard_count + 1 {
        return Err(bad("made for another shard count"));
    }
    Ok(words[1..].to_vec())
}

/// Limits of a statement answer (the exporter configuration's `[statements]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatementLimits {
    /// Most detail lines in one answer (a `limit` of 0 or above it means this).
    pub lines_max: u32,
    /// Most recharges listed in one answer (their count and sum always cover all).
    pub recharges_max: u32,
}

/// What to show: `[from_ms, to_ms)` (0 = unbounded) and one page of the detail list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatementPage {
    pub from_ms: u64,
    pub to_ms: u64,
    pub cursor: u32,
    pub limit: u32,
}

/// Reads statements from the index (no lock; a running exporter may be appending).
pub struct StatementIndex {
    dir: PathBuf,
    shard_count: u16,
}

impl StatementIndex {
    pub fn open(state_dir: &Path, shard_count: u16) -> Result<StatementIndex> {
        let dir = state_dir.join("statements");
        let committed = dir.join(COMMITTED_FILE);
        if !committed.exists() {
            return Err(ExportError::Config(format!(
                "no statement index at {} (run `pinswitch-exporter run` first)",
                dir.display()
            )));
        }
        Ok(StatementIndex { dir, shard_count })
    }

    /// Durable entries per shard (read at every query: a running exporter moves it).
    fn committed(&self) -> Result<Vec<u64>> {
        read_committed(&self.dir, usize::from(self.shard_count))
    }

    /// Every durable entry of a card, oldest first (empty when the index knows no such card).
    pub fn entries(&self, pin_hash: PinHash) -> Result<Vec<Entry>> {
        let shard = shard_of_card(pin_hash, self.shard_count);
        let committed = self.committed()?[usize::from(shard)];
        let heads = HeadsTable::open(&heads_path(&self.dir, shard), false)?;
        let Some(head) = heads.get(pin_hash)? else { return Ok(Vec::new()) };
        let path = entries_path(&self.dir, shard);
        let file = File::open(&path).map_err(ExportError::io(&path, "open statement entries"))?;
        let mut entries = Vec::with_capacity(usize::try_from(head.count.min(1 << 20)).unwrap_or(0));
        let mut next_plus_one = head.newest_plus_one;
        while next_plus_one > 0 {
            let entry = read_entry(&file, &path, next_plus_one - 1)?;
            if entry.pin_hash != pin_hash {
                return Err(ExportError::State {
                    path,
                    reason: format!("entry {} is another card's", next_plus_one - 1),
                });
            }
            if entry.prev_plus_one >= next_plus_one {
                return Err(ExportError::State {
                    path,
                    reason: format!("entry {} points forward", next_plus_one - 1),
                });
            }
            // Heads can be ahead of `committed.bin` while a checkpoint is being written.
            if next_plus_one <= committed {
                entries.push(entry);
            }
            next_plus_one = entry.prev_plus_one;
        }
        entries.reverse();
        Ok(entries)
    }

    /// The statement of a card (`None`: the index knows no such card). `name_of` gives a
    /// merchant's registered name.
    pub fn statement(
        &self,
        pin_hash: PinHash,
        query: &StatementPage,
        limits: &StatementLimits,
        name_of: &dyn Fn(u64) -> String,
    ) -> Result<Option<StatementResult>> {
        // A slot read while the running exporter rewrites it can be torn (another card's entry):
        // read once more before calling the index damaged.
        let entries = match self.entries(pin_hash) {
            Err(ExportError::State { .. }) => self.entries(pin_hash)?,
            other => other?,
        };
        if entries.is_empty() {
            return Ok(None);
        }
        summarize(&entries, query, limits, name_of).map(Some)
    }
}

/// Detail line kinds (`StatementLine.kind`).
pub const LINE_PAYMENT: u8 = 1;
pub const LINE_REFUND: u8 = 2;
pub const LINE_REVERSAL: u8 = 3;

/// Builds the statement from a card's entries (oldest first).
pub fn summarize(
    entries: &[Entry],
    query: &StatementPage,
    limits: &StatementLimits,
    name_of: &dyn Fn(u64) -> String,
) -> Result<StatementResult> {
    let in_range =
        |time_ms: u64| time_ms >= query.from_ms && (query.to_ms == 0 || time_ms < query.to_ms);
    let mut result =
        StatementResult { code: ResultCode::Approved.as_u16(), ..StatementResult::default() };
    let mut lines_seen = 0u64;
    let limit = if query.limit == 0 || query.limit > limits.lines_max {
        limits.lines_max
    } else {
        query.limit
    };
    for entry in entries {
        note_issue_and_sale(&mut result, entry);
        if query.to_ms != 0 && entry.time_ms >= query.to_ms {
            continue;
        }
        // The card as of the end of the range.
        result.state = entry.state;
        result.balance_won = entry.balance_won;
        result.points = entry.points;
        result.valid_until_s = entry.valid_until_s;
        result.face_value_won = entry.face_value_won;
        result.as_of_ms = entry.time_ms;
        if !in_range(entry.time_ms) {
            continue;
        }
        let line_kind = add_to_sums(&mut result, entry, limits.recharges_max)?;
        // The detail list: internet payments (category 1) and the money credited back on them.
        if let Some(kind) = line_kind
            && entry.category == 1
        {
            if lines_seen >= u64::from(query.cursor)
                && (result.lines.len() as u64) < u64::from(limit)
            {
                let name = name_of(entry.counterparty);
                result.lines.push(StatementLine {
                    time_ms: entry.time_ms,
                    kind,
                    merchant_id: entry.counterparty,
                    merchant_name: name,
                    amount_won: entry.amount_won,
                });
            }
            lines_seen += 1;
        }
    }
    finish_totals(&mut result, lines_seen, query.cursor)?;
    Ok(result)
}

/// Adds `amount_won` to a statement sum, refusing an overflow.
fn add_won(sum_won: &mut u64, amount_won: u64) -> Result<()> {
    *sum_won = sum_won.checked_add(amount_won).ok_or(ExportError::Overflow("statement sum"))?;
    Ok(())
}

/// The card's issue and channel sale, whenever they were (the statement names them even when
/// they fall outside the range).
fn note_issue_and_sale(result: &mut StatementResult, entry: &Entry) {
    match entry.kind {
        EntryKind::Issue => {
            result.issued_at_ms = entry.time_ms;
            result.face_value_won = entry.amount_won;
        }
        EntryKind::Sell => {
            result.sold_at_ms = entry.time_ms;
            result.price_won = entry.amount_won;
            result.channel_id = u32::try_from(entry.counterparty).unwrap_or(u32::MAX);
        }
        _ => {}
    }
}

/// Adds an entry in the range to the statement's sums by its kind (and lists a recharge while
/// fewer than `recharges_max` are listed); returns the detail line kind it makes, if any.
fn add_to_sums(
    result: &mut StatementResult,
    entry: &Entry,
    recharges_max: u32,
) -> Result<Option<u8>> {
    let (sum_won, line_kind) = match entry.kind {
        EntryKind::Recharge => {
            result.recharge_count += 1;
            add_won(&mut result.recharged_won, entry.amount_won)?;
            if result.recharges.len() < recharges_max as usize {
                result.recharges.push(StatementRecharge {
                    time_ms: entry.time_ms,
                    amount_won: entry.amount_won,
                    funding: entry.means,
                });
            }
            return Ok(None);
        }
        EntryKind::Payment => {
            let category = usize::from(entry.category);
            let sum_won = if (1..=CATEGORY_COUNT).contains(&category) {
                &mut result.paid_by_category_won[category - 1]
            } else {
                &mut result.other_debits_won
            };
            (sum_won, Some(LINE_PAYMENT))
        }
        EntryKind::MerchantRefund => (&mut result.merchant_refunds_won, Some(LINE_REFUND)),
        EntryKind::Reversal => (&mut result.reversals_won, Some(LINE_REVERSAL)),
        EntryKind::BalanceRefund => (&mut result.balance_refund_won, None),
        EntryKind::Expiry => (&mut result.breakage_won, None),
        EntryKind::OtherDebit => (&mut result.other_debits_won, None),
        EntryKind::OtherCredit => (&mut result.other_credits_won, None),
        EntryKind::Issue | EntryKind::Sell | EntryKind::Activate | EntryKind::Status => {
            return Ok(None);
        }
    };
    add_won(sum_won, entry.amount_won)?;
    Ok(line_kind)
}

/// The statement's totals once every entry is in: the money refunded in all its forms, how
/// many detail lines there are (`lines_seen`), and the cursor of the next page after the one
/// that starts at `cursor` (0: none).
fn finish_totals(result: &mut StatementResult, lines_seen: u64, cursor: u32) -> Result<()> {
    let mut refunded_won = 0u64;
    for part in [result.merchant_refunds_won, result.reversals_won, result.balance_refund_won] {
        add_won(&mut refunded_won, part)?;
    }
    result.refunded_won = refunded_won;
    result.lines_total = u32::try_from(lines_seen).unwrap_or(u32::MAX);
    let shown = u64::from(cursor) + result.lines.len() as u64;
    result.next_cursor = if shown < lines_seen && !result.lines.is_empty() {
        u32::try_from(shown).unwrap_or(u32::MAX)
    } else {
        0
    };
    Ok(())
}

/// The names of the service categories (`Category` 1..=6), as the statement shows them.
pub const CATEGORY_NAMES: [&str; CATEGORY_COUNT] = [
    "internet payment",
    "telephone call",
    "phone information",
    "prepaid mobile",
    "PC communication",
    "voicemail",
];

const FUNDING_NAMES: [&str; 5] =
    ["credit card", "bank transfer", "deposit without bankbook", "cash", "mobile bill"];

/// The statement as text: the summary (FIG. 10H), then the detail list of internet payments
/// (FIG. 10I) with every line of `lines` (all pages). Times in the zone of `cutoff`.
pub fn render(
    card: &str,
    result: &StatementResult,
    lines: &[StatementLine],
    cutoff: crate::calendar::Cutoff,
) -> String {
    use std::fmt::Write as _;
    let time = |time_ms: u64| cutoff.local_date_time(i64::try_from(time_ms).unwrap_or(i64::MAX));
    let state = pinswitch_protocol::CardState::from_u8(result.state)
        .map_or("unknown", pinswitch_protocol::CardState::name);
    let mut out = String::new();
    let row = |out: &mut String, label: &str, value: String| {
        let _ = writeln!(out, "{label:<34}{value}");
    };
    let _ = writeln!(out, "USAGE STATEMENT OF CARD {card}");
    row(&mut out, "as of", time(result.as_of_ms));
    row(&mut out, "state", state.to_string());
    let issued = if result.issued_at_ms == 0 {
        "before the journal".into()
    } else {
        time(result.issued_at_ms)
    };
    row(&mut out, "initial value", format!("{} won (issued {issued})", result.face_value_won));
    if result.sold_at_ms != 0 {
        row(
            &mut out,
            "sold",
            format!(
                "{} by channel {} for {} won",
                time(result.sold_at_ms),
                result.channel_id,
                result.price_won
            ),
        );
    }
    let validity = if result.valid_until_s == 0 {
        "not started".to_string()
    } else {
        time(u64::from(result.valid_until_s) * 1000)
    };
    row(&mut out, "valid until", validity);
    for recharge in &result.recharges {
        let means = FUNDING_NAMES
            .get(usize::from(recharge.funding).wrapping_sub(1))
            .copied()
            .unwrap_or("unknown");
        row(
            &mut out,
            "recharge",
            format!("{} +{} won ({means})", time(recharge.time_ms), recharge.amount_won),
        );
    }
    if result.recharges.len() < result.recharge_count as usize {
        row(
            &mut out,
            "recharges not listed",
            (result.recharge_count as usize - result.recharges.len()).to_string(),
        );
    }
    row(
        &mut out,
        "recharged",
        format!("{} won in {} recharges", result.recharged_won, result.recharge_count),
    );
    row(&mut out, "total refunded", format!("{} won", result.refunded_won));
    row(&mut out, "  merchant refunds", format!("{} won", result.merchant_refunds_won));
    row(&mut out, "  reversals", format!("{} won", result.reversals_won));
    row(&mut out, "  balance refund", format!("{} won", result.balance_refund_won));
    for (name, paid_won) in CATEGORY_NAMES.iter().zip(result.paid_by_category_won) {
        row(&mut out, &format!("total {name}"), format!("{paid_won} won"));
    }
    if result.other_debits_won != 0 || result.other_credits_won != 0 {
        row(&mut out, "other debits", format!("{} won", result.other_debits_won));
        row(&mut out, "other credits", format!("{} won", result.other_credits_won));
    }
    if result.breakage_won != 0 {
        row(&mut out, "expired (breakage)", format!("{} won", result.breakage_won));
    }
    row(&mut out, "points", result.points.to_string());
    row(&mut out, "balance", format!("{} won", result.balance_won));
    let _ = writeln!(out, "\nDETAILED USAGE: INTERNET PAYMENTS ({} lines)", result.lines_total);
    let (mut paid_won, mut credited_won) = (0u128, 0u128);
    for line in lines {
        let kind = match line.kind {
            LINE_PAYMENT => "payment",
            LINE_REFUND => "refund",
            LINE_REVERSAL => "reversal",
            _ => "other",
        };
        if line.kind == LINE_PAYMENT {
            paid_won += u128::from(line.amount_won);
        } else {
            credited_won += u128::from(line.amount_won);
        }
        let _ = writeln!(
            out,
            "{}  {kind:<8}  {:>12} won  {} ({})",
            time(line.time_ms),
            line.amount_won,
            line.merchant_name,
            line.merchant_id
        );
    }
    row(&mut out, "total internet payment", format!("{paid_won} won"));
    row(&mut out, "total refunded on them", format!("{credited_won} won"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pin_hash: PinHash, seq: u64, kind: EntryKind, amount_won: u64, category: u8) -> Entry {
        Entry {
            pin_hash,
            op_id: u128::from(seq),
            time_ms: 1_000 * seq,
            seq,
            prev_plus_one: 0,
            counterparty: 70 + u64::from(category),
            amount_won,
            balance_won: 50_000u64.saturating_sub(seq),
            face_value_won: 50_000,
            valid_until_s: 9,
            points: seq as u32,
            kind,
            category,
            means: 0,
            state: 3,
        }
    }

    fn limits() -> StatementLimits {
        StatementLimits { lines_max: 3, recharges_max: 2 }
    }

    #[test]
    fn entries_round_trip_and_damage_is_detected() {
        let original = Entry {
            prev_plus_one: 17,
            means: 4,
            ..entry(0xABCD << 64 | 5, 9, EntryKind::Recharge, 10_000, 0)
        };
        let mut bytes = original.encode();
        assert_eq!(Entry::decode(&bytes), Ok(original));
        bytes[70] ^= 1;
        assert!(Entry::decode(&bytes).is_err());
    }

    /// Appends `(pin, kind, amount, category)` as records `first_seq..` of shard 0.
    fn append(
        writer: &mut StatementWriter,
        first_seq: u64,
        items: &[(PinHash, EntryKind, u64, u8)],
    ) {
        for (offset, (pin_hash, kind, amount_won, category)) in items.iter().enumerate() {
            writer.shards[0]
                .append(entry(*pin_hash, first_seq + offset as u64, *kind, *amount_won, *category))
                .unwrap();
        }
    }

    #[test]
    fn chains_survive_reopening_and_a_cut_back_to_the_cursor_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (1u128 << 64 | 1, 1u128 << 64 | 2);
        let mut writer = StatementWriter::open(dir.path(), &[0]).unwrap();
        append(
            &mut writer,
            1,
            &[
                (a, EntryKind::Issue, 50_000, 0),
                (b, EntryKind::Issue, 50_000, 0),
                (a, EntryKind::Payment, 700, 1),
                (a, EntryKind::Recharge, 10_000, 0),
            ],
        );
        writer.checkpoint().unwrap();
        // Records 5..=7 applied and even checkpointed, but the exporter's state (cursor 4) never
        // saved: a crash between `committed.bin` and `state.bin`.
        append(
            &mut writer,
            5,
            &[
                (a, EntryKind::Payment, 300, 2),
                (b, EntryKind::Payment, 900, 1),
                (a, EntryKind::MerchantRefund, 100, 1),
            ],
        );
        writer.checkpoint().unwrap();
        let index = StatementIndex::open(dir.path(), 1).unwrap();
        assert_eq!(index.entries(a).unwrap().len(), 5);
        drop(writer);
        let bytes_before = std::fs::read(dir.path().join("statements/shard-000.entries")).unwrap();
        let mut writer = StatementWriter::open(dir.path(), &[4]).unwrap();
        assert_eq!(
            index.entries(a).unwrap().iter().map(|entry| entry.seq).collect::<Vec<_>>(),
            [1, 3, 4]
        );
        assert_eq!(index.entries(b).unwrap().len(), 1);
        // Applied again, the same records give the same bytes.
        append(
            &mut writer,
            5,
            &[
                (a, EntryKind::Payment, 300, 2),
                (b, EntryKind::Payment, 900, 1),
                (a, EntryKind::MerchantRefund, 100, 1),
            ],
        );
        writer.checkpoint().unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("statements/shard-000.entries")).unwrap(),
            bytes_before
        );
        let statement = index
            .statement(a, &StatementPage::default(), &limits(), &|id| format!("m{id}"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                statement.paid_by_category_won,
                statement.merchant_refunds_won,
                statement.recharged_won
            ),
            ([700, 300, 0, 0, 0, 0], 100, 10_000)
        );
        assert_eq!(
            statement
                .lines
                .iter()
                .map(|line| (line.kind, line.amount_won, line.merchant_name.as_str()))
                .collect::<Vec<_>>(),
            [(LINE_PAYMENT, 700, "m71"), (LINE_REFUND, 100, "m71")]
        );
        assert_eq!(
            (statement.balance_won, statement.points, statement.as_of_ms),
            (50_000 - 7, 7, 7_000)
        );
        // Unflushed entries past the cursor vanish on reopening; an unknown card has no entries.
        append(&mut writer, 8, &[(b, EntryKind::Payment, 1, 1)]);
        drop(writer);
        StatementWriter::open(dir.path(), &[7]).unwrap();
        assert_eq!(index.entries(b).unwrap().len(), 2);
        assert!(index.entries(3).unwrap().is_empty());
        // A state past seq 0 without an index is refused.
        let other = tempfile::tempdir().unwrap();
        assert!(matches!(StatementWriter::open(other.path(), &[5]), Err(ExportError::Config(_))));
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_damaged_durable_entry_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = StatementWriter::open(dir.path(), &[0]).unwrap();
        append(&mut writer, 1, &[(9, EntryKind::Issue, 5_000, 0), (9, EntryKind::Payment, 100, 1)]);
        writer.checkpoint().unwrap();
        drop(writer);
        let path = dir.path().join("statements/shard-000.entries");
        let mut bytes = std::fs::read(&path).unwrap();
        let durable = bytes.clone();
        // A power loss left garbage past the checkpoint: cut, whatever the cursor says.
        bytes.extend_from_slice(&[0xEE; ENTRY_BYTES + 7]);
        std::fs::write(&path, &bytes).unwrap();
        drop(StatementWriter::open(dir.path(), &[9]).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), durable);
        // A checkpointed entry that no longer reads is an error, not a silent cut.
        bytes = durable;
        bytes[ENTRY_BYTES + 70] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(StatementWriter::open(dir.path(), &[2]), Err(ExportError::State { .. })));
    }

    #[test]
    fn the_heads_table_grows_and_keeps_every_card() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = StatementWriter::open(dir.path(), &[0]).unwrap();
        let cards = HEADS_INITIAL_SLOTS; // beyond 70 % of the first table
        let pins: Vec<PinHash> = (1..=cards)
            .map(|n| u128::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835))
            .collect();
        for (seq, pin_hash) in pins.iter().enumerate() {
            writer.shards[0]
                .append(entry(*pin_hash, seq as u64 + 1, EntryKind::Issue, 5_000, 0))
                .unwrap();
        }
        writer.checkpoint().unwrap();
        append(&mut writer, cards + 1, &[(pins[0], EntryKind::Payment, 1_000, 1)]);
        writer.checkpoint().unwrap();
        assert!(writer.shards[0].heads.slot_count > HEADS_INITIAL_SLOTS);
        let index = StatementIndex::open(dir.path(), 1).unwrap();
        assert_eq!(index.entries(pins[0]).unwrap().len(), 2);
        for pin_hash in pins.iter().step_by(997) {
            assert_eq!(
                index.entries(*pin_hash).unwrap().len(),
                if *pin_hash == pins[0] { 2 } else { 1 }
            );
        }
    }

    /// Session records are usage of their category: SESSION_START's own, later records the one
    /// read from the shadow before the record; a capped over-use counts, a decline does not.
    #[test]
    fn session_debits_are_usage_of_their_category() {
        use pinswitch_core::{Command, Reply};
        let card = CardView {
            state: pinswitch_protocol::CardState::Active,
            face_value_won: 10_000,
            balance_won: 9_000,
            available_won: 8_000,
            held_won: 1_000,
            password_tries_left: 5,
            points: 0,
            valid_until_s: 99,
            password_hint: false,
            holds: Vec::new(),
        };
        let effects = Effects { time_ms: 5_000, postings: Vec::new(), facts: Vec::new() };
        let record = |body: Body, code: ResultCode, amount_won: u64| JournalEntry {
            now_ms: 5_000,
            command: Command { op_id: 1, deadline_at_ms: 0, body },
            reply: Reply {
                code: code.as_u16(),
                replayed: false,
                field: 0,
                approval_code: 0,
                amount_won,
                balance_won: 9_000,
                available_won: 8_000,
                hold_expires_at_ms: 0,
            },
        };
        let start = record(
            Body::SessionStart(Box::new(pinswitch_core::SessionOpen {
                pin_hash: 4,
                session_id: 8,
                destination: 822,
                requested_s: 60,
                owner_id: 1,
                password_mac: 0,
                category: 2,
            })),
            ResultCode::Approved,
            100,
        );
        let made = entries_of(1, &start, &effects, Some(&card), None, None);
        assert_eq!(
            made.iter()
                .map(|entry| (entry.kind, entry.category, entry.amount_won, entry.counterparty))
                .collect::<Vec<_>>(),
            [(EntryKind::Payment, 2, 100, 822)]
        );
        let capped = record(
            Body::SessionEnd { pin_hash: 4, session_id: 8, seq: 2, used_total_s: 900 },
            ResultCode::SessionUsageCapped,
            700,
        );
        let made = entries_of(2, &capped, &effects, Some(&card), None, Some(6));
        assert_eq!(
            made.iter().map(|entry| (entry.category, entry.amount_won)).collect::<Vec<_>>(),
            [(6, 700)]
        );
        let declined = record(
            Body::SessionUpdate {
                pin_hash: 4,
                session_id: 8,
                seq: 1,
                used_total_s: 10,
                requested_s: 60,
            },
            ResultCode::InsufficientFunds,
            0,
        );
        assert!(entries_of(3, &declined, &effects, Some(&card), None, Some(2)).is_empty());
    }

    #[test]
    fn ranges_and_pages_cut_the_detail_list_and_the_flows_not_the_initial_value() {
        let pin_hash = 5;
        let mut entries = vec![
            entry(pin_hash, 1, EntryKind::Issue, 30_000, 0),
            Entry { counterparty: 9, ..entry(pin_hash, 2, EntryKind::Sell, 29_000, 0) },
        ];
        for seq in 3..=9 {
            entries.push(entry(
                pin_hash,
                seq,
                EntryKind::Payment,
                100 * seq,
                if seq % 2 == 1 { 1 } else { 4 },
            ));
        }
        entries.push(entry(pin_hash, 10, EntryKind::Recharge, 10_000, 0));
        entries.push(entry(pin_hash, 11, EntryKind::Recharge, 10_000, 0));
        entries.push(entry(pin_hash, 12, EntryKind::Recharge, 20_000, 0));
        entries.push(entry(pin_hash, 13, EntryKind::Reversal, 300, 1));
        let name = |id: u64| id.to_string();
        let all = summarize(&entries, &StatementPage::default(), &limits(), &name).unwrap();
        assert_eq!(
            (all.face_value_won, all.price_won, all.channel_id, all.sold_at_ms),
            (50_000, 29_000, 9, 2_000)
        );
        assert_eq!(all.paid_by_category_won, [300 + 500 + 700 + 900, 0, 0, 400 + 600 + 800, 0, 0]);
        assert_eq!((all.recharge_count, all.recharged_won, all.recharges.len()), (3, 40_000, 2));
        assert_eq!(
            (
                all.reversals_won,
                all.refunded_won,
                all.lines_total,
                all.lines.len(),
                all.next_cursor
            ),
            (300, 300, 5, 3, 3)
        );
        let second = summarize(
            &entries,
            &StatementPage { cursor: 3, limit: 100, ..StatementPage::default() },
            &limits(),
            &name,
        )
        .unwrap();
        assert_eq!(
            (
                second.lines.iter().map(|line| line.amount_won).collect::<Vec<_>>(),
                second.next_cursor
            ),
            (vec![900, 300], 0)
        );
        // Records 5..=9: flows in range; the card as of the end of the range; the sale stays.
        let range = summarize(
            &entries,
            &StatementPage { from_ms: 5_000, to_ms: 10_000, ..StatementPage::default() },
            &limits(),
            &name,
        )
        .unwrap();
        assert_eq!(
            (
                range.paid_by_category_won[0],
                range.recharge_count,
                range.lines_total,
                range.price_won
            ),
            (500 + 700 + 900, 0, 3, 29_000)
        );
        assert_eq!((range.balance_won, range.as_of_ms), (50_000 - 9, 9_000));
    }
}
