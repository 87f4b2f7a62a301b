//! Deterministic robustness test of the decoders: seeded random byte strings and random
//! mutations (bit flips, truncations, length-field edits, re-sealed body edits, appended junk) of
//! valid frames of every message type all go through `fuzz_decode` and `decode_frame`. Nothing
//! may panic, a corrupted frame may never pass its checksum, and valid frames still decode.
//! The cargo-fuzz target in `fuzz/` explores the same entry point without a time limit.

use pinswitch_protocol::*;

/// Seeded so a failure reproduces; change to explore other inputs.
const SEED: u64 = 0x5EED_0F_C0DE_u64;
const RANDOM_STRINGS: usize = 200_000;
const MUTATIONS_PER_FRAME: usize = 600;
const BODY_MAX: u32 = 1 << 20;

/// splitmix64: tiny, good enough to spread test inputs, no dependency.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// A valid frame and how to tell it still decodes to what was encoded.
struct ValidFrame {
    name: String,
    bytes: Vec<u8>,
    body_matches: Box<dyn Fn(&[u8]) -> bool>,
}

fn push<T>(frames: &mut Vec<ValidFrame>, msg_type: MsgType, response: bool, value: T)
where
    T: BodyEncode + BodyDecode + PartialEq + std::fmt::Debug + 'static,
{
    let request = FrameHeader::request(msg_type, frames.len() as u64 + 1, 500);
    let header =
        if response { FrameHeader::response_to(&request, ResultCode::Approved) } else { request };
    let mut bytes = Vec::new();
    encode_frame_body(&mut bytes, &header, &value);
    let name = format!("{msg_type:?} {}", if response { "response" } else { "request" });
    frames.push(ValidFrame {
        name,
        bytes,
        body_matches: Box::new(move |body| decode_body::<T>(body).as_ref() == Ok(&value)),
    });
}

fn op_result(rng: &mut SplitMix64) -> OpResult {
    OpResult {
        code: ResultCode::ALL[rng.below(ResultCode::ALL.len())].as_u16(),
        flags: rng.next() as u8 & FLAG_REPLAYED,
        field: rng.below(12) as u8,
        approval_code: rng.below(1_000_000) as u32,
        amount_won: rng.next(),
        balance_won: rng.next(),
        available_won: rng.next(),
        hold_expires_at_ms: rng.next(),
    }
}

fn password(rng: &mut SplitMix64) -> Vec<u8> {
    let len = rng.below(20);
    rng.bytes(len)
}

/// One request and one response frame of every message type, batches of 0 to 4 events.
fn valid_frames(rng: &mut SplitMix64) -> Vec<ValidFrame> {
    let mut frames = Vec::new();
    let op_id = |rng: &mut SplitMix64| u128::from(rng.next()) << 64 | u128::from(rng.next());
    let pin = |rng: &mut SplitMix64| pin::with_check_digit(rng.next() % 1_000_000_000_000_000);
    for round in 0..5usize {
        let count = round; // batch sizes 0..=4
        let name_len = rng.below(24);
        let client_name: String =
            (0..name_len).map(|_| (b'a' + rng.below(26) as u8) as char).collect();
        push(
            &mut frames,
            MsgType::Hello,
            false,
            Hello { client_name: client_name.clone(), protocol_version: 1 },
        );
        push(
            &mut frames,
            MsgType::Hello,
            true,
            HelloReply {
                server_name: client_name,
                protocol_version: 1,
                shard_count: rng.next() as u16,
                frame_bytes_max: rng.next() as u32,
                batch_events_max: rng.next() as u32,
                in_flight_per_connection_max: rng.next() as u32,
                hold_ttl_max_s: rng.next() as u32,
                idempotency_window_s: rng.next(),
                server_time_ms: rng.next(),
            },
        );
        push(&mut frames, MsgType::Ping, false, Ping { nonce: rng.next() });
        push(
            &mut frames,
            MsgType::Ping,
            true,
            Pong { nonce: rng.next(), server_time_ms: rng.next() },
        );
        let events: Vec<_> = (0..count)
            .map(|_| CardIssue { op_id: op_id(rng), face_value_won: rng.next() })
            .collect();
        push(&mut frames, MsgType::CardIssue, false, events);
        let results: Vec<_> = (0..count)
            .map(|_| CardIssueResult {
                code: 0,
                flags: 0,
                field: 0,
                pin: pin(rng),
                balance_won: rng.next(),
            })
            .collect();
        push(&mut frames, MsgType::CardIssue, true, results);
        let events: Vec<_> = (0..count)
            .map(|_| CardActivate { op_id: op_id(rng), pin: pin(rng), password: password(rng) })
            .collect();
        push(&mut frames, MsgType::CardActivate, false, events);
        let events: Vec<_> = (0..count)
            .map(|_| CardLoad {
                op_id: op_id(rng),
                pin: pin(rng),
                amount_won: rng.next(),
                funding: rng.below(6) as u8,
            })
            .collect();
        push(&mut frames, MsgType::CardLoad, false, events);
        let events: Vec<_> = (0..count)
            .map(|_| CardSell {
                op_id: op_id(rng),
                pin: pin(rng),
                channel_id: rng.next() as u32,
                price_won: rng.next(),
                payment_means: rng.below(7) as u8,
                gift_recipient_ref: rng.next(),
            })
            .collect();
        push(&mut frames, MsgType::CardSell, false, events);
        let events: Vec<_> = (0..count)
            .map(|_| CardBlock { op_id: op_id(rng), pin: pin(rng), reason: rng.below(6) as u8 })
            .collect();
        push(&mut frames, MsgType::CardBlock, false, events);
        let events: Vec<_> =
            (0..count).map(|_| CardUnblock { op_id: op_id(rng), pin: pin(rng) }).collect();
        push(&mut frames, MsgType::CardUnblock, false, events);
        let events: Vec<_> =
            (0..count).map(|_| OpFence { pin: pin(rng), op_id: op_id(rng) }).collect();
        push(&mut frames, MsgType::OpFence, false, events);
        let events: Vec<_> = (0..count)
            .map(|_| CardRefund {
                op_id: op_id(rng),
                pin: pin(rng),
                payout_account_ref: rng.next(),
            })
            .collect();
        push(&mut frames, MsgType::CardRefund, false, events);
        let events: Vec<_> = (0..count)
            .map(|_| CardRegister {
                op_id: op_id(rng),
                pin: pin(rng),
                holder_ref: rng.next(),
                verified_name: rng.below(2) == 1,
            })
            .collect();
        push(&mut frames, MsgType::CardRegister, false, events);
        let events: Vec<_> = (0..count)
            .map(|_| CardConsign {
                op_id: op_id(rng),
                pin: pin(rng),
                partner_id: rng.next() as u32,
                commission_per_mille: rng.next() as u16,
            })
            .collect();
        push(&mut frames, MsgType::CardConsign, false, events);
        let events: Vec<_> = (0..count)
            .map(|_| CardClaim {
                op_id: op_id(rng),
                pin: pin(rng),
                password: password(rng),
                gift_recipient_ref: rng.next(),
                password_hint: rng.next() & 1 == 1,
            })
            .collect();
        push(&mut frames, MsgType::CardClaim, false, events);
        let events: Vec<_> = (0..count)
            .map(|_| Authorize {
                op_id: op_id(rng),
                pin: pin(rng),
                password: password(rng),
                amount_won: rng.next(),
                merchant_id: rng.next(),
                category: rng.below(7) as u8,
                hold_ttl_s: rng.next() as u32,
            })
            .collect();
        push(&mut frames, MsgType::Authorize, false, events);
        let events: Vec<_> = (0..count)
            .map(|_| Capture {
                op_id: op_id(rng),
                pin: pin(rng),
                hold_id: op_id(rng),
                amount_won: rng.next(),
                final_capture: rng.next() & 1 == 1,
            })
            .collect();
        push(&mut frames, MsgType::Capture, false, events);
        let events: Vec<_> = (0..count)
            .map(|_| Void { op_id: op_id(rng), pin: pin(rng), hold_id: op_id(rng) })
            .collect();
        push(&mut frames, MsgType::Void, false, events);
        let events: Vec<_> = (0..count)
            .map(|_| Reverse { op_id: op_id(rng), pin: pin(rng), original_op_id: op_id(rng) })
            .collect();
        push(&mut frames, MsgType::Reverse, false, events);
        let events: Vec<_> = (0..count)
            .map(|_| Sale {
                op_id: op_id(rng),
                pin: pin(rng),
                password: password(rng),
                amount_won: rng.next(),
                merchant_id: rng.next(),
                category: rng.below(7) as u8,
            })
            .collect();
        push(&mut frames, MsgType::Sale, false, events);
        let events: Vec<_> = (0..count)
            .map(|_| Refund {
                op_id: op_id(rng),
                pin: pin(rng),
                original_op_id: op_id(rng),
                amount_won: rng.next(),
            })
            .collect();
        push(&mut frames, MsgType::Refund, false, events);
        let events: Vec<_> = (0..count)
            .map(|_| ForeignImport {
                op_id: op_id(rng),
                product_id: rng.below(4) as u32,
                foreign_pin: (0..rng.below(30)).map(|_| b'0' + rng.below(75) as u8).collect(),
            })
            .collect();
        push(&mut frames, MsgType::ForeignImport, false, events);
        let events: Vec<_> = (0..count)
            .map(|_| ForeignConvert {
                op_id: op_id(rng),
                pin: pin(rng),
                password: password(rng),
                product_id: rng.below(4) as u32,
            })
            .collect();
        push(&mut frames, MsgType::ForeignConvert, false, events);
        let results: Vec<_> = (0..count)
            .map(|_| ForeignConvertResult {
                result: op_result(rng),
                foreign_pin: (0..rng.below(24)).map(|_| b'A' + rng.below(26) as u8).collect(),
            })
            .collect();
        push(&mut frames, MsgType::ForeignConvert, true, results);
        let events: Vec<_> = (0..count)
            .map(|_| SessionStart {
                op_id: op_id(rng),
                pin: pin(rng),
                session_id: op_id(rng),
                category: rng.below(8) as u8,
                destination: (0..rng.below(18)).map(|_| b'0' + rng.below(12) as u8).collect(),
                requested_s: rng.next() as u32,
                owner_id: rng.next() as u32,
                password: (0..rng.below(20)).map(|_| rng.next() as u8).collect(),
            })
            .collect();
        push(&mut frames, MsgType::SessionStart, false, events);
        let events: Vec<_> = (0..count)
            .map(|_| SessionUpdate {
                op_id: op_id(rng),
                pin: pin(rng),
                session_id: op_id(rng),
                seq: rng.next() as u32,
                used_total_s: rng.next() as u32,
                requested_s: rng.next() as u32,
            })
            .collect();
        push(&mut frames, MsgType::SessionUpdate, false, events);
        let events: Vec<_> = (0..count)
            .map(|_| SessionEnd {
                op_id: op_id(rng),
                pin: pin(rng),
                session_id: op_id(rng),
                seq: rng.next() as u32,
                used_total_s: rng.next() as u32,
            })
            .collect();
        push(&mut frames, MsgType::SessionEnd, false, events);
        for msg_type in [MsgType::SessionStart, MsgType::SessionUpdate, MsgType::SessionEnd] {
            let results: Vec<_> = (0..count)
                .map(|_| SessionResult {
                    result: op_result(rng),
                    granted_s: rng.next() as u32,
                    validity_s: rng.next() as u32,
                    quota_threshold_s: rng.next() as u32,
                    final_unit: rng.below(3) as u8,
                    redirect_number: (0..rng.below(16))
                        .map(|_| b'0' + rng.below(10) as u8)
                        .collect(),
                    failure_handling: rng.below(3) as u8,
                    tariff_id: rng.next() as u16,
                })
                .collect();
            push(&mut frames, msg_type, true, results);
        }
        let events: Vec<_> = (0..count)
            .map(|_| EventCharge {
                op_id: op_id(rng),
                pin: pin(rng),
                password: (0..rng.below(20)).map(|_| rng.next() as u8).collect(),
                category: rng.below(8) as u8,
                destination: (0..rng.below(18)).map(|_| b'0' + rng.below(12) as u8).collect(),
                units: rng.below(4) as u32,
            })
            .collect();
        push(&mut frames, MsgType::EventCharge, false, events);
        let events: Vec<_> = (0..count)
            .map(|_| PriceQuote {
                pin: if rng.below(2) == 0 { 0 } else { pin(rng) },
                category: rng.below(8) as u8,
                destination: (0..rng.below(18)).map(|_| b'0' + rng.below(12) as u8).collect(),
                duration_s: rng.next() as u32,
                units: rng.next() as u32,
            })
            .collect();
        push(&mut frames, MsgType::PriceQuote, false, events);
        let results: Vec<_> = (0..count)
            .map(|_| PriceQuoteResult {
                code: rng.below(200) as u16,
                tariff_id: rng.next() as u16,
                connect_fee_won: rng.next(),
                rate_won: rng.next(),
                increment_s: rng.next() as u32,
                first_increment_s: rng.next() as u32,
                event_won: rng.next(),
                duration_cost_won: rng.next(),
                event_cost_won: rng.next(),
                available_won: rng.next(),
                affordable_s: rng.next() as u32,
            })
            .collect();
        push(&mut frames, MsgType::PriceQuote, true, results);
        let session_ids: Vec<u128> = (0..count).map(|_| op_id(rng)).collect();
        let audit = SessionAudit {
            owner_id: rng.next() as u32,
            count: session_ids.len() as u32,
            digest: session_digest(session_ids.iter().copied()),
            list: rng.below(2) == 0,
            session_ids,
        };
        push(&mut frames, MsgType::SessionAudit, false, audit);
        let answer = SessionAuditResult {
            code: rng.below(200) as u16,
            live_count: rng.next() as u32,
            ended: rng.next() as u32,
        };
        push(&mut frames, MsgType::SessionAudit, true, answer);
        let notices: Vec<_> = (0..count)
            .map(|_| SessionNotice {
                kind: rng.below(5) as u8,
                session_id: op_id(rng),
                available_won: rng.next(),
            })
            .collect();
        push(&mut frames, MsgType::SessionNotice, true, notices);
        // Every mutating message but CARD_ISSUE answers with OpResult.
        for msg_type in [
            MsgType::CardActivate,
            MsgType::CardLoad,
            MsgType::CardSell,
            MsgType::CardBlock,
            MsgType::CardUnblock,
            MsgType::OpFence,
            MsgType::CardRefund,
            MsgType::CardRegister,
            MsgType::CardConsign,
            MsgType::CardClaim,
            MsgType::Authorize,
            MsgType::Capture,
            MsgType::Void,
            MsgType::Reverse,
            MsgType::Sale,
            MsgType::Refund,
            MsgType::ForeignImport,
            MsgType::EventCharge,
        ] {
            let results: Vec<_> = (0..count).map(|_| op_result(rng)).collect();
            push(&mut frames, msg_type, true, results);
        }
        let events: Vec<_> =
            (0..count).map(|_| Inquiry { pin: pin(rng), op_id: op_id(rng) }).collect();
        push(&mut frames, MsgType::Inquiry, false, events);
        let results: Vec<_> = (0..count)
            .map(|_| InquiryResult {
                code: 0,
                status: rng.below(8) as u8,
                msg_type: MsgType::ALL[rng.below(13)] as u16,
                result: op_result(rng),
            })
            .collect();
        push(&mut frames, MsgType::Inquiry, true, results);
        let events: Vec<_> = (0..count).map(|_| BalanceInquiry { pin: pin(rng) }).collect();
        push(&mut frames, MsgType::BalanceInquiry, false, events);
        let results: Vec<_> = (0..count)
            .map(|_| BalanceResult {
                code: 0,
                state: rng.below(7) as u8,
                face_value_won: rng.next(),
                balance_won: rng.next(),
                available_won: rng.next(),
                held_won: rng.next(),
                password_tries_left: rng.below(6) as u8,
                points: rng.next() as u32,
                valid_until_s: rng.next() as u32,
                password_hint: rng.next() & 1 == 1,
                holds: (0..rng.below(4))
                    .map(|_| HoldInfo {
                        hold_id: op_id(rng),
                        amount_won: rng.next(),
                        captured_won: rng.next(),
                        expires_at_ms: rng.next(),
                    })
                    .collect(),
            })
            .collect();
        push(&mut frames, MsgType::BalanceInquiry, true, results);
        let queries: Vec<_> = (0..count)
            .map(|_| StatementQuery {
                pin: pin(rng),
                from_ms: rng.next(),
                to_ms: rng.next(),
                cursor: rng.next() as u32,
                limit: rng.next() as u32,
            })
            .collect();
        push_statement(&mut frames, false, queries);
        let results: Vec<_> = (0..count).map(|_| statement_result(rng)).collect();
        push_statement(&mut frames, true, results);
    }
    frames
}

/// A STATEMENT frame (type 32, answered by the exporter's listener, so not in `MsgType`): built
/// by `push` under another type, then given the STATEMENT number and sealed again.
fn push_statement<T>(frames: &mut Vec<ValidFrame>, response: bool, value: T)
where
    T: BodyEncode + BodyDecode + PartialEq + std::fmt::Debug + 'static,
{
    push(frames, MsgType::Ping, response, value);
    let frame = frames.last_mut().expect("just pushed");
    let decoded = decode_frame(&frame.bytes, BODY_MAX).expect("valid").expect("whole");
    let header = FrameHeader { msg_type: STATEMENT_MSG_TYPE, ..decoded.header };
    let body = decoded.body.to_vec();
    frame.bytes.clear();
    encode_frame(&mut frame.bytes, &header, &body);
    frame.name = format!("Statement {}", if response { "response" } else { "request" });
}

fn statement_result(rng: &mut SplitMix64) -> StatementResult {
    let name_len = rng.below(70);
    StatementResult {
        code: ResultCode::ALL[rng.below(ResultCode::ALL.len())].as_u16(),
        state: rng.below(7) as u8,
        face_value_won: rng.next(),
        issued_at_ms: rng.next(),
        sold_at_ms: rng.next(),
        price_won: rng.next(),
        channel_id: rng.next() as u32,
        valid_until_s: rng.next() as u32,
        recharge_count: rng.next() as u32,
        recharged_won: rng.next(),
        recharges: (0..rng.below(4))
            .map(|_| StatementRecharge {
                time_ms: rng.next(),
                amount_won: rng.next(),
                funding: rng.below(6) as u8,
            })
            .collect(),
        merchant_refunds_won: rng.next(),
        reversals_won: rng.next(),
        balance_refund_won: rng.next(),
        refunded_won: rng.next(),
        breakage_won: rng.next(),
        other_debits_won: rng.next(),
        other_credits_won: rng.next(),
        paid_by_category_won: [
            rng.next(),
            rng.next(),
            rng.next(),
            rng.next(),
            rng.next(),
            rng.next(),
        ],
        points: rng.next() as u32,
        balance_won: rng.next(),
        as_of_ms: rng.next(),
        lines_total: rng.next() as u32,
        next_cursor: rng.next() as u32,
        lines: (0..rng.below(5))
            .map(|_| StatementLine {
                time_ms: rng.next(),
                kind: rng.below(4) as u8,
                merchant_id: rng.next(),
                merchant_name: (0..name_len)
                    .map(|_| (b'a' + rng.below(26) as u8) as char)
                    .collect(),
                amount_won: rng.next(),
            })
            .collect(),
    }
}

/// STATEMENT bodies are outside `fuzz_decode`'s message list: random bytes and mutated valid
/// bodies go through both of its body types here. Nothing may panic.
#[test]
fn statement_bodies_never_panic() {
    let mut rng = SplitMix64(SEED ^ 0x5747);
    let frames = valid_frames(&mut rng);
    let statements: Vec<&ValidFrame> =
        frames.iter().filter(|frame| frame.name.starts_with("Statement")).collect();
    assert_eq!(statements.len(), 10);
    let exercise = |bytes: &[u8]| {
        let _ = decode_body::<Vec<StatementQuery>>(bytes);
        let _ = decode_body::<Vec<StatementResult>>(bytes);
        let _ = access_body::<Vec<StatementQuery>>(bytes);
    };
    for _ in 0..RANDOM_STRINGS / 10 {
        let len = rng.below(300);
        exercise(&rng.bytes(len));
    }
    for frame in statements {
        assert_still_decodes(frame);
        let body = frame.bytes[HEADER_BYTES..].to_vec();
        for _ in 0..MUTATIONS_PER_FRAME {
            let mut mutated = body.clone();
            if mutated.is_empty() {
                continue;
            }
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(mutated.len());
                mutated[at] ^= 1 << rng.below(8);
            }
            mutated.truncate(mutated.len() - rng.below(3).min(mutated.len()));
            exercise(&mutated);
        }
    }
}

fn assert_still_decodes(frame: &ValidFrame) {
    let decoded = decode_frame(&frame.bytes, BODY_MAX)
        .unwrap_or_else(|error| panic!("{}: {error}", frame.name))
        .unwrap_or_else(|| panic!("{}: incomplete", frame.name));
    assert_eq!(decoded.total_len, frame.bytes.len(), "{}", frame.name);
    assert!((frame.body_matches)(decoded.body), "{}: body changed", frame.name);
}

/// Replaces the frame's body and recomputes length and checksum, so the corruption reaches the
/// body validators instead of stopping at the checksum.
fn reseal(original: &[u8], body: &[u8]) -> Vec<u8> {
    let frame = decode_frame(original, BODY_MAX).expect("valid").expect("whole");
    let mut out = Vec::new();
    encode_frame(&mut out, &frame.header, body);
    out
}

/// Flips `flips` distinct bits of `bytes`.
fn flip_bits(rng: &mut SplitMix64, bytes: &mut [u8], flips: usize) {
    let mut flipped: Vec<usize> = Vec::new();
    while flipped.len() < flips.min(bytes.len() * 8) {
        let bit = rng.below(bytes.len() * 8);
        if !flipped.contains(&bit) {
            flipped.push(bit);
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = SplitMix64(SEED);
    for index in 0..RANDOM_STRINGS {
        let len = match index % 8 {
            0 => rng.below(4096),
            _ => rng.below(96),
        };
        let mut bytes = rng.bytes(len);
        // Half get a plausible header start so they reach the later header checks, and some of
        // those a correct checksum so they reach the body validators through the frame path.
        if index % 2 == 0 && bytes.len() >= HEADER_BYTES {
            bytes[0..2].copy_from_slice(&MAGIC.to_le_bytes());
            bytes[2] = VERSION;
            bytes[28..32].fill(0);
            let body_len = (bytes.len() - HEADER_BYTES) as u32;
            if index % 4 == 0 {
                let mut header = decode_frame_header_fields(&bytes);
                header.body_len = body_len;
                let body = bytes[HEADER_BYTES..].to_vec();
                bytes.clear();
                encode_frame(&mut bytes, &header, &body);
                assert!(
                    matches!(decode_frame(&bytes, BODY_MAX), Ok(Some(_))),
                    "resealed random frame"
                );
            }
        }
        let _ = decode_frame(&bytes, BODY_MAX);
        let _ = decode_frame(&bytes, 16);
        fuzz_decode(&bytes);
    }
}

/// The header fields of a frame-shaped byte string, read without any validation.
fn decode_frame_header_fields(bytes: &[u8]) -> FrameHeader {
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    FrameHeader {
        version: bytes[2],
        flags: bytes[3],
        msg_type: u16_at(4),
        status: u16_at(6),
        request_id: u64::from(u32_at(8)) | u64::from(u32_at(12)) << 32,
        deadline_ms: u32_at(16),
        body_len: u32_at(20),
    }
}

#[test]
fn mutated_valid_frames_never_panic_and_never_pass_the_checksum() {
    let mut rng = SplitMix64(SEED ^ 1);
    let frames = valid_frames(&mut rng);
    assert!(frames.len() >= MsgType::ALL.len() * 2 * 5);
    for frame in &frames {
        assert_still_decodes(frame);
        fuzz_decode(&frame.bytes);
        for _ in 0..MUTATIONS_PER_FRAME {
            let mut bytes = frame.bytes.clone();
            let kind = rng.below(6);
            match kind {
                // 1 to 3 bit flips anywhere: CRC-32C detects every such error at these sizes.
                0 => {
                    let flips = 1 + rng.below(3);
                    flip_bits(&mut rng, &mut bytes, flips);
                }
                // Truncation: never a whole frame.
                1 => bytes.truncate(rng.below(bytes.len())),
                // Length-field edit: near the truth or anywhere.
                2 => {
                    let body_len = (bytes.len() - HEADER_BYTES) as u32;
                    let new_len = if rng.next() & 1 == 0 {
                        body_len.wrapping_add(rng.below(17) as u32).wrapping_sub(8)
                    } else {
                        rng.next() as u32
                    };
                    if new_len == body_len {
                        continue;
                    }
                    bytes[20..24].copy_from_slice(&new_len.to_le_bytes());
                }
                // Body edit with a fresh checksum: the body validators must catch or accept it.
                3 => {
                    let mut body = bytes[HEADER_BYTES..].to_vec();
                    if body.is_empty() {
                        continue;
                    }
                    let flips = 1 + rng.below(8);
                    flip_bits(&mut rng, &mut body, flips);
                    bytes = reseal(&frame.bytes, &body);
                }
                // Body truncated or extended, re-sealed: archives are read from their end.
                4 => {
                    let mut body = bytes[HEADER_BYTES..].to_vec();
                    if rng.next() & 1 == 0 {
                        body.truncate(rng.below(body.len() + 1));
                    } else {
                        let extra = rng.below(16);
                        body.extend(rng.bytes(extra));
                    }
                    bytes = reseal(&frame.bytes, &body);
                }
                // Junk after the frame: the frame itself still decodes, the junk is left over.
                _ => {
                    let extra = 1 + rng.below(64);
                    bytes.extend(rng.bytes(extra));
                    let decoded =
                        decode_frame(&bytes, BODY_MAX).expect("valid prefix").expect("whole");
                    assert_eq!(decoded.total_len, frame.bytes.len());
                    assert!((frame.body_matches)(decoded.body), "{}", frame.name);
                }
            }
            let result = decode_frame(&bytes, BODY_MAX);
            if kind <= 2 {
                assert!(
                    !matches!(result, Ok(Some(_))),
                    "{}: corrupted frame passed (kind {kind})",
                    frame.name
                );
            }
            let _ = decode_frame(&bytes, 64);
            fuzz_decode(&bytes);
            if let Ok(Some(decoded)) = result {
                fuzz_decode(decoded.body);
            }
        }
        assert_still_decodes(frame);
    }

    // All the valid frames back to back, as a stream, decode one after another.
    let stream: Vec<u8> = frames.iter().flat_map(|frame| frame.bytes.iter().copied()).collect();
    let mut offset = 0;
    for frame in &frames {
        let decoded = decode_frame(&stream[offset..], BODY_MAX).expect("valid").expect("whole");
        assert!((frame.body_matches)(decoded.body), "{} in stream", frame.name);
        offset += decoded.total_len;
    }
    assert_eq!(offset, stream.len());
}
