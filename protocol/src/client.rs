//! The async client library (feature `client`): one pipelined connection (TCP, TLS on TCP, or
//! one QUIC stream) shared by any number of tasks. A writer task coalesces queued frames into
//! few writes, a reader task matches responses to waiting callers by request id, so responses
//! may arrive in any order. The CLI, the load generator and the integration tests all talk to
//! the server through this.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::codes::ResultCode;
use crate::frame::{
    BatchSlice, BodyDecode, BodyEncode, DecodeError, FLAG_PUSH, FLAG_RESPONSE, FrameError,
    FrameHeader, decode_body, decode_frame, encode_body, encode_frame, encode_frame_body,
};
use crate::messages::*;

/// Why a call failed. Only `Rejected` and `ResultCount` are answers from the server; `Closed`,
/// `Io` and `Frame` leave the outcome of in-flight mutating requests unknown (use INQUIRY).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed")]
    Closed,
    /// The server rejected the whole frame with this status; nothing in it was executed.
    #[error("frame rejected by the server: {}", .0.name())]
    Rejected(ResultCode),
    /// The server sent bytes that are not a valid frame; the connection was dropped.
    #[error("bad frame from the server: {0}")]
    Frame(#[from] FrameError),
    #[error("bad response body: {0}")]
    Decode(#[from] DecodeError),
    #[error("expected {expected} results, got {got}")]
    ResultCount { expected: usize, got: usize },
}

/// Connection tuning; `Default` gives the documented defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// Most requests outstanding on the connection; further calls wait for a slot.
    pub in_flight_max: usize,
    /// Largest response body accepted; a larger one is a framing error that drops the connection.
    pub response_body_bytes_max: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            // The server's default `in_flight_per_connection_max`: more would be refused RETRY_LATER.
            in_flight_max: 256,
            response_body_bytes_max: 64 << 20,
        }
    }
}

type Reply = Result<(FrameHeader, Vec<u8>), ClientError>;

/// Waiters by request id, plus whether the connection is gone (then no new waiter may register,
/// so none can be left waiting forever).
struct Pending {
    waiters: HashMap<u64, oneshot::Sender<Reply>>,
    closed: bool,
}

/// State the reader and writer tasks share with callers.
struct Shared {
    pending: Mutex<Pending>,
    /// Where SESSION_NOTICE pushes go; `None` until `Client::notices` is called, then bounded
    /// (`NOTICES_QUEUED_MAX`): a consumer that falls behind loses the newest notices, never
    /// responses.
    notices: Mutex<Option<mpsc::Sender<SessionNotice>>>,
    in_flight: Semaphore,
    next_request_id: AtomicU64,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so poisoning is ignored rather than propagated.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the connection dead and answers every waiter with `make_error()`.
    fn fail_all(&self, make_error: impl Fn() -> ClientError) {
        let waiters = {
            let mut pending = self.pending();
            pending.closed = true;
            std::mem::take(&mut pending.waiters)
        };
        self.in_flight.close();
        for (_, waiter) in waiters {
            let _ = waiter.send(Err(make_error()));
        }
    }
}

/// Owned by all clones of a `Client`; dropping the last clone stops the tasks.
struct Connection {
    shared: Arc<Shared>,
    frames: mpsc::UnboundedSender<Vec<u8>>,
    reader: tokio::task::AbortHandle,
    /// What must live as long as the connection besides its streams (QUIC: the endpoint and
    /// the connection the stream belongs to).
    _keep: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The writer stops by itself when `frames` closes; the reader would otherwise wait for
        // the server to hang up.
        self.reader.abort();
    }
}

/// Removes a waiter whose caller gave up (future dropped) so the map does not grow.
struct WaiterGuard<'a> {
    shared: &'a Shared,
    request_id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.shared.pending().waiters.remove(&self.request_id);
    }
}

/// A pipelined connection to a Pinswitch server. Cheap to clone; clones share the connection
/// but each has its own deadline setting.
#[derive(Clone)]
pub struct Client {
    connection: Arc<Connection>,
    deadline_ms: u32,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("deadline_ms", &self.deadline_ms).finish_non_exhaustive()
    }
}

impl Client {
    /// Connects with the default options.
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        Self::connect_with_options(addr, ClientOptions::default()).await
    }

    /// Connects (TCP_NODELAY on, since frames are small and latency matters) and starts the
    /// reader and writer tasks on the current tokio runtime.
    pub async fn connect_with_options(
        addr: &str,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read_half, write_half) = stream.into_split();
        Ok(Self::start(read_half, write_half, options))
    }

    /// Connects over TLS 1.3 (`crate::tls`: the switch's CA, and a client certificate for
    /// mutual TLS), then as `connect_with_options`. A refused handshake is `Io`.
    pub async fn connect_tls(
        addr: &str,
        tls: &crate::tls::TlsClient,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let stream = tls.connector().connect(tls.server_name(), stream).await?;
        let (read_half, write_half) = tokio::io::split(stream);
        Ok(Self::start(read_half, write_half, options))
    }

    /// Connects over QUIC to the switch's UDP address (`[server] quic_listen`), TLS 1.3 with
    /// `tls` as for `connect_tls`, and carries the frames on one bidirectional stream, as on
    /// TCP. A refused handshake or connection is `Io`.
    pub async fn connect_quic(
        addr: &str,
        tls: &crate::tls::TlsClient,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let remote = tokio::net::lookup_host(addr).await?.next().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "the address resolves to nothing")
        })?;
        let local: std::net::SocketAddr = if remote.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.quic_config())
            .map_err(std::io::Error::other)?;
        let mut endpoint = quinn::Endpoint::client(local)?;
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let connection = endpoint
            .connect(remote, &tls.server_name_str())
            .map_err(std::io::Error::other)?
            .await
            .map_err(std::io::Error::other)?;
        let (send, recv) = connection.open_bi().await.map_err(std::io::Error::other)?;
        Ok(Self::start_keeping(recv, send, options, Some(Box::new((endpoint, connection)))))
    }

    fn start<R, W>(read_half: R, write_half: W, options: ClientOptions) -> Client
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        Self::start_keeping(read_half, write_half, options, None)
    }

    fn start_keeping<R, W>(
        read_half: R,
        write_half: W,
        options: ClientOptions,
        keep: Option<Box<dyn std::any::Any + Send + Sync>>,
    ) -> Client
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending { waiters: HashMap::new(), closed: false }),
            notices: Mutex::new(None),
            in_flight: Semaphore::new(options.in_flight_max.clamp(1, Semaphore::MAX_PERMITS)),
            // 0 is what the server answers frame errors with when it cannot read the id.
            next_request_id: AtomicU64::new(1),
        });
        let (frames, frames_rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(write_half, frames_rx, shared.clone()));
        let reader =
            tokio::spawn(read_loop(read_half, shared.clone(), options.response_body_bytes_max))
                .abort_handle();
        Client {
            connection: Arc::new(Connection { shared, frames, reader, _keep: keep }),
            deadline_ms: 0,
        }
    }

    /// Starts keeping the SESSION_NOTICE pushes this connection receives (re-authorization,
    /// abort, low balance, expiry) and returns their queue. Call once, before the sessions
    /// start; a second call replaces the queue.
    pub fn notices(&self) -> mpsc::Receiver<SessionNotice> {
        let (sender, receiver) = mpsc::channel(NOTICES_QUEUED_MAX);
        *self.connection.shared.notices.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(sender);
        receiver
    }

    /// Sets the header deadline (the caller's remaining budget, ms) of later requests made
    /// through this clone; 0 = none.
    pub fn set_deadline_ms(&mut self, deadline_ms: u32) {
        self.deadline_ms = deadline_ms;
    }

    /// Sends one frame with a fresh request id and waits for the response with that id. Many
    /// calls may be in flight at once; beyond `in_flight_max` further calls wait. Returns the
    /// response header (check `status`) and body.
    pub async fn request(
        &self,
        msg_type: MsgType,
        body: Vec<u8>,
    ) -> Result<(FrameHeader, Vec<u8>), ClientError> {
        self.request_frame(msg_type, |header| {
            let mut frame = Vec::with_capacity(crate::frame::HEADER_BYTES + body.len());
            encode_frame(&mut frame, header, &body);
            frame
        })
        .await
    }

    /// `request` with the whole frame built by `build` once the request id is known (lets
    /// batches be archived straight into the frame).
    async fn request_frame(
        &self,
        msg_type: MsgType,
        build: impl FnOnce(&FrameHeader) -> Vec<u8>,
    ) -> Result<(FrameHeader, Vec<u8>), ClientError> {
        let shared = &self.connection.shared;
        // The permit is held until the response (or failure) arrives, bounding outstanding frames.
        let _permit = shared.in_flight.acquire().await.map_err(|_| ClientError::Closed)?;
        let request_id = shared.next_request_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut pending = shared.pending();
            if pending.closed {
                return Err(ClientError::Closed);
            }
            pending.waiters.insert(request_id, reply_tx);
        }
        let _guard = WaiterGuard { shared, request_id };
        let frame = build(&FrameHeader::request(msg_type, request_id, self.deadline_ms));
        self.connection.frames.send(frame).map_err(|_| ClientError::Closed)?;
        reply_rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Sends a batch and returns one result per event, in event order. A non-zero frame status
    /// is `Rejected`; a result count that does not match the batch is `ResultCount`.
    pub async fn call<E, R>(&self, msg_type: MsgType, events: &[E]) -> Result<Vec<R>, ClientError>
    where
        E: BodyEncode,
        R: BodyDecode,
    {
        let (header, body) = self
            .request_frame(msg_type, |header| {
                let mut frame = Vec::new();
                encode_frame_body(&mut frame, header, &BatchSlice(events));
                frame
            })
            .await?;
        let results: Vec<R> = decode_response(msg_type, &header, &body)?;
        if results.len() != events.len() {
            return Err(ClientError::ResultCount { expected: events.len(), got: results.len() });
        }
        Ok(results)
    }

    /// HELLO: announces this client and returns the server's limits.
    pub async fn hello(&self, client_name: &str) -> Result<HelloReply, ClientError> {
        let hello =
            Hello { client_name: client_name.to_owned(), protocol_version: crate::frame::VERSION };
        self.single(MsgType::Hello, &hello).await
    }

    /// PING: a round trip that touches no card.
    pub async fn ping(&self, nonce: u64) -> Result<Pong, ClientError> {
        self.single(MsgType::Ping, &Ping { nonce }).await
    }

    /// A request whose body is one value rather than a batch (HELLO, PING).
    async fn single<Q: BodyEncode, A: BodyDecode>(
        &self,
        msg_type: MsgType,
        request: &Q,
    ) -> Result<A, ClientError> {
        let (header, body) = self.request(msg_type, encode_body(request)).await?;
        decode_response(msg_type, &header, &body)
    }

    pub async fn card_issue(
        &self,
        events: &[CardIssue],
    ) -> Result<Vec<CardIssueResult>, ClientError> {
        self.call(MsgType::CardIssue, events).await
    }

    pub async fn card_activate(
        &self,
        events: &[CardActivate],
    ) -> Result<Vec<OpResult>, ClientError> {
        self.call(MsgType::CardActivate, events).await
    }

    pub async fn card_load(&self, events: &[CardLoad]) -> Result<Vec<OpResult>, ClientError> {
        self.call(MsgType::CardLoad, events).await
    }

    pub async fn card_sell(&self, events: &[CardSell]) -> Result<Vec<OpResult>, ClientError> {
        self.call(MsgType::CardSell, events).await
    }

    pub async fn card_block(&self, events: &[CardBlock]) -> Result<Vec<OpResult>, ClientError> {
        self.call(MsgType::CardBlock, events).await
    }

    pub async fn card_unblock(&self, events: &[CardUnblock]) -> Result<Vec<OpResult>, ClientError> {
        self.call(MsgType::CardUnblock, events).await
    }

    /// OP_FENCE: make an op id's outcome final (see `OpFence`).
    pub async fn op_fence(&self, events: &[OpFence]) -> Result<Vec<OpResult>, ClientError> {
        self.call(MsgType::OpFence, events).await
    }

    pub async fn card_refund(&self, events: &[CardRefund]) -> Result<Vec<OpResult>, ClientError> {
        self.call(MsgType::CardRefund, events).await
    }

    pub async fn card_register(
        &self,
        events: &[CardRegister],
    ) -> Result<Vec<OpResult>, ClientError> {
        self.call(MsgType::CardRegister, events).await
    }

    pub async fn card_claim(&self, events: &[CardClaim]) -> Result<Vec<OpResult>, ClientError> {
        self.call(MsgType::CardClaim, events).await
    }

    pub async fn card_consign(&self, events: &[CardConsign]) -> Result<Vec<OpResult>, ClientError> {
        self.call(MsgType::CardConsign, events).await
    }

    pub async fn authorize(&self, events: &[Authorize]) -> Result<Vec<OpResult>, ClientError> {
        self.call(MsgType::Authorize, events).await
    }

    pub async fn capture(&self, events: &[Capture]) -> Result<Vec<OpResult>, ClientError> {
        self.call(MsgType::Capture, events).await
    }

    pub async fn void(&self, events: &[Void]) -> Result<Vec<OpResult>, ClientError> {
        self.call(MsgType::Void, events).await
    }

    pub async fn reverse(&self, events: &[Reverse]) -> Result<Vec<OpResult>, ClientError> {
        self.call(MsgType::Reverse, events).await
    }

    pub async fn sale(&self, events: &[Sale]) -> Result<Vec<OpResult>, ClientError> {
        self.call(MsgType::Sale, events).await
    }

    pub async fn refund(&self, events: &[Refund]) -> Result<Vec<OpResult>, ClientError> {
        self.call(MsgType::Refund, events).await
    }

    pub async fn foreign_import(
        &self,
        events: &[ForeignImport],
    ) -> Result<Vec<OpResult>, ClientError> {
        self.call(MsgType::ForeignImport, events).await
    }

    pub async fn foreign_convert(
        &self,
        events: &[ForeignConvert],
    ) -> Result<Vec<ForeignConvertResult>, ClientError> {
        self.call(MsgType::ForeignConvert, events).await
    }

    pub async fn session_start(
        &self,
        events: &[SessionStart],
    ) -> Result<Vec<SessionResult>, ClientError> {
        self.call(MsgType::SessionStart, events).await
    }

    pub async fn session_update(
        &self,
        events: &[SessionUpdate],
    ) -> Result<Vec<SessionResult>, ClientError> {
        self.call(MsgType::SessionUpdate, events).await
    }

    pub async fn session_end(
        &self,
        events: &[SessionEnd],
    ) -> Result<Vec<SessionResult>, ClientError> {
        self.call(MsgType::SessionEnd, events).await
    }

    pub async fn event_charge(&self, events: &[EventCharge]) -> Result<Vec<OpResult>, ClientError> {
        self.call(MsgType::EventCharge, events).await
    }

    pub async fn price_quote(
        &self,
        events: &[PriceQuote],
    ) -> Result<Vec<PriceQuoteResult>, ClientError> {
        self.call(MsgType::PriceQuote, events).await
    }

    pub async fn session_audit(
        &self,
        audit: &SessionAudit,
    ) -> Result<SessionAuditResult, ClientError> {
        self.single(MsgType::SessionAudit, audit).await
    }

    pub async fn inquiry(&self, events: &[Inquiry]) -> Result<Vec<InquiryResult>, ClientError> {
        self.call(MsgType::Inquiry, events).await
    }

    pub async fn balance_inquiry(
        &self,
        events: &[BalanceInquiry],
    ) -> Result<Vec<BalanceResult>, ClientError> {
        self.call(MsgType::BalanceInquiry, events).await
    }
}

/// Checks the frame status and message type, then decodes the body.
fn decode_response<T: BodyDecode>(
    msg_type: MsgType,
    header: &FrameHeader,
    body: &[u8],
) -> Result<T, ClientError> {
    if header.status != 0 {
        return Err(match ResultCode::from_u16(header.status) {
            Some(code) => ClientError::Rejected(code),
            None => DecodeError::Invalid(format!("unknown frame status {}", header.status)).into(),
        });
    }
    if header.msg_type != msg_type as u16 {
        return Err(DecodeError::Invalid(format!(
            "response message type {} does not match request type {}",
            header.msg_type, msg_type as u16
        ))
        .into());
    }
    Ok(decode_body::<T>(body)?)
}

/// Writes queued frames, coalescing whatever is queued into one write so pipelined callers
/// share system calls. Ends when every `Client` clone is gone (then half-closes the socket so
/// the server sees the end) or when a write fails (then fails every waiter).
async fn write_loop<W: AsyncWrite + Unpin>(
    mut socket: W,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    shared: Arc<Shared>,
) {
    // Bounds one coalesced write so a flood of callers cannot build an unbounded buffer.
    const COALESCE_BYTES_MAX: usize = 1 << 20;
    let mut batch = Vec::new();
    while let Some(first) = frames.recv().await {
        // A lone frame is written as is; only a queue of them is copied together.
        let bytes = match frames.try_recv() {
            Err(_) => first,
            Ok(second) => {
                batch.clear();
                batch.extend_from_slice(&first);
                batch.extend_from_slice(&second);
                while batch.len() < COALESCE_BYTES_MAX {
                    match frames.try_recv() {
                        Ok(frame) => batch.extend_from_slice(&frame),
                        Err(_) => break,
                    }
                }
                std::mem::take(&mut batch)
            }
        };
        // (A TLS stream keeps what it encrypted until flushed; for TCP the flush is free.)
        let written = match socket.write_all(&bytes).await {
            Ok(()) => socket.flush().await,
            Err(error) => Err(error),
        };
        if batch.capacity() < bytes.capacity() {
            // Keep the larger buffer for the next coalesced write.
            batch = bytes;
        }
        if written.is_err() {
            shared.fail_all(|| ClientError::Closed);
            return;
        }
    }
    let _ = socket.shutdown().await;
}

/// Reads frames and hands each response to its waiter. Any end of the stream fails all
/// waiters: `Closed` for end-of-file or a socket error, `Frame` for bytes that are not a frame.
async fn read_loop<R: AsyncRead + Unpin>(mut socket: R, shared: Arc<Shared>, body_bytes_max: u32) {
    const READ_CHUNK_BYTES: usize = 64 << 10;
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    loop {
        // Decode every whole frame in the buffer, then drop the consumed prefix once.
        let mut consumed = 0;
        loop {
            match decode_frame(&buf[consumed..], body_bytes_max) {
                Ok(Some(frame)) => {
                    consumed += frame.total_len;
                    deliver(&shared, frame.header, frame.body);
                }
                Ok(None) => break,
                Err(error) => {
                    shared.fail_all(|| ClientError::Frame(error.clone()));
                    return;
                }
            }
        }
        buf.drain(..consumed);
        if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 4 {
            buf.reserve(READ_CHUNK_BYTES);
        }
        match socket.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                shared.fail_all(|| ClientError::Closed);
                return;
            }
            Ok(_) => {}
        }
    }
}

/// Most SESSION_NOTICE pushes kept unread (see `Client::notices`).
pub const NOTICES_QUEUED_MAX: usize = 4096;

/// Hands a response to its waiter, and a SESSION_NOTICE push to the notice queue if one was
/// asked for. Other pushes, undecodable pushes, and responses nobody waits for (a cancelled
/// call, or a frame error answered with request id 0 just before the server hangs up), are
/// dropped.
fn deliver(shared: &Shared, header: FrameHeader, body: &[u8]) {
    if header.flags & FLAG_PUSH != 0 {
        if header.msg_type == MsgType::SessionNotice as u16 {
            let sender = shared.notices.lock().unwrap_or_else(PoisonError::into_inner).clone();
            if let (Some(sender), Ok(notices)) = (sender, decode_body::<Vec<SessionNotice>>(body)) {
                for notice in notices {
                    let _ = sender.try_send(notice);
                }
            }
        }
        return;
    }
    if header.flags & FLAG_RESPONSE == 0 {
        return;
    }
    let waiter = shared.pending().waiters.remove(&header.request_id);
    if let Some(waiter) = waiter {
        let _ = waiter.send(Ok((header, body.to_vec())));
    }
}

impl Client {
    /// STATEMENT (`STATEMENT_MSG_TYPE`, 32): card usage statements, answered by the settlement
    /// exporter's listener (`pinswitch-exporter serve`), not by the switch. One result per query.
    pub async fn statement(
        &self,
        queries: &[StatementQuery],
    ) -> Result<Vec<StatementResult>, ClientError> {
        // `MsgType` lists the switch's messages; the header is rebuilt with the exporter's number
        // (the type passed here only seeds the request id and deadline).
        let (header, body) = self
            .request_frame(MsgType::Ping, |header| {
                let header = FrameHeader { msg_type: STATEMENT_MSG_TYPE, ..*header };
                let mut frame = Vec::new();
                encode_frame_body(&mut frame, &header, &BatchSlice(queries));
                frame
            })
            .await?;
        if header.status != 0 {
            return Err(match ResultCode::from_u16(header.status) {
                Some(code) => ClientError::Rejected(code),
                None => {
                    DecodeError::Invalid(format!("unknown frame status {}", header.status)).into()
                }
            });
        }
        if header.msg_type != STATEMENT_MSG_TYPE {
            return Err(DecodeError::Invalid(format!(
                "response message type {} to a STATEMENT",
                header.msg_type
            ))
            .into());
        }
        let results: Vec<StatementResult> = decode_body(&body)?;
        if results.len() != queries.len() {
            return Err(ClientError::ResultCount { expected: queries.len(), got: results.len() });
        }
        Ok(results)
    }
}
