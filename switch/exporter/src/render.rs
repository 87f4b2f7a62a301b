//! Turns one period into its files, deterministically: the same period always gives the same
//! bytes (lines sorted by origin, times taken from the period, never from the wall clock). Money
//! is integer won throughout; KRW has no minor unit, so ISO 20022 amounts are whole numbers.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rkyv::{Archive, Deserialize, Serialize};

use crate::calendar::{self, Cutoff, Day};
use crate::config::ExportConfig;
use crate::facts::{ChannelSaleLine, ForeignLine, PeriodFacts, RECORD_KINDS};
use crate::ledger::{Ledger, TrialBalance};
use crate::xml::XmlWriter;

/// A period as it is kept once closed (and as a provisional render sees an open one).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClosedPeriod {
    pub day: Day,
    pub facts: PeriodFacts,
    /// Negative merchant balances carried into this period (merchant id -> won, negative).
    pub carry_in: BTreeMap<u64, i128>,
    /// The ledger through the end of this period (cumulative).
    pub ledger_after: Ledger,
}

/// One merchant's statement totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Statement {
    pub sales_count: u64,
    pub gross_won: u128,
    pub refunds_count: u64,
    pub refunds_won: u128,
    pub commission_won: i128,
    /// gross − refunds − commission.
    pub net_won: i128,
    pub carried_in_won: i128,
    /// What is transferred: net + carried in, when positive.
    pub payout_won: i128,
    /// What is carried into the next period: net + carried in, when negative.
    pub carry_out_won: i128,
    /// The commission rate of the lines, or `None` when they differ.
    pub rate_per_mille: Option<u16>,
}

impl ClosedPeriod {
    /// Statements per merchant (merchants with lines or a carried balance).
    pub fn statements(&self) -> BTreeMap<u64, Statement> {
        let mut statements: BTreeMap<u64, Statement> = BTreeMap::new();
        let mut rates: BTreeMap<u64, Option<u16>> = BTreeMap::new();
        for line in &self.facts.merchant {
            let statement = statements.entry(line.merchant_id).or_default();
            if line.kind.is_debit() {
                statement.sales_count += 1;
                statement.gross_won += u128::from(line.amount_won);
            } else {
                statement.refunds_count += 1;
                statement.refunds_won += u128::from(line.amount_won);
            }
            statement.commission_won += i128::from(line.commission_won);
            let rate = rates.entry(line.merchant_id).or_insert(Some(line.rate_per_mille));
            if *rate != Some(line.rate_per_mille) {
                *rate = None;
            }
        }
        for (merchant_id, carry_won) in &self.carry_in {
            statements.entry(*merchant_id).or_default().carried_in_won = *carry_won;
        }
        for (merchant_id, statement) in statements.iter_mut() {
            statement.net_won = statement.gross_won as i128
                - statement.refunds_won as i128
                - statement.commission_won;
            let due_won = statement.net_won + statement.carried_in_won;
            statement.payout_won = due_won.max(0);
            statement.carry_out_won = due_won.min(0);
            statement.rate_per_mille = rates.get(merchant_id).copied().flatten();
        }
        statements
    }
}

/// A credit transfer of a payout file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub end_to_end_id: String,
    pub amount_won: u128,
    pub creditor_name: String,
    pub creditor_account: String,
    pub remittance: String,
}

/// Every file of a period: (file name, contents).
pub fn render(
    period: &ClosedPeriod,
    provisional: bool,
    cutoff: Cutoff,
    config: &ExportConfig,
) -> Vec<(String, String)> {
    let compact_date = calendar::date_string(period.day).replace('-', "");
    let statements = period.statements();
    let facts = &period.facts;
    let mut files = Vec::new();

    let from = cutoff.local_date_time(cutoff.start_ms(period.day));
    let to = cutoff.local_date_time(cutoff.end_ms(period.day));
    let (statement_csv, merchant_transfers) =
        merchant_statements(&statements, &from, &to, &compact_date, config);
    files.push(("statements.csv".to_string(), statement_csv));
    files.push(("statement-lines.csv".to_string(), statement_lines_csv(facts, cutoff)));

    let execution_day = period.day + i64::from(config.payout_delay_days);
    let created = cutoff.local_date_time(cutoff.end_ms(period.day));
    files.extend(payout_files(
        "payouts-merchants",
        &format!("PSW-M-{compact_date}"),
        &created,
        execution_day,
        config,
        &merchant_transfers,
    ));
    let refund_transfers = refund_transfers(facts);
    files.extend(payout_files(
        "payouts-refunds",
        &format!("PSW-R-{compact_date}"),
        &created,
        execution_day,
        config,
        &refund_transfers,
    ));

    files.push(("breakage.csv".to_string(), breakage_csv(facts, cutoff)));
    let (sales_csv, channels) = channel_sales_csv(facts, cutoff);
    files.push(("channel-sales.csv".to_string(), sales_csv));
    files.push(("channel-summary.csv".to_string(), channel_summary_csv(&channels)));

    let partners = foreign_settlements(&facts.foreign);
    files.extend(foreign_files(period.day, cutoff, &facts.foreign, &partners));

    files.push(("retention.csv".to_string(), retention_csv(facts, cutoff)));
    let trial = period.ledger_after.trial_balance();
    files.push(("trial-balance.csv".to_string(), trial_balance_csv(period, &trial)));

    let figures = PeriodFigures {
        from: &from,
        to: &to,
        statements: &statements,
        merchant_transfers: &merchant_transfers,
        refund_transfers: &refund_transfers,
        channels: &channels,
        partners: &partners,
        trial: &trial,
    };
    files.push(("summary.txt".to_string(), summary_txt(period, provisional, &figures)));
    files
}

/// `statements.csv`, one row per merchant (statement id `SET-{merchant}-{YYYYMMDD}`) and a
/// `TRAILER`, and the transfers that pay the merchants owed something.
fn merchant_statements(
    statements: &BTreeMap<u64, Statement>,
    from: &str,
    to: &str,
    compact_date: &str,
    config: &ExportConfig,
) -> (String, Vec<Transfer>) {
    let mut statement_csv = String::from(
        "statement_id,merchant_id,period_from,period_to,sales_count,gross_won,refunds_count,refunds_won,commission_rate_per_mille,commission_won,net_won,carried_in_won,payout_won,carried_forward_won,payout_account\n",
    );
    let mut merchant_transfers = Vec::new();
    for (merchant_id, statement) in statements {
        let rate =
            statement.rate_per_mille.map_or_else(|| "mixed".to_string(), |rate| rate.to_string());
        let account = config.merchant_account(*merchant_id);
        let statement_id = format!("SET-{merchant_id}-{compact_date}");
        let _ = writeln!(
            statement_csv,
            "{statement_id},{merchant_id},{from},{to},{},{},{},{},{rate},{},{},{},{},{},{}",
            statement.sales_count,
            statement.gross_won,
            statement.refunds_count,
            statement.refunds_won,
            statement.commission_won,
            statement.net_won,
            statement.carried_in_won,
            statement.payout_won,
            statement.carry_out_won,
            csv_field(&account)
        );
        if statement.payout_won > 0 {
            merchant_transfers.push(Transfer {
                end_to_end_id: statement_id.clone(),
                amount_won: statement.payout_won as u128,
                creditor_name: format!("Merchant {merchant_id}"),
                creditor_account: account,
                remittance: format!("Pinswitch settlement {statement_id}"),
            });
        }
    }
    let total = |pick: fn(&Statement) -> i128| statements.values().map(pick).sum::<i128>();
    let _ = writeln!(
        statement_csv,
        "TRAILER,{},,,{},{},{},{},,{},{},{},{},{},",
        statements.len(),
        total(|s| s.sales_count as i128),
        total(|s| s.gross_won as i128),
        total(|s| s.refunds_count as i128),
        total(|s| s.refunds_won as i128),
        total(|s| s.commission_won),
        total(|s| s.net_won),
        total(|s| s.carried_in_won),
        total(|s| s.payout_won),
        total(|s| s.carry_out_won)
    );
    (statement_csv, merchant_transfers)
}

/// `statement-lines.csv`: every merchant line with how long its record is kept, and a `TRAILER`
/// (amounts net of refunds).
fn statement_lines_csv(facts: &PeriodFacts, cutoff: Cutoff) -> String {
    let mut lines_csv = String::from(
        "time,shard,seq,op_id,payment_op_id,merchant_id,kind,category,card,amount_won,commission_won,retain_years\n",
    );
    let retention: BTreeMap<(u16, u64), u8> = facts
        .retention
        .iter()
        .map(|line| ((line.origin.shard, line.origin.seq), line.years))
        .collect();
    for line in &facts.merchant {
        let years = retention.get(&(line.origin.shard, line.origin.seq)).copied().unwrap_or(5);
        let _ = writeln!(
            lines_csv,
            "{},{},{},{:032x},{:032x},{},{},{},{:032x},{},{},{years}",
            cutoff.local_date_time(line.origin.time_ms as i64),
            line.origin.shard,
            line.origin.seq,
            line.origin.op_id,
            line.payment_op_id,
            line.merchant_id,
            line.kind.name(),
            line.category,
            line.card,
            line.amount_won,
            line.commission_won
        );
    }
    let _ = writeln!(
        lines_csv,
        "TRAILER,{},,,,,,,,{},{},",
        facts.merchant.len(),
        facts
            .merchant
            .iter()
            .map(|l| i128::from(l.amount_won) * if l.kind.is_debit() { 1 } else { -1 })
            .sum::<i128>(),
        facts.merchant.iter().map(|l| i128::from(l.commission_won)).sum::<i128>()
    );
    lines_csv
}

/// The balance refunds to pay card holders (end-to-end id `PSW-R-{shard}-{seq}`).
fn refund_transfers(facts: &PeriodFacts) -> Vec<Transfer> {
    facts
        .payouts
        .iter()
        .map(|line| Transfer {
            end_to_end_id: format!("PSW-R-{}-{}", line.origin.shard, line.origin.seq),
            amount_won: u128::from(line.amount_won),
            creditor_name: format!("Card holder {:032x}", line.card),
            creditor_account: format!("ACCOUNT-REF-{}", line.account_ref),
            remittance: if line.after_close {
                "Pinswitch reversal after balance refund".into()
            } else {
                "Pinswitch balance refund".into()
            },
        })
        .collect()
}

/// `breakage.csv`: value left on expired cards (and reversals after expiry), with a `TRAILER`.
fn breakage_csv(facts: &PeriodFacts, cutoff: Cutoff) -> String {
    let mut breakage_csv =
        String::from("time,shard,seq,op_id,card,face_value_won,amount_won,cause\n");
    for line in &facts.breakage {
        let cause = if line.after_expiry { "reversal-after-expiry" } else { "expiry" };
        let _ = writeln!(
            breakage_csv,
            "{},{},{},{:032x},{:032x},{},{},{cause}",
            cutoff.local_date_time(line.origin.time_ms as i64),
            line.origin.shard,
            line.origin.seq,
            line.origin.op_id,
            line.card,
            line.face_value_won,
            line.amount_won
        );
    }
    let _ = writeln!(
        breakage_csv,
        "TRAILER,{},,,,,{},",
        facts.breakage.len(),
        facts.breakage.iter().map(|l| u128::from(l.amount_won)).sum::<u128>()
    );
    breakage_csv
}

/// `channel-sales.csv`, every card sold by a channel, and the tallies per channel.
fn channel_sales_csv(facts: &PeriodFacts, cutoff: Cutoff) -> (String, BTreeMap<u32, ChannelTally>) {
    let mut sales_csv = format!("{CHANNEL_SALE_COLUMNS}\n");
    let mut channels: BTreeMap<u32, ChannelTally> = BTreeMap::new();
    for line in &facts.channel_sales {
        let _ = writeln!(sales_csv, "{}", channel_sale_row(cutoff, line));
        tally_sale(&mut channels, line);
    }
    (sales_csv, channels)
}

/// `channel-summary.csv`: per channel the cards sold, their value and what the channel owes.
fn channel_summary_csv(channels: &BTreeMap<u32, ChannelTally>) -> String {
    let mut channel_csv = String::from(
        "channel_id,cards_sold,face_value_won,gross_won,commission_won,net_receivable_won\n",
    );
    for (channel_id, (count, face, gross, commission)) in channels {
        let _ = writeln!(
            channel_csv,
            "{channel_id},{count},{face},{gross},{commission},{}",
            gross - commission
        );
    }
    channel_csv
}

/// `retention.csv`: every record and the date until which it is kept.
fn retention_csv(facts: &PeriodFacts, cutoff: Cutoff) -> String {
    let mut retention_csv = String::from(
        "shard,seq,op_id,time,kind,result_code,amount_won,retain_years,retain_until\n",
    );
    for line in &facts.retention {
        let record_day = cutoff.period_of(line.origin.time_ms);
        let until = calendar::date_string(calendar::add_years(record_day, i64::from(line.years)));
        let kind = RECORD_KINDS.get(usize::from(line.kind)).copied().unwrap_or("unknown");
        let _ = writeln!(
            retention_csv,
            "{},{},{:032x},{},{kind},{},{},{},{until}",
            line.origin.shard,
            line.origin.seq,
            line.origin.op_id,
            cutoff.local_date_time(line.origin.time_ms as i64),
            line.code,
            line.amount_won,
            line.years
        );
    }
    retention_csv
}

/// `trial-balance.csv`: per account the period's movements and the closing balance, and a
/// `TOTAL` that says whether the ledger balances.
fn trial_balance_csv(period: &ClosedPeriod, trial: &TrialBalance) -> String {
    let facts = &period.facts;
    let mut trial_csv = String::from(
        "account,period_debits_won,period_credits_won,closing_debits_won,closing_credits_won,closing_balance_won,normal_side\n",
    );
    for (account, closing) in &period.ledger_after.accounts {
        let moved = facts.movements.sides(account);
        let side = match account.normal_side() {
            crate::ledger::NormalSide::Debit => "debit",
            crate::ledger::NormalSide::Credit => "credit",
        };
        let _ = writeln!(
            trial_csv,
            "{},{},{},{},{},{},{side}",
            account.name(),
            moved.debits_won,
            moved.credits_won,
            closing.debits_won,
            closing.credits_won,
            closing.balance_won(account.normal_side())
        );
    }
    let period_trial = facts.movements.trial_balance();
    let _ = writeln!(
        trial_csv,
        "TOTAL,{},{},{},{},,{}",
        period_trial.debits_won,
        period_trial.credits_won,
        trial.debits_won,
        trial.credits_won,
        if trial.balances() { "balanced" } else { "UNBALANCED" }
    );
    trial_csv
}

/// The period's bounds and what its other files worked out, for its summary.
struct PeriodFigures<'a> {
    from: &'a str,
    to: &'a str,
    statements: &'a BTreeMap<u64, Statement>,
    merchant_transfers: &'a [Transfer],
    refund_transfers: &'a [Transfer],
    channels: &'a BTreeMap<u32, ChannelTally>,
    partners: &'a BTreeMap<(u32, u32, String), ForeignTally>,
    trial: &'a TrialBalance,
}

/// `summary.txt`: the period's figures in a few lines, for a person.
fn summary_txt(period: &ClosedPeriod, provisional: bool, figures: &PeriodFigures<'_>) -> String {
    let date = calendar::date_string(period.day);
    let facts = &period.facts;
    let PeriodFigures {
        from,
        to,
        statements,
        merchant_transfers,
        refund_transfers,
        channels,
        partners,
        trial,
    } = *figures;
    let total = |pick: fn(&Statement) -> i128| statements.values().map(pick).sum::<i128>();
    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "Pinswitch settlement period {date} ({})",
        if provisional { "PROVISIONAL: the period is still open" } else { "final" }
    );
    let _ = writeln!(summary, "from {from} to {to}");
    let _ = writeln!(summary, "journal records          {}", facts.records);
    let _ = writeln!(summary, "merchants                {}", statements.len());
    let _ = writeln!(
        summary,
        "merchant gross           {} won in {} payments",
        total(|s| s.gross_won as i128),
        total(|s| s.sales_count as i128)
    );
    let _ = writeln!(
        summary,
        "merchant refunds         {} won in {} credits",
        total(|s| s.refunds_won as i128),
        total(|s| s.refunds_count as i128)
    );
    let _ = writeln!(summary, "merchant commission      {} won", total(|s| s.commission_won));
    let _ = writeln!(
        summary,
        "merchant payouts         {} won to {} merchants",
        total(|s| s.payout_won),
        merchant_transfers.len()
    );
    let _ = writeln!(
        summary,
        "balance refund payouts   {} won in {} transfers",
        refund_transfers.iter().map(|t| t.amount_won).sum::<u128>(),
        refund_transfers.len()
    );
    let _ = writeln!(
        summary,
        "breakage                 {} won on {} lines",
        facts.breakage.iter().map(|l| u128::from(l.amount_won)).sum::<u128>(),
        facts.breakage.len()
    );
    let _ = writeln!(
        summary,
        "cards sold by channels   {} for {} won (commission {} won)",
        facts.channel_sales.len(),
        channels.values().map(|c| c.2).sum::<u128>(),
        channels.values().map(|c| c.3).sum::<u128>()
    );
    write_partners_summary(&mut summary, partners);
    for (means, tally) in &facts.loads {
        let _ = writeln!(
            summary,
            "recharges, means {means}      {} won in {}",
            tally.amount_won, tally.count
        );
    }
    let _ = writeln!(
        summary,
        "activated without sale   {} cards, {} won (suspense)",
        facts.activated_unsold.count, facts.activated_unsold.amount_won
    );
    let _ = writeln!(
        summary,
        "trial balance            debits {} won, credits {} won: {}",
        trial.debits_won,
        trial.credits_won,
        match trial.check() {
            Ok(()) => "balanced".to_string(),
            Err(why) => format!("NOT BALANCED: {why}"),
        }
    );
    summary
}

/// The summary's foreign-PIN lines: the conversions in all, then per partner (its face values
/// per currency, which do not add up across currencies).
fn write_partners_summary(
    summary: &mut String,
    partners: &BTreeMap<(u32, u32, String), ForeignTally>,
) {
    let partner_total = |pick: fn(&ForeignTally) -> u128| partners.values().map(pick).sum::<u128>();
    let _ = writeln!(
        summary,
        "foreign-PIN conversions  {} PINs, gross {} won, commission {} won, net due to {} partners {} won",
        partner_total(|t| u128::from(t.pins)),
        partner_total(|t| t.gross_won),
        partner_total(|t| t.commission_won),
        partners
            .keys()
            .map(|(partner_id, _, _)| partner_id)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        partner_total(|t| t.gross_won - t.commission_won)
    );
    let mut by_partner: BTreeMap<u32, (u64, Vec<String>, u128, u128)> = BTreeMap::new();
    for ((partner_id, _, currency), tally) in partners {
        let partner = by_partner.entry(*partner_id).or_default();
        partner.0 += tally.pins;
        partner.1.push(format!("{currency} {}", tally.face_value_minor));
        partner.2 += tally.gross_won;
        partner.3 += tally.commission_won;
    }
    for (partner_id, (pins, faces, gross_won, commission_won)) in &by_partner {
        let _ = writeln!(
            summary,
            "  partner {partner_id:<10}      {pins} PINs ({} minor units), gross {gross_won} won, commission {commission_won} won, net due {} won",
            faces.join(" + "),
            gross_won - commission_won
        );
    }
}

/// The mobile-operator remittance of a month: per operator channel the cards it sold, their face
/// value, gross, its commission and the net it owes (`operator-remittance.csv`), and every sale
/// (`operator-sales.csv`), from the month's periods.
pub fn operator_remittance(
    label: &str,
    periods: &[ClosedPeriod],
    is_final: bool,
    config: &ExportConfig,
) -> Vec<(String, String)> {
    let mut detail = format!("period,{CHANNEL_SALE_COLUMNS}\n");
    let mut operators: BTreeMap<u32, ChannelTally> = BTreeMap::new();
    for period in periods {
        let date = calendar::date_string(period.day);
        for line in period
            .facts
            .channel_sales
            .iter()
            .filter(|line| config.is_operator_sale(line.channel_id, line.payment_means))
        {
            let _ = writeln!(detail, "{date},{}", channel_sale_row(config.cutoff(), line));
            tally_sale(&mut operators, line);
        }
    }
    let status = if is_final { "final" } else { "provisional" };
    let mut summary = String::from(
        "month,status,operator_channel,cards_sold,face_value_won,gross_won,commission_won,net_due_won\n",
    );
    for (channel_id, (count, face, gross, commission)) in &operators {
        let _ = writeln!(
            summary,
            "{label},{status},{channel_id},{count},{face},{gross},{commission},{}",
            gross - commission
        );
    }
    let total = |pick: fn(&ChannelTally) -> u128| operators.values().map(pick).sum::<u128>();
    let _ = writeln!(
        summary,
        "TRAILER,{status},{},{},{},{},{},{}",
        operators.len(),
        total(|o| u128::from(o.0)),
        total(|o| o.1),
        total(|o| o.2),
        total(|o| o.3),
        total(|o| o.2) - total(|o| o.3)
    );
    vec![
        ("operator-remittance.csv".to_string(), summary),
        ("operator-sales.csv".to_string(), detail),
    ]
}

/// Cards sold, face value, gross, commission (won) of one channel.
type ChannelTally = (u64, u128, u128, u128);

/// One foreign partner's conversions of one product in one currency.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForeignTally {
    pub pins: u64,
    /// Face value in the currency's minor units.
    pub face_value_minor: u128,
    pub gross_won: u128,
    pub commission_won: u128,
    /// The commission rate of the lines, or `None` when they differ.
    pub rate_per_mille: Option<u16>,
}

/// The period's conversions per (partner, product, currency).
pub fn foreign_settlements(lines: &[ForeignLine]) -> BTreeMap<(u32, u32, String), ForeignTally> {
    let mut tallies: BTreeMap<(u32, u32, String), ForeignTally> = BTreeMap::new();
    for line in lines {
        let tally = tallies
            .entry((line.partner_id, line.product_id, line.currency_code().to_string()))
            .or_insert_with(|| ForeignTally {
                rate_per_mille: Some(line.rate_per_mille),
                ..ForeignTally::default()
            });
        tally.pins += 1;
        tally.face_value_minor += u128::from(line.face_value_minor);
        tally.gross_won += u128::from(line.price_won);
        tally.commission_won += u128::from(line.commission_won);
        if tally.rate_per_mille != Some(line.rate_per_mille) {
            tally.rate_per_mille = None;
        }
    }
    tallies
}

/// `foreign-partners.csv` (per partner, product and currency: PINs, face value in minor units,
/// gross, commission, net due; settlement id `FPS-{partner}-{YYYYMMDD}`) and
/// `foreign-conversions.csv` (every conversion), each with a `TRAILER`.
fn foreign_files(
    day: Day,
    cutoff: Cutoff,
    lines: &[ForeignLine],
    partners: &BTreeMap<(u32, u32, String), ForeignTally>,
) -> Vec<(String, String)> {
    let compact_date = calendar::date_string(day).replace('-', "");
    let mut settlement = String::from(
        "settlement_id,partner_id,product_id,currency,pins,face_value_minor,gross_won,commission_rate_per_mille,commission_won,net_due_won\n",
    );
    for ((partner_id, product_id, currency), tally) in partners {
        let rate =
            tally.rate_per_mille.map_or_else(|| "mixed".to_string(), |rate| rate.to_string());
        let _ = writeln!(
            settlement,
            "FPS-{partner_id}-{compact_date},{partner_id},{product_id},{currency},{},{},{},{rate},{},{}",
            tally.pins,
            tally.face_value_minor,
            tally.gross_won,
            tally.commission_won,
            tally.gross_won - tally.commission_won
        );
    }
    let total = |pick: fn(&ForeignTally) -> u128| partners.values().map(pick).sum::<u128>();
    // Face values in different currencies do not add up: the trailer leaves them out.
    let _ = writeln!(
        settlement,
        "TRAILER,{},,,{},,{},,{},{}",
        partners.len(),
        total(|t| u128::from(t.pins)),
        total(|t| t.gross_won),
        total(|t| t.commission_won),
        total(|t| t.gross_won - t.commission_won)
    );
    let mut detail = String::from(
        "time,shard,seq,op_id,card,partner_id,product_id,currency,face_value_minor,price_won,commission_per_mille,commission_won,net_due_won\n",
    );
    for line in lines {
        let _ = writeln!(
            detail,
            "{},{},{},{:032x},{:032x},{},{},{},{},{},{},{},{}",
            cutoff.local_date_time(line.origin.time_ms as i64),
            line.origin.shard,
            line.origin.seq,
            line.origin.op_id,
            line.card,
            line.partner_id,
            line.product_id,
            line.currency_code(),
            line.face_value_minor,
            line.price_won,
            line.rate_per_mille,
            line.commission_won,
            line.price_won - line.commission_won
        );
    }
    let gross_won: u128 = lines.iter().map(|line| u128::from(line.price_won)).sum();
    let commission_won: u128 = lines.iter().map(|line| u128::from(line.commission_won)).sum();
    let _ = writeln!(
        detail,
        "TRAILER,{},,,,,,,,{gross_won},,{commission_won},{}",
        lines.len(),
        gross_won - commission_won
    );
    vec![
        ("foreign-partners.csv".to_string(), settlement),
        ("foreign-conversions.csv".to_string(), detail),
    ]
}

const CHANNEL_SALE_COLUMNS: &str = "time,shard,seq,op_id,card,channel_id,face_value_won,price_won,payment_means,consigned,commission_per_mille,commission_won,net_receivable_won,gift";

fn channel_sale_row(cutoff: Cutoff, line: &ChannelSaleLine) -> String {
    format!(
        "{},{},{},{:032x},{:032x},{},{},{},{},{},{},{},{},{}",
        cutoff.local_date_time(line.origin.time_ms as i64),
        line.origin.shard,
        line.origin.seq,
        line.origin.op_id,
        line.card,
        line.channel_id,
        line.face_value_won,
        line.price_won,
        line.payment_means,
        line.consigned,
        line.commission_per_mille,
        line.commission_won,
        line.price_won - line.commission_won,
        line.gift
    )
}

fn tally_sale(tallies: &mut BTreeMap<u32, ChannelTally>, line: &ChannelSaleLine) {
    let tally = tallies.entry(line.channel_id).or_default();
    tally.0 += 1;
    tally.1 += u128::from(line.face_value_won);
    tally.2 += u128::from(line.price_won);
    tally.3 += u128::from(line.commission_won);
}

/// The pain.001 file and the CSV of one payout batch. With no transfers, only the CSV (a
/// pain.001 message must carry at least one transfer).
fn payout_files(
    stem: &str,
    message_id: &str,
    created: &str,
    execution_day: Day,
    config: &ExportConfig,
    transfers: &[Transfer],
) -> Vec<(String, String)> {
    let mut csv = String::from(
        "end_to_end_id,amount_won,creditor_name,creditor_account,requested_execution_date,remittance\n",
    );
    let execution_date = calendar::date_string(execution_day);
    for transfer in transfers {
        let _ = writeln!(
            csv,
            "{},{},{},{},{execution_date},{}",
            transfer.end_to_end_id,
            transfer.amount_won,
            csv_field(&transfer.creditor_name),
            csv_field(&transfer.creditor_account),
            csv_field(&transfer.remittance)
        );
    }
    let control_sum: u128 = transfers.iter().map(|transfer| transfer.amount_won).sum();
    let _ = writeln!(csv, "TRAILER,{control_sum},{},,,", transfers.len());
    let mut files = vec![(format!("{stem}.csv"), csv)];
    if !transfers.is_empty() {
        files.push((
            format!("{stem}.pain.001.xml"),
            pain001(message_id, created, &execution_date, config, transfers),
        ));
    }
    files
}

/// An ISO 20022 pain.001.001.09 CustomerCreditTransferInitiation with one payment information
/// block (one debit of the payer's account) holding every transfer.
pub fn pain001(
    message_id: &str,
    created: &str,
    execution_date: &str,
    config: &ExportConfig,
    transfers: &[Transfer],
) -> String {
    let count = transfers.len().to_string();
    let control_sum =
        transfers.iter().map(|transfer| transfer.amount_won).sum::<u128>().to_string();
    let mut xml = XmlWriter::new();
    xml.open("Document", &[("xmlns", "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09")]);
    xml.open("CstmrCdtTrfInitn", &[]);
    xml.open("GrpHdr", &[]);
    xml.leaf("MsgId", &[], message_id);
    xml.leaf("CreDtTm", &[], created);
    xml.leaf("NbOfTxs", &[], &count);
    xml.leaf("CtrlSum", &[], &control_sum);
    xml.open("InitgPty", &[]);
    xml.leaf("Nm", &[], &config.payer.name);
    xml.close();
    xml.close();
    xml.open("PmtInf", &[]);
    xml.leaf("PmtInfId", &[], message_id);
    xml.leaf("PmtMtd", &[], "TRF");
    xml.leaf("BtchBookg", &[], "true");
    xml.leaf("NbOfTxs", &[], &count);
    xml.leaf("CtrlSum", &[], &control_sum);
    xml.open("ReqdExctnDt", &[]);
    xml.leaf("Dt", &[], execution_date);
    xml.close();
    xml.open("Dbtr", &[]);
    xml.leaf("Nm", &[], &config.payer.name);
    xml.close();
    account(&mut xml, "DbtrAcct", &config.payer.account);
    xml.open("DbtrAgt", &[]);
    xml.open("FinInstnId", &[]);
    if config.payer.agent_bic == "NOTPROVIDED" {
        xml.open("Othr", &[]);
        xml.leaf("Id", &[], "NOTPROVIDED");
        xml.close();
    } else {
        xml.leaf("BICFI", &[], &config.payer.agent_bic);
    }
    xml.close();
    xml.close();
    xml.leaf("ChrgBr", &[], "SLEV");
    for transfer in transfers {
        xml.open("CdtTrfTxInf", &[]);
        xml.open("PmtId", &[]);
        xml.leaf("EndToEndId", &[], &transfer.end_to_end_id);
        xml.close();
        xml.open("Amt", &[]);
        xml.leaf("InstdAmt", &[("Ccy", "KRW")], &transfer.amount_won.to_string());
        xml.close();
        xml.open("Cdtr", &[]);
        xml.leaf("Nm", &[], &transfer.creditor_name);
        xml.close();
        account(&mut xml, "CdtrAcct", &transfer.creditor_account);
        xml.open("RmtInf", &[]);
        xml.leaf("Ustrd", &[], &transfer.remittance);
        xml.close();
        xml.close();
    }
    xml.finish()
}

/// `<name><Id><Othr><Id>account</Id></Othr></Id></name>` (a domestic account number, not an IBAN).
fn account(xml: &mut XmlWriter, name: &'static str, number: &str) {
    xml.open(name, &[]);
    xml.open("Id", &[]);
    xml.open("Othr", &[]);
    xml.leaf("Id", &[], number);
    xml.close();
    xml.close();
    xml.close();
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}
