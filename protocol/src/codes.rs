//! Result codes: the stable numeric outcome of every event and frame. Numbers never change and are
//! never reused; PROTOCOL.md lists them with their meaning. Business outcomes are values of this
//! enum, never Rust errors, so the engine, the wire and the journal all speak the same language.

/// The outcome of one event (or, for 900 and above, of a whole frame).
///
/// Ranges: 0 approved; 1..=99 successful variants (the operation is settled, read the code for
/// how); 100..=899 declines and refusals (nothing changed except what the code says, e.g. a
/// password try was counted); 900..=999 frame and operating errors (the event was not executed).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResultCode {
    Approved = 0,
    /// REVERSE: the original never arrived; a tombstone now declines it if it comes late.
    OriginalNotFoundRecorded = 1,
    /// REVERSE: the original was declined, so there was nothing to undo.
    OriginalDeclinedNoop = 2,
    /// REVERSE: the original was already reversed by another reversal.
    AlreadyReversed = 3,
    /// VOID: the hold was already voided (with another op id); nothing changed.
    HoldAlreadyVoided = 4,
    /// SESSION_UPDATE / SESSION_END: the reported use cost more than the card could pay; the
    /// debit was capped at what was available (`amount_won`) and the rest is written off.
    SessionUsageCapped = 5,
    /// SESSION_UPDATE / SESSION_END of a session the switch expired (silent past twice its
    /// validity): the reported use was charged (capped at what was available); there is no
    /// grant, the call must end.
    SessionExpiredCharged = 6,

    CardNotFound = 101,
    /// The card exists but has not been activated with a password yet.
    CardNotActive = 102,
    CardBlocked = 103,
    CardExpired = 104,
    CardClosed = 105,
    CardAlreadyActive = 106,
    /// CARD_SELL: the card was already sold (or is already in use).
    CardAlreadySold = 107,
    /// CARD_UNBLOCK: the card is neither blocked nor locked by wrong passwords.
    CardNotBlocked = 108,
    /// AUTHORIZE / SALE: the card's product may not pay for this service category.
    CategoryNotAllowed = 109,
    /// CARD_SELL by a channel other than the partner the card is consigned to, or CARD_CONSIGN
    /// of a card already consigned.
    CardConsignedElsewhere = 126,
    /// CARD_CLAIM: the recipient reference is not the one the gift sale named (or the card is
    /// not a gift and the reference is not 0).
    GiftRecipientMismatch = 127,
    /// CARD_ACTIVATE of a gift card: its recipient claims it with CARD_CLAIM.
    GiftClaimRequired = 128,
    InsufficientFunds = 110,
    BalanceCapExceeded = 111,
    RechargeUnitInvalid = 112,
    AmountInvalid = 113,
    AmountOverflow = 114,
    ProductNotFound = 115,
    CategoryInvalid = 116,
    /// CARD_REFUND: less of the card's value has been used than the product's refund ratio.
    RefundRuleNotMet = 117,
    /// CARD_SELL: channel 0, or a payment means that is not a `Funding` value.
    ChannelInvalid = 118,
    /// CARD_BLOCK: the reason is not a `BlockReason` value.
    BlockReasonInvalid = 119,
    PasswordInvalid = 120,
    /// The wrong-password limit is reached; the card is locked for payments.
    PasswordTriesExceeded = 121,
    PasswordFormatInvalid = 122,
    /// The PIN is not 16 digits or its check digit is wrong (a typo, not a guess).
    PinFormatInvalid = 123,
    HoldNotFound = 130,
    HoldAlreadyCaptured = 131,
    HoldExpired = 133,
    ExceedsHoldAmount = 134,
    HoldLimitReached = 135,
    HoldTtlInvalid = 136,
    CaptureLimitReached = 137,
    HoldReversed = 138,
    /// CARD_REFUND: the card still has pending holds; capture or void them first.
    HoldsOutstanding = 139,
    /// The original operation was reversed before it arrived (a tombstone was found).
    ReversedBeforeArrival = 141,
    OriginalNotFound = 142,
    ExceedsRefundable = 143,
    /// REVERSE names an original that is not a payment (only AUTHORIZE and SALE reverse).
    ReversalNotSupported = 144,
    /// REVERSE or REFUND names an original that belongs to another card.
    OriginalCardMismatch = 145,
    /// The op id was used before with a different body; `field` names the first difference.
    OpIdReused = 150,
    /// The op id is older than the idempotency window; it is never silently re-executed.
    OpTooOld = 151,
    /// The op id's embedded time is ahead of the server clock by more than the allowed skew.
    OpIdFromFuture = 152,
    /// The request was dequeued after its deadline and was not executed.
    DeadlineExceededNotExecuted = 153,
    /// The op id is zero or otherwise unusable.
    OpIdInvalid = 154,
    /// FOREIGN_IMPORT / FOREIGN_CONVERT: no foreign product with this id in the catalogue.
    ForeignProductUnknown = 160,
    /// FOREIGN_IMPORT: this foreign PIN was imported before.
    ForeignPinExists = 161,
    /// FOREIGN_CONVERT: the card's shard has no PIN of this product left in its pool.
    ForeignPinUnavailable = 162,
    /// SESSION_UPDATE / SESSION_END: no live session with this id on this card.
    SessionNotFound = 170,
    /// SESSION_START: a session with this id is already live.
    SessionExists = 171,
    /// SESSION_START: no tariff prices this service category and called number.
    TariffNotFound = 172,
    /// SESSION_START: the card has `sessions_per_card_max` live sessions.
    SessionLimitPerCard = 173,
    /// SESSION_START: the shard holds `sessions_per_shard_max` live sessions.
    SessionLimitPerShard = 174,
    /// SESSION_START: the called number is not 1 to 15 digits.
    DestinationInvalid = 175,
    /// SESSION_UPDATE / SESSION_END: the request number is not above the last one applied.
    SessionSequenceStale = 176,
    /// EVENT_CHARGE / PRICE_QUOTE: the tariff that matches prices no events.
    EventNotPriced = 177,
    /// SESSION_AUDIT: the count or digest differs; send the list.
    SessionAuditMismatch = 178,
    /// EVENT_CHARGE: units is 0.
    UnitsInvalid = 179,

    FormatError = 900,
    UnknownMessageType = 901,
    BatchTooLarge = 902,
    FrameTooLarge = 903,
    ChecksumMismatch = 904,
    UnsupportedVersion = 905,
    /// Overload: a bounded queue or limit was hit; the event was not executed, retry later.
    RetryLater = 906,
    ShuttingDown = 907,
    /// A server-side fault (e.g. an internal limit); the event was not executed.
    InternalError = 908,
}

impl ResultCode {
    /// Every code, in numeric order (tests use it to prove each one is reachable).
    pub const ALL: &'static [ResultCode] = &[
        Self::Approved,
        Self::OriginalNotFoundRecorded,
        Self::OriginalDeclinedNoop,
        Self::AlreadyReversed,
        Self::HoldAlreadyVoided,
        Self::SessionUsageCapped,
        Self::SessionExpiredCharged,
        Self::CardNotFound,
        Self::CardNotActive,
        Self::CardBlocked,
        Self::CardExpired,
        Self::CardClosed,
        Self::CardAlreadyActive,
        Self::CardAlreadySold,
        Self::CardNotBlocked,
        Self::CategoryNotAllowed,
        Self::InsufficientFunds,
        Self::BalanceCapExceeded,
        Self::RechargeUnitInvalid,
        Self::AmountInvalid,
        Self::AmountOverflow,
        Self::ProductNotFound,
        Self::CategoryInvalid,
        Self::RefundRuleNotMet,
        Self::ChannelInvalid,
        Self::BlockReasonInvalid,
        Self::PasswordInvalid,
        Self::PasswordTriesExceeded,
        Self::PasswordFormatInvalid,
        Self::PinFormatInvalid,
        Self::CardConsignedElsewhere,
        Self::GiftRecipientMismatch,
        Self::GiftClaimRequired,
        Self::HoldNotFound,
        Self::HoldAlreadyCaptured,
        Self::HoldExpired,
        Self::ExceedsHoldAmount,
        Self::HoldLimitReached,
        Self::HoldTtlInvalid,
        Self::CaptureLimitReached,
        Self::HoldReversed,
        Self::HoldsOutstanding,
        Self::ReversedBeforeArrival,
        Self::OriginalNotFound,
        Self::ExceedsRefundable,
        Self::ReversalNotSupported,
        Self::OriginalCardMismatch,
        Self::OpIdReused,
        Self::OpTooOld,
        Self::OpIdFromFuture,
        Self::DeadlineExceededNotExecuted,
        Self::OpIdInvalid,
        Self::ForeignProductUnknown,
        Self::ForeignPinExists,
        Self::ForeignPinUnavailable,
        Self::SessionNotFound,
        Self::SessionExists,
        Self::TariffNotFound,
        Self::SessionLimitPerCard,
        Self::SessionLimitPerShard,
        Self::DestinationInvalid,
        Self::SessionSequenceStale,
        Self::EventNotPriced,
        Self::SessionAuditMismatch,
        Self::UnitsInvalid,
        Self::FormatError,
        Self::UnknownMessageType,
        Self::BatchTooLarge,
        Self::FrameTooLarge,
        Self::ChecksumMismatch,
        Self::UnsupportedVersion,
        Self::RetryLater,
        Self::ShuttingDown,
        Self::InternalError,
    ];

    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code for a number, or `None` for a number this version does not know.
    pub fn from_u16(value: u16) -> Option<ResultCode> {
        Self::ALL.iter().copied().find(|code| code.as_u16() == value)
    }

    /// True for 0..=99: the operation is settled in the client's favour (or is a no-op that
    /// leaves it so), i.e. not a decline.
    pub fn is_success(self) -> bool {
        self.as_u16() < 100
    }

    /// The SCREAMING_SNAKE name used in PROTOCOL.md and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Approved => "APPROVED",
            Self::OriginalNotFoundRecorded => "ORIGINAL_NOT_FOUND_RECORDED",
            Self::OriginalDeclinedNoop => "ORIGINAL_DECLINED_NOOP",
            Self::AlreadyReversed => "ALREADY_REVERSED",
            Self::HoldAlreadyVoided => "HOLD_ALREADY_VOIDED",
            Self::SessionUsageCapped => "SESSION_USAGE_CAPPED",
            Self::SessionExpiredCharged => "SESSION_EXPIRED_CHARGED",
            Self::CardNotFound => "CARD_NOT_FOUND",
            Self::CardNotActive => "CARD_NOT_ACTIVE",
            Self::CardBlocked => "CARD_BLOCKED",
            Self::CardExpired => "CARD_EXPIRED",
            Self::CardClosed => "CARD_CLOSED",
            Self::CardAlreadyActive => "CARD_ALREADY_ACTIVE",
            Self::CardAlreadySold => "CARD_ALREADY_SOLD",
            Self::CardNotBlocked => "CARD_NOT_BLOCKED",
            Self::CategoryNotAllowed => "CATEGORY_NOT_ALLOWED",
            Self::CardConsignedElsewhere => "CARD_CONSIGNED_ELSEWHERE",
            Self::GiftRecipientMismatch => "GIFT_RECIPIENT_MISMATCH",
            Self::GiftClaimRequired => "GIFT_CLAIM_REQUIRED",
            Self::InsufficientFunds => "INSUFFICIENT_FUNDS",
            Self::BalanceCapExceeded => "BALANCE_CAP_EXCEEDED",
            Self::RechargeUnitInvalid => "RECHARGE_UNIT_INVALID",
            Self::AmountInvalid => "AMOUNT_INVALID",
            Self::AmountOverflow => "AMOUNT_OVERFLOW",
            Self::ProductNotFound => "PRODUCT_NOT_FOUND",
            Self::CategoryInvalid => "CATEGORY_INVALID",
            Self::RefundRuleNotMet => "REFUND_RULE_NOT_MET",
            Self::ChannelInvalid => "CHANNEL_INVALID",
            Self::BlockReasonInvalid => "BLOCK_REASON_INVALID",
            Self::PasswordInvalid => "PASSWORD_INVALID",
            Self::PasswordTriesExceeded => "PASSWORD_TRIES_EXCEEDED",
            Self::PasswordFormatInvalid => "PASSWORD_FORMAT_INVALID",
            Self::PinFormatInvalid => "PIN_FORMAT_INVALID",
            Self::HoldNotFound => "HOLD_NOT_FOUND",
            Self::HoldAlreadyCaptured => "HOLD_ALREADY_CAPTURED",
            Self::HoldExpired => "HOLD_EXPIRED",
            Self::ExceedsHoldAmount => "EXCEEDS_HOLD_AMOUNT",
            Self::HoldLimitReached => "HOLD_LIMIT_REACHED",
            Self::HoldTtlInvalid => "HOLD_TTL_INVALID",
            Self::CaptureLimitReached => "CAPTURE_LIMIT_REACHED",
            Self::HoldReversed => "HOLD_REVERSED",
            Self::HoldsOutstanding => "HOLDS_OUTSTANDING",
            Self::ReversedBeforeArrival => "REVERSED_BEFORE_ARRIVAL",
            Self::OriginalNotFound => "ORIGINAL_NOT_FOUND",
            Self::ExceedsRefundable => "EXCEEDS_REFUNDABLE",
            Self::ReversalNotSupported => "REVERSAL_NOT_SUPPORTED",
            Self::OriginalCardMismatch => "ORIGINAL_CARD_MISMATCH",
            Self::OpIdReused => "OP_ID_REUSED",
            Self::OpTooOld => "OP_TOO_OLD",
            Self::OpIdFromFuture => "OP_ID_FROM_FUTURE",
            Self::DeadlineExceededNotExecuted => "DEADLINE_EXCEEDED_NOT_EXECUTED",
            Self::OpIdInvalid => "OP_ID_INVALID",
            Self::ForeignProductUnknown => "FOREIGN_PRODUCT_UNKNOWN",
            Self::ForeignPinExists => "FOREIGN_PIN_EXISTS",
            Self::ForeignPinUnavailable => "FOREIGN_PIN_UNAVAILABLE",
            Self::SessionNotFound => "SESSION_NOT_FOUND",
            Self::SessionExists => "SESSION_EXISTS",
            Self::TariffNotFound => "TARIFF_NOT_FOUND",
            Self::SessionLimitPerCard => "SESSION_LIMIT_PER_CARD",
            Self::SessionLimitPerShard => "SESSION_LIMIT_PER_SHARD",
            Self::DestinationInvalid => "DESTINATION_INVALID",
            Self::SessionSequenceStale => "SESSION_SEQUENCE_STALE",
            Self::EventNotPriced => "EVENT_NOT_PRICED",
            Self::SessionAuditMismatch => "SESSION_AUDIT_MISMATCH",
            Self::UnitsInvalid => "UNITS_INVALID",
            Self::FormatError => "FORMAT_ERROR",
            Self::UnknownMessageType => "UNKNOWN_MESSAGE_TYPE",
            Self::BatchTooLarge => "BATCH_TOO_LARGE",
            Self::FrameTooLarge => "FRAME_TOO_LARGE",
            Self::ChecksumMismatch => "CHECKSUM_MISMATCH",
            Self::UnsupportedVersion => "UNSUPPORTED_VERSION",
            Self::RetryLater => "RETRY_LATER",
            Self::ShuttingDown => "SHUTTING_DOWN",
            Self::InternalError => "INTERNAL_ERROR",
        }
    }
}

/// Field ids named by `OP_ID_REUSED`, in the fixed order fields are compared.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    None = 0,
    Kind = 1,
    Card = 2,
    Reference = 3,
    Amount = 4,
    Password = 5,
    Merchant = 6,
    Category = 7,
    HoldTtl = 8,
    FinalCapture = 9,
    FaceValue = 10,
    Funding = 11,
    Channel = 12,
    Price = 13,
    Reason = 14,
    PayoutAccount = 15,
    GiftRecipient = 16,
    Holder = 17,
    Partner = 18,
    /// A foreign PIN product id.
    Product = 19,
    /// A session's called number.
    Destination = 20,
    /// A session's reported or requested seconds.
    Seconds = 21,
    /// A session's request number.
    Sequence = 22,
    /// A session's owner (call switch node id).
    Owner = 23,
    /// An event charge's units.
    Units = 24,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Kind => "kind",
            Self::Card => "card",
            Self::Reference => "reference",
            Self::Amount => "amount",
            Self::Password => "password",
            Self::Merchant => "merchant",
            Self::Category => "category",
            Self::HoldTtl => "hold_ttl",
            Self::FinalCapture => "final_capture",
            Self::FaceValue => "face_value",
            Self::Funding => "funding",
            Self::Channel => "channel",
            Self::Price => "price",
            Self::Reason => "reason",
            Self::PayoutAccount => "payout_account",
            Self::GiftRecipient => "gift_recipient",
            Self::Holder => "holder",
            Self::Partner => "partner",
            Self::Product => "product",
            Self::Destination => "destination",
            Self::Seconds => "seconds",
            Self::Sequence => "sequence",
            Self::Owner => "owner",
            Self::Units => "units",
        }
    }

    pub fn from_u8(value: u8) -> Option<Field> {
        [
            Self::None,
            Self::Kind,
            Self::Card,
            Self::Reference,
            Self::Amount,
            Self::Password,
            Self::Merchant,
            Self::Category,
            Self::HoldTtl,
            Self::FinalCapture,
            Self::FaceValue,
            Self::Funding,
            Self::Channel,
            Self::Price,
            Self::Reason,
            Self::PayoutAccount,
            Self::GiftRecipient,
            Self::Holder,
            Self::Partner,
            Self::Product,
            Self::Destination,
            Self::Seconds,
            Self::Sequence,
            Self::Owner,
            Self::Units,
        ]
        .into_iter()
        .find(|field| *field as u8 == value)
    }
}

/// The service category every debit carries, so statements and settlement can sum by it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    InternetPayment = 1,
    TelephoneCall = 2,
    PhoneInformation = 3,
    PrepaidMobile = 4,
    PcCommunication = 5,
    Voicemail = 6,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Self::InternetPayment,
        Self::TelephoneCall,
        Self::PhoneInformation,
        Self::PrepaidMobile,
        Self::PcCommunication,
        Self::Voicemail,
    ];

    pub fn from_u8(value: u8) -> Option<Category> {
        Self::ALL.into_iter().find(|category| *category as u8 == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_sorted_and_unique() {
        let mut previous = None;
        for code in ResultCode::ALL {
            assert_eq!(ResultCode::from_u16(code.as_u16()), Some(*code));
            if let Some(previous) = previous {
                assert!(code.as_u16() > previous, "ALL must be in strictly increasing order");
            }
            previous = Some(code.as_u16());
        }
        assert_eq!(ResultCode::from_u16(7), None);
    }
}
