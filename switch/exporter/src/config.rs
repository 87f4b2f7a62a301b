//! The exporter's own configuration (`--export-config FILE`, TOML): the period cut-off, merchant
//! commission rates and payout accounts, the commission kept on foreign-partner settlements, the
//! paying institution named in the pain.001 files, and how often the durable state is
//! checkpointed. Every field has a default, so an absent file means: periods close at midnight
//! KST, 25 per mille merchant commission, no foreign-partner commission, no configured accounts.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::calendar::Cutoff;
use crate::error::{ExportError, Result};

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ExportConfig {
    /// Hours east of UTC of the settlement time zone (9: KST).
    pub utc_offset_hours: i8,
    /// Local hour (0..=23) at which a period ends and the next begins.
    pub cutoff_hour: u8,
    /// How long after a period's end a shard whose journal shows nothing newer is taken to have
    /// nothing more for it (a quiet shard writes no records), in seconds.
    pub close_grace_s: u64,
    /// Days between a period and the requested execution date of its payouts.
    pub payout_delay_days: u32,
    /// The durable state is written after this many records (and at the end of every run).
    pub checkpoint_every_records: u64,
    /// Channels that are mobile operators (sales by mobile bill, means 5, count as operator
    /// sales whatever the channel).
    pub mobile_operator_channels: Vec<u32>,
    pub merchants: MerchantSection,
    pub foreign_partners: ForeignPartnerSection,
    pub payer: PayerSection,
    pub statements: StatementSection,
}

/// What the issuer keeps of the won price of every foreign PIN a card holder converts into (its
/// margin on the foreign operator's PINs); the operator is owed the rest (net due).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ForeignPartnerSection {
    /// Commission per mille of each conversion's price, unless `rates` names the partner.
    pub default_commission_per_mille: u16,
    /// Per-partner commission, per mille (keys are the catalogue's partner ids).
    pub rates: BTreeMap<String, u16>,
}

/// Bounds of a card statement answer (`statement`, STATEMENT over `serve`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StatementSection {
    /// Most detail lines in one answer; a larger or zero `limit` is cut to this.
    pub lines_max: u32,
    /// Most recharges listed in one answer (their count and sum always cover the range).
    pub recharges_max: u32,
    /// Most queries in one STATEMENT frame (more: `BATCH_TOO_LARGE`).
    pub batch_max: u32,
    /// Largest STATEMENT request body accepted by `serve`, in bytes (more:
    /// `FRAME_TOO_LARGE`, and the connection closes).
    pub request_bytes_max: u32,
    /// Most connections `serve` holds at once (more are refused with `RETRY_LATER`).
    pub connections_max: u32,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MerchantSection {
    /// Commission on merchant payments, per mille, unless `rates` names the merchant.
    pub default_commission_per_mille: u16,
    /// Per-merchant commission, per mille (keys are merchant ids).
    pub rates: BTreeMap<String, u16>,
    /// Per-merchant payout account (keys are merchant ids); merchants without one are paid to
    /// `MERCHANT-{id}`, for the bank to resolve from its own register.
    pub accounts: BTreeMap<String, String>,
}

/// The institution paying out (the debtor of the pain.001 files).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PayerSection {
    pub name: String,
    /// The account the payouts are debited from (the safeguarded float account).
    pub account: String,
    /// The payer's bank (BIC).
    pub agent_bic: String,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            utc_offset_hours: 9,
            cutoff_hour: 0,
            close_grace_s: 300,
            payout_delay_days: 1,
            checkpoint_every_records: 1_000_000,
            mobile_operator_channels: Vec::new(),
            merchants: MerchantSection::default(),
            foreign_partners: ForeignPartnerSection::default(),
            payer: PayerSection::default(),
            statements: StatementSection::default(),
        }
    }
}

impl Default for StatementSection {
    fn default() -> Self {
        StatementSection {
            lines_max: 1000,
            recharges_max: 100,
            batch_max: 16,
            request_bytes_max: 65_536,
            connections_max: 256,
        }
    }
}

impl Default for MerchantSection {
    fn default() -> Self {
        MerchantSection {
            default_commission_per_mille: 25,
            rates: BTreeMap::new(),
            accounts: BTreeMap::new(),
        }
    }
}

impl Default for PayerSection {
    fn default() -> Self {
        PayerSection {
            name: "Pinswitch".into(),
            account: "PINSWITCH-SAFEGUARDED".into(),
            agent_bic: "NOTPROVIDED".into(),
        }
    }
}

impl ExportConfig {
    /// Defaults, overridden by the TOML file when one is given.
    pub fn load(path: Option<&Path>) -> Result<ExportConfig> {
        let config = match path {
            None => ExportConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(ExportError::io(path, "read export config"))?;
                toml::from_str(&text)
                    .map_err(|error| ExportError::Config(format!("{}: {error}", path.display())))?
            }
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        if !(-12..=14).contains(&self.utc_offset_hours) {
            return Err(ExportError::Config("utc_offset_hours must be in -12..=14".into()));
        }
        if self.cutoff_hour > 23 {
            return Err(ExportError::Config("cutoff_hour must be in 0..=23".into()));
        }
        if self.checkpoint_every_records == 0 {
            return Err(ExportError::Config("checkpoint_every_records must be positive".into()));
        }
        if self.merchants.default_commission_per_mille > 1000 {
            return Err(ExportError::Config(
                "default_commission_per_mille must be at most 1000".into(),
            ));
        }
        for (key, rate) in &self.merchants.rates {
            parse_merchant(key)?;
            if *rate > 1000 {
                return Err(ExportError::Config(format!(
                    "merchants.rates.{key} must be at most 1000"
                )));
            }
        }
        if self.foreign_partners.default_commission_per_mille > 1000 {
            return Err(ExportError::Config(
                "foreign_partners.default_commission_per_mille must be at most 1000".into(),
            ));
        }
        for (key, rate) in &self.foreign_partners.rates {
            key.parse::<u32>().map_err(|_| {
                ExportError::Config(format!("foreign partner key {key:?} is not a partner id"))
            })?;
            if *rate > 1000 {
                return Err(ExportError::Config(format!(
                    "foreign_partners.rates.{key} must be at most 1000"
                )));
            }
        }
        let statements = &self.statements;
        if statements.lines_max == 0
            || statements.recharges_max == 0
            || statements.batch_max == 0
            || statements.request_bytes_max == 0
            || statements.connections_max == 0
        {
            return Err(ExportError::Config("every [statements] limit must be positive".into()));
        }
        for (key, account) in &self.merchants.accounts {
            parse_merchant(key)?;
            if account.is_empty() || account.len() > 34 {
                return Err(ExportError::Config(format!(
                    "merchants.accounts.{key} must have 1..=34 characters"
                )));
            }
        }
        Ok(())
    }

    pub fn cutoff(&self) -> Cutoff {
        Cutoff { utc_offset_hours: self.utc_offset_hours, cutoff_hour: self.cutoff_hour }
    }

    /// The commission rate of a merchant, per mille.
    pub fn commission_per_mille(&self, merchant_id: u64) -> u16 {
        self.merchants
            .rates
            .get(&merchant_id.to_string())
            .copied()
            .unwrap_or(self.merchants.default_commission_per_mille)
    }

    /// The commission kept on a foreign partner's conversions, per mille.
    pub fn foreign_commission_per_mille(&self, partner_id: u32) -> u16 {
        self.foreign_partners
            .rates
            .get(&partner_id.to_string())
            .copied()
            .unwrap_or(self.foreign_partners.default_commission_per_mille)
    }

    /// Whether a channel sale is a mobile operator's (a listed channel, or paid by mobile bill).
    pub fn is_operator_sale(&self, channel_id: u32, payment_means: u8) -> bool {
        payment_means == 5 || self.mobile_operator_channels.contains(&channel_id)
    }

    /// The payout account of a merchant.
    pub fn merchant_account(&self, merchant_id: u64) -> String {
        self.merchants
            .accounts
            .get(&merchant_id.to_string())
            .cloned()
            .unwrap_or_else(|| format!("MERCHANT-{merchant_id}"))
    }
}

fn parse_merchant(key: &str) -> Result<u64> {
    key.parse::<u64>()
        .map_err(|_| ExportError::Config(format!("merchant key {key:?} is not a merchant id")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_override_defaults_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.toml");
        std::fs::write(&path, "cutoff_hour = 22\n[merchants]\ndefault_commission_per_mille = 30\nrates = { \"77\" = 15 }\naccounts = { \"77\" = \"KR-004-1234\" }\n[foreign_partners]\nrates = { \"501\" = 40 }\n").unwrap();
        let config = ExportConfig::load(Some(&path)).unwrap();
        assert_eq!(config.cutoff(), Cutoff { utc_offset_hours: 9, cutoff_hour: 22 });
        assert_eq!((config.commission_per_mille(77), config.commission_per_mille(78)), (15, 30));
        assert_eq!(
            (config.merchant_account(77).as_str(), config.merchant_account(5).as_str()),
            ("KR-004-1234", "MERCHANT-5")
        );
        assert_eq!(
            (config.foreign_commission_per_mille(501), config.foreign_commission_per_mille(502)),
            (40, 0)
        );
        for bad in [
            "cutoff_hour = 24\n",
            "[merchants]\nrates = { \"x\" = 1 }\n",
            "unknown = 1\n",
            "utc_offset_hours = 20\n",
            "[foreign_partners]\nrates = { \"501\" = 1001 }\n",
            "[foreign_partners]\nrates = { \"-1\" = 1 }\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(ExportConfig::load(Some(&path)).is_err(), "{bad}");
        }
    }
}
