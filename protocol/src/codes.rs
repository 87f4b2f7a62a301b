//! Result codes: the stable numeric outcome of every event and frame. Numbers never change and are
//! never reused; PROTOCOL.md lists them with their meaning. Business outcomes are values of this
//! enum, never Rust errors, so the engine, the wire and the journal all speak the same language.

use crate::wire_enum::wire_enum;

wire_enum! {
    /// The outcome of one event (or, for 900 and above, of a whole frame).
    ///
    /// Ranges: 0 approved; 1..=99 successful variants (the operation is settled, read the code for
    /// how); 100..=899 declines and refusals (nothing changed except what the code says, e.g. a
    /// password try was counted); 900..=999 frame and operating errors (the event was not executed).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum ResultCode: u16, from_u16 {
        Approved = 0 => "APPROVED",
        /// REVERSE: the original never arrived; a tombstone now declines it if it comes late.
        OriginalNotFoundRecorded = 1 => "ORIGINAL_NOT_FOUND_RECORDED",
        /// REVERSE: the original was declined, so there was nothing to undo.
        OriginalDeclinedNoop = 2 => "ORIGINAL_DECLINED_NOOP",
        /// REVERSE: the original was already reversed by another reversal.
        AlreadyReversed = 3 => "ALREADY_REVERSED",
        /// VOID: the hold was already voided (with another op id); nothing changed.
        HoldAlreadyVoided = 4 => "HOLD_ALREADY_VOIDED",
        /// SESSION_UPDATE / SESSION_END: the reported use cost more than the card could pay; the
        /// debit was capped at what was available (`amount_won`) and the rest is written off.
        SessionUsageCapped = 5 => "SESSION_USAGE_CAPPED",
        /// SESSION_UPDATE / SESSION_END of a session the switch expired (silent past twice its
        /// validity): the reported use was charged (capped at what was available); there is no
        /// grant, the call must end.
        SessionExpiredCharged = 6 => "SESSION_EXPIRED_CHARGED",
        /// OP_FENCE: the op id had no record on the card's shard; now it never executes (a late
        /// arrival gets FENCED_BEFORE_ARRIVAL). The operation did not run and never will.
        Fenced = 7 => "FENCED",
        /// OP_FENCE: the op id has a record on this card (it arrived): INQUIRY tells its
        /// outcome, and nothing was fenced.
        OpRecorded = 8 => "OP_RECORDED",

        CardNotFound = 101 => "CARD_NOT_FOUND",
        /// The card exists but has not been activated with a password yet.
        CardNotActive = 102 => "CARD_NOT_ACTIVE",
        CardBlocked = 103 => "CARD_BLOCKED",
        CardExpired = 104 => "CARD_EXPIRED",
        CardClosed = 105 => "CARD_CLOSED",
        CardAlreadyActive = 106 => "CARD_ALREADY_ACTIVE",
        /// CARD_SELL: the card was already sold (or is already in use).
        CardAlreadySold = 107 => "CARD_ALREADY_SOLD",
        /// CARD_UNBLOCK: the card is neither blocked nor locked by wrong passwords.
        CardNotBlocked = 108 => "CARD_NOT_BLOCKED",
        /// AUTHORIZE / SALE: the card's product may not pay for this service category.
        CategoryNotAllowed = 109 => "CATEGORY_NOT_ALLOWED",
        InsufficientFunds = 110 => "INSUFFICIENT_FUNDS",
        BalanceCapExceeded = 111 => "BALANCE_CAP_EXCEEDED",
        RechargeUnitInvalid = 112 => "RECHARGE_UNIT_INVALID",
        AmountInvalid = 113 => "AMOUNT_INVALID",
        AmountOverflow = 114 => "AMOUNT_OVERFLOW",
        ProductNotFound = 115 => "PRODUCT_NOT_FOUND",
        CategoryInvalid = 116 => "CATEGORY_INVALID",
        /// CARD_REFUND: less of the card's value has been used than the product's refund ratio.
        RefundRuleNotMet = 117 => "REFUND_RULE_NOT_MET",
        /// CARD_SELL: channel 0, or a payment means that is not a `Funding` value.
        ChannelInvalid = 118 => "CHANNEL_INVALID",
        /// CARD_BLOCK: the reason is not a `BlockReason` value.
        BlockReasonInvalid = 119 => "BLOCK_REASON_INVALID",
        PasswordInvalid = 120 => "PASSWORD_INVALID",
        /// The wrong-password limit is reached; the card is locked for payments.
        PasswordTriesExceeded = 121 => "PASSWORD_TRIES_EXCEEDED",
        PasswordFormatInvalid = 122 => "PASSWORD_FORMAT_INVALID",
        /// The PIN is not 16 digits or its check digit is wrong (a typo, not a guess).
        PinFormatInvalid = 123 => "PIN_FORMAT_INVALID",
        /// CARD_SELL by a channel other than the partner the card is consigned to, or CARD_CONSIGN
        /// of a card already consigned.
        CardConsignedElsewhere = 126 => "CARD_CONSIGNED_ELSEWHERE",
        /// CARD_CLAIM: the recipient reference is not the one the gift sale named (or the card is
        /// not a gift and the reference is not 0).
        GiftRecipientMismatch = 127 => "GIFT_RECIPIENT_MISMATCH",
        /// CARD_ACTIVATE of a gift card: its recipient claims it with CARD_CLAIM.
        GiftClaimRequired = 128 => "GIFT_CLAIM_REQUIRED",
        HoldNotFound = 130 => "HOLD_NOT_FOUND",
        HoldAlreadyCaptured = 131 => "HOLD_ALREADY_CAPTURED",
        HoldExpired = 133 => "HOLD_EXPIRED",
        ExceedsHoldAmount = 134 => "EXCEEDS_HOLD_AMOUNT",
        HoldLimitReached = 135 => "HOLD_LIMIT_REACHED",
        HoldTtlInvalid = 136 => "HOLD_TTL_INVALID",
        CaptureLimitReached = 137 => "CAPTURE_LIMIT_REACHED",
        HoldReversed = 138 => "HOLD_REVERSED",
        /// CARD_REFUND: the card still has pending holds; capture or void them first.
        HoldsOutstanding = 139 => "HOLDS_OUTSTANDING",
        /// The original operation was reversed before it arrived (a tombstone was found).
        ReversedBeforeArrival = 141 => "REVERSED_BEFORE_ARRIVAL",
        OriginalNotFound = 142 => "ORIGINAL_NOT_FOUND",
        ExceedsRefundable = 143 => "EXCEEDS_REFUNDABLE",
        /// REVERSE names an original that is not a payment (only AUTHORIZE and SALE reverse).
        ReversalNotSupported = 144 => "REVERSAL_NOT_SUPPORTED",
        /// REVERSE or REFUND names an original that belongs to another card.
        OriginalCardMismatch = 145 => "ORIGINAL_CARD_MISMATCH",
        /// The op id was fenced (OP_FENCE) before the operation arrived: it does not execute.
        FencedBeforeArrival = 146 => "FENCED_BEFORE_ARRIVAL",
        /// The op id was used before with a different body; `field` names the first difference.
        OpIdReused = 150 => "OP_ID_REUSED",
        /// The op id is older than the idempotency window; it is never silently re-executed.
        OpTooOld = 151 => "OP_TOO_OLD",
        /// The op id's embedded time is ahead of the server clock by more than the allowed skew.
        OpIdFromFuture = 152 => "OP_ID_FROM_FUTURE",
        /// The request was dequeued after its deadline and was not executed.
        DeadlineExceededNotExecuted = 153 => "DEADLINE_EXCEEDED_NOT_EXECUTED",
        /// The op id is zero or otherwise unusable.
        OpIdInvalid = 154 => "OP_ID_INVALID",
        /// FOREIGN_IMPORT / FOREIGN_CONVERT: no foreign product with this id in the catalogue.
        ForeignProductUnknown = 160 => "FOREIGN_PRODUCT_UNKNOWN",
        /// FOREIGN_IMPORT: this foreign PIN was imported before.
        ForeignPinExists = 161 => "FOREIGN_PIN_EXISTS",
        /// FOREIGN_CONVERT: the card's shard has no PIN of this product left in its pool.
        ForeignPinUnavailable = 162 => "FOREIGN_PIN_UNAVAILABLE",
        /// SESSION_UPDATE / SESSION_END: no live session with this id on this card.
        SessionNotFound = 170 => "SESSION_NOT_FOUND",
        /// SESSION_START: a session with this id is already live.
        SessionExists = 171 => "SESSION_EXISTS",
        /// SESSION_START: no tariff prices this service category and called number.
        TariffNotFound = 172 => "TARIFF_NOT_FOUND",
        /// SESSION_START: the card has `sessions_per_card_max` live sessions.
        SessionLimitPerCard = 173 => "SESSION_LIMIT_PER_CARD",
        /// SESSION_START: the shard holds `sessions_per_shard_max` live sessions.
        SessionLimitPerShard = 174 => "SESSION_LIMIT_PER_SHARD",
        /// SESSION_START: the called number is not 1 to 15 digits.
        DestinationInvalid = 175 => "DESTINATION_INVALID",
        /// SESSION_UPDATE / SESSION_END: the request number is not above the last one applied.
        SessionSequenceStale = 176 => "SESSION_SEQUENCE_STALE",
        /// EVENT_CHARGE / PRICE_QUOTE: the tariff that matches prices no events.
        EventNotPriced = 177 => "EVENT_NOT_PRICED",
        /// SESSION_AUDIT: the count or digest differs; send the list.
        SessionAuditMismatch = 178 => "SESSION_AUDIT_MISMATCH",
        /// EVENT_CHARGE: units is 0.
        UnitsInvalid = 179 => "UNITS_INVALID",

        FormatError = 900 => "FORMAT_ERROR",
        UnknownMessageType = 901 => "UNKNOWN_MESSAGE_TYPE",
        BatchTooLarge = 902 => "BATCH_TOO_LARGE",
        FrameTooLarge = 903 => "FRAME_TOO_LARGE",
        ChecksumMismatch = 904 => "CHECKSUM_MISMATCH",
        UnsupportedVersion = 905 => "UNSUPPORTED_VERSION",
        /// Overload: a bounded queue or limit was hit; the event was not executed, retry later.
        RetryLater = 906 => "RETRY_LATER",
        ShuttingDown = 907 => "SHUTTING_DOWN",
        /// A server-side fault (e.g. an internal limit); the event was not executed.
        InternalError = 908 => "INTERNAL_ERROR",
        /// The connection's identity may not send this message type, or the frame names a
        /// business id (merchant, call-switch owner, sales channel) the identity is not bound
        /// to. Nothing in the frame was executed.
        NotPermitted = 909 => "NOT_PERMITTED",
        /// The event ran, but its answer (an unknown card or a wrong password) is withheld: the
        /// identity has had its guess answers for the minute. A retry of the same op id gets
        /// the answer once the identity is let through again (an unknown card's op is not
        /// recorded: it is evaluated again, and INQUIRY says UNKNOWN).
        AnswerWithheld = 910 => "ANSWER_WITHHELD",
        /// The card's shard has no journal space left for the record this event would write
        /// (the disk is full): it was not executed. Reads and INQUIRY are still answered;
        /// retry with the same op id once space returns (the shard resumes by itself).
        StorageFull = 911 => "STORAGE_FULL",
    }
}

impl ResultCode {
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// True for 0..=99: the operation is settled in the client's favour (or is a no-op that
    /// leaves it so), i.e. not a decline.
    pub fn is_success(self) -> bool {
        self.as_u16() < 100
    }
}

wire_enum! {
    /// Field ids named by `OP_ID_REUSED`, in the fixed order fields are compared.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Field: u8, from_u8 {
        None = 0 => "none",
        Kind = 1 => "kind",
        Card = 2 => "card",
        Reference = 3 => "reference",
        Amount = 4 => "amount",
        Password = 5 => "password",
        Merchant = 6 => "merchant",
        Category = 7 => "category",
        HoldTtl = 8 => "hold_ttl",
        FinalCapture = 9 => "final_capture",
        FaceValue = 10 => "face_value",
        Funding = 11 => "funding",
        Channel = 12 => "channel",
        Price = 13 => "price",
        Reason = 14 => "reason",
        PayoutAccount = 15 => "payout_account",
        GiftRecipient = 16 => "gift_recipient",
        Holder = 17 => "holder",
        Partner = 18 => "partner",
        /// A foreign PIN product id.
        Product = 19 => "product",
        /// A session's called number.
        Destination = 20 => "destination",
        /// A session's reported or requested seconds.
        Seconds = 21 => "seconds",
        /// A session's request number.
        Sequence = 22 => "sequence",
        /// A session's owner (call switch node id).
        Owner = 23 => "owner",
        /// An event charge's units.
        Units = 24 => "units",
    }
}

wire_enum! {
    /// The service category every debit carries, so statements and settlement can sum by it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum Category: u8, from_u8 {
        InternetPayment = 1 => "internet_payment",
        TelephoneCall = 2 => "telephone_call",
        PhoneInformation = 3 => "phone_information",
        PrepaidMobile = 4 => "prepaid_mobile",
        PcCommunication = 5 => "pc_communication",
        Voicemail = 6 => "voicemail",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_sorted_and_unique() {
        let mut previous = None;
        for code in ResultCode::ALL {
            assert_eq!(ResultCode::from_u16(code.as_u16()), Some(code));
            if let Some(previous) = previous {
                assert!(code.as_u16() > previous, "ALL must be in strictly increasing order");
            }
            previous = Some(code.as_u16());
        }
        assert_eq!(ResultCode::from_u16(99), None);
    }
}
