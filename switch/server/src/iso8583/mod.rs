//! The ISO 8583 front end, for acquirer hosts and payment gateways as they are: ISO 8583:1987
//! messages, each behind the common 2-byte big-endian length prefix, on their own listener
//! (`[iso8583] listen`), with TLS and mutual TLS exactly as the native listener (the first byte
//! tells a TLS handshake from a length prefix: a message is at most 5,631 bytes, so its prefix
//! never starts with 0x16). It is an adapter: each request becomes one native event
//! (`requests.rs`), handed to `native::handle_frame` as the native protocol's own frame would
//! be, so roles, limits, PIN-guess metering, exactly-once and the journal rule are the native
//! ones; the native answer becomes the ISO response (`answers.rs`). Responses may overtake
//! one another; acquirers match them by DE 11 and DE 41. protocol/ISO8583.md specifies it.
//!
//! Network management (0800) is answered here: echo, sign-on and sign-off (after which the
//! connection's financial requests are answered 91 until the next sign-on). One thread runs
//! the listener on a tokio current-thread runtime, as QUIC's does, and submits to the shards
//! through their thread-safe queues.

mod answers;
mod pin_block;
mod requests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use pinswitch_protocol::iso8583::{self, Encoding, Message};

use crate::config::Iso8583Section;
use crate::conn::{Arrival, Framing, Taken};
use crate::native::{Context, Handled};
pub(crate) use pin_block::PinKey;
use requests::{Network, Plan};

/// The longest message any configuration may allow: a longer one's length prefix would begin
/// with 0x16, the first byte of a TLS handshake.
pub(crate) const MESSAGE_BYTES_LIMIT: u32 = 0x15FF;

/// The listener's settings, read once at start. No `Debug`: it holds the zone PIN key.
pub(crate) struct Settings {
    encoding: Encoding,
    pin_key: PinKey,
    /// The category every payment is made in (`[iso8583] category`).
    category: u8,
    hold_ttl_s: u32,
    message_bytes_max: usize,
    /// DE 42 values (spaces trimmed) that are not our merchant id in digits.
    merchants: HashMap<Vec<u8>, u64>,
}

impl Settings {
    pub(crate) fn from_config(section: &Iso8583Section) -> anyhow::Result<Settings> {
        let encoding = match section.encoding.as_str() {
            "ascii" => Encoding::Ascii,
            "binary" => Encoding::Binary,
            other => bail!("iso8583.encoding {other:?}: \"ascii\" or \"binary\""),
        };
        let pin_key = match section.pin_block.as_str() {
            "clear" => PinKey::Clear,
            "zpk" => {
                let path = &section.zone_pin_key_file;
                if path.as_os_str().is_empty() {
                    bail!("iso8583.pin_block = \"zpk\" needs iso8583.zone_pin_key_file");
                }
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the zone PIN key {}", path.display()))?;
                PinKey::from_hex(&text)
                    .map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))?
            }
            other => bail!("iso8583.pin_block {other:?}: \"zpk\" or \"clear\""),
        };
        let category = pinswitch_protocol::Category::ALL
            .iter()
            .find(|category| category.name() == section.category)
            .with_context(|| format!("iso8583.category {:?} is no category", section.category))?;
        let merchants = section
            .merchants
            .iter()
            .map(|merchant| {
                (merchant.card_acceptor_id.trim().as_bytes().to_vec(), merchant.merchant_id)
            })
            .collect();
        Ok(Settings {
            encoding,
            pin_key,
            category: *category as u8,
            hold_ttl_s: section.hold_ttl_s,
            message_bytes_max: section.message_bytes_max as usize,
            merchants,
        })
    }

    /// Our merchant id for a DE 42: its digits, or the configured map's entry.
    fn merchant_id(&self, card_acceptor: &[u8]) -> Option<u64> {
        let trimmed = card_acceptor.trim_ascii();
        if let Some(id) = self.merchants.get(trimmed) {
            return Some(*id);
        }
        if trimmed.is_empty() || !trimmed.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(trimmed).ok()?.parse().ok()
    }
}

/// One connection's ISO 8583 framing and state (signed off or not).
pub(crate) struct IsoFraming {
    settings: Arc<Settings>,
    signed_off: bool,
}

impl IsoFraming {
    pub(crate) fn new(settings: Arc<Settings>) -> IsoFraming {
        IsoFraming { settings, signed_off: false }
    }

    /// A response, length-prefixed.
    fn framed(&self, response: &Message) -> Vec<u8> {
        framed(self.settings.encoding, response)
    }

    fn handle(&mut self, context: &Arc<Context>, arrival: &Arrival<'_>, bytes: &[u8]) -> Handled {
        let encoding = self.settings.encoding;
        let request =
            match iso8583::decode(bytes, encoding) {
                Ok(request) => request,
                Err(_) => {
                    // A message whose type could be read gets its format error; one whose type
                    // could not, or that asks for nothing, is dropped (no response type fits it).
                    let mti = bytes.get(..4).and_then(|mti| <[u8; 4]>::try_from(mti).ok()).filter(
                        |mti| mti.iter().all(u8::is_ascii_digit) && matches!(mti[2], b'0' | b'2'),
                    );
                    return Handled::Now(match mti {
                        Some(mti) => self
                            .framed(&answers::response(&Message::new(mti), requests::FORMAT_ERROR)),
                        None => Vec::new(),
                    });
                }
            };
        if let Some(network) = requests::network(&request) {
            let code = match network {
                Ok(Network::SignOn) => {
                    self.signed_off = false;
                    requests::network_answer()
                }
                Ok(Network::SignOff) => {
                    self.signed_off = true;
                    requests::network_answer()
                }
                Ok(Network::Echo) => requests::network_answer(),
                Err(code) => code,
            };
            return Handled::Now(self.framed(&answers::response(&request, code)));
        }
        let grants = arrival.connection.grants;
        let plan = requests::plan(&self.settings, &context.keys, &request, arrival.now_ms, |id| {
            grants.may_act_for_merchant(id)
        });
        match plan {
            Plan::Ignore => Handled::Now(Vec::new()),
            Plan::Answer(code) => Handled::Now(self.framed(&answers::response(&request, code))),
            Plan::Native { .. } if self.signed_off => {
                Handled::Now(self.framed(&answers::response(&request, b"91")))
            }
            Plan::Native { msg_type, body, kind } => {
                let encoding = self.settings.encoding;
                crate::adapter_listener::handle_event(
                    context,
                    arrival,
                    msg_type,
                    &body,
                    move |frame| framed(encoding, &answers::from_native(&request, kind, frame)),
                )
            }
        }
    }
}

/// `response` behind its 2-byte length prefix. A response this front end built always
/// encodes; were one not to, the request gets a bare system-malfunction answer.
fn framed(encoding: Encoding, response: &Message) -> Vec<u8> {
    let bytes = iso8583::encode(response, encoding).unwrap_or_else(|error| {
        eprintln!("pinswitch: iso8583: a response did not encode ({error}); answered 96");
        let mut bare = Message::new(response.mti);
        bare.set(39, b"96".to_vec());
        iso8583::encode(&bare, encoding).unwrap_or_default()
    });
    let Ok(len) = u16::try_from(bytes.len()) else { return Vec::new() };
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&bytes);
    out
}

impl Framing for IsoFraming {
    fn take(&mut self, context: &Arc<Context>, arrival: &Arrival<'_>, input: &[u8]) -> Taken {
        let Some(prefix) = input.get(..2) else { return Taken::Incomplete };
        let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
        if len == 0 || len > self.settings.message_bytes_max {
            // A length no message has: the stream's framing cannot be trusted any more.
            return Taken::Broken(Vec::new());
        }
        let Some(bytes) = input.get(2..2 + len) else { return Taken::Incomplete };
        Taken::Message(2 + len, self.handle(context, arrival, bytes))
    }

    fn pending_len(&self, input: &[u8]) -> Option<usize> {
        let prefix = input.get(..2)?;
        Some(2 + usize::from(u16::from_be_bytes([prefix[0], prefix[1]])))
    }

    fn refused(&self, _input: &[u8]) -> Vec<u8> {
        // A message is at most 5,631 bytes, under the receive buffer every connection starts
        // with, so the budget never refuses one; were it to, the message is skipped unanswered.
        Vec::new()
    }

    fn not_permitted(&self) -> Option<Vec<u8>> {
        None
    }

    fn push(&mut self, _frame: Vec<u8>) -> Vec<u8> {
        // ISO 8583 has no session pushes (and no sessions start through it).
        Vec::new()
    }
}

/// Starts the ISO 8583 thread listening on `section.listen`; returns the address it bound.
pub(crate) fn start(
    section: &Iso8583Section,
    context: &Arc<Context>,
) -> anyhow::Result<SocketAddr> {
    let settings = Arc::new(Settings::from_config(section)?);
    crate::adapter_listener::start("ISO 8583", &section.listen, context, move || {
        Box::new(move || IsoFraming::new(settings.clone()))
    })
}
