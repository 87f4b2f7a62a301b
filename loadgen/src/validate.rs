//! Validation: resolve operations whose reply was lost (INQUIRY by op id: executed or not), void
//! holds such operations left pending, then read every card back with BALANCE_INQUIRY and compare
//! with the model. Mismatches are printed with the PIN masked to its last four digits. The
//! `validate` command does this for a cards file alone, e.g. after a kill -9 and a restart.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use pinswitch_protocol::{BalanceInquiry, CardState, Inquiry, OpStatus, ResultCode, Void};

use crate::cards::{self, CardRecord};
use crate::model::{Model, Op, OpKind};
use crate::pool::Pool;
use crate::stats::code_name;

/// What INQUIRY said about the unknown operations.
#[derive(Debug, Default)]
pub(crate) struct Resolution {
    /// Found executed (approved or declined); applied to the model.
    pub executed: u64,
    /// Never executed (unknown to the switch, or fenced by a tombstone).
    pub not_executed: u64,
    /// Holds still pending because of them (an approved authorize nobody settled, or a settling
    /// follow-up that never ran): `Op`s with the hold's card, amount and id in `reference`.
    pub holds_pending: Vec<Op>,
    /// Operations the switch could not answer for (e.g. card not found): outcome still unknown.
    pub unresolved: Vec<Op>,
}

/// The hold an operation created or was meant to settle.
fn hold_of(op: &Op) -> Op {
    let reference = if op.kind == OpKind::Authorize { op.op_id } else { op.reference };
    Op { kind: OpKind::Void, op_id: 0, captured_won: 0, reference, ..*op }
}

/// Decides one unknown operation from its INQUIRY answer, moving the model if it ran.
pub(crate) fn resolve_one(
    model: &Model,
    op: &Op,
    inquiry_code: u16,
    status: u8,
    result_code: u16,
    resolution: &mut Resolution,
) {
    if inquiry_code != ResultCode::Approved.as_u16() {
        resolution.unresolved.push(*op);
        return;
    }
    let approved = result_code == ResultCode::Approved.as_u16();
    match OpStatus::from_u8(status) {
        Some(OpStatus::Unknown | OpStatus::Tombstone) => {
            resolution.not_executed += 1;
            if op.kind.settles_hold() {
                resolution.holds_pending.push(hold_of(op));
            }
        }
        Some(OpStatus::HoldCaptured | OpStatus::HoldVoided | OpStatus::HoldExpired)
            if op.kind == OpKind::Authorize =>
        {
            // It ran, but its hold is gone already: no held money to expect.
            resolution.executed += 1;
        }
        Some(OpStatus::Reversed) if op.kind == OpKind::Authorize => {
            resolution.executed += 1;
        }
        Some(_) => {
            resolution.executed += 1;
            model.apply(op, result_code);
            if op.kind == OpKind::Authorize && approved {
                resolution.holds_pending.push(hold_of(op));
            }
        }
        None => resolution.unresolved.push(*op),
    }
}

/// Resolves unknown operations by INQUIRY. Fails only when the switch cannot be asked at all.
pub(crate) async fn resolve(
    pool: &Pool,
    cards: &[CardRecord],
    model: &Model,
    ops: Vec<Op>,
) -> anyhow::Result<Resolution> {
    let mut resolution = Resolution::default();
    if ops.is_empty() {
        return Ok(resolution);
    }
    let inquiries: Vec<Inquiry> = ops
        .iter()
        .map(|op| Inquiry { pin: cards[op.card as usize].pin, op_id: op.op_id })
        .collect();
    let batch = pool.batch_len(usize::MAX);
    let answers = pool
        .map_chunks(inquiries, batch, |client, chunk| async move { client.inquiry(&chunk).await })
        .await
        .context("asking the switch about operations whose reply was lost")?;
    for (op, answer) in ops.iter().zip(&answers) {
        // A session event moves the model by the debit its stored result names.
        let op = &Op {
            amount_won: if op.kind.is_session() { answer.result.amount_won } else { op.amount_won },
            ..*op
        };
        resolve_one(model, op, answer.code, answer.status, answer.result.code, &mut resolution);
    }
    Ok(resolution)
}

/// Voids holds (ops from `Resolution::holds_pending`) and moves the model by the replies.
pub(crate) async fn void_holds(
    pool: &Pool,
    cards: &[CardRecord],
    model: &Model,
    holds: Vec<Op>,
) -> anyhow::Result<u64> {
    if holds.is_empty() {
        return Ok(0);
    }
    let ops: Vec<Op> = holds
        .into_iter()
        .map(|hold| Op { op_id: pinswitch_protocol::new_op_id(), ..hold })
        .collect();
    let voids: Vec<Void> = ops
        .iter()
        .map(|op| Void { op_id: op.op_id, pin: cards[op.card as usize].pin, hold_id: op.reference })
        .collect();
    let batch = pool.batch_len(usize::MAX);
    let results = pool
        .map_chunks(voids, batch, |client, chunk| async move { client.void(&chunk).await })
        .await
        .context("voiding holds left pending")?;
    let mut voided = 0;
    for (op, result) in ops.iter().zip(&results) {
        model.apply_reply(op, result);
        if result.code == ResultCode::Approved.as_u16() {
            voided += 1;
        }
    }
    Ok(voided)
}

/// One card as the switch reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Observed {
    pub code: u16,
    pub state: u8,
    pub balance_won: u64,
    pub held_won: u64,
}

/// Reads every card with BALANCE_INQUIRY (large batches, pipelined).
pub(crate) async fn read_balances(
    pool: &Pool,
    cards: &[CardRecord],
) -> anyhow::Result<Vec<Observed>> {
    let inquiries: Vec<BalanceInquiry> =
        cards.iter().map(|card| BalanceInquiry { pin: card.pin }).collect();
    let batch = pool.batch_len(usize::MAX);
    pool.map_chunks(inquiries, batch, |client, chunk| async move {
        client.balance_inquiry(&chunk).await.map(|results| {
            results
                .into_iter()
                .map(|result| Observed {
                    code: result.code,
                    state: result.state,
                    balance_won: result.balance_won,
                    held_won: result.held_won,
                })
                .collect()
        })
    })
    .await
    .context("reading balances")
}

/// A card whose switch state differs from the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mismatch {
    pub card: u32,
    pub pin: u64,
    pub expected_balance_won: i64,
    /// `None` when holds are not compared.
    pub expected_held_won: Option<i64>,
    pub observed: Observed,
}

/// Compares every card; `expected(card)` gives (balance, held or `None` to skip holds).
/// Cards listed in `skip` (uncertain) are not compared.
pub(crate) fn compare(
    cards: &[CardRecord],
    observed: &[Observed],
    skip: &[bool],
    expected: impl Fn(u32) -> (i64, Option<i64>),
) -> Vec<Mismatch> {
    let mut mismatches = Vec::new();
    for (index, (card, seen)) in cards.iter().zip(observed).enumerate() {
        if skip.get(index).copied().unwrap_or(false) {
            continue;
        }
        let (expected_balance_won, expected_held_won) = expected(cards::card_index(index));
        let ok = seen.code == ResultCode::Approved.as_u16()
            && seen.state == CardState::Active as u8
            && i64::try_from(seen.balance_won) == Ok(expected_balance_won)
            && expected_held_won.is_none_or(|held| i64::try_from(seen.held_won) == Ok(held));
        if !ok {
            mismatches.push(Mismatch {
                card: cards::card_index(index),
                pin: card.pin,
                expected_balance_won,
                expected_held_won,
                observed: *seen,
            });
        }
    }
    mismatches
}

/// `****-****-****-3456`.
pub(crate) fn mask_pin(pin: u64) -> String {
    format!("****-****-****-{:04}", pin % 10_000)
}

/// One line describing a mismatch.
pub(crate) fn describe(mismatch: &Mismatch) -> String {
    let seen = &mismatch.observed;
    if seen.code != ResultCode::Approved.as_u16() {
        return format!(
            "card #{} {}: switch answered {} ({}), expected balance {} won",
            mismatch.card,
            mask_pin(mismatch.pin),
            code_name(seen.code),
            seen.code,
            mismatch.expected_balance_won
        );
    }
    let state = CardState::from_u8(seen.state).map_or("unknown", CardState::name);
    let held = match mismatch.expected_held_won {
        Some(expected) => format!(", held {} won (expected {expected})", seen.held_won),
        None => format!(", held {} won", seen.held_won),
    };
    format!(
        "card #{} {}: balance {} won, expected {} won (difference {}){held}, state {state}",
        mismatch.card,
        mask_pin(mismatch.pin),
        seen.balance_won,
        mismatch.expected_balance_won,
        i128::from(seen.balance_won) - i128::from(mismatch.expected_balance_won),
    )
}

/// Prints up to `limit` mismatches to stderr.
pub(crate) fn print_mismatches(mismatches: &[Mismatch], limit: usize) {
    for mismatch in mismatches.iter().take(limit) {
        eprintln!("MISMATCH {}", describe(mismatch));
    }
    if mismatches.len() > limit {
        eprintln!("... and {} more mismatching cards", mismatches.len() - limit);
    }
}

/// Marks the cards touched by operations that are still unresolved.
pub(crate) fn uncertain_cards(card_count: usize, unresolved: &[Op]) -> Vec<bool> {
    let mut skip = vec![false; card_count];
    for op in unresolved {
        if let Some(slot) = skip.get_mut(op.card as usize) {
            *slot = true;
        }
    }
    skip
}

/// What to validate.
#[derive(Clone, Debug)]
pub(crate) struct ValidateSpec {
    pub address: String,
    pub cards_file: PathBuf,
    pub connections: usize,
    pub in_flight: usize,
}

/// How many mismatches are printed.
pub(crate) const MISMATCHES_SHOWN_MAX: usize = 50;

/// `validate`: resolve the file's pending operations, compare every balance, and on success
/// write the file back with the resolved expectations. Returns whether everything matched.
pub(crate) async fn validate_command(spec: &ValidateSpec) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mut file = cards::read(&spec.cards_file)?;
    let pool = Pool::connect(&spec.address, spec.connections, spec.in_flight).await?;
    let model = Model::new(file.cards.iter().map(|card| card.expected_balance_won));
    let pending = std::mem::take(&mut file.pending);
    let pending_count = pending.len();
    let resolution = resolve(&pool, &file.cards, &model, pending).await?;
    if pending_count > 0 {
        eprintln!(
            "validate: {pending_count} operations had unknown outcomes: {} executed, {} not executed, {} unresolved",
            resolution.executed,
            resolution.not_executed,
            resolution.unresolved.len()
        );
    }
    // A lost AUTHORIZE that ran left a hold no one will settle: voided, as `run` does after its
    // window, so the next run starts without it (a void changes no balance).
    if !resolution.holds_pending.is_empty() {
        let holds = resolution.holds_pending.clone();
        let voided = void_holds(&pool, &file.cards, &model, holds).await?;
        eprintln!("validate: voided {voided} holds the lost operations left pending");
    }
    let skip = uncertain_cards(file.cards.len(), &resolution.unresolved);
    let observed = read_balances(&pool, &file.cards).await?;
    let mismatches = compare(&file.cards, &observed, &skip, |card| (model.balance_won(card), None));
    print_mismatches(&mismatches, MISMATCHES_SHOWN_MAX);
    let uncertain = skip.iter().filter(|skipped| **skipped).count();
    let ok = mismatches.is_empty() && resolution.unresolved.is_empty();
    println!(
        "validate: {} cards checked in {:.2} s: {} match, {} mismatch, {} uncertain -> {}",
        file.cards.len(),
        started.elapsed().as_secs_f64(),
        file.cards.len() - mismatches.len() - uncertain,
        mismatches.len(),
        uncertain,
        if ok { "OK" } else { "FAILED" }
    );
    if ok && pending_count > 0 {
        for (index, card) in file.cards.iter_mut().enumerate() {
            card.expected_balance_won = model.balance_won(cards::card_index(index));
        }
        cards::write(&spec.cards_file, &file)?;
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cards::Password;
    use pinswitch_protocol::pin;

    fn card(index: u64) -> CardRecord {
        let pin = pin::with_check_digit(555_000_000_000_000 + index);
        CardRecord {
            pin,
            password: Password::derive(pin),
            face_value_won: 10_000,
            expected_balance_won: 10_000,
        }
    }

    fn active(balance_won: u64, held_won: u64) -> Observed {
        Observed { code: 0, state: CardState::Active as u8, balance_won, held_won }
    }

    #[test]
    fn compare_finds_balance_hold_state_and_code_differences() {
        let cards: Vec<CardRecord> = (0..5).map(card).collect();
        let observed = [
            active(10_000, 0),
            active(9_990, 0),
            active(10_000, 300),
            Observed { state: CardState::Blocked as u8, ..active(10_000, 0) },
            Observed { code: ResultCode::CardNotFound.as_u16(), ..active(0, 0) },
        ];
        let mismatches = compare(&cards, &observed, &[], |_| (10_000, Some(0)));
        let indexes: Vec<u32> = mismatches.iter().map(|m| m.card).collect();
        assert_eq!(indexes, vec![1, 2, 3, 4]);
        // Without holds compared, card 2 matches; skipped cards are not compared.
        let mismatches = compare(&cards, &observed, &[false, true], |_| (10_000, None));
        let indexes: Vec<u32> = mismatches.iter().map(|m| m.card).collect();
        assert_eq!(indexes, vec![3, 4]);
        let line = describe(&mismatches[1]);
        assert!(line.contains("CARD_NOT_FOUND"), "{line}");
        assert!(!line.contains(&format!("{:016}", cards[4].pin)));
    }

    #[test]
    fn pins_are_masked_to_the_last_four_digits() {
        assert_eq!(mask_pin(1_234_567_890_123_456), "****-****-****-3456");
        assert_eq!(mask_pin(42), "****-****-****-0042");
    }

    #[test]
    fn inquiry_answers_resolve_unknown_operations() {
        let model = Model::new([10_000, 10_000]);
        let mut resolution = Resolution::default();
        let sale = Op {
            kind: OpKind::Sale,
            card: 0,
            op_id: 5,
            amount_won: 100,
            captured_won: 0,
            reference: 0,
            gateway: false,
        };
        resolve_one(&model, &sale, 0, OpStatus::Completed as u8, 0, &mut resolution);
        assert_eq!(model.balance_won(0), 9_900);
        let lost = Op { op_id: 6, ..sale };
        resolve_one(&model, &lost, 0, OpStatus::Unknown as u8, 0, &mut resolution);
        assert_eq!(model.balance_won(0), 9_900);
        let authorize = Op { kind: OpKind::Authorize, card: 1, op_id: 7, ..sale };
        resolve_one(&model, &authorize, 0, OpStatus::HoldPending as u8, 0, &mut resolution);
        assert_eq!(model.held_won(1), 100);
        let capture = Op {
            kind: OpKind::Capture,
            card: 1,
            op_id: 8,
            captured_won: 100,
            reference: 9,
            ..sale
        };
        resolve_one(&model, &capture, 0, OpStatus::Unknown as u8, 0, &mut resolution);
        let refused = Op { op_id: 10, ..sale };
        resolve_one(&model, &refused, ResultCode::CardNotFound.as_u16(), 0, 0, &mut resolution);
        assert_eq!((resolution.executed, resolution.not_executed), (2, 2));
        assert_eq!(resolution.unresolved, vec![refused]);
        let holds: Vec<(u128, u64)> =
            resolution.holds_pending.iter().map(|hold| (hold.reference, hold.amount_won)).collect();
        assert_eq!(holds, vec![(7, 100), (9, 100)]);
        assert!(resolution.holds_pending.iter().all(|hold| hold.kind == OpKind::Void));
        assert_eq!(uncertain_cards(2, &resolution.unresolved), vec![true, false]);
    }
}
