//! The exporter's statement service: answers card usage statements from the statement index, for
//! the CLI (`pinswitch-exporter statement`) and over TCP (`pinswitch-exporter serve`) with the
//! switch's own frame format (protocol/src/frame.rs): STATEMENT (type 32), plus HELLO and PING.
//! Statement queries thus never reach the switch's shards. Every frame is checked as the switch
//! checks it; outside bytes get a result code, never a panic: framing errors are answered once and
//! close the connection, an unknown type gets `UNKNOWN_MESSAGE_TYPE`, a body that does not validate
//! `FORMAT_ERROR`, too many queries `BATCH_TOO_LARGE`, too many connections `RETRY_LATER`.

use std::path::Path;
use std::sync::Arc;

use pinswitch_protocol::{
    FrameHeader, HelloReply, MsgType, Pong, ResultCode, STATEMENT_MSG_TYPE, StatementQuery,
    StatementResult, access_body, decode_body, decode_frame, encode_body, encode_frame, pin,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::StatementSection;
use crate::error::Result;
use crate::merchants::MerchantRegistry;
use crate::statement::{StatementIndex, StatementLimits, StatementPage};

/// Turns a clear PIN into the card's names, newest key first (the switch's PIN keys, supplied
/// by the binary that reads them): a card is found under the first name the index knows.
pub type PinHasher = Box<dyn Fn(u64) -> Vec<u128> + Send + Sync>;

/// Answers statement queries from the index.
pub struct StatementService {
    index: StatementIndex,
    registry: MerchantRegistry,
    limits: StatementSection,
    shard_count: u16,
    pin_hash: PinHasher,
}

impl StatementService {
    /// The service over the index in `state_dir` for a switch of `shard_count` shards.
    pub fn open(
        state_dir: &Path,
        shard_count: u16,
        registry: MerchantRegistry,
        limits: StatementSection,
        pin_hash: PinHasher,
    ) -> Result<StatementService> {
        Ok(StatementService {
            index: StatementIndex::open(state_dir, shard_count)?,
            registry,
            limits,
            shard_count,
            pin_hash,
        })
    }

    pub fn limits(&self) -> &StatementSection {
        &self.limits
    }

    pub fn registry(&self) -> &MerchantRegistry {
        &self.registry
    }

    /// One query's result; every failure is a code in the result.
    pub fn answer(&self, query: &StatementQuery) -> StatementResult {
        let coded = |code: ResultCode| StatementResult {
            code: code.as_u16(),
            ..StatementResult::default()
        };
        if !pin::is_valid(query.pin) {
            return coded(ResultCode::PinFormatInvalid);
        }
        if query.to_ms != 0 && query.to_ms < query.from_ms {
            return coded(ResultCode::FormatError);
        }
        let page = StatementPage {
            from_ms: query.from_ms,
            to_ms: query.to_ms,
            cursor: query.cursor,
            limit: query.limit,
        };
        let limits = StatementLimits {
            lines_max: self.limits.lines_max,
            recharges_max: self.limits.recharges_max,
        };
        let name_of = |merchant_id: u64| self.registry.name(merchant_id);
        for pin_hash in (self.pin_hash)(query.pin) {
            match self.index.statement(pin_hash, &page, &limits, &name_of) {
                Ok(Some(result)) => return result,
                Ok(None) => {}
                Err(_) => return coded(ResultCode::InternalError),
            }
        }
        coded(ResultCode::CardNotFound)
    }

    /// The response frame to one request frame.
    fn respond(&self, header: &FrameHeader, body: &[u8], now_ms: u64) -> Vec<u8> {
        let answer = |status: ResultCode, body: &[u8]| {
            let mut frame = Vec::new();
            encode_frame(&mut frame, &FrameHeader::response_to(header, status), body);
            frame
        };
        if header.msg_type == STATEMENT_MSG_TYPE {
            let Ok(queries) = access_body::<Vec<StatementQuery>>(body) else {
                return answer(ResultCode::FormatError, &[]);
            };
            if queries.len() > self.limits.batch_max as usize {
                return answer(ResultCode::BatchTooLarge, &[]);
            }
            let results: Vec<StatementResult> = queries
                .iter()
                .map(|query| {
                    self.answer(&StatementQuery {
                        pin: query.pin.to_native(),
                        from_ms: query.from_ms.to_native(),
                        to_ms: query.to_ms.to_native(),
                        cursor: query.cursor.to_native(),
                        limit: query.limit.to_native(),
                    })
                })
                .collect();
            return answer(ResultCode::Approved, &encode_body(&results));
        }
        match MsgType::from_u16(header.msg_type) {
            Some(MsgType::Ping) => match decode_body::<pinswitch_protocol::Ping>(body) {
                Ok(ping) => answer(
                    ResultCode::Approved,
                    &encode_body(&Pong { nonce: ping.nonce, server_time_ms: now_ms }),
                ),
                Err(_) => answer(ResultCode::FormatError, &[]),
            },
            Some(MsgType::Hello) => match decode_body::<pinswitch_protocol::Hello>(body) {
                Ok(_) => {
                    let reply = HelloReply {
                        server_name: "pinswitch-exporter".into(),
                        protocol_version: pinswitch_protocol::VERSION,
                        shard_count: self.shard_count,
                        frame_bytes_max: self.limits.request_bytes_max,
                        batch_events_max: self.limits.batch_max,
                        in_flight_per_connection_max: 1,
                        hold_ttl_max_s: 0,
                        idempotency_window_s: 0,
                        server_time_ms: now_ms,
                    };
                    answer(ResultCode::Approved, &encode_body(&reply))
                }
                Err(_) => answer(ResultCode::FormatError, &[]),
            },
            _ => answer(ResultCode::UnknownMessageType, &[]),
        }
    }
}

fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        // Saturates (u64 milliseconds last 584 million years).
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

/// A frame answering a framing error or an overload outside any request.
fn error_frame(msg_type: u16, request_id: u64, code: ResultCode) -> Vec<u8> {
    let request = FrameHeader {
        version: pinswitch_protocol::VERSION,
        flags: 0,
        msg_type,
        status: 0,
        request_id,
        deadline_ms: 0,
        body_len: 0,
    };
    let mut frame = Vec::new();
    encode_frame(&mut frame, &FrameHeader::response_to(&request, code), &[]);
    frame
}

/// Accepts connections until the listener fails; each connection is answered in order, one
/// frame at a time (queries run on the blocking pool: they read files).
pub async fn serve(listener: TcpListener, service: Arc<StatementService>) -> std::io::Result<()> {
    let connections =
        Arc::new(tokio::sync::Semaphore::new(service.limits.connections_max as usize));
    loop {
        let (mut stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            let _ = stream
                .write_all(&error_frame(MsgType::Ping as u16, 0, ResultCode::RetryLater))
                .await;
            continue;
        };
        let service = service.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = connection(stream, service).await;
        });
    }
}

async fn connection(mut stream: TcpStream, service: Arc<StatementService>) -> std::io::Result<()> {
    const READ_CHUNK_BYTES: usize = 16 << 10;
    let body_bytes_max = service.limits.request_bytes_max;
    let mut buffer: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    loop {
        match decode_frame(&buffer, body_bytes_max) {
            Ok(Some(frame)) => {
                let (header, body, used) = (frame.header, frame.body.to_vec(), frame.total_len);
                buffer.drain(..used);
                let worker = service.clone();
                let response = tokio::task::spawn_blocking(move || {
                    worker.respond(&header, &body, wall_clock_ms())
                })
                .await
                .unwrap_or_else(|_| {
                    error_frame(header.msg_type, header.request_id, ResultCode::InternalError)
                });
                stream.write_all(&response).await?;
                continue;
            }
            Ok(None) => {}
            Err(error) => {
                stream.write_all(&error_frame(0, error.request_id(), error.code())).await?;
                return stream.shutdown().await;
            }
        }
        if buffer.capacity() - buffer.len() < READ_CHUNK_BYTES / 4 {
            buffer.reserve(READ_CHUNK_BYTES);
        }
        if stream.read_buf(&mut buffer).await? == 0 {
            return Ok(());
        }
    }
}
