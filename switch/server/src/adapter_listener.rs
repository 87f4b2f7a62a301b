//! The listener of a front end that adapts another protocol to the native one (ISO 8583,
//! Diameter): one thread running a tokio current-thread runtime, as QUIC's does, that accepts
//! on its own TCP address, admits each connection against the shared limits (its place counted
//! on no shard), and serves it with `conn::accepted` (TLS or plain by the first byte, then the
//! front end's `Framing`); a reaper times out its idle, slow and stalled connections as a
//! shard's does. Its connections submit to the shards through the thread-safe queues that
//! cross-shard events use. Also the one way such a front end hands a native event to the
//! native path (`handle_event`).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use pinswitch_protocol::{FrameHeader, MsgType};

use crate::conn::{self, Arrival, Framing, Reaper};
use crate::native::{self, Context, Handled};
use crate::shard_loop::wall_clock_ms;

/// The shard an adapter connection's place is counted on: none (`Admission::per_shard`
/// skips an id past the shards), so it does not skew the TCP hand-off.
const NO_SHARD: usize = usize::MAX;
/// How often the thread's reaper looks at its connections.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The pause after a failed `accept()` (EMFILE and the like): the listener stays.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Starts thread `name` listening on `listen`; `framings` runs on the thread once and gives
/// the maker of each connection's framing. Returns the address bound, or why not.
pub(crate) fn start<F, M>(
    name: &'static str,
    listen: &str,
    context: &Arc<Context>,
    framings: M,
) -> anyhow::Result<SocketAddr>
where
    F: Framing + 'static,
    M: FnOnce() -> Box<dyn Fn() -> F> + Send + 'static,
{
    let (report, reported) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
    let context = context.clone();
    let address = listen.to_string();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || serve(&address, context, framings, &report))
        .with_context(|| format!("spawning the {name} thread"))?;
    match reported.recv() {
        Ok(Ok(bound)) => Ok(bound),
        Ok(Err(why)) => bail!("{name} on {listen}: {why}"),
        Err(_) => bail!("the {name} thread stopped while starting"),
    }
}

/// The thread: binds, reports, then accepts until the process ends. A connection past a
/// limit is closed at once (these protocols have no message for it).
fn serve<F, M>(
    address: &str,
    context: Arc<Context>,
    framings: M,
    report: &std::sync::mpsc::Sender<Result<SocketAddr, String>>,
) where
    F: Framing + 'static,
    M: FnOnce() -> Box<dyn Fn() -> F>,
{
    let Some(runtime) = thread_runtime(report) else { return };
    tokio::task::LocalSet::new().block_on(&runtime, async move {
        let bound = match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => listener.local_addr().map(|local| (listener, local)),
            Err(error) => Err(error),
        };
        let listener = match bound {
            Ok((listener, local)) => {
                let _ = report.send(Ok(local));
                listener
            }
            Err(error) => {
                let _ = report.send(Err(error.to_string()));
                return;
            }
        };
        let framing = framings();
        let reaper = Rc::new(Reaper::default());
        let sweeping = (reaper.clone(), context.clone());
        tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                sweeping.0.sweep(&sweeping.1.limits, wall_clock_ms());
            }
        });
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    eprintln!("pinswitch: {address}: accept failed ({error}); retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let Ok(ticket) = context.admission.admit(peer.ip(), NO_SHARD) else { continue };
            let _ = stream.set_nodelay(true);
            tokio::task::spawn_local(conn::accepted(
                stream,
                context.clone(),
                ticket,
                reaper.watch(),
                framing(),
            ));
        }
    });
}

/// The current-thread runtime a front end's own thread runs (QUIC's too), or `None` once the
/// failure is reported to the thread that waits for the bound address.
pub(crate) fn thread_runtime(
    report: &std::sync::mpsc::Sender<Result<SocketAddr, String>>,
) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            let _ = report.send(Err(format!("building its runtime: {error}")));
            None
        }
    }
}

/// Hands one native event (`msg_type`, its body) of an adapter's connection to the native
/// path, exactly as a native frame of it would go, and turns the native response frame into
/// the adapter's answer with `answer`.
pub(crate) fn handle_event(
    context: &Arc<Context>,
    arrival: &Arrival<'_>,
    msg_type: MsgType,
    body: &[u8],
    answer: impl FnOnce(&[u8]) -> Vec<u8> + 'static,
) -> Handled {
    let header = FrameHeader::request(msg_type, 0, 0);
    let handled = native::handle_frame(
        context,
        &arrival.connection,
        &header,
        body,
        arrival.now_ms,
        arrival.frames_full,
        arrival.events_budget,
    );
    match handled {
        Handled::Now(frame) => Handled::Now(answer(&frame)),
        Handled::Later(frame, events) => {
            Handled::Later(Box::pin(async move { answer(&frame.await) }), events)
        }
    }
}
