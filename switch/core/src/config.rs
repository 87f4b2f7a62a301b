//! The engine's rules and limits. They are part of the replicated state: the server journals a
//! `Configure` command whenever they change, so replay always applies each command under the
//! rules it first ran with.

use rkyv::{Archive, Deserialize, Serialize};

/// With feature `serde` it is read straight from the server's `[engine]` TOML section: the
/// field names are the keys (the one exception, `idempotency_window_s`, is in seconds there),
/// and a key left out keeps its production value; `products` is one `[[engine.products]]`
/// table per product (the parallel arrays of the older form are refused by the server, see
/// `RETIRED_TOML_KEYS`). It is not archived itself: the journal and snapshots hold its
/// `ConfigRecord` (see `config_record.rs`), the format it had before a product became a struct.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize), serde(deny_unknown_fields, default))]
pub struct EngineConfig {
    /// The products that may be issued (CARD_ISSUE names one by its face value), each with the
    /// rules of its cards. In TOML: one `[[engine.products]]` table each.
    pub products: Vec<Product>,
    /// A card's balance may never exceed this (500,000 won: the legal cap for a card not
    /// issued under a verified real name).
    pub balance_cap_won: u64,
    /// The cap of a named card (registered with a verified real name): 2,000,000 won by law.
    pub balance_cap_named_won: u64,
    /// Recharges must be whole multiples of this (of a product's own unit, if it has one).
    pub recharge_unit_won: u64,
    /// Live (pending) holds one card may have at once.
    pub holds_per_card_max: u16,
    /// Partial captures one hold may take.
    pub captures_per_hold_max: u16,
    /// Longest hold an AUTHORIZE may ask for.
    pub hold_ttl_max_s: u32,
    /// The hold TTL used when an AUTHORIZE asks for 0.
    pub hold_ttl_default_s: u32,
    /// How long an op id's result is remembered, measured from the time inside the op id.
    #[cfg_attr(
        feature = "serde",
        serde(rename = "idempotency_window_s", deserialize_with = "toml_form::seconds_as_ms")
    )]
    pub idempotency_window_ms: u64,
    /// Most op-id records a shard keeps; past it the oldest are evicted and the too-old floor
    /// rises, so an evicted id answers OP_TOO_OLD instead of executing twice.
    pub idempotency_entries_max: u32,
    /// How far ahead of the server clock an op id's time may be.
    pub op_clock_skew_max_ms: u64,
    /// Wrong passwords in a row that lock a card.
    pub password_tries_max: u8,
    /// How long a card is valid from its sale (or activation, if never sold through a channel),
    /// unless its product has a period of its own.
    pub validity_days: u32,
    /// CARD_REFUND pays the balance out once at least this share (percent) of the value charged
    /// onto the card was used...
    pub refund_used_percent: u8,
    /// ...or this share, for cards whose face value is at most `small_face_value_max_won`.
    pub refund_used_percent_small: u8,
    pub small_face_value_max_won: u64,
    /// Loyalty points per 1,000 won paid by a registered card (10: 1 %), for products without
    /// a rate of their own. A REFUND or REVERSE takes back the points of the money it credits
    /// (rounded down, never below zero).
    pub points_per_mille: u16,
    /// Each recharge of a card of a promotional product extends its validity by this much.
    pub promotional_extension_days: u32,
    /// Face values that rules journaled before products were structs call promotional without
    /// a product of that face value (cards of a product since withdrawn from issue, which keep
    /// their extension). Kept only so such a record converts back unchanged; no TOML key sets
    /// it, so rules read from a file have none.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub promotional_unlisted_face_values_won: Vec<u64>,
    /// Foreign PIN products bought from foreign operators, convertible from a card's balance.
    pub foreign_products: Vec<ForeignProduct>,
    /// Per-second charging tariffs (SESSION_START/UPDATE/END): a session takes the tariff of its
    /// service category with the longest destination prefix matching the called number.
    pub tariffs: Vec<Tariff>,
    /// Live charging sessions one card may have at once.
    pub sessions_per_card_max: u16,
    /// Live charging sessions one shard may hold at once.
    pub sessions_per_shard_max: u32,
    /// Seconds granted when a SESSION_START or SESSION_UPDATE asks for 0.
    pub session_grant_default_s: u32,
    /// Most seconds one grant may cover (larger requests are granted this much).
    pub session_grant_max_s: u32,
    /// The validity time every grant carries: the call switch reports (SESSION_UPDATE) at the
    /// latest this many seconds after the answer, even if granted seconds remain.
    pub session_validity_s: u32,
    /// Time-of-day bands are local time: seconds east of UTC (Korea: 32,400).
    pub tariff_utc_offset_s: i32,
    /// A card with live sessions whose available balance falls below this gets a low-balance
    /// notice on each session (0: never).
    pub low_balance_warn_won: u64,
    /// Sessions expired for silence (past twice `session_validity_s`) remembered per shard so a
    /// late report is still charged; past this many the oldest is forgotten (its late report
    /// then answers SESSION_NOT_FOUND and is not charged).
    pub expired_sessions_max: u32,
    /// SESSION_START and EVENT_CHARGE must carry the holder's password (off: the PIN alone, as
    /// phone cards are used; a password given is still checked, and a card locked by wrong
    /// passwords is refused either way). A product may say otherwise for its cards.
    pub session_password_required: bool,
}

/// A product: a face value that may be issued and the rules of its cards. A rule left `None`
/// is the engine-wide one (`EngineConfig`'s field of the same name), so a catalogue states only
/// what makes a product different.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize), serde(deny_unknown_fields))]
pub struct Product {
    /// The product's name in CARD_ISSUE and a card's face value: what it is sold for.
    pub face_value_won: u64,
    /// The service categories the product may pay for, as bits (bit 0 = category 1, internet
    /// payment, ... bit 5 = category 6, voicemail); `None`: every category. In TOML:
    /// `categories = ["internet_payment", "telephone_call"]`, the protocol's category names.
    #[cfg_attr(
        feature = "serde",
        serde(rename = "categories", default, deserialize_with = "toml_form::categories")
    )]
    pub category_mask: Option<u8>,
    /// Points per 1,000 won paid (0: the product earns none); `None`: `points_per_mille`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub points_per_mille: Option<u16>,
    /// Days a card stays valid from its sale (or activation); `None`: `validity_days`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub validity_days: Option<u32>,
    /// Recharges must be whole multiples of this; `None`: `recharge_unit_won`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub recharge_unit_won: Option<u64>,
    /// The product's own balance cap: a card's cap is the lower of it and the legal cap for its
    /// kind (`balance_cap_won` unnamed, `balance_cap_named_won` named); `None`: the legal cap.
    #[cfg_attr(feature = "serde", serde(default))]
    pub balance_cap_won: Option<u64>,
    /// Each recharge extends the card's validity by `promotional_extension_days`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub promotional: bool,
    /// SESSION_START and EVENT_CHARGE of the product's cards must carry the password (a card
    /// sold for internet payments, whose found PIN must not buy calls); `None`:
    /// `session_password_required`. Journaled in `ConfigRecordAdded`, not in the frozen record.
    #[cfg_attr(feature = "serde", serde(default))]
    pub session_password_required: Option<bool>,
}

impl Product {
    /// A product of this face value with every rule the engine-wide one.
    pub fn plain(face_value_won: u64) -> Product {
        Product {
            face_value_won,
            category_mask: None,
            points_per_mille: None,
            validity_days: None,
            recharge_unit_won: None,
            balance_cap_won: None,
            promotional: false,
            session_password_required: None,
        }
    }
}

/// One tariff: what a second of a service to a destination costs. Money is integer won: the
/// used seconds are rounded up to the billing increment (the first increment, if longer, is
/// billed whole), and each increment costs `rate_won`, or the rate of the time-of-day band it
/// falls in (see `bands`).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize), serde(deny_unknown_fields))]
pub struct Tariff {
    /// Non-zero, unique in the table; answered to the call switch as the tariff applied.
    pub tariff_id: u16,
    /// The service category (1..=6) it prices.
    pub category: u8,
    /// Digits the called number starts with ("" matches every number of the category).
    #[cfg_attr(feature = "serde", serde(default))]
    pub destination_prefix: String,
    /// Charged once per session, with its first used second.
    #[cfg_attr(feature = "serde", serde(default))]
    pub connect_fee_won: u64,
    /// Won per billing increment.
    pub rate_won: u64,
    /// The billing increment (e.g. 1, 6 or 60 seconds).
    pub increment_s: u32,
    /// The first billed span: a session that used anything is billed at least this much (a
    /// multiple of `increment_s`; 0 = one increment).
    #[cfg_attr(feature = "serde", serde(default))]
    pub first_increment_s: u32,
    /// EVENT_CHARGE: won per event (0: this tariff prices no events).
    #[cfg_attr(feature = "serde", serde(default))]
    pub event_won: u64,
    /// Time-of-day bands (local time, `EngineConfig::tariff_utc_offset_s`): each local day
    /// starts at `rate_won`, and from each band's minute on its rate applies, until the next
    /// band or midnight. Sorted by minute, at most `TARIFF_BANDS_MAX`. A call crossing a rate
    /// change is split there: the first billed span is rated whole at the start's rate, and
    /// every later piece between rate changes is rounded up to the increment and rated at its
    /// own rate (as CGRateS splits rating intervals).
    #[cfg_attr(feature = "serde", serde(default))]
    pub bands: Vec<TariffBand>,
}

/// From `from_minute` of the local day (0..1440) on, increments cost `rate_won`. In TOML:
/// `{ from = "HH:MM", rate_won = ... }`.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize), serde(try_from = "toml_form::BandText"))]
pub struct TariffBand {
    pub from_minute: u16,
    pub rate_won: u64,
}

/// Most time-of-day bands one tariff may have.
pub const TARIFF_BANDS_MAX: usize = 8;

const DAY_S: u64 = 86_400;

/// Longest grant a session may hold (the wire packs granted and validity seconds in 24 bits).
pub const SESSION_SECONDS_MAX: u32 = (1 << 24) - 1;

impl Tariff {
    /// The money due for `used_s` seconds of a session at the flat `rate_won`, connect fee
    /// included (0 seconds cost nothing). Exact integer arithmetic; saturates only past `u64`.
    pub fn cost_won(&self, used_s: u64) -> u64 {
        if used_s == 0 {
            return 0;
        }
        let increment_s = u128::from(self.increment_s.max(1));
        let first_s = u128::from(self.first_increment_s).max(increment_s);
        let billed_s =
            u128::from(used_s).div_ceil(increment_s).saturating_mul(increment_s).max(first_s);
        let won = (billed_s / increment_s)
            .saturating_mul(u128::from(self.rate_won))
            .saturating_add(u128::from(self.connect_fee_won));
        u64::try_from(won).unwrap_or(u64::MAX)
    }

    /// The money due for `used_s` seconds of a session that started at `local_start_s` (local
    /// seconds since the epoch), time-of-day bands applied. Without bands it is `cost_won`.
    /// Never decreases as `used_s` grows (every piece's cost grows with its length), which the
    /// grant search and cumulative reports rely on.
    pub fn cost_from_won(&self, local_start_s: u64, used_s: u64) -> u64 {
        if self.bands.is_empty() || used_s == 0 {
            return self.cost_won(used_s);
        }
        let increment_s = u64::from(self.increment_s.max(1));
        let first_s = u64::from(self.first_increment_s).max(increment_s);
        let mut won = u128::from(self.connect_fee_won)
            + u128::from(first_s / increment_s) * u128::from(self.rate_at(local_start_s));
        let mut at_s = first_s;
        while at_s < used_s {
            let now_s = local_start_s.saturating_add(at_s);
            let piece_end_s =
                self.next_rate_change_s(now_s).saturating_sub(local_start_s).min(used_s);
            let increments = (piece_end_s - at_s).div_ceil(increment_s);
            won = won.saturating_add(u128::from(increments) * u128::from(self.rate_at(now_s)));
            at_s = piece_end_s;
        }
        u64::try_from(won).unwrap_or(u64::MAX)
    }

    /// The rate of an increment starting at local time `local_s`.
    pub fn rate_at(&self, local_s: u64) -> u64 {
        let second_of_day = local_s % DAY_S;
        self.bands
            .iter()
            .take_while(|band| u64::from(band.from_minute) * 60 <= second_of_day)
            .last()
            .map_or(self.rate_won, |band| band.rate_won)
    }

    /// The first local time after `local_s` at which the rate differs from the rate at
    /// `local_s` (`u64::MAX`: never).
    fn next_rate_change_s(&self, local_s: u64) -> u64 {
        let rate_won = self.rate_at(local_s);
        let day_start_s = local_s - local_s % DAY_S;
        // Two days cover every pattern: a rate that differs anywhere differs within a day.
        for day in 0..2u64 {
            let base_s = day_start_s + day * DAY_S;
            let starts =
                self.bands.iter().map(|band| u64::from(band.from_minute) * 60).chain([DAY_S]);
            for start_s in starts {
                let change_s = base_s + start_s;
                if change_s > local_s && self.rate_at(change_s) != rate_won {
                    return change_s;
                }
            }
        }
        u64::MAX
    }
}

/// A foreign PIN product: whose, in what currency, worth what, and what a conversion costs.
/// The price is configured in won (the operator applies its exchange rate and margin when it
/// sets it), so a conversion is exact integer arithmetic, never a floating-point rate.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize), serde(deny_unknown_fields))]
pub struct ForeignProduct {
    /// Non-zero, unique in the catalogue.
    pub product_id: u32,
    /// The foreign operator the PINs were bought from (settled by the exporter).
    pub partner_id: u32,
    /// ISO 4217 alphabetic code, e.g. `*b"USD"`.
    #[cfg_attr(feature = "serde", serde(deserialize_with = "toml_form::currency"))]
    pub currency: [u8; 3],
    /// The face value of one PIN, in the currency's minor units (cents for USD).
    pub face_value_minor: u64,
    /// What converting into one PIN debits from the card.
    pub price_won: u64,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig::production()
    }
}

/// The TOML forms that differ from the engine's own: seconds for the idempotency window,
/// category names for a product's mix, "HH:MM" for a band's start, and a currency code as text.
#[cfg(feature = "serde")]
mod toml_form {
    use pinswitch_protocol::Category;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer};

    pub(super) fn seconds_as_ms<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<u64, D::Error> {
        Ok(u64::deserialize(deserializer)?.saturating_mul(1000))
    }

    /// `["internet_payment", ...]` (the protocol's category names) as a category mask. An
    /// empty list is mask 0, which `EngineConfig::validate` refuses naming the product.
    pub(super) fn categories<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<u8>, D::Error> {
        let mut mask = 0u8;
        for name in Vec::<String>::deserialize(deserializer)? {
            let category = Category::ALL
                .into_iter()
                .find(|category| category.name() == name)
                .ok_or_else(|| {
                    let names: Vec<&str> = Category::ALL.map(Category::name).to_vec();
                    D::Error::custom(format!(
                        "unknown category {name:?}; the categories are {}",
                        names.join(", ")
                    ))
                })?;
            mask |= 1 << (category as u8 - 1);
        }
        Ok(Some(mask))
    }

    /// A code that is not three bytes becomes `[0; 3]`, which `EngineConfig::validate` refuses
    /// with a message naming the product.
    pub(super) fn currency<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<[u8; 3], D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(<[u8; 3]>::try_from(text.as_bytes()).unwrap_or([0; 3]))
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct BandText {
        from: String,
        rate_won: u64,
    }

    impl TryFrom<BandText> for super::TariffBand {
        type Error = String;

        fn try_from(band: BandText) -> Result<super::TariffBand, String> {
            let minute = band
                .from
                .split_once(':')
                .filter(|(hours, minutes)| hours.len() == 2 && minutes.len() == 2)
                .and_then(|(hours, minutes)| {
                    Some((hours.parse::<u16>().ok()?, minutes.parse::<u16>().ok()?))
                })
                .filter(|(hours, minutes)| *hours < 24 && *minutes < 60)
                .map(|(hours, minutes)| hours * 60 + minutes)
                .ok_or_else(|| {
                    format!("band start {:?} is not a time of day \"HH:MM\"", band.from)
                })?;
            Ok(super::TariffBand { from_minute: minute, rate_won: band.rate_won })
        }
    }
}

impl EngineConfig {
    /// The `[engine]` keys of the TOML form from before a product became one table, each with
    /// the key that replaced it in a product's `[[engine.products]]` table: the server refuses
    /// a file that still has one with this replacement in the message, rather than serde's
    /// bare "unknown field".
    pub const RETIRED_TOML_KEYS: [(&'static str, &'static str); 7] = [
        ("face_values_won", "face_value_won"),
        ("product_category_masks", "categories (names, e.g. [\"internet_payment\"], not bits)"),
        ("product_points_per_mille", "points_per_mille"),
        ("product_validity_days", "validity_days"),
        ("product_recharge_unit_won", "recharge_unit_won"),
        ("product_balance_cap_won", "balance_cap_won"),
        ("promotional_face_values_won", "promotional = true"),
    ];

    /// The rules a production switch starts with.
    pub fn production() -> EngineConfig {
        EngineConfig {
            // The seed's face values; every rule of every product is the engine-wide one.
            products: [5_000, 10_000, 20_000, 30_000, 50_000, 100_000]
                .into_iter()
                .map(Product::plain)
                .collect(),
            balance_cap_won: 500_000,
            balance_cap_named_won: 2_000_000,
            recharge_unit_won: 10_000,
            holds_per_card_max: 16,
            captures_per_hold_max: 50,
            hold_ttl_max_s: 7 * 24 * 3600,
            hold_ttl_default_s: 15 * 60,
            idempotency_window_ms: 8 * 24 * 3600 * 1000,
            idempotency_entries_max: 4_000_000,
            op_clock_skew_max_ms: 5 * 60 * 1000,
            password_tries_max: 5,
            // Korean practice for prepaid cards: 5 years; refunds of the whole balance once 60 %
            // (80 % for cards of 10,000 won or less) is used (see reference/domain-anchors.md).
            validity_days: 5 * 365,
            refund_used_percent: 60,
            refund_used_percent_small: 80,
            small_face_value_max_won: 10_000,
            points_per_mille: 10,
            promotional_extension_days: 365,
            promotional_unlisted_face_values_won: Vec::new(),
            foreign_products: Vec::new(),
            // Telephone calls: domestic at 2 won a second, to mobiles (010) 12 won per 6 s with
            // a 10-won connect fee, international (001) 300 won a whole minute plus 50 to connect.
            tariffs: vec![
                Tariff {
                    tariff_id: 1,
                    category: 2,
                    destination_prefix: String::new(),
                    connect_fee_won: 0,
                    rate_won: 2,
                    increment_s: 1,
                    first_increment_s: 0,
                    event_won: 0,
                    bands: Vec::new(),
                },
                Tariff {
                    tariff_id: 2,
                    category: 2,
                    destination_prefix: "010".into(),
                    connect_fee_won: 10,
                    rate_won: 12,
                    increment_s: 6,
                    first_increment_s: 0,
                    event_won: 0,
                    bands: Vec::new(),
                },
                Tariff {
                    tariff_id: 3,
                    category: 2,
                    destination_prefix: "001".into(),
                    connect_fee_won: 50,
                    rate_won: 300,
                    increment_s: 60,
                    first_increment_s: 60,
                    event_won: 0,
                    bands: Vec::new(),
                },
                // A phone information number priced per event (EVENT_CHARGE).
                Tariff {
                    tariff_id: 4,
                    category: 3,
                    destination_prefix: "1588".into(),
                    connect_fee_won: 0,
                    rate_won: 0,
                    increment_s: 1,
                    first_increment_s: 0,
                    event_won: 500,
                    bands: Vec::new(),
                },
                // International calls with a night rate (22:00 to 08:00, local time).
                Tariff {
                    tariff_id: 5,
                    category: 2,
                    destination_prefix: "002".into(),
                    connect_fee_won: 0,
                    rate_won: 100,
                    increment_s: 60,
                    first_increment_s: 0,
                    event_won: 0,
                    bands: vec![
                        TariffBand { from_minute: 8 * 60, rate_won: 200 },
                        TariffBand { from_minute: 22 * 60, rate_won: 100 },
                    ],
                },
            ],
            sessions_per_card_max: 4,
            sessions_per_shard_max: 200_000,
            session_grant_default_s: 300,
            session_grant_max_s: 3_600,
            session_validity_s: 600,
            tariff_utc_offset_s: 9 * 3600,
            low_balance_warn_won: 1_000,
            expired_sessions_max: 100_000,
            session_password_required: false,
        }
    }

    /// Small limits so that tests and the simulator reach every limit quickly.
    pub fn test_min() -> EngineConfig {
        EngineConfig {
            holds_per_card_max: 3,
            captures_per_hold_max: 3,
            hold_ttl_max_s: 3600,
            hold_ttl_default_s: 60,
            idempotency_window_ms: 2 * 3600 * 1000,
            idempotency_entries_max: 64,
            op_clock_skew_max_ms: 60 * 1000,
            password_tries_max: 3,
            validity_days: 1,
            // Every product sets every rule of its own, so tests reach each per-product rule:
            // - the product mix (CATEGORY_NOT_ALLOWED): 5,000-won cards pay for internet
            //   payment and telephone calls only, 30,000-won cards for everything but internet
            //   payment;
            // - points: the 5,000-won card earns none, the 100,000-won card 3 %;
            // - the 50,000-won card is valid two days, the 100,000-won card recharges in units
            //   of 5,000 won, the 5,000-won card holds at most 300,000 won;
            // - the 20,000-won card is promotional.
            products: vec![
                test_product(5_000, 0b00_0011, 0, 1, 10_000, 300_000),
                test_product(10_000, 0b11_1111, 10, 1, 10_000, 2_000_000),
                Product {
                    promotional: true,
                    ..test_product(20_000, 0b11_1111, 10, 1, 10_000, 2_000_000)
                },
                test_product(30_000, 0b11_1110, 10, 1, 10_000, 2_000_000),
                test_product(50_000, 0b11_1111, 20, 2, 10_000, 2_000_000),
                test_product(100_000, 0b11_1111, 30, 1, 5_000, 2_000_000),
            ],
            // Two foreign products: a 10-dollar US PIN for 14,000 won, a 1,000-yen PIN for 9,500.
            foreign_products: vec![
                ForeignProduct {
                    product_id: 1,
                    partner_id: 501,
                    currency: *b"USD",
                    face_value_minor: 1_000,
                    price_won: 14_000,
                },
                ForeignProduct {
                    product_id: 2,
                    partner_id: 502,
                    currency: *b"JPY",
                    face_value_minor: 1_000,
                    price_won: 9_500,
                },
            ],
            // The production call tariffs, and a premium information line (060) billed a whole
            // first minute, then in 6-second steps.
            tariffs: [
                EngineConfig::production().tariffs,
                vec![Tariff {
                    tariff_id: 6,
                    category: 3,
                    destination_prefix: "060".into(),
                    connect_fee_won: 0,
                    rate_won: 30,
                    increment_s: 6,
                    first_increment_s: 60,
                    event_won: 0,
                    bands: Vec::new(),
                }],
            ]
            .concat(),
            sessions_per_card_max: 2,
            sessions_per_shard_max: 8,
            session_grant_default_s: 60,
            session_grant_max_s: 600,
            session_validity_s: 120,
            expired_sessions_max: 4,
            ..EngineConfig::production()
        }
    }

    /// The product of this face value: the first in the catalogue, if any. A card whose
    /// product has since left the catalogue follows the engine-wide rules.
    pub fn product(&self, face_value_won: u64) -> Option<&Product> {
        self.products.iter().find(|product| product.face_value_won == face_value_won)
    }

    /// Whether a card of this face value may pay for this (valid) category.
    pub fn category_allowed(&self, face_value_won: u64, category: u8) -> bool {
        self.product(face_value_won)
            .and_then(|product| product.category_mask)
            .is_none_or(|mask| mask & (1 << (category - 1)) != 0)
    }

    /// Whether SESSION_START and EVENT_CHARGE of a card of this face value must carry the
    /// password.
    pub fn session_password_required_of(&self, face_value_won: u64) -> bool {
        self.product(face_value_won)
            .and_then(|product| product.session_password_required)
            .unwrap_or(self.session_password_required)
    }

    /// Points per 1,000 won paid by a card of this face value.
    pub fn points_per_mille_of(&self, face_value_won: u64) -> u16 {
        self.product(face_value_won)
            .and_then(|product| product.points_per_mille)
            .unwrap_or(self.points_per_mille)
    }

    /// Days a card of this product stays valid from its sale (or activation).
    pub fn validity_days_of(&self, face_value_won: u64) -> u32 {
        self.product(face_value_won)
            .and_then(|product| product.validity_days)
            .unwrap_or(self.validity_days)
    }

    /// The recharge unit of this product.
    pub fn recharge_unit_of(&self, face_value_won: u64) -> u64 {
        self.product(face_value_won)
            .and_then(|product| product.recharge_unit_won)
            .unwrap_or(self.recharge_unit_won)
    }

    /// The balance cap of a card of this product, named (verified real name) or not.
    pub fn balance_cap_of(&self, face_value_won: u64, named: bool) -> u64 {
        let legal_won = if named { self.balance_cap_named_won } else { self.balance_cap_won };
        self.product(face_value_won)
            .and_then(|product| product.balance_cap_won)
            .map_or(legal_won, |cap_won| cap_won.min(legal_won))
    }

    /// Whether each recharge of a card of this face value extends its validity.
    pub fn promotional(&self, face_value_won: u64) -> bool {
        self.product(face_value_won).map_or_else(
            || self.promotional_unlisted_face_values_won.contains(&face_value_won),
            |product| product.promotional,
        )
    }

    /// The tariff of a session: its category's entry with the longest prefix of `digits`.
    pub fn tariff_for(&self, category: u8, digits: &[u8]) -> Option<&Tariff> {
        self.tariffs
            .iter()
            .filter(|tariff| {
                tariff.category == category
                    && digits.starts_with(tariff.destination_prefix.as_bytes())
            })
            .max_by_key(|tariff| tariff.destination_prefix.len())
    }

    pub fn foreign_product(&self, product_id: u32) -> Option<&ForeignProduct> {
        self.foreign_products.iter().find(|product| product.product_id == product_id)
    }

    /// Checks the relations between limits; the server refuses to start on a violation.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_products()?;
        self.validate_foreign_products()?;
        self.validate_tariffs()?;
        self.validate_sessions()?;
        self.validate_tariff_bands()?;
        self.validate_limits()
    }

    /// The catalogue and each product's own rules (per-product vector lengths are the
    /// record's to check: `ConfigRecord` to `EngineConfig` refuses a record whose disagree).
    fn validate_products(&self) -> Result<(), String> {
        if self.products.is_empty() {
            return Err("products must name at least one product".into());
        }
        for product in &self.products {
            let face_won = product.face_value_won;
            if face_won == 0 || face_won > self.balance_cap_won {
                return Err(format!(
                    "product {face_won}: the face value must be in 1..=balance_cap_won"
                ));
            }
            if product.category_mask.is_some_and(|mask| mask == 0 || mask > 0b11_1111) {
                return Err(format!(
                    "product {face_won}: categories must allow some of 1..=6 and no others"
                ));
            }
            if product.validity_days == Some(0) || product.recharge_unit_won == Some(0) {
                return Err(format!(
                    "product {face_won}: its validity days and recharge unit must be positive"
                ));
            }
            if product.balance_cap_won.is_some_and(|cap_won| cap_won < face_won) {
                return Err(format!(
                    "product {face_won}: its balance cap must be at least its face value"
                ));
            }
            if product.points_per_mille.is_some_and(|rate| rate > 1000) {
                return Err(format!("product {face_won}: points rates are per mille (0..=1000)"));
            }
        }
        if self.points_per_mille > 1000 {
            return Err("points rates are per mille (0..=1000)".into());
        }
        Ok(())
    }

    /// The foreign PIN catalogue.
    fn validate_foreign_products(&self) -> Result<(), String> {
        for (at, product) in self.foreign_products.iter().enumerate() {
            if product.product_id == 0
                || self.foreign_products[..at]
                    .iter()
                    .any(|other| other.product_id == product.product_id)
            {
                return Err(format!(
                    "foreign product ids must be non-zero and unique ({})",
                    product.product_id
                ));
            }
            if !product.currency.iter().all(u8::is_ascii_uppercase) {
                return Err(format!(
                    "foreign product {}: currency must be three capital letters",
                    product.product_id
                ));
            }
            if product.face_value_minor == 0
                || product.price_won == 0
                || product.price_won > self.balance_cap_named_won
            {
                return Err(format!(
                    "foreign product {}: face value and price must be positive, the price within a card's cap",
                    product.product_id
                ));
            }
        }
        Ok(())
    }

    /// The tariff table: ids, categories, prefixes, increments, prices.
    fn validate_tariffs(&self) -> Result<(), String> {
        for (at, tariff) in self.tariffs.iter().enumerate() {
            let id = tariff.tariff_id;
            if id == 0 || self.tariffs[..at].iter().any(|other| other.tariff_id == id) {
                return Err(format!("tariff ids must be non-zero and unique ({id})"));
            }
            if !(1..=6).contains(&tariff.category) {
                return Err(format!("tariff {id}: category must be 1..=6"));
            }
            let prefix = tariff.destination_prefix.as_bytes();
            if prefix.len() > crate::types::DESTINATION_DIGITS_MAX
                || !prefix.iter().all(u8::is_ascii_digit)
            {
                return Err(format!("tariff {id}: destination_prefix must be at most 15 digits"));
            }
            if self.tariffs[..at].iter().any(|other| {
                other.category == tariff.category
                    && other.destination_prefix == tariff.destination_prefix
            }) {
                return Err(format!(
                    "tariff {id}: another tariff has the same category and prefix"
                ));
            }
            if tariff.increment_s == 0 || tariff.first_increment_s % tariff.increment_s != 0 {
                return Err(format!(
                    "tariff {id}: increment_s must be positive and first_increment_s a multiple of it"
                ));
            }
            if tariff.rate_won > self.balance_cap_named_won
                || tariff.connect_fee_won > self.balance_cap_named_won
            {
                return Err(format!(
                    "tariff {id}: rate and connect fee must be within a card's cap"
                ));
            }
        }
        Ok(())
    }

    /// Call session limits and the tariff clock's offset.
    fn validate_sessions(&self) -> Result<(), String> {
        if self.sessions_per_card_max == 0 || self.sessions_per_shard_max == 0 {
            return Err("sessions_per_card_max and sessions_per_shard_max must be positive".into());
        }
        if self.session_grant_max_s == 0
            || self.session_grant_max_s > SESSION_SECONDS_MAX
            || self.session_grant_default_s == 0
            || self.session_grant_default_s > self.session_grant_max_s
        {
            return Err(
                "session_grant_default_s must be in 1..=session_grant_max_s (at most 16,777,215)"
                    .into(),
            );
        }
        if self.session_validity_s == 0 || self.session_validity_s > SESSION_SECONDS_MAX {
            return Err("session_validity_s must be in 1..=16,777,215".into());
        }
        if !(-14 * 3600..=14 * 3600).contains(&self.tariff_utc_offset_s) {
            return Err("tariff_utc_offset_s must be within 14 hours of UTC".into());
        }
        Ok(())
    }

    /// Each tariff's time-of-day bands.
    fn validate_tariff_bands(&self) -> Result<(), String> {
        for tariff in &self.tariffs {
            let id = tariff.tariff_id;
            if tariff.bands.len() > TARIFF_BANDS_MAX {
                return Err(format!("tariff {id}: at most {TARIFF_BANDS_MAX} time-of-day bands"));
            }
            if tariff.bands.windows(2).any(|pair| pair[0].from_minute >= pair[1].from_minute)
                || tariff.bands.iter().any(|band| band.from_minute >= 24 * 60)
            {
                return Err(format!("tariff {id}: band minutes must rise strictly within 0..1440"));
            }
            if tariff.bands.iter().any(|band| band.rate_won > self.balance_cap_named_won)
                || tariff.event_won > self.balance_cap_named_won
            {
                return Err(format!(
                    "tariff {id}: band rates and the event price must be within a card's cap"
                ));
            }
        }
        Ok(())
    }

    /// Caps, holds, the op-id window, passwords, validity and refunds.
    fn validate_limits(&self) -> Result<(), String> {
        if self.balance_cap_named_won < self.balance_cap_won {
            return Err("balance_cap_named_won must be at least balance_cap_won".into());
        }
        if self.recharge_unit_won == 0 {
            return Err("recharge_unit_won must be positive".into());
        }
        if self.holds_per_card_max == 0 || self.captures_per_hold_max == 0 {
            return Err("holds_per_card_max and captures_per_hold_max must be positive".into());
        }
        if self.hold_ttl_default_s == 0 || self.hold_ttl_default_s > self.hold_ttl_max_s {
            return Err("hold_ttl_default_s must be in 1..=hold_ttl_max_s".into());
        }
        // A pending hold's authorization must still be remembered when the hold can still be
        // captured, so captures and reversals of it stay exactly-once.
        if u64::from(self.hold_ttl_max_s) * 1000 + self.op_clock_skew_max_ms
            > self.idempotency_window_ms
        {
            return Err(
                "hold_ttl_max_s plus the clock skew must fit in the idempotency window".into()
            );
        }
        if self.idempotency_entries_max < 16 {
            return Err("idempotency_entries_max must be at least 16".into());
        }
        if self.password_tries_max == 0 {
            return Err("password_tries_max must be positive".into());
        }
        if self.validity_days == 0 {
            return Err("validity_days must be positive".into());
        }
        if self.refund_used_percent > 100 || self.refund_used_percent_small > 100 {
            return Err("refund shares are percentages (0..=100)".into());
        }
        Ok(())
    }
}

/// A `test_min` product with every rule of its own.
fn test_product(
    face_value_won: u64,
    category_mask: u8,
    points_per_mille: u16,
    validity_days: u32,
    recharge_unit_won: u64,
    balance_cap_won: u64,
) -> Product {
    Product {
        face_value_won,
        category_mask: Some(category_mask),
        points_per_mille: Some(points_per_mille),
        validity_days: Some(validity_days),
        recharge_unit_won: Some(recharge_unit_won),
        balance_cap_won: Some(balance_cap_won),
        promotional: false,
        // Not set here: test_min's rules journal as the frozen record alone, whose bytes
        // `tests/formats.rs` pins.
        session_password_required: None,
    }
}
