//! The runtime seam: the only module that decides how threads and async runtimes are laid out.
//! Every shard is one OS thread running one single-threaded executor, glommio (io_uring) by
//! default or a tokio current-thread runtime (epoll) with `[server] runtime = "tokio"`, and that
//! thread does all of its shard's work: it accepts connections on its own SO_REUSEPORT listener
//! (the kernel spreads new connections over the shards), reads and decodes their frames, runs
//! the shard's group-commit driver, and writes the answers. A frame's events for this shard's
//! cards are queued to the driver on the same thread (no system call, no cross-thread wake);
//! events for other shards go to their queues, and their answers come back, through the
//! runtime-neutral channels of `shard_loop` (a cross-thread wake costs one eventfd write, and only
//! when the other thread sleeps). The main thread keeps a small tokio runtime for signals
//! (SIGINT, SIGTERM, SIGHUP reload). The engine, the shard driver and the connection code are
//! the same on both runtimes; only the listener, the spawn and the timer differ, here.

use std::future::Future;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use anyhow::{Context as _, bail};
use pinswitch_journal::JournalOptions;
use pinswitch_protocol::{HelloReply, VERSION};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::conn::{self, Admission, Reaper, Refusal};
use crate::keys::Keys;
use crate::native::Context;
use crate::push::SessionDirectory;
use crate::shard_loop::{self, ShardDriver, ShardHandle, ShardSettings, shard_dir, wall_clock_ms};

/// Set (to anything) to keep the switch from re-executing itself with huge-page malloc.
const NO_HUGE_PAGES_ENV: &str = "PINSWITCH_NO_HUGE_PAGES";
/// The glibc tunable that makes malloc ask for transparent huge pages on its large arenas.
const HUGE_PAGES_TUNABLE: &str = "glibc.malloc.hugetlb=1";

/// Re-executes the process once with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`. The shard tables
/// (cards, op-id records) are gigabytes of randomly probed memory; on 4 KiB pages nearly every
/// probe is also a TLB miss. Measured with the engine bench (SALE over 1,000,000 cards): 485 k/s
/// without, 977 k/s with, on hash maps; 1.07 M/s without, 1.64 M/s with, on `DenseMap`s. Done by exec because the tunable is read once at process start, and
/// that keeps `unsafe` out of this crate. Returns only if it did not (or need not) re-execute.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn use_huge_pages() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(NO_HUGE_PAGES_ENV).is_some() {
        return;
    }
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if current.contains("glibc.malloc.hugetlb") {
        return;
    }
    let tunables = if current.is_empty() {
        HUGE_PAGES_TUNABLE.to_string()
    } else {
        format!("{current}:{HUGE_PAGES_TUNABLE}")
    };
    let Ok(binary) = std::env::current_exe() else { return };
    let error = std::process::Command::new(binary)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", tunables)
        .exec();
    // exec returns only on failure: go on with ordinary pages.
    eprintln!("pinswitch: running without huge pages ({error})");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn use_huge_pages() {
    let _ = (NO_HUGE_PAGES_ENV, HUGE_PAGES_TUNABLE);
}

/// Records the shard count a data directory was created with; routing depends on it.
const LAYOUT_FILE: &str = "shards.count";
/// How often a shard looks for due hold and session expiries when no batch comes.
const TICK: Duration = Duration::from_millis(100);
/// How often (in ticks) a shard's reaper looks for idle and stalled connections.
const REAPER_TICKS: u32 = 10;
/// Backoff after a failed `accept()` (EMFILE, ENFILE, ENOMEM): the listener stays, the
/// process stays, and the condition is logged once per `ACCEPT_ERROR_LOG_MS`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const ACCEPT_ERROR_LOG_MS: u64 = 10_000;
/// Refusals (RETRY_LATER, then drain and close) one shard carries at once, and how long each
/// may take; past the count a refused socket is closed at once.
const REFUSALS_IN_PROGRESS_MAX: u32 = 64;
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Memory glommio keeps for io_uring registered buffers per shard. The switch reads sockets
/// into its own buffers and writes its journal through mmap, so it needs little; a small
/// figure keeps the locked-memory need low (glommio refuses to start under 512 KiB).
const GLOMMIO_IO_MEMORY_BYTES: usize = 1 << 20;

/// Which executor runs the shard threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Executor {
    Glommio,
    Tokio,
}

/// Recovers every shard, then serves until SIGINT or SIGTERM.
pub(crate) fn run(config: Config) -> anyhow::Result<()> {
    let data_dir = config.server.data_dir.clone();
    // Journals, snapshots and the key file are the switch's alone.
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&data_dir)
            .and_then(|()| {
                std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
            })
            .with_context(|| format!("creating {}", data_dir.display()))?;
    }
    let shard_count = config.shard_count();
    // A data directory without its layout file has never been started: only then may the keys
    // be made (new keys beside existing journals would name none of their cards). The keys come
    // first, so a start that fails to make them leaves the directory still fresh.
    let fresh = !data_dir.join(LAYOUT_FILE).exists();
    let key_file = crate::keys::key_file_path(&data_dir, &config.server.keys_file);
    let keys = crate::keys::load_or_create(&key_file, fresh)?;
    check_layout(&data_dir, shard_count)?;
    let key_ids = keys.pin_keys().key_ids();
    let older = match key_ids.len() {
        1 => String::new(),
        count => format!("; {} older PIN keys still find their cards", count - 1),
    };
    println!("pinswitch: keys {} (key id {}{older})", key_file.display(), keys.key_id());
    let executor = match config.server.runtime.as_str() {
        "tokio" => Executor::Tokio,
        _ => Executor::Glommio,
    };
    let engine = config.engine();
    let directory = Arc::new(SessionDirectory::new(config.sessions.notices));
    let metrics = Arc::new(crate::metrics::Metrics::new(shard_count, shard_loop::wall_clock_ms()));
    let settings = shard_settings(&config, &data_dir, shard_count, &keys, &directory, &metrics);
    let (shards, drivers) = recover_shards(settings)?;
    let context = Arc::new(Context {
        shards,
        shard_count,
        keys: Keys::new(keys, shard_count),
        limits: config.limits.clone(),
        sessions: config.sessions.clone(),
        directory,
        admission: Arc::new(Admission::new(config.limits.clone(), shard_count)),
        hello: std::sync::RwLock::new(hello_reply(&config, &engine, shard_count)),
        trust: crate::access::Trust::new(&config.tls, &config.access)?,
    });
    let address = start_shards(&config, executor, &context, drivers)?;
    if !config.server.http_listen.is_empty() {
        let http = crate::http::start(&config.server.http_listen, context.clone(), metrics)?;
        println!("pinswitch: HTTP on {http} (/metrics, /health/live, /health/ready)");
    }
    if !config.server.quic_listen.is_empty() {
        let quic = crate::quic::start(&config.server.quic_listen, &context)?;
        println!("pinswitch: QUIC on {quic} (UDP)");
    }
    if !config.iso8583.listen.is_empty() {
        let iso = crate::iso8583::start(&config.iso8583, &context)?;
        println!("pinswitch: ISO 8583 on {iso}");
    }
    if !config.diameter.listen.is_empty() {
        let diameter = crate::diameter::start(&config.diameter, &context)?;
        println!("pinswitch: Diameter on {diameter}");
    }
    let runtime_name = match executor {
        Executor::Glommio => "glommio",
        Executor::Tokio => "tokio",
    };
    let data = data_dir.display();
    println!(
        "pinswitch: listening on {address} ({shard_count} shards on {runtime_name}, data in {data})"
    );
    std::io::stdout().flush().context("writing to stdout")?;
    serve_signals(context, config.source.clone(), engine)?;
    // Every acknowledged operation is durable already; the shard threads end with the process.
    println!("pinswitch: stopped");
    Ok(())
}

/// What each shard thread needs, from the configuration.
fn shard_settings(
    config: &Config,
    data_dir: &std::path::Path,
    shard_count: u16,
    keys: &pinswitch_core::Keys,
    directory: &Arc<SessionDirectory>,
    metrics: &crate::metrics::Metrics,
) -> Vec<ShardSettings> {
    let engine = config.engine();
    (0..shard_count)
        .map(|shard_id| ShardSettings {
            shard_id,
            shard_count,
            dir: shard_dir(data_dir, shard_id),
            engine: engine.clone(),
            hash_key: keys.table_key(),
            approval_key: keys.approval_key(),
            journal: JournalOptions {
                segment_bytes: config.journal.segment_bytes,
                commit_bytes_max: config.journal.commit_bytes_max,
            },
            queue_max: config.limits.shard_queue_max as usize,
            commit_events_max: config.limits.commit_events_max as usize,
            snapshot_every_records: config.journal.snapshot_every_records,
            snapshot_retry_ms: config.journal.snapshot_retry_ms,
            storage_retry_ms: config.journal.storage_retry_ms,
            directory: directory.clone(),
            metrics: metrics.shards[usize::from(shard_id)].clone(),
            clock_step_max_ms: config.server.clock_step_max_ms,
            clock_step_confirm_ms: config.server.clock_step_confirm_ms,
            retention: config.retention(),
        })
        .collect()
}

/// Recovers every shard, in parallel (each replays its own journal), and logs what each found.
fn recover_shards(
    settings: Vec<ShardSettings>,
) -> anyhow::Result<(Vec<ShardHandle>, Vec<shard_loop::ShardDriver>)> {
    let recovered: Vec<anyhow::Result<_>> = std::thread::scope(|scope| {
        let workers: Vec<_> = settings
            .into_iter()
            .map(|settings| {
                let shard_id = settings.shard_id;
                scope.spawn(move || {
                    shard_loop::start(settings)
                        .with_context(|| format!("starting shard {shard_id}"))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a recovery thread panicked")))
            })
            .collect()
    });
    let mut shards = Vec::with_capacity(recovered.len());
    let mut drivers = Vec::with_capacity(recovered.len());
    for (shard_id, result) in recovered.into_iter().enumerate() {
        let (handle, report, driver) = result?;
        println!(
            "pinswitch: shard {shard_id} recovered: snapshot at record {}, {} records replayed, {} cards (journal scan {} ms, snapshot decode {} ms, replay {} ms)",
            report.snapshot_seq,
            report.replayed_records,
            report.cards,
            report.scan_ms,
            report.decode_ms,
            report.replay_ms
        );
        shards.push(handle);
        drivers.push(driver);
    }
    Ok((shards, drivers))
}

/// The HELLO answer: the limits a client must respect.
fn hello_reply(
    config: &Config,
    engine: &pinswitch_core::EngineConfig,
    shard_count: u16,
) -> HelloReply {
    HelloReply {
        server_name: format!("pinswitch {}", env!("CARGO_PKG_VERSION")),
        protocol_version: VERSION,
        shard_count,
        frame_bytes_max: config.limits.frame_bytes_max,
        batch_events_max: config.limits.batch_events_max,
        in_flight_per_connection_max: config.limits.in_flight_per_connection_max,
        hold_ttl_max_s: engine.hold_ttl_max_s,
        idempotency_window_s: engine.idempotency_window_ms / 1000,
        server_time_ms: 0,
    }
}

/// Starts one thread per shard, each on its executor with its driver, and waits until each
/// listens (or refuses to start). Shard 0 binds first (port 0 becomes a real port); with
/// SO_REUSEPORT the others bind the address it got, with hand-off they take the sockets shard 0
/// hands them. Returns the address served.
fn start_shards(
    config: &Config,
    executor: Executor,
    context: &Arc<Context>,
    drivers: Vec<shard_loop::ShardDriver>,
) -> anyhow::Result<SocketAddr> {
    let accept = match config.server.accept.as_str() {
        "reuseport" => Accept::ReusePort,
        _ => Accept::Handoff,
    };
    let shard_count = context.shard_count;
    let (handoff, incoming): (Vec<_>, Vec<_>) =
        (0..shard_count).map(|_| mpsc::channel::<Handed>(HANDOFF_QUEUE)).unzip();
    let mut address = config.server.listen.clone();
    let mut bound: Option<SocketAddr> = None;
    for ((shard_id, driver), incoming) in drivers.into_iter().enumerate().zip(incoming) {
        let (report, reported) = std::sync::mpsc::channel::<Result<Option<SocketAddr>, String>>();
        let shard = Shard {
            shard_id,
            driver,
            handle: context.shards[shard_id].clone(),
            context: context.clone(),
            address: address.clone(),
            listens: shard_id == 0 || accept == Accept::ReusePort,
            handoff: (shard_id == 0 && accept == Accept::Handoff).then(|| handoff.clone()),
            incoming,
            bound: report,
            sync: if config.journal.sync == "ring" {
                JournalSync::Ring
            } else {
                JournalSync::Thread
            },
        };
        std::thread::Builder::new()
            .name(format!("shard-{shard_id}"))
            .spawn(move || match executor {
                Executor::Glommio => shard.run_glommio(),
                Executor::Tokio => shard.run_tokio(),
            })
            .context("spawning a shard thread")?;
        match reported.recv() {
            Ok(Ok(Some(local))) => {
                bound.get_or_insert(local);
                address = local.to_string();
            }
            Ok(Ok(None)) => {}
            Ok(Err(why)) => bail!("{why}"),
            Err(_) => bail!("shard {shard_id} stopped while starting"),
        }
    }
    drop(handoff);
    bound.context("no shard")
}

/// Serves the signals on the main thread until SIGINT or SIGTERM: SIGHUP reloads the engine
/// rules from `source`.
fn serve_signals(
    context: Arc<Context>,
    source: Option<std::path::PathBuf>,
    engine: pinswitch_core::EngineConfig,
) -> anyhow::Result<()> {
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the signal runtime")?;
    signals.block_on(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("installing the SIGTERM handler")?;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        let reloads = async move {
            let mut engine = engine;
            while hangup.recv().await.is_some() {
                match reload(&context, source.as_deref(), &engine).await {
                    Ok(Some(reloaded)) => {
                        engine = reloaded;
                        println!(
                            "pinswitch: reloaded the engine rules on {} shards",
                            context.shard_count
                        );
                    }
                    Ok(None) => println!("pinswitch: reload: the engine rules are unchanged"),
                    Err(error) => println!("pinswitch: reload refused: {error:#}"),
                }
                let _ = std::io::stdout().flush();
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
            _ = reloads => {}
        }
        anyhow::Ok(())
    })
}

/// How connections reach the shard threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Accept {
    /// Shard 0 accepts every connection and hands it to the shard with the fewest (itself
    /// included), so connections spread evenly however few there are.
    Handoff,
    /// Every shard listens with SO_REUSEPORT and the kernel spreads connections by a hash of
    /// their addresses (two connections land on one shard half the time).
    ReusePort,
}

/// Accepted sockets waiting for their shard, per shard; a full queue refuses the connection.
const HANDOFF_QUEUE: usize = 256;

/// A socket accepted (and admitted) by shard 0 for another shard.
struct Handed {
    stream: HandedStream,
    ticket: conn::Ticket,
}

enum HandedStream {
    Glommio(glommio::net::AcceptedTcpStream),
    Tokio(std::net::TcpStream),
}

/// One shard thread's start: its recovered driver, its listen address, and where to report the
/// address it bound (or why it could not start).
struct Shard {
    shard_id: usize,
    driver: ShardDriver,
    handle: ShardHandle,
    context: Arc<Context>,
    address: String,
    /// This shard has a listener (shard 0 always; every shard with SO_REUSEPORT).
    listens: bool,
    /// With hand-off, on shard 0: the other shards' queues of accepted sockets.
    handoff: Option<Vec<mpsc::Sender<Handed>>>,
    /// Sockets shard 0 hands this shard.
    incoming: mpsc::Receiver<Handed>,
    bound: std::sync::mpsc::Sender<Result<Option<SocketAddr>, String>>,
    sync: JournalSync,
}

/// How a glommio shard makes its commits durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JournalSync {
    /// `fdatasync` as an io_uring op on the shard's own ring: no thread hand-off.
    Ring,
    /// `fdatasync` on the shard's sync thread (the only way on tokio).
    Thread,
}

/// The segment `ring_sync` keeps open (its path and file), `None` before the first commit.
type OpenSegment = Option<(std::path::PathBuf, Rc<glommio::io::BufferedFile>)>;

/// Commits synced through glommio's ring: the segment is opened once (read-only: `fdatasync`
/// flushes the file's pages whatever descriptor asks) and kept until the journal rolls.
fn ring_sync() -> shard_loop::RingSync {
    let open: Rc<std::cell::RefCell<OpenSegment>> = Rc::default();
    Box::new(move |request| {
        let open = open.clone();
        Box::pin(async move {
            let cached = open
                .borrow()
                .as_ref()
                .filter(|(path, _)| path == request.path())
                .map(|(_, file)| file.clone());
            let file = match cached {
                Some(file) => file,
                None => match glommio::io::BufferedFile::open(request.path()).await {
                    Ok(file) => {
                        let file = Rc::new(file);
                        *open.borrow_mut() = Some((request.path().to_path_buf(), file.clone()));
                        file
                    }
                    Err(error) => return (request, Err(std::io::Error::other(error.to_string()))),
                },
            };
            let synced =
                file.fdatasync().await.map_err(|error| std::io::Error::other(error.to_string()));
            (request, synced)
        })
    })
}

impl Shard {
    fn run_glommio(self) {
        let shard_id = self.shard_id;
        let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name(&format!("shard-{shard_id}"))
            .io_memory(GLOMMIO_IO_MEMORY_BYTES)
            .make();
        let executor = match executor {
            Ok(executor) => executor,
            Err(error) => {
                let _ = self.bound.send(Err(format!(
                    "shard {shard_id}: the glommio runtime cannot start here ({error}). It needs io_uring (Linux 5.8 or \
                     newer, /proc/sys/kernel/io_uring_disabled = 0, not blocked by a seccomp profile) and a locked-memory \
                     limit of at least 512 KiB (`ulimit -l`; LimitMEMLOCK= in a systemd unit; see ops/README.md). \
                     Raise the limit, or start with `--runtime tokio` ([server] runtime = \"tokio\")"
                )));
                return;
            }
        };
        executor.run(async move {
            let Shard {
                shard_id,
                driver,
                handle,
                context,
                address,
                listens,
                handoff,
                mut incoming,
                bound,
                sync,
            } = self;
            let reaper = Rc::new(Reaper::default());
            let ring = (sync == JournalSync::Ring).then(ring_sync);
            glommio::spawn_local(driver.run(ring)).detach();
            glommio::spawn_local(ticker(
                handle,
                reaper.clone(),
                context.clone(),
                glommio::timer::sleep,
            ))
            .detach();
            let serve_here = {
                let (context, reaper) = (context.clone(), reaper.clone());
                move |stream: glommio::net::TcpStream, ticket: conn::Ticket| {
                    let _ = stream.set_nodelay(true);
                    glommio::spawn_local(conn::accepted(
                        stream,
                        context.clone(),
                        ticket,
                        reaper.watch(),
                        conn::NativeFraming,
                    ))
                    .detach();
                }
            };
            let serve_handed = serve_here.clone();
            glommio::spawn_local(async move {
                while let Some(handed) = incoming.recv().await {
                    if let HandedStream::Glommio(accepted) = handed.stream {
                        serve_handed(accepted.bind_to_executor(), handed.ticket);
                    }
                }
            })
            .detach();
            if !listens {
                let _ = bound.send(Ok(None));
                return std::future::pending::<()>().await;
            }
            let listener = glommio::net::TcpListener::bind(address.as_str())
                .map_err(|error| error.to_string());
            let Some(listener) = announce(&bound, &address, listener, |listener| {
                listener.local_addr().map_err(|error| error.to_string())
            }) else {
                return;
            };
            let refusals = Rc::new(std::cell::Cell::new(0u32));
            let mut accept_errors = AcceptErrors::default();
            loop {
                let accepted = match listener.shared_accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        accept_errors.note(shard_id, &error.to_string());
                        glommio::timer::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let Ok(peer) = accepted.peer_addr() else { continue };
                match admit(shard_id, peer.ip(), &context, handoff.as_deref(), &mut accept_errors) {
                    Admitted::Here(ticket) => serve_here(accepted.bind_to_executor(), ticket),
                    Admitted::There(target, ticket) => hand_off(
                        handoff.as_deref(),
                        target,
                        HandedStream::Glommio(accepted),
                        ticket,
                    ),
                    Admitted::Refused => {
                        if let Some(guard) = RefusalGuard::take(&refusals) {
                            let stream = accepted.bind_to_executor();
                            glommio::spawn_local(async move {
                                refuse_within(
                                    conn::refuse(
                                        stream,
                                        pinswitch_protocol::ResultCode::RetryLater,
                                    ),
                                    glommio::timer::sleep(REFUSAL_TIMEOUT),
                                )
                                .await;
                                drop(guard);
                            })
                            .detach();
                        }
                    }
                }
            }
        });
    }

    fn run_tokio(self) {
        let shard_id = self.shard_id;
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                let _ = self
                    .bound
                    .send(Err(format!("shard {shard_id}: building its tokio runtime: {error}")));
                return;
            }
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            let Shard {
                shard_id,
                driver,
                handle,
                context,
                address,
                listens,
                handoff,
                mut incoming,
                bound,
                sync: _,
            } = self;
            let reaper = Rc::new(Reaper::default());
            tokio::task::spawn_local(driver.run(None));
            tokio::task::spawn_local(ticker(
                handle,
                reaper.clone(),
                context.clone(),
                tokio::time::sleep,
            ));
            let serve_here = {
                let (context, reaper) = (context.clone(), reaper.clone());
                move |stream: tokio::net::TcpStream, ticket: conn::Ticket| {
                    let _ = stream.set_nodelay(true);
                    tokio::task::spawn_local(conn::accepted(
                        stream,
                        context.clone(),
                        ticket,
                        reaper.watch(),
                        conn::NativeFraming,
                    ));
                }
            };
            let serve_handed = serve_here.clone();
            tokio::task::spawn_local(async move {
                while let Some(handed) = incoming.recv().await {
                    if let HandedStream::Tokio(stream) = handed.stream
                        && let Ok(stream) = tokio::net::TcpStream::from_std(stream)
                    {
                        serve_handed(stream, handed.ticket);
                    }
                }
            });
            if !listens {
                let _ = bound.send(Ok(None));
                return std::future::pending::<()>().await;
            }
            let listener = tokio_listener(&address).map_err(|error| format!("{error:#}"));
            let Some(listener) = announce(&bound, &address, listener, |listener| {
                listener.local_addr().map_err(|error| error.to_string())
            }) else {
                return;
            };
            let refusals = Rc::new(std::cell::Cell::new(0u32));
            let mut accept_errors = AcceptErrors::default();
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        accept_errors.note(shard_id, &error.to_string());
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                match admit(shard_id, peer.ip(), &context, handoff.as_deref(), &mut accept_errors) {
                    Admitted::Here(ticket) => serve_here(stream, ticket),
                    Admitted::There(target, ticket) => match stream.into_std() {
                        Ok(stream) => hand_off(
                            handoff.as_deref(),
                            target,
                            HandedStream::Tokio(stream),
                            ticket,
                        ),
                        Err(_) => drop(ticket),
                    },
                    Admitted::Refused => {
                        if let Some(guard) = RefusalGuard::take(&refusals) {
                            tokio::task::spawn_local(async move {
                                refuse_within(
                                    conn::refuse(
                                        stream,
                                        pinswitch_protocol::ResultCode::RetryLater,
                                    ),
                                    tokio::time::sleep(REFUSAL_TIMEOUT),
                                )
                                .await;
                                drop(guard);
                            });
                        }
                    }
                }
            }
        });
    }
}

/// Tells the starting thread the address this shard listens on, or why it cannot; returns the
/// listener to serve, or `None` to stop.
fn announce<L>(
    bound: &std::sync::mpsc::Sender<Result<Option<SocketAddr>, String>>,
    address: &str,
    listener: Result<L, String>,
    local_addr: impl FnOnce(&L) -> Result<SocketAddr, String>,
) -> Option<L> {
    let announced =
        listener.map_err(|why| format!("listening on {address}: {why}")).and_then(|listener| {
            match local_addr(&listener) {
                Ok(local) => Ok((listener, local)),
                Err(why) => Err(format!("reading the listen address: {why}")),
            }
        });
    match announced {
        Ok((listener, local)) => {
            let _ = bound.send(Ok(Some(local)));
            Some(listener)
        }
        Err(why) => {
            let _ = bound.send(Err(why));
            None
        }
    }
}

/// Where an accepted connection goes.
enum Admitted {
    Here(conn::Ticket),
    There(usize, conn::Ticket),
    Refused,
}

/// Admits a connection (or refuses it: the caller answers RETRY_LATER) and, with hand-off,
/// picks the shard with the fewest connections for it.
fn admit(
    shard_id: usize,
    peer: std::net::IpAddr,
    context: &Context,
    handoff: Option<&[mpsc::Sender<Handed>]>,
    accept_errors: &mut AcceptErrors,
) -> Admitted {
    let target = if handoff.is_some() { context.admission.least_loaded_shard() } else { shard_id };
    match context.admission.admit(peer, target) {
        Ok(ticket) if target == shard_id => Admitted::Here(ticket),
        Ok(ticket) => Admitted::There(target, ticket),
        Err(refusal) => {
            accept_errors.refused(shard_id, refusal);
            Admitted::Refused
        }
    }
}

/// Queues an admitted socket for its shard; a full queue (that shard is not taking sockets)
/// closes it, and the ticket gives its place back.
fn hand_off(
    handoff: Option<&[mpsc::Sender<Handed>]>,
    target: usize,
    stream: HandedStream,
    ticket: conn::Ticket,
) {
    if let Some(sender) = handoff.and_then(|senders| senders.get(target)) {
        let _ = sender.try_send(Handed { stream, ticket });
    }
}

/// A listener with SO_REUSEPORT, so every shard thread listens on the same address.
fn tokio_listener(address: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let address =
        address.to_socket_addrs()?.next().context("the listen address resolves to nothing")?;
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(address)?;
    Ok(socket.listen(1024)?)
}

/// Every `TICK`: nudges the driver to look for due expiries; every `REAPER_TICKS`: closes the
/// shard's idle and stalled connections.
async fn ticker<S: Future<Output = ()>>(
    handle: ShardHandle,
    reaper: Rc<Reaper>,
    context: Arc<Context>,
    sleep: impl Fn(Duration) -> S,
) {
    let mut ticks = 0u32;
    loop {
        sleep(TICK).await;
        handle.tick();
        ticks += 1;
        if ticks.is_multiple_of(REAPER_TICKS) {
            reaper.sweep(&context.limits, wall_clock_ms());
        }
    }
}

/// Runs a refusal, giving up when `timeout` fires first.
async fn refuse_within(refusal: impl Future<Output = ()>, timeout: impl Future<Output = ()>) {
    let mut refusal = pin!(refusal);
    let mut timeout = pin!(timeout);
    std::future::poll_fn(|cx| {
        if refusal.as_mut().poll(cx).is_ready() || timeout.as_mut().poll(cx).is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}

/// One of the shard's `REFUSALS_IN_PROGRESS_MAX` refusal places.
struct RefusalGuard(Rc<std::cell::Cell<u32>>);

impl RefusalGuard {
    fn take(count: &Rc<std::cell::Cell<u32>>) -> Option<RefusalGuard> {
        if count.get() >= REFUSALS_IN_PROGRESS_MAX {
            return None;
        }
        count.set(count.get() + 1);
        Some(RefusalGuard(count.clone()))
    }
}

impl Drop for RefusalGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Logs accept failures and refusals without flooding the log: once per
/// `ACCEPT_ERROR_LOG_MS`, with how many happened since.
#[derive(Default)]
struct AcceptErrors {
    logged_ms: u64,
    errors: u64,
    refusals: u64,
}

impl AcceptErrors {
    fn note(&mut self, shard_id: usize, error: &str) {
        self.errors += 1;
        let now_ms = wall_clock_ms();
        if now_ms.saturating_sub(self.logged_ms) >= ACCEPT_ERROR_LOG_MS {
            eprintln!(
                "pinswitch: shard {shard_id} accept failed {} times ({error}); retrying every {} ms",
                self.errors,
                ACCEPT_BACKOFF.as_millis()
            );
            self.logged_ms = now_ms;
            self.errors = 0;
        }
    }

    fn refused(&mut self, shard_id: usize, refusal: Refusal) {
        self.refusals += 1;
        let now_ms = wall_clock_ms();
        if now_ms.saturating_sub(self.logged_ms) >= ACCEPT_ERROR_LOG_MS {
            eprintln!(
                "pinswitch: shard {shard_id} refused {} connections (last: {refusal:?})",
                self.refusals
            );
            self.logged_ms = now_ms;
            self.refusals = 0;
        }
    }
}

/// SIGHUP: re-reads the configuration file and, when its `[engine]` rules (the catalogue,
/// caps, points, validity, ...) differ from those in force, hands every shard a journaled
/// CONFIGURE command through its ordinary queue, so the new rules apply from that point of each
/// shard's journal on, replay included, without a restart. The other sections (addresses,
/// limits, journal geometry) size things that exist already and still need a restart; a
/// changed one is reported, not applied. Returns the new rules, or `None` when unchanged.
async fn reload(
    context: &Context,
    source: Option<&Path>,
    current: &pinswitch_core::EngineConfig,
) -> anyhow::Result<Option<pinswitch_core::EngineConfig>> {
    use crate::shard_loop::{ShardBatch, ShardItem, ShardOutput};
    use pinswitch_core::{Body, Command};
    use pinswitch_protocol::ResultCode;

    let Some(path) = source else {
        bail!("the switch was started without --config: there is no file to re-read")
    };
    let config = Config::load(Some(path))?;
    if config.sessions != context.sessions {
        eprintln!(
            "pinswitch: reload: [sessions] changed in {}; it applies at the next restart",
            path.display()
        );
    }
    if config.limits != context.limits {
        eprintln!(
            "pinswitch: reload: [limits] changed in {}; they apply at the next restart",
            path.display()
        );
    }
    let engine = config.engine();
    if engine.same_record(current) {
        return Ok(None);
    }
    for (shard_id, shard) in context.shards.iter().enumerate() {
        let command = Command { op_id: 0, deadline_at_ms: 0, body: Body::configure(&engine) };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let mut batch = ShardBatch {
            items: vec![ShardItem::Command(command)],
            reply,
            queued_at: std::time::Instant::now(),
        };
        // A full queue is momentary: wait for room rather than drop an operator's change.
        let mut attempts = 0u32;
        while let Err(returned) = shard.try_submit(batch) {
            attempts += 1;
            if attempts > 1000 {
                bail!("shard {shard_id} stayed busy; the rules changed on shards before it only");
            }
            batch = returned;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        match answer.await.context("the shard stopped")?.pop() {
            Some(ShardOutput::Applied(applied))
                if applied.reply.code == ResultCode::Approved.as_u16() => {}
            other => bail!(
                "shard {shard_id} refused the rules ({other:?}); the rules changed on shards before it only"
            ),
        }
    }
    let mut hello = context.hello.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    hello.hold_ttl_max_s = engine.hold_ttl_max_s;
    hello.idempotency_window_s = engine.idempotency_window_ms / 1000;
    Ok(Some(engine))
}

fn check_layout(data_dir: &Path, shard_count: u16) -> anyhow::Result<()> {
    let path = data_dir.join(LAYOUT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let recorded: u16 =
                text.trim().parse().with_context(|| format!("reading {}", path.display()))?;
            if recorded != shard_count {
                bail!(
                    "{} was created with {recorded} shards; start with --shards {recorded} (resharding is not supported)",
                    data_dir.display()
                );
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            crate::keys::write_private(&path, format!("{shard_count}\n").as_bytes())
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}
