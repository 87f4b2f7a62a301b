//! The Diameter credit-control front end (Gy: RFC 4006 / RFC 8506 on the RFC 6733 base), for
//! prepaid call platforms, IN/SCP nodes and PCEF/PGW gear as they are. Its own listener
//! (`[diameter] listen`, TCP; TLS and identities as on the native port, the first byte telling a
//! handshake from Diameter's version 1) serves the base protocol here: CER/CEA (the peer must
//! offer the credit-control application, 4), DWR/DWA, DPR/DPA. Each CCR becomes one native
//! event (`ccr.rs`): INITIAL → SESSION_START, UPDATE → SESSION_UPDATE, TERMINATION →
//! SESSION_END, EVENT → EVENT_CHARGE, through `native::handle_frame`, so roles, limits, guess
//! metering, exactly-once and the journal rule are the native ones; the answer becomes the
//! CCA. The switch's SESSION_NOTICE pushes for the connection's sessions become RAR
//! (re-authorize) and ASR (abort). protocol/DIAMETER.md specifies it. One thread runs the
//! listener on a tokio current-thread runtime, as ISO 8583's and QUIC's do.

mod ccr;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use pinswitch_protocol::diameter::{self, Avp, FLAG_ERROR, FLAG_PROXIABLE, FLAG_REQUEST, Message};
use pinswitch_protocol::{
    MsgType, NOTICE_ABORT, NOTICE_REAUTHORIZE, SessionNotice, decode_body, decode_frame,
};

use crate::config::DiameterSection;
use crate::conn::{Arrival, Framing, Taken};
use crate::native::{Context, Handled};

/// Base-protocol commands (RFC 6733) and credit control's (RFC 4006).
pub(crate) const CAPABILITIES_EXCHANGE: u32 = 257;
pub(crate) const RE_AUTH: u32 = 258;
pub(crate) const CREDIT_CONTROL: u32 = 272;
pub(crate) const ABORT_SESSION: u32 = 274;
pub(crate) const DEVICE_WATCHDOG: u32 = 280;
pub(crate) const DISCONNECT_PEER: u32 = 282;
/// The credit-control application id.
pub(crate) const CREDIT_CONTROL_APPLICATION: u32 = 4;
/// A CER's "relay" application: every application.
const RELAY_APPLICATION: u32 = 0xFFFF_FFFF;

/// AVP codes used here.
pub(crate) mod avp {
    pub(crate) const HOST_IP_ADDRESS: u32 = 257;
    pub(crate) const AUTH_APPLICATION_ID: u32 = 258;
    pub(crate) const ACCT_APPLICATION_ID: u32 = 259;
    pub(crate) const VENDOR_SPECIFIC_APPLICATION_ID: u32 = 260;
    pub(crate) const SESSION_ID: u32 = 263;
    pub(crate) const ORIGIN_HOST: u32 = 264;
    pub(crate) const VENDOR_ID: u32 = 266;
    pub(crate) const RESULT_CODE: u32 = 268;
    pub(crate) const PRODUCT_NAME: u32 = 269;
    pub(crate) const FAILED_AVP: u32 = 279;
    pub(crate) const RE_AUTH_REQUEST_TYPE: u32 = 285;
    pub(crate) const DESTINATION_REALM: u32 = 283;
    pub(crate) const DESTINATION_HOST: u32 = 293;
    pub(crate) const ORIGIN_REALM: u32 = 296;
}

/// Result-Code values (RFC 6733 §7.1, RFC 4006 §9).
pub(crate) mod result {
    pub(crate) const SUCCESS: u32 = 2001;
    pub(crate) const UNABLE_TO_DELIVER: u32 = 3002;
    pub(crate) const TOO_BUSY: u32 = 3004;
    pub(crate) const UNKNOWN_PEER: u32 = 3010;
    pub(crate) const END_USER_SERVICE_DENIED: u32 = 4010;
    pub(crate) const CREDIT_LIMIT_REACHED: u32 = 4012;
    pub(crate) const AVP_UNSUPPORTED: u32 = 5001;
    pub(crate) const UNKNOWN_SESSION_ID: u32 = 5002;
    pub(crate) const AUTHORIZATION_REJECTED: u32 = 5003;
    pub(crate) const INVALID_AVP_VALUE: u32 = 5004;
    pub(crate) const MISSING_AVP: u32 = 5005;
    pub(crate) const NO_COMMON_APPLICATION: u32 = 5010;
    pub(crate) const UNABLE_TO_COMPLY: u32 = 5012;
    pub(crate) const INVALID_AVP_LENGTH: u32 = 5014;
    pub(crate) const USER_UNKNOWN: u32 = 5030;
    pub(crate) const RATING_FAILED: u32 = 5031;
}

/// How long a request's (Origin-Host, End-to-End) is remembered for duplicate detection
/// (RFC 6733 §6.5 asks for at least the peers' retransmission time, 4 minutes).
const DUPLICATE_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Request ids remembered for duplicate detection at most (INITIALs and EVENTs only).
const SEEN_MAX: usize = 1 << 20;
/// A tracked session silent this long is forgotten (the engine expired it long before: a
/// silent session lives two validity times); a later report is answered UNKNOWN_SESSION_ID.
const SESSION_SILENCE_MAX_MS: u64 = 24 * 3600 * 1000;

/// The listener's settings, read once at start.
pub(crate) struct Settings {
    origin_host: String,
    origin_realm: String,
    subscription_id_type: u32,
    destination_avp: u32,
    password_avp: u32,
    category: u8,
    event_category: u8,
    owner_id: u32,
    message_bytes_max: usize,
    sessions_max: usize,
}

impl Settings {
    pub(crate) fn from_config(section: &DiameterSection) -> anyhow::Result<Settings> {
        let category_of = |name: &str| {
            pinswitch_protocol::Category::ALL
                .iter()
                .find(|category| category.name() == name)
                .map(|category| *category as u8)
                .with_context(|| format!("diameter: {name:?} is no category"))
        };
        let category = category_of(&section.category)?;
        let event_category = category_of(&section.event_category)?;
        if section.origin_host.is_empty() || section.origin_realm.is_empty() {
            bail!("diameter.origin_host and diameter.origin_realm must be set");
        }
        Ok(Settings {
            origin_host: section.origin_host.clone(),
            origin_realm: section.origin_realm.clone(),
            subscription_id_type: section.subscription_id_type,
            destination_avp: section.destination_avp,
            password_avp: section.password_avp,
            category,
            event_category,
            owner_id: section.owner_id,
            message_bytes_max: section.message_bytes_max as usize,
            sessions_max: section.sessions_max as usize,
        })
    }
}

/// What the listener thread remembers across its connections (a peer may fail over from one
/// connection to another): each live credit-control session, and recent requests' ids.
#[derive(Default)]
pub(crate) struct State {
    /// Diameter Session-Id → the session as the adapter tracks it.
    sessions: HashMap<String, Tracked>,
    /// The native session id → its Diameter Session-Id (for pushes).
    names: HashMap<u128, String>,
    /// (Origin-Host, End-to-End id) → when first seen, oldest first.
    seen: HashMap<(String, u32), u64>,
    seen_order: VecDeque<((String, u32), u64)>,
    /// Sessions to look at again when due, each queue in due order: every started one (is it
    /// silent past `SESSION_SILENCE_MAX_MS`?) and every ended one (forgotten once its
    /// retransmissions can no longer come). One entry a session in each, so both are bounded
    /// by `sessions_max`.
    reviews: VecDeque<(String, u64)>,
    ended_reviews: VecDeque<(String, u64)>,
}

/// One credit-control session: its native id, when it started (its op ids' time), the
/// seconds used in all (Diameter reports each interval's use; the engine takes the total),
/// and the last request number applied.
#[derive(Clone, Debug)]
struct Tracked {
    native_id: u128,
    started_ms: u64,
    used_total_s: u32,
    last_number: u32,
    /// The last request's arrival, and whether it was a TERMINATION.
    last_seen_ms: u64,
    ended: bool,
}

impl State {
    /// Forgets the sessions whose review is due: ended ones past the retransmission window,
    /// silent ones past `SESSION_SILENCE_MAX_MS` (a live one is looked at again later).
    fn review(&mut self, now_ms: u64) {
        while let Some((session, _)) = pop_due(&mut self.ended_reviews, now_ms) {
            if self.sessions.get(&session).is_some_and(|tracked| {
                now_ms.saturating_sub(tracked.last_seen_ms) >= DUPLICATE_WINDOW_MS
            }) {
                self.forget(&session);
            } else if self.sessions.contains_key(&session) {
                // Retransmitted since: look again a window later.
                self.ended_reviews.push_back((session, now_ms + DUPLICATE_WINDOW_MS));
            }
        }
        while let Some((session, _)) = pop_due(&mut self.reviews, now_ms) {
            let Some(tracked) = self.sessions.get(&session) else { continue };
            if now_ms.saturating_sub(tracked.last_seen_ms) >= SESSION_SILENCE_MAX_MS {
                self.forget(&session);
            } else if !tracked.ended {
                let due_ms = tracked.last_seen_ms + SESSION_SILENCE_MAX_MS;
                self.reviews.push_back((session, due_ms));
            }
        }
    }

    fn forget(&mut self, session: &str) {
        if let Some(tracked) = self.sessions.remove(session) {
            self.names.remove(&tracked.native_id);
        }
    }

    /// Tracks a session from its INITIAL (`number`, first seen at `first_ms`; a retransmitted
    /// INITIAL finds it tracked already) and returns when it started; `None` past `max`.
    fn start(
        &mut self,
        session: &str,
        native_id: u128,
        number: u32,
        first_ms: u64,
        now_ms: u64,
        max: usize,
    ) -> Result<u64, (u32, Option<Avp>)> {
        if !self.sessions.contains_key(session) && self.sessions.len() >= max {
            return Err((result::TOO_BUSY, None));
        }
        let tracked = self.sessions.entry(session.to_string()).or_insert(Tracked {
            native_id,
            started_ms: first_ms,
            used_total_s: 0,
            last_number: number,
            last_seen_ms: now_ms,
            ended: false,
        });
        let started_ms = tracked.started_ms;
        if self.names.insert(native_id, session.to_string()).is_none() {
            self.reviews.push_back((session.to_string(), now_ms + SESSION_SILENCE_MAX_MS));
        }
        Ok(started_ms)
    }

    /// A session's request arrived at `now_ms` (`ended`: a TERMINATION): due for review.
    fn touched(&mut self, session: &str, now_ms: u64, ended: bool) {
        if let Some(tracked) = self.sessions.get_mut(session) {
            tracked.last_seen_ms = now_ms;
            if ended && !tracked.ended {
                tracked.ended = true;
                self.ended_reviews.push_back((session.to_string(), now_ms + DUPLICATE_WINDOW_MS));
            }
        }
    }

    /// When the request (`origin_host`, `end_to_end`) was first seen: now, unless it is a
    /// duplicate within the window.
    fn first_seen_ms(&mut self, origin_host: &str, end_to_end: u32, now_ms: u64) -> u64 {
        while let Some((_, at_ms)) = self.seen_order.front() {
            if now_ms.saturating_sub(*at_ms) < DUPLICATE_WINDOW_MS {
                break;
            }
            if let Some((key, _)) = self.seen_order.pop_front() {
                self.seen.remove(&key);
            }
        }
        let key = (origin_host.to_string(), end_to_end);
        if let Some(at_ms) = self.seen.get(&key) {
            return *at_ms;
        }
        // Bounded: past `SEEN_MAX` the oldest id goes first. (A retransmitted INITIAL keeps
        // its time through its tracked session anyway; an EVENT without Event-Timestamp
        // retransmitted after its id went would get a new op id.)
        if self.seen_order.len() >= SEEN_MAX
            && let Some((oldest, _)) = self.seen_order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        self.seen.insert(key.clone(), now_ms);
        self.seen_order.push_back((key, now_ms));
        now_ms
    }
}

/// The front entry of `queue` when it is due at `now_ms`.
fn pop_due(queue: &mut VecDeque<(String, u64)>, now_ms: u64) -> Option<(String, u64)> {
    if queue.front().is_some_and(|(_, due_ms)| *due_ms <= now_ms) {
        queue.pop_front()
    } else {
        None
    }
}

/// One connection: the peer's Origin-Host once its CER was answered, and the ids of the
/// requests this switch sends it (RAR, ASR).
pub(crate) struct DiameterFraming {
    settings: Arc<Settings>,
    state: Rc<RefCell<State>>,
    peer: Option<(String, String)>,
    next_id: u32,
}

impl DiameterFraming {
    fn new(settings: Arc<Settings>, state: Rc<RefCell<State>>) -> DiameterFraming {
        DiameterFraming { settings, state, peer: None, next_id: 1 }
    }

    /// The answer to `request`: same command, application and ids, R cleared, with
    /// Result-Code and this switch's Origin-Host and Origin-Realm first.
    fn answer(&self, request: &Message, result_code: u32, mut avps: Vec<Avp>) -> Message {
        let error = if (3000..4000).contains(&result_code) { FLAG_ERROR } else { 0 };
        let mut all = Vec::with_capacity(avps.len() + 4);
        if let Some(session) = request.avp(avp::SESSION_ID) {
            all.push(session.clone());
        }
        all.push(Avp::u32(avp::RESULT_CODE, result_code));
        all.push(Avp::text(avp::ORIGIN_HOST, &self.settings.origin_host));
        all.push(Avp::text(avp::ORIGIN_REALM, &self.settings.origin_realm));
        all.append(&mut avps);
        Message {
            flags: (request.flags & FLAG_PROXIABLE) | error,
            command: request.command,
            application: request.application,
            hop_by_hop: request.hop_by_hop,
            end_to_end: request.end_to_end,
            avps: all,
        }
    }

    fn handle(&mut self, context: &Arc<Context>, arrival: &Arrival<'_>, bytes: &[u8]) -> Taken {
        let len = bytes.len();
        let request = match diameter::decode(bytes) {
            Ok(request) => request,
            Err(diameter::DiameterError::AvpLength { code }) => {
                // The header is whole: answer it 5014, naming the AVP.
                let Some(header) = header_only(bytes) else { return Taken::Broken(Vec::new()) };
                let failed = Avp::grouped(avp::FAILED_AVP, &[Avp::new(code, Vec::new())]);
                let answer = self.answer(&header, result::INVALID_AVP_LENGTH, vec![failed]);
                return Taken::Message(len, Handled::Now(diameter::encode(&answer)));
            }
            Err(_) => return Taken::Broken(Vec::new()),
        };
        if !request.is_request() {
            // RAA, ASA, and answers to nothing: nothing to do.
            return Taken::Message(len, Handled::Now(Vec::new()));
        }
        let now = |answer: Message| Taken::Message(len, Handled::Now(diameter::encode(&answer)));
        match request.command {
            CAPABILITIES_EXCHANGE => now(self.capabilities(&request)),
            _ if self.peer.is_none() => {
                now(self.answer(&request, result::UNKNOWN_PEER, Vec::new()))
            }
            DEVICE_WATCHDOG => now(self.answer(&request, result::SUCCESS, Vec::new())),
            DISCONNECT_PEER => {
                // The peer goes: answer, then close.
                Taken::Broken(diameter::encode(&self.answer(&request, result::SUCCESS, Vec::new())))
            }
            CREDIT_CONTROL if request.application == CREDIT_CONTROL_APPLICATION => {
                let origin = self.peer.as_ref().map(|(host, _)| host.clone()).unwrap_or_default();
                Taken::Message(len, ccr::handle(self, context, arrival, request, &origin))
            }
            // A command this switch does not serve (RFC 6733 3001 COMMAND_UNSUPPORTED).
            _ => now(self.answer(&request, 3001, Vec::new())),
        }
    }

    /// CER → CEA: the peer must offer credit control (or relay); its Origin-Host names it.
    fn capabilities(&mut self, request: &Message) -> Message {
        let offers = request.avps.iter().any(|offered| match offered.code {
            avp::AUTH_APPLICATION_ID | avp::ACCT_APPLICATION_ID => {
                matches!(offered.as_u32(), Some(CREDIT_CONTROL_APPLICATION | RELAY_APPLICATION))
            }
            avp::VENDOR_SPECIFIC_APPLICATION_ID => offered.as_grouped().is_ok_and(|inner| {
                diameter::find(&inner, avp::AUTH_APPLICATION_ID)
                    .and_then(Avp::as_u32)
                    .is_some_and(|id| id == CREDIT_CONTROL_APPLICATION)
            }),
            _ => false,
        });
        let text =
            |code| request.avp(code).and_then(|found| String::from_utf8(found.data.clone()).ok());
        let (Some(host), Some(realm)) = (text(avp::ORIGIN_HOST), text(avp::ORIGIN_REALM)) else {
            return self.answer(request, result::MISSING_AVP, Vec::new());
        };
        if !offers {
            return self.answer(request, result::NO_COMMON_APPLICATION, Vec::new());
        }
        self.peer = Some((host, realm));
        self.answer(
            request,
            result::SUCCESS,
            vec![
                // IPv4 loopback as an Address AVP (family 1): the switch's own address is
                // the transport's business; this satisfies the CEA's required AVP.
                Avp::new(avp::HOST_IP_ADDRESS, vec![0, 1, 127, 0, 0, 1]),
                Avp::u32(avp::VENDOR_ID, 0),
                Avp { flags: 0, ..Avp::text(avp::PRODUCT_NAME, "pinswitch") },
                Avp::u32(avp::AUTH_APPLICATION_ID, CREDIT_CONTROL_APPLICATION),
            ],
        )
    }

    /// A request this switch sends the peer (RAR, ASR) for a session.
    fn server_request(&mut self, command: u32, session: &str, mut avps: Vec<Avp>) -> Vec<u8> {
        let Some((peer_host, peer_realm)) = self.peer.clone() else { return Vec::new() };
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let mut all = vec![
            Avp::text(avp::SESSION_ID, session),
            Avp::text(avp::ORIGIN_HOST, &self.settings.origin_host),
            Avp::text(avp::ORIGIN_REALM, &self.settings.origin_realm),
            Avp::text(avp::DESTINATION_REALM, &peer_realm),
            Avp::text(avp::DESTINATION_HOST, &peer_host),
            Avp::u32(avp::AUTH_APPLICATION_ID, CREDIT_CONTROL_APPLICATION),
        ];
        all.append(&mut avps);
        diameter::encode(&Message {
            flags: FLAG_REQUEST | FLAG_PROXIABLE,
            command,
            application: CREDIT_CONTROL_APPLICATION,
            hop_by_hop: id,
            end_to_end: id,
            avps: all,
        })
    }
}

/// A message whose AVPs did not parse, as its header alone.
fn header_only(bytes: &[u8]) -> Option<Message> {
    let header = bytes.get(..diameter::HEADER_BYTES)?;
    let mut copy = header.to_vec();
    copy[1..4].copy_from_slice(&[0, 0, 20]);
    diameter::decode(&copy).ok()
}

impl Framing for DiameterFraming {
    fn take(&mut self, context: &Arc<Context>, arrival: &Arrival<'_>, input: &[u8]) -> Taken {
        let Some(len) = diameter::message_len(input) else { return Taken::Incomplete };
        if input[0] != 1 || len < diameter::HEADER_BYTES || len > self.settings.message_bytes_max {
            // Not Diameter version 1, or a length no message has: close.
            return Taken::Broken(Vec::new());
        }
        let Some(bytes) = input.get(..len) else { return Taken::Incomplete };
        self.handle(context, arrival, bytes)
    }

    fn pending_len(&self, input: &[u8]) -> Option<usize> {
        diameter::message_len(input)
    }

    fn refused(&self, _input: &[u8]) -> Vec<u8> {
        // Only a message larger than the shared receive budget allows: skipped unanswered.
        Vec::new()
    }

    fn not_permitted(&self) -> Option<Vec<u8>> {
        None
    }

    /// SESSION_NOTICE → RAR (re-authorize: the card was recharged) or ASR (abort: the card
    /// was blocked) for the session's Diameter Session-Id; other notices have no Diameter form.
    fn push(&mut self, frame: Vec<u8>) -> Vec<u8> {
        let Ok(Some(frame)) = decode_frame(&frame, u32::MAX) else { return Vec::new() };
        if frame.header.msg_type != MsgType::SessionNotice as u16 {
            return Vec::new();
        }
        let Ok(notices) = decode_body::<Vec<SessionNotice>>(frame.body) else { return Vec::new() };
        let mut out = Vec::new();
        for notice in notices {
            let Some(session) = self.state.borrow().names.get(&notice.session_id).cloned() else {
                continue;
            };
            match notice.kind {
                NOTICE_REAUTHORIZE => out.extend(self.server_request(
                    RE_AUTH,
                    &session,
                    // AUTHORIZE_ONLY (0): report and ask again.
                    vec![Avp::u32(avp::RE_AUTH_REQUEST_TYPE, 0)],
                )),
                NOTICE_ABORT => {
                    out.extend(self.server_request(ABORT_SESSION, &session, Vec::new()))
                }
                _ => {}
            }
        }
        out
    }
}

/// Starts the Diameter thread listening on `section.listen`; returns the address it bound.
/// Its connections share one `State` (a peer may fail over from one to another).
pub(crate) fn start(
    section: &DiameterSection,
    context: &Arc<Context>,
) -> anyhow::Result<SocketAddr> {
    let settings = Arc::new(Settings::from_config(section)?);
    crate::adapter_listener::start("Diameter", &section.listen, context, move || {
        let state = Rc::new(RefCell::new(State::default()));
        Box::new(move || DiameterFraming::new(settings.clone(), state.clone()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(state: &mut State, session: &str, native_id: u128, now_ms: u64) {
        let tracked = Tracked {
            native_id,
            started_ms: now_ms,
            used_total_s: 0,
            last_number: 0,
            last_seen_ms: now_ms,
            ended: false,
        };
        state.sessions.insert(session.into(), tracked);
        state.names.insert(native_id, session.into());
        state.reviews.push_back((session.into(), now_ms + SESSION_SILENCE_MAX_MS));
    }

    /// Ended sessions go once their retransmissions cannot come, silent ones after a day, and
    /// a session that keeps reporting stays however long it lasts.
    #[test]
    fn tracked_sessions_are_forgotten_when_ended_or_silent() {
        let mut state = State::default();
        start(&mut state, "ended", 1, 0);
        start(&mut state, "silent", 2, 0);
        start(&mut state, "talking", 3, 0);
        state.touched("ended", 1_000, true);
        state.review(1_000 + DUPLICATE_WINDOW_MS - 1);
        assert!(state.sessions.contains_key("ended"), "a retransmission may still come");
        state.review(1_000 + DUPLICATE_WINDOW_MS);
        assert!(!state.sessions.contains_key("ended") && !state.names.contains_key(&1));
        for hour in 1..=30 {
            state.touched("talking", hour * 3_600_000, false);
            state.review(hour * 3_600_000);
        }
        assert!(!state.sessions.contains_key("silent"), "silent for a day");
        assert!(state.sessions.contains_key("talking") && state.reviews.len() == 1);
        assert_eq!(state.first_seen_ms("sw", 7, 10), 10);
        assert_eq!(state.first_seen_ms("sw", 7, 20), 10, "a duplicate within the window");
        assert_eq!(
            state.first_seen_ms("sw", 7, 10 + DUPLICATE_WINDOW_MS),
            10 + DUPLICATE_WINDOW_MS
        );
    }
}
