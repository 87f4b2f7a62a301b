//! The QUIC front end: the native protocol's frames on QUIC streams (RFC 9000), TLS 1.3 through
//! the same `[tls]` certificates, client authority and identities as TLS on TCP, offered with
//! the ALPN `pinswitch/1`. Every bidirectional stream a client opens is served exactly as a TCP
//! connection is (`conn::serve`: framing, limits, timeouts, pushes, grants), so QUIC holds no
//! rule of its own; what it adds is streams that do not block one another and a connection
//! that survives a change of client address (quinn's migration: the connection id, not the
//! address, names the connection, and the identity stays the certificate's). 0-RTT is
//! refused. One thread runs quinn's endpoint on a tokio current-thread runtime; its streams
//! submit to the shards through the same thread-safe queues that cross-shard events use.
//!
//! Limits: an address must answer a Retry before anything is held for it; then a QUIC
//! connection holds one place of `connections_max` and of `connections_per_address_max` from
//! its handshake on (a refused one is refused in the handshake, CONNECTION_REFUSED), and every
//! open stream holds one more (a refused stream is answered RETRY_LATER and finished);
//! `quic_streams_per_connection_max` is the stream credit QUIC itself gives each connection, so
//! a client past it waits instead of being queued; the handshake must finish within
//! `frame_read_timeout_ms`, and a connection silent for `idle_timeout_ms` is closed by QUIC's
//! idle timeout.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context as _, bail};
use pinswitch_protocol::ResultCode;
use pinswitch_protocol::tls::QUIC_ALPN;
use rustls::pki_types::CertificateDer;

use crate::conn::{self, Reaper, Ticket, Transport};
use crate::native::Context;
use crate::shard_loop::wall_clock_ms;

/// How often the QUIC thread's reaper looks for idle, slow and stalled streams (as a shard's).
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The shard a QUIC place is counted on: none. The QUIC thread serves its streams itself, so
/// they must not make a shard look busier to the TCP hand-off (`Admission::per_shard` skips an
/// id past the shards).
const NO_SHARD: usize = usize::MAX;
/// How long a refused stream may take to receive its RETRY_LATER.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// One bidirectional stream as a `conn::Transport`: reads from its receive half, writes to its
/// send half; closing finishes the send half (the peer reads end of stream).
pub(crate) struct QuicStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Transport for QuicStream {
    fn poll_read(&mut self, cx: &mut TaskContext<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut read = tokio::io::ReadBuf::new(buf);
        match tokio::io::AsyncRead::poll_read(Pin::new(&mut self.recv), cx, &mut read) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(read.filled().len())),
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => Poll::Pending,
        }
    }
    fn poll_write(&mut self, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.send), cx, buf)
    }
    fn poll_close(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.send), cx)
    }
}

/// Starts the QUIC thread listening on `listen` (UDP); returns the address it bound, or why it
/// could not.
pub(crate) fn start(listen: &str, context: &Arc<Context>) -> anyhow::Result<SocketAddr> {
    let server = server_config(context)?;
    let address = listen
        .to_socket_addrs()
        .with_context(|| format!("server.quic_listen {listen}"))?
        .next()
        .with_context(|| format!("server.quic_listen {listen} resolves to nothing"))?;
    let (report, reported) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
    let context = context.clone();
    std::thread::Builder::new()
        .name("quic".into())
        .spawn(move || serve_endpoint(server, address, context, report))
        .context("spawning the QUIC thread")?;
    match reported.recv() {
        Ok(Ok(bound)) => Ok(bound),
        Ok(Err(why)) => bail!("QUIC on {listen}: {why}"),
        Err(_) => bail!("the QUIC thread stopped while starting"),
    }
}

/// quinn's server configuration: the `[tls]` rustls configuration with the ALPN, and the
/// transport limits from `[limits]`.
fn server_config(context: &Context) -> anyhow::Result<quinn::ServerConfig> {
    let Some(tls) = context.trust.tls.as_ref() else {
        bail!("server.quic_listen needs [tls] cert_pem and key_pem: QUIC is always TLS 1.3")
    };
    let mut crypto = (**tls).clone();
    crypto.alpn_protocols = vec![QUIC_ALPN.to_vec()];
    // No 0-RTT: early data can be replayed by anyone who captured it, and quinn does not say
    // which bytes of a stream came early, so no frame could be told safe to run. Tickets thus
    // allow no early data and every connection waits its one round trip.
    crypto.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
        .context("the [tls] configuration for QUIC")?;
    let limits = &context.limits;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(limits.quic_streams_per_connection_max.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_millis(limits.idle_timeout_ms))
                .context("limits.idle_timeout_ms is too long for QUIC")?,
        ));
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport));
    server.max_incoming(limits.connections_max as usize);
    Ok(server)
}

/// The QUIC thread: binds the endpoint, reports, then accepts until the process ends.
fn serve_endpoint(
    server: quinn::ServerConfig,
    address: SocketAddr,
    context: Arc<Context>,
    report: std::sync::mpsc::Sender<Result<SocketAddr, String>>,
) {
    let Some(runtime) = crate::adapter_listener::thread_runtime(&report) else { return };
    tokio::task::LocalSet::new().block_on(&runtime, async move {
        let bound = quinn::Endpoint::server(server, address).and_then(|endpoint| {
            let local = endpoint.local_addr()?;
            Ok((endpoint, local))
        });
        let endpoint = match bound {
            Ok((endpoint, local)) => {
                let _ = report.send(Ok(local));
                endpoint
            }
            Err(error) => {
                let _ = report.send(Err(error.to_string()));
                return;
            }
        };
        let reaper = Rc::new(Reaper::default());
        tokio::task::spawn_local(sweep(reaper.clone(), context.clone()));
        while let Some(incoming) = endpoint.accept().await {
            // A first Initial from an address not yet proven gets a Retry (one round trip), so
            // a place is only ever taken for an address that answers: spoofed UDP sources
            // cannot fill `connections_max` or another host's `connections_per_address_max`.
            if !incoming.remote_address_validated() {
                if incoming.may_retry() {
                    let _ = incoming.retry();
                } else {
                    incoming.refuse();
                }
                continue;
            }
            let peer = incoming.remote_address().ip();
            match context.admission.admit(peer, NO_SHARD) {
                Ok(ticket) => {
                    tokio::task::spawn_local(serve_connection(
                        incoming,
                        context.clone(),
                        reaper.clone(),
                        ticket,
                    ));
                }
                Err(_) => incoming.refuse(),
            }
        }
    });
}

/// Every `SWEEP_EVERY`: times out the streams past a limit, as a shard's ticker does.
async fn sweep(reaper: Rc<Reaper>, context: Arc<Context>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        reaper.sweep(&context.limits, wall_clock_ms());
    }
}

/// One QUIC connection: the handshake (bounded), the identity its certificate names, then each
/// stream it opens served as a connection with that identity's grants. `ticket` is the
/// connection's own place; it goes when the connection does.
async fn serve_connection(
    incoming: quinn::Incoming,
    context: Arc<Context>,
    reaper: Rc<Reaper>,
    ticket: Ticket,
) {
    let handshake_timeout = Duration::from_millis(context.limits.frame_read_timeout_ms);
    let Ok(Ok(connection)) = tokio::time::timeout(handshake_timeout, incoming).await else {
        return;
    };
    let grants = context.trust.tls_client(peer_name(&connection).as_deref());
    let peer = connection.remote_address().ip();
    while let Ok((send, recv)) = connection.accept_bi().await {
        let stream = QuicStream { send, recv };
        match context.admission.admit(peer, NO_SHARD) {
            Ok(stream_ticket) => {
                tokio::task::spawn_local(conn::serve(
                    stream,
                    context.clone(),
                    stream_ticket,
                    reaper.watch(),
                    grants.clone(),
                    conn::NativeFraming,
                ));
            }
            Err(_) => {
                tokio::task::spawn_local(async move {
                    let refusal = conn::refuse(stream, ResultCode::RetryLater);
                    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refusal).await;
                });
            }
        }
    }
    drop(ticket);
}

/// The first DNS name of the client's verified certificate (mutual TLS), if it sent one.
fn peer_name(connection: &quinn::Connection) -> Option<String> {
    let certs = connection.peer_identity()?.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    crate::tls::certificate_name(certs.first()?)
}
