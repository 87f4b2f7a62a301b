//! Native answers → ISO 8583 responses: the response MTI (the request's, function digit plus
//! one, repeat digit cleared), the request's echoed elements, DE 39 from the engine's result
//! code by one table (protocol/ISO8583.md, "Response codes"), DE 38 the approval code, DE 54
//! the card's balances. The card number (DE 2) and the PIN block (DE 52) are never echoed: the
//! card number is the card's secret PIN here, and acquirers match answers by DE 11 and DE 41.

use pinswitch_protocol::iso8583::Message;
use pinswitch_protocol::{BalanceResult, OpResult, ResultCode, decode_body, decode_frame};

use super::requests::Kind;

/// The request elements every response carries back, when the request had them.
const ECHOED: [u8; 13] = [3, 4, 7, 11, 12, 13, 32, 37, 41, 42, 49, 70, 90];

/// The response to `request` with DE 39 `code` and nothing else of its own.
pub(super) fn response(request: &Message, code: &[u8; 2]) -> Message {
    let mut mti = request.mti;
    // 0100 → 0110, 0101 → 0110, 0220 → 0230, 0421 → 0430: digits, so `+ 1` stays a digit.
    mti[2] = if mti[2] < b'9' { mti[2] + 1 } else { mti[2] };
    mti[3] = b'0';
    let mut response = Message::new(mti);
    for number in ECHOED {
        if let Some(value) = request.get(number) {
            response.set(number, value.to_vec());
        }
    }
    response.set(39, code.to_vec());
    response
}

/// The response to `request` from the native response frame its event got.
pub(super) fn from_native(request: &Message, kind: Kind, frame: &[u8]) -> Message {
    let Ok(Some(frame)) = decode_frame(frame, u32::MAX) else {
        return response(request, de39(ResultCode::InternalError.as_u16()));
    };
    if frame.header.status != 0 {
        return response(request, de39(frame.header.status));
    }
    match kind {
        Kind::Payment => match decode_body::<Vec<OpResult>>(frame.body).ok().as_deref() {
            Some([result]) => {
                let mut answer = response(request, de39(result.code));
                if approved(result.code) {
                    if result.approval_code != 0 {
                        answer.set(38, format!("{:06}", result.approval_code).into_bytes());
                    }
                    answer.set(54, balances(result.available_won, result.balance_won));
                }
                answer
            }
            _ => response(request, de39(ResultCode::InternalError.as_u16())),
        },
        Kind::Balance => match decode_body::<Vec<BalanceResult>>(frame.body).ok().as_deref() {
            Some([result]) => {
                let mut answer = response(request, de39(result.code));
                if approved(result.code) {
                    answer.set(54, balances(result.available_won, result.balance_won));
                }
                answer
            }
            _ => response(request, de39(ResultCode::InternalError.as_u16())),
        },
    }
}

/// Whether a result code approves (0..=6: approved, or a reversal's or session's benign
/// outcome).
fn approved(code: u16) -> bool {
    code < 100
}

/// DE 54: the available balance (amount type 02) then the ledger balance (01), each as
/// account type 00, currency 410, sign C, twelve digits.
fn balances(available_won: u64, balance_won: u64) -> Vec<u8> {
    format!("0002410C{available_won:012}0001410C{balance_won:012}").into_bytes()
}

/// DE 39 for a native result code (protocol/ISO8583.md, "Response codes").
pub(super) fn de39(code: u16) -> &'static [u8; 2] {
    let Some(code) = ResultCode::from_u16(code) else { return b"96" };
    use ResultCode as C;
    match code {
        C::Approved
        | C::OriginalNotFoundRecorded
        | C::OriginalDeclinedNoop
        | C::AlreadyReversed
        | C::HoldAlreadyVoided
        | C::SessionUsageCapped
        | C::SessionExpiredCharged => b"00",
        C::CardNotFound | C::PinFormatInvalid => b"14",
        C::CardNotActive | C::CardBlocked | C::CardClosed => b"62",
        C::CardExpired => b"54",
        C::CategoryNotAllowed
        | C::CardConsignedElsewhere
        | C::GiftRecipientMismatch
        | C::GiftClaimRequired => b"57",
        C::InsufficientFunds => b"51",
        C::BalanceCapExceeded => b"61",
        C::AmountInvalid | C::AmountOverflow | C::ExceedsHoldAmount | C::ExceedsRefundable => b"13",
        C::PasswordInvalid | C::PasswordFormatInvalid => b"55",
        C::PasswordTriesExceeded => b"75",
        C::HoldNotFound | C::OriginalNotFound => b"25",
        C::HoldLimitReached | C::CaptureLimitReached => b"65",
        C::HoldAlreadyCaptured | C::OpIdReused => b"94",
        C::OpIdFromFuture | C::OpIdInvalid | C::FormatError => b"30",
        C::DeadlineExceededNotExecuted => b"68",
        C::RetryLater | C::ShuttingDown | C::AnswerWithheld | C::StorageFull => b"91",
        C::NotPermitted => b"58",
        C::InternalError => b"96",
        _ => b"12",
    }
}
