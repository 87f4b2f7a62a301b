//! The native protocol's front end: what one checked frame becomes. `handle_frame` checks the
//! message type and the limits (batch size, in-flight frames and events), converts each event
//! into an engine item (hashing the PIN, MACing the password, validating formats), routes it to
//! its card's shard and submits the per-shard groups at once, in arrival order, then returns a
//! future that awaits the shards' durable answers and builds one response frame holding one
//! result per event, in event order. The connection (`conn.rs`) drives those futures; responses
//! of different frames may overtake each other, and clients match them by request id. Framing
//! errors close the connection after answering; every other bad input is answered on a
//! connection that stays open.
//!
//! It is an adapter, in two halves beside this file: `commands.rs` (wire → engine, one function
//! per message) and `answers.rs` (engine → wire). This file is the frame's life between them.

mod answers;
mod commands;

use std::sync::Arc;

use std::collections::HashSet;

use pinswitch_core::{Body, Command, PinHash, pack_destination, shard_of_card, shard_of_op};
use pinswitch_protocol::{
    self as protocol, BalanceResult, BodyAccess, CardIssueResult, FLAG_REPLAYED,
    ForeignConvertResult, FrameHeader, HelloReply, InquiryResult, MsgType, OpResult, Pong,
    PriceQuoteResult, ResultCode, access_body, decode_body, encode_body,
};
use rkyv::Archive;
use rkyv::vec::ArchivedVec;
use tokio::sync::{mpsc, oneshot};

use crate::config::{Limits, SessionsSection};
use crate::keys::{Keys, random_pin};
use crate::push::SessionDirectory;
use crate::shard_loop::{ShardBatch, ShardHandle, ShardItem, ShardOutput, wall_clock_ms};
pub(crate) use answers::error_frame;
use answers::{
    AuditPart, audit_answer, balance_code, balance_result, foreign_code, foreign_result,
    inquiry_code, inquiry_result, issue_code, op_code, op_result, quote_code, quote_result,
    response_frame, session_result,
};
use commands::{EventPin, card, password};

/// Times CARD_ISSUE draws a new PIN when the drawn one already exists.
const PIN_DRAWS_MAX: usize = 4;

/// Everything a connection needs, shared by all of them.
pub(crate) struct Context {
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
    /// TLS and who may do what.
    pub trust: crate::access::Trust,
}

/// What became of one frame: answered at once (errors, HELLO, PING, frames refused by a
/// limit), or in flight to the shards: the future yields the response frame once every shard
/// involved has answered durably, and the count is the frame's events.
pub(crate) enum Handled {
    Now(Vec<u8>),
    Later(std::pin::Pin<Box<dyn std::future::Future<Output = Vec<u8>>>>, u32),
}

/// What a frame's connection brings to it: its grants, and its push queue (which the session
/// directory learns for the sessions the frame reports).
pub(crate) struct Connection<'a> {
    pub grants: &'a Arc<crate::access::Grants>,
    pub pushes: &'a mpsc::Sender<Vec<u8>>,
}

/// Handles one frame of `connection`. `frames_full`: the connection already has its most
/// frames in flight; `events_budget`: how many more events it may have in flight.
pub(crate) fn handle_frame(
    context: &Arc<Context>,
    connection: &Connection<'_>,
    header: &FrameHeader,
    body: &[u8],
    received_ms: u64,
    frames_full: bool,
    events_budget: u32,
) -> Handled {
    let Connection { grants, pushes } = *connection;
    let request_id = header.request_id;
    let Some(msg_type) = MsgType::from_u16(header.msg_type) else {
        return Handled::Now(error_frame(
            header.msg_type,
            request_id,
            ResultCode::UnknownMessageType,
        ));
    };
    // Before anything in the frame runs: the connection's roles and business ids.
    if let Err(code) = grants.check(msg_type, body) {
        return Handled::Now(error_frame(header.msg_type, request_id, code));
    }
    // A connection whose identity guessed too much is told nothing about cards for a while.
    if !matches!(msg_type, MsgType::Hello | MsgType::Ping) && grants.guesses.throttled(received_ms)
    {
        return Handled::Now(error_frame(header.msg_type, request_id, ResultCode::RetryLater));
    }
    if frames_full {
        return Handled::Now(error_frame(header.msg_type, request_id, ResultCode::RetryLater));
    }
    let deadline_at_ms =
        if header.deadline_ms == 0 { 0 } else { received_ms + u64::from(header.deadline_ms) };
    let planned = match plan(context, msg_type, body, deadline_at_ms, events_budget) {
        Ok(Planned::Ready(answer)) => {
            return Handled::Now(response_frame(msg_type, request_id, &answer));
        }
        Ok(planned) => planned,
        Err(code) => return Handled::Now(error_frame(header.msg_type, request_id, code)),
    };
    let events = u32::try_from(planned.events()).unwrap_or(u32::MAX);
    let context = context.clone();
    let pushes = pushes.clone();
    let grants = grants.clone();
    Handled::Later(
        Box::pin(async move {
            let body = planned.finish(&context, &pushes, &grants.guesses).await;
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

    /// Awaits the shards and builds the answer body; the answers that tell a guesser something
    /// (an unknown card, a wrong password) are counted against the connection's `guesses`, and
    /// those past its budget are withheld (`GuessMeter::meter`).
    async fn finish(
        self,
        context: &Context,
        pushes: &mpsc::Sender<Vec<u8>>,
        guesses: &crate::access::GuessMeter,
    ) -> Vec<u8> {
        match self {
            Planned::Ready(body) => body,
            Planned::Ops(pending) => encode_body(
                &pending.collect_metered(applied_op, op_code, |result| result.code, guesses).await,
            ),
            Planned::Issue(pending, pins) => {
                encode_body(&finish_issue(context, pending, pins).await)
            }
            // A stored decline read back is as telling as the decline itself.
            Planned::Inquiry(pending) => encode_body(
                &pending
                    .collect_metered(inquiry_result, inquiry_code, |r| r.result.code, guesses)
                    .await,
            ),
            Planned::Balance(pending) => encode_body(
                &pending.collect_metered(balance_result, balance_code, |r| r.code, guesses).await,
            ),
            Planned::Foreign(pending) => encode_body(
                &pending
                    .collect_metered(foreign_result, foreign_code, |r| r.result.code, guesses)
                    .await,
            ),
            Planned::Session(pending, msg_type, session_ids) => {
                let results =
                    pending.collect_metered(applied_op, op_code, |r| r.code, guesses).await;
                for (result, session_id) in results.iter().zip(&session_ids) {
                    track_session(&context.directory, pushes, msg_type, *session_id, result);
                }
                let sessions = &context.sessions;
                encode_body(
                    &results
                        .into_iter()
                        .map(|result| session_result(result, sessions))
                        .collect::<Vec<_>>(),
                )
            }
            // A quote with a PIN answers for the card: as telling as a balance inquiry.
            Planned::Quote(pending) => encode_body(
                &pending.collect_metered(quote_result, quote_code, |r| r.code, guesses).await,
            ),
            Planned::Audit(pending, audit) => {
                let parts = pending
                    .collect(
                        |output| match output {
                            ShardOutput::AuditCount(count, digest) => {
                                AuditPart { count, digest, closed: Vec::new(), answered: true }
                            }
                            ShardOutput::AuditClosed(count, closed) => {
                                AuditPart { count, digest: 0, closed, answered: true }
                            }
                            _ => AuditPart {
                                count: 0,
                                digest: 0,
                                closed: Vec::new(),
                                answered: false,
                            },
                        },
                        || AuditPart { count: 0, digest: 0, closed: Vec::new(), answered: false },
                    )
                    .await;
                encode_body(&audit_answer(&context.directory, &audit, parts))
            }
        }
    }
}

/// An operation's answer as its shard applied it.
fn applied_op(output: ShardOutput) -> OpResult {
    match output {
        ShardOutput::Applied(applied) => op_result(&applied.reply),
        _ => op_code(ResultCode::InternalError),
    }
}

impl<R> Pending<R> {
    fn new(events: usize) -> Pending<R> {
        Pending { results: (0..events).map(|_| None).collect(), groups: Vec::new() }
    }

    /// Awaits every shard group and fills the remaining results.
    /// `collect`, then the answers that tell a guesser something are metered against
    /// `guesses` and those past its budget withheld (`coded(ANSWER_WITHHELD)`).
    async fn collect_metered(
        self,
        convert: impl Fn(ShardOutput) -> R,
        coded: impl Fn(ResultCode) -> R,
        code_of: impl Fn(&R) -> u16,
        guesses: &crate::access::GuessMeter,
    ) -> Vec<R> {
        let mut results = self.collect(convert, || coded(ResultCode::RetryLater)).await;
        guesses.meter(&mut results, code_of, |result| *result = coded(ResultCode::AnswerWithheld));
        results
    }

    async fn collect(mut self, convert: impl Fn(ShardOutput) -> R, busy: impl Fn() -> R) -> Vec<R> {
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
        let answer = match context.shards[shard].try_submit(ShardBatch {
            items,
            reply,
            queued_at: std::time::Instant::now(),
        }) {
            Ok(()) => Some(answer),
            Err(_) => None,
        };
        groups.push(Group { indexes, answer });
    }
    groups
}

/// Validates the body, converts its events and submits them. `Err` is a frame-level status.
fn plan(
    context: &Context,
    msg_type: MsgType,
    body: &[u8],
    deadline_at_ms: u64,
    events_budget: u32,
) -> Result<Planned, ResultCode> {
    let frame = Frame { context, body, deadline_at_ms, events_budget };
    match msg_type {
        MsgType::Hello => plan_hello(context, body),
        MsgType::Ping => plan_ping(body),
        MsgType::CardIssue => {
            Ok(plan_issue(context, frame.events::<protocol::CardIssue>()?, deadline_at_ms))
        }
        MsgType::CardActivate => frame.plan_ops::<protocol::CardActivate>(commands::card_activate),
        MsgType::CardClaim => frame.plan_ops::<protocol::CardClaim>(commands::card_claim),
        MsgType::CardLoad => frame.plan_ops::<protocol::CardLoad>(commands::card_load),
        MsgType::CardSell => frame.plan_ops::<protocol::CardSell>(commands::card_sell),
        MsgType::CardBlock => frame.plan_ops::<protocol::CardBlock>(commands::card_block),
        MsgType::CardUnblock => frame.plan_ops::<protocol::CardUnblock>(commands::card_unblock),
        MsgType::OpFence => frame.plan_ops::<protocol::OpFence>(commands::op_fence),
        MsgType::CardConsign => frame.plan_ops::<protocol::CardConsign>(commands::card_consign),
        MsgType::CardRegister => frame.plan_ops::<protocol::CardRegister>(commands::card_register),
        MsgType::CardRefund => frame.plan_ops::<protocol::CardRefund>(commands::card_refund),
        MsgType::Authorize => frame.plan_ops::<protocol::Authorize>(commands::authorize),
        MsgType::Capture => frame.plan_ops::<protocol::Capture>(commands::capture),
        MsgType::Void => frame.plan_ops::<protocol::Void>(commands::void),
        MsgType::Reverse => frame.plan_ops::<protocol::Reverse>(commands::reverse),
        MsgType::Sale => frame.plan_ops::<protocol::Sale>(commands::sale),
        MsgType::Refund => frame.plan_ops::<protocol::Refund>(commands::refund),
        MsgType::ForeignImport => {
            frame.plan_ops::<protocol::ForeignImport>(commands::foreign_import)
        }
        MsgType::ForeignConvert => Ok(plan_foreign_convert(
            context,
            frame.events::<protocol::ForeignConvert>()?,
            deadline_at_ms,
        )),
        MsgType::SessionStart => frame.plan_sessions::<protocol::SessionStart>(
            MsgType::SessionStart,
            commands::session_start,
            |event| event.session_id.to_native(),
        ),
        MsgType::SessionUpdate => frame.plan_sessions::<protocol::SessionUpdate>(
            MsgType::SessionUpdate,
            commands::session_update,
            |event| event.session_id.to_native(),
        ),
        MsgType::SessionEnd => frame.plan_sessions::<protocol::SessionEnd>(
            MsgType::SessionEnd,
            commands::session_end,
            |event| event.session_id.to_native(),
        ),
        MsgType::EventCharge => frame.plan_ops::<protocol::EventCharge>(commands::event_charge),
        MsgType::PriceQuote => Ok(plan_quote(context, frame.events::<protocol::PriceQuote>()?)),
        MsgType::SessionAudit => plan_audit(context, body),
        // Pushes go from the server to clients only.
        MsgType::SessionNotice => Err(ResultCode::UnknownMessageType),
        MsgType::Inquiry => Ok(plan_inquiry(context, frame.events::<protocol::Inquiry>()?)),
        MsgType::BalanceInquiry => {
            Ok(plan_balance(context, frame.events::<protocol::BalanceInquiry>()?))
        }
    }
}

/// One frame's body being planned, with what the plan of every batch message needs.
struct Frame<'a> {
    context: &'a Context,
    body: &'a [u8],
    deadline_at_ms: u64,
    /// How many more events the connection may have in flight.
    events_budget: u32,
}

impl<'a> Frame<'a> {
    /// The frame's batch of `E` events, validated in place (no copy); refused over the batch
    /// limit, and for later when its answers would outgrow the connection's bound.
    #[inline]
    fn events<E: Archive>(&self) -> Result<&'a [E::Archived], ResultCode>
    where
        Vec<E>: BodyAccess + Archive<Archived = ArchivedVec<E::Archived>>,
    {
        let events = access_body::<Vec<E>>(self.body).map_err(|_| ResultCode::FormatError)?;
        if events.len() > self.context.limits.batch_events_max as usize {
            return Err(ResultCode::BatchTooLarge);
        }
        // The connection's answers still to come would outgrow its bound: later.
        if events.len() > self.events_budget as usize {
            return Err(ResultCode::RetryLater);
        }
        Ok(events.as_slice())
    }

    /// A batch of `E` answered with one `OpResult` per event (`ops`).
    #[inline]
    fn plan_ops<E: Archive>(&self, convert: ConvertOp<E::Archived>) -> Result<Planned, ResultCode>
    where
        Vec<E>: BodyAccess + Archive<Archived = ArchivedVec<E::Archived>>,
        E::Archived: EventPin,
    {
        Ok(ops(self.context, self.events::<E>()?, self.deadline_at_ms, convert))
    }

    /// A batch of `E` session events (`msg_type`): op results answered as `SessionResult`s,
    /// with each event's session id (`session_id_of`) for the push directory.
    #[inline]
    fn plan_sessions<E: Archive>(
        &self,
        msg_type: MsgType,
        convert: ConvertOp<E::Archived>,
        session_id_of: impl Fn(&E::Archived) -> u128,
    ) -> Result<Planned, ResultCode>
    where
        Vec<E>: BodyAccess + Archive<Archived = ArchivedVec<E::Archived>>,
        E::Archived: EventPin,
    {
        let events = self.events::<E>()?;
        let session_ids = events.iter().map(session_id_of).collect();
        Ok(session(ops(self.context, events, self.deadline_at_ms, convert), msg_type, session_ids))
    }
}

/// HELLO: answered at once with the server's rules and clock.
fn plan_hello(context: &Context, body: &[u8]) -> Result<Planned, ResultCode> {
    let _hello: protocol::Hello = decode_body(body).map_err(|_| ResultCode::FormatError)?;
    let mut reply = context.hello.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    reply.server_time_ms = wall_clock_ms();
    Ok(Planned::Ready(encode_body(&reply)))
}

/// PING: answered at once with its nonce and the server's clock.
fn plan_ping(body: &[u8]) -> Result<Planned, ResultCode> {
    let ping: protocol::Ping = decode_body(body).map_err(|_| ResultCode::FormatError)?;
    Ok(Planned::Ready(encode_body(&Pong { nonce: ping.nonce, server_time_ms: wall_clock_ms() })))
}

/// CARD_ISSUE: each event draws a PIN that lands on the shard of its op id (so retries meet it there).
fn plan_issue(
    context: &Context,
    events: &[protocol::ArchivedCardIssue],
    deadline_at_ms: u64,
) -> Planned {
    let keys = &context.keys;
    let count = context.shard_count;
    let command =
        |op_id: u128, body: Body| ShardItem::Command(Command { op_id, deadline_at_ms, body });
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
        // Issued under the newest key, but a card an older key named with this PIN must be
        // seen (the engine answers RETRY_LATER, and the PIN is drawn again).
        let item = for_card(keys, pin, command(op_id, Body::Issue { pin_hash, face_value_won }));
        routed.push((index, shard, item));
        pins[index] = Some(IssueSlot { op_id, pin, face_value_won, deadline_at_ms });
    }
    pending.groups = submit(context, routed);
    Planned::Issue(pending, pins)
}

/// FOREIGN_CONVERT: answered with the foreign PIN handed out.
fn plan_foreign_convert(
    context: &Context,
    events: &[protocol::ArchivedForeignConvert],
    deadline_at_ms: u64,
) -> Planned {
    let keys = &context.keys;
    let count = context.shard_count;
    let command =
        |op_id: u128, body: Body| ShardItem::Command(Command { op_id, deadline_at_ms, body });
    let mut pending = Pending::new(events.len());
    let mut routed = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let mut refused = None;
        let credentials =
            card(keys, event.pin.to_native(), &mut refused).and_then(|(pin_hash, first_name)| {
                password(keys, first_name, event.password.as_slice(), &mut refused)
                    .map(|password_mac| (pin_hash, password_mac))
            });
        let Some((pin_hash, password_mac)) = credentials else {
            pending.results[index] =
                refused.map(|result| ForeignConvertResult { result, foreign_pin: Vec::new() });
            continue;
        };
        let body = Body::ForeignConvert {
            pin_hash,
            password_mac,
            product_id: event.product_id.to_native(),
        };
        let item = for_card(keys, event.pin.to_native(), command(event.op_id.to_native(), body));
        routed.push((index, shard_of_card(pin_hash, count), item));
    }
    pending.groups = submit(context, routed);
    Planned::Foreign(pending)
}

/// PRICE_QUOTE: a read; with no PIN any shard prices it (every shard has the same tariffs).
fn plan_quote(context: &Context, events: &[protocol::ArchivedPriceQuote]) -> Planned {
    let keys = &context.keys;
    let count = context.shard_count;
    let mut pending = Pending::new(events.len());
    let mut routed = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let pin = event.pin.to_native();
        let pin_hash = match pin {
            0 => None,
            pin if protocol::pin::is_valid(pin) => Some(keys.names(pin).newest),
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
        let item = if pin == 0 { item } else { for_card(keys, pin, item) };
        routed.push((index, shard, item));
    }
    pending.groups = submit(context, routed);
    Planned::Quote(pending)
}

/// INQUIRY: a read of the op-id record on the card's shard.
fn plan_inquiry(context: &Context, events: &[protocol::ArchivedInquiry]) -> Planned {
    Planned::Inquiry(card_reads(
        context,
        events,
        |event| event.pin.to_native(),
        inquiry_code,
        |pin_hash, event| ShardItem::Op { pin_hash, op_id: event.op_id.to_native() },
    ))
}

/// BALANCE_INQUIRY: a read of the card on its shard.
fn plan_balance(context: &Context, events: &[protocol::ArchivedBalanceInquiry]) -> Planned {
    Planned::Balance(card_reads(
        context,
        events,
        |event| event.pin.to_native(),
        balance_code,
        |pin_hash, _| ShardItem::Card(pin_hash),
    ))
}

/// Reads keyed by a card: each event with a well-formed PIN becomes `item` on the card's shard,
/// one with a malformed PIN is answered `refused(PIN_FORMAT_INVALID)`.
fn card_reads<E, R>(
    context: &Context,
    events: &[E],
    pin_of: impl Fn(&E) -> u64,
    refused: fn(ResultCode) -> R,
    item: impl Fn(PinHash, &E) -> ShardItem,
) -> Pending<R> {
    let mut pending = Pending::new(events.len());
    let mut routed = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let pin = pin_of(event);
        if !protocol::pin::is_valid(pin) {
            pending.results[index] = Some(refused(ResultCode::PinFormatInvalid));
            continue;
        }
        let pin_hash = context.keys.names(pin).newest;
        let item = for_card(&context.keys, pin, item(pin_hash, event));
        routed.push((index, shard_of_card(pin_hash, context.shard_count), item));
    }
    pending.groups = submit(context, routed);
    pending
}

/// SESSION_AUDIT: one item per shard (a count, or with the list a close of the orphans).
fn plan_audit(context: &Context, body: &[u8]) -> Result<Planned, ResultCode> {
    let audit: protocol::SessionAudit = decode_body(body).map_err(|_| ResultCode::FormatError)?;
    if audit.session_ids.len() > context.sessions.audit_sessions_max as usize {
        return Err(ResultCode::BatchTooLarge);
    }
    let owner_id = audit.owner_id;
    let live = Arc::new(audit.session_ids.iter().copied().collect::<HashSet<u128>>());
    let silent_since_ms =
        wall_clock_ms().saturating_sub(u64::from(context.sessions.audit_grace_s) * 1000);
    let count = context.shard_count;
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

/// How `ops` turns one event into its op id and engine body (a function of `commands.rs`), or
/// sets the event's result itself and returns `None`.
type ConvertOp<E> = fn(&Keys, &E, &mut Option<OpResult>) -> Option<(u128, Body)>;

/// Plans a batch answered with one `OpResult` per event: `convert` turns an event into its op id
/// and engine body, or sets the event's result itself (a malformed PIN or password) and returns
/// `None`. Each command goes to the shard that owns its card.
fn ops<E: EventPin>(
    context: &Context,
    events: &[E],
    deadline_at_ms: u64,
    convert: ConvertOp<E>,
) -> Planned {
    let mut pending = Pending::new(events.len());
    let mut routed = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let Some((op_id, body)) = convert(&context.keys, event, &mut pending.results[index]) else {
            continue;
        };
        let Some(route_key) = body.route_key() else {
            pending.results[index] = Some(op_code(ResultCode::InternalError));
            continue;
        };
        let command = Command { op_id, deadline_at_ms, body };
        let item = match event.pin() {
            0 => ShardItem::Command(command),
            pin => for_card(&context.keys, pin, ShardItem::Command(command)),
        };
        routed.push((index, shard_of_card(route_key, context.shard_count), item));
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
fn track_session(
    directory: &SessionDirectory,
    pushes: &mpsc::Sender<Vec<u8>>,
    msg_type: MsgType,
    session_id: u128,
    result: &OpResult,
) {
    match (msg_type, ResultCode::from_u16(result.code)) {
        (
            MsgType::SessionStart | MsgType::SessionUpdate,
            Some(ResultCode::Approved | ResultCode::SessionUsageCapped),
        ) => {
            directory.register(session_id, pushes);
        }
        (MsgType::SessionStart, _) => {}
        (
            _,
            Some(
                ResultCode::Approved
                | ResultCode::SessionUsageCapped
                | ResultCode::SessionExpiredCharged
                | ResultCode::SessionNotFound,
            ),
        ) => {
            directory.forget(session_id);
        }
        _ => {}
    }
}

/// `item` about the card with this PIN as the shard gets it: as is, or, once a rotation has
/// left older keys, with the card's older names, for the shard to name the card by the key
/// that named it (`ShardItem::Resolve`).
fn for_card(keys: &Keys, pin: u64, item: ShardItem) -> ShardItem {
    let older = keys.older_names(pin);
    if older.is_empty() {
        return item;
    }
    ShardItem::Resolve { older: older.into_boxed_slice(), item: Box::new(item) }
}

/// Draws a PIN whose card lands on `shard`, so that the issue and its retries meet one shard;
/// the card is named under the newest key.
fn draw_pin(keys: &Keys, shard: u16, shard_count: u16) -> Option<(u64, PinHash)> {
    // Each draw lands on the wanted shard with probability 1/shard_count.
    for _ in 0..64 * usize::from(shard_count) {
        let pin = random_pin().ok()?;
        let pin_hash = keys.names(pin).newest;
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
            routed.push((index, shard, for_card(&context.keys, pin, ShardItem::Command(command))));
        }
        pending.groups = submit(context, routed);
    }
    (0..events)
        .map(|index| {
            pending.results[index].take().unwrap_or_else(|| issue_code(ResultCode::RetryLater))
        })
        .collect()
}
