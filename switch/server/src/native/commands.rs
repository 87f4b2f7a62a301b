//! The native protocol's wire → engine half: one function per mutating message turns one
//! archived event into its op id and engine `Body` (hashing the PIN, MACing the password,
//! checking formats), or records the event's refusal and returns `None`. Front ends for other
//! protocols (ISO 8583, Diameter) are siblings that produce the same `Body`s; no business rule
//! lives here, only the wire's formats.

use pinswitch_core::{Body, ForeignCode, PinHash, SessionOpen, pack_destination};
use pinswitch_protocol::{self as protocol, OpResult, ResultCode};

use super::answers::op_code;
use crate::keys::Keys;

/// The PIN an event names (0 for the events that name no card): what the front end asks the
/// shard to look the card up under once a rotation has left older keys.
pub(super) trait EventPin {
    fn pin(&self) -> u64;
}

macro_rules! event_pin {
    ($($event:ty),* $(,)?) => {
        $(impl EventPin for $event {
            fn pin(&self) -> u64 {
                self.pin.to_native()
            }
        })*
    };
}

event_pin!(
    protocol::ArchivedCardActivate,
    protocol::ArchivedCardClaim,
    protocol::ArchivedCardLoad,
    protocol::ArchivedCardSell,
    protocol::ArchivedCardBlock,
    protocol::ArchivedCardUnblock,
    protocol::ArchivedOpFence,
    protocol::ArchivedCardConsign,
    protocol::ArchivedCardRegister,
    protocol::ArchivedCardRefund,
    protocol::ArchivedAuthorize,
    protocol::ArchivedCapture,
    protocol::ArchivedVoid,
    protocol::ArchivedReverse,
    protocol::ArchivedSale,
    protocol::ArchivedRefund,
    protocol::ArchivedSessionStart,
    protocol::ArchivedSessionUpdate,
    protocol::ArchivedSessionEnd,
    protocol::ArchivedEventCharge,
);

impl EventPin for protocol::ArchivedForeignImport {
    fn pin(&self) -> u64 {
        0
    }
}

/// Shortest and longest password a card holder may register (bytes).
pub(super) const PASSWORD_BYTES_MIN: usize = 4;
pub(super) const PASSWORD_BYTES_MAX: usize = 16;

/// CARD_ACTIVATE → its engine body.
pub(super) fn card_activate(
    keys: &Keys,
    event: &protocol::ArchivedCardActivate,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, first_name) = card(keys, event.pin.to_native(), result)?;
    let password_mac = password(keys, first_name, event.password.as_slice(), result)?;
    Some((event.op_id.to_native(), Body::Activate { pin_hash, password_mac }))
}

/// CARD_CLAIM → its engine body.
pub(super) fn card_claim(
    keys: &Keys,
    event: &protocol::ArchivedCardClaim,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, first_name) = card(keys, event.pin.to_native(), result)?;
    let password_mac = password(keys, first_name, event.password.as_slice(), result)?;
    let body = Body::Claim {
        pin_hash,
        password_mac,
        gift_recipient_ref: event.gift_recipient_ref.to_native(),
        password_hint: event.password_hint,
    };
    Some((event.op_id.to_native(), body))
}

/// CARD_LOAD → its engine body.
pub(super) fn card_load(
    keys: &Keys,
    event: &protocol::ArchivedCardLoad,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, _) = card(keys, event.pin.to_native(), result)?;
    let body =
        Body::Load { pin_hash, amount_won: event.amount_won.to_native(), funding: event.funding };
    Some((event.op_id.to_native(), body))
}

/// CARD_SELL → its engine body.
pub(super) fn card_sell(
    keys: &Keys,
    event: &protocol::ArchivedCardSell,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, _) = card(keys, event.pin.to_native(), result)?;
    let body = Body::Sell {
        pin_hash,
        channel_id: event.channel_id.to_native(),
        price_won: event.price_won.to_native(),
        payment_means: event.payment_means,
        gift_recipient_ref: event.gift_recipient_ref.to_native(),
    };
    Some((event.op_id.to_native(), body))
}

/// CARD_BLOCK → its engine body.
pub(super) fn card_block(
    keys: &Keys,
    event: &protocol::ArchivedCardBlock,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, _) = card(keys, event.pin.to_native(), result)?;
    Some((event.op_id.to_native(), Body::Block { pin_hash, reason: event.reason }))
}

/// CARD_UNBLOCK → its engine body.
pub(super) fn card_unblock(
    keys: &Keys,
    event: &protocol::ArchivedCardUnblock,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, _) = card(keys, event.pin.to_native(), result)?;
    Some((event.op_id.to_native(), Body::Unblock { pin_hash }))
}

/// OP_FENCE → its engine body, under the op id it fences.
pub(super) fn op_fence(
    keys: &Keys,
    event: &protocol::ArchivedOpFence,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, _) = card(keys, event.pin.to_native(), result)?;
    Some((event.op_id.to_native(), Body::Fence { pin_hash }))
}

/// CARD_CONSIGN → its engine body.
pub(super) fn card_consign(
    keys: &Keys,
    event: &protocol::ArchivedCardConsign,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, _) = card(keys, event.pin.to_native(), result)?;
    let body = Body::Consign {
        pin_hash,
        partner_id: event.partner_id.to_native(),
        commission_per_mille: event.commission_per_mille.to_native(),
    };
    Some((event.op_id.to_native(), body))
}

/// CARD_REGISTER → its engine body.
pub(super) fn card_register(
    keys: &Keys,
    event: &protocol::ArchivedCardRegister,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, _) = card(keys, event.pin.to_native(), result)?;
    let body = Body::Register {
        pin_hash,
        holder_ref: event.holder_ref.to_native(),
        verified_name: event.verified_name,
    };
    Some((event.op_id.to_native(), body))
}

/// CARD_REFUND → its engine body.
pub(super) fn card_refund(
    keys: &Keys,
    event: &protocol::ArchivedCardRefund,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, _) = card(keys, event.pin.to_native(), result)?;
    let body =
        Body::BalanceRefund { pin_hash, payout_account_ref: event.payout_account_ref.to_native() };
    Some((event.op_id.to_native(), body))
}

/// AUTHORIZE → its engine body.
pub(super) fn authorize(
    keys: &Keys,
    event: &protocol::ArchivedAuthorize,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, first_name) = card(keys, event.pin.to_native(), result)?;
    let password_mac = password(keys, first_name, event.password.as_slice(), result)?;
    let body = Body::Authorize {
        pin_hash,
        password_mac,
        amount_won: event.amount_won.to_native(),
        merchant_id: event.merchant_id.to_native(),
        category: event.category,
        hold_ttl_s: event.hold_ttl_s.to_native(),
    };
    Some((event.op_id.to_native(), body))
}

/// CAPTURE → its engine body.
pub(super) fn capture(
    keys: &Keys,
    event: &protocol::ArchivedCapture,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, _) = card(keys, event.pin.to_native(), result)?;
    let body = Body::Capture {
        pin_hash,
        hold_id: event.hold_id.to_native(),
        amount_won: event.amount_won.to_native(),
        final_capture: event.final_capture,
    };
    Some((event.op_id.to_native(), body))
}

/// VOID → its engine body.
pub(super) fn void(
    keys: &Keys,
    event: &protocol::ArchivedVoid,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, _) = card(keys, event.pin.to_native(), result)?;
    Some((event.op_id.to_native(), Body::Void { pin_hash, hold_id: event.hold_id.to_native() }))
}

/// REVERSE → its engine body.
pub(super) fn reverse(
    keys: &Keys,
    event: &protocol::ArchivedReverse,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, _) = card(keys, event.pin.to_native(), result)?;
    let body = Body::Reverse { pin_hash, original_op_id: event.original_op_id.to_native() };
    Some((event.op_id.to_native(), body))
}

/// SALE → its engine body.
pub(super) fn sale(
    keys: &Keys,
    event: &protocol::ArchivedSale,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, first_name) = card(keys, event.pin.to_native(), result)?;
    let password_mac = password(keys, first_name, event.password.as_slice(), result)?;
    let body = Body::Sale {
        pin_hash,
        password_mac,
        amount_won: event.amount_won.to_native(),
        merchant_id: event.merchant_id.to_native(),
        category: event.category,
    };
    Some((event.op_id.to_native(), body))
}

/// REFUND → its engine body.
pub(super) fn refund(
    keys: &Keys,
    event: &protocol::ArchivedRefund,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, _) = card(keys, event.pin.to_native(), result)?;
    let body = Body::Refund {
        pin_hash,
        original_op_id: event.original_op_id.to_native(),
        amount_won: event.amount_won.to_native(),
    };
    Some((event.op_id.to_native(), body))
}

/// FOREIGN_IMPORT → its engine body.
pub(super) fn foreign_import(
    keys: &Keys,
    event: &protocol::ArchivedForeignImport,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let code = event.foreign_pin.as_slice();
    let Some(foreign_code) =
        ForeignCode::new(code).filter(|_| code.iter().all(u8::is_ascii_alphanumeric))
    else {
        *result = Some(op_code(ResultCode::FormatError));
        return None;
    };
    let body = Body::ForeignImport {
        foreign_hash: keys.foreign_hash(code),
        product_id: event.product_id.to_native(),
        code: foreign_code,
    };
    Some((event.op_id.to_native(), body))
}

/// EVENT_CHARGE → its engine body.
pub(super) fn event_charge(
    keys: &Keys,
    event: &protocol::ArchivedEventCharge,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, first_name) = card(keys, event.pin.to_native(), result)?;
    let Some(destination) = pack_destination(event.destination.as_slice()) else {
        *result = Some(op_code(ResultCode::DestinationInvalid));
        return None;
    };
    let password_mac = optional_password(keys, first_name, event.password.as_slice(), result)?;
    let body = Body::EventCharge {
        pin_hash,
        password_mac,
        destination,
        units: event.units.to_native(),
        category: event.category,
    };
    Some((event.op_id.to_native(), body))
}

/// SESSION_START → its engine body.
pub(super) fn session_start(
    keys: &Keys,
    event: &protocol::ArchivedSessionStart,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, first_name) = card(keys, event.pin.to_native(), result)?;
    let Some(destination) = pack_destination(event.destination.as_slice()) else {
        *result = Some(op_code(ResultCode::DestinationInvalid));
        return None;
    };
    let password_mac = optional_password(keys, first_name, event.password.as_slice(), result)?;
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
}

/// SESSION_UPDATE → its engine body.
pub(super) fn session_update(
    keys: &Keys,
    event: &protocol::ArchivedSessionUpdate,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, _) = card(keys, event.pin.to_native(), result)?;
    let body = Body::SessionUpdate {
        pin_hash,
        session_id: event.session_id.to_native(),
        seq: event.seq.to_native(),
        used_total_s: event.used_total_s.to_native(),
        requested_s: event.requested_s.to_native(),
    };
    Some((event.op_id.to_native(), body))
}

/// SESSION_END → its engine body.
pub(super) fn session_end(
    keys: &Keys,
    event: &protocol::ArchivedSessionEnd,
    result: &mut Option<OpResult>,
) -> Option<(u128, Body)> {
    let (pin_hash, _) = card(keys, event.pin.to_native(), result)?;
    let body = Body::SessionEnd {
        pin_hash,
        session_id: event.session_id.to_native(),
        seq: event.seq.to_native(),
        used_total_s: event.used_total_s.to_native(),
    };
    Some((event.op_id.to_native(), body))
}

/// Names a well-formed PIN's card: its name under the newest key (the body's; the shard tries
/// the older names when a rotation has made any) and under the first (what its password MAC
/// is taken over). A malformed PIN records PIN_FORMAT_INVALID for the event.
pub(super) fn card(
    keys: &Keys,
    pin: u64,
    result: &mut Option<OpResult>,
) -> Option<(PinHash, PinHash)> {
    if protocol::pin::is_valid(pin) {
        let names = keys.names(pin);
        Some((names.newest, names.first))
    } else {
        *result = Some(op_code(ResultCode::PinFormatInvalid));
        None
    }
}

/// MACs a well-formed password over the card's first-key name, or records
/// PASSWORD_FORMAT_INVALID for the event.
pub(super) fn password(
    keys: &Keys,
    first_name: PinHash,
    password: &[u8],
    result: &mut Option<OpResult>,
) -> Option<u64> {
    if (PASSWORD_BYTES_MIN..=PASSWORD_BYTES_MAX).contains(&password.len()) {
        Some(keys.password_mac(first_name, password))
    } else {
        *result = Some(op_code(ResultCode::PasswordFormatInvalid));
        None
    }
}

/// SESSION_START and EVENT_CHARGE: an empty password is "none given" (MAC 0); any other must
/// be well-formed.
pub(super) fn optional_password(
    keys: &Keys,
    first_name: PinHash,
    password: &[u8],
    result: &mut Option<OpResult>,
) -> Option<u64> {
    if password.is_empty() { Some(0) } else { self::password(keys, first_name, password, result) }
}
