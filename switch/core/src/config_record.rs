//! The engine's rules as the journal and snapshots hold them. `ConfigRecord` is the archived form
//! inside every CONFIGURE journal record and every snapshot image: its fields, their order and
//! their types are the on-disk format, the one `EngineConfig` had before a product became one
//! struct (issue 13), so data directories written before that still decode byte for byte. The
//! engine never reads a record: it converts it to `EngineConfig` (a record whose per-product
//! vectors disagree in length is refused there) and back when it journals or snapshots. A
//! per-product vector is all or nothing, so a rule only some products set is written with the
//! engine-wide value for the others: the same rules, which come back with that value set
//! (`EngineConfig::same_record` compares rules as records for that reason). Every record this
//! code writes converts back to the same bytes; `tests/formats.rs` pins the bytes.

use rkyv::{Archive, Deserialize, Serialize};

use crate::config::{EngineConfig, ForeignProduct, Product, Tariff};

/// Every category (bits 0..=5: categories 1 to 6): what a product with no mix of its own gets
/// in a record whose other products have one.
const EVERY_CATEGORY_MASK: u8 = 0b11_1111;

/// The rules as archived. A product is spread over parallel vectors indexed like
/// `face_values_won`; a per-product vector is either empty (every product follows the global
/// rule) or has one entry per face value. The fields mean what `EngineConfig`'s fields of the
/// same names mean (`Product`'s for the per-product ones). Never reorder, retype, add or drop a
/// field: that is a format change, which needs a format version first.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ConfigRecord {
    pub face_values_won: Vec<u64>,
    /// Bit `c - 1` set: the product may pay for category `c`.
    pub product_category_masks: Vec<u8>,
    pub balance_cap_won: u64,
    pub balance_cap_named_won: u64,
    pub recharge_unit_won: u64,
    pub holds_per_card_max: u16,
    pub captures_per_hold_max: u16,
    pub hold_ttl_max_s: u32,
    pub hold_ttl_default_s: u32,
    pub idempotency_window_ms: u64,
    pub idempotency_entries_max: u32,
    pub op_clock_skew_max_ms: u64,
    pub password_tries_max: u8,
    pub validity_days: u32,
    pub refund_used_percent: u8,
    pub refund_used_percent_small: u8,
    pub small_face_value_max_won: u64,
    pub points_per_mille: u16,
    pub product_points_per_mille: Vec<u16>,
    pub product_validity_days: Vec<u32>,
    pub product_recharge_unit_won: Vec<u64>,
    pub product_balance_cap_won: Vec<u64>,
    /// A set of face values, in catalogue order when the record was made from `EngineConfig`
    /// (the promotional products first, then `EngineConfig::promotional_unlisted_face_values_won`).
    pub promotional_face_values_won: Vec<u64>,
    pub promotional_extension_days: u32,
    pub foreign_products: Vec<ForeignProduct>,
    pub tariffs: Vec<Tariff>,
    pub sessions_per_card_max: u16,
    pub sessions_per_shard_max: u32,
    pub session_grant_default_s: u32,
    pub session_grant_max_s: u32,
    pub session_validity_s: u32,
    pub tariff_utc_offset_s: i32,
    pub low_balance_warn_won: u64,
    pub expired_sessions_max: u32,
    pub session_password_required: bool,
}

/// The rules added since `ConfigRecord` was frozen, journaled beside it in a
/// `ConfigureExtended` command (and held by snapshot images from image format 2 on). A
/// record with every vector here empty is `Default`, and rules whose added part is default
/// journal as a plain `Configure`, byte for byte what they were before this part existed.
/// The same discipline as the frozen record: never reorder, retype or drop a field; a new
/// rule is a new `ConfigRecordAdded` field only together with a new image format.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigRecordAdded {
    /// Per product, all or nothing like the frozen vectors (`Product::session_password_required`;
    /// the engine-wide rule stands in for products without one).
    pub product_session_password_required: Vec<bool>,
}

/// The frozen record and the rules added since, as one `ConfigureExtended` command carries
/// them.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ConfigRecordExtended {
    pub record: ConfigRecord,
    pub added: ConfigRecordAdded,
}

impl From<&EngineConfig> for ConfigRecordAdded {
    fn from(config: &EngineConfig) -> ConfigRecordAdded {
        ConfigRecordAdded {
            product_session_password_required: per_product(
                &config.products,
                |product| product.session_password_required,
                config.session_password_required,
            ),
        }
    }
}

impl ConfigRecordAdded {
    fn check_lengths(&self, products: usize) -> Result<(), String> {
        let len = self.product_session_password_required.len();
        if len != 0 && len != products {
            return Err(
                "product_session_password_required must be empty or have one entry per face value"
                    .into(),
            );
        }
        Ok(())
    }
}

/// One per-product vector of the record: empty when no product has the rule of its own, else
/// one entry per product, the global value standing in for the products without one (the
/// vectors are all or nothing, and the global value is what "without one" means).
fn per_product<T: Copy>(
    products: &[Product],
    rule: impl Fn(&Product) -> Option<T>,
    global: T,
) -> Vec<T> {
    if products.iter().all(|product| rule(product).is_none()) {
        return Vec::new();
    }
    products.iter().map(|product| rule(product).unwrap_or(global)).collect()
}

/// Product `index`'s entry of a per-product vector checked to be empty or full: `None` when
/// the vector is empty (the global rule).
fn entry<T: Copy>(values: &[T], index: usize) -> Option<T> {
    values.get(index).copied()
}

impl From<&EngineConfig> for ConfigRecord {
    fn from(config: &EngineConfig) -> ConfigRecord {
        let products = &config.products;
        // A set: the promotional products in catalogue order, then the unlisted ones, each
        // face value once (two products of one face value are one entry).
        let mut promotional_face_values_won: Vec<u64> = Vec::new();
        let promotional_faces = products
            .iter()
            .filter(|product| product.promotional)
            .map(|product| product.face_value_won)
            .chain(config.promotional_unlisted_face_values_won.iter().copied());
        for face_value_won in promotional_faces {
            if !promotional_face_values_won.contains(&face_value_won) {
                promotional_face_values_won.push(face_value_won);
            }
        }
        ConfigRecord {
            face_values_won: products.iter().map(|product| product.face_value_won).collect(),
            product_category_masks: per_product(
                products,
                |product| product.category_mask,
                EVERY_CATEGORY_MASK,
            ),
            balance_cap_won: config.balance_cap_won,
            balance_cap_named_won: config.balance_cap_named_won,
            recharge_unit_won: config.recharge_unit_won,
            holds_per_card_max: config.holds_per_card_max,
            captures_per_hold_max: config.captures_per_hold_max,
            hold_ttl_max_s: config.hold_ttl_max_s,
            hold_ttl_default_s: config.hold_ttl_default_s,
            idempotency_window_ms: config.idempotency_window_ms,
            idempotency_entries_max: config.idempotency_entries_max,
            op_clock_skew_max_ms: config.op_clock_skew_max_ms,
            password_tries_max: config.password_tries_max,
            validity_days: config.validity_days,
            refund_used_percent: config.refund_used_percent,
            refund_used_percent_small: config.refund_used_percent_small,
            small_face_value_max_won: config.small_face_value_max_won,
            points_per_mille: config.points_per_mille,
            product_points_per_mille: per_product(
                products,
                |product| product.points_per_mille,
                config.points_per_mille,
            ),
            product_validity_days: per_product(
                products,
                |product| product.validity_days,
                config.validity_days,
            ),
            product_recharge_unit_won: per_product(
                products,
                |product| product.recharge_unit_won,
                config.recharge_unit_won,
            ),
            // A card's cap is the lower of its product's and the legal cap of its kind; the
            // named cap is the higher legal cap, so standing in for "no cap of its own" it
            // changes no card's cap.
            product_balance_cap_won: per_product(
                products,
                |product| product.balance_cap_won,
                config.balance_cap_named_won,
            ),
            promotional_face_values_won,
            promotional_extension_days: config.promotional_extension_days,
            foreign_products: config.foreign_products.clone(),
            tariffs: config.tariffs.clone(),
            sessions_per_card_max: config.sessions_per_card_max,
            sessions_per_shard_max: config.sessions_per_shard_max,
            session_grant_default_s: config.session_grant_default_s,
            session_grant_max_s: config.session_grant_max_s,
            session_validity_s: config.session_validity_s,
            tariff_utc_offset_s: config.tariff_utc_offset_s,
            low_balance_warn_won: config.low_balance_warn_won,
            expired_sessions_max: config.expired_sessions_max,
            session_password_required: config.session_password_required,
        }
    }
}

impl ConfigRecord {
    /// The per-product vectors are empty or have one entry per face value (the errors are the
    /// ones `EngineConfig::validate` gave before products were structs, so an operator's log
    /// reads the same).
    fn check_lengths(&self) -> Result<(), String> {
        let products = self.face_values_won.len();
        if !self.product_category_masks.is_empty() && self.product_category_masks.len() != products
        {
            return Err(
                "product_category_masks must be empty or have one mask per face value".into()
            );
        }
        if !self.product_points_per_mille.is_empty()
            && self.product_points_per_mille.len() != products
        {
            return Err(
                "product_points_per_mille must be empty or have one rate per face value".into()
            );
        }
        for (name, len) in [
            ("product_validity_days", self.product_validity_days.len()),
            ("product_recharge_unit_won", self.product_recharge_unit_won.len()),
            ("product_balance_cap_won", self.product_balance_cap_won.len()),
        ] {
            if len != 0 && len != products {
                return Err(format!("{name} must be empty or have one entry per face value"));
            }
        }
        Ok(())
    }
}

/// The engine's rules of a record. Refused only when the per-product vectors disagree in length
/// with `face_values_won`; everything else is `EngineConfig::validate`'s to judge.
impl TryFrom<&ConfigRecord> for EngineConfig {
    type Error = String;

    fn try_from(record: &ConfigRecord) -> Result<EngineConfig, String> {
        EngineConfig::from_records(record, &ConfigRecordAdded::default())
    }
}

impl EngineConfig {
    /// The engine's rules of a frozen record and the rules added since (default for a record
    /// journaled alone). Refused only when a per-product vector disagrees in length with
    /// `face_values_won`.
    pub fn from_records(
        record: &ConfigRecord,
        added: &ConfigRecordAdded,
    ) -> Result<EngineConfig, String> {
        record.check_lengths()?;
        added.check_lengths(record.face_values_won.len())?;
        let products = record
            .face_values_won
            .iter()
            .enumerate()
            .map(|(index, face_value_won)| Product {
                face_value_won: *face_value_won,
                category_mask: entry(&record.product_category_masks, index),
                points_per_mille: entry(&record.product_points_per_mille, index),
                validity_days: entry(&record.product_validity_days, index),
                recharge_unit_won: entry(&record.product_recharge_unit_won, index),
                balance_cap_won: entry(&record.product_balance_cap_won, index),
                promotional: record.promotional_face_values_won.contains(face_value_won),
                session_password_required: entry(&added.product_session_password_required, index),
            })
            .collect();
        // Older rules may call a face value promotional that names no product (cards of a
        // product since withdrawn from issue); they keep the extension.
        let mut promotional_unlisted_face_values_won = Vec::new();
        for face_value_won in &record.promotional_face_values_won {
            if !record.face_values_won.contains(face_value_won)
                && !promotional_unlisted_face_values_won.contains(face_value_won)
            {
                promotional_unlisted_face_values_won.push(*face_value_won);
            }
        }
        Ok(EngineConfig {
            products,
            balance_cap_won: record.balance_cap_won,
            balance_cap_named_won: record.balance_cap_named_won,
            recharge_unit_won: record.recharge_unit_won,
            holds_per_card_max: record.holds_per_card_max,
            captures_per_hold_max: record.captures_per_hold_max,
            hold_ttl_max_s: record.hold_ttl_max_s,
            hold_ttl_default_s: record.hold_ttl_default_s,
            idempotency_window_ms: record.idempotency_window_ms,
            idempotency_entries_max: record.idempotency_entries_max,
            op_clock_skew_max_ms: record.op_clock_skew_max_ms,
            password_tries_max: record.password_tries_max,
            validity_days: record.validity_days,
            refund_used_percent: record.refund_used_percent,
            refund_used_percent_small: record.refund_used_percent_small,
            small_face_value_max_won: record.small_face_value_max_won,
            points_per_mille: record.points_per_mille,
            promotional_extension_days: record.promotional_extension_days,
            promotional_unlisted_face_values_won,
            foreign_products: record.foreign_products.clone(),
            tariffs: record.tariffs.clone(),
            sessions_per_card_max: record.sessions_per_card_max,
            sessions_per_shard_max: record.sessions_per_shard_max,
            session_grant_default_s: record.session_grant_default_s,
            session_grant_max_s: record.session_grant_max_s,
            session_validity_s: record.session_validity_s,
            tariff_utc_offset_s: record.tariff_utc_offset_s,
            low_balance_warn_won: record.low_balance_warn_won,
            expired_sessions_max: record.expired_sessions_max,
            session_password_required: record.session_password_required,
        })
    }
}

impl EngineConfig {
    /// Whether the two rule sets are journaled as the same record. The server compares rules
    /// with it, not with `==`: a product that leaves a rule to the engine-wide value in a
    /// catalogue where others set theirs comes back from the journal with that value set, the
    /// same rules in a different spelling, which must not journal a change at every start.
    pub fn same_record(&self, other: &EngineConfig) -> bool {
        ConfigRecord::from(self) == ConfigRecord::from(other)
            && ConfigRecordAdded::from(self) == ConfigRecordAdded::from(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(config: &EngineConfig) -> EngineConfig {
        EngineConfig::from_records(&ConfigRecord::from(config), &ConfigRecordAdded::from(config))
            .unwrap()
    }

    /// Every rule of every product set, to values unlike the global ones and test_min's.
    fn every_rule_set() -> EngineConfig {
        let mut config = EngineConfig::production();
        for (at, product) in config.products.iter_mut().enumerate() {
            let at = u16::try_from(at).unwrap();
            product.category_mask = Some(0b10_0001 | (1 << (at % 5)));
            product.points_per_mille = Some(7 * at);
            product.validity_days = Some(30 + u32::from(at));
            product.recharge_unit_won = Some(1_000 * (u64::from(at) + 1));
            product.balance_cap_won = Some(400_000 + u64::from(at));
            product.promotional = at % 2 == 1;
            product.session_password_required = Some(at % 3 == 0);
        }
        config
    }

    #[test]
    fn the_rules_round_trip_through_their_record() {
        for config in [EngineConfig::production(), EngineConfig::test_min(), every_rule_set()] {
            config.validate().unwrap();
            assert_eq!(round_trip(&config), config);
            let (record, added) = (ConfigRecord::from(&config), ConfigRecordAdded::from(&config));
            let back = EngineConfig::from_records(&record, &added).unwrap();
            assert_eq!(
                (ConfigRecord::from(&back), ConfigRecordAdded::from(&back)),
                (record, added)
            );
        }
        // Only rules that set the added rule need the added record.
        assert_eq!(
            ConfigRecordAdded::from(&EngineConfig::test_min()),
            ConfigRecordAdded::default()
        );
        assert_eq!(
            ConfigRecordAdded::from(&every_rule_set()).product_session_password_required,
            vec![true, false, false, true, false, false]
        );
        let wrong = ConfigRecordAdded { product_session_password_required: vec![true] };
        assert_eq!(
            EngineConfig::from_records(&ConfigRecord::from(&every_rule_set()), &wrong).unwrap_err(),
            "product_session_password_required must be empty or have one entry per face value"
        );
        let record = ConfigRecord::from(&EngineConfig::production());
        assert!(
            record.product_category_masks.is_empty() && record.product_points_per_mille.is_empty()
        );
        assert_eq!(
            ConfigRecord::from(&EngineConfig::test_min()).promotional_face_values_won,
            vec![20_000]
        );
    }

    /// A product without a rule of its own in a catalogue where others have one gets the
    /// global value in the record, which comes back as that value, set: the same rules.
    #[test]
    fn a_rule_some_products_leave_out_is_the_global_one_in_the_record() {
        let mut config = EngineConfig::production();
        config.products[5].points_per_mille = Some(30);
        config.products[0].balance_cap_won = Some(300_000);
        config.products[1].category_mask = Some(0b00_0001);
        let record = ConfigRecord::from(&config);
        assert_eq!(record.product_points_per_mille, vec![10, 10, 10, 10, 10, 30]);
        assert_eq!(record.product_balance_cap_won[..2], [300_000, 2_000_000]);
        assert_eq!(record.product_category_masks[..3], [0b11_1111, 0b00_0001, 0b11_1111]);
        assert!(record.product_validity_days.is_empty());
        let back = EngineConfig::try_from(&record).unwrap();
        assert_ne!(back, config);
        assert!(back.same_record(&config));
        for face in [5_000, 10_000, 100_000] {
            for named in [false, true] {
                assert_eq!(back.balance_cap_of(face, named), config.balance_cap_of(face, named));
            }
            assert_eq!(back.points_per_mille_of(face), config.points_per_mille_of(face));
            for category in 1..=6 {
                assert_eq!(
                    back.category_allowed(face, category),
                    config.category_allowed(face, category)
                );
            }
        }
    }

    /// Records the code before products were structs could write, converted as they meant:
    /// a promotional face value with no product keeps its cards' extension, and vectors of
    /// the wrong length are refused with the messages `validate` gave.
    #[test]
    fn older_records_convert_or_are_refused_as_before() {
        let mut record = ConfigRecord::from(&EngineConfig::production());
        record.promotional_face_values_won = vec![70_000, 20_000];
        let config = EngineConfig::try_from(&record).unwrap();
        assert!(config.promotional(70_000) && config.promotional(20_000));
        assert!(!config.promotional(5_000));
        assert_eq!(config.promotional_unlisted_face_values_won, vec![70_000]);
        assert_eq!(ConfigRecord::from(&config).promotional_face_values_won, vec![20_000, 70_000]);

        let refused = |change: fn(&mut ConfigRecord)| {
            let mut record = ConfigRecord::from(&EngineConfig::production());
            change(&mut record);
            EngineConfig::try_from(&record).unwrap_err()
        };
        assert_eq!(
            refused(|record| record.product_category_masks = vec![1]),
            "product_category_masks must be empty or have one mask per face value"
        );
        assert_eq!(
            refused(|record| record.product_points_per_mille = vec![1; 7]),
            "product_points_per_mille must be empty or have one rate per face value"
        );
        assert_eq!(
            refused(|record| record.product_validity_days = vec![1]),
            "product_validity_days must be empty or have one entry per face value"
        );
        assert_eq!(
            refused(|record| record.product_recharge_unit_won = vec![10_000]),
            "product_recharge_unit_won must be empty or have one entry per face value"
        );
        assert_eq!(
            refused(|record| record.product_balance_cap_won = vec![10_000]),
            "product_balance_cap_won must be empty or have one entry per face value"
        );
    }
}
