//! One client connection, served by one task on the thread of the shard that accepted it. The
//! task is a single poll loop over four things at once: the socket's input (frames are decoded
//! and planned as they arrive, see `native/`), the frames in flight (their shards' durable
//! answers), session pushes for this connection, and the socket's output. One task and no
//! spawned per-frame tasks: a frame costs no task, no cross-thread hop for its own shard's
//! events, and no wake-up beyond the socket's own.
//!
//! Every byte a connection can make the switch hold is bounded: a partial frame by
//! `frame_bytes_max` and by the shared `read_buffer_bytes_total_max` (a frame that does not fit
//! is answered RETRY_LATER and its bytes skipped), unread answers by
//! `connection_output_bytes_max` (past it the connection is not read until its client reads)
//! plus what its in-flight events (`in_flight_events_per_connection_max`) can answer. Slow or
//! silent peers are closed by the shard's reaper (`Watch`): no byte for `idle_timeout_ms` with
//! nothing in flight, a frame not complete within `frame_read_timeout_ms`, answers not taken for
//! `write_timeout_ms`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll, Waker};

use pinswitch_protocol::{decode_frame, pending_frame};
use tokio::sync::mpsc;

use crate::access::Grants;
use crate::config::Limits;
use crate::native::{self, Context, Handled};
use crate::shard_loop::wall_clock_ms;

/// The receive buffer every connection starts with (and shrinks back to when idle).
const READ_BUFFER_BASE_BYTES: usize = 64 * 1024;
/// Read when at least this much room is left; compact or grow below it.
const READ_ROOM_MIN_BYTES: usize = 16 * 1024;
/// Pushes queued for one connection between two polls; more are dropped (they are advisory).
pub(crate) const PUSH_QUEUE_FRAMES: usize = 1024;
/// An output buffer grown past this is given back once it has been written.
const OUTPUT_KEEP_BYTES: usize = 1 << 20;

/// A byte stream the poll loop can drive: glommio's and tokio's TCP streams, and whatever the
/// front ends add later (TLS, QUIC streams).
pub(crate) trait Transport {
    fn poll_read(&mut self, cx: &mut TaskContext<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;
    fn poll_write(&mut self, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;
    fn poll_close(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>>;
}

impl Transport for glommio::net::TcpStream {
    fn poll_read(&mut self, cx: &mut TaskContext<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        futures_io::AsyncRead::poll_read(Pin::new(self), cx, buf)
    }
    fn poll_write(&mut self, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        futures_io::AsyncWrite::poll_write(Pin::new(self), cx, buf)
    }
    fn poll_close(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        futures_io::AsyncWrite::poll_close(Pin::new(self), cx)
    }
}

impl Transport for tokio::net::TcpStream {
    fn poll_read(&mut self, cx: &mut TaskContext<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut read = tokio::io::ReadBuf::new(buf);
        match tokio::io::AsyncRead::poll_read(Pin::new(self), cx, &mut read) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(read.filled().len())),
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => Poll::Pending,
        }
    }
    fn poll_write(&mut self, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(self), cx, buf)
    }
    fn poll_close(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(Pin::new(self), cx)
    }
}

/// A transport whose first bytes were read already (to tell TLS from plain TCP) and are
/// given back before anything else.
pub(crate) struct Prefixed<T> {
    inner: T,
    prefix: Vec<u8>,
    at: usize,
}

impl<T: Transport> Transport for Prefixed<T> {
    fn poll_read(&mut self, cx: &mut TaskContext<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if self.at < self.prefix.len() {
            let n = buf.len().min(self.prefix.len() - self.at);
            buf[..n].copy_from_slice(&self.prefix[self.at..self.at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(n));
        }
        self.inner.poll_read(cx, buf)
    }
    fn poll_write(&mut self, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.inner.poll_write(cx, buf)
    }
    fn poll_close(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_close(cx)
    }
}

/// What a connection's bytes are: the native protocol's frames (`NativeFraming`), or another
/// front end's messages (`iso8583::IsoFraming`). The poll loop below is the same for all of
/// them; a framing only splits messages off the input and hands each to its front end.
pub(crate) trait Framing {
    /// Takes the whole message at the front of `input`, if it is all there.
    fn take(&mut self, context: &Arc<Context>, arrival: &Arrival<'_>, input: &[u8]) -> Taken;
    /// The length of the message begun at the front of `input`, once its header says it.
    fn pending_len(&self, input: &[u8]) -> Option<usize>;
    /// The answer to that begun message when the receive budget cannot hold it (its bytes are
    /// then skipped, so the stream stays framed).
    fn refused(&self, input: &[u8]) -> Vec<u8>;
    /// What a plain connection that may not be served is told before it is closed.
    fn not_permitted(&self) -> Option<Vec<u8>>;
    /// A native push frame (SESSION_NOTICE) as this connection's peer reads it (perhaps
    /// nothing: a front end without pushes drops them).
    fn push(&mut self, frame: Vec<u8>) -> Vec<u8> {
        frame
    }
}

/// What a framing's message arrived with: the connection's grants and push queue, when, and
/// how much more the connection may have in flight.
pub(crate) struct Arrival<'a> {
    pub connection: native::Connection<'a>,
    pub now_ms: u64,
    pub frames_full: bool,
    pub events_budget: u32,
}

/// What `Framing::take` found.
pub(crate) enum Taken {
    /// A whole message of this many bytes, and what became of it.
    Message(usize, Handled),
    /// More bytes are needed.
    Incomplete,
    /// The byte stream broke its framing: this answer (perhaps none) is the last.
    Broken(Vec<u8>),
}

/// The native protocol's frames (protocol/PROTOCOL.md).
pub(crate) struct NativeFraming;

impl Framing for NativeFraming {
    fn take(&mut self, context: &Arc<Context>, arrival: &Arrival<'_>, input: &[u8]) -> Taken {
        match decode_frame(input, context.limits.frame_bytes_max) {
            Ok(Some(frame)) => Taken::Message(
                frame.total_len,
                native::handle_frame(
                    context,
                    &arrival.connection,
                    &frame.header,
                    frame.body,
                    arrival.now_ms,
                    arrival.frames_full,
                    arrival.events_budget,
                ),
            ),
            Ok(None) => Taken::Incomplete,
            // The byte stream can no longer be trusted to be framed: answer and close.
            Err(error) => Taken::Broken(native::error_frame(0, error.request_id(), error.code())),
        }
    }

    fn pending_len(&self, input: &[u8]) -> Option<usize> {
        pending_frame(input).map(|frame| frame.total_len)
    }

    fn refused(&self, input: &[u8]) -> Vec<u8> {
        pending_frame(input)
            .map(|frame| {
                native::error_frame(
                    frame.msg_type,
                    frame.request_id,
                    pinswitch_protocol::ResultCode::RetryLater,
                )
            })
            .unwrap_or_default()
    }

    fn not_permitted(&self) -> Option<Vec<u8>> {
        Some(refusal_frame(pinswitch_protocol::ResultCode::NotPermitted))
    }
}

/// Serves an admitted connection. Its first bytes say what it is: a TLS handshake
/// (completed within `frame_read_timeout_ms`, then the client certificate's identity gives the
/// grants) or native frames over plain TCP (served where `[access] plain` allows, else answered
/// NOT_PERMITTED and closed). Waiting for the first byte is an idle connection's wait.
pub(crate) async fn accepted<T: Transport, F: Framing>(
    mut transport: T,
    context: Arc<Context>,
    ticket: Ticket,
    watch: Rc<Watch>,
    framing: F,
) {
    let mut first = vec![0u8; 4096];
    let read = std::future::poll_fn(|cx| {
        if watch.timed_out.get().is_some() {
            return Poll::Ready(0);
        }
        match transport.poll_read(cx, &mut first) {
            Poll::Ready(Ok(n)) => Poll::Ready(n),
            Poll::Ready(Err(_)) => Poll::Ready(0),
            Poll::Pending => {
                watch.park(cx);
                Poll::Pending
            }
        }
    })
    .await;
    if read == 0 {
        return;
    }
    first.truncate(read);
    if first[0] != crate::tls::TLS_HANDSHAKE_BYTE {
        let transport = Prefixed { inner: transport, prefix: first, at: 0 };
        match (context.trust.plain(ticket.peer), framing.not_permitted()) {
            (Some(grants), _) => serve(transport, context, ticket, watch, grants, framing).await,
            (None, Some(refusal)) => refuse_with(transport, refusal).await,
            (None, None) => {}
        }
        return;
    }
    let Some(config) = context.trust.tls.clone() else { return };
    let Ok(mut tls) = crate::tls::TlsTransport::new(transport, config, first) else { return };
    watch.frame_started_ms.set(wall_clock_ms());
    let handshake = std::future::poll_fn(|cx| {
        if watch.timed_out.get().is_some() {
            return Poll::Ready(false);
        }
        match tls.poll_handshake(cx) {
            Poll::Ready(done) => Poll::Ready(done.is_ok()),
            Poll::Pending => {
                watch.park(cx);
                Poll::Pending
            }
        }
    })
    .await;
    if !handshake {
        // The alert (if any) was queued: give it to the socket, bounded like a refusal.
        let _ = std::future::poll_fn(|cx| tls.poll_close(cx)).await;
        return;
    }
    watch.frame_started_ms.set(0);
    let grants = context.trust.tls_client(tls.peer_name().as_deref());
    serve(tls, context, ticket, watch, grants, framing).await;
}

/// Admission of connections, shared by every shard: the total, the count per peer address, and
/// the bytes all receive buffers hold.
pub(crate) struct Admission {
    limits: Limits,
    open: AtomicU32,
    /// Open connections per shard (the hand-off acceptor gives a new one to the fewest).
    per_shard: Vec<AtomicU32>,
    per_address: Mutex<HashMap<IpAddr, u32>>,
    read_buffer_bytes: AtomicU64,
}

/// Why a connection was refused (it is answered RETRY_LATER and closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    ConnectionsMax,
    ConnectionsPerAddressMax,
    ReadBuffersFull,
}

impl Admission {
    pub(crate) fn new(limits: Limits, shard_count: u16) -> Admission {
        Admission {
            limits,
            open: AtomicU32::new(0),
            per_shard: (0..shard_count).map(|_| AtomicU32::new(0)).collect(),
            per_address: Mutex::new(HashMap::new()),
            read_buffer_bytes: AtomicU64::new(0),
        }
    }

    /// Open connections per shard, for `/metrics`.
    pub(crate) fn open_per_shard(&self) -> Vec<u32> {
        self.per_shard.iter().map(|open| open.load(Ordering::Acquire)).collect()
    }

    /// The shard serving the fewest connections (the lowest such id).
    pub(crate) fn least_loaded_shard(&self) -> usize {
        (0..self.per_shard.len())
            .min_by_key(|shard| self.per_shard[*shard].load(Ordering::Acquire))
            .unwrap_or(0)
    }

    /// Admits a connection from `peer` to be served by `shard`, or says which limit refuses it.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr, shard: usize) -> Result<Ticket, Refusal> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limits.connections_max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::ConnectionsMax);
        }
        {
            let mut per_address =
                self.per_address.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let count = per_address.entry(peer).or_insert(0);
            if *count >= self.limits.connections_per_address_max {
                drop(per_address);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::ConnectionsPerAddressMax);
            }
            *count += 1;
        }
        if let Some(count) = self.per_shard.get(shard) {
            count.fetch_add(1, Ordering::AcqRel);
        }
        let mut ticket = Ticket { admission: self.clone(), peer, shard, read_buffer_bytes: 0 };
        if !ticket.hold_read_buffer(READ_BUFFER_BASE_BYTES as u64) {
            return Err(Refusal::ReadBuffersFull);
        }
        Ok(ticket)
    }

    /// Takes `bytes` of the shared receive-buffer budget.
    fn reserve(&self, bytes: u64) -> bool {
        let max = self.limits.read_buffer_bytes_total_max;
        self.read_buffer_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|total| *total <= max)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        self.read_buffer_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// An admitted connection's place; dropping it frees the place and its buffer budget.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    peer: IpAddr,
    shard: usize,
    read_buffer_bytes: u64,
}

impl Ticket {
    /// Grows this connection's share of the receive-buffer budget to `bytes` (or shrinks it).
    fn hold_read_buffer(&mut self, bytes: u64) -> bool {
        if bytes > self.read_buffer_bytes {
            if !self.admission.reserve(bytes - self.read_buffer_bytes) {
                return false;
            }
        } else {
            self.admission.release(self.read_buffer_bytes - bytes);
        }
        self.read_buffer_bytes = bytes;
        true
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.release(self.read_buffer_bytes);
        let mut per_address =
            self.admission.per_address.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = per_address.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                per_address.remove(&self.peer);
            }
        }
        drop(per_address);
        if let Some(count) = self.admission.per_shard.get(self.shard) {
            count.fetch_sub(1, Ordering::AcqRel);
        }
        self.admission.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the shard's reaper sees of one connection; times are wall-clock ms, 0 = not running.
#[derive(Default)]
pub(crate) struct Watch {
    last_input_ms: Cell<u64>,
    frame_started_ms: Cell<u64>,
    output_stalled_ms: Cell<u64>,
    busy: Cell<bool>,
    timed_out: Cell<Option<&'static str>>,
    waker: RefCell<Option<Waker>>,
}

impl Watch {
    /// Keeps the task's waker, so the reaper can wake a connection it times out.
    fn park(&self, cx: &TaskContext<'_>) {
        let mut waker = self.waker.borrow_mut();
        if !waker.as_ref().is_some_and(|known| known.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
    }
}

/// The connections of one shard thread, looked over once a second.
#[derive(Default)]
pub(crate) struct Reaper {
    watches: RefCell<Vec<Weak<Watch>>>,
}

impl Reaper {
    /// A new connection's watch; the reaper looks at it until the connection ends.
    pub(crate) fn watch(&self) -> Rc<Watch> {
        let watch = Rc::new(Watch::default());
        watch.last_input_ms.set(wall_clock_ms());
        self.watches.borrow_mut().push(Rc::downgrade(&watch));
        watch
    }

    /// Times out the connections past a limit (they close at their next poll) and forgets the
    /// closed ones. Returns how many it timed out.
    pub(crate) fn sweep(&self, limits: &Limits, now_ms: u64) -> usize {
        let mut timed_out = 0;
        self.watches.borrow_mut().retain(|weak| {
            let Some(watch) = weak.upgrade() else { return false };
            let past = |since_ms: u64, limit_ms: u64| {
                since_ms != 0 && now_ms.saturating_sub(since_ms) >= limit_ms
            };
            let why = if past(watch.frame_started_ms.get(), limits.frame_read_timeout_ms) {
                Some("a frame was not completed in time")
            } else if past(watch.output_stalled_ms.get(), limits.write_timeout_ms) {
                Some(WRITE_STALLED)
            } else if !watch.busy.get()
                && watch.frame_started_ms.get() == 0
                && past(watch.last_input_ms.get(), limits.idle_timeout_ms)
            {
                Some("idle")
            } else {
                None
            };
            if let Some(why) = why
                && watch.timed_out.get().is_none()
            {
                watch.timed_out.set(Some(why));
                timed_out += 1;
                if let Some(waker) = watch.waker.borrow_mut().take() {
                    waker.wake();
                }
            }
            true
        });
        timed_out
    }
}

/// The reaper's reason for a connection whose client stopped reading its answers.
const WRITE_STALLED: &str = "its answers were not read in time";

/// A connection's receive buffer: bytes `start..filled` are read and not yet framed; `skip`
/// bytes of a refused frame are still to come and be dropped.
struct Received {
    bytes: Vec<u8>,
    start: usize,
    filled: usize,
    skip: usize,
}

impl Received {
    fn new() -> Received {
        Received { bytes: vec![0u8; READ_BUFFER_BASE_BYTES], start: 0, filled: 0, skip: 0 }
    }

    /// Where the next read goes: at least `READ_ROOM_MIN_BYTES` when the budget allows.
    fn room(&mut self, ticket: &mut Ticket) -> &mut [u8] {
        if self.bytes.len() - self.filled < READ_ROOM_MIN_BYTES {
            self.compact();
            if self.bytes.len() - self.filled < READ_ROOM_MIN_BYTES {
                let grown = (self.bytes.len() * 2).max(self.filled + READ_ROOM_MIN_BYTES);
                if ticket.hold_read_buffer(grown as u64) {
                    self.bytes.resize(grown, 0);
                }
            }
        }
        &mut self.bytes[self.filled..]
    }

    /// `n` bytes were read into `room`: drop what belongs to a refused frame, keep the rest.
    fn took(&mut self, n: usize) {
        let dropped = self.skip.min(n);
        self.skip -= dropped;
        if dropped > 0 {
            self.bytes.copy_within(self.filled + dropped..self.filled + n, self.filled);
        }
        self.filled += n - dropped;
    }

    fn unread(&self) -> &[u8] {
        &self.bytes[self.start..self.filled]
    }

    fn consumed(&mut self, bytes: usize) {
        self.start += bytes;
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.bytes.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
    }

    /// After the whole frames were taken: give a grown buffer back when nothing is left, or
    /// run the frame read timeout for the frame begun and make room for all of it, refusing it
    /// (RETRY_LATER, its bytes skipped: the stream stays framed, its length is known) when the
    /// shared budget cannot hold it.
    fn settle(
        &mut self,
        framing: &impl Framing,
        ticket: &mut Ticket,
        watch: &Watch,
        now_ms: u64,
        decoded_any: bool,
        output: &mut Vec<u8>,
    ) {
        if self.start == self.filled {
            self.start = 0;
            self.filled = 0;
            // A refused frame being skipped is still a frame being read: its timeout keeps
            // running (or a client could drip its body forever).
            if self.skip == 0 {
                watch.frame_started_ms.set(0);
            }
            if self.bytes.len() > READ_BUFFER_BASE_BYTES {
                self.bytes.truncate(READ_BUFFER_BASE_BYTES);
                self.bytes.shrink_to_fit();
                ticket.hold_read_buffer(READ_BUFFER_BASE_BYTES as u64);
            }
            return;
        }
        // The frame read timeout runs from the first byte of the frame now incomplete: a client
        // pipelining frames back to back never trips it.
        if decoded_any || watch.frame_started_ms.get() == 0 {
            watch.frame_started_ms.set(now_ms);
        }
        let Some(total_len) = framing.pending_len(self.unread()) else { return };
        if total_len <= self.bytes.len() - self.start {
            return;
        }
        self.compact();
        if total_len <= self.bytes.len() {
            return;
        }
        if ticket.hold_read_buffer(total_len as u64) {
            self.bytes.resize(total_len, 0);
        } else {
            output.extend_from_slice(&framing.refused(self.unread()));
            self.skip = total_len - self.filled;
            self.filled = 0;
        }
    }
}

/// A frame in flight: its answer, once the shards have answered durably.
type InFlight = Pin<Box<dyn Future<Output = Vec<u8>>>>;

/// A connection's frames in flight (each with its event count) and their events in total.
#[derive(Default)]
struct Outstanding {
    frames: Vec<(InFlight, u32)>,
    events: u32,
}

impl Outstanding {
    /// Appends every answer that is ready to `output`; whether any was.
    fn poll_answers(&mut self, cx: &mut std::task::Context<'_>, output: &mut Vec<u8>) -> bool {
        let mut progress = false;
        let mut index = 0;
        while index < self.frames.len() {
            if let Poll::Ready(frame) = self.frames[index].0.as_mut().poll(cx) {
                self.events -= self.frames[index].1;
                drop(self.frames.swap_remove(index));
                output.extend_from_slice(&frame);
                progress = true;
            } else {
                index += 1;
            }
        }
        progress
    }
}

/// Handles every whole message now in `input`: answered at once into `output`, or in flight.
/// Returns whether any message was taken, and whether the byte stream broke its framing (it
/// was answered; the connection reads no more).
#[expect(clippy::too_many_arguments, reason = "the poll loop's state, borrowed apart")]
fn take_frames(
    framing: &mut impl Framing,
    context: &Arc<Context>,
    grants: &Arc<Grants>,
    input: &mut Received,
    now_ms: u64,
    in_flight: &mut Outstanding,
    output: &mut Vec<u8>,
    pushes: &mpsc::Sender<Vec<u8>>,
) -> (bool, bool) {
    let limits = &context.limits;
    let mut decoded_any = false;
    loop {
        let arrival = Arrival {
            connection: native::Connection { grants, pushes },
            now_ms,
            frames_full: in_flight.frames.len() >= limits.in_flight_per_connection_max as usize,
            events_budget: limits
                .in_flight_events_per_connection_max
                .saturating_sub(in_flight.events),
        };
        match framing.take(context, &arrival, input.unread()) {
            Taken::Message(len, handled) => {
                match handled {
                    Handled::Now(answer) => output.extend_from_slice(&answer),
                    Handled::Later(future, events) => {
                        in_flight.events += events;
                        in_flight.frames.push((future, events));
                    }
                }
                input.consumed(len);
                decoded_any = true;
            }
            Taken::Incomplete => return (decoded_any, false),
            Taken::Broken(answer) => {
                output.extend_from_slice(&answer);
                return (decoded_any, true);
            }
        }
    }
}

/// Serves one admitted connection until the peer closes it, a framing error, a timeout, or a
/// write failure. Frames already submitted are still answered before the socket closes (their
/// effects are durable whatever happens to the connection).
pub(crate) async fn serve<T: Transport, F: Framing>(
    mut transport: T,
    context: Arc<Context>,
    mut ticket: Ticket,
    watch: Rc<Watch>,
    grants: Arc<Grants>,
    mut framing: F,
) {
    let limits = &context.limits;
    let (pushes, mut pushed) = mpsc::channel::<Vec<u8>>(PUSH_QUEUE_FRAMES);
    let mut input = Received::new();
    let mut output: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut written = 0usize;
    let mut in_flight = Outstanding::default();
    // No more input: the peer closed, a framing error, a timeout, or a failed write.
    let mut input_done = false;
    let mut broken = false;
    std::future::poll_fn(|cx| {
        loop {
            let mut progress = false;
            if let Some(why) = watch.timed_out.get() {
                input_done = true;
                // Answers nobody reads are dropped; the operations behind them are durable.
                if why == WRITE_STALLED {
                    broken = true;
                }
            }
            // Answers of frames in flight, in whatever order their shards finish.
            progress |= in_flight.poll_answers(cx, &mut output);
            // Pushes wait in their bounded queue while the client is not reading.
            while output.len() - written < limits.connection_output_bytes_max as usize {
                let Poll::Ready(Some(frame)) = pushed.poll_recv(cx) else { break };
                output.extend_from_slice(&framing.push(frame));
            }
            // Output: write what is ready; a stall starts the write timeout.
            while written < output.len() && !broken {
                match transport.poll_write(cx, &output[written..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        broken = true;
                        input_done = true;
                    }
                    Poll::Ready(Ok(n)) => {
                        written += n;
                        watch.output_stalled_ms.set(0);
                        progress = true;
                    }
                    Poll::Pending => {
                        if watch.output_stalled_ms.get() == 0 {
                            watch.output_stalled_ms.set(wall_clock_ms());
                        }
                        break;
                    }
                }
            }
            if written == output.len() || broken {
                output.clear();
                written = 0;
                watch.output_stalled_ms.set(0);
                if output.capacity() > OUTPUT_KEEP_BYTES {
                    output.shrink_to(16 * 1024);
                }
            }
            if input_done && (in_flight.frames.is_empty() || broken) && output.is_empty() {
                return Poll::Ready(());
            }
            watch.busy.set(!in_flight.frames.is_empty());
            // Input, unless the peer is not reading its answers.
            let unread_bytes = output.len() - written;
            if !input_done && unread_bytes < limits.connection_output_bytes_max as usize {
                match transport.poll_read(cx, input.room(&mut ticket)) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        input_done = true;
                        progress = true;
                    }
                    Poll::Ready(Ok(n)) => {
                        progress = true;
                        let now_ms = wall_clock_ms();
                        watch.last_input_ms.set(now_ms);
                        input.took(n);
                        let (decoded_any, framing_broken) = take_frames(
                            &mut framing,
                            &context,
                            &grants,
                            &mut input,
                            now_ms,
                            &mut in_flight,
                            &mut output,
                            &pushes,
                        );
                        input_done |= framing_broken;
                        if !input_done {
                            input.settle(
                                &framing,
                                &mut ticket,
                                &watch,
                                now_ms,
                                decoded_any,
                                &mut output,
                            );
                        }
                    }
                    Poll::Pending => {}
                }
            }
            if !progress {
                watch.park(cx);
                return Poll::Pending;
            }
        }
    })
    .await;
    if !broken {
        let _ = std::future::poll_fn(|cx| transport.poll_close(cx)).await;
    }
    drop(ticket);
}

/// Answers a refused connection (RETRY_LATER past a limit, NOT_PERMITTED for plain TCP where it
/// is not served) so that the answer reaches the client: the frame is
/// written, the write side shut, and what the client already sent is read and dropped (closing
/// with unread input would send a reset, and a reset makes the client's kernel throw away the
/// unread refusal). Bounded: at most `REFUSAL_DRAIN_BYTES` are read.
pub(crate) async fn refuse<T: Transport>(transport: T, code: pinswitch_protocol::ResultCode) {
    refuse_with(transport, refusal_frame(code)).await;
}

/// The native frame that refuses a whole connection.
fn refusal_frame(code: pinswitch_protocol::ResultCode) -> Vec<u8> {
    native::error_frame(pinswitch_protocol::MsgType::Ping as u16, 0, code)
}

/// `refuse` with the refusal's bytes (a front end's own, or none: then it only closes).
pub(crate) async fn refuse_with<T: Transport>(mut transport: T, refusal: Vec<u8>) {
    const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;
    let mut written = 0usize;
    let mut closed = false;
    let mut drained = 0usize;
    let mut scratch = [0u8; 4096];
    std::future::poll_fn(|cx| {
        while written < refusal.len() {
            match transport.poll_write(cx, &refusal[written..]) {
                Poll::Ready(Ok(n)) if n > 0 => written += n,
                Poll::Pending => return Poll::Pending,
                _ => return Poll::Ready(()),
            }
        }
        if !closed {
            match transport.poll_close(cx) {
                Poll::Ready(_) => closed = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        while drained < REFUSAL_DRAIN_BYTES {
            match transport.poll_read(cx, &mut scratch) {
                Poll::Ready(Ok(n)) if n > 0 => drained += n,
                Poll::Pending => return Poll::Pending,
                _ => return Poll::Ready(()),
            }
        }
        Poll::Ready(())
    })
    .await;
}
