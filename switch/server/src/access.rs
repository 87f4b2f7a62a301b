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
                Authorize | Capture | Void | Reverse | Sale | Refund | Inquiry | BalanceInquiry
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
}

/// What one connection may do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Grants {
    /// The identity's name, for logs ("" for plain TCP).
    pub name: String,
    roles: Vec<Role>,
    admin: bool,
    merchant_ids: HashSet<u64>,
    owner_id: Option<u32>,
    channel_ids: HashSet<u32>,
}

impl Grants {
    /// The grants of a configured identity.
    pub(crate) fn of(identity: &IdentityConfig) -> Grants {
        Grants {
            name: identity.name.clone(),
            admin: identity.roles.contains(&Role::Admin),
            roles: identity.roles.clone(),
            merchant_ids: identity.merchant_ids.iter().copied().collect(),
            owner_id: identity.owner_id,
            channel_ids: identity.channel_ids.iter().copied().collect(),
        }
    }

    /// Roles with no business-id binding (plain TCP on loopback: the embedded default).
    pub(crate) fn unbound(roles: &[Role]) -> Grants {
        Grants { admin: roles.contains(&Role::Admin), roles: roles.to_vec(), ..Grants::default() }
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
    plain_grants: Arc<Grants>,
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
            plain_grants: Arc::new(Grants::unbound(&access.plain_roles)),
            anonymous: Arc::new(Grants::unbound(&access.anonymous_roles)),
            identities: access
                .identities
                .iter()
                .map(|identity| (identity.name.clone(), Arc::new(Grants::of(identity))))
                .collect(),
            nobody: Arc::new(Grants::default()),
        })
    }

    /// The grants of a plain TCP connection from `peer`, or `None`: plain TCP is refused.
    pub(crate) fn plain(&self, peer: IpAddr) -> Option<Arc<Grants>> {
        let served = match self.plain {
            Plain::Off => false,
            Plain::Loopback => peer.is_loopback(),
            Plain::Any => true,
        };
        served.then(|| self.plain_grants.clone())
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

    #[test]
    fn a_gateway_pays_for_its_own_merchants_only() {
        let grants = gateway();
        assert_eq!(grants.check(MsgType::Sale, &sale(7)), Ok(()));
        assert_eq!(grants.check(MsgType::Sale, &sale(8)), Err(ResultCode::NotPermitted));
        assert_eq!(grants.check(MsgType::CardLoad, &[]), Err(ResultCode::NotPermitted));
        assert_eq!(grants.check(MsgType::Ping, &[]), Ok(()));
        assert_eq!(Grants::unbound(&[Role::Admin]).check(MsgType::Sale, &sale(8)), Ok(()));
        assert_eq!(Grants::default().check(MsgType::Sale, &sale(7)), Err(ResultCode::NotPermitted));
    }
}
