//! The native protocol's engine → wire half: what the shards' outputs (`ShardOutput`) become
//! in each message's result type, the refusals of one event by code, and the response and
//! error frames. It reads engine results and the front end's session policy; it decides no
//! business outcome.

use pinswitch_core::{FINAL_UNIT_TERMINATE, Reply, SessionGrant};
use pinswitch_protocol::{
    self as protocol, BalanceResult, CardIssueResult, FINAL_UNIT_REDIRECT, FLAG_REPLAYED,
    FLAG_RESPONSE, ForeignConvertResult, FrameHeader, HoldInfo, InquiryResult, MsgType, OpResult,
    OpStatus, PriceQuoteResult, ResultCode, SessionAuditResult, SessionResult, VERSION,
    encode_frame,
};

use crate::config::SessionsSection;
use crate::push::SessionDirectory;
use crate::shard_loop::ShardOutput;

/// One shard's part of a SESSION_AUDIT answer: the owner's live sessions there, their digest,
/// and (with a list) the ids it closed.
pub(super) struct AuditPart {
    pub(super) count: u32,
    pub(super) digest: u128,
    pub(super) closed: Vec<u128>,
    pub(super) answered: bool,
}

/// A session event's wire result: the engine packs the grant into the reply's hold-expiry and
/// field slots (see `SessionGrant`); they are unpacked here for an event that was charged. The
/// front end adds its policy: the quota threshold, the failure handling, and a redirect to the
/// recharge number instead of a plain terminate when so configured.
pub(super) fn session_result(mut result: OpResult, sessions: &SessionsSection) -> SessionResult {
    let code = ResultCode::from_u16(result.code);
    if !matches!(
        code,
        Some(
            ResultCode::Approved
                | ResultCode::SessionUsageCapped
                | ResultCode::SessionExpiredCharged
        )
    ) {
        return SessionResult { result, ..SessionResult::default() };
    }
    let grant = SessionGrant::unpack(result.hold_expires_at_ms, result.field);
    result.hold_expires_at_ms = 0;
    result.field = 0;
    let (final_unit, redirect_number) = match sessions.redirect() {
        Some(number) if grant.final_unit == FINAL_UNIT_TERMINATE => (FINAL_UNIT_REDIRECT, number),
        _ => (grant.final_unit, Vec::new()),
    };
    SessionResult {
        result,
        granted_s: grant.granted_s,
        validity_s: grant.validity_s,
        quota_threshold_s: if grant.granted_s > 0 {
            sessions.quota_threshold_s.min(grant.granted_s)
        } else {
            0
        },
        final_unit,
        redirect_number,
        failure_handling: sessions.failure_handling_code().unwrap_or_default(),
        tariff_id: grant.tariff_id,
    }
}

pub(super) fn quote_code(code: ResultCode) -> PriceQuoteResult {
    PriceQuoteResult { code: code.as_u16(), ..PriceQuoteResult::default() }
}

pub(super) fn quote_result(output: ShardOutput) -> PriceQuoteResult {
    match output {
        ShardOutput::Quote(quote) => PriceQuoteResult {
            code: quote.code,
            tariff_id: quote.tariff_id,
            connect_fee_won: quote.connect_fee_won,
            rate_won: quote.rate_won,
            increment_s: quote.increment_s,
            first_increment_s: quote.first_increment_s,
            event_won: quote.event_won,
            duration_cost_won: quote.duration_cost_won,
            event_cost_won: quote.event_cost_won,
            available_won: quote.available_won,
            affordable_s: quote.affordable_s,
        },
        _ => quote_code(ResultCode::InternalError),
    }
}

/// Combines the shards' parts of a SESSION_AUDIT: in sync when the count and the digest both
/// match; with a list, the orphans ended. A shard that could not answer (its queue was full)
/// makes the whole answer RETRY_LATER.
pub(super) fn audit_answer(
    directory: &SessionDirectory,
    audit: &protocol::SessionAudit,
    parts: Vec<AuditPart>,
) -> SessionAuditResult {
    let mut answer = SessionAuditResult::default();
    let mut digest = 0u128;
    let mut all_answered = true;
    for part in parts {
        all_answered &= part.answered;
        answer.live_count = answer.live_count.saturating_add(part.count);
        digest ^= part.digest;
        answer.ended =
            answer.ended.saturating_add(u32::try_from(part.closed.len()).unwrap_or(u32::MAX));
        for session_id in part.closed {
            directory.forget(session_id);
        }
    }
    answer.code = if !all_answered {
        ResultCode::RetryLater
    } else if audit.list || (answer.live_count == audit.count && digest == audit.digest) {
        ResultCode::Approved
    } else {
        ResultCode::SessionAuditMismatch
    }
    .as_u16();
    answer
}

/// The wire result of an engine reply (the switch's answer to one event).
pub(super) fn op_result(reply: &Reply) -> OpResult {
    OpResult {
        code: reply.code,
        flags: if reply.replayed { FLAG_REPLAYED } else { 0 },
        field: reply.field,
        approval_code: reply.approval_code,
        amount_won: reply.amount_won,
        balance_won: reply.balance_won,
        available_won: reply.available_won,
        hold_expires_at_ms: reply.hold_expires_at_ms,
    }
}

pub(super) fn op_code(code: ResultCode) -> OpResult {
    OpResult { code: code.as_u16(), ..OpResult::default() }
}

pub(super) fn issue_code(code: ResultCode) -> CardIssueResult {
    CardIssueResult { code: code.as_u16(), flags: 0, field: 0, pin: 0, balance_won: 0 }
}

pub(super) fn inquiry_code(code: ResultCode) -> InquiryResult {
    InquiryResult {
        code: code.as_u16(),
        status: OpStatus::Unknown as u8,
        msg_type: 0,
        result: OpResult::default(),
    }
}

pub(super) fn inquiry_result(output: ShardOutput) -> InquiryResult {
    match output {
        ShardOutput::Op(view) => InquiryResult {
            code: ResultCode::Approved.as_u16(),
            status: view.status as u8,
            msg_type: view.msg_type,
            result: view.reply.as_ref().map(op_result).unwrap_or_default(),
        },
        _ => inquiry_code(ResultCode::InternalError),
    }
}

pub(super) fn foreign_code(code: ResultCode) -> ForeignConvertResult {
    ForeignConvertResult { result: op_code(code), foreign_pin: Vec::new() }
}

pub(super) fn foreign_result(output: ShardOutput) -> ForeignConvertResult {
    match output {
        ShardOutput::Applied(applied) => ForeignConvertResult {
            result: op_result(&applied.reply),
            foreign_pin: applied
                .foreign_pin()
                .filter(|_| applied.reply.code == ResultCode::Approved.as_u16())
                .map(|code| code.as_bytes().to_vec())
                .unwrap_or_default(),
        },
        _ => foreign_code(ResultCode::InternalError),
    }
}

pub(super) fn balance_code(code: ResultCode) -> BalanceResult {
    BalanceResult { code: code.as_u16(), ..BalanceResult::default() }
}

pub(super) fn balance_result(output: ShardOutput) -> BalanceResult {
    match output {
        ShardOutput::Card(Some(view)) => BalanceResult {
            code: ResultCode::Approved.as_u16(),
            state: view.state as u8,
            face_value_won: view.face_value_won,
            balance_won: view.balance_won,
            available_won: view.available_won,
            held_won: view.held_won,
            password_tries_left: view.password_tries_left,
            points: view.points,
            valid_until_s: view.valid_until_s,
            password_hint: view.password_hint,
            holds: view
                .holds
                .iter()
                .map(|hold| HoldInfo {
                    hold_id: hold.hold_id,
                    amount_won: hold.amount_won,
                    captured_won: hold.captured_won,
                    expires_at_ms: hold.expires_at_ms,
                })
                .collect(),
        },
        ShardOutput::Card(None) => balance_code(ResultCode::CardNotFound),
        _ => balance_code(ResultCode::InternalError),
    }
}

pub(super) fn response_frame(msg_type: MsgType, request_id: u64, body: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        version: VERSION,
        flags: FLAG_RESPONSE,
        msg_type: msg_type as u16,
        status: ResultCode::Approved.as_u16(),
        request_id,
        deadline_ms: 0,
        body_len: 0,
    };
    let mut out = Vec::with_capacity(protocol::HEADER_BYTES + body.len());
    encode_frame(&mut out, &header, body);
    out
}

pub(crate) fn error_frame(msg_type: u16, request_id: u64, code: ResultCode) -> Vec<u8> {
    let header = FrameHeader {
        version: VERSION,
        flags: FLAG_RESPONSE,
        msg_type,
        status: code.as_u16(),
        request_id,
        deadline_ms: 0,
        body_len: 0,
    };
    let mut out = Vec::with_capacity(protocol::HEADER_BYTES);
    encode_frame(&mut out, &header, &[]);
    out
}
