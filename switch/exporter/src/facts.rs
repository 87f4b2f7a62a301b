//! What one settlement period is made of: the detail lines derived from the journal records that
//! fall into it (merchant payments and credits, card payouts, breakage, channel sales, foreign-PIN
//! conversions, recharges, retention tags) and its ledger movements. Lines are kept with their origin (server time,
//! shard, journal seq, op id); the renderer sorts by origin, so the files never depend on the
//! order in which shards were read.

use std::collections::BTreeMap;

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::{ExportError, Result};
use crate::ledger::Ledger;

/// Where a line comes from. Unique per journal record (shard, seq) and ordered by time first.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    pub time_ms: u64,
    pub shard: u16,
    pub seq: u64,
    pub op_id: u128,
}

/// A line of a merchant (associate) statement.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct MerchantLine {
    pub origin: Origin,
    pub kind: MerchantKind,
    /// The AUTHORIZE or SALE this money belongs to.
    pub payment_op_id: u128,
    pub merchant_id: u64,
    pub category: u8,
    pub card: u128,
    pub amount_won: u64,
    /// Commission charged (positive) or given back (negative) by this line.
    pub commission_won: i64,
    pub rate_per_mille: u16,
}

#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MerchantKind {
    Sale,
    Capture,
    Refund,
    Reversal,
}

impl MerchantKind {
    pub fn name(self) -> &'static str {
        match self {
            MerchantKind::Sale => "sale",
            MerchantKind::Capture => "capture",
            MerchantKind::Refund => "refund",
            MerchantKind::Reversal => "reversal",
        }
    }

    /// Sales and captures are gross; refunds and reversals are credits back.
    pub fn is_debit(self) -> bool {
        matches!(self, MerchantKind::Sale | MerchantKind::Capture)
    }
}

/// Money to transfer to a card holder's account.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayoutLine {
    pub origin: Origin,
    /// The card site's reference of the holder's payout account (from CARD_REFUND).
    pub account_ref: u64,
    pub card: u128,
    pub amount_won: u64,
    /// True for a reversal credited to a card already paid out (joins its payout).
    pub after_close: bool,
}

#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakageLine {
    pub origin: Origin,
    pub card: u128,
    pub face_value_won: u64,
    pub amount_won: u64,
    /// True for a reversal credited to an already expired card.
    pub after_expiry: bool,
}

#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelSaleLine {
    pub origin: Origin,
    pub card: u128,
    pub channel_id: u32,
    pub face_value_won: u64,
    pub price_won: u64,
    pub payment_means: u8,
    /// The card was consigned to this channel (its commission applies).
    pub consigned: bool,
    pub commission_per_mille: u16,
    pub commission_won: u64,
    pub gift: bool,
}

/// A card's balance converted into one foreign PIN (FOREIGN_CONVERT): what the foreign partner
/// is owed for it. Product, currency and face value are the catalogue's at the record.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForeignLine {
    pub origin: Origin,
    pub card: u128,
    pub partner_id: u32,
    pub product_id: u32,
    /// ISO 4217 alphabetic code of the PIN's currency.
    pub currency: [u8; 3],
    /// The PIN's face value in the currency's minor units.
    pub face_value_minor: u64,
    /// What the card paid, in won (the product's price).
    pub price_won: u64,
    /// The issuer's commission on it: floor(price × rate / 1000).
    pub rate_per_mille: u16,
    pub commission_won: u64,
}

impl ForeignLine {
    /// The currency code as text (`???` if the catalogue held bytes that are not letters).
    pub fn currency_code(&self) -> &str {
        std::str::from_utf8(&self.currency)
            .ok()
            .filter(|code| code.bytes().all(|b| b.is_ascii_uppercase()))
            .unwrap_or("???")
    }
}

/// The statutory retention of one journal record.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionLine {
    pub origin: Origin,
    /// Index into `RECORD_KINDS`.
    pub kind: u8,
    pub code: u16,
    pub amount_won: u64,
    pub years: u8,
}

/// Names of journal record kinds (the command of the record), indexed by `RetentionLine::kind`.
pub const RECORD_KINDS: [&str; 27] = [
    "issue",
    "activate",
    "load",
    "sell",
    "block",
    "unblock",
    "consign",
    "register",
    "balance-refund",
    "authorize",
    "capture",
    "void",
    "reverse",
    "sale",
    "refund",
    "tick",
    "configure",
    "foreign-import",
    "foreign-convert",
    "claim",
    "session-start",
    "session-update",
    "session-end",
    "event-charge",
    "sessions-close",
    "upgrade",
    "fence",
];

/// Count and sum.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub amount_won: u128,
}

impl Tally {
    pub fn add(&mut self, amount_won: u64) -> Result<()> {
        self.count += 1;
        self.amount_won = self
            .amount_won
            .checked_add(u128::from(amount_won))
            .ok_or(ExportError::Overflow("tally"))?;
        Ok(())
    }
}

/// One derived fact of a journal record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fact {
    Merchant(MerchantLine),
    Payout(PayoutLine),
    Breakage(BreakageLine),
    ChannelSale(ChannelSaleLine),
    Foreign(ForeignLine),
    Load { means: u8, amount_won: u64 },
    ActivatedUnsold { amount_won: u64 },
    Retention(RetentionLine),
}

/// Everything one period holds.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct PeriodFacts {
    pub records: u64,
    pub merchant: Vec<MerchantLine>,
    pub payouts: Vec<PayoutLine>,
    pub breakage: Vec<BreakageLine>,
    pub channel_sales: Vec<ChannelSaleLine>,
    pub foreign: Vec<ForeignLine>,
    pub retention: Vec<RetentionLine>,
    /// Recharges per funding means.
    pub loads: BTreeMap<u8, Tally>,
    pub activated_unsold: Tally,
    /// The period's postings, summed per account.
    pub movements: Ledger,
}

impl PeriodFacts {
    pub fn add(&mut self, fact: Fact) -> Result<()> {
        match fact {
            Fact::Merchant(line) => self.merchant.push(line),
            Fact::Payout(line) => self.payouts.push(line),
            Fact::Breakage(line) => self.breakage.push(line),
            Fact::ChannelSale(line) => self.channel_sales.push(line),
            Fact::Foreign(line) => self.foreign.push(line),
            Fact::Retention(line) => self.retention.push(line),
            Fact::Load { means, amount_won } => {
                self.loads.entry(means).or_default().add(amount_won)?
            }
            Fact::ActivatedUnsold { amount_won } => self.activated_unsold.add(amount_won)?,
        }
        Ok(())
    }

    /// Puts every list in origin order (the order files are written in).
    pub fn sort(&mut self) {
        self.merchant.sort_by_key(|line| line.origin);
        self.payouts.sort_by_key(|line| line.origin);
        self.breakage.sort_by_key(|line| line.origin);
        self.channel_sales.sort_by_key(|line| line.origin);
        self.foreign.sort_by_key(|line| line.origin);
        self.retention.sort_by_key(|line| line.origin);
    }
}
