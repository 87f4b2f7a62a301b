//! The effects `Shard::apply` reports beside its reply, one script per kind: a hold expiring, a
//! session expiring for silence or closed by the audit, a card expiring into breakage, a foreign
//! PIN handed out (and again on its replay), a notice to a card's calls. Every script also
//! replays its journal (the commands that changed state, at their times) into a fresh shard and
//! requires the same effects, as the settlement exporter's shadow engine relies on.

use pinswitch_core::{
    Applied, Body, Command, Effect, EngineConfig, ForeignCode, Ms, OpId, PinHash, SessionOpen,
    Shard,
};
use pinswitch_core::{SessionNoticeOut, pack_destination};
use pinswitch_protocol::{NOTICE_EXPIRED, NOTICE_REAUTHORIZE, ResultCode, op_id_at};

const T0: Ms = 1_800_000_000_000;
const CARD: PinHash = 0xA11CE;
const PASSWORD: u64 = 4321;
const OWNER: u32 = 7;

/// A shard, a clock, an op-id counter, and the journal: every command that changed state.
struct Script {
    shard: Shard,
    now_ms: Ms,
    next_op: u128,
    journal: Vec<(Ms, Command, Applied)>,
}

impl Script {
    fn new() -> Script {
        Script {
            shard: Shard::new(0, 1, EngineConfig::test_min()),
            now_ms: T0,
            next_op: 1,
            journal: Vec::new(),
        }
    }

    fn op_id(&mut self) -> OpId {
        self.next_op += 1;
        op_id_at(self.now_ms, self.next_op)
    }

    fn apply(&mut self, command: Command) -> Applied {
        let applied = self.shard.apply(self.now_ms, &command);
        self.shard.check_invariants().unwrap();
        if applied.changed {
            self.journal.push((self.now_ms, command, applied.clone()));
        }
        applied
    }

    /// An op under `op_id` that must answer `code`.
    fn op_as(&mut self, op_id: OpId, body: Body, code: ResultCode) -> Applied {
        let applied = self.apply(Command { op_id, deadline_at_ms: 0, body: body.clone() });
        assert_eq!(applied.reply.result_code(), code, "{body:?} -> {applied:?}");
        applied
    }

    /// An op under a fresh op id; returns the op id too.
    fn op(&mut self, body: Body, code: ResultCode) -> (OpId, Applied) {
        let op_id = self.op_id();
        (op_id, self.op_as(op_id, body, code))
    }

    fn system(&mut self, body: Body) -> Applied {
        self.apply(Command { op_id: 0, deadline_at_ms: 0, body })
    }

    fn active_card(&mut self, pin_hash: PinHash, face_value_won: u64) {
        self.op(Body::Issue { pin_hash, face_value_won }, ResultCode::Approved);
        self.op(Body::Activate { pin_hash, password_mac: PASSWORD }, ResultCode::Approved);
    }

    /// Replays the journal into a fresh shard: the same replies and the same effects.
    fn replay_agrees(&self) {
        let mut replica = Shard::new(0, 1, EngineConfig::test_min());
        for (now_ms, command, applied) in &self.journal {
            assert_eq!(&replica.apply(*now_ms, command), applied, "replay of {command:?}");
        }
    }
}

fn sale(amount_won: u64) -> Body {
    Body::Sale { pin_hash: CARD, password_mac: PASSWORD, amount_won, merchant_id: 77, category: 1 }
}

fn session_start(session_id: u128, requested_s: u32) -> Body {
    Body::SessionStart(Box::new(SessionOpen {
        pin_hash: CARD,
        session_id,
        destination: pack_destination(b"0212345678").expect("a valid number"),
        requested_s,
        owner_id: OWNER,
        password_mac: 0,
        category: 2,
    }))
}

/// The common command has no effects, and its empty list owns no heap memory.
#[test]
fn a_sale_has_no_effects_and_allocates_none() {
    let mut s = Script::new();
    s.active_card(CARD, 10_000);
    let (_, applied) = s.op(sale(1_000), ResultCode::Approved);
    assert!(applied.effects.is_empty());
    assert_eq!(applied.effects.capacity(), 0);
    let (_, declined) = s.op(sale(100_000), ResultCode::InsufficientFunds);
    assert_eq!((declined.effects.len(), declined.effects.capacity()), (0, 0));
}

/// A hold past its expiry releases what it had not captured, in the first command applied at or
/// after that time (a TICK, or any other command).
#[test]
fn an_expired_hold_reports_its_release() {
    let mut s = Script::new();
    s.active_card(CARD, 10_000);
    let authorize = |amount_won, hold_ttl_s| Body::Authorize {
        pin_hash: CARD,
        password_mac: PASSWORD,
        amount_won,
        merchant_id: 77,
        category: 1,
        hold_ttl_s,
    };
    let (hold_id, placed) = s.op(authorize(1_000, 600), ResultCode::Approved);
    assert!(placed.effects.is_empty());
    let capture = Body::Capture { pin_hash: CARD, hold_id, amount_won: 300, final_capture: false };
    s.op(capture, ResultCode::Approved);
    s.now_ms += 600_000 - 1;
    assert!(s.system(Body::Tick).effects.is_empty(), "not yet due");
    s.now_ms += 1;
    let tick = s.system(Body::Tick);
    assert!(tick.changed);
    assert_eq!(tick.effects, [Effect::HoldExpired { hold_id, pin_hash: CARD, released_won: 700 }]);
    assert!(s.system(Body::Tick).effects.is_empty(), "expired once");

    // Due when another command arrives: that command reports it, before its own.
    let (second_id, _) = s.op(authorize(2_000, 60), ResultCode::Approved);
    s.now_ms += 60_000;
    let (_, paid) = s.op(sale(100), ResultCode::Approved);
    assert_eq!(
        paid.effects,
        [Effect::HoldExpired { hold_id: second_id, pin_hash: CARD, released_won: 2_000 }]
    );
    s.replay_agrees();
}

/// A session silent past its deadline ends and releases its reservation; the audit's close
/// reports each session it ended, and none it left alone.
#[test]
fn sessions_expired_or_closed_report_their_release() {
    let mut s = Script::new();
    s.active_card(CARD, 10_000);
    // 2 won a second: 60 s reserve 120 won; silent for twice the validity time (240 s) ends it.
    s.op(session_start(1, 60), ResultCode::Approved);
    s.now_ms += 240_000;
    let tick = s.system(Body::Tick);
    let told = SessionNoticeOut { session_id: 1, kind: NOTICE_EXPIRED, available_won: 10_000 };
    assert_eq!(
        tick.effects,
        [
            Effect::SessionExpired { session_id: 1, pin_hash: CARD, released_won: 120 },
            Effect::Notice(told)
        ]
    );

    s.op(session_start(2, 60), ResultCode::Approved);
    s.op(session_start(3, 30), ResultCode::Approved);
    let silent_since_ms = T0 + 240_000;
    let close = |session_ids: Vec<u128>| Body::SessionsClose {
        owner_id: OWNER,
        silent_since_ms,
        session_ids,
    };
    let closed = s.system(close(vec![3, 99, 2]));
    assert_eq!(closed.reply.amount_won, 2);
    assert_eq!(
        closed.effects,
        [
            Effect::SessionClosed { session_id: 3, pin_hash: CARD, released_won: 60 },
            Effect::SessionClosed { session_id: 2, pin_hash: CARD, released_won: 120 },
        ]
    );
    let again = s.system(close(vec![2, 3]));
    assert!(!again.changed && again.effects.is_empty(), "nothing left to close");
    s.replay_agrees();
}

/// The first command to touch a card past its validity expires it: the whole balance is
/// breakage, reported once.
#[test]
fn a_card_expiring_reports_its_breakage() {
    let mut s = Script::new();
    s.op(Body::Issue { pin_hash: CARD, face_value_won: 20_000 }, ResultCode::Approved);
    let sell = Body::Sell {
        pin_hash: CARD,
        channel_id: 3,
        price_won: 20_000,
        payment_means: 4,
        gift_recipient_ref: 0,
    };
    s.op(sell, ResultCode::Approved);
    s.op(Body::Activate { pin_hash: CARD, password_mac: PASSWORD }, ResultCode::Approved);
    s.op(sale(5_000), ResultCode::Approved);
    // test_min: a 20,000-won card is valid one day from its sale.
    s.now_ms += 24 * 3_600 * 1_000;
    let (_, expired) = s.op(sale(1), ResultCode::CardExpired);
    assert_eq!(expired.effects, [Effect::CardExpired { pin_hash: CARD, breakage_won: 15_000 }]);
    let (_, later) = s.op(sale(1), ResultCode::CardExpired);
    assert!(later.effects.is_empty(), "a card expires once");
    assert_eq!(s.shard.totals().breakage_won, 15_000);
    s.replay_agrees();
}

/// An approved FOREIGN_CONVERT reports the PIN it handed out; its replay reports the same PIN, a
/// declined conversion none.
#[test]
fn a_foreign_conversion_reports_the_pin_handed_out() {
    let mut s = Script::new();
    for code in ["US-1", "US-2"] {
        let foreign_hash = 0xF0 << 64 | u128::from(code.as_bytes()[3]);
        let code = ForeignCode::new(code.as_bytes()).unwrap();
        s.op(Body::ForeignImport { foreign_hash, product_id: 1, code }, ResultCode::Approved);
    }
    s.active_card(CARD, 50_000);
    let convert =
        |product_id| Body::ForeignConvert { pin_hash: CARD, password_mac: PASSWORD, product_id };
    let (_, declined) = s.op(convert(2), ResultCode::ForeignPinUnavailable);
    assert!(declined.effects.is_empty() && declined.foreign_pin().is_none());
    let (converted, applied) = s.op(convert(1), ResultCode::Approved);
    let first = ForeignCode::new(b"US-1").unwrap();
    assert_eq!(applied.effects, [Effect::ForeignPinHandedOut { code: first }]);
    assert_eq!(applied.foreign_pin(), Some(first));

    let retry = s.op_as(converted, convert(1), ResultCode::Approved);
    assert!(retry.reply.replayed && !retry.changed);
    assert_eq!(
        retry.effects,
        [Effect::ForeignPinHandedOut { code: first }],
        "a retry gets the same PIN"
    );
    let reused = s.op_as(converted, convert(2), ResultCode::OpIdReused);
    assert!(reused.effects.is_empty(), "another body under the op id is handed nothing");
    let (_, second) = s.op(convert(1), ResultCode::Approved);
    assert_eq!(second.foreign_pin(), ForeignCode::new(b"US-2"));
    s.replay_agrees();
}

/// A recharge tells the card's live calls to re-authorize: one notice per call, in the
/// recharge's effects; a card without calls raises none.
#[test]
fn a_notice_to_the_cards_calls_is_an_effect() {
    let mut s = Script::new();
    s.active_card(CARD, 10_000);
    let load = Body::Load { pin_hash: CARD, amount_won: 10_000, funding: 1 };
    let (_, quiet) = s.op(load.clone(), ResultCode::Approved);
    assert!(quiet.effects.is_empty());
    s.op(session_start(1, 60), ResultCode::Approved);
    let (_, loaded) = s.op(load, ResultCode::Approved);
    let available_won = loaded.reply.available_won;
    let told = SessionNoticeOut { session_id: 1, kind: NOTICE_REAUTHORIZE, available_won };
    assert_eq!(loaded.effects, [Effect::Notice(told)]);
    assert_eq!(loaded.notices().collect::<Vec<_>>(), [told]);
    s.replay_agrees();
}
