//! Who may do what. A connection carries `Grants`: the roles of its identity (the client
//! certificate's name under mutual TLS, or what the configuration gives plain TCP) and the
//! business ids it is bound to. `Grants::check` is asked once per frame, before anything in it
//! runs: a message type outside the roles, or an event naming a merchant, call-switch owner or
//! sales channel the identity is not bound to, refuses the whole frame with NOT_PERMITTED.
//! Front ends ask the same question of the same grants; no business rule lives here.
//!
//! CAPTURE, VOID, REVERSE and REFUND name the op id of an AUTHORIZE or SALE rather than a
//! merchant; SESSION_UPDATE and SESSION_END name a session id the call switch drew. Those ids
//! are 128-bit values only their sender knows; the roles still gate the message types.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use pinswitch_protocol::{self as protocol, MsgType, ResultCode, access_body};
use serde::Deserialize;

use crate::config::{AccessSection, TlsSection};

/// A job a client may do (PROTOCOL.md §2, "Roles").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Role {
    /// A merchant's payment gateway: payments for its own merchant ids.
    Gateway,
    /// A telephone switch: calls and per-use charges for its own owner id.
    CallSwitch,
    /// A sales site, agent or mobile operator: sells, activates and recharges cards.
    Channel,
    /// The back office: the card's life.
    Operator,
    /// The settlement exporter: reads, and the deposit sales of bank statements.
    Settlement,
    /// Everything.
    Admin,
}

impl Role {
    /// Whether this role may send `msg_type` at all.
    fn allows(self, msg_type: MsgType) -> bool {
        use MsgType::*;
        match self {
            Role::Admin => true,
            Role::Gateway => matches!(
                msg_type,
                Authorize
                    | Capture
                    | Void
                    | Reverse
                    | Sale
                    | Refund
                    | Inquiry
                    | OpFence
                    | BalanceInquiry
            ),
            Role::CallSwitch => matches!(
                msg_type,
                SessionStart
                    | SessionUpdate
                    | SessionEnd
                    | EventCharge
                    | PriceQuote
                    | SessionAudit
                    | Inquiry
                    | OpFence
            ),
            Role::Channel => matches!(
                msg_type,
                CardSell
                    | CardActivate
                    | CardClaim
                    | CardLoad
                    | ForeignConvert
                    | BalanceInquiry
                    | Inquiry
                    | OpFence
            ),
            Role::Operator => matches!(
                msg_type,
                CardIssue
                    | CardConsign
                    | CardBlock
                    | CardUnblock
                    | CardRegister
                    | CardRefund
                    | ForeignImport
                    | BalanceInquiry
                    | Inquiry
                    | OpFence
            ),
            Role::Settlement => {
                matches!(msg_type, CardIssue | CardSell | Inquiry | BalanceInquiry | PriceQuote)
            }
        }
    }
}

/// One identity of the configuration (`[[access.identities]]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdentityConfig {
    /// The name its client certificate carries (its first DNS name).
    pub name: String,
    pub roles: Vec<Role>,
    /// The merchants a gateway pays for (AUTHORIZE, SALE); empty: none.
    #[serde(default)]
    pub merchant_ids: Vec<u64>,
    /// The owner id a call switch's sessions and audits carry; absent: none.
    #[serde(default)]
    pub owner_id: Option<u32>,
    /// The channels a seller sells through (CARD_SELL); empty: none.
    #[serde(default)]
    pub channel_ids: Vec<u32>,
    /// Unknown-card and wrong-password answers this identity may get in a minute, over all its
    /// connections; past it, its frames are answered RETRY_LATER for a growing time. 0: not
    /// metered.
    #[serde(default = "default_guesses_per_minute_max")]
    pub guesses_per_minute_max: u32,
}

/// A gateway's typos stay far below this; a PIN scanner reaches it in a second.
pub(crate) const GUESSES_PER_MINUTE_DEFAULT: u32 = 60;

fn default_guesses_per_minute_max() -> u32 {
    GUESSES_PER_MINUTE_DEFAULT
}

/// The first block of a guesser; each block that follows within `GUESS_PENALTY_RESET_MS` of the
/// last one ending doubles, up to `GUESS_PENALTY_MAX_MS`.
const GUESS_PENALTY_FIRST_MS: u64 = 60_000;
const GUESS_PENALTY_MAX_MS: u64 = 3_600_000;
const GUESS_PENALTY_RESET_MS: u64 = 3_600_000;
const GUESS_WINDOW_MS: u64 = 60_000;

/// Counts the answers that tell a guesser something (CARD_NOT_FOUND, PASSWORD_INVALID,
/// PASSWORD_TRIES_EXCEEDED) per minute, and blocks past `per_minute_max`. Lock-free: every
/// frame asks `throttled`, so the common case is one relaxed load.
#[derive(Debug, Default)]
pub(crate) struct GuessMeter {
    name: String,
    per_minute_max: u32,
    window_start_ms: AtomicU64,
    count: AtomicU32,
    blocked_until_ms: AtomicU64,
    penalty_ms: AtomicU64,
}

impl GuessMeter {
    fn new(name: &str, per_minute_max: u32) -> GuessMeter {
        GuessMeter {
            name: name.to_owned(),
            per_minute_max,
            penalty_ms: AtomicU64::new(GUESS_PENALTY_FIRST_MS),
            ..GuessMeter::default()
        }
    }

    /// Whether frames are refused at `now_ms`.
    pub(crate) fn throttled(&self, now_ms: u64) -> bool {
        self.per_minute_max > 0 && now_ms < self.blocked_until_ms.load(Ordering::Relaxed)
    }

    /// Counts a frame's answers (their result codes, through `code_of`) and withholds, with
    /// `withhold`, each guess answer past the identity's budget for the minute: so a frame of
    /// thousands of random PINs tells its sender no more than `per_minute_max` of them (the
    /// block that follows refuses the next frames whole). An identity without a meter is left
    /// alone, and so is every answer that is not a guess's.
    pub(crate) fn meter<R>(
        &self,
        results: &mut [R],
        code_of: impl Fn(&R) -> u16,
        withhold: impl Fn(&mut R),
    ) {
        if self.per_minute_max == 0 {
            return;
        }
        let guesses = results.iter().filter(|result| is_guess_answer(code_of(result))).count();
        if guesses == 0 {
            return;
        }
        let guesses = u32::try_from(guesses).unwrap_or(u32::MAX);
        let mut shown = self.count_at(crate::shard_loop::wall_clock_ms(), guesses);
        for result in results.iter_mut().filter(|result| is_guess_answer(code_of(result))) {
            if shown == 0 {
                withhold(result);
            } else {
                shown -= 1;
            }
        }
    }

    /// Counts `guesses` answers at `now_ms`; how many of them fit the minute's budget.
    fn count_at(&self, now_ms: u64, guesses: u32) -> u32 {
        let window_start_ms = self.window_start_ms.load(Ordering::Acquire);
        if now_ms.saturating_sub(window_start_ms) >= GUESS_WINDOW_MS
            && self
                .window_start_ms
                .compare_exchange(window_start_ms, now_ms, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.count.store(0, Ordering::Release);
        }
        let before = self.count.fetch_add(guesses, Ordering::AcqRel);
        let shown = self.per_minute_max.saturating_sub(before).min(guesses);
        let total = before.saturating_add(guesses);
        if total <= self.per_minute_max {
            return shown;
        }
        let blocked_until_ms = self.blocked_until_ms.load(Ordering::Acquire);
        if now_ms < blocked_until_ms {
            return shown;
        }
        let mut penalty_ms = self.penalty_ms.load(Ordering::Acquire);
        if now_ms.saturating_sub(blocked_until_ms) >= GUESS_PENALTY_RESET_MS {
            penalty_ms = GUESS_PENALTY_FIRST_MS;
        }
        self.blocked_until_ms.store(now_ms + penalty_ms, Ordering::Release);
        self.penalty_ms.store((penalty_ms * 2).min(GUESS_PENALTY_MAX_MS), Ordering::Release);
        self.count.store(0, Ordering::Release);
        // One line per block, not per refused frame.
        eprintln!(
            "pinswitch: {} guessed: {total} unknown-card or wrong-password answers within a minute \
             (limit {}); its frames are answered RETRY_LATER for {} s",
            if self.name.is_empty() { "a plain TCP connection" } else { self.name.as_str() },
            self.per_minute_max,
            penalty_ms / 1000
        );
        shown
    }
}

/// The answers a PIN or password guesser learns from.
fn is_guess_answer(code: u16) -> bool {
    [ResultCode::CardNotFound, ResultCode::PasswordInvalid, ResultCode::PasswordTriesExceeded]
        .iter()
        .any(|answer| answer.as_u16() == code)
}

/// What one connection may do.
#[derive(Debug, Default)]
pub(crate) struct Grants {
    roles: Vec<Role>,
    admin: bool,
    merchant_ids: HashSet<u64>,
    owner_id: Option<u32>,
    channel_ids: HashSet<u32>,
    /// Unknown-card and wrong-password answers, shared by the identity's connections.
    pub guesses: GuessMeter,
}

impl Grants {
    /// The grants of a configured identity.
    pub(crate) fn of(identity: &IdentityConfig) -> Grants {
        Grants {
            admin: identity.roles.contains(&Role::Admin),
            roles: identity.roles.clone(),
            merchant_ids: identity.merchant_ids.iter().copied().collect(),
            owner_id: identity.owner_id,
            channel_ids: identity.channel_ids.iter().copied().collect(),
            guesses: GuessMeter::new(&identity.name, identity.guesses_per_minute_max),
        }
    }

    /// Roles with no business-id binding (plain TCP, TLS without a certificate), metered at
    /// `guesses_per_minute_max` (0: not metered).
    pub(crate) fn unbound(name: &str, roles: &[Role], guesses_per_minute_max: u32) -> Grants {
        Grants {
            admin: roles.contains(&Role::Admin),
            roles: roles.to_vec(),
            guesses: GuessMeter::new(name, guesses_per_minute_max),
            ..Grants::default()
        }
    }

    /// The call-switch owner this identity is bound to, if any.
    pub(crate) fn owner_id(&self) -> Option<u32> {
        self.owner_id
    }

    /// Whether this identity may act for `merchant_id`: an admin, or an identity bound to it.
    /// Front ends whose messages name their card acceptor even where the native event names
    /// none (ISO 8583's completions and reversals carry DE 42, and the op id of the original
    /// they derive depends on it) check it for every message.
    pub(crate) fn may_act_for_merchant(&self, merchant_id: u64) -> bool {
        self.admin || self.merchant_ids.contains(&merchant_id)
    }

    /// Whether a frame of `msg_type` with `body` may run: `Err(NotPermitted)` refuses it whole.
    /// HELLO and PING are everyone's. An admin is bound to no business id. A body that does
    /// not decode passes here: the front end answers it FORMAT_ERROR as for anyone.
    pub(crate) fn check(&self, msg_type: MsgType, body: &[u8]) -> Result<(), ResultCode> {
        if matches!(msg_type, MsgType::Hello | MsgType::Ping) || self.admin {
            return Ok(());
        }
        if !self.roles.iter().any(|role| role.allows(msg_type)) {
            return Err(ResultCode::NotPermitted);
        }
        // Every event of a batch must pass; a body that does not decode passes here.
        macro_rules! every {
            ($ty:ty, |$event:ident| $permitted:expr) => {
                match access_body::<Vec<$ty>>(body) {
                    Ok(events) => events.iter().all(|$event| $permitted),
                    Err(_) => true,
                }
            };
        }
        let permitted = match msg_type {
            MsgType::Authorize => {
                every!(protocol::Authorize, |event| self
                    .merchant_ids
                    .contains(&event.merchant_id.to_native()))
            }
            MsgType::Sale => {
                every!(protocol::Sale, |event| self
                    .merchant_ids
                    .contains(&event.merchant_id.to_native()))
            }
            MsgType::SessionStart => {
                every!(protocol::SessionStart, |event| self.owner_id
                    == Some(event.owner_id.to_native()))
            }
            // The exporter's deposit sales name the channel of the bank statement's deposit.
            MsgType::CardSell if !self.roles.contains(&Role::Settlement) => {
                every!(protocol::CardSell, |event| self
                    .channel_ids
                    .contains(&event.channel_id.to_native()))
            }
            MsgType::SessionAudit => match access_body::<protocol::SessionAudit>(body) {
                Ok(audit) => self.owner_id == Some(audit.owner_id.to_native()),
                Err(_) => true,
            },
            _ => true,
        };
        if permitted { Ok(()) } else { Err(ResultCode::NotPermitted) }
    }
}

/// What the switch trusts, from `[tls]` and `[access]`: the TLS configuration, and the grants
/// of plain TCP, of anonymous TLS clients and of each certificate name.
pub(crate) struct Trust {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    plain: Plain,
    plain_roles: Vec<Role>,
    plain_guesses_per_minute_max: u32,
    anonymous: Arc<Grants>,
    identities: HashMap<String, Arc<Grants>>,
    nobody: Arc<Grants>,
}

/// Where plain TCP is served.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plain {
    Off,
    Loopback,
    Any,
}

impl Trust {
    /// Reads the certificates and the identities (the configuration was validated).
    pub(crate) fn new(tls: &TlsSection, access: &AccessSection) -> anyhow::Result<Trust> {
        let tls =
            if tls.cert_pem.is_empty() { None } else { Some(crate::tls::server_config(tls)?) };
        Ok(Trust {
            tls,
            plain: match access.plain.as_str() {
                "off" => Plain::Off,
                "any" => Plain::Any,
                _ => Plain::Loopback,
            },
            plain_roles: access.plain_roles.clone(),
            plain_guesses_per_minute_max: access.plain_guesses_per_minute_max,
            anonymous: Arc::new(Grants::unbound(
                "anonymous TLS clients",
                &access.anonymous_roles,
                GUESSES_PER_MINUTE_DEFAULT,
            )),
            identities: access
                .identities
                .iter()
                .map(|identity| (identity.name.clone(), Arc::new(Grants::of(identity))))
                .collect(),
            nobody: Arc::new(Grants::default()),
        })
    }

    /// The grants of a plain TCP connection from `peer` (metered per connection), or `None`:
    /// plain TCP is refused.
    pub(crate) fn plain(&self, peer: IpAddr) -> Option<Arc<Grants>> {
        let served = match self.plain {
            Plain::Off => false,
            Plain::Loopback => peer.is_loopback(),
            Plain::Any => true,
        };
        served.then(|| {
            Arc::new(Grants::unbound("", &self.plain_roles, self.plain_guesses_per_minute_max))
        })
    }

    /// The grants of a TLS connection whose verified client certificate names `name` (`None`:
    /// no certificate).
    pub(crate) fn tls_client(&self, name: Option<&str>) -> Arc<Grants> {
        match name {
            None => self.anonymous.clone(),
            Some(name) => self.identities.get(name).unwrap_or(&self.nobody).clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinswitch_protocol::encode_body;

    fn gateway() -> Grants {
        Grants::of(&IdentityConfig {
            name: "gw".into(),
            roles: vec![Role::Gateway],
            merchant_ids: vec![7],
            owner_id: None,
            channel_ids: vec![],
            guesses_per_minute_max: 3,
        })
    }

    fn sale(merchant_id: u64) -> Vec<u8> {
        encode_body(&vec![protocol::Sale {
            op_id: 1,
            pin: 1,
            password: vec![],
            amount_won: 1,
            merchant_id,
            category: 1,
        }])
    }

    /// Past the limit within a minute the identity is blocked for a minute, then for twice as
    /// long when it guesses again soon after; declines that tell nothing are not counted.
    #[test]
    fn guessing_past_the_limit_blocks_for_a_growing_time() {
        let meter = gateway().guesses;
        let not_found = ResultCode::CardNotFound.as_u16();
        assert_eq!(meter.count_at(1_000, 3), 3);
        assert!(!meter.throttled(1_000), "3 of 3 is within the limit");
        let mut declines = [ResultCode::InsufficientFunds.as_u16()];
        meter.meter(&mut declines, |code| *code, |code| *code = 0);
        assert_eq!(declines, [ResultCode::InsufficientFunds.as_u16()], "not a guess's answer");
        assert_eq!(meter.count_at(2_000, 1), 0, "past the limit: withheld");
        assert!(meter.throttled(2_000) && meter.throttled(61_999) && !meter.throttled(62_000));
        assert_eq!(meter.count_at(70_000, 4), 3);
        assert!(meter.throttled(70_000 + 119_999) && !meter.throttled(70_000 + 120_000));
        assert!(is_guess_answer(not_found) && !is_guess_answer(0));
    }

    /// One frame of many guesses shows no more of their answers than the minute allows, and
    /// leaves the other answers alone.
    #[test]
    fn a_frame_of_guesses_shows_the_budget_and_withholds_the_rest() {
        let meter = gateway().guesses;
        let not_found = ResultCode::CardNotFound.as_u16();
        let withheld = ResultCode::AnswerWithheld.as_u16();
        let mut answers = [not_found, 0, not_found, not_found, not_found, 51, not_found];
        meter.meter(&mut answers, |code| *code, |code| *code = withheld);
        assert_eq!(answers, [not_found, 0, not_found, not_found, withheld, 51, withheld]);
    }

    #[test]
    fn a_gateway_pays_for_its_own_merchants_only() {
        let grants = gateway();
        assert_eq!(grants.check(MsgType::Sale, &sale(7)), Ok(()));
        assert_eq!(grants.check(MsgType::Sale, &sale(8)), Err(ResultCode::NotPermitted));
        assert_eq!(grants.check(MsgType::CardLoad, &[]), Err(ResultCode::NotPermitted));
        assert_eq!(grants.check(MsgType::Ping, &[]), Ok(()));
        assert_eq!(Grants::unbound("", &[Role::Admin], 0).check(MsgType::Sale, &sale(8)), Ok(()));
        assert_eq!(Grants::default().check(MsgType::Sale, &sale(7)), Err(ResultCode::NotPermitted));
    }
}
