//! `prepare`: issues N cards of one product in large batches over several connections, activates
//! each with a password derived from its PIN, optionally recharges them, and writes the cards
//! file with the balance each must now hold. A card whose issue, activation or load is declined is
//! left out (and counted); a lost connection aborts, since a lost CARD_ISSUE reply takes the PIN
//! with it (a replay answers PIN 0 by design).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use pinswitch_protocol::{CardActivate, CardIssue, CardLoad, Funding, ResultCode, new_op_id};

use crate::cards::{self, CardRecord, CardsFile, Password};
use crate::pool::Pool;
use crate::stats::code_name;

/// The products a production switch issues.
pub(crate) const FACE_VALUES_WON: [u64; 6] = [5_000, 10_000, 20_000, 30_000, 50_000, 100_000];
/// Recharges are whole multiples of this.
pub(crate) const RECHARGE_UNIT_WON: u64 = 10_000;
/// A card's balance never exceeds this.
pub(crate) const BALANCE_CAP_WON: u64 = 500_000;

/// What to prepare.
#[derive(Clone, Debug)]
pub(crate) struct PrepareSpec {
    pub address: String,
    pub card_count: u32,
    pub face_value_won: u64,
    /// Added to each card by one CARD_LOAD after activation (0 = none).
    pub load_won: u64,
    pub connections: usize,
    pub in_flight: usize,
    pub batch: usize,
}

impl PrepareSpec {
    /// Checks the numbers against the product rules before touching the server.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        ensure!(self.card_count > 0, "--cards must be at least 1");
        ensure!(
            FACE_VALUES_WON.contains(&self.face_value_won),
            "--face-value must be one of {FACE_VALUES_WON:?} won"
        );
        ensure!(
            self.load_won.is_multiple_of(RECHARGE_UNIT_WON),
            "--load-won must be a multiple of {RECHARGE_UNIT_WON} won"
        );
        ensure!(
            self.face_value_won + self.load_won <= BALANCE_CAP_WON,
            "face value plus --load-won must not pass the {BALANCE_CAP_WON} won balance cap"
        );
        Ok(())
    }
}

/// Counts declines by code name and prints them.
fn report_declines(what: &str, declines: &BTreeMap<u16, u64>) {
    for (code, count) in declines {
        eprintln!("prepare: {count} cards not {what}: {}", code_name(*code));
    }
}

fn per_second(count: usize, started: Instant) -> f64 {
    count as f64 / started.elapsed().as_secs_f64().max(1e-9)
}

/// Issues, activates and loads the cards; returns them (not yet written).
pub(crate) async fn prepare(spec: &PrepareSpec) -> anyhow::Result<CardsFile> {
    spec.check()?;
    let pool = Pool::connect(&spec.address, spec.connections, spec.in_flight).await?;
    let batch = pool.batch_len(spec.batch);
    let face_value_won = spec.face_value_won;

    let started = Instant::now();
    let issues: Vec<CardIssue> =
        (0..spec.card_count).map(|_| CardIssue { op_id: new_op_id(), face_value_won }).collect();
    let issued = pool
        .map_chunks(issues, batch, |client, chunk| async move { client.card_issue(&chunk).await })
        .await
        .context("issuing cards")?;
    let mut declines = BTreeMap::new();
    let mut cards: Vec<CardRecord> = Vec::with_capacity(issued.len());
    for result in issued {
        if result.code == ResultCode::Approved.as_u16() && result.pin != 0 {
            cards.push(CardRecord {
                pin: result.pin,
                password: Password::derive(result.pin),
                face_value_won,
                expected_balance_won: i64::try_from(result.balance_won).unwrap_or(i64::MAX),
            });
        } else {
            *declines.entry(result.code).or_insert(0u64) += 1;
        }
    }
    report_declines("issued", &declines);
    eprintln!(
        "prepare: issued {} cards of {face_value_won} won in {:.2} s ({:.0}/s)",
        cards.len(),
        started.elapsed().as_secs_f64(),
        per_second(cards.len(), started)
    );
    if cards.is_empty() {
        bail!("no card was issued");
    }

    let started = Instant::now();
    let activations: Vec<CardActivate> = cards
        .iter()
        .map(|card| CardActivate {
            op_id: new_op_id(),
            pin: card.pin,
            password: card.password.to_vec(),
        })
        .collect();
    let activated = pool
        .map_chunks(activations, batch, |client, chunk| async move {
            client.card_activate(&chunk).await
        })
        .await
        .context("activating cards")?;
    let mut declines = BTreeMap::new();
    let mut kept = Vec::with_capacity(cards.len());
    for (card, result) in cards.into_iter().zip(activated) {
        if result.code == ResultCode::Approved.as_u16() {
            kept.push(card);
        } else {
            *declines.entry(result.code).or_insert(0u64) += 1;
        }
    }
    let mut cards = kept;
    report_declines("activated", &declines);
    eprintln!(
        "prepare: activated {} cards in {:.2} s ({:.0}/s)",
        cards.len(),
        started.elapsed().as_secs_f64(),
        per_second(cards.len(), started)
    );

    if spec.load_won > 0 {
        let started = Instant::now();
        let loads: Vec<CardLoad> = cards
            .iter()
            .map(|card| CardLoad {
                op_id: new_op_id(),
                pin: card.pin,
                amount_won: spec.load_won,
                funding: Funding::BankTransfer as u8,
            })
            .collect();
        let loaded = pool
            .map_chunks(loads, batch, |client, chunk| async move { client.card_load(&chunk).await })
            .await
            .context("loading cards")?;
        let mut declines = BTreeMap::new();
        let load = i64::try_from(spec.load_won).unwrap_or(i64::MAX);
        for (card, result) in cards.iter_mut().zip(loaded) {
            if result.code == ResultCode::Approved.as_u16() {
                card.expected_balance_won += load;
            } else {
                *declines.entry(result.code).or_insert(0u64) += 1;
            }
        }
        report_declines("loaded", &declines);
        eprintln!(
            "prepare: loaded {} won onto {} cards in {:.2} s",
            spec.load_won,
            cards.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(CardsFile { cards, pending: Vec::new() })
}

/// `prepare` and write the file.
pub(crate) async fn prepare_to_file(spec: &PrepareSpec, path: &Path) -> anyhow::Result<CardsFile> {
    let file = prepare(spec).await?;
    let started = Instant::now();
    cards::write(path, &file)?;
    eprintln!(
        "prepare: wrote {} cards to {} in {:.2} s",
        file.cards.len(),
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PrepareSpec {
        PrepareSpec {
            address: "127.0.0.1:1".into(),
            card_count: 10,
            face_value_won: 10_000,
            load_won: 0,
            connections: 1,
            in_flight: 1,
            batch: 10,
        }
    }

    #[test]
    fn product_rules_are_checked_up_front() {
        assert!(spec().check().is_ok());
        assert!(PrepareSpec { face_value_won: 7_000, ..spec() }.check().is_err());
        assert!(PrepareSpec { load_won: 5_000, ..spec() }.check().is_err());
        assert!(PrepareSpec { load_won: 490_000, ..spec() }.check().is_ok());
        assert!(PrepareSpec { load_won: 500_000, ..spec() }.check().is_err());
        assert!(PrepareSpec { card_count: 0, ..spec() }.check().is_err());
    }
}
