//! The native protocol's front end: what one checked frame becomes. `handle_frame` checks the
//! message type and the limits (batch size, in-flight frames and events), converts each event
//! into an engine item (hashing the PIN, MACing the password, validating formats), routes it to
//! its card's shard and submits the per-shard groups at once, in arrival order, then returns a
//! future that awaits the shards' durable answers and builds one response frame holding one
//! result per event, in event order. The connection (`conn.rs`) drives those futures; responses
//! of different frames may overtake each other, and clients match them by request id. Framing
//! errors close the connection after answering; every other bad input is answered on a
//! connection that stays open.

use std::sync::Arc;

use std::collections::HashSet;

use pinswitch_core::{
    Body, Command, FINAL_UNIT_TERMINATE, ForeignCode, PinHash, Reply, SessionGrant, SessionOpen, pack_destination, shard_of_card,
    shard_of_op,
};
use pinswitch_protocol::{
    self as protocol, BalanceResult, CardIssueResult, FINAL_UNIT_REDIRECT, FLAG_REPLAYED, ForeignConvertResult,
    FLAG_RESPONSE, FrameHeader, HelloReply, HoldInfo, InquiryResult, MsgType, OpResult, OpStatus, PriceQuoteResult,
    Pong, ResultCode, SessionAuditResult, SessionResult, VERSION, access_body, decode_body, encode_body,
    encode_frame,
};
use tokio::sync::{mpsc, oneshot};

use crate::config::{Limits, SessionsSection};
use crate::push::SessionDirectory;
use crate::keys::{Keys, random_pin};
use crate::shard_loop::{ShardBatch, ShardHandle, ShardItem, ShardOutput, wall_clock_ms};

/// Shortest and longest password a card holder may register (bytes).
pub const PASSWORD_BYTES_MIN: usize = 4;
pub const PASSWORD_BYTES_MAX: usize = 16;
/// Times CARD_ISSUE draws a new PIN when the drawn one already exists.
const PIN_DRAWS_MAX: usize = 4;

/// Everything a connection needs, shared by all of them.
pub struct Context {
    pub shards: Vec<ShardHandle>,
    pub shard_count: u16,
    pub keys: Keys,
    pub limits: Limits,
    /// What every session grant carries, and the audit's limits.
    pub sessions: SessionsSection,
    /// Which connection to push each live session's notices to.
    pub directory: Arc<SessionDirectory>,
    /// Connection admission: the totals, the count per address, the receive-buffer budget.
    pub admission: Arc<crate::conn::Admission>,
    /// The HELLO answer; its rule fields change when SIGHUP reloads the engine rules.
    pub hello: std::sync::RwLock<HelloReply>,
}

/// What became of one frame: answered at once (errors, HELLO, PING, frames refused by a
/// limit), or in flight to the shards: the future yields the response frame once every shard
/// involved has answered durably, and the count is the frame's events.
pub enum Handled {
    Now(Vec<u8>),
    Later(std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>>>>, u32),
}

/// Handles one frame. `frames_full`: the connection already has its most frames in flight;
/// `events_budget`: how many more events it may have in flight. `pushes` is the connection's
/// push queue, which the session directory learns for the sessions this frame reports.
pub fn handle_frame(
    context: &Arc<Context>,
    header: &FrameHeader,
    body: &[u8],
    received_ms: u64,
    frames_full: bool,
    events_budget: u32,
    pushes: &mpsc::Sender<Vec<u8>>,
) -> Handled {
    let request_id = header.request_id;
    let Some(msg_type) = MsgType::from_u16(header.msg_type) else {
        return Handled::Now(error_frame(header.msg_type, request_id, ResultCode::UnknownMessageType));
    };
    if frames_full {
        return Handled::Now(error_frame(header.msg_type, request_id, ResultCode::RetryLater));
    }
    let deadline_at_ms = if header.deadline_ms == 0 { 0 } else { received_ms + u64::from(header.deadline_ms) };
    let planned = match plan(context, msg_type, body, deadline_at_ms, events_budget) {
        Ok(Planned::Ready(answer)) => return Handled::Now(response_frame(msg_type, request_id, &answer)),
        Ok(planned) => planned,
        Err(code) => return Handled::Now(error_frame(header.msg_type, request_id, code)),
    };
    let events = u32::try_from(planned.events()).unwrap_or(u32::MAX);
    let context = context.clone();
    let pushes = pushes.clone();
    Handled::Later(
        Box::pin(async move {
            let body = planned.finish(&context, &pushes).await;
            response_frame(msg_type, request_id, &body)
        }),
        events,
    )
}

/// A frame whose events have been submitted to the shards (or answered without them).
enum Planned {
    Ready(Vec<u8>),
    Ops(Pending<OpResult>),
    Issue(Pending<CardIssueResult>, Vec<Option<IssueSlot>>),
    Inquiry(Pending<InquiryResult>),
    Balance(Pending<BalanceResult>),
    Foreign(Pending<ForeignConvertResult>),
    /// SESSION_START/UPDATE/END: op results whose grant is unpacked into `SessionResult`s;
    /// the session ids (per event) tell the push directory who owns what.
    Session(Pending<OpResult>, MsgType, Vec<u128>),
    /// EVENT_CHARGE: plain op results.
    Quote(Pending<PriceQuoteResult>),
    /// SESSION_AUDIT: one answer per shard, combined.
    Audit(Pending<AuditPart>, protocol::SessionAudit),
}

/// One shard's part of a SESSION_AUDIT answer: the owner's live sessions there, their digest,
/// and (with a list) the ids it closed.
struct AuditPart {
    count: u32,
    digest: u128,
    closed: Vec<u128>,
    answered: bool,
}

/// A CARD_ISSUE event in flight: what is needed to draw again under the same op id.
#[derive(Clone, Copy)]
struct IssueSlot {
    op_id: u128,
    pin: u64,
    face_value_won: u64,
    deadline_at_ms: u64,
}

/// Results known so far, and the shard groups still to answer.
struct Pending<R> {
    results: Vec<Option<R>>,
    groups: Vec<Group>,
}

struct Group {
    indexes: Vec<usize>,
    answer: Option<oneshot::Receiver<Vec<ShardOutput>>>,
}

impl Planned {
    /// Events of the frame (what its answer holds a result for).
    fn events(&self) -> usize {
        match self {
            Planned::Ready(_) => 0,
            Planned::Ops(pending) | Planned::Session(pending, ..) => pending.results.len(),
            Planned::Issue(pending, _) => pending.results.len(),
            Planned::Inquiry(pending) => pending.results.len(),
            Planned::Balance(pending) => pending.results.len(),
            Planned::Foreign(pending) => pending.results.len(),
            Planned::Quote(pending) => pending.results.len(),
            Planned::Audit(pending, _) => pending.results.len(),
        }
    }

    async fn finish(self, context: &Context, pushes: &mpsc::Sender<Vec<u8>>) -> Vec<u8> {
        match self {
            Planned::Ready(body) => body,
            Planned::Ops(pending) => {
                encode_body(&pending.collect(|output| match output {
                    ShardOutput::Applied(applied) => op_result(&applied.reply),
                    _ => op_code(ResultCode::InternalError),
                }, || op_code(ResultCode::RetryLater)).await)
            }
            Planned::Issue(pending, pins) => encode_body(&finish_issue(context, pending, pins).await),
            Planned::Inquiry(pending) => encode_body(&pending.collect(inquiry_result, || inquiry_code(ResultCode::RetryLater)).await),
            Planned::Balance(pending) => encode_body(&pending.collect(balance_result, || balance_code(ResultCode::RetryLater)).await),
            Planned::Foreign(pending) => encode_body(&pending.collect(foreign_result, || foreign_code(ResultCode::RetryLater)).await),
            Planned::Session(pending, msg_type, session_ids) => {
                let results = pending.collect(|output| match output {
                    ShardOutput::Applied(applied) => op_result(&applied.reply),
                    _ => op_code(ResultCode::InternalError),
                }, || op_code(ResultCode::RetryLater)).await;
                for (result, session_id) in results.iter().zip(&session_ids) {
                    track_session(&context.directory, pushes, msg_type, *session_id, result);
                }
                let sessions = &context.sessions;
                encode_body(&results.into_iter().map(|result| session_result(result, sessions)).collect::<Vec<_>>())
            }
            Planned::Quote(pending) => encode_body(&pending.collect(quote_result, || quote_code(ResultCode::RetryLater)).await),
            Planned::Audit(pending, audit) => {
                let parts = pending
                    .collect(
                        |output| match output {
                            ShardOutput::AuditCount(count, digest) => AuditPart { count, digest, closed: Vec::new(), answered: true },
                            ShardOutput::AuditClosed(count, closed) => AuditPart { count, digest: 0, closed, answered: true },
                            _ => AuditPart { count: 0, digest: 0, closed: Vec::new(), answered: false },
                        },
                        || AuditPart { count: 0, digest: 0, closed: Vec::new(), answered: false },
                    )
                    .await;
                encode_body(&audit_answer(&context.directory, &audit, parts))
            }
        }
    }
}

impl<R> Pending<R> {
    fn new(events: usize) -> Pending<R> {
        Pending { results: (0..events).map(|_| None).collect(), groups: Vec::new() }
    }

    /// Awaits every shard group and fills the remaining results.
    async fn collect(
        mut self,
        convert: impl Fn(ShardOutput) -> R,
        busy: impl Fn() -> R,
    ) -> Vec<R> {
        for group in std::mem::take(&mut self.groups) {
            let outputs = match group.answer {
                Some(answer) => answer.await.ok(),
                None => None,
            };
            match outputs {
                Some(outputs) => {
                    for (index, output) in group.indexes.into_iter().zip(outputs) {
                        self.results[index] = Some(convert(output));
                    }
                }
                None => {
                    for index in group.indexes {
                        self.results[index] = Some(busy());
                    }
                }
            }
        }
        self.results.into_iter().map(|result| result.unwrap_or_else(&busy)).collect()
    }
}

/// Groups items by shard and queues each group; a full shard queue leaves its group unanswered
/// (`answer: None`), which becomes RETRY_LATER for those events.
fn submit(context: &Context, routed: Vec<(usize, u16, ShardItem)>) -> Vec<Group> {
    let mut per_shard: Vec<(Vec<usize>, Vec<ShardItem>)> =
        (0..context.shard_count).map(|_| (Vec::new(), Vec::new())).collect();
    for (index, shard, item) in routed {
        let (indexes, items) = &mut per_shard[usize::from(shard)];
        indexes.push(index);
        items.push(item);
    }
    let mut groups = Vec::new();
    for (shard, (indexes, items)) in per_shard.into_iter().enumerate() {
        if items.is_empty() {
            continue;
        }
        let (reply, answer) = oneshot::channel();
        let answer = match context.shards[shard].try_submit(ShardBatch { items, reply }) {
            Ok(()) => Some(answer),
            Err(_) => None,
        };
        groups.push(Group { indexes, answer });
    }
    groups
}

/// Validates the body, converts its events and submits them. `Err` is a frame-level status.
fn plan(context: &Context, msg_type: MsgType, body: &[u8], deadline_at_ms: u64, events_budget: u32) -> Result<Planned, ResultCode> {
    let batch_max = context.limits.batch_events_max as usize;
    macro_rules! events {
        ($ty:ty) => {{
            let events = access_body::<Vec<$ty>>(body).map_err(|_| ResultCode::FormatError)?;
            if events.len() > batch_max {
                return Err(ResultCode::BatchTooLarge);
            }
            // The connection's answers still to come would outgrow its bound: later.
            if events.len() > events_budget as usize {
                return Err(ResultCode::RetryLater);
            }
            events
        }};
    }
    let keys = &context.keys;
    let count = context.shard_count;
    let command = |op_id: u128, body: Body| ShardItem::Command(Command { op_id, deadline_at_ms, body });
    match msg_type {
        MsgType::Hello => {
            let _hello: protocol::Hello = decode_body(body).map_err(|_| ResultCode::FormatError)?;
            let mut reply = context.hello.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            reply.server_time_ms = wall_clock_ms();
            Ok(Planned::Ready(encode_body(&reply)))
        }
        MsgType::Ping => {
            let ping: protocol::Ping = decode_body(body).map_err(|_| ResultCode::FormatError)?;
            Ok(Planned::Ready(encode_body(&Pong { nonce: ping.nonce, server_time_ms: wall_clock_ms() })))
        }
        MsgType::CardIssue => {
            let events = events!(protocol::CardIssue);
            let mut pending = Pending::new(events.len());
            let mut routed = Vec::with_capacity(events.len());
            let mut pins = vec![None; events.len()];
            for (index, event) in events.iter().enumerate() {
                let op_id = event.op_id.to_native();
                let shard = shard_of_op(op_id, count);
                let Some((pin, pin_hash)) = draw_pin(keys, shard, count) else {
                    pending.results[index] = Some(issue_code(ResultCode::InternalError));
                    continue;
                };
                let face_value_won = event.face_value_won.to_native();
                routed.push((index, shard, command(op_id, Body::Issue { pin_hash, face_value_won })));
                pins[index] = Some(IssueSlot { op_id, pin, face_value_won, deadline_at_ms });
            }
            pending.groups = submit(context, routed);
            Ok(Planned::Issue(pending, pins))
        }
        MsgType::CardActivate => Ok(ops(context, events!(protocol::CardActivate), deadline_at_ms, |event, result| {
            let pin_hash = card(keys, event.pin.to_native(), result)?;
            let password_mac = password(keys, pin_hash, event.password.as_slice(), result)?;
            Some((event.op_id.to_native(), Body::Activate { pin_hash, password_mac }))
        })),
        MsgType::CardClaim => Ok(ops(context, events!(protocol::CardClaim), deadline_at_ms, |event, result| {
            let pin_hash = card(keys, event.pin.to_native(), result)?;
            let password_mac = password(keys, pin_hash, event.password.as_slice(), result)?;
            let body = Body::Claim {
                pin_hash,
                password_mac,
                gift_recipient_ref: event.gift_recipient_ref.to_native(),
                password_hint: event.password_hint,
            };
            Some((event.op_id.to_native(), body))
        })),
        MsgType::CardLoad => Ok(ops(context, events!(protocol::CardLoad), deadline_at_ms, |event, result| {
            let pin_hash = card(keys, event.pin.to_native(), result)?;
            let body = Body::Load { pin_hash, amount_won: event.amount_won.to_native(), funding: event.funding };
            Some((event.op_id.to_native(), body))
        })),
        MsgType::CardSell => Ok(ops(context, events!(protocol::CardSell), deadline_at_ms, |event, result| {
            let pin_hash = card(keys, event.pin.to_native(), result)?;
            let body = Body::Sell {
                pin_hash,
                channel_id: event.channel_id.to_native(),
                price_won: event.price_won.to_native(),
                payment_means: event.payment_means,
                gift_recipient_ref: event.gift_recipient_ref.to_native(),
            };
            Some((event.op_id.to_native(), body))
        })),
        MsgType::CardBlock => Ok(ops(context, events!(protocol::CardBlock), deadline_at_ms, |event, result| {
            let pin_hash = card(keys, event.pin.to_native(), result)?;
            Some((event.op_id.to_native(), Body::Block { pin_hash, reason: event.reason }))
        })),
        MsgType::CardUnblock => Ok(ops(context, events!(protocol::CardUnblock), deadline_at_ms, |event, result| {
            let pin_hash = card(keys, event.pin.to_native(), result)?;
            Some((event.op_id.to_native(), Body::Unblock { pin_hash }))
        })),
        MsgType::CardConsign => Ok(ops(context, events!(protocol::CardConsign), deadline_at_ms, |event, result| {
            let pin_hash = card(keys, event.pin.to_native(), result)?;
            let body = Body::Consign {
                pin_hash,
                partner_id: event.partner_id.to_native(),
                commission_per_mille: event.commission_per_mille.to_native(),
            };
            Some((event.op_id.to_native(), body))
        })),
        MsgType::CardRegister => Ok(ops(context, events!(protocol::CardRegister), deadline_at_ms, |event, result| {
            let pin_hash = card(keys, event.pin.to_native(), result)?;
            let body = Body::Register { pin_hash, holder_ref: event.holder_ref.to_native(), verified_name: event.verified_name };
            Some((event.op_id.to_native(), body))
        })),
        MsgType::CardRefund => Ok(ops(context, events!(protocol::CardRefund), deadline_at_ms, |event, result| {
            let pin_hash = card(keys, event.pin.to_native(), result)?;
            let body = Body::BalanceRefund { pin_hash, payout_account_ref: event.payout_account_ref.to_native() };
            Some((event.op_id.to_native(), body))
        })),
        MsgType::Authorize => Ok(ops(context, events!(protocol::Authorize), deadline_at_ms, |event, result| {
            let pin_hash = card(keys, event.pin.to_native(), result)?;
            let password_mac = password(keys, pin_hash, event.password.as_slice(), result)?;
            let body = Body::Authorize {
                pin_hash,
                password_mac,
                amount_won: event.amount_won.to_native(),
                merchant_id: event.merchant_id.to_native(),
                category: event.category,
                hold_ttl_s: event.hold_ttl_s.to_native(),
            };
            Some((event.op_id.to_native(), body))
        })),
        MsgType::Capture => Ok(ops(context, events!(protocol::Capture), deadline_at_ms, |event, result| {
            let pin_hash = card(keys, event.pin.to_native(), result)?;
            let body = Body::Capture {
                pin_hash,
                hold_id: event.hold_id.to_native(),
                amount_won: event.amount_won.to_native(),
                final_capture: event.final_capture,
            };
            Some((event.op_id.to_native(), body))
        })),
        MsgType::Void => Ok(ops(context, events!(protocol::Void), deadline_at_ms, |event, result| {
            let pin_hash = card(keys, event.pin.to_native(), result)?;
            Some((event.op_id.to_native(), Body::Void { pin_hash, hold_id: event.hold_id.to_native() }))
        })),
        MsgType::Reverse => Ok(ops(context, events!(protocol::Reverse), deadline_at_ms, |event, result| {
            let pin_hash = card(keys, event.pin.to_native(), result)?;
            let body = Body::Reverse { pin_hash, original_op_id: event.original_op_id.to_native() };
            Some((event.op_id.to_native(), body))
        })),
        MsgType::Sale => Ok(ops(context, events!(protocol::Sale), deadline_at_ms, |event, result| {
            let pin_hash = card(keys, event.pin.to_native(), result)?;
            let password_mac = password(keys, pin_hash, event.password.as_slice(), result)?;
            let body = Body::Sale {
                pin_hash,
                password_mac,
                amount_won: event.amount_won.to_native(),
                merchant_id: event.merchant_id.to_native(),
                category: event.category,
            };
            Some((event.op_id.to_native(), body))
        })),
        MsgType::Refund => Ok(ops(context, events!(protocol::Refund), deadline_at_ms, |event, result| {
            let pin_hash = card(keys, event.pin.to_native(), result)?;
            let body = Body::Refund {
                pin_hash,
                original_op_id: event.original_op_id.to_native(),
                amount_won: event.amount_won.to_native(),
            };
            Some((event.op_id.to_native(), body))
        })),
        MsgType::ForeignImport => Ok(ops(context, events!(protocol::ForeignImport), deadline_at_ms, |event, result| {
            let code = event.foreign_pin.as_slice();
            let Some(foreign_code) = ForeignCode::new(code).filter(|_| code.iter().all(u8::is_ascii_alphanumeric)) else {
                *result = Some(op_code(ResultCode::FormatError));
                return None;
            };
            let body = Body::ForeignImport {
                foreign_hash: keys.foreign_hash(code),
                product_id: event.product_id.to_native(),
                code: foreign_code,
            };
            Some((event.op_id.to_native(), body))
        })),
        MsgType::ForeignConvert => {
            let events = events!(protocol::ForeignConvert);
            let mut pending = Pending::new(events.len());
            let mut routed = Vec::with_capacity(events.len());
            for (index, event) in events.iter().enumerate() {
                let mut refused = None;
                let credentials = card(keys, event.pin.to_native(), &mut refused).and_then(|pin_hash| {
                    password(keys, pin_hash, event.password.as_slice(), &mut refused).map(|password_mac| (pin_hash, password_mac))
                });
                let Some((pin_hash, password_mac)) = credentials else {
                    pending.results[index] = refused.map(|result| ForeignConvertResult { result, foreign_pin: Vec::new() });
                    continue;
                };
                let body = Body::ForeignConvert { pin_hash, password_mac, product_id: event.product_id.to_native() };
                routed.push((index, shard_of_card(pin_hash, count), command(event.op_id.to_native(), body)));
            }
            pending.groups = submit(context, routed);
            Ok(Planned::Foreign(pending))
        }
        MsgType::SessionStart => {
            let events = events!(protocol::SessionStart);
            let session_ids = events.iter().map(|event| event.session_id.to_native()).collect();
            Ok(session(ops(context, events, deadline_at_ms, |event, result| {
                let pin_hash = card(keys, event.pin.to_native(), result)?;
                let Some(destination) = pack_destination(event.destination.as_slice()) else {
                    *result = Some(op_code(ResultCode::DestinationInvalid));
                    return None;
                };
                let password_mac = optional_password(keys, pin_hash, event.password.as_slice(), result)?;
                let open = SessionOpen {
                    pin_hash,
                    session_id: event.session_id.to_native(),
                    destination,
                    requested_s: event.requested_s.to_native(),
                    owner_id: event.owner_id.to_native(),
                    password_mac,
                    category: event.category,
                };
                Some((event.op_id.to_native(), Body::SessionStart(Box::new(open))))
            }), MsgType::SessionStart, session_ids))
        }
        MsgType::SessionUpdate => {
            let events = events!(protocol::SessionUpdate);
            let session_ids = events.iter().map(|event| event.session_id.to_native()).collect();
            Ok(session(ops(context, events, deadline_at_ms, |event, result| {
                let pin_hash = card(keys, event.pin.to_native(), result)?;
                let body = Body::SessionUpdate {
                    pin_hash,
                    session_id: event.session_id.to_native(),
                    seq: event.seq.to_native(),
                    used_total_s: event.used_total_s.to_native(),
                    requested_s: event.requested_s.to_native(),
                };
                Some((event.op_id.to_native(), body))
            }), MsgType::SessionUpdate, session_ids))
        }
        MsgType::SessionEnd => {
            let events = events!(protocol::SessionEnd);
            let session_ids = events.iter().map(|event| event.session_id.to_native()).collect();
            Ok(session(ops(context, events, deadline_at_ms, |event, result| {
                let pin_hash = card(keys, event.pin.to_native(), result)?;
                let body = Body::SessionEnd {
                    pin_hash,
                    session_id: event.session_id.to_native(),
                    seq: event.seq.to_native(),
                    used_total_s: event.used_total_s.to_native(),
                };
                Some((event.op_id.to_native(), body))
            }), MsgType::SessionEnd, session_ids))
        }
        MsgType::EventCharge => Ok(ops(context, events!(protocol::EventCharge), deadline_at_ms, |event, result| {
            let pin_hash = card(keys, event.pin.to_native(), result)?;
            let Some(destination) = pack_destination(event.destination.as_slice()) else {
                *result = Some(op_code(ResultCode::DestinationInvalid));
                return None;
            };
            let password_mac = optional_password(keys, pin_hash, event.password.as_slice(), result)?;
            let body = Body::EventCharge { pin_hash, password_mac, destination, units: event.units.to_native(), category: event.category };
            Some((event.op_id.to_native(), body))
        })),
        MsgType::PriceQuote => {
            let events = events!(protocol::PriceQuote);
            let mut pending = Pending::new(events.len());
            let mut routed = Vec::with_capacity(events.len());
            for (index, event) in events.iter().enumerate() {
                let pin = event.pin.to_native();
                let pin_hash = match pin {
                    0 => None,
                    pin if protocol::pin::is_valid(pin) => Some(keys.pin_hash(pin)),
                    _ => {
                        pending.results[index] = Some(quote_code(ResultCode::PinFormatInvalid));
                        continue;
                    }
                };
                let Some(destination) = pack_destination(event.destination.as_slice()) else {
                    pending.results[index] = Some(quote_code(ResultCode::DestinationInvalid));
                    continue;
                };
                // Every shard has the same tariffs; a card's own shard knows its balance.
                let shard = pin_hash.map_or(0, |pin_hash| shard_of_card(pin_hash, count));
                let item = ShardItem::Quote {
                    pin_hash,
                    category: event.category,
                    destination,
                    duration_s: event.duration_s.to_native(),
                    units: event.units.to_native(),
                };
                routed.push((index, shard, item));
            }
            pending.groups = submit(context, routed);
            Ok(Planned::Quote(pending))
        }
        MsgType::SessionAudit => {
            let audit: protocol::SessionAudit = decode_body(body).map_err(|_| ResultCode::FormatError)?;
            if audit.session_ids.len() > context.sessions.audit_sessions_max as usize {
                return Err(ResultCode::BatchTooLarge);
            }
            let owner_id = audit.owner_id;
            let live = Arc::new(audit.session_ids.iter().copied().collect::<HashSet<u128>>());
            let silent_since_ms = wall_clock_ms().saturating_sub(u64::from(context.sessions.audit_grace_s) * 1000);
            let routed = (0..count)
                .map(|shard| {
                    let item = if audit.list {
                        ShardItem::AuditClose { owner_id, live: live.clone(), silent_since_ms }
                    } else {
                        ShardItem::AuditCount { owner_id }
                    };
                    (usize::from(shard), shard, item)
                })
                .collect();
            let mut pending = Pending::new(usize::from(count));
            pending.groups = submit(context, routed);
            Ok(Planned::Audit(pending, audit))
        }
        // Pushes go from the server to clients only.
        MsgType::SessionNotice => Err(ResultCode::UnknownMessageType),
        MsgType::Inquiry => {
            let events = events!(protocol::Inquiry);
            let mut pending = Pending::new(events.len());
            let mut routed = Vec::with_capacity(events.len());
            for (index, event) in events.iter().enumerate() {
                let pin = event.pin.to_native();
                if !protocol::pin::is_valid(pin) {
                    pending.results[index] = Some(inquiry_code(ResultCode::PinFormatInvalid));
                    continue;
                }
                let pin_hash = keys.pin_hash(pin);
                let item = ShardItem::Op { pin_hash, op_id: event.op_id.to_native() };
                routed.push((index, shard_of_card(pin_hash, count), item));
            }
            pending.groups = submit(context, routed);
            Ok(Planned::Inquiry(pending))
        }
        MsgType::BalanceInquiry => {
            let events = events!(protocol::BalanceInquiry);
            let mut pending = Pending::new(events.len());
            let mut routed = Vec::with_capacity(events.len());
            for (index, event) in events.iter().enumerate() {
                let pin = event.pin.to_native();
                if !protocol::pin::is_valid(pin) {
                    pending.results[index] = Some(balance_code(ResultCode::PinFormatInvalid));
                    continue;
                }
                let pin_hash = keys.pin_hash(pin);
                routed.push((index, shard_of_card(pin_hash, count), ShardItem::Card(pin_hash)));
            }
            pending.groups = submit(context, routed);
            Ok(Planned::Balance(pending))
        }
    }
}

/// Plans a batch answered with one `OpResult` per event: `convert` turns an event into its op id
/// and engine body, or sets the event's result itself (a malformed PIN or password) and returns
/// `None`. Each command goes to the shard that owns its card.
fn ops<E>(
    context: &Context,
    events: &[E],
    deadline_at_ms: u64,
    convert: impl Fn(&E, &mut Option<OpResult>) -> Option<(u128, Body)>,
) -> Planned {
    let mut pending = Pending::new(events.len());
    let mut routed = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let Some((op_id, body)) = convert(event, &mut pending.results[index]) else { continue };
        let Some(route_key) = body.route_key() else {
            pending.results[index] = Some(op_code(ResultCode::InternalError));
            continue;
        };
        let command = Command { op_id, deadline_at_ms, body };
        routed.push((index, shard_of_card(route_key, context.shard_count), ShardItem::Command(command)));
    }
    pending.groups = submit(context, routed);
    Planned::Ops(pending)
}

/// A planned batch of session events: answered with `SessionResult`s.
fn session(planned: Planned, msg_type: MsgType, session_ids: Vec<u128>) -> Planned {
    match planned {
        Planned::Ops(pending) => Planned::Session(pending, msg_type, session_ids),
        other => other,
    }
}

/// Keeps the push directory in step with a session event's outcome: a started or reported
/// session is owned by this connection; an ended, expired or unknown one by none.
fn track_session(directory: &SessionDirectory, pushes: &mpsc::Sender<Vec<u8>>, msg_type: MsgType, session_id: u128, result: &OpResult) {
    match (msg_type, ResultCode::from_u16(result.code)) {
        (MsgType::SessionStart | MsgType::SessionUpdate, Some(ResultCode::Approved | ResultCode::SessionUsageCapped)) => {
            directory.register(session_id, pushes);
        }
        (MsgType::SessionStart, _) => {}
        (_, Some(ResultCode::Approved | ResultCode::SessionUsageCapped | ResultCode::SessionExpiredCharged | ResultCode::SessionNotFound)) => {
            directory.forget(session_id);
        }
        _ => {}
    }
}

/// A session event's wire result: the engine packs the grant into the reply's hold-expiry and
/// field slots (see `SessionGrant`); they are unpacked here for an event that was charged. The
/// front end adds its policy: the quota threshold, the failure handling, and a redirect to the
/// recharge number instead of a plain terminate when so configured.
fn session_result(mut result: OpResult, sessions: &SessionsSection) -> SessionResult {
    let code = ResultCode::from_u16(result.code);
    if !matches!(code, Some(ResultCode::Approved | ResultCode::SessionUsageCapped | ResultCode::SessionExpiredCharged)) {
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
        quota_threshold_s: if grant.granted_s > 0 { sessions.quota_threshold_s.min(grant.granted_s) } else { 0 },
        final_unit,
        redirect_number,
        failure_handling: sessions.failure_handling_code().unwrap_or_default(),
        tariff_id: grant.tariff_id,
    }
}

fn quote_code(code: ResultCode) -> PriceQuoteResult {
    PriceQuoteResult { code: code.as_u16(), ..PriceQuoteResult::default() }
}

fn quote_result(output: ShardOutput) -> PriceQuoteResult {
    match output {
        ShardOutput::Quote(quote) => quote,
        _ => quote_code(ResultCode::InternalError),
    }
}

/// Combines the shards' parts of a SESSION_AUDIT: in sync when the count and the digest both
/// match; with a list, the orphans ended. A shard that could not answer (its queue was full)
/// makes the whole answer RETRY_LATER.
fn audit_answer(directory: &SessionDirectory, audit: &protocol::SessionAudit, parts: Vec<AuditPart>) -> SessionAuditResult {
    let mut answer = SessionAuditResult::default();
    let mut digest = 0u128;
    let mut all_answered = true;
    for part in parts {
        all_answered &= part.answered;
        answer.live_count = answer.live_count.saturating_add(part.count);
        digest ^= part.digest;
        answer.ended = answer.ended.saturating_add(u32::try_from(part.closed.len()).unwrap_or(u32::MAX));
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

/// Hashes a well-formed PIN, or records PIN_FORMAT_INVALID for the event.
fn card(keys: &Keys, pin: u64, result: &mut Option<OpResult>) -> Option<PinHash> {
    if protocol::pin::is_valid(pin) {
        Some(keys.pin_hash(pin))
    } else {
        *result = Some(op_code(ResultCode::PinFormatInvalid));
        None
    }
}

/// MACs a well-formed password, or records PASSWORD_FORMAT_INVALID for the event.
fn password(keys: &Keys, pin_hash: PinHash, password: &[u8], result: &mut Option<OpResult>) -> Option<u64> {
    if (PASSWORD_BYTES_MIN..=PASSWORD_BYTES_MAX).contains(&password.len()) {
        Some(keys.password_mac(pin_hash, password))
    } else {
        *result = Some(op_code(ResultCode::PasswordFormatInvalid));
        None
    }
}

/// SESSION_START and EVENT_CHARGE: an empty password is "none given" (MAC 0); any other must
/// be well-formed.
fn optional_password(keys: &Keys, pin_hash: PinHash, password: &[u8], result: &mut Option<OpResult>) -> Option<u64> {
    if password.is_empty() { Some(0) } else { self::password(keys, pin_hash, password, result) }
}

/// Draws a PIN whose card lands on `shard`, so that the issue and its retries meet one shard.
fn draw_pin(keys: &Keys, shard: u16, shard_count: u16) -> Option<(u64, PinHash)> {
    // Each draw lands on the wanted shard with probability 1/shard_count.
    for _ in 0..64 * usize::from(shard_count) {
        let pin = random_pin().ok()?;
        let pin_hash = keys.pin_hash(pin);
        if shard_of_card(pin_hash, shard_count) == shard {
            return Some((pin, pin_hash));
        }
    }
    None
}

/// Finishes CARD_ISSUE: a drawn PIN that already exists is answered RETRY_LATER by the engine
/// without being recorded, so we draw again (a handful of times) under the same op id.
async fn finish_issue(
    context: &Context,
    mut pending: Pending<CardIssueResult>,
    mut pins: Vec<Option<IssueSlot>>,
) -> Vec<CardIssueResult> {
    let events = pending.results.len();
    for draw in 0..PIN_DRAWS_MAX {
        let groups = std::mem::take(&mut pending.groups);
        let mut redraw = Vec::new();
        for group in groups {
            let outputs = match group.answer {
                Some(answer) => answer.await.ok(),
                None => None,
            };
            let Some(outputs) = outputs else {
                for index in group.indexes {
                    pending.results[index] = Some(issue_code(ResultCode::RetryLater));
                }
                continue;
            };
            for (index, output) in group.indexes.into_iter().zip(outputs) {
                let ShardOutput::Applied(applied) = output else {
                    pending.results[index] = Some(issue_code(ResultCode::InternalError));
                    continue;
                };
                let reply = applied.reply;
                let collided = reply.code == ResultCode::RetryLater.as_u16() && !applied.changed;
                if collided && draw + 1 < PIN_DRAWS_MAX {
                    redraw.push(index);
                    continue;
                }
                let pin = pins[index].map(|slot| slot.pin);
                let shown = reply.code == ResultCode::Approved.as_u16() && !reply.replayed;
                pending.results[index] = Some(CardIssueResult {
                    code: reply.code,
                    flags: if reply.replayed { FLAG_REPLAYED } else { 0 },
                    field: reply.field,
                    // The PIN is shown once: only to the request that created the card.
                    pin: if shown { pin.unwrap_or(0) } else { 0 },
                    balance_won: reply.balance_won,
                });
            }
        }
        if redraw.is_empty() {
            break;
        }
        let mut routed = Vec::new();
        for index in redraw {
            let Some(slot) = pins[index].as_mut() else { continue };
            let shard = shard_of_op(slot.op_id, context.shard_count);
            let Some((pin, pin_hash)) = draw_pin(&context.keys, shard, context.shard_count) else {
                pending.results[index] = Some(issue_code(ResultCode::InternalError));
                continue;
            };
            slot.pin = pin;
            let body = Body::Issue { pin_hash, face_value_won: slot.face_value_won };
            let command = Command { op_id: slot.op_id, deadline_at_ms: slot.deadline_at_ms, body };
            routed.push((index, shard, ShardItem::Command(command)));
        }
        pending.groups = submit(context, routed);
    }
    (0..events).map(|index| pending.results[index].take().unwrap_or_else(|| issue_code(ResultCode::RetryLater))).collect()
}

fn op_result(reply: &Reply) -> OpResult {
    OpResult::from(reply)
}

fn op_code(code: ResultCode) -> OpResult {
    OpResult { code: code.as_u16(), ..OpResult::default() }
}

fn issue_code(code: ResultCode) -> CardIssueResult {
    CardIssueResult { code: code.as_u16(), flags: 0, field: 0, pin: 0, balance_won: 0 }
}

fn inquiry_code(code: ResultCode) -> InquiryResult {
    InquiryResult { code: code.as_u16(), status: OpStatus::Unknown as u8, msg_type: 0, result: OpResult::default() }
}

fn inquiry_result(output: ShardOutput) -> InquiryResult {
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

fn foreign_code(code: ResultCode) -> ForeignConvertResult {
    ForeignConvertResult { result: op_code(code), foreign_pin: Vec::new() }
}

fn foreign_result(output: ShardOutput) -> ForeignConvertResult {
    match output {
        ShardOutput::Converted(applied, code) => ForeignConvertResult {
            result: op_result(&applied.reply),
            foreign_pin: code.filter(|_| applied.reply.code == ResultCode::Approved.as_u16()).map(|code| code.as_bytes().to_vec()).unwrap_or_default(),
        },
        _ => foreign_code(ResultCode::InternalError),
    }
}

fn balance_code(code: ResultCode) -> BalanceResult {
    BalanceResult { code: code.as_u16(), ..BalanceResult::default() }
}

fn balance_result(output: ShardOutput) -> BalanceResult {
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

fn response_frame(msg_type: MsgType, request_id: u64, body: &[u8]) -> Vec<u8> {
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

pub fn error_frame(msg_type: u16, request_id: u64, code: ResultCode) -> Vec<u8> {
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
