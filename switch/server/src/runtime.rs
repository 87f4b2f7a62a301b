//! The runtime seam: the only module that decides how threads and the async runtime are laid
//! out. Shards are plain OS threads (one per core by default), each running the synchronous
//! shard loop; the network side is a tokio multi-thread runtime. Swapping in glommio or a
//! thread-per-core tokio layout means changing this file, never the engine or the shard loop.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use pinswitch_journal::JournalOptions;
use pinswitch_protocol::{HelloReply, VERSION};

use crate::config::Config;
use crate::keys::Keys;
use crate::net::{self, Context};
use crate::push::SessionDirectory;
use crate::shard_loop::{self, ShardSettings, shard_dir};

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
pub fn use_huge_pages() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(NO_HUGE_PAGES_ENV).is_some() {
        return;
    }
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if current.contains("glibc.malloc.hugetlb") {
        return;
    }
    let tunables = if current.is_empty() { HUGE_PAGES_TUNABLE.to_string() } else { format!("{current}:{HUGE_PAGES_TUNABLE}") };
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

/// Recovers every shard, then serves until SIGINT or SIGTERM.
pub fn run(config: Config) -> anyhow::Result<()> {
    let data_dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let shard_count = config.shard_count();
    check_layout(&data_dir, shard_count)?;
    let keys = Keys::load_or_create(&data_dir)?;
    let engine = config.engine();
    let mut shards = Vec::with_capacity(usize::from(shard_count));
    let directory = Arc::new(SessionDirectory::new(config.sessions.notices));
    for shard_id in 0..shard_count {
        let settings = ShardSettings {
            shard_id,
            shard_count,
            dir: shard_dir(&data_dir, shard_id),
            engine: engine.clone(),
            hash_key: keys.table_key(),
            journal: JournalOptions {
                segment_bytes: config.journal.segment_bytes,
                commit_bytes_max: config.journal.commit_bytes_max,
            },
            queue_max: config.limits.shard_queue_max as usize,
            commit_events_max: config.limits.commit_events_max as usize,
            snapshot_every_records: config.journal.snapshot_every_records,
            directory: directory.clone(),
        };
        let (handle, report, _thread) = shard_loop::start(settings)
            .with_context(|| format!("starting shard {shard_id}"))?;
        println!(
            "pinswitch: shard {shard_id} recovered: snapshot at record {}, {} records replayed, {} cards",
            report.snapshot_seq, report.replayed_records, report.cards
        );
        shards.push(handle);
    }
    let hello = HelloReply {
        server_name: format!("pinswitch {}", env!("CARGO_PKG_VERSION")),
        protocol_version: VERSION,
        shard_count,
        frame_bytes_max: config.limits.frame_bytes_max,
        batch_events_max: config.limits.batch_events_max,
        in_flight_per_connection_max: config.limits.in_flight_per_connection_max,
        hold_ttl_max_s: engine.hold_ttl_max_s,
        idempotency_window_s: engine.idempotency_window_ms / 1000,
        server_time_ms: 0,
    };
    let context = Arc::new(Context {
        shards,
        shard_count,
        keys,
        limits: config.limits.clone(),
        sessions: config.sessions.clone(),
        directory,
        hello: std::sync::RwLock::new(hello),
    });
    let reload_context = context.clone();
    let source = config.source.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pinswitch-net")
        .build()
        .context("building the network runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&config.server.listen)
            .await
            .with_context(|| format!("listening on {}", config.server.listen))?;
        let address = listener.local_addr().context("reading the listen address")?;
        println!("pinswitch: listening on {address} ({shard_count} shards, data in {})", data_dir.display());
        std::io::stdout().flush().context("writing to stdout")?;
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        let reloads = async move {
            let mut engine = engine;
            while hangup.recv().await.is_some() {
                match reload(&reload_context, source.as_deref(), &engine).await {
                    Ok(Some(reloaded)) => {
                        engine = reloaded;
                        println!("pinswitch: reloaded the engine rules on {} shards", reload_context.shard_count);
                    }
                    Ok(None) => println!("pinswitch: reload: the engine rules are unchanged"),
                    Err(error) => println!("pinswitch: reload refused: {error:#}"),
                }
                let _ = std::io::stdout().flush();
            }
        };
        tokio::select! {
            result = net::serve(listener, context) => result.context("accepting connections"),
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = terminate.recv() => Ok(()),
            _ = reloads => Ok(()),
        }
    })?;
    println!("pinswitch: stopped");
    Ok(())
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
    use pinswitch_core::{Body, Command};
    use pinswitch_protocol::ResultCode;
    use crate::shard_loop::{ShardBatch, ShardItem, ShardOutput};

    let Some(path) = source else { bail!("the switch was started without --config: there is no file to re-read") };
    let config = Config::load(Some(path))?;
    if config.sessions != context.sessions {
        eprintln!("pinswitch: reload: [sessions] changed in {}; it applies at the next restart", path.display());
    }
    if config.limits != context.limits {
        eprintln!("pinswitch: reload: [limits] changed in {}; they apply at the next restart", path.display());
    }
    let engine = config.engine();
    if &engine == current {
        return Ok(None);
    }
    for (shard_id, shard) in context.shards.iter().enumerate() {
        let command = Command { op_id: 0, deadline_at_ms: 0, body: Body::Configure(Box::new(engine.clone())) };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let mut batch = ShardBatch { items: vec![ShardItem::Command(command)], reply };
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
            Some(ShardOutput::Applied(applied)) if applied.reply.code == ResultCode::Approved.as_u16() => {}
            other => bail!("shard {shard_id} refused the rules ({other:?}); the rules changed on shards before it only"),
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
            let recorded: u16 = text.trim().parse().with_context(|| format!("reading {}", path.display()))?;
            if recorded != shard_count {
                bail!(
                    "{} was created with {recorded} shards; start with --shards {recorded} (resharding is not supported)",
                    data_dir.display()
                );
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, format!("{shard_count}\n")).with_context(|| format!("writing {}", path.display()))
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}
