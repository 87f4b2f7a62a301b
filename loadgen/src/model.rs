//! The expected-balance model: what every card's balance and held amount must be, given the
//! replies the switch sent. Each operation the generator sends is an `Op`; an approved reply
//! moves the model by the amount the generator asked for (not the amount the reply names, so a
//! server that moves the wrong amount shows up as a balance mismatch), every other code leaves it
//! alone, and an operation whose reply was lost is kept aside as unknown until INQUIRY resolves
//! it. Updates are commutative atomic adds, so connections apply replies in any order.
//!
//! Charging sessions (the `calls` workload) are the exception: the money a session event debits
//! follows from the tariff and the seconds reported, so the model moves by the debit the reply
//! names (`amount_won` of SESSION_UPDATE / SESSION_END answered APPROVED, SESSION_USAGE_CAPPED or
//! SESSION_EXPIRED_CHARGED); the calls workload checks those debits against the tariff per call.
//! The model also counts each card's calls in progress and the sessions known live.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU16, AtomicU64, Ordering};

use pinswitch_protocol::{FLAG_REPLAYED, OpResult, ResultCode};

/// What the generator asked for. The discriminants are stored in cards files.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum OpKind {
    Load = 1,
    Sale = 2,
    Authorize = 3,
    /// Final capture of (part of) a hold; the remainder is released.
    Capture = 4,
    Void = 5,
    /// REVERSE of an approved SALE.
    ReverseSale = 6,
    /// REVERSE of a pending AUTHORIZE.
    ReverseAuthorize = 7,
    Refund = 8,
    /// SESSION_START: reserves, debits nothing.
    SessionStart = 9,
    /// SESSION_UPDATE: `amount_won` is what the reply said it debited.
    SessionUpdate = 10,
    /// SESSION_END: as an update.
    SessionEnd = 11,
}

impl OpKind {
    pub(crate) const ALL: [OpKind; 11] = [
        OpKind::Load,
        OpKind::Sale,
        OpKind::Authorize,
        OpKind::Capture,
        OpKind::Void,
        OpKind::ReverseSale,
        OpKind::ReverseAuthorize,
        OpKind::Refund,
        OpKind::SessionStart,
        OpKind::SessionUpdate,
        OpKind::SessionEnd,
    ];

    pub(crate) fn from_u8(value: u8) -> Option<OpKind> {
        Self::ALL.into_iter().find(|kind| *kind as u8 == value)
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            OpKind::Load => "load",
            OpKind::Sale => "sale",
            OpKind::Authorize => "authorize",
            OpKind::Capture => "capture",
            OpKind::Void => "void",
            OpKind::ReverseSale => "reverse-sale",
            OpKind::ReverseAuthorize => "reverse-authorize",
            OpKind::Refund => "refund",
            OpKind::SessionStart => "session-start",
            OpKind::SessionUpdate => "session-update",
            OpKind::SessionEnd => "session-end",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<OpKind> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    pub(crate) fn is_session(self) -> bool {
        matches!(self, OpKind::SessionStart | OpKind::SessionUpdate | OpKind::SessionEnd)
    }

    /// Follow-ups of a hold: when one is known not to have run, the hold is still pending.
    pub(crate) fn settles_hold(self) -> bool {
        matches!(self, OpKind::Capture | OpKind::Void | OpKind::ReverseAuthorize)
    }
}

/// One operation as sent (or about to be sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Op {
    pub kind: OpKind,
    /// Index into the cards file.
    pub card: u32,
    pub op_id: u128,
    /// Load: loaded. Sale: debited. Authorize, Capture, Void, ReverseAuthorize: the hold's
    /// amount. ReverseSale: the sale's amount. Refund: refunded.
    pub amount_won: u64,
    /// SessionUpdate, SessionEnd: the debit the reply named (0 until answered).
    /// Capture only: the part of the hold debited (equal to `amount_won` for a full capture).
    pub captured_won: u64,
    /// Capture, Void, ReverseAuthorize: the hold id (the authorize's op id). ReverseSale: the
    /// sale's op id. Refund: the refunded SALE's or CAPTURE's op id. Session events: the
    /// session id. Otherwise 0.
    pub reference: u128,
    /// Made by the gateway workload, whose approved sales get follow-ups (not stored in files).
    pub gateway: bool,
}

/// How an approved operation moves a card: signed won.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Effect {
    pub balance_won: i64,
    pub held_won: i64,
}

fn signed(amount_won: u64) -> i64 {
    i64::try_from(amount_won).unwrap_or(i64::MAX)
}

/// The model's move for `op` answered with result `code`. Only APPROVED moves money: the other
/// success codes (1..=4) are no-ops by definition, declines change nothing, and 900+ codes and
/// DEADLINE_EXCEEDED_NOT_EXECUTED were not executed. Session reports also debit when capped or
/// expired (codes 5 and 6).
pub(crate) fn effect_of(op: &Op, code: u16) -> Effect {
    if op.kind.is_session() {
        let debits = code == ResultCode::Approved.as_u16()
            || code == ResultCode::SessionUsageCapped.as_u16()
            || code == ResultCode::SessionExpiredCharged.as_u16();
        return Effect {
            balance_won: if debits { -signed(op.amount_won) } else { 0 },
            held_won: 0,
        };
    }
    if code != ResultCode::Approved.as_u16() {
        return Effect::default();
    }
    let amount = signed(op.amount_won);
    match op.kind {
        OpKind::Load | OpKind::ReverseSale | OpKind::Refund => {
            Effect { balance_won: amount, held_won: 0 }
        }
        OpKind::Sale => Effect { balance_won: -amount, held_won: 0 },
        OpKind::Authorize => Effect { balance_won: 0, held_won: amount },
        OpKind::Capture => Effect { balance_won: -signed(op.captured_won), held_won: -amount },
        OpKind::Void | OpKind::ReverseAuthorize => Effect { balance_won: 0, held_won: -amount },
        OpKind::SessionStart | OpKind::SessionUpdate | OpKind::SessionEnd => Effect::default(),
    }
}

/// The amount an approved reply must name in `amount_won` for `op`.
pub(crate) fn expected_reply_amount(op: &Op) -> u64 {
    match op.kind {
        OpKind::Capture => op.captured_won,
        _ => op.amount_won,
    }
}

/// True when a code means the event was not executed (nothing recorded under its op id except,
/// for a missed deadline, that answer), so a follow-up may be sent again with a fresh op id.
pub(crate) fn not_executed(code: u16) -> bool {
    code >= 900 || code == ResultCode::DeadlineExceededNotExecuted.as_u16()
}

/// Why a reply looks wrong even before balances are compared.
pub(crate) fn reply_anomaly(op: &Op, result: &OpResult) -> Option<String> {
    if result.flags & FLAG_REPLAYED != 0 {
        return Some(format!(
            "{} op {:032x}: reply flagged REPLAYED although the op id was sent once",
            op.kind.name(),
            op.op_id
        ));
    }
    if op.kind == OpKind::SessionStart
        && result.code == ResultCode::Approved.as_u16()
        && result.amount_won != 0
    {
        return Some(format!(
            "session-start op {:032x}: approved with a debit of {} won (a START only reserves)",
            op.op_id, result.amount_won
        ));
    }
    if result.code == ResultCode::Approved.as_u16()
        && !op.kind.is_session()
        && result.amount_won != expected_reply_amount(op)
    {
        return Some(format!(
            "{} op {:032x}: approved for {} won, asked {} won",
            op.kind.name(),
            op.op_id,
            result.amount_won,
            expected_reply_amount(op)
        ));
    }
    None
}

/// Expected balances and holds of every card, shared by all connections.
pub(crate) struct Model {
    balance_won: Vec<AtomicI64>,
    held_won: Vec<AtomicI64>,
    unknown: Mutex<Vec<Op>>,
    anomalies: AtomicU64,
    anomaly_examples: Mutex<Vec<String>>,
    /// Calls in progress per card (the calls workload; a new call avoids full cards).
    calls_on: Vec<AtomicU16>,
    /// Sessions known live at the switch (START approved, END not yet answered).
    calls_live: AtomicI64,
}

/// How many anomaly descriptions are kept for the report.
const ANOMALY_EXAMPLES_MAX: usize = 20;

impl Model {
    /// A model starting from these balances, with no holds.
    pub(crate) fn new(balances_won: impl IntoIterator<Item = i64>) -> Model {
        let balance_won: Vec<AtomicI64> = balances_won.into_iter().map(AtomicI64::new).collect();
        let held_won = (0..balance_won.len()).map(|_| AtomicI64::new(0)).collect();
        let calls_on = (0..balance_won.len()).map(|_| AtomicU16::new(0)).collect();
        Model {
            balance_won,
            held_won,
            unknown: Mutex::new(Vec::new()),
            anomalies: AtomicU64::new(0),
            anomaly_examples: Mutex::new(Vec::new()),
            calls_on,
            calls_live: AtomicI64::new(0),
        }
    }

    /// Applies an answered operation (any code).
    pub(crate) fn apply(&self, op: &Op, code: u16) {
        let effect = effect_of(op, code);
        let card = op.card as usize;
        if effect.balance_won != 0 {
            self.balance_won[card].fetch_add(effect.balance_won, Ordering::Relaxed);
        }
        if effect.held_won != 0 {
            self.held_won[card].fetch_add(effect.held_won, Ordering::Relaxed);
        }
    }

    /// Applies an answered operation and checks the reply. A session event moves the model by
    /// the debit its reply names.
    pub(crate) fn apply_reply(&self, op: &Op, result: &OpResult) {
        if op.kind.is_session() {
            let answered = Op { amount_won: result.amount_won, ..*op };
            self.apply(&answered, result.code);
        } else {
            self.apply(op, result.code);
        }
        if let Some(anomaly) = reply_anomaly(op, result) {
            self.record_anomaly(anomaly);
        }
    }

    pub(crate) fn record_anomaly(&self, description: String) {
        self.anomalies.fetch_add(1, Ordering::Relaxed);
        let mut examples = self.anomaly_examples.lock().unwrap_or_else(|e| e.into_inner());
        if examples.len() < ANOMALY_EXAMPLES_MAX {
            examples.push(description);
        }
    }

    pub(crate) fn anomalies(&self) -> u64 {
        self.anomalies.load(Ordering::Relaxed)
    }

    pub(crate) fn anomaly_examples(&self) -> Vec<String> {
        self.anomaly_examples.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Operations whose outcome is unknown (reply lost); resolved later by INQUIRY.
    pub(crate) fn add_unknown(&self, ops: &[Op]) {
        self.unknown.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(ops);
    }

    pub(crate) fn take_unknown(&self) -> Vec<Op> {
        std::mem::take(&mut *self.unknown.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(crate) fn balance_won(&self, card: u32) -> i64 {
        self.balance_won[card as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn held_won(&self, card: u32) -> i64 {
        self.held_won[card as usize].load(Ordering::Relaxed)
    }

    /// Balance minus holds, as far as replies so far tell.
    pub(crate) fn available_won(&self, card: u32) -> i64 {
        self.balance_won(card) - self.held_won(card)
    }

    /// Calls in progress on a card.
    pub(crate) fn calls_on(&self, card: u32) -> u16 {
        self.calls_on[card as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn add_call(&self, card: u32) {
        self.calls_on[card as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn remove_call(&self, card: u32) {
        let _ = self.calls_on[card as usize].fetch_update(
            Ordering::Relaxed,
            Ordering::Relaxed,
            |calls| calls.checked_sub(1),
        );
    }

    /// Sessions known live at the switch.
    pub(crate) fn calls_live(&self) -> i64 {
        self.calls_live.load(Ordering::Relaxed)
    }

    pub(crate) fn calls_live_add(&self, delta: i64) {
        self.calls_live.fetch_add(delta, Ordering::Relaxed);
    }

    /// Starts a card's expected holds from what the server reports (before a validated run).
    pub(crate) fn set_held_won(&self, card: u32, held_won: i64) {
        self.held_won[card as usize].store(held_won, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, amount_won: u64) -> Op {
        Op { kind, card: 0, op_id: 1, amount_won, captured_won: 0, reference: 0, gateway: false }
    }

    #[test]
    fn approved_operations_move_the_model() {
        let model = Model::new([10_000]);
        model.apply(&op(OpKind::Sale, 300), 0);
        assert_eq!(model.balance_won(0), 9_700);
        model.apply(&op(OpKind::Load, 10_000), 0);
        assert_eq!(model.balance_won(0), 19_700);
        model.apply(&op(OpKind::Authorize, 1_000), 0);
        assert_eq!((model.balance_won(0), model.held_won(0)), (19_700, 1_000));
        assert_eq!(model.available_won(0), 18_700);
        // Partial final capture: 400 debited, the whole hold released.
        let capture = Op { captured_won: 400, ..op(OpKind::Capture, 1_000) };
        model.apply(&capture, 0);
        assert_eq!((model.balance_won(0), model.held_won(0)), (19_300, 0));
        model.apply(&op(OpKind::Refund, 150), 0);
        assert_eq!(model.balance_won(0), 19_450);
        model.apply(&op(OpKind::Authorize, 500), 0);
        model.apply(&op(OpKind::Void, 500), 0);
        model.apply(&op(OpKind::Authorize, 700), 0);
        model.apply(&op(OpKind::ReverseAuthorize, 700), 0);
        assert_eq!((model.balance_won(0), model.held_won(0)), (19_450, 0));
        model.apply(&op(OpKind::Sale, 50), 0);
        model.apply(&op(OpKind::ReverseSale, 50), 0);
        assert_eq!(model.balance_won(0), 19_450);
    }

    #[test]
    fn declines_no_ops_and_unexecuted_codes_change_nothing() {
        let model = Model::new([5_000]);
        for code in [
            ResultCode::InsufficientFunds,
            ResultCode::BalanceCapExceeded,
            ResultCode::OriginalNotFoundRecorded,
            ResultCode::AlreadyReversed,
            ResultCode::HoldAlreadyVoided,
            ResultCode::RetryLater,
            ResultCode::DeadlineExceededNotExecuted,
        ] {
            for kind in OpKind::ALL {
                model.apply(&op(kind, 100), code.as_u16());
            }
        }
        assert_eq!((model.balance_won(0), model.held_won(0)), (5_000, 0));
        assert!(not_executed(ResultCode::RetryLater.as_u16()));
        assert!(not_executed(ResultCode::DeadlineExceededNotExecuted.as_u16()));
        assert!(!not_executed(ResultCode::InsufficientFunds.as_u16()));
    }

    #[test]
    fn replies_are_checked() {
        let model = Model::new([5_000]);
        let sale = op(OpKind::Sale, 100);
        model.apply_reply(&sale, &OpResult { code: 0, amount_won: 100, ..OpResult::default() });
        assert_eq!(model.anomalies(), 0);
        model.apply_reply(&sale, &OpResult { code: 0, amount_won: 99, ..OpResult::default() });
        model.apply_reply(
            &sale,
            &OpResult { code: 110, flags: FLAG_REPLAYED, ..OpResult::default() },
        );
        assert_eq!(model.anomalies(), 2);
        assert_eq!(model.anomaly_examples().len(), 2);
        // The model moved by what was asked, not what the reply said.
        assert_eq!(model.balance_won(0), 4_800);
    }

    #[test]
    fn session_events_move_the_model_by_the_debit_their_reply_names() {
        let model = Model::new([10_000]);
        let reply = |code: ResultCode, amount_won: u64| OpResult {
            code: code.as_u16(),
            amount_won,
            ..OpResult::default()
        };
        let start = op(OpKind::SessionStart, 0);
        model.apply_reply(&start, &reply(ResultCode::Approved, 0));
        model.apply_reply(&op(OpKind::SessionUpdate, 0), &reply(ResultCode::Approved, 130));
        model
            .apply_reply(&op(OpKind::SessionUpdate, 0), &reply(ResultCode::SessionUsageCapped, 70));
        model
            .apply_reply(&op(OpKind::SessionEnd, 0), &reply(ResultCode::SessionExpiredCharged, 12));
        model.apply_reply(&op(OpKind::SessionEnd, 0), &reply(ResultCode::SessionNotFound, 99));
        assert_eq!(model.balance_won(0), 10_000 - 130 - 70 - 12);
        assert_eq!(model.anomalies(), 0);
        // A START that debits is an anomaly.
        model.apply_reply(&start, &reply(ResultCode::Approved, 5));
        assert_eq!(model.anomalies(), 1);
        // Resolution by INQUIRY applies the stored debit the same way.
        model.apply(&op(OpKind::SessionEnd, 40), ResultCode::Approved.as_u16());
        assert_eq!(model.balance_won(0), 10_000 - 212 - 5 - 40);
        model.add_call(0);
        model.add_call(0);
        model.remove_call(0);
        assert_eq!(model.calls_on(0), 1);
        model.remove_call(0);
        model.remove_call(0);
        assert_eq!(model.calls_on(0), 0);
    }

    #[test]
    fn unknown_operations_are_kept_aside() {
        let model = Model::new([1, 2]);
        model.add_unknown(&[op(OpKind::Sale, 1), op(OpKind::Load, 10_000)]);
        assert_eq!(model.take_unknown().len(), 2);
        assert!(model.take_unknown().is_empty());
        for kind in OpKind::ALL {
            assert_eq!(OpKind::from_u8(kind as u8), Some(kind));
            assert_eq!(OpKind::from_name(kind.name()), Some(kind));
        }
    }
}
