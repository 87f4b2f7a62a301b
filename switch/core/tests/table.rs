//! Table-driven engine tests: short scripts of commands against the pure shard, each step with
//! the exact reply it must produce. Together they reach every result code the engine can give;
//! the last test checks that, so a new code cannot be added without a script that reaches it.
//! (Codes only the front end gives, framing and PIN/password format, are listed by name and
//! covered by the end-to-end tests over TCP.)

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};

use pinswitch_core::{
    Body, Command, EngineConfig, FINAL_UNIT_NONE, FINAL_UNIT_TERMINATE, ForeignCode, Ms, OpId,
    PinHash, Reply, SessionGrant, SessionNoticeOut, SessionOpen, Shard, pack_destination,
};
use pinswitch_protocol::{
    CardState, Field, NOTICE_ABORT, NOTICE_EXPIRED, NOTICE_LOW_BALANCE, NOTICE_REAUTHORIZE,
    OpStatus, ResultCode, op_id_at,
};

const T0: Ms = 1_800_000_000_000;
const CARD: PinHash = 0xA11CE;
const OTHER: PinHash = 0xB0B;
const PASSWORD: u64 = 4321;
const WRONG: u64 = 9999;

/// A shard plus a clock, an op-id counter, a record of every code it has answered, and the
/// notices its commands raised since the script last looked.
struct Script {
    shard: Shard,
    now_ms: Ms,
    next_op: u128,
    seen: BTreeSet<u16>,
    notices: Vec<SessionNoticeOut>,
}

impl Script {
    fn new() -> Script {
        let shard = Shard::new(0, 1, EngineConfig::test_min());
        Script { shard, now_ms: T0, next_op: 1, seen: BTreeSet::new(), notices: Vec::new() }
    }

    fn op_id(&mut self) -> OpId {
        self.next_op += 1;
        op_id_at(self.now_ms, self.next_op)
    }

    fn run_at(&mut self, op_id: OpId, deadline_at_ms: Ms, body: Body) -> Reply {
        let applied = self.shard.apply(self.now_ms, &Command { op_id, deadline_at_ms, body });
        self.seen.insert(applied.reply.code);
        self.shard.check_invariants().unwrap();
        self.notices.extend(applied.notices());
        applied.reply
    }

    /// Runs a command with a fresh op id; returns the op id and the reply.
    fn run(&mut self, body: Body) -> (OpId, Reply) {
        let op_id = self.op_id();
        (op_id, self.run_at(op_id, 0, body))
    }

    fn expect(&mut self, body: Body, code: ResultCode) -> (OpId, Reply) {
        let (op_id, reply) = self.run(body.clone());
        assert_eq!(reply.result_code(), code, "{body:?} -> {reply:?}");
        (op_id, reply)
    }

    fn issue(&mut self, pin_hash: PinHash, face_value_won: u64) {
        self.expect(Body::Issue { pin_hash, face_value_won }, ResultCode::Approved);
    }

    fn active_card(&mut self, pin_hash: PinHash, face_value_won: u64) {
        self.issue(pin_hash, face_value_won);
        self.expect(Body::Activate { pin_hash, password_mac: PASSWORD }, ResultCode::Approved);
    }

    fn balance(&self, pin_hash: PinHash) -> (u64, u64) {
        let view = self.shard.card(self.now_ms, pin_hash).expect("card exists");
        (view.balance_won, view.available_won)
    }
}

fn sale(pin_hash: PinHash, password_mac: u64, amount_won: u64) -> Body {
    Body::Sale { pin_hash, password_mac, amount_won, merchant_id: 77, category: 1 }
}

fn authorize(pin_hash: PinHash, amount_won: u64, hold_ttl_s: u32) -> Body {
    Body::Authorize {
        pin_hash,
        password_mac: PASSWORD,
        amount_won,
        merchant_id: 77,
        category: 2,
        hold_ttl_s,
    }
}

fn capture(hold_id: OpId, amount_won: u64, final_capture: bool) -> Body {
    Body::Capture { pin_hash: CARD, hold_id, amount_won, final_capture }
}

fn load(pin_hash: PinHash, amount_won: u64) -> Body {
    Body::Load { pin_hash, amount_won, funding: 1 }
}

#[test]
fn card_life_issue_activate_load_sale() {
    let mut s = Script::new();
    s.expect(Body::Issue { pin_hash: CARD, face_value_won: 7_000 }, ResultCode::ProductNotFound);
    let (_, issued) =
        s.expect(Body::Issue { pin_hash: CARD, face_value_won: 10_000 }, ResultCode::Approved);
    assert_eq!((issued.amount_won, issued.balance_won), (10_000, 10_000));
    // The drawn PIN already exists: not recorded, the server draws again under the same op id.
    let op_id = s.op_id();
    let reply = s.run_at(op_id, 0, Body::Issue { pin_hash: CARD, face_value_won: 10_000 });
    assert_eq!(reply.result_code(), ResultCode::RetryLater);
    assert_eq!(s.shard.op(CARD, op_id).status, OpStatus::Unknown);

    s.expect(sale(CARD, PASSWORD, 100), ResultCode::CardNotActive);
    s.expect(load(CARD, 10_000), ResultCode::CardNotActive);
    s.expect(Body::Activate { pin_hash: OTHER, password_mac: PASSWORD }, ResultCode::CardNotFound);
    s.expect(Body::Activate { pin_hash: CARD, password_mac: PASSWORD }, ResultCode::Approved);
    s.expect(
        Body::Activate { pin_hash: CARD, password_mac: PASSWORD },
        ResultCode::CardAlreadyActive,
    );
    assert_eq!(s.shard.card(s.now_ms, CARD).unwrap().state, CardState::Active);

    s.expect(load(CARD, 0), ResultCode::AmountInvalid);
    s.expect(load(CARD, 5_000), ResultCode::RechargeUnitInvalid);
    s.expect(
        Body::Load { pin_hash: CARD, amount_won: 10_000, funding: 0 },
        ResultCode::FormatError,
    );
    s.expect(load(CARD, 500_000), ResultCode::BalanceCapExceeded);
    s.expect(load(CARD, u64::MAX - u64::MAX % 10_000), ResultCode::AmountOverflow);
    let (_, loaded) = s.expect(load(CARD, 490_000), ResultCode::Approved);
    assert_eq!(loaded.balance_won, 500_000);

    s.expect(sale(CARD, PASSWORD, 0), ResultCode::AmountInvalid);
    s.expect(
        Body::Sale {
            pin_hash: CARD,
            password_mac: PASSWORD,
            amount_won: 5,
            merchant_id: 1,
            category: 9,
        },
        ResultCode::CategoryInvalid,
    );
    s.expect(sale(CARD, PASSWORD, 500_001), ResultCode::InsufficientFunds);
    let (_, sold) = s.expect(sale(CARD, PASSWORD, 1_500), ResultCode::Approved);
    assert_eq!((sold.amount_won, sold.balance_won, sold.available_won), (1_500, 498_500, 498_500));
    assert!((100_000..1_000_000).contains(&sold.approval_code));
    assert_eq!(s.balance(CARD), (498_500, 498_500));
    s.expect(sale(OTHER, PASSWORD, 1), ResultCode::CardNotFound);
}

#[test]
fn the_product_mix_limits_what_a_card_pays_for() {
    let mut s = Script::new();
    // test_min: 5,000-won cards pay for internet payment (1) and telephone calls (2) only.
    s.active_card(CARD, 5_000);
    let pay = |category| Body::Sale {
        pin_hash: CARD,
        password_mac: PASSWORD,
        amount_won: 100,
        merchant_id: 1,
        category,
    };
    s.expect(pay(1), ResultCode::Approved);
    s.expect(pay(2), ResultCode::Approved);
    s.expect(pay(6), ResultCode::CategoryNotAllowed);
    let hold = Body::Authorize {
        pin_hash: CARD,
        password_mac: WRONG,
        amount_won: 100,
        merchant_id: 1,
        category: 4,
        hold_ttl_s: 0,
    };
    s.expect(hold, ResultCode::CategoryNotAllowed);
    assert_eq!(
        s.shard.card(s.now_ms, CARD).unwrap().password_tries_left,
        3,
        "no password try is counted"
    );
    assert_eq!(s.balance(CARD), (4_800, 4_800));
}

#[test]
fn a_named_card_has_the_higher_cap() {
    let mut s = Script::new();
    s.active_card(CARD, 100_000);
    s.expect(load(CARD, 410_000), ResultCode::BalanceCapExceeded);
    let register = |verified_name| Body::Register { pin_hash: CARD, holder_ref: 31, verified_name };
    s.expect(
        Body::Register { pin_hash: CARD, holder_ref: 0, verified_name: true },
        ResultCode::FormatError,
    );
    s.expect(
        Body::Register { pin_hash: OTHER, holder_ref: 31, verified_name: true },
        ResultCode::CardNotFound,
    );
    let (_, registered) = s.expect(register(false), ResultCode::Approved);
    assert_eq!(
        registered.amount_won, 500_000,
        "registered without a verified name: still the unnamed cap"
    );
    s.expect(load(CARD, 410_000), ResultCode::BalanceCapExceeded);
    let (_, named) = s.expect(register(true), ResultCode::Approved);
    assert_eq!(named.amount_won, 2_000_000);
    s.expect(load(CARD, 1_900_000), ResultCode::Approved);
    s.expect(load(CARD, 10_000), ResultCode::BalanceCapExceeded);
    assert_eq!(s.balance(CARD).0, 2_000_000);
}

#[test]
fn registered_cards_earn_points_and_credits_take_them_back() {
    let mut s = Script::new();
    s.active_card(CARD, 100_000);
    let points = |s: &Script| s.shard.card(s.now_ms, CARD).unwrap().points;
    s.expect(sale(CARD, PASSWORD, 10_000), ResultCode::Approved);
    assert_eq!(points(&s), 0, "an unregistered card earns nothing");
    s.expect(
        Body::Register { pin_hash: CARD, holder_ref: 5, verified_name: false },
        ResultCode::Approved,
    );
    // test_min gives the 100,000-won product 30 points per 1,000 won (3 %).
    let (paid, _) = s.expect(sale(CARD, PASSWORD, 20_000), ResultCode::Approved);
    assert_eq!(points(&s), 600, "the product's 30 points per 1,000 won");
    let (hold, _) = s.expect(authorize(CARD, 5_000, 0), ResultCode::Approved);
    assert_eq!(points(&s), 600, "a hold earns nothing until captured");
    s.expect(capture(hold, 3_050, true), ResultCode::Approved);
    assert_eq!(points(&s), 691, "rounded down");
    s.expect(
        Body::Refund { pin_hash: CARD, original_op_id: paid, amount_won: 5_000 },
        ResultCode::Approved,
    );
    assert_eq!(points(&s), 541);
    s.expect(Body::Reverse { pin_hash: CARD, original_op_id: paid }, ResultCode::Approved);
    assert_eq!(points(&s), 91, "the reversal credits the other 15,000 won and takes their points");
    // The 5,000-won product earns no points at all, registered or not.
    s.active_card(OTHER, 5_000);
    s.expect(
        Body::Register { pin_hash: OTHER, holder_ref: 6, verified_name: false },
        ResultCode::Approved,
    );
    s.expect(sale(OTHER, PASSWORD, 4_000), ResultCode::Approved);
    assert_eq!(s.shard.card(s.now_ms, OTHER).unwrap().points, 0);
}

#[test]
fn wrong_passwords_lock_the_card_and_a_right_one_resets_the_count() {
    let mut s = Script::new();
    s.active_card(CARD, 10_000);
    s.expect(sale(CARD, WRONG, 100), ResultCode::PasswordInvalid);
    assert_eq!(s.shard.card(s.now_ms, CARD).unwrap().password_tries_left, 2);
    s.expect(sale(CARD, PASSWORD, 100), ResultCode::Approved);
    assert_eq!(s.shard.card(s.now_ms, CARD).unwrap().password_tries_left, 3);
    s.expect(sale(CARD, WRONG, 100), ResultCode::PasswordInvalid);
    s.expect(authorize(CARD, 100, 0).with_password(WRONG), ResultCode::PasswordInvalid);
    s.expect(sale(CARD, WRONG, 100), ResultCode::PasswordTriesExceeded);
    // Locked: even the right password is refused now.
    s.expect(sale(CARD, PASSWORD, 100), ResultCode::PasswordTriesExceeded);
    assert_eq!(s.balance(CARD), (9_900, 9_900));
}

trait WithPassword {
    fn with_password(self, password_mac: u64) -> Body;
}

impl WithPassword for Body {
    fn with_password(self, mac: u64) -> Body {
        match self {
            Body::Authorize { pin_hash, amount_won, merchant_id, category, hold_ttl_s, .. } => {
                Body::Authorize {
                    pin_hash,
                    password_mac: mac,
                    amount_won,
                    merchant_id,
                    category,
                    hold_ttl_s,
                }
            }
            other => other,
        }
    }
}

#[test]
fn holds_capture_void_expire_and_limits() {
    let mut s = Script::new();
    s.active_card(CARD, 10_000);
    s.expect(authorize(CARD, 100, 3_601), ResultCode::HoldTtlInvalid);
    s.expect(authorize(CARD, 10_001, 0), ResultCode::InsufficientFunds);
    let (hold, held) = s.expect(authorize(CARD, 4_000, 0), ResultCode::Approved);
    assert_eq!(held.hold_expires_at_ms, s.now_ms + 60_000);
    assert_eq!((held.balance_won, held.available_won), (10_000, 6_000));
    // Holds and sales draw from one available balance.
    s.expect(sale(CARD, PASSWORD, 6_001), ResultCode::InsufficientFunds);
    let (hold2, _) = s.expect(authorize(CARD, 1_000, 600), ResultCode::Approved);
    let (hold3, _) = s.expect(authorize(CARD, 1_000, 600), ResultCode::Approved);
    s.expect(authorize(CARD, 1_000, 600), ResultCode::HoldLimitReached);

    s.expect(capture(hold, 0, false), ResultCode::AmountInvalid);
    s.expect(capture(hold, 4_001, false), ResultCode::ExceedsHoldAmount);
    s.expect(capture(12345, 1, false), ResultCode::HoldNotFound);
    s.expect(
        Body::Capture { pin_hash: OTHER, hold_id: hold, amount_won: 1, final_capture: false },
        ResultCode::CardNotFound,
    );
    s.expect(capture(hold, 1_000, false), ResultCode::Approved);
    s.expect(capture(hold, 1_000, false), ResultCode::Approved);
    s.expect(capture(hold, 1_000, false), ResultCode::Approved);
    s.expect(capture(hold, 500, false), ResultCode::CaptureLimitReached);
    assert_eq!(s.balance(CARD), (7_000, 4_000));

    let (_, voided) = s.expect(Body::Void { pin_hash: CARD, hold_id: hold }, ResultCode::Approved);
    assert_eq!(voided.amount_won, 1_000);
    s.expect(Body::Void { pin_hash: CARD, hold_id: hold }, ResultCode::HoldAlreadyVoided);
    s.expect(capture(hold, 1, false), ResultCode::HoldNotFound);
    assert_eq!(s.shard.op(CARD, hold).status, OpStatus::HoldVoided);

    let (_, captured) = s.expect(capture(hold2, u64::MAX, false), ResultCode::Approved);
    assert_eq!(captured.amount_won, 1_000);
    s.expect(capture(hold2, 1, false), ResultCode::HoldAlreadyCaptured);
    s.expect(Body::Void { pin_hash: CARD, hold_id: hold2 }, ResultCode::HoldAlreadyCaptured);

    // Let hold3 expire: its money comes back by time alone.
    s.now_ms += 600_000;
    let tick = s.shard.apply(s.now_ms, &Command { op_id: 0, deadline_at_ms: 0, body: Body::Tick });
    assert!(tick.changed);
    assert_eq!(s.shard.op(CARD, hold3).status, OpStatus::HoldExpired);
    s.expect(capture(hold3, 1, false), ResultCode::HoldExpired);
    s.expect(Body::Void { pin_hash: CARD, hold_id: hold3 }, ResultCode::HoldExpired);
    assert_eq!(s.balance(CARD), (6_000, 6_000));
    assert!(
        !s.shard
            .apply(s.now_ms, &Command { op_id: 0, deadline_at_ms: 0, body: Body::Tick })
            .changed
    );

    // A final capture releases the rest.
    let (hold4, _) = s.expect(authorize(CARD, 3_000, 0), ResultCode::Approved);
    s.expect(capture(hold4, 1_000, true), ResultCode::Approved);
    assert_eq!(s.balance(CARD), (5_000, 5_000));
}

#[test]
fn reversals_in_both_orders_and_refunds() {
    let mut s = Script::new();
    s.active_card(CARD, 10_000);
    s.active_card(OTHER, 10_000);

    // After the original: a sale is credited back once.
    let (sale_op, _) = s.expect(sale(CARD, PASSWORD, 2_000), ResultCode::Approved);
    s.expect(
        Body::Refund { pin_hash: CARD, original_op_id: sale_op, amount_won: 0 },
        ResultCode::AmountInvalid,
    );
    s.expect(
        Body::Refund { pin_hash: CARD, original_op_id: sale_op, amount_won: 2_001 },
        ResultCode::ExceedsRefundable,
    );
    s.expect(
        Body::Refund { pin_hash: OTHER, original_op_id: sale_op, amount_won: 1 },
        ResultCode::OriginalCardMismatch,
    );
    s.expect(
        Body::Refund { pin_hash: CARD, original_op_id: 424242, amount_won: 1 },
        ResultCode::OriginalNotFound,
    );
    s.expect(
        Body::Refund { pin_hash: CARD, original_op_id: sale_op, amount_won: 500 },
        ResultCode::Approved,
    );
    let (_, reversed) =
        s.expect(Body::Reverse { pin_hash: CARD, original_op_id: sale_op }, ResultCode::Approved);
    assert_eq!(reversed.amount_won, 1_500, "only what was not refunded comes back");
    assert_eq!(s.balance(CARD), (10_000, 10_000));
    s.expect(
        Body::Reverse { pin_hash: CARD, original_op_id: sale_op },
        ResultCode::AlreadyReversed,
    );
    s.expect(
        Body::Refund { pin_hash: CARD, original_op_id: sale_op, amount_won: 1 },
        ResultCode::ExceedsRefundable,
    );
    s.expect(
        Body::Reverse { pin_hash: OTHER, original_op_id: sale_op },
        ResultCode::OriginalCardMismatch,
    );
    assert_eq!(s.shard.op(CARD, sale_op).status, OpStatus::Reversed);

    // Reverse of a pending hold with a partial capture: both come back.
    let (hold, _) = s.expect(authorize(CARD, 3_000, 0), ResultCode::Approved);
    let (capture_op, _) = s.expect(capture(hold, 1_000, false), ResultCode::Approved);
    s.expect(
        Body::Refund { pin_hash: CARD, original_op_id: capture_op, amount_won: 400 },
        ResultCode::Approved,
    );
    s.expect(
        Body::Refund { pin_hash: CARD, original_op_id: hold, amount_won: 1 },
        ResultCode::ReversalNotSupported,
    );
    let (_, reversed) =
        s.expect(Body::Reverse { pin_hash: CARD, original_op_id: hold }, ResultCode::Approved);
    assert_eq!(reversed.amount_won, 600 + 2_000);
    assert_eq!(s.balance(CARD), (10_000, 10_000));
    s.expect(capture(hold, 1, false), ResultCode::HoldReversed);
    s.expect(Body::Void { pin_hash: CARD, hold_id: hold }, ResultCode::HoldReversed);
    s.expect(
        Body::Reverse { pin_hash: CARD, original_op_id: capture_op },
        ResultCode::ReversalNotSupported,
    );

    // Declined originals have nothing to undo.
    let (declined, _) = s.expect(sale(CARD, PASSWORD, 1_000_000), ResultCode::InsufficientFunds);
    s.expect(
        Body::Reverse { pin_hash: CARD, original_op_id: declined },
        ResultCode::OriginalDeclinedNoop,
    );
    s.expect(Body::Reverse { pin_hash: CARD, original_op_id: 0 }, ResultCode::OpIdInvalid);

    // Before the original: a tombstone declines the late original.
    let late = s.op_id();
    s.expect(
        Body::Reverse { pin_hash: CARD, original_op_id: late },
        ResultCode::OriginalNotFoundRecorded,
    );
    assert_eq!(s.shard.op(CARD, late).status, OpStatus::Tombstone);
    s.expect(Body::Reverse { pin_hash: CARD, original_op_id: late }, ResultCode::AlreadyReversed);
    s.expect(
        Body::Refund { pin_hash: CARD, original_op_id: late, amount_won: 1 },
        ResultCode::OriginalNotFound,
    );
    let reply = s.run_at(late, 0, sale(CARD, PASSWORD, 700));
    assert_eq!(reply.result_code(), ResultCode::ReversedBeforeArrival);
    assert_eq!(s.balance(CARD), (10_000, 10_000));
}

/// OP_FENCE makes an op id's outcome final: an op that arrived answers OP_RECORDED (INQUIRY
/// then tells what it did), one that did not is fenced (FENCED, a tombstone; the late arrival
/// gets FENCED_BEFORE_ARRIVAL and moves no money), fencing again answers the same, another
/// card's op is refused, and so are the op ids the gate refuses.
#[test]
fn a_fence_makes_an_op_ids_outcome_final() {
    let mut s = Script::new();
    s.active_card(CARD, 10_000);
    s.active_card(OTHER, 10_000);
    let fence = |pin_hash| Body::Fence { pin_hash };
    let (sale_op, _) = s.expect(sale(CARD, PASSWORD, 2_000), ResultCode::Approved);
    let recorded = s.run_at(sale_op, 0, fence(CARD));
    assert_eq!(recorded.result_code(), ResultCode::OpRecorded);
    assert_eq!((recorded.balance_won, recorded.available_won), (0, 0), "no balances");
    assert_eq!(s.shard.op(CARD, sale_op).status, OpStatus::Completed);
    let mismatch = s.run_at(sale_op, 0, fence(OTHER));
    assert_eq!(mismatch.result_code(), ResultCode::OriginalCardMismatch);

    // The gateway's SALE timed out and never arrived: fenced, and its late arrival is refused.
    let lost = s.op_id();
    assert_eq!(s.shard.op(CARD, lost).status, OpStatus::Unknown);
    assert_eq!(s.run_at(lost, 0, fence(CARD)).result_code(), ResultCode::Fenced);
    assert_eq!(s.shard.op(CARD, lost).status, OpStatus::Tombstone);
    assert_eq!(s.run_at(lost, 0, fence(CARD)).result_code(), ResultCode::Fenced, "again");
    let late = s.run_at(lost, 0, sale(CARD, PASSWORD, 700));
    assert_eq!(late.result_code(), ResultCode::FencedBeforeArrival);
    assert_eq!(s.balance(CARD), (8_000, 8_000));
    s.expect(
        Body::Reverse { pin_hash: CARD, original_op_id: lost },
        ResultCode::OriginalDeclinedNoop,
    );
    s.expect(
        Body::Refund { pin_hash: CARD, original_op_id: lost, amount_won: 1 },
        ResultCode::OriginalNotFound,
    );

    // What the gate refuses, a fence refuses too (nothing recorded).
    assert_eq!(s.run_at(0, 0, fence(CARD)).result_code(), ResultCode::OpIdInvalid);
    let ahead = op_id_at(s.now_ms + 3_600_000, 1);
    assert_eq!(s.run_at(ahead, 0, fence(CARD)).result_code(), ResultCode::OpIdFromFuture);
    assert_eq!(s.shard.op(CARD, ahead).status, OpStatus::Unknown);
}

/// The reliability review's junk flood (issue 16): SALEs on random unknown PINs, a thousand
/// times the window's size, half of them with op ids dated ahead of the clock (inside the
/// skew). None is recorded or changes state, so the gateway's approved SALE is still known
/// (INQUIRY completed, its retry replayed) and new operations are served, not RETRY_LATER.
#[test]
fn junk_on_unknown_cards_takes_no_place_in_the_op_id_window() {
    let mut s = Script::new();
    s.active_card(CARD, 10_000);
    let (paid, _) = s.expect(sale(CARD, PASSWORD, 1_000), ResultCode::Approved);
    let entries_max = s.shard.config().idempotency_entries_max;
    let skew_ms = s.shard.config().op_clock_skew_max_ms;
    for junk in 0..1_000 * u128::from(entries_max) {
        let pin_hash = 0x7000_0000 + junk;
        let dated_ms = if junk % 2 == 0 { s.now_ms } else { s.now_ms + skew_ms / 2 };
        let op_id = op_id_at(dated_ms, 1_000_000 + junk);
        let applied = s.shard.apply(
            s.now_ms,
            &Command {
                op_id,
                deadline_at_ms: if junk % 3 == 0 { s.now_ms - 1 } else { 0 },
                body: sale(pin_hash, PASSWORD, 1),
            },
        );
        assert!(!applied.changed, "junk changes nothing (not journaled)");
        assert!(matches!(
            applied.reply.result_code(),
            ResultCode::CardNotFound | ResultCode::DeadlineExceededNotExecuted
        ));
        assert_eq!(s.shard.op(pin_hash, op_id).status, OpStatus::Unknown);
    }
    assert_eq!(s.shard.op(CARD, paid).status, OpStatus::Completed, "the real record is kept");
    let retry = s.run_at(paid, 0, sale(CARD, PASSWORD, 1_000));
    assert!(retry.replayed && retry.result_code() == ResultCode::Approved);
    s.expect(sale(CARD, PASSWORD, 500), ResultCode::Approved);
    assert_eq!(s.balance(CARD), (8_500, 8_500));
}

/// Journals written in engine formats 1 and 2 recorded (and journaled) an unknown card's
/// decline: replayed in those formats they still do, so recovery sees the journaled change; the
/// UPGRADE to format 3 stops it from that record on.
#[test]
fn unknown_card_declines_are_recorded_until_the_upgrade_to_format_3() {
    let mut shard = Shard::first_format(0, 1, EngineConfig::test_min(), [7, 9]);
    let junk = |op: u128| Command {
        op_id: op_id_at(T0, op),
        deadline_at_ms: 0,
        body: sale(OTHER, PASSWORD, 1),
    };
    let upgrade = |engine_format| Command {
        op_id: 0,
        deadline_at_ms: 0,
        body: Body::Upgrade { engine_format, approval_key: [1, 2] },
    };
    for format in [1u16, 2] {
        if format == 2 {
            assert!(shard.apply(T0, &upgrade(2)).changed);
        }
        let applied = shard.apply(T0, &junk(u128::from(format)));
        assert!(applied.changed, "format {format}: recorded and journaled, as it ran");
        assert_eq!(shard.op(OTHER, op_id_at(T0, u128::from(format))).status, OpStatus::Completed);
    }
    assert!(shard.apply(T0, &upgrade(3)).changed);
    let applied = shard.apply(T0, &junk(3));
    assert!(!applied.changed);
    assert_eq!(applied.reply.result_code(), ResultCode::CardNotFound);
    assert_eq!(shard.op(OTHER, op_id_at(T0, 3)).status, OpStatus::Unknown);
}

/// PROTOCOL.md's "Payments already settled": a REVERSE of an AUTHORIZE whose hold is closed
/// gives back the captures not refunded and nothing else, and a REFUND of a capture leaves
/// what a still-pending hold reserves as it was.
#[test]
fn reversing_a_settled_authorize_credits_its_captures_only() {
    let mut s = Script::new();
    s.active_card(CARD, 10_000);
    // Fully captured (final capture of part: the rest released).
    let (captured, _) = s.expect(authorize(CARD, 3_000, 0), ResultCode::Approved);
    let (capture_op, _) = s.expect(capture(captured, 1_000, true), ResultCode::Approved);
    s.expect(
        Body::Refund { pin_hash: CARD, original_op_id: capture_op, amount_won: 300 },
        ResultCode::Approved,
    );
    let (_, reversed) =
        s.expect(Body::Reverse { pin_hash: CARD, original_op_id: captured }, ResultCode::Approved);
    assert_eq!(reversed.amount_won, 700, "the capture less its refund");
    assert_eq!(s.balance(CARD), (10_000, 10_000));
    // Voided, and expired, without a capture: nothing to credit, still approved.
    let (voided, _) = s.expect(authorize(CARD, 2_000, 0), ResultCode::Approved);
    s.expect(Body::Void { pin_hash: CARD, hold_id: voided }, ResultCode::Approved);
    let (_, reversed) =
        s.expect(Body::Reverse { pin_hash: CARD, original_op_id: voided }, ResultCode::Approved);
    assert_eq!(reversed.amount_won, 0);
    let (expired, _) = s.expect(authorize(CARD, 2_000, 60), ResultCode::Approved);
    s.now_ms += 60_000;
    s.shard.apply(s.now_ms, &Command { op_id: 0, deadline_at_ms: 0, body: Body::Tick });
    assert_eq!(s.shard.op(CARD, expired).status, OpStatus::HoldExpired);
    let (_, reversed) =
        s.expect(Body::Reverse { pin_hash: CARD, original_op_id: expired }, ResultCode::Approved);
    assert_eq!(reversed.amount_won, 0);
    assert_eq!(s.balance(CARD), (10_000, 10_000));
    // A refund of a capture of a pending hold: the hold's reservation is untouched.
    let (pending, _) = s.expect(authorize(CARD, 4_000, 0), ResultCode::Approved);
    let (capture_op, _) = s.expect(capture(pending, 1_500, false), ResultCode::Approved);
    assert_eq!(s.balance(CARD), (8_500, 6_000));
    s.expect(
        Body::Refund { pin_hash: CARD, original_op_id: capture_op, amount_won: 1_500 },
        ResultCode::Approved,
    );
    assert_eq!(s.balance(CARD), (10_000, 7_500), "2,500 won still held");
}

#[test]
fn exactly_once_replay_reuse_window_deadline() {
    let mut s = Script::new();
    s.active_card(CARD, 10_000);
    let op_id = s.op_id();
    let first = s.run_at(op_id, 0, sale(CARD, PASSWORD, 1_000));
    assert_eq!(first.result_code(), ResultCode::Approved);
    let again = s.run_at(op_id, 0, sale(CARD, PASSWORD, 1_000));
    assert_eq!(again, Reply { replayed: true, ..first });
    assert_eq!(s.balance(CARD), (9_000, 9_000));
    // Different body: the first differing field is named.
    let reused = s.run_at(op_id, 0, sale(CARD, PASSWORD, 1_001));
    assert_eq!((reused.result_code(), reused.field), (ResultCode::OpIdReused, Field::Amount as u8));
    let reused = s.run_at(op_id, 0, load(CARD, 10_000));
    assert_eq!((reused.result_code(), reused.field), (ResultCode::OpIdReused, Field::Kind as u8));
    // Declines are stored too: the retry of a decline is the same decline.
    let declined_op = s.op_id();
    assert_eq!(
        s.run_at(declined_op, 0, sale(CARD, PASSWORD, 50_000)).result_code(),
        ResultCode::InsufficientFunds
    );
    s.expect(load(CARD, 50_000), ResultCode::Approved);
    let retry = s.run_at(declined_op, 0, sale(CARD, PASSWORD, 50_000));
    assert_eq!((retry.result_code(), retry.replayed), (ResultCode::InsufficientFunds, true));

    assert_eq!(s.run_at(0, 0, sale(CARD, PASSWORD, 1)).result_code(), ResultCode::OpIdInvalid);
    let future = op_id_at(s.now_ms + 61_000, 5);
    assert_eq!(
        s.run_at(future, 0, sale(CARD, PASSWORD, 1)).result_code(),
        ResultCode::OpIdFromFuture
    );
    let old = op_id_at(s.now_ms - 2 * 3600 * 1000, 5);
    assert_eq!(s.run_at(old, 0, sale(CARD, PASSWORD, 1)).result_code(), ResultCode::OpTooOld);

    // A request dequeued after its deadline is not executed, and a retry hears the same.
    let late = s.op_id();
    let reply = s.run_at(late, s.now_ms - 1, sale(CARD, PASSWORD, 1));
    assert_eq!(reply.result_code(), ResultCode::DeadlineExceededNotExecuted);
    let reply = s.run_at(late, 0, sale(CARD, PASSWORD, 1));
    assert_eq!(
        (reply.result_code(), reply.replayed),
        (ResultCode::DeadlineExceededNotExecuted, true)
    );
    assert_eq!(s.balance(CARD), (59_000, 59_000));

    // Past the window the id is too old, even though its record was kept.
    s.now_ms += 2 * 3600 * 1000;
    assert_eq!(s.run_at(op_id, 0, sale(CARD, PASSWORD, 1_000)).result_code(), ResultCode::OpTooOld);
}

#[test]
fn evicted_records_answer_too_old_never_a_second_execution() {
    let mut s = Script::new();
    s.active_card(CARD, 100_000);
    s.now_ms += 1;
    let first = s.op_id();
    assert_eq!(s.run_at(first, 0, sale(CARD, PASSWORD, 10)).result_code(), ResultCode::Approved);
    // Two generations of 32 records (test_min keeps 64): the first generation is dropped whole.
    for _ in 0..64 {
        s.now_ms += 1;
        s.expect(sale(CARD, PASSWORD, 10), ResultCode::Approved);
    }
    assert!(s.shard.op_count() <= 64);
    assert_eq!(s.shard.op(CARD, first).status, OpStatus::Unknown);
    assert_eq!(s.run_at(first, 0, sale(CARD, PASSWORD, 10)).result_code(), ResultCode::OpTooOld);
    assert_eq!(s.balance(CARD).0, 100_000 - 65 * 10);
}

#[test]
fn reversals_naming_future_originals_never_raise_the_floor_past_the_clock() {
    let mut s = Script::new();
    s.active_card(CARD, 100_000);
    // An original from beyond the allowed skew cannot have been accepted: no tombstone for it.
    let far = op_id_at(s.now_ms + 10 * 365 * 24 * 3600 * 1000, 1);
    s.expect(Body::Reverse { pin_hash: CARD, original_op_id: far }, ResultCode::OpIdFromFuture);
    assert_eq!(s.shard.op(CARD, far).status, OpStatus::Unknown);
    // A tombstone within the skew is not dropped while the clock is behind it: its generation
    // stays, the newer one grows to twice its size, and past that new operations must wait.
    let soon = op_id_at(s.now_ms + 30_000, 1);
    s.expect(
        Body::Reverse { pin_hash: CARD, original_op_id: soon },
        ResultCode::OriginalNotFoundRecorded,
    );
    let mut approved = 0;
    loop {
        s.now_ms += 10;
        let (_, reply) = s.run(sale(CARD, PASSWORD, 1));
        match reply.result_code() {
            ResultCode::Approved => approved += 1,
            ResultCode::RetryLater => break,
            other => panic!("unexpected {other:?}"),
        }
        assert!(approved < 200, "the op-id table must refuse before growing without bound");
    }
    assert!(s.shard.op_count() <= 2 * 64);
    assert_eq!(s.shard.op(CARD, soon).status, OpStatus::Tombstone);
    assert_eq!(
        s.run_at(soon, 0, sale(CARD, PASSWORD, 5)).result_code(),
        ResultCode::ReversedBeforeArrival
    );
    // Once the clock passes the tombstone's time its generation may go; new ids work again,
    // and the late original is too old: declined either way, never executed.
    s.now_ms += 31_000;
    for _ in 0..40 {
        s.now_ms += 10;
        s.expect(sale(CARD, PASSWORD, 1), ResultCode::Approved);
    }
    let late = s.run_at(soon, 0, sale(CARD, PASSWORD, 5)).result_code();
    assert!(matches!(late, ResultCode::ReversedBeforeArrival | ResultCode::OpTooOld), "{late:?}");
    assert_eq!(s.balance(CARD).0, 100_000 - approved - 40);
}

fn sell(pin_hash: PinHash, channel_id: u32, payment_means: u8) -> Body {
    Body::Sell { pin_hash, channel_id, price_won: 9_500, payment_means, gift_recipient_ref: 0 }
}

#[test]
fn channel_sale_gift_claim_block_unblock() {
    let mut s = Script::new();
    s.issue(CARD, 10_000);
    s.expect(sell(CARD, 0, 1), ResultCode::ChannelInvalid);
    s.expect(sell(CARD, 7, 9), ResultCode::ChannelInvalid);
    s.expect(
        Body::Sell {
            pin_hash: CARD,
            channel_id: 7,
            price_won: 0,
            payment_means: 1,
            gift_recipient_ref: 0,
        },
        ResultCode::AmountInvalid,
    );
    s.expect(sell(OTHER, 7, 1), ResultCode::CardNotFound);
    let gift = Body::Sell {
        pin_hash: CARD,
        channel_id: 7,
        price_won: 9_500,
        payment_means: 2,
        gift_recipient_ref: 4242,
    };
    let (_, sold) = s.expect(gift, ResultCode::Approved);
    assert_eq!(sold.amount_won, 10_000);
    assert_eq!(s.shard.card(s.now_ms, CARD).unwrap().state, CardState::Sold);
    s.expect(sell(CARD, 7, 1), ResultCode::CardAlreadySold);
    s.expect(sale(CARD, PASSWORD, 100), ResultCode::CardNotActive);
    // Lost in transit: blocked before the claim, nobody can activate it; unblocking returns it
    // to sold.
    s.expect(Body::Block { pin_hash: CARD, reason: 1 }, ResultCode::Approved);
    s.expect(Body::Activate { pin_hash: CARD, password_mac: PASSWORD }, ResultCode::CardBlocked);
    s.expect(Body::Unblock { pin_hash: CARD }, ResultCode::Approved);
    assert_eq!(s.shard.card(s.now_ms, CARD).unwrap().state, CardState::Sold);
    // Only the recipient the sale named claims the gift, with their own password (and the
    // record that they left a password hint); a plain activation is refused.
    s.expect(
        Body::Activate { pin_hash: CARD, password_mac: PASSWORD },
        ResultCode::GiftClaimRequired,
    );
    let claim = |gift_recipient_ref| Body::Claim {
        pin_hash: CARD,
        password_mac: PASSWORD,
        gift_recipient_ref,
        password_hint: true,
    };
    s.expect(claim(4241), ResultCode::GiftRecipientMismatch);
    s.expect(claim(0), ResultCode::GiftRecipientMismatch);
    s.expect(claim(4242), ResultCode::Approved);
    assert!(s.shard.card(s.now_ms, CARD).unwrap().password_hint);
    s.expect(claim(4242), ResultCode::CardAlreadyActive);
    s.expect(sell(CARD, 7, 1), ResultCode::CardAlreadySold);

    s.expect(Body::Unblock { pin_hash: CARD }, ResultCode::CardNotBlocked);
    s.expect(Body::Block { pin_hash: CARD, reason: 9 }, ResultCode::BlockReasonInvalid);
    s.expect(Body::Block { pin_hash: CARD, reason: 2 }, ResultCode::Approved);
    s.expect(sale(CARD, PASSWORD, 100), ResultCode::CardBlocked);
    s.expect(load(CARD, 10_000), ResultCode::CardBlocked);
    s.expect(Body::Block { pin_hash: CARD, reason: 2 }, ResultCode::CardBlocked);
    assert_eq!(s.balance(CARD), (10_000, 10_000), "a blocked card keeps its balance");
    s.expect(Body::Unblock { pin_hash: CARD }, ResultCode::Approved);
    s.expect(sale(CARD, PASSWORD, 100), ResultCode::Approved);
    // Unblock also clears a wrong-password lockout.
    for _ in 0..3 {
        s.run(sale(CARD, WRONG, 1));
    }
    s.expect(sale(CARD, PASSWORD, 1), ResultCode::PasswordTriesExceeded);
    s.expect(Body::Unblock { pin_hash: CARD }, ResultCode::Approved);
    s.expect(sale(CARD, PASSWORD, 1), ResultCode::Approved);
    s.expect(Body::Unblock { pin_hash: OTHER }, ResultCode::CardNotFound);
}

#[test]
fn balance_refund_follows_the_used_share_rule_and_closes_the_card() {
    let mut s = Script::new();
    // Face value 10,000 (a small card): 80 % of what was charged must be used.
    s.active_card(CARD, 10_000);
    let refund = |account| Body::BalanceRefund { pin_hash: CARD, payout_account_ref: account };
    s.expect(refund(0), ResultCode::FormatError);
    let (first_sale, _) = s.expect(sale(CARD, PASSWORD, 7_999), ResultCode::Approved);
    s.expect(refund(77), ResultCode::RefundRuleNotMet);
    s.expect(sale(CARD, PASSWORD, 1), ResultCode::Approved);
    let (hold, _) = s.expect(authorize(CARD, 500, 0), ResultCode::Approved);
    s.expect(refund(77), ResultCode::HoldsOutstanding);
    s.expect(Body::Void { pin_hash: CARD, hold_id: hold }, ResultCode::Approved);
    let (_, paid) = s.expect(refund(77), ResultCode::Approved);
    assert_eq!((paid.amount_won, paid.balance_won), (2_000, 0));
    assert_eq!(s.shard.card(s.now_ms, CARD).unwrap().state, CardState::Closed);
    s.expect(sale(CARD, PASSWORD, 1), ResultCode::CardClosed);
    s.expect(refund(77), ResultCode::CardClosed);
    assert_eq!(s.shard.totals().paid_out_won, 2_000);
    // A merchant reverses a sale after the card closed: the money joins the payout instead of
    // sitting on a card nobody can use; a merchant refund is refused.
    s.expect(
        Body::Refund { pin_hash: CARD, original_op_id: first_sale, amount_won: 1 },
        ResultCode::CardClosed,
    );
    let (_, reversed) = s
        .expect(Body::Reverse { pin_hash: CARD, original_op_id: first_sale }, ResultCode::Approved);
    assert_eq!((reversed.amount_won, reversed.balance_won), (7_999, 0));
    assert_eq!(s.shard.totals().paid_out_won, 2_000 + 7_999);

    // A larger card: 60 % of face value plus recharges.
    s.active_card(OTHER, 50_000);
    s.expect(load(OTHER, 50_000), ResultCode::Approved);
    s.expect(sale(OTHER, PASSWORD, 59_999), ResultCode::Approved);
    s.expect(
        Body::BalanceRefund { pin_hash: OTHER, payout_account_ref: 1 },
        ResultCode::RefundRuleNotMet,
    );
    s.expect(sale(OTHER, PASSWORD, 1), ResultCode::Approved);
    s.expect(Body::BalanceRefund { pin_hash: OTHER, payout_account_ref: 1 }, ResultCode::Approved);
}

#[test]
fn cards_expire_at_the_end_of_validity_and_the_rest_is_breakage() {
    let mut s = Script::new();
    s.issue(CARD, 20_000);
    s.expect(sell(CARD, 3, 4), ResultCode::Approved);
    s.expect(Body::Activate { pin_hash: CARD, password_mac: PASSWORD }, ResultCode::Approved);
    s.expect(sale(CARD, PASSWORD, 5_000), ResultCode::Approved);
    // A pending hold keeps the card alive past its validity (test_min: one day from the sale)
    // until the hold is closed.
    s.now_ms += 24 * 3600 * 1000 - 60_000;
    let (hold, _) = s.expect(authorize(CARD, 1_000, 600), ResultCode::Approved);
    s.now_ms += 120_000;
    assert_eq!(s.shard.card(s.now_ms, CARD).unwrap().state, CardState::Active);
    s.expect(capture(hold, 1_000, true), ResultCode::Approved);
    assert_eq!(s.shard.card(s.now_ms, CARD).unwrap().state, CardState::Expired);
    s.expect(sale(CARD, PASSWORD, 1), ResultCode::CardExpired);
    s.expect(sell(CARD, 3, 4), ResultCode::CardExpired);
    s.expect(Body::Unblock { pin_hash: CARD }, ResultCode::CardExpired);
    let totals = s.shard.totals();
    assert_eq!((totals.breakage_won, totals.balances_won), (14_000, 0));
}

/// Products carry their own rules (test_min): the 50,000-won card is valid two days instead of
/// one, the 100,000-won card recharges in units of 5,000 won, the 5,000-won card holds at most
/// 300,000 won even when named (its product cap is below the legal one).
#[test]
fn products_have_their_own_validity_recharge_unit_and_cap() {
    let mut s = Script::new();
    s.active_card(CARD, 50_000);
    s.active_card(OTHER, 100_000);
    let one_day_s = 24 * 3600;
    let valid_until =
        |s: &Script, pin| u64::from(s.shard.card(s.now_ms, pin).unwrap().valid_until_s);
    assert_eq!(valid_until(&s, CARD) - valid_until(&s, OTHER), one_day_s, "two days against one");
    s.expect(load(OTHER, 15_000), ResultCode::Approved);
    s.expect(load(CARD, 15_000), ResultCode::RechargeUnitInvalid);
    s.now_ms += (one_day_s + 60) * 1000;
    s.expect(sale(OTHER, PASSWORD, 1), ResultCode::CardExpired);
    s.expect(sale(CARD, PASSWORD, 1), ResultCode::Approved);

    const SMALL: PinHash = 0x5A11;
    s.active_card(SMALL, 5_000);
    s.expect(
        Body::Register { pin_hash: SMALL, holder_ref: 3, verified_name: true },
        ResultCode::Approved,
    );
    s.expect(load(SMALL, 300_000), ResultCode::BalanceCapExceeded);
    s.expect(load(SMALL, 290_000), ResultCode::Approved);
}

#[test]
fn a_recharge_of_a_promotional_card_extends_its_validity() {
    let mut s = Script::new();
    // test_min: 20,000-won cards are promotional (+365 days per recharge); validity is one day.
    s.active_card(CARD, 20_000);
    s.active_card(OTHER, 10_000);
    s.expect(load(CARD, 10_000), ResultCode::Approved);
    s.expect(load(OTHER, 10_000), ResultCode::Approved);
    s.now_ms += 2 * 24 * 3600 * 1000;
    s.expect(sale(OTHER, PASSWORD, 1), ResultCode::CardExpired);
    s.expect(sale(CARD, PASSWORD, 1), ResultCode::Approved);
    s.now_ms += 365 * 24 * 3600 * 1000;
    s.expect(sale(CARD, PASSWORD, 1), ResultCode::CardExpired);
}

#[test]
fn a_consigned_card_is_sold_only_by_its_partner() {
    let mut s = Script::new();
    s.issue(CARD, 10_000);
    let consign = |partner_id, commission_per_mille| Body::Consign {
        pin_hash: CARD,
        partner_id,
        commission_per_mille,
    };
    s.expect(consign(0, 30), ResultCode::ChannelInvalid);
    s.expect(consign(12, 1001), ResultCode::ChannelInvalid);
    s.expect(
        Body::Consign { pin_hash: OTHER, partner_id: 12, commission_per_mille: 30 },
        ResultCode::CardNotFound,
    );
    let (_, consigned) = s.expect(consign(12, 30), ResultCode::Approved);
    assert_eq!(consigned.amount_won, 10_000);
    s.expect(consign(13, 30), ResultCode::CardConsignedElsewhere);
    s.expect(sell(CARD, 7, 1), ResultCode::CardConsignedElsewhere);
    s.expect(sell(CARD, 12, 1), ResultCode::Approved);
    s.expect(consign(12, 30), ResultCode::CardAlreadySold);
}

#[test]
fn refund_respects_the_cap_and_closed_state_rules() {
    let mut s = Script::new();
    s.active_card(CARD, 100_000);
    let (sale_op, _) = s.expect(sale(CARD, PASSWORD, 50_000), ResultCode::Approved);
    s.expect(load(CARD, 450_000), ResultCode::Approved);
    s.expect(
        Body::Refund { pin_hash: CARD, original_op_id: sale_op, amount_won: 10_000 },
        ResultCode::BalanceCapExceeded,
    );
    // A reversal is never refused for business reasons: it may pass the cap.
    let (_, reversed) =
        s.expect(Body::Reverse { pin_hash: CARD, original_op_id: sale_op }, ResultCode::Approved);
    assert_eq!(reversed.balance_won, 550_000);
    s.expect(
        Body::Refund { pin_hash: OTHER, original_op_id: sale_op, amount_won: 1 },
        ResultCode::CardNotFound,
    );
}

/// Codes only the front end answers (framing, formats, overload); covered end to end.
/// Foreign PINs: imports fill a product's pool once per code; a conversion debits the card
/// the product's price (test_min: product 1, 10 dollars, 14,000 won) and hands out the oldest
/// PIN, the same one again on a retry; an empty pool, an unknown product, a card too poor and
/// a wrong password are refused; a conversion cannot be reversed or refunded.
#[test]
fn foreign_pins_are_imported_once_and_converted_from_the_balance() {
    let mut s = Script::new();
    let import = |code: &str, product_id| Body::ForeignImport {
        foreign_hash: 0xF0 << 64 | u128::from(code.as_bytes()[code.len() - 1]),
        product_id,
        code: ForeignCode::new(code.as_bytes()).unwrap(),
    };
    let (_, first) = s.expect(import("US-1", 1), ResultCode::Approved);
    assert_eq!(first.amount_won, 1, "the pool holds one PIN");
    s.expect(import("US-2", 1), ResultCode::Approved);
    s.expect(import("US-2", 1), ResultCode::ForeignPinExists);
    s.expect(import("US-3", 9), ResultCode::ForeignProductUnknown);
    assert_eq!(s.shard.foreign_stock(1), 2);

    s.active_card(CARD, 50_000);
    let convert = |product_id, password_mac| Body::ForeignConvert {
        pin_hash: CARD,
        password_mac,
        product_id,
    };
    s.expect(convert(9, PASSWORD), ResultCode::ForeignProductUnknown);
    s.expect(convert(1, WRONG), ResultCode::PasswordInvalid);
    s.expect(convert(2, PASSWORD), ResultCode::ForeignPinUnavailable);
    let (converted, reply) = s.expect(convert(1, PASSWORD), ResultCode::Approved);
    assert_eq!((reply.amount_won, reply.balance_won), (14_000, 36_000));
    assert_eq!(
        s.shard.foreign_code(converted).unwrap().as_bytes(),
        b"US-1",
        "the oldest PIN first"
    );
    let retry = s.run_at(converted, 0, convert(1, PASSWORD));
    assert!(retry.replayed && retry.balance_won == 36_000);
    assert_eq!(
        s.shard.foreign_code(converted).unwrap().as_bytes(),
        b"US-1",
        "a retry gets the same PIN"
    );
    s.expect(sale(CARD, PASSWORD, 23_000), ResultCode::Approved);
    s.expect(convert(1, PASSWORD), ResultCode::InsufficientFunds);
    s.expect(
        Body::Reverse { pin_hash: CARD, original_op_id: converted },
        ResultCode::ReversalNotSupported,
    );
    s.expect(
        Body::Refund { pin_hash: CARD, original_op_id: converted, amount_won: 1_000 },
        ResultCode::ReversalNotSupported,
    );
    assert_eq!(s.shard.foreign_stock(1), 1);
    assert_eq!(s.balance(CARD), (13_000, 13_000));

    // The pool and the conversions survive a snapshot.
    let restored = Shard::from_snapshot_bytes(&s.shard.to_snapshot_bytes()).unwrap();
    assert_eq!(
        (restored.foreign_stock(1), restored.foreign_code(converted)),
        (1, s.shard.foreign_code(converted))
    );
}

/// The owner (call switch) of the scripts' sessions.
const OWNER: u32 = 7;

fn session_open(
    pin_hash: PinHash,
    session_id: u128,
    destination: u64,
    requested_s: u32,
    category: u8,
) -> Body {
    Body::SessionStart(Box::new(SessionOpen {
        pin_hash,
        session_id,
        destination,
        requested_s,
        owner_id: OWNER,
        password_mac: 0,
        category,
    }))
}

fn session_start(
    pin_hash: PinHash,
    session_id: u128,
    destination: &str,
    requested_s: u32,
    category: u8,
) -> Body {
    session_open(
        pin_hash,
        session_id,
        pack_destination(destination.as_bytes()).expect("a valid number"),
        requested_s,
        category,
    )
}

/// Request numbers for the scripts' reports: one counter for all, so each report's is above
/// every earlier one (gaps are allowed).
fn next_seq() -> u32 {
    static SEQ: AtomicU32 = AtomicU32::new(1);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

fn session_update(
    pin_hash: PinHash,
    session_id: u128,
    used_total_s: u32,
    requested_s: u32,
) -> Body {
    Body::SessionUpdate { pin_hash, session_id, seq: next_seq(), used_total_s, requested_s }
}

fn session_end(pin_hash: PinHash, session_id: u128, used_total_s: u32) -> Body {
    Body::SessionEnd { pin_hash, session_id, seq: next_seq(), used_total_s }
}

/// (granted seconds, final-unit action, tariff id) of a session reply.
fn granted(reply: &Reply) -> (u32, u8, u16) {
    let grant = SessionGrant::of_reply(reply);
    (grant.granted_s, grant.final_unit, grant.tariff_id)
}

/// Rating: used seconds are rounded up to the tariff's increment, a longer first increment is
/// billed whole, and the connect fee comes with the first second (0 seconds cost nothing).
#[test]
fn tariffs_rate_by_increment_first_increment_and_connect_fee() {
    let config = EngineConfig::test_min();
    let tariff = |category: u8, number: &str| {
        config.tariff_for(category, number.as_bytes()).expect("a tariff").clone()
    };
    // Longest prefix: "010..." is the mobile tariff, other numbers the domestic one.
    let per_second = tariff(2, "0212345678");
    let six_seconds = tariff(2, "01012345678");
    let per_minute = tariff(2, "0014155550100");
    let premium = tariff(3, "0601234567");
    assert_eq!(
        [per_second.tariff_id, six_seconds.tariff_id, per_minute.tariff_id, premium.tariff_id],
        [1, 2, 3, 6]
    );
    assert!(config.tariff_for(3, b"0212345678").is_none());
    let costs = |tariff: &pinswitch_core::Tariff, seconds: &[u64]| {
        seconds.iter().map(|s| tariff.cost_won(*s)).collect::<Vec<_>>()
    };
    // 1 s at 2 won.
    assert_eq!(costs(&per_second, &[0, 1, 59, 61, 7200]), [0, 2, 118, 122, 14_400]);
    // 6 s at 12 won, connect fee 10.
    assert_eq!(costs(&six_seconds, &[0, 1, 6, 7, 60]), [0, 22, 22, 34, 130]);
    // 60 s at 300 won, connect fee 50.
    assert_eq!(costs(&per_minute, &[1, 60, 61, 120, 121]), [350, 350, 650, 650, 950]);
    // A whole first minute (10 increments of 6 s at 30 won), then 6 s steps.
    assert_eq!(costs(&premium, &[1, 60, 61, 66, 67]), [300, 300, 330, 330, 360]);
}

/// A session reserves from the available balance that holds use (a call and a payment hold
/// never overdraw the card), grants what the card can afford with the final-unit indication
/// when it cannot afford more, heals a lost update from the cumulative use, and debits use
/// beyond the grant, capped at what is available.
#[test]
fn sessions_reserve_from_the_shared_balance_heal_lost_updates_and_cap_over_use() {
    let mut s = Script::new();
    s.active_card(CARD, 10_000);
    // 2 won a second: 100 s reserve 200 won.
    let (_, reply) = s.expect(session_start(CARD, 1, "0212345678", 100, 2), ResultCode::Approved);
    assert_eq!(granted(&reply), (100, FINAL_UNIT_NONE, 1));
    assert_eq!(SessionGrant::of_reply(&reply).validity_s, 120);
    assert_eq!((reply.amount_won, reply.balance_won, reply.available_won), (0, 10_000, 9_800));
    let (hold_id, _) = s.expect(authorize(CARD, 9_000, 0), ResultCode::Approved);
    // 100 s used: 200 won debited; 800 won left affords 400 s of the 600 asked: the last grant.
    let (_, reply) = s.expect(session_update(CARD, 1, 100, 600), ResultCode::Approved);
    assert_eq!(granted(&reply), (400, FINAL_UNIT_TERMINATE, 1));
    assert_eq!((reply.amount_won, reply.balance_won, reply.available_won), (200, 9_800, 0));
    s.expect(authorize(CARD, 1, 0), ResultCode::InsufficientFunds);
    s.expect(sale(CARD, PASSWORD, 1), ResultCode::InsufficientFunds);
    // The update at 300 s is lost; the one at 400 s charges 300 s (600 won) at once.
    let (_, reply) = s.expect(session_update(CARD, 1, 400, 600), ResultCode::Approved);
    assert_eq!(granted(&reply), (100, FINAL_UNIT_TERMINATE, 1));
    assert_eq!((reply.amount_won, reply.balance_won, reply.available_won), (600, 9_200, 0));
    // A stale lower report (a late retransmission under another op id) debits nothing.
    let (_, reply) = s.expect(session_update(CARD, 1, 350, 600), ResultCode::Approved);
    assert_eq!((reply.amount_won, granted(&reply)), (0, (100, FINAL_UNIT_TERMINATE, 1)));
    // The state survives a snapshot.
    s.shard = Shard::from_snapshot_bytes(&s.shard.to_snapshot_bytes()).unwrap();
    assert_eq!(s.shard.session_count(), 1);
    // The call ran 200 s past the grant: 400 won due, 200 available: capped, never below zero.
    let (_, reply) = s.expect(session_end(CARD, 1, 600), ResultCode::SessionUsageCapped);
    assert_eq!((reply.amount_won, reply.balance_won, reply.available_won), (200, 9_000, 0));
    assert_eq!(granted(&reply), (0, FINAL_UNIT_NONE, 1));
    s.expect(Body::Void { pin_hash: CARD, hold_id }, ResultCode::Approved);
    assert_eq!(s.balance(CARD), (9_000, 9_000));
    assert_eq!(s.shard.session_count(), 0);
    s.expect(session_end(CARD, 1, 600), ResultCode::SessionNotFound);

    // Over-use within the balance is debited whole; an update capped at zero grants nothing.
    s.active_card(OTHER, 5_000);
    s.expect(session_start(OTHER, 2, "0212345678", 60, 2), ResultCode::Approved);
    let (_, reply) = s.expect(session_update(OTHER, 2, 1_000, 60), ResultCode::Approved);
    assert_eq!((reply.amount_won, reply.balance_won, reply.available_won), (2_000, 3_000, 2_880));
    let (_, reply) = s.expect(session_update(OTHER, 2, 3_000, 60), ResultCode::SessionUsageCapped);
    assert_eq!(
        (reply.amount_won, reply.balance_won, granted(&reply)),
        (3_000, 0, (0, FINAL_UNIT_TERMINATE, 1))
    );
    let (_, reply) = s.expect(session_end(OTHER, 2, 3_000), ResultCode::Approved);
    assert_eq!((reply.amount_won, reply.balance_won), (0, 0));
    // With nothing available a call is not started.
    s.expect(session_start(OTHER, 3, "0212345678", 60, 2), ResultCode::InsufficientFunds);
}

/// Connect fee and increments in the reservation, the final unit at the start, replays,
/// limits per card and per shard, and every refusal of a session.
#[test]
fn session_grants_limits_replays_and_refusals() {
    let mut s = Script::new();
    s.active_card(CARD, 10_000);
    // Mobile: 60 s reserve 10 + 10 x 12 = 130 won.
    let start = session_start(CARD, 10, "01012345678", 60, 2);
    let (start_op, reply) = s.expect(start.clone(), ResultCode::Approved);
    assert_eq!((granted(&reply), reply.available_won), ((60, FINAL_UNIT_NONE, 2), 9_870));
    let replay = s.run_at(start_op, 0, start);
    assert_eq!(replay, Reply { replayed: true, ..reply });
    let reused = s.run_at(start_op, 0, session_start(CARD, 10, "01012345678", 90, 2));
    assert_eq!(
        (reused.result_code(), reused.field),
        (ResultCode::OpIdReused, Field::Seconds as u8)
    );
    let reused = s.run_at(start_op, 0, session_start(CARD, 10, "01012345679", 60, 2));
    assert_eq!(
        (reused.result_code(), reused.field),
        (ResultCode::OpIdReused, Field::Destination as u8)
    );
    s.expect(session_start(CARD, 10, "0212345678", 60, 2), ResultCode::SessionExists);
    // International: a whole first minute at 300 plus the connect fee 50.
    let (_, reply) =
        s.expect(session_start(CARD, 11, "0014155550100", 30, 2), ResultCode::Approved);
    assert_eq!((granted(&reply), reply.available_won), ((30, FINAL_UNIT_NONE, 3), 9_520));
    s.expect(session_start(CARD, 12, "0212345678", 60, 2), ResultCode::SessionLimitPerCard);
    // 7 s used: 34 won; the next 60 s (to 67 s, 72 billed) reserve 154 - 34 = 120.
    let (_, reply) = s.expect(session_update(CARD, 10, 7, 60), ResultCode::Approved);
    assert_eq!(
        (reply.amount_won, granted(&reply), reply.available_won),
        (34, (60, FINAL_UNIT_NONE, 2), 9_496)
    );
    // 0 asks for the default grant (60 s here); past the maximum (600 s) is cut to it.
    let (_, reply) = s.expect(session_update(CARD, 11, 30, 0), ResultCode::Approved);
    assert_eq!((reply.amount_won, granted(&reply)), (350, (60, FINAL_UNIT_NONE, 3)));
    let (_, reply) = s.expect(session_update(CARD, 11, 30, 100_000), ResultCode::Approved);
    assert_eq!((reply.amount_won, granted(&reply)), (0, (600, FINAL_UNIT_NONE, 3)));
    // A card with live sessions is not paid out.
    s.expect(
        Body::BalanceRefund { pin_hash: CARD, payout_account_ref: 5 },
        ResultCode::HoldsOutstanding,
    );
    let (_, reply) = s.expect(session_end(CARD, 10, 7), ResultCode::Approved);
    assert_eq!(reply.amount_won, 0);
    let (_, reply) = s.expect(session_end(CARD, 11, 30), ResultCode::Approved);
    assert_eq!((reply.amount_won, reply.balance_won, reply.available_won), (0, 9_616, 9_616));
    // Another card's session is not found on this card.
    s.active_card(OTHER, 10_000);
    s.expect(session_start(OTHER, 20, "0212345678", 60, 2), ResultCode::Approved);
    s.expect(session_update(CARD, 20, 10, 60), ResultCode::SessionNotFound);
    // A blocked card's session is charged and ends: no more seconds.
    s.expect(Body::Block { pin_hash: OTHER, reason: 1 }, ResultCode::Approved);
    let (_, reply) = s.expect(session_update(OTHER, 20, 10, 60), ResultCode::Approved);
    assert_eq!((reply.amount_won, granted(&reply)), (20, (0, FINAL_UNIT_TERMINATE, 1)));
    s.expect(session_start(OTHER, 21, "0212345678", 60, 2), ResultCode::CardBlocked);
    s.expect(session_end(OTHER, 20, 10), ResultCode::Approved);
    // Refusals: no tariff, a malformed number, an unknown category, a category the product
    // does not pay for, no session id.
    s.expect(session_start(CARD, 30, "0212345678", 60, 3), ResultCode::TariffNotFound);
    s.expect(session_open(CARD, 30, 0, 60, 2), ResultCode::DestinationInvalid);
    s.expect(session_start(CARD, 30, "0212345678", 60, 9), ResultCode::CategoryInvalid);
    s.expect(session_start(CARD, 0, "0212345678", 60, 2), ResultCode::FormatError);
    s.active_card(0x5000, 5_000);
    s.expect(session_start(0x5000, 31, "0601234567", 60, 3), ResultCode::CategoryNotAllowed);
    // The final unit at the start: 500 won afford one international minute (350), not two.
    s.expect(sale(0x5000, PASSWORD, 4_500), ResultCode::Approved);
    let (_, reply) =
        s.expect(session_start(0x5000, 32, "0014155550100", 600, 2), ResultCode::Approved);
    assert_eq!((granted(&reply), reply.available_won), ((60, FINAL_UNIT_TERMINATE, 3), 150));
    // First increment on a premium line: 60 s billed whole, then 6 s steps (30 won each).
    let (_, reply) = s.expect(session_start(CARD, 33, "0601234567", 66, 3), ResultCode::Approved);
    assert_eq!((granted(&reply), reply.available_won), ((66, FINAL_UNIT_NONE, 6), 9_616 - 330));
    let (_, reply) = s.expect(session_end(CARD, 33, 5), ResultCode::Approved);
    assert_eq!((reply.amount_won, reply.balance_won), (300, 9_316));
    // Per shard: 8 live sessions at most.
    let mut live = s.shard.session_count() as u128;
    for pin_hash in [0x7001, 0x7002, 0x7003, 0x7004] {
        s.active_card(pin_hash, 10_000);
        for _ in 0..2 {
            if live < 8 {
                live += 1;
                s.expect(
                    session_start(pin_hash, 100 + live, "0212345678", 60, 2),
                    ResultCode::Approved,
                );
            }
        }
    }
    assert_eq!(s.shard.session_count(), 8);
    s.expect(session_start(0x7004, 200, "0212345678", 60, 2), ResultCode::SessionLimitPerShard);
}

/// A server command (Tick, SessionsClose, Configure): no op id, journaled only on a change.
fn system(s: &mut Script, body: Body) -> pinswitch_core::Applied {
    let applied = s.shard.apply(s.now_ms, &Command { op_id: 0, deadline_at_ms: 0, body });
    s.shard.check_invariants().unwrap();
    s.notices.extend(applied.notices());
    applied
}

/// The (session id, kind) of the notices raised since the last look.
fn notices(s: &mut Script) -> Vec<(u128, u8)> {
    let taken = std::mem::take(&mut s.notices);
    taken.into_iter().map(|SessionNoticeOut { session_id, kind, .. }| (session_id, kind)).collect()
}

/// Request numbers, silence expiry (twice the validity: 240 s in `test_min`), the late report
/// that is still charged, and the bound on remembered expired sessions.
#[test]
fn silent_sessions_expire_and_late_reports_are_still_charged() {
    let mut s = Script::new();
    s.active_card(CARD, 10_000);
    // Domestic, 2 won a second: 60 s reserve 120 won.
    let (_, reply) = s.expect(session_start(CARD, 1, "0212345678", 60, 2), ResultCode::Approved);
    assert_eq!(reply.available_won, 9_880);
    assert_eq!(s.shard.next_expiry_ms(), Some(T0 + 240_000));
    let update = |seq, used_total_s| Body::SessionUpdate {
        pin_hash: CARD,
        session_id: 1,
        seq,
        used_total_s,
        requested_s: 60,
    };
    let (_, reply) = s.expect(update(5, 30), ResultCode::Approved);
    assert_eq!((reply.amount_won, reply.balance_won, reply.available_won), (60, 9_940, 9_820));
    // A report numbered at or below the last one applied is stale: nothing changes.
    s.expect(update(5, 40), ResultCode::SessionSequenceStale);
    s.expect(update(4, 40), ResultCode::SessionSequenceStale);
    assert_eq!(s.balance(CARD), (9_940, 9_820));
    notices(&mut s);
    // Silent until 1 ms before its deadline: still live.
    s.now_ms += 240_000 - 1;
    assert!(!system(&mut s, Body::Tick).changed);
    assert_eq!(s.shard.session_count(), 1);
    s.now_ms += 1;
    assert!(system(&mut s, Body::Tick).changed);
    assert_eq!((s.shard.session_count(), s.shard.expired_session_count()), (0, 1));
    assert_eq!(s.balance(CARD), (9_940, 9_940), "the reservation is released");
    assert_eq!(notices(&mut s), [(1, NOTICE_EXPIRED)]);
    // The late report is still charged (100 s: 200 won, 60 charged before), with no grant.
    let (_, reply) = s.expect(update(6, 100), ResultCode::SessionExpiredCharged);
    assert_eq!(
        (reply.amount_won, reply.balance_won, granted(&reply)),
        (140, 9_800, (0, FINAL_UNIT_TERMINATE, 1))
    );
    s.expect(update(6, 120), ResultCode::SessionSequenceStale);
    // Its id stays taken until the late END, which charges the rest and forgets it.
    s.expect(session_start(CARD, 1, "0212345678", 60, 2), ResultCode::SessionExists);
    let (_, reply) = s.expect(
        Body::SessionEnd { pin_hash: CARD, session_id: 1, seq: 7, used_total_s: 110 },
        ResultCode::SessionExpiredCharged,
    );
    assert_eq!((reply.amount_won, reply.balance_won), (20, 9_780));
    s.expect(
        Body::SessionEnd { pin_hash: CARD, session_id: 1, seq: 8, used_total_s: 110 },
        ResultCode::SessionNotFound,
    );
    assert_eq!(s.shard.expired_session_count(), 0);

    // At most `expired_sessions_max` (4) are remembered: the first to expire is forgotten.
    s.active_card(OTHER, 10_000);
    s.active_card(0x7001, 10_000);
    for (pin_hash, session_id) in [(CARD, 11), (CARD, 12), (OTHER, 13), (OTHER, 14), (0x7001, 15)] {
        s.expect(session_start(pin_hash, session_id, "0212345678", 60, 2), ResultCode::Approved);
    }
    s.now_ms += 240_000;
    assert!(system(&mut s, Body::Tick).changed);
    assert_eq!((s.shard.session_count(), s.shard.expired_session_count()), (0, 4));
    let late =
        |pin_hash, session_id| Body::SessionEnd { pin_hash, session_id, seq: 1, used_total_s: 10 };
    s.expect(late(CARD, 11), ResultCode::SessionNotFound);
    assert_eq!(s.balance(CARD), (9_780, 9_780), "a forgotten session is not charged");
    // The remembered ones survive a snapshot and are charged.
    s.shard = Shard::from_snapshot_bytes(&s.shard.to_snapshot_bytes()).unwrap();
    assert_eq!(s.shard.expired_session_count(), 4);
    let (_, reply) = s.expect(late(CARD, 12), ResultCode::SessionExpiredCharged);
    assert_eq!((reply.amount_won, reply.balance_won), (20, 9_760));
    // Lowering the bound forgets the oldest at once (found by the model test: the invariant
    // and the next snapshot's restore failed until the next expiry).
    let mut fewer = EngineConfig::test_min();
    fewer.expired_sessions_max = 1;
    assert!(system(&mut s, Body::configure(&fewer)).changed);
    assert_eq!(s.shard.expired_session_count(), 1);
    s.shard = Shard::from_snapshot_bytes(&s.shard.to_snapshot_bytes()).unwrap();
    s.expect(late(OTHER, 13), ResultCode::SessionNotFound);
    s.expect(late(0x7001, 15), ResultCode::SessionExpiredCharged);
}

/// EVENT_CHARGE, the session password rule, time-of-day bands, PRICE_QUOTE, notices and the
/// audit's close.
#[test]
fn event_charges_bands_quotes_notices_and_audit_closes() {
    let mut s = Script::new();
    s.active_card(CARD, 10_000);
    let number = |digits: &str| pack_destination(digits.as_bytes()).expect("a valid number");
    let event = |digits: &str, units, password_mac| Body::EventCharge {
        pin_hash: CARD,
        password_mac,
        destination: pack_destination(digits.as_bytes()).expect("a valid number"),
        units,
        category: 3,
    };
    s.expect(event("15881234", 0, 0), ResultCode::UnitsInvalid);
    s.expect(event("0601234567", 1, 0), ResultCode::EventNotPriced);
    s.expect(event("0212345678", 1, 0), ResultCode::TariffNotFound);
    let (charged, reply) = s.expect(event("15881234", 3, 0), ResultCode::Approved);
    assert_eq!((reply.amount_won, reply.balance_won), (1_500, 8_500));
    // REFUND and REVERSE treat it like a SALE.
    let (_, reply) = s.expect(
        Body::Refund { pin_hash: CARD, original_op_id: charged, amount_won: 500 },
        ResultCode::Approved,
    );
    assert_eq!(reply.balance_won, 9_000);
    let (_, reply) =
        s.expect(Body::Reverse { pin_hash: CARD, original_op_id: charged }, ResultCode::Approved);
    assert_eq!((reply.amount_won, reply.balance_won), (1_000, 10_000));

    // Passwords: optional, but a wrong one counts, and a locked card neither calls nor pays.
    s.expect(event("15881234", 1, WRONG), ResultCode::PasswordInvalid);
    s.expect(event("15881234", 1, PASSWORD), ResultCode::Approved);
    s.expect(event("15881234", 1, WRONG), ResultCode::PasswordInvalid);
    s.expect(event("15881234", 1, WRONG), ResultCode::PasswordInvalid);
    s.expect(event("15881234", 1, WRONG), ResultCode::PasswordTriesExceeded);
    s.expect(session_start(CARD, 40, "0212345678", 60, 2), ResultCode::PasswordTriesExceeded);
    s.expect(event("15881234", 1, 0), ResultCode::PasswordTriesExceeded);
    s.expect(Body::Unblock { pin_hash: CARD }, ResultCode::Approved);
    let mut strict = EngineConfig::test_min();
    strict.session_password_required = true;
    assert!(system(&mut s, Body::configure(&strict)).changed);
    s.expect(event("15881234", 1, 0), ResultCode::PasswordInvalid);
    s.expect(event("15881234", 1, PASSWORD), ResultCode::Approved);
    assert!(system(&mut s, Body::configure(&EngineConfig::test_min())).changed);
    assert_eq!(s.balance(CARD), (9_000, 9_000));

    // Time-of-day bands: "002" costs 100 won a minute from 22:00 to 08:00 local, 200 by day.
    let config = EngineConfig::test_min();
    let banded = config.tariff_for(2, b"0021234567").expect("a tariff").clone();
    let day_s = 20_000 * 86_400;
    let at =
        |hours: u64, minutes: u64, seconds: u64| day_s + hours * 3_600 + minutes * 60 + seconds;
    // The first minute is rated whole at the start's rate; later pieces split at 22:00.
    assert_eq!(banded.cost_from_won(at(21, 58, 30), 30), 200);
    assert_eq!(banded.cost_from_won(at(21, 58, 30), 150), 200 + 200 + 100);
    assert_eq!(banded.cost_from_won(at(7, 59, 0), 180), 100 + 2 * 200);
    // Midnight is no boundary when the rate goes on: as the flat tariff.
    assert_eq!(banded.cost_from_won(at(23, 59, 0), 180), 300);
    for used_s in 0..400 {
        assert!(
            banded.cost_from_won(at(21, 58, 30), used_s)
                <= banded.cost_from_won(at(21, 58, 30), used_s + 1)
        );
    }
    // A call at 21:58:30 local (T0 is 17:00 in Korea).
    s.now_ms = T0 + (4 * 3_600 + 58 * 60 + 30) * 1_000;
    let quote = s.shard.quote(s.now_ms, Some(CARD), 2, number("0021234567"), 150, 0);
    assert_eq!(
        (quote.code, quote.tariff_id, quote.rate_won, quote.duration_cost_won),
        (ResultCode::Approved.as_u16(), 5, 200, 500)
    );
    assert_eq!(
        (quote.available_won, quote.affordable_s),
        (9_000, 600),
        "600 s (the grant maximum) cost 1,300"
    );
    let (_, reply) = s.expect(session_start(CARD, 50, "0021234567", 60, 2), ResultCode::Approved);
    assert_eq!((granted(&reply), reply.available_won), ((60, FINAL_UNIT_NONE, 5), 8_800));
    let (_, reply) = s.expect(session_end(CARD, 50, 150), ResultCode::Approved);
    assert_eq!((reply.amount_won, reply.balance_won), (500, 8_500));
    let quote = s.shard.quote(s.now_ms, None, 3, number("15881234"), 0, 4);
    assert_eq!(
        (quote.code, quote.event_won, quote.event_cost_won),
        (ResultCode::Approved.as_u16(), 500, 2_000)
    );
    assert_eq!(
        s.shard.quote(s.now_ms, None, 3, number("0212345678"), 60, 0).code,
        ResultCode::TariffNotFound.as_u16()
    );
    assert_eq!(
        s.shard.quote(s.now_ms, Some(0xDEAD), 2, number("0212345678"), 60, 0).code,
        ResultCode::CardNotFound.as_u16()
    );

    // Notices to a card's live sessions: re-authorize after a recharge or an unblock, abort
    // on a block, and a warning when the available balance falls below 1,000 won.
    notices(&mut s);
    s.expect(session_start(CARD, 60, "0212345678", 60, 2), ResultCode::Approved);
    assert_eq!(notices(&mut s), []);
    s.expect(load(CARD, 10_000), ResultCode::Approved);
    assert_eq!(notices(&mut s), [(60, NOTICE_REAUTHORIZE)]);
    let available_won = s.balance(CARD).1;
    s.expect(sale(CARD, PASSWORD, available_won - 999), ResultCode::Approved);
    assert_eq!(notices(&mut s), [(60, NOTICE_LOW_BALANCE)]);
    s.expect(sale(CARD, PASSWORD, 1), ResultCode::Approved);
    assert_eq!(notices(&mut s), [], "only the crossing warns");
    s.expect(Body::Block { pin_hash: CARD, reason: 1 }, ResultCode::Approved);
    assert_eq!(notices(&mut s), [(60, NOTICE_ABORT)]);
    s.expect(Body::Unblock { pin_hash: CARD }, ResultCode::Approved);
    assert_eq!(notices(&mut s), [(60, NOTICE_REAUTHORIZE)]);

    // The audit's close: only the named owner's sessions silent since the given time.
    let held_won = s.balance(CARD).0 - s.balance(CARD).1;
    assert_eq!(held_won, 120);
    let close = |owner_id, silent_since_ms| Body::SessionsClose {
        owner_id,
        silent_since_ms,
        session_ids: vec![60, 61],
    };
    let now_ms = s.now_ms;
    assert!(!system(&mut s, close(OWNER + 1, now_ms)).changed);
    assert!(!system(&mut s, close(OWNER, now_ms - 1)).changed);
    let closed = system(&mut s, close(OWNER, now_ms));
    assert_eq!((closed.changed, closed.reply.amount_won), (true, 1));
    assert_eq!(s.shard.session_count(), 0);
    assert_eq!(s.balance(CARD).0, s.balance(CARD).1, "the reservation is released");
    let (count, digest) = s.shard.owner_sessions(OWNER);
    assert_eq!((count, digest), (0, 0));
}

const FRONT_END_ONLY: &[ResultCode] = &[
    ResultCode::PasswordFormatInvalid,
    ResultCode::PinFormatInvalid,
    ResultCode::SessionAuditMismatch,
    ResultCode::UnknownMessageType,
    ResultCode::BatchTooLarge,
    ResultCode::FrameTooLarge,
    ResultCode::ChecksumMismatch,
    ResultCode::UnsupportedVersion,
    ResultCode::ShuttingDown,
    ResultCode::InternalError,
    // The front door's roles and guess budget (switch/server/src/access.rs; driven by
    // tests/tests/e2e_trust.rs).
    ResultCode::NotPermitted,
    ResultCode::AnswerWithheld,
    // The shard's refusal for want of journal space, before the engine runs (driven by
    // tests/tests/e2e_disk_full.rs).
    ResultCode::StorageFull,
];

#[test]
fn every_engine_result_code_is_reached() {
    // Run every script on one shared record of codes.
    let mut seen = BTreeSet::new();
    for script in [
        collect(card_life_issue_activate_load_sale),
        collect(the_product_mix_limits_what_a_card_pays_for),
        collect(wrong_passwords_lock_the_card_and_a_right_one_resets_the_count),
        collect(holds_capture_void_expire_and_limits),
        collect(reversals_in_both_orders_and_refunds),
        collect(a_fence_makes_an_op_ids_outcome_final),
        collect(exactly_once_replay_reuse_window_deadline),
        collect(evicted_records_answer_too_old_never_a_second_execution),
        collect(refund_respects_the_cap_and_closed_state_rules),
        collect(channel_sale_gift_claim_block_unblock),
        collect(a_consigned_card_is_sold_only_by_its_partner),
        collect(balance_refund_follows_the_used_share_rule_and_closes_the_card),
        collect(cards_expire_at_the_end_of_validity_and_the_rest_is_breakage),
        collect(reversals_naming_future_originals_never_raise_the_floor_past_the_clock),
        collect(foreign_pins_are_imported_once_and_converted_from_the_balance),
        collect(products_have_their_own_validity_recharge_unit_and_cap),
        collect(sessions_reserve_from_the_shared_balance_heal_lost_updates_and_cap_over_use),
        collect(session_grants_limits_replays_and_refusals),
        collect(silent_sessions_expire_and_late_reports_are_still_charged),
        collect(event_charges_bands_quotes_notices_and_audit_closes),
    ] {
        seen.extend(script);
    }
    let missing: Vec<&str> = ResultCode::ALL
        .iter()
        .filter(|code| !FRONT_END_ONLY.contains(code))
        .filter(|code| !seen.contains(&code.as_u16()))
        .map(|code| code.name())
        .collect();
    assert!(missing.is_empty(), "no engine script reaches {missing:?}");
}

thread_local! {
    static SEEN: std::cell::RefCell<BTreeSet<u16>> = const { std::cell::RefCell::new(BTreeSet::new()) };
}

/// Runs a script and returns the codes its shards answered.
fn collect(script: fn()) -> BTreeSet<u16> {
    SEEN.with(|seen| seen.borrow_mut().clear());
    script();
    SEEN.with(|seen| seen.borrow().clone())
}

impl Drop for Script {
    fn drop(&mut self) {
        SEEN.with(|seen| seen.borrow_mut().extend(self.seen.iter().copied()));
    }
}
