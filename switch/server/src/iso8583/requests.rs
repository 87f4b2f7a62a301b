//! ISO 8583 requests → native events. Each financial message becomes exactly one native event
//! (protocol/ISO8583.md, "Messages"): 0100 AUTHORIZE, 0200 SALE (processing code 20: REFUND),
//! 0220 CAPTURE of the 0100 its DE 90 names, 0400/0420 REVERSE of the original its DE 90 names,
//! processing code 31 BALANCE_INQUIRY. No business rule lives here: the formats are checked,
//! the op ids derived, the password read out of its PIN block, and the engine decides the rest.
//!
//! Op ids: a transaction is named by its kind (authorization, financial, completion, reversal),
//! its card acceptor (DE 42), terminal (DE 41), trace number (DE 11) and transmission time
//! (DE 7); its op id is that time (the year that puts it nearest the switch's clock) above 80
//! bits of a keyed hash of all five (`Keys::front_end_op_bits`). So a retransmission (the same
//! message again, or its repeat MTI x1x1) gets the same op id and the stored answer, and DE 90
//! (the original's MTI, trace number and transmission time) names the original's op id.

use pinswitch_core::calendar::days_from_civil;
use pinswitch_protocol::iso8583::Message;
use pinswitch_protocol::{self as protocol, MsgType, encode_body, op_id_at};

use super::Settings;
use super::pin_block;
use crate::keys::Keys;

/// What a request asks for.
pub(super) enum Plan {
    /// Answered by the front end alone (network management, a refusal): this DE 39.
    Answer(&'static [u8; 2]),
    /// One native event: its message type and body, answered as `Kind`.
    Native { msg_type: MsgType, body: Vec<u8>, kind: Kind },
    /// Not a request (a response, a notification): no answer.
    Ignore,
}

/// How the native answer reads back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// `OpResult`.
    Payment,
    /// `BalanceResult`.
    Balance,
}

/// Network management (0800): what DE 70 asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Network {
    SignOn,
    SignOff,
    Echo,
}

/// DE 39 of a request the front end refuses itself.
pub(super) const FORMAT_ERROR: &[u8; 2] = b"30";
const INVALID_TRANSACTION: &[u8; 2] = b"12";
const INVALID_MERCHANT: &[u8; 2] = b"03";
const INCORRECT_PIN: &[u8; 2] = b"55";
const INVALID_CARD: &[u8; 2] = b"14";
const APPROVED: &[u8; 2] = b"00";

/// The only currency (DE 49): Korean won, ISO 4217 410, exponent 0.
const WON: &[u8] = b"410";
/// Milliseconds in a day.
const MS_PER_DAY: i64 = 86_400_000;

/// Network management's DE 70, when `request` is an 0800.
pub(super) fn network(request: &Message) -> Option<Result<Network, &'static [u8; 2]>> {
    if &request.mti[..3] != b"080" {
        return None;
    }
    Some(match request.get(70) {
        Some(b"001") => Ok(Network::SignOn),
        Some(b"002") => Ok(Network::SignOff),
        Some(b"301") => Ok(Network::Echo),
        Some(_) => Err(INVALID_TRANSACTION),
        None => Err(FORMAT_ERROR),
    })
}

/// The native event of a financial request, or the DE 39 that refuses it. `may_act_for`
/// says whether the connection's identity may act for a merchant id.
pub(super) fn plan(
    settings: &Settings,
    keys: &Keys,
    request: &Message,
    now_ms: u64,
    may_act_for: impl Fn(u64) -> bool,
) -> Plan {
    let mti = request.mti;
    // A response or a notification (function digit 1, 3, 4 ...) asks for nothing.
    if !matches!(mti[2], b'0' | b'2') {
        return Plan::Ignore;
    }
    let kind = match &mti[..3] {
        b"010" => b'A',
        b"020" => b'F',
        b"022" => b'C',
        b"040" | b"042" => b'R',
        _ => return Plan::Answer(INVALID_TRANSACTION),
    };
    match build(settings, keys, request, now_ms, kind, &may_act_for) {
        Ok(plan) => plan,
        Err(code) => Plan::Answer(code),
    }
}

fn build(
    settings: &Settings,
    keys: &Keys,
    request: &Message,
    now_ms: u64,
    kind: u8,
    may_act_for: &impl Fn(u64) -> bool,
) -> Result<Plan, &'static [u8; 2]> {
    let processing = request.get(3).filter(|code| code.len() == 6).ok_or(FORMAT_ERROR)?;
    let pan = request.get(2).ok_or(FORMAT_ERROR)?;
    let pin = digits(pan).ok_or(INVALID_CARD)?;
    if request.get(49).is_some_and(|currency| currency != WON) {
        return Err(INVALID_TRANSACTION);
    }
    let merchant_field = request.get(42).ok_or(FORMAT_ERROR)?;
    let merchant_id = settings.merchant_id(merchant_field).ok_or(INVALID_MERCHANT)?;
    if !may_act_for(merchant_id) {
        return Err(b"58");
    }
    let balance_inquiry = &processing[..2] == b"31";
    if balance_inquiry && matches!(kind, b'A' | b'F') {
        let body = encode_body(&vec![protocol::BalanceInquiry { pin }]);
        return Ok(Plan::Native { msg_type: MsgType::BalanceInquiry, body, kind: Kind::Balance });
    }
    let terminal = request.get(41).ok_or(FORMAT_ERROR)?;
    let stan = request.get(11).filter(|stan| digits(stan).is_some()).ok_or(FORMAT_ERROR)?;
    let sent = request.get(7).ok_or(FORMAT_ERROR)?;
    let name = |kind: u8, stan: &[u8], sent: &[u8]| -> Result<u128, &'static [u8; 2]> {
        let time_ms = transmission_ms(sent, now_ms).ok_or(FORMAT_ERROR)?;
        let low = keys.front_end_op_bits(&[&[kind], merchant_field, terminal, stan, sent]);
        Ok(op_id_at(time_ms, low))
    };
    let op_id = name(kind, stan, sent)?;
    let amount_won = || request.get(4).and_then(digits).ok_or(FORMAT_ERROR);
    let original = || -> Result<u128, &'static [u8; 2]> {
        let data = request.get(90).filter(|data| data.len() == 42).ok_or(FORMAT_ERROR)?;
        let original_kind = match &data[..3] {
            b"010" => b'A',
            b"020" => b'F',
            b"022" => b'C',
            _ => return Err(INVALID_TRANSACTION),
        };
        name(original_kind, &data[4..10], &data[10..20])
    };
    let password = || -> Result<Vec<u8>, &'static [u8; 2]> {
        match request.get(52) {
            None => Ok(Vec::new()),
            Some(block) => pin_block::password(block, pan, &settings.pin_key).ok_or(INCORRECT_PIN),
        }
    };
    let (msg_type, body) = match (kind, &processing[..2]) {
        (b'A', b"00") => (
            MsgType::Authorize,
            encode_body(&vec![protocol::Authorize {
                op_id,
                pin,
                password: password()?,
                amount_won: amount_won()?,
                merchant_id,
                category: settings.category,
                hold_ttl_s: settings.hold_ttl_s,
            }]),
        ),
        (b'F', b"00") => (
            MsgType::Sale,
            encode_body(&vec![protocol::Sale {
                op_id,
                pin,
                password: password()?,
                amount_won: amount_won()?,
                merchant_id,
                category: settings.category,
            }]),
        ),
        (b'F', b"20") => (
            MsgType::Refund,
            encode_body(&vec![protocol::Refund {
                op_id,
                pin,
                original_op_id: original()?,
                amount_won: amount_won()?,
            }]),
        ),
        (b'C', b"00") => (
            MsgType::Capture,
            encode_body(&vec![protocol::Capture {
                op_id,
                pin,
                hold_id: original()?,
                amount_won: amount_won()?,
                final_capture: true,
            }]),
        ),
        (b'R', _) => (
            MsgType::Reverse,
            encode_body(&vec![protocol::Reverse { op_id, pin, original_op_id: original()? }]),
        ),
        _ => return Err(INVALID_TRANSACTION),
    };
    Ok(Plan::Native { msg_type, body, kind: Kind::Payment })
}

/// The DE 39 of an answered network-management request.
pub(super) fn network_answer() -> &'static [u8; 2] {
    APPROVED
}

/// ASCII digits as a number (`None`: empty, not digits, or over `u64`).
fn digits(text: &[u8]) -> Option<u64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// DE 7 (MMDDhhmmss, UTC, no year) as ms since the Unix epoch, in the year that puts it
/// nearest `now_ms` (so a message sent just before a new year, read just after, keeps its
/// year). `None`: not a valid date and time.
fn transmission_ms(sent: &[u8], now_ms: u64) -> Option<u64> {
    if sent.len() != 10 || !sent.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let two = |at: usize| u32::from(sent[at] - b'0') * 10 + u32::from(sent[at + 1] - b'0');
    let (month, day, hour, minute, second) = (two(0), two(2), two(4), two(6), two(8));
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let now = i64::try_from(now_ms).ok()?;
    let (this_year, _, _) = pinswitch_core::calendar::civil_from_days(now.div_euclid(MS_PER_DAY));
    let seconds = i64::from(hour * 3600 + minute * 60 + second);
    let at = |year: i64| -> Option<i64> {
        let day_number = days_from_civil(year, month, day);
        // 31 February and the like roll into the next month: refuse them.
        (pinswitch_core::calendar::civil_from_days(day_number) == (year, month, day))
            .then(|| day_number * MS_PER_DAY + seconds * 1000)
    };
    let nearest = [this_year - 1, this_year, this_year + 1]
        .into_iter()
        .filter_map(at)
        .min_by_key(|ms| (ms - now).abs())?;
    u64::try_from(nearest).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transmission_time_takes_the_nearest_year() {
        // 2026-12-31 23:59:00 UTC, read a minute after the new year.
        let sent_ms = (days_from_civil(2026, 12, 31) * MS_PER_DAY + 86_340_000) as u64;
        let now_ms = (days_from_civil(2027, 1, 1) * MS_PER_DAY + 60_000) as u64;
        assert_eq!(transmission_ms(b"1231235900", now_ms), Some(sent_ms));
        assert_eq!(transmission_ms(b"1231235900", sent_ms), Some(sent_ms));
        assert_eq!(transmission_ms(b"0230120000", now_ms), None, "no 30 February");
        assert_eq!(transmission_ms(b"1301000000", now_ms), None);
        assert_eq!(transmission_ms(b"12312359", now_ms), None);
    }
}
