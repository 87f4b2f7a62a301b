//! One Credit-Control-Request → one native event, and its answer → the CCA. Formats only:
//! the PIN from Subscription-Id (its type configured), the called number from a configured AVP,
//! seconds from CC-Time in Requested- and Used-Service-Unit (a Multiple-Services-Credit-Control,
//! or the request's own), events from CC-Service-Specific-Units; the engine rates, reserves and
//! debits. Diameter reports each interval's use, the engine takes the session's total: the
//! listener keeps the running total of each live session (`State`), and a request whose
//! CC-Request-Number is the last one applied (a retransmission) recomputes the same total, so
//! it gets the same op id and the stored answer.
//!
//! Op ids: the time part is the session's start (INITIAL: Event-Timestamp when sent, else when
//! the request was first seen by (Origin-Host, End-to-End), RFC 6733 §6.5), the low 80 bits a
//! keyed hash of the Session-Id, the request type and number (`Keys::front_end_op_bits`).

use std::sync::Arc;

use pinswitch_protocol::diameter::{self, AVP_MANDATORY, AVP_VENDOR, Avp, Message};
use pinswitch_protocol::{
    self as protocol, FINAL_UNIT_REDIRECT, FINAL_UNIT_TERMINATE, MsgType, OpResult, ResultCode,
    SessionResult, decode_body, decode_frame, encode_body, op_id_at,
};

use super::{DiameterFraming, Tracked, avp, result};
use crate::conn::Arrival;
use crate::native::{Context, Handled};

/// Credit-control AVP codes (RFC 4006 / RFC 8506).
const CC_REQUEST_NUMBER: u32 = 415;
const CC_REQUEST_TYPE: u32 = 416;
const CC_SERVICE_SPECIFIC_UNITS: u32 = 417;
const CC_TIME: u32 = 420;
const CREDIT_CONTROL_FAILURE_HANDLING: u32 = 427;
const FINAL_UNIT_INDICATION: u32 = 430;
const GRANTED_SERVICE_UNIT: u32 = 431;
const RATING_GROUP: u32 = 432;
const REDIRECT_ADDRESS_TYPE: u32 = 433;
const REDIRECT_SERVER: u32 = 434;
const REDIRECT_SERVER_ADDRESS: u32 = 435;
const REQUESTED_SERVICE_UNIT: u32 = 437;
const SERVICE_IDENTIFIER: u32 = 439;
const SUBSCRIPTION_ID: u32 = 443;
const SUBSCRIPTION_ID_DATA: u32 = 444;
const USED_SERVICE_UNIT: u32 = 446;
const VALIDITY_TIME: u32 = 448;
const FINAL_UNIT_ACTION: u32 = 449;
const SUBSCRIPTION_ID_TYPE: u32 = 450;
const MULTIPLE_SERVICES_CREDIT_CONTROL: u32 = 456;
const EVENT_TIMESTAMP: u32 = 55;

/// Request types.
const INITIAL: u32 = 1;
const UPDATE: u32 = 2;
const TERMINATION: u32 = 3;
const EVENT: u32 = 4;

/// Seconds between the NTP epoch (1900) and the Unix epoch, for Event-Timestamp.
const NTP_UNIX_OFFSET_S: u64 = 2_208_988_800;

/// The base-protocol and credit-control AVPs (vendor 0) a CCR may carry with the M flag; any
/// other M-flagged AVP is answered 5001 (RFC 6733 §7.1.2).
const KNOWN_AVPS: &[u32] = &[
    1, 30, 31, 55, 257, 258, 263, 264, 278, 282, 283, 284, 293, 295, 296, 415, 416, 417, 418, 420,
    421, 436, 437, 443, 446, 455, 456, 458, 461, 432, 439,
];

/// Handles one CCR of `framing`'s connection from peer `origin`.
pub(super) fn handle(
    framing: &mut DiameterFraming,
    context: &Arc<Context>,
    arrival: &Arrival<'_>,
    request: Message,
    origin: &str,
) -> Handled {
    match plan(framing, context, arrival, &request, origin) {
        Err((code, failed)) => {
            let avps =
                failed.map(|avp| vec![Avp::grouped(avp::FAILED_AVP, &[avp])]).unwrap_or_default();
            Handled::Now(diameter::encode(&cca(framing, &request, code, avps)))
        }
        Ok((msg_type, body)) => {
            let base = cca(framing, &request, result::SUCCESS, Vec::new());
            crate::adapter_listener::handle_event(context, arrival, msg_type, &body, move |frame| {
                diameter::encode(&from_native(&request, base, frame))
            })
        }
    }
}

type Refusal = (u32, Option<Avp>);

/// The native event of a CCR, or its Result-Code (and the AVP at fault).
fn plan(
    framing: &mut DiameterFraming,
    context: &Context,
    arrival: &Arrival<'_>,
    request: &Message,
    origin: &str,
) -> Result<(MsgType, Vec<u8>), Refusal> {
    let settings = framing.settings.clone();
    supported(request, &[settings.destination_avp, settings.password_avp])?;
    let missing = |code: u32| (result::MISSING_AVP, Some(Avp::new(code, Vec::new())));
    let session = request
        .avp(avp::SESSION_ID)
        .and_then(|found| String::from_utf8(found.data.clone()).ok())
        .ok_or_else(|| missing(avp::SESSION_ID))?;
    let request_type = request
        .avp(CC_REQUEST_TYPE)
        .and_then(Avp::as_u32)
        .ok_or_else(|| missing(CC_REQUEST_TYPE))?;
    let number = request
        .avp(CC_REQUEST_NUMBER)
        .and_then(Avp::as_u32)
        .ok_or_else(|| missing(CC_REQUEST_NUMBER))?;
    let pin = subscription_pin(request, settings.subscription_id_type)?;
    let (requested_s, requested_units, used_s) = units(request)?;
    let text = |code: u32| request.avp(code).map(|found| found.data.clone());
    let destination =
        || text(settings.destination_avp).ok_or_else(|| missing(settings.destination_avp));
    let password = (settings.password_avp != 0).then(|| text(settings.password_avp));
    let password = password.flatten().unwrap_or_default();
    let owner_id = arrival.connection.grants.owner_id().unwrap_or(settings.owner_id);
    let now_ms = arrival.now_ms;
    let stamped_ms = event_timestamp_ms(request);
    let native_session =
        context.keys.front_end_op_bits(&[b"diameter session", session.as_bytes()]) | 1;
    let op_id = |time_ms: u64| {
        let low = context.keys.front_end_op_bits(&[
            b"diameter",
            session.as_bytes(),
            &request_type.to_be_bytes(),
            &number.to_be_bytes(),
        ]);
        op_id_at(time_ms, low)
    };
    let mut state = framing.state.borrow_mut();
    state.review(now_ms);
    // Only an INITIAL or an EVENT names its op ids' time; reports use the session's.
    let first_ms = match (stamped_ms, request_type) {
        (Some(stamped_ms), _) => stamped_ms,
        (None, INITIAL | EVENT) => state.first_seen_ms(origin, request.end_to_end, now_ms),
        (None, _) => now_ms,
    };
    let category = settings.category;
    match request_type {
        INITIAL => {
            let started_ms = state.start(
                &session,
                native_session,
                number,
                first_ms,
                now_ms,
                settings.sessions_max,
            )?;
            let start = protocol::SessionStart {
                op_id: op_id(started_ms),
                pin,
                session_id: native_session,
                category,
                destination: destination()?,
                requested_s,
                owner_id,
                password,
            };
            Ok((MsgType::SessionStart, encode_body(&vec![start])))
        }
        UPDATE | TERMINATION => {
            let tracked =
                state.sessions.get_mut(&session).ok_or((result::UNKNOWN_SESSION_ID, None))?;
            tracked.report(number, used_s)?;
            let (time_ms, used_total_s, native_id) =
                (tracked.started_ms, tracked.used_total_s, tracked.native_id);
            state.touched(&session, now_ms, request_type == TERMINATION);
            let body = if request_type == UPDATE {
                encode_body(&vec![protocol::SessionUpdate {
                    op_id: op_id(time_ms),
                    pin,
                    session_id: native_id,
                    seq: number,
                    used_total_s,
                    requested_s,
                }])
            } else {
                encode_body(&vec![protocol::SessionEnd {
                    op_id: op_id(time_ms),
                    pin,
                    session_id: native_id,
                    seq: number,
                    used_total_s,
                }])
            };
            Ok((
                if request_type == UPDATE { MsgType::SessionUpdate } else { MsgType::SessionEnd },
                body,
            ))
        }
        EVENT => {
            let charge = protocol::EventCharge {
                op_id: op_id(first_ms),
                pin,
                password,
                category: settings.event_category,
                destination: destination()?,
                units: requested_units.max(1),
            };
            Ok((MsgType::EventCharge, encode_body(&vec![charge])))
        }
        other => Err((result::INVALID_AVP_VALUE, Some(Avp::u32(CC_REQUEST_TYPE, other)))),
    }
}

/// Refuses a request with an M-flagged AVP this switch does not know (RFC 6733 §7.1.2: 5001,
/// naming it); the `configured` AVPs (the called number's, the password's) are known.
fn supported(request: &Message, configured: &[u32]) -> Result<(), Refusal> {
    match request.avps.iter().find(|avp| {
        avp.flags & AVP_MANDATORY != 0
            && (avp.flags & AVP_VENDOR != 0
                || !(KNOWN_AVPS.contains(&avp.code) || configured.contains(&avp.code)))
    }) {
        Some(unknown) => Err((result::AVP_UNSUPPORTED, Some(unknown.clone()))),
        None => Ok(()),
    }
}

/// Event-Timestamp (NTP seconds) as Unix ms, when the request has one.
fn event_timestamp_ms(request: &Message) -> Option<u64> {
    request
        .avp(EVENT_TIMESTAMP)
        .and_then(Avp::as_u32)
        .and_then(|ntp| u64::from(ntp).checked_sub(NTP_UNIX_OFFSET_S))
        .map(|unix_s| unix_s * 1000)
}

impl Tracked {
    /// Applies report `number` of `used_s` seconds to the running total: a new number adds
    /// them, the last one again (a retransmission) changes nothing, an older one is refused.
    fn report(&mut self, number: u32, used_s: u32) -> Result<(), Refusal> {
        if number > self.last_number {
            self.used_total_s = self.used_total_s.saturating_add(used_s);
            self.last_number = number;
            Ok(())
        } else if number == self.last_number {
            // A retransmission: the same total, so the same op id and stored answer.
            Ok(())
        } else {
            Err((result::INVALID_AVP_VALUE, Some(Avp::u32(CC_REQUEST_NUMBER, number))))
        }
    }
}

/// The card's PIN: the Subscription-Id of the configured type, in digits.
fn subscription_pin(request: &Message, id_type: u32) -> Result<u64, Refusal> {
    let missing = (result::MISSING_AVP, Some(Avp::new(SUBSCRIPTION_ID, Vec::new())));
    for subscription in request.avps.iter().filter(|found| found.code == SUBSCRIPTION_ID) {
        let inner = subscription
            .as_grouped()
            .map_err(|_| (result::INVALID_AVP_LENGTH, Some(subscription.clone())))?;
        if diameter::find(&inner, SUBSCRIPTION_ID_TYPE).and_then(Avp::as_u32) != Some(id_type) {
            continue;
        }
        let data = diameter::find(&inner, SUBSCRIPTION_ID_DATA).ok_or(missing.clone())?;
        let digits = std::str::from_utf8(&data.data)
            .ok()
            .filter(|text| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()));
        // Not a PIN's digits: nobody's card.
        return Ok(digits.and_then(|text| text.parse().ok()).unwrap_or(0));
    }
    Err(missing)
}

/// (seconds requested, events requested, seconds used) from the request's MSCCs, or its own
/// Requested- and Used-Service-Unit.
fn units(request: &Message) -> Result<(u32, u32, u32), Refusal> {
    let mut groups = vec![request.avps.clone()];
    for mscc in request.avps.iter().filter(|found| found.code == MULTIPLE_SERVICES_CREDIT_CONTROL) {
        groups
            .push(mscc.as_grouped().map_err(|_| (result::INVALID_AVP_LENGTH, Some(mscc.clone())))?);
    }
    let (mut requested_s, mut requested_units, mut used_s) = (0u32, 0u32, 0u32);
    for group in &groups {
        for unit in group.iter().filter(|found| {
            found.vendor == 0 && matches!(found.code, REQUESTED_SERVICE_UNIT | USED_SERVICE_UNIT)
        }) {
            let inner =
                unit.as_grouped().map_err(|_| (result::INVALID_AVP_LENGTH, Some(unit.clone())))?;
            let seconds = diameter::find(&inner, CC_TIME).and_then(Avp::as_u32).unwrap_or(0);
            let events = diameter::find(&inner, CC_SERVICE_SPECIFIC_UNITS)
                .and_then(Avp::as_u64)
                .map(|events| u32::try_from(events).unwrap_or(u32::MAX))
                .unwrap_or(0);
            if unit.code == REQUESTED_SERVICE_UNIT {
                requested_s = requested_s.max(seconds);
                requested_units = requested_units.max(events);
            } else {
                used_s = used_s.saturating_add(seconds);
            }
        }
    }
    Ok((requested_s, requested_units, used_s))
}

/// A CCA for `request` with `code` and `avps` (the request type and number echoed).
fn cca(framing: &DiameterFraming, request: &Message, code: u32, mut avps: Vec<Avp>) -> Message {
    let mut all = vec![Avp::u32(avp::AUTH_APPLICATION_ID, super::CREDIT_CONTROL_APPLICATION)];
    for code in [CC_REQUEST_TYPE, CC_REQUEST_NUMBER] {
        if let Some(found) = request.avp(code) {
            all.push(found.clone());
        }
    }
    all.append(&mut avps);
    framing.answer(request, code, all)
}

/// `base` (a CCA with Result-Code 2001) made the answer to the native response `frame`.
fn from_native(request: &Message, mut base: Message, frame: &[u8]) -> Message {
    let set_code = |base: &mut Message, code: u32| {
        if let Some(found) = base.avps.iter_mut().find(|found| found.code == avp::RESULT_CODE) {
            *found = Avp::u32(avp::RESULT_CODE, code);
        }
        if (3000..4000).contains(&code) {
            base.flags |= diameter::FLAG_ERROR;
        }
    };
    let Ok(Some(frame)) = decode_frame(frame, u32::MAX) else {
        set_code(&mut base, result::UNABLE_TO_COMPLY);
        return base;
    };
    if frame.header.status != 0 {
        set_code(&mut base, result_code(frame.header.status));
        return base;
    }
    let request_type = request.avp(CC_REQUEST_TYPE).and_then(Avp::as_u32).unwrap_or(0);
    if request_type == EVENT {
        let code = match decode_body::<Vec<OpResult>>(frame.body).ok().as_deref() {
            Some([result]) => result.code,
            _ => ResultCode::InternalError.as_u16(),
        };
        set_code(&mut base, result_code(code));
        return base;
    }
    let answers = decode_body::<Vec<SessionResult>>(frame.body).ok();
    let Some([answer]) = answers.as_deref() else {
        set_code(&mut base, result::UNABLE_TO_COMPLY);
        return base;
    };
    let code = result_code(answer.result.code);
    set_code(&mut base, code);
    let granted = matches!(
        ResultCode::from_u16(answer.result.code),
        Some(ResultCode::Approved | ResultCode::SessionUsageCapped)
    );
    if granted && request_type != TERMINATION {
        let mut mscc = Vec::new();
        // The service the request named, echoed.
        if let Some(first) =
            request.avps.iter().find(|found| found.code == MULTIPLE_SERVICES_CREDIT_CONTROL)
            && let Ok(inner) = first.as_grouped()
        {
            for code in [SERVICE_IDENTIFIER, RATING_GROUP] {
                if let Some(found) = diameter::find(&inner, code) {
                    mscc.push(found.clone());
                }
            }
        }
        mscc.push(Avp::grouped(GRANTED_SERVICE_UNIT, &[Avp::u32(CC_TIME, answer.granted_s)]));
        mscc.push(Avp::u32(VALIDITY_TIME, answer.validity_s));
        mscc.push(Avp::u32(avp::RESULT_CODE, result::SUCCESS));
        match answer.final_unit {
            FINAL_UNIT_TERMINATE => {
                mscc.push(Avp::grouped(FINAL_UNIT_INDICATION, &[Avp::u32(FINAL_UNIT_ACTION, 0)]));
            }
            FINAL_UNIT_REDIRECT => {
                let address = format!("tel:{}", String::from_utf8_lossy(&answer.redirect_number));
                mscc.push(Avp::grouped(
                    FINAL_UNIT_INDICATION,
                    &[
                        Avp::u32(FINAL_UNIT_ACTION, 1),
                        Avp::grouped(
                            REDIRECT_SERVER,
                            &[
                                // URL (2): a tel: URI of the recharge service.
                                Avp::u32(REDIRECT_ADDRESS_TYPE, 2),
                                Avp::text(REDIRECT_SERVER_ADDRESS, &address),
                            ],
                        ),
                    ],
                ));
            }
            _ => {}
        }
        base.avps.push(Avp::grouped(MULTIPLE_SERVICES_CREDIT_CONTROL, &mscc));
        base.avps
            .push(Avp::u32(CREDIT_CONTROL_FAILURE_HANDLING, u32::from(answer.failure_handling)));
    }
    base
}

/// Result-Code for a native result code (protocol/DIAMETER.md, "Result codes").
fn result_code(code: u16) -> u32 {
    use ResultCode as C;
    let Some(code) = ResultCode::from_u16(code) else { return result::UNABLE_TO_COMPLY };
    match code {
        C::Approved | C::SessionUsageCapped | C::SessionExpiredCharged => result::SUCCESS,
        C::InsufficientFunds => result::CREDIT_LIMIT_REACHED,
        C::CardNotFound | C::PinFormatInvalid => result::USER_UNKNOWN,
        C::TariffNotFound | C::DestinationInvalid | C::EventNotPriced | C::CategoryInvalid => {
            result::RATING_FAILED
        }
        C::SessionNotFound => result::UNKNOWN_SESSION_ID,
        C::CardNotActive
        | C::CardBlocked
        | C::CardExpired
        | C::CardClosed
        | C::CategoryNotAllowed
        | C::PasswordInvalid
        | C::PasswordTriesExceeded
        | C::PasswordFormatInvalid
        | C::SessionLimitPerCard
        | C::SessionLimitPerShard
        | C::CardConsignedElsewhere
        | C::GiftClaimRequired
        | C::GiftRecipientMismatch => result::END_USER_SERVICE_DENIED,
        C::NotPermitted => result::AUTHORIZATION_REJECTED,
        C::RetryLater | C::ShuttingDown | C::AnswerWithheld | C::StorageFull => result::TOO_BUSY,
        C::DeadlineExceededNotExecuted => result::UNABLE_TO_DELIVER,
        C::FormatError | C::UnitsInvalid | C::AmountInvalid | C::OpIdReused => {
            result::INVALID_AVP_VALUE
        }
        _ => result::UNABLE_TO_COMPLY,
    }
}
