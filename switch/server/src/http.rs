//! The operators' HTTP port (`[server] http_listen`, off by default): `/metrics` in the
//! Prometheus text format, `/health/live` (the process answers) and `/health/ready` (recovered,
//! serving, and no shard refusing writes for a full disk: 503 otherwise). GET only, one request
//! per connection, on its own thread, so a scrape never runs on a shard's core. Outside bytes
//! are bounded (`HTTP_REQUEST_BYTES_MAX`, `HTTP_REQUEST_TIMEOUT_MS`, `HTTP_CONNECTIONS_MAX`)
//! and never panic it; a bad request gets 400 and the connection is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::metrics::Metrics;
use crate::native::Context;

/// The longest request head read (request line and headers); longer: 400.
pub(crate) const HTTP_REQUEST_BYTES_MAX: usize = 8 << 10;
/// A request must be whole, and its answer taken, within this.
pub(crate) const HTTP_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Connections served at once; more are closed at accept.
pub(crate) const HTTP_CONNECTIONS_MAX: u32 = 32;
/// After a failed accept (EMFILE, say) the listener waits this long before the next.
const ACCEPT_BACKOFF_MS: u64 = 100;

/// Binds `address` and serves it on a thread of its own; returns the bound address.
pub(crate) fn start(
    address: &str,
    context: Arc<Context>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("binding the HTTP port {address}"))?;
    listener.set_nonblocking(true).context("making the HTTP listener non-blocking")?;
    let bound = listener.local_addr().context("reading the HTTP address")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the HTTP runtime")?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, context, metrics).await,
                    Err(error) => eprintln!("pinswitch: the HTTP port stopped: {error}"),
                }
            });
        })
        .context("spawning the HTTP thread")?;
    Ok(bound)
}

async fn serve(listener: tokio::net::TcpListener, context: Arc<Context>, metrics: Arc<Metrics>) {
    let open = Arc::new(AtomicU32::new(0));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                eprintln!("pinswitch: HTTP accept failed ({error}); retrying");
                tokio::time::sleep(Duration::from_millis(ACCEPT_BACKOFF_MS)).await;
                continue;
            }
        };
        if open.load(Ordering::Acquire) >= HTTP_CONNECTIONS_MAX {
            continue;
        }
        open.fetch_add(1, Ordering::AcqRel);
        let (open, context, metrics) = (open.clone(), context.clone(), metrics.clone());
        tokio::spawn(async move {
            let timeout = Duration::from_millis(HTTP_REQUEST_TIMEOUT_MS);
            let _ = tokio::time::timeout(timeout, answer(stream, &context, &metrics)).await;
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Reads one request head and writes its answer.
async fn answer(mut stream: tokio::net::TcpStream, context: &Context, metrics: &Metrics) {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        if head.len() > HTTP_REQUEST_BYTES_MAX {
            let _ = respond(&mut stream, 400, "text/plain", "request head too long\n").await;
            return;
        }
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
    }
    let line = head.split(|byte| *byte == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|byte| *byte == b' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let (status, kind, body) = route(method, path, context, metrics);
    let _ = respond(&mut stream, status, kind, &body).await;
}

/// The answer to `method path`: status, content type and body.
fn route(
    method: &[u8],
    path: &[u8],
    context: &Context,
    metrics: &Metrics,
) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != b"GET" {
        return (405, TEXT, "only GET is served\n".into());
    }
    match path {
        b"/metrics" => {
            let connections = context.admission.open_per_shard();
            let now_ms = crate::shard_loop::wall_clock_ms();
            (200, "text/plain; version=0.0.4; charset=utf-8", metrics.render(&connections, now_ms))
        }
        b"/health/live" => (200, TEXT, "live\n".into()),
        b"/health/ready" => {
            let full = metrics.full_shards();
            if full.is_empty() {
                (200, TEXT, "ready\n".into())
            } else {
                (503, TEXT, format!("not ready: storage full on shards {full:?}\n"))
            }
        }
        _ => (404, TEXT, "not found: /metrics, /health/live, /health/ready\n".into()),
    }
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: u16,
    kind: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
