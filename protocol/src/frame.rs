//! Framing and body codec of protocol v1: the fixed 32-byte little-endian header (magic, version,
//! flags, message type, status, request id, deadline, body length, CRC-32C), and the rkyv
//! encoding of bodies with validated zero-copy access. Everything here treats its input as
//! hostile: decoding returns errors, never panics, and never touches unvalidated archives.
//! PROTOCOL.md beside this crate is the byte-level specification this file implements.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Deserialize, Place, Portable, Serialize};

use crate::codes::ResultCode;
use crate::messages::*;

/// `b"PS"` read as a little-endian `u16`.
pub const MAGIC: u16 = 0x5350;
/// The only protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Size of the fixed frame header; the body follows immediately.
pub const HEADER_BYTES: usize = 32;

/// Set on every frame the server sends in answer to a request.
pub const FLAG_RESPONSE: u8 = 1;
/// Set on frames the server sends unprompted (none are defined in v1; clients ignore them).
pub const FLAG_PUSH: u8 = 2;
/// Set by a client that resends a frame it may have sent before (informational: idempotency
/// rests on op ids, not on this flag).
pub const FLAG_RETRANSMIT: u8 = 4;

// Byte offsets of the header fields; PROTOCOL.md has the same table.
const MAGIC_AT: usize = 0;
const VERSION_AT: usize = 2;
const FLAGS_AT: usize = 3;
const MSG_TYPE_AT: usize = 4;
const STATUS_AT: usize = 6;
const REQUEST_ID_AT: usize = 8;
const DEADLINE_MS_AT: usize = 16;
const BODY_LEN_AT: usize = 20;
const CHECKSUM_AT: usize = 24;
const RESERVED_AT: usize = 28;

/// The decoded fixed header. `body_len` is informational on encode (`encode_frame` fills it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u8,
    pub flags: u8,
    /// A `MsgType` number; a response carries its request's type.
    pub msg_type: u16,
    /// Requests: 0. Responses: a `ResultCode` number for the whole frame; 0 = the body holds the
    /// results, non-zero = the frame was rejected and the body is empty.
    pub status: u16,
    /// Chosen by the client, echoed in the response; matches responses to pipelined requests.
    pub request_id: u64,
    /// The client's remaining time budget for this request when it sent it; 0 = none.
    pub deadline_ms: u32,
    pub body_len: u32,
}

impl FrameHeader {
    /// A request header of protocol `VERSION` with no flags and an empty body.
    pub fn request(msg_type: MsgType, request_id: u64, deadline_ms: u32) -> FrameHeader {
        FrameHeader {
            version: VERSION,
            flags: 0,
            msg_type: msg_type as u16,
            status: 0,
            request_id,
            deadline_ms,
            body_len: 0,
        }
    }

    /// The header of the response to `request` with this frame status.
    pub fn response_to(request: &FrameHeader, status: ResultCode) -> FrameHeader {
        FrameHeader {
            version: VERSION,
            flags: FLAG_RESPONSE,
            msg_type: request.msg_type,
            status: status.as_u16(),
            request_id: request.request_id,
            deadline_ms: 0,
            body_len: 0,
        }
    }

    /// The message type, or `None` for a number this version does not know.
    pub fn message_type(&self) -> Option<MsgType> {
        MsgType::from_u16(self.msg_type)
    }

    /// The header as it travels, with the checksum field zero.
    fn to_bytes_without_checksum(self, body_len: u32) -> [u8; HEADER_BYTES] {
        let mut bytes = [0u8; HEADER_BYTES];
        bytes[MAGIC_AT..MAGIC_AT + 2].copy_from_slice(&MAGIC.to_le_bytes());
        bytes[VERSION_AT] = self.version;
        bytes[FLAGS_AT] = self.flags;
        bytes[MSG_TYPE_AT..MSG_TYPE_AT + 2].copy_from_slice(&self.msg_type.to_le_bytes());
        bytes[STATUS_AT..STATUS_AT + 2].copy_from_slice(&self.status.to_le_bytes());
        bytes[REQUEST_ID_AT..REQUEST_ID_AT + 8].copy_from_slice(&self.request_id.to_le_bytes());
        bytes[DEADLINE_MS_AT..DEADLINE_MS_AT + 4].copy_from_slice(&self.deadline_ms.to_le_bytes());
        bytes[BODY_LEN_AT..BODY_LEN_AT + 4].copy_from_slice(&body_len.to_le_bytes());
        bytes
    }
}

/// One whole frame borrowed from the receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    pub body: &'a [u8],
    /// Header plus body: how many bytes of the buffer this frame used.
    pub total_len: usize,
}

/// Framing failures. After any of them the byte stream can no longer be trusted: the server
/// answers once with `code()` and closes the connection.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    #[error("frame body of {body_len} bytes exceeds the limit of {max} bytes")]
    TooLarge { body_len: u32, max: u32 },
    #[error("checksum mismatch in frame with request id {request_id}")]
    ChecksumMismatch { request_id: u64 },
    #[error("reserved header field is not zero")]
    ReservedNotZero,
}

impl FrameError {
    /// The frame status the server answers this error with.
    pub fn code(&self) -> ResultCode {
        match self {
            Self::BadMagic | Self::ReservedNotZero => ResultCode::FormatError,
            Self::UnsupportedVersion(_) => ResultCode::UnsupportedVersion,
            Self::TooLarge { .. } => ResultCode::FrameTooLarge,
            Self::ChecksumMismatch { .. } => ResultCode::ChecksumMismatch,
        }
    }

    /// The request id to answer with: the header's (unverified) id for a checksum mismatch,
    /// 0 when it is unknown.
    pub fn request_id(&self) -> u64 {
        match self {
            Self::ChecksumMismatch { request_id } => *request_id,
            _ => 0,
        }
    }
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// CRC-32C of the header with its checksum field zeroed, then the body.
fn frame_checksum(header_bytes: &[u8], body: &[u8]) -> u32 {
    let mut zeroed = [0u8; HEADER_BYTES];
    zeroed.copy_from_slice(&header_bytes[..HEADER_BYTES]);
    zeroed[CHECKSUM_AT..CHECKSUM_AT + 4].fill(0);
    crc32c::crc32c_append(crc32c::crc32c(&zeroed), body)
}

/// Decodes the frame at the start of `buf`.
///
/// `Ok(None)`: not a whole frame yet (read more bytes and call again). Magic and version are
/// checked as soon as their bytes are in, reserved and size as soon as the header is in, so a
/// garbage or oversized stream is refused before its body is waited for or buffered.
pub fn decode_frame(buf: &[u8], body_bytes_max: u32) -> Result<Option<Frame<'_>>, FrameError> {
    if buf.len() > MAGIC_AT + 1 && read_u16(buf, MAGIC_AT) != MAGIC {
        return Err(FrameError::BadMagic);
    }
    if buf.len() > VERSION_AT && buf[VERSION_AT] != VERSION {
        return Err(FrameError::UnsupportedVersion(buf[VERSION_AT]));
    }
    if buf.len() < HEADER_BYTES {
        return Ok(None);
    }
    if read_u32(buf, RESERVED_AT) != 0 {
        return Err(FrameError::ReservedNotZero);
    }
    let body_len = read_u32(buf, BODY_LEN_AT);
    if body_len > body_bytes_max {
        return Err(FrameError::TooLarge { body_len, max: body_bytes_max });
    }
    // usize is at least 32 bits on every target we build for, so this cannot overflow there;
    // checked anyway so a 16-bit target would refuse rather than wrap.
    let Some(total_len) =
        usize::try_from(body_len).ok().and_then(|len| len.checked_add(HEADER_BYTES))
    else {
        return Err(FrameError::TooLarge { body_len, max: body_bytes_max });
    };
    if buf.len() < total_len {
        return Ok(None);
    }
    let header_bytes = &buf[..HEADER_BYTES];
    let body = &buf[HEADER_BYTES..total_len];
    let header = FrameHeader {
        version: buf[VERSION_AT],
        flags: buf[FLAGS_AT],
        msg_type: read_u16(buf, MSG_TYPE_AT),
        status: read_u16(buf, STATUS_AT),
        request_id: read_u64(buf, REQUEST_ID_AT),
        deadline_ms: read_u32(buf, DEADLINE_MS_AT),
        body_len,
    };
    if read_u32(buf, CHECKSUM_AT) != frame_checksum(header_bytes, body) {
        return Err(FrameError::ChecksumMismatch { request_id: header.request_id });
    }
    Ok(Some(Frame { header, body, total_len }))
}

/// The frame that has begun at the start of `buf` but is not whole yet: how long it will be and
/// whom to answer. Call only after `decode_frame` returned `Ok(None)`; `None` while the header
/// itself is incomplete. A server uses it to decide, before buffering a large body, whether it
/// can hold the frame at all (and, if not, to answer that request and skip its bytes).
pub fn pending_frame(buf: &[u8]) -> Option<PendingFrame> {
    if buf.len() < HEADER_BYTES {
        return None;
    }
    let body_len = usize::try_from(read_u32(buf, BODY_LEN_AT)).ok()?;
    Some(PendingFrame {
        total_len: body_len.checked_add(HEADER_BYTES)?,
        msg_type: read_u16(buf, MSG_TYPE_AT),
        request_id: read_u64(buf, REQUEST_ID_AT),
    })
}

/// See `pending_frame`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingFrame {
    /// Header plus declared body.
    pub total_len: usize,
    pub msg_type: u16,
    /// Unverified (the checksum covers the body, not here yet).
    pub request_id: u64,
}

/// Appends one frame (header, then `body`) to `out`. `header.body_len` is ignored: the length
/// and the checksum are computed here.
///
/// Panics if `body` is 4 GiB or more (no sender may build such a frame; limits are far lower).
pub fn encode_frame(out: &mut Vec<u8>, header: &FrameHeader, body: &[u8]) {
    let body_len = u32::try_from(body.len()).expect("frame body must be under 4 GiB");
    let mut header_bytes = header.to_bytes_without_checksum(body_len);
    let checksum = crc32c::crc32c_append(crc32c::crc32c(&header_bytes), body);
    header_bytes[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&checksum.to_le_bytes());
    out.reserve(HEADER_BYTES + body.len());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(body);
}

/// Appends one frame whose body is `value` archived in place, saving the copy that
/// `encode_body` followed by `encode_frame` makes. Same bytes as that pair.
pub fn encode_frame_body<T: BodyEncode>(out: &mut Vec<u8>, header: &FrameHeader, value: &T) {
    let frame_at = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    let body_at = out.len();
    // Archives are position independent (relative pointers, alignment 1 under the `unaligned`
    // feature), so serializing after existing bytes yields the same body bytes.
    let written = rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, std::mem::take(out))
        .expect("serializing an in-memory message cannot fail below the 2 GiB archive limit");
    *out = written;
    let body_len = u32::try_from(out.len() - body_at).expect("frame body must be under 4 GiB");
    let mut header_bytes = header.to_bytes_without_checksum(body_len);
    let checksum = crc32c::crc32c_append(crc32c::crc32c(&header_bytes), &out[body_at..]);
    header_bytes[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&checksum.to_le_bytes());
    out[frame_at..body_at].copy_from_slice(&header_bytes);
}

/// A body that did not validate as the archive its message type calls for (→ `FORMAT_ERROR`).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("invalid body: {0}")]
    Invalid(String),
}

/// The rkyv serializer bodies are written with.
pub type BodySerializer<'a> = HighSerializer<Vec<u8>, ArenaHandle<'a>, rancor::Error>;
/// The rkyv validator bodies are checked with.
pub type BodyValidator<'a> = HighValidator<'a, rancor::Error>;
/// The rkyv deserializer bodies are decoded with.
pub type BodyDeserializer = HighDeserializer<rancor::Error>;

/// Types `encode_body` can write: every message type and `Vec` of them, and `BatchSlice`.
/// Blanket-implemented; it only names the rkyv bounds once.
pub trait BodyEncode: for<'a> Serialize<BodySerializer<'a>> {}
impl<T: for<'a> Serialize<BodySerializer<'a>>> BodyEncode for T {}

/// Types whose archives `access_body` can validate. Blanket-implemented.
pub trait BodyAccess: Archive<Archived: Portable + for<'a> CheckBytes<BodyValidator<'a>>> {}
impl<T> BodyAccess for T where T: Archive<Archived: Portable + for<'a> CheckBytes<BodyValidator<'a>>>
{}

/// Types `decode_body` can rebuild from a validated archive. Blanket-implemented.
pub trait BodyDecode:
    BodyAccess + Archive<Archived: Deserialize<Self, BodyDeserializer>> + Sized
{
}
impl<T> BodyDecode for T where T: BodyAccess + Archive<Archived: Deserialize<T, BodyDeserializer>> {}

/// A borrowed batch that archives exactly like `Vec<T>`, so a caller holding a slice of events
/// can encode them without cloning into a `Vec` first.
#[derive(Clone, Copy, Debug)]
pub struct BatchSlice<'a, T>(pub &'a [T]);

impl<T: Archive> Archive for BatchSlice<'_, T> {
    type Archived = ArchivedVec<T::Archived>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_slice(self.0, resolver, out);
    }
}

impl<T, S> Serialize<S> for BatchSlice<'_, T>
where
    T: Serialize<S>,
    S: rancor::Fallible + rkyv::ser::Allocator + rkyv::ser::Writer + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedVec::<T::Archived>::serialize_from_slice(self.0, serializer)
    }
}

/// Serializes a message body: a `Vec` (or `BatchSlice`) of events or results, or a single
/// `Hello`, `HelloReply`, `Ping` or `Pong`.
///
/// Panics only if the archive would exceed rkyv's 2 GiB relative-pointer range (32-bit
/// pointers), which no frame within limits comes near.
pub fn encode_body<T: BodyEncode>(value: &T) -> Vec<u8> {
    rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, Vec::new())
        .expect("serializing an in-memory message cannot fail below the 2 GiB archive limit")
}

/// Validated zero-copy view of a body, e.g. `access_body::<Vec<Sale>>(body)` gives
/// `&ArchivedVec<ArchivedSale>`. Any alignment of `body` is fine.
pub fn access_body<T: BodyAccess>(body: &[u8]) -> Result<&T::Archived, DecodeError> {
    rkyv::access::<T::Archived, rancor::Error>(body)
        .map_err(|error| DecodeError::Invalid(error.to_string()))
}

/// Validated full decode of a body into owned values, e.g. `decode_body::<Vec<OpResult>>(body)`.
pub fn decode_body<T: BodyDecode>(body: &[u8]) -> Result<T, DecodeError> {
    rkyv::from_bytes::<T, rancor::Error>(body)
        .map_err(|error| DecodeError::Invalid(error.to_string()))
}

/// `exercise_body` of a request of `T` events and of its `OpResult` answers.
fn exercise_op<T>(body: &[u8])
where
    Vec<T>: BodyDecode,
{
    exercise_body::<Vec<T>>(body);
    exercise_body::<Vec<OpResult>>(body);
}

/// Tries both validated views of one body type; the result is ignored because only "never
/// panics" is being exercised.
fn exercise_body<T: BodyDecode>(body: &[u8]) {
    if access_body::<T>(body).is_ok() {
        // decode_body re-validates; it can only succeed where access did.
        let _ = decode_body::<T>(body);
    }
}

/// Runs one message type's request and response body types over `body`.
fn exercise_message(msg_type: MsgType, body: &[u8]) {
    match msg_type {
        MsgType::Hello => {
            exercise_body::<Hello>(body);
            exercise_body::<HelloReply>(body);
        }
        MsgType::Ping => {
            exercise_body::<Ping>(body);
            exercise_body::<Pong>(body);
        }
        MsgType::CardIssue => {
            exercise_body::<Vec<CardIssue>>(body);
            exercise_body::<Vec<CardIssueResult>>(body);
        }
        MsgType::CardActivate => {
            exercise_body::<Vec<CardActivate>>(body);
            exercise_body::<Vec<OpResult>>(body);
        }
        MsgType::CardLoad => {
            exercise_body::<Vec<CardLoad>>(body);
            exercise_body::<Vec<OpResult>>(body);
        }
        MsgType::CardSell => {
            exercise_body::<Vec<CardSell>>(body);
            exercise_body::<Vec<OpResult>>(body);
        }
        MsgType::CardBlock => exercise_op::<CardBlock>(body),
        MsgType::CardUnblock => exercise_op::<CardUnblock>(body),
        MsgType::OpFence => exercise_op::<OpFence>(body),
        MsgType::CardRefund => {
            exercise_body::<Vec<CardRefund>>(body);
            exercise_body::<Vec<OpResult>>(body);
        }
        MsgType::CardRegister => {
            exercise_body::<Vec<CardRegister>>(body);
            exercise_body::<Vec<OpResult>>(body);
        }
        MsgType::CardConsign => {
            exercise_body::<Vec<CardConsign>>(body);
            exercise_body::<Vec<OpResult>>(body);
        }
        MsgType::CardClaim => {
            exercise_body::<Vec<CardClaim>>(body);
            exercise_body::<Vec<OpResult>>(body);
        }
        MsgType::EventCharge => {
            exercise_body::<Vec<EventCharge>>(body);
            exercise_body::<Vec<OpResult>>(body);
        }
        MsgType::PriceQuote => {
            exercise_body::<Vec<PriceQuote>>(body);
            exercise_body::<Vec<PriceQuoteResult>>(body);
        }
        MsgType::SessionAudit => {
            exercise_body::<SessionAudit>(body);
            exercise_body::<SessionAuditResult>(body);
        }
        MsgType::SessionNotice => exercise_body::<Vec<SessionNotice>>(body),
        MsgType::ForeignImport => {
            exercise_body::<Vec<ForeignImport>>(body);
            exercise_body::<Vec<OpResult>>(body);
        }
        MsgType::ForeignConvert => {
            exercise_body::<Vec<ForeignConvert>>(body);
            exercise_body::<Vec<ForeignConvertResult>>(body);
        }
        MsgType::Authorize => {
            exercise_body::<Vec<Authorize>>(body);
            exercise_body::<Vec<OpResult>>(body);
        }
        MsgType::Capture => {
            exercise_body::<Vec<Capture>>(body);
            exercise_body::<Vec<OpResult>>(body);
        }
        MsgType::Void => {
            exercise_body::<Vec<Void>>(body);
            exercise_body::<Vec<OpResult>>(body);
        }
        MsgType::Reverse => {
            exercise_body::<Vec<Reverse>>(body);
            exercise_body::<Vec<OpResult>>(body);
        }
        MsgType::Sale => {
            exercise_body::<Vec<Sale>>(body);
            exercise_body::<Vec<OpResult>>(body);
        }
        MsgType::Refund => {
            exercise_body::<Vec<Refund>>(body);
            exercise_body::<Vec<OpResult>>(body);
        }
        MsgType::Inquiry => {
            exercise_body::<Vec<Inquiry>>(body);
            exercise_body::<Vec<InquiryResult>>(body);
        }
        MsgType::BalanceInquiry => {
            exercise_body::<Vec<BalanceInquiry>>(body);
            exercise_body::<Vec<BalanceResult>>(body);
        }
        MsgType::SessionStart => {
            exercise_body::<Vec<SessionStart>>(body);
            exercise_body::<Vec<SessionResult>>(body);
        }
        MsgType::SessionUpdate => {
            exercise_body::<Vec<SessionUpdate>>(body);
            exercise_body::<Vec<SessionResult>>(body);
        }
        MsgType::SessionEnd => {
            exercise_body::<Vec<SessionEnd>>(body);
            exercise_body::<Vec<SessionResult>>(body);
        }
    }
}

/// The fuzzing entry point: decodes `bytes` as a frame and, because random bytes almost never
/// carry a valid checksum, also treats `bytes` itself as a body; every message type's request
/// and response body types are tried on each. Must never panic, whatever the bytes.
pub fn fuzz_decode(bytes: &[u8]) {
    // A generous limit so large inputs reach the checksum and body code paths.
    const FUZZ_BODY_BYTES_MAX: u32 = 1 << 24;
    if let Ok(Some(frame)) = decode_frame(bytes, FUZZ_BODY_BYTES_MAX) {
        let _ = frame.header.message_type();
        for msg_type in MsgType::ALL {
            exercise_message(msg_type, frame.body);
        }
    }
    for msg_type in MsgType::ALL {
        exercise_message(msg_type, bytes);
    }
    // The Diameter front end's decoder, and each grouped AVP's, take outside bytes too.
    if let Ok(message) = crate::diameter::decode(bytes) {
        for avp in &message.avps {
            let _ = avp.as_grouped();
        }
        assert_eq!(
            crate::diameter::decode(&crate::diameter::encode(&message)).ok().as_ref(),
            Some(&message)
        );
    }
    // The ISO 8583 front end's decoder takes outside bytes too, in both encodings; a message
    // that decodes must encode back.
    for encoding in [crate::iso8583::Encoding::Ascii, crate::iso8583::Encoding::Binary] {
        if let Ok(message) = crate::iso8583::decode(bytes, encoding) {
            assert!(
                crate::iso8583::encode(&message, encoding).is_ok(),
                "a decoded message encodes"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY_MAX: u32 = 1 << 20;

    /// STATEMENT is answered by the exporter under a number of its own: no `MsgType` may take
    /// it (OP_FENCE first did, and the exporter's statements failed).
    #[test]
    fn no_msg_type_takes_the_statement_number() {
        assert_eq!(MsgType::from_u16(crate::STATEMENT_MSG_TYPE), None);
    }

    fn sample_header() -> FrameHeader {
        FrameHeader {
            version: VERSION,
            flags: FLAG_RESPONSE | FLAG_RETRANSMIT,
            msg_type: MsgType::Sale as u16,
            status: ResultCode::RetryLater.as_u16(),
            request_id: 0x0102_0304_0506_0708,
            deadline_ms: 0xA0B0_C0D0,
            body_len: 0,
        }
    }

    #[test]
    fn header_round_trips_and_has_the_documented_layout() {
        let body = b"hello body";
        let mut out = vec![0xEE]; // encode_frame appends; prove it leaves earlier bytes alone
        encode_frame(&mut out, &sample_header(), body);
        assert_eq!(out[0], 0xEE);
        let bytes = &out[1..];
        assert_eq!(bytes.len(), HEADER_BYTES + body.len());
        assert_eq!(&bytes[0..2], b"PS");
        assert_eq!(bytes[2], VERSION);
        assert_eq!(bytes[3], FLAG_RESPONSE | FLAG_RETRANSMIT);
        assert_eq!(&bytes[4..6], &24u16.to_le_bytes());
        assert_eq!(&bytes[6..8], &906u16.to_le_bytes());
        assert_eq!(&bytes[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&bytes[16..20], &[0xD0, 0xC0, 0xB0, 0xA0]);
        assert_eq!(&bytes[20..24], &(body.len() as u32).to_le_bytes());
        assert_eq!(&bytes[28..32], &[0, 0, 0, 0]);
        let mut zeroed = bytes.to_vec();
        zeroed[24..28].fill(0);
        assert_eq!(&bytes[24..28], &crc32c::crc32c(&zeroed).to_le_bytes());

        let frame = decode_frame(bytes, BODY_MAX).expect("valid").expect("whole");
        let mut expected = sample_header();
        expected.body_len = body.len() as u32;
        assert_eq!(frame.header, expected);
        assert_eq!(frame.body, body);
        assert_eq!(frame.total_len, bytes.len());
    }

    #[test]
    fn partial_frames_need_more_bytes_and_trailing_bytes_are_left() {
        let mut out = Vec::new();
        encode_frame(&mut out, &sample_header(), b"abc");
        encode_frame(&mut out, &sample_header(), b"");
        let first_len = HEADER_BYTES + 3;
        for cut in 0..first_len {
            assert_eq!(decode_frame(&out[..cut], BODY_MAX), Ok(None), "cut at {cut}");
        }
        let first = decode_frame(&out, BODY_MAX).expect("valid").expect("whole");
        assert_eq!(first.total_len, first_len);
        let second = decode_frame(&out[first_len..], BODY_MAX).expect("valid").expect("whole");
        assert_eq!(second.body, b"");
    }

    #[test]
    fn header_checks_fire_before_the_body_arrives() {
        let mut out = Vec::new();
        encode_frame(&mut out, &sample_header(), &[0u8; 100]);

        let mut bad = out.clone();
        bad[0] = b'X';
        assert_eq!(decode_frame(&bad[..2], BODY_MAX), Err(FrameError::BadMagic));
        let mut bad = out.clone();
        bad[2] = 2;
        assert_eq!(decode_frame(&bad[..3], BODY_MAX), Err(FrameError::UnsupportedVersion(2)));
        let mut bad = out.clone();
        bad[31] = 1;
        assert_eq!(decode_frame(&bad[..HEADER_BYTES], BODY_MAX), Err(FrameError::ReservedNotZero));
        assert_eq!(
            decode_frame(&out[..HEADER_BYTES], 99),
            Err(FrameError::TooLarge { body_len: 100, max: 99 })
        );
        assert_eq!(decode_frame(&out, 100).map(|f| f.is_some()), Ok(true));
    }

    #[test]
    fn any_flipped_bit_is_caught() {
        let mut out = Vec::new();
        encode_frame(&mut out, &sample_header(), b"checksummed body");
        for bit in 0..out.len() * 8 {
            let mut bad = out.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let result = decode_frame(&bad, BODY_MAX);
            // A flip in body_len may make the frame look incomplete; never does it validate.
            assert!(!matches!(result, Ok(Some(_))), "flip of bit {bit} went unnoticed");
        }
        let mut bad = out.clone();
        bad[HEADER_BYTES] ^= 1;
        let error = decode_frame(&bad, BODY_MAX).expect_err("bad checksum");
        assert_eq!(error, FrameError::ChecksumMismatch { request_id: 0x0102_0304_0506_0708 });
        assert_eq!(error.code(), ResultCode::ChecksumMismatch);
        assert_eq!(error.request_id(), 0x0102_0304_0506_0708);
    }

    #[test]
    fn frame_error_codes() {
        assert_eq!(FrameError::BadMagic.code(), ResultCode::FormatError);
        assert_eq!(FrameError::ReservedNotZero.code(), ResultCode::FormatError);
        assert_eq!(FrameError::UnsupportedVersion(9).code(), ResultCode::UnsupportedVersion);
        assert_eq!(FrameError::TooLarge { body_len: 2, max: 1 }.code(), ResultCode::FrameTooLarge);
        assert_eq!(FrameError::BadMagic.request_id(), 0);
        assert_eq!(FrameError::TooLarge { body_len: 2, max: 1 }.request_id(), 0);
    }

    fn op_result(seed: u64) -> OpResult {
        OpResult {
            code: ResultCode::InsufficientFunds.as_u16(),
            flags: FLAG_REPLAYED,
            field: 4,
            approval_code: 123_456,
            amount_won: seed,
            balance_won: seed * 2,
            available_won: seed * 3,
            hold_expires_at_ms: u64::MAX - seed,
        }
    }

    /// Encodes, checks zero-copy access and full decode both give the value back, and that the
    /// frame path preserves the bytes.
    fn round_trip<T>(value: T)
    where
        T: BodyEncode + BodyDecode + PartialEq + std::fmt::Debug,
    {
        let body = encode_body(&value);
        assert_eq!(decode_body::<T>(&body), Ok(value), "decode");
        access_body::<T>(&body).expect("access");
        // Any alignment: shift the body by one byte.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&body);
        access_body::<T>(&shifted[1..]).expect("unaligned access");
        let mut frame = Vec::new();
        encode_frame(&mut frame, &FrameHeader::request(MsgType::Ping, 7, 0), &body);
        let decoded = decode_frame(&frame, BODY_MAX).expect("valid").expect("whole");
        assert_eq!(decoded.body, &body[..]);
    }

    #[test]
    fn every_message_body_round_trips() {
        round_trip(Hello { client_name: "a client with a long name".into(), protocol_version: 1 });
        round_trip(Hello { client_name: "short".into(), protocol_version: 1 });
        round_trip(HelloReply {
            server_name: "pinswitch".into(),
            protocol_version: 1,
            shard_count: 8,
            frame_bytes_max: 1 << 22,
            batch_events_max: 8000,
            in_flight_per_connection_max: 1024,
            hold_ttl_max_s: 604_800,
            idempotency_window_s: 604_800,
            server_time_ms: 1_700_000_000_000,
        });
        round_trip(Ping { nonce: 42 });
        round_trip(Pong { nonce: 42, server_time_ms: 7 });
        round_trip(vec![CardIssue { op_id: u128::MAX, face_value_won: 10_000 }]);
        round_trip(vec![CardIssueResult {
            code: 0,
            flags: 0,
            field: 0,
            pin: 4_539_148_803_436_467,
            balance_won: 10_000,
        }]);
        round_trip(vec![
            CardActivate { op_id: 1, pin: 2, password: b"secret".to_vec() },
            CardActivate { op_id: 3, pin: 4, password: Vec::new() },
        ]);
        round_trip(vec![CardLoad { op_id: 1, pin: 2, amount_won: 3, funding: 4 }]);
        round_trip(vec![Authorize {
            op_id: 1 << 100,
            pin: 2,
            password: b"pw".to_vec(),
            amount_won: 3,
            merchant_id: 4,
            category: 5,
            hold_ttl_s: 6,
        }]);
        round_trip(vec![Capture {
            op_id: 1,
            pin: 2,
            hold_id: 3,
            amount_won: u64::MAX,
            final_capture: true,
        }]);
        round_trip(vec![Void { op_id: 1, pin: 2, hold_id: 3 }]);
        round_trip(vec![Reverse { op_id: 1, pin: 2, original_op_id: 3 }]);
        round_trip(sales(3));
        round_trip(vec![Refund { op_id: 1, pin: 2, original_op_id: 3, amount_won: 4 }]);
        round_trip(vec![Inquiry { pin: 1, op_id: 2 }]);
        round_trip(vec![InquiryResult { code: 0, status: 3, msg_type: 20, result: op_result(9) }]);
        round_trip(vec![BalanceInquiry { pin: 1 }]);
        round_trip(vec![BalanceResult {
            code: 0,
            state: 3,
            face_value_won: 1,
            balance_won: 2,
            available_won: 3,
            held_won: 4,
            password_tries_left: 5,
            points: 12,
            valid_until_s: 1_900_000_000,
            password_hint: true,
            holds: vec![HoldInfo { hold_id: 6, amount_won: 7, captured_won: 8, expires_at_ms: 9 }],
        }]);
        round_trip(vec![op_result(1), op_result(2)]);
        round_trip(Vec::<OpResult>::new());
    }

    fn sales(count: u64) -> Vec<Sale> {
        (0..count)
            .map(|i| Sale {
                op_id: u128::from(i) << 64 | 1,
                pin: 4_539_148_803_436_467,
                password: format!("pw{i}").into_bytes(),
                amount_won: 1000 + i,
                merchant_id: 77,
                category: 1,
            })
            .collect()
    }

    #[test]
    fn batch_slice_archives_like_a_vec_and_in_place_framing_matches() {
        let events = sales(5);
        let body = encode_body(&BatchSlice(&events));
        assert_eq!(body, encode_body(&events));
        let header = FrameHeader::request(MsgType::Sale, 9, 250);
        let mut two_step = vec![1, 2, 3];
        encode_frame(&mut two_step, &header, &body);
        let mut in_place = vec![1, 2, 3];
        encode_frame_body(&mut in_place, &header, &BatchSlice(&events));
        assert_eq!(in_place, two_step);
        let frame = decode_frame(&in_place[3..], BODY_MAX).expect("valid").expect("whole");
        let archived = access_body::<Vec<Sale>>(frame.body).expect("access");
        assert_eq!(archived.len(), 5);
        assert_eq!(archived[4].amount_won.to_native(), 1004);
        assert_eq!(archived[4].password.as_slice(), b"pw4");
    }

    #[test]
    fn bodies_of_the_wrong_type_or_truncated_are_refused() {
        let body = encode_body(&sales(2));
        assert!(access_body::<Vec<Sale>>(&[]).is_err());
        for cut in 0..body.len() {
            // A truncated archive may by chance validate as a shorter one but must not panic.
            let _ = decode_body::<Vec<Sale>>(&body[..cut]);
        }
        // Too short for even the root object.
        assert!(matches!(decode_body::<Hello>(&[0xFF; 3]), Err(DecodeError::Invalid(_))));
        // Out-of-range pointer: a Vec claiming 1000 elements in a 16-byte body.
        let mut lying = vec![0u8; 8];
        lying.extend_from_slice(&(-8i32).to_le_bytes());
        lying.extend_from_slice(&1000u32.to_le_bytes());
        assert!(access_body::<Vec<OpResult>>(&lying).is_err());
        fuzz_decode(&body);
    }
}
