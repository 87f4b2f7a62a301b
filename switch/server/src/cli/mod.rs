//! Command-line parsing and the operator commands, one file per command group: `card.rs`
//! (the card life, payments, inquiries), `call.rs` (call charging as a call switch would do it).
//! Card and call commands speak the protocol through the client library, so what the CLI can
//! do, any client can do, and the other way round. Settlement is not here: it is its own binary,
//! `pinswitch-exporter` (switch/exporter), so the switch does not link it.

mod call;
mod card;
mod status;
mod tls;

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use pinswitch_protocol::client::Client;
use pinswitch_protocol::{OpResult, ResultCode, pin};
use std::path::PathBuf;

use crate::config::Config;
use call::CallCommand;
use card::CardCommand;

#[derive(Parser)]
#[command(
    name = "pinswitch",
    version,
    about = "In-memory authorization switch for prepaid PIN cards"
)]
struct Cli {
    #[command(flatten)]
    tls: TlsFlags,
    #[command(subcommand)]
    command: Command,
}

/// How the card and call commands reach a switch that listens with TLS (ops/trust.md).
#[derive(clap::Args, Clone, Default)]
struct TlsFlags {
    /// Connect with TLS, trusting the authority in this PEM file.
    #[arg(long, global = true)]
    tls_ca: Option<PathBuf>,
    /// Mutual TLS: this client certificate (PEM; its first DNS name is the identity) ...
    #[arg(long, global = true, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// ... and its private key (PEM).
    #[arg(long, global = true, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The name the switch's certificate carries.
    #[arg(long, global = true, default_value = "localhost")]
    tls_name: String,
    /// The address is the switch's QUIC (UDP) address (`--quic-listen`): connect over QUIC
    /// with the TLS flags above.
    #[arg(long, global = true, requires = "tls_ca")]
    quic: bool,
}

/// The TLS flags of this invocation (the client commands read them when they connect).
static TLS_FLAGS: std::sync::OnceLock<TlsFlags> = std::sync::OnceLock::new();

/// How an operator retries a command whose answer never came (a timeout, a dropped
/// connection): every command that sends one operation prints its op id on stderr, and the
/// same command sent again with `--op-id` is the same operation. The switch answers it with
/// the stored reply (marked "replayed") if the first one ran, or runs it now if it did not;
/// it never runs twice.
#[derive(clap::Args, Clone, Default)]
struct RetryFlags {
    /// The op id of an earlier run of this command (32 hex digits, dashes allowed, as printed):
    /// send the same operation again instead of a new one.
    #[arg(long, global = true, value_parser = parse_op_id)]
    op_id: Option<u128>,
}

/// `--op-id` of this invocation, and whether a command has used it.
static RETRY_OP_ID: std::sync::OnceLock<Option<u128>> = std::sync::OnceLock::new();
static RETRY_OP_ID_USED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn parse_op_id(text: &str) -> Result<u128, String> {
    let digits: String = text.chars().filter(|c| *c != '-').collect();
    match u128::from_str_radix(&digits, 16) {
        Ok(op_id) if digits.len() == 32 && op_id != 0 => Ok(op_id),
        _ => Err(format!("{text:?} is not an op id (32 hex digits, not all zero)")),
    }
}

/// The op id of the one operation this command sends: `--op-id` when given, else a new one,
/// printed on stderr either way so that the command can be retried under it.
pub(super) fn op_id() -> anyhow::Result<u128> {
    use std::sync::atomic::Ordering;
    let op_id = match RETRY_OP_ID.get().copied().flatten() {
        Some(_) if RETRY_OP_ID_USED.swap(true, Ordering::Relaxed) => {
            bail!("--op-id names one operation and it was sent already")
        }
        Some(op_id) => op_id,
        None => pinswitch_protocol::new_op_id(),
    };
    eprintln!("pinswitch: op id {op_id:032x} (to retry after a timeout, add --op-id {op_id:032x})");
    Ok(op_id)
}

/// Commands that send many operations (issuing cards, importing foreign PINs) take no
/// `--op-id`: retrying one of them means retrying each of its operations.
pub(super) fn refuse_op_id(command: &str) -> anyhow::Result<()> {
    if RETRY_OP_ID.get().copied().flatten().is_some() {
        bail!("{command} sends many operations; --op-id is for commands that send one");
    }
    Ok(())
}

#[derive(Subcommand)]
enum Command {
    /// Recover the data directory and serve the protocol.
    Serve {
        /// Data directory (default ./data; created when absent).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Listen address (default 127.0.0.1:7420; port 0 picks a free one).
        #[arg(long)]
        listen: Option<String>,
        /// QUIC listen address (UDP; needs [tls]; default: no QUIC; port 0 picks a free one).
        #[arg(long)]
        quic_listen: Option<String>,
        /// Operators' HTTP address for /metrics and /health (default: none).
        #[arg(long)]
        http_listen: Option<String>,
        /// Shard count (default: one per core; fixed for the life of a data directory).
        #[arg(long)]
        shards: Option<u16>,
        /// Shard threads' I/O runtime: glommio (io_uring, default) or tokio (epoll fallback).
        #[arg(long)]
        runtime: Option<String>,
        /// How connections reach the shards: handoff (default) or reuseport.
        #[arg(long)]
        accept: Option<String>,
        /// TOML file naming limits and rules (see ops/config/).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Card operations against a running switch.
    Card {
        #[command(flatten)]
        retry: RetryFlags,
        #[command(subcommand)]
        command: CardCommand,
    },
    /// Call-switch operations against a running switch: price quotes, event charges, audits.
    Call {
        #[command(flatten)]
        retry: RetryFlags,
        #[command(subcommand)]
        command: CallCommand,
    },
    /// Is a running switch ready, and what does it hold: asks its HTTP port (`http_listen`)
    /// and prints a line per shard; exits 0 only when it is ready.
    Status {
        /// The switch's HTTP address (`[server] http_listen`).
        #[arg(long, default_value = "127.0.0.1:9464")]
        http: String,
    },
    /// Certificates for trying TLS: `pinswitch tls init` makes a test CA, a switch certificate
    /// and client certificates.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// The switch's keys: `pinswitch keys export-pin` gives the exporter the PIN keys alone;
    /// `pinswitch keys rotate` adds a new PIN key for the cards issued from the next start on.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write the PIN key alone (no password key) to a new file, mode 0600: what the exporter's
    /// statements need (`pinswitch-exporter statement --pin-key FILE`).
    ExportPin {
        /// The switch's key file (default: keys.bin in --data, or [server] keys_file of
        /// --config).
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Data directory whose keys.bin to read (default ./data).
        #[arg(long)]
        data: Option<PathBuf>,
        /// The switch's configuration file, for `[server] data_dir` and `keys_file`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The file to write (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Add a new PIN key under the next key id: from the switch's next start it names the cards
    /// issued, and the older keys still find the cards they named. Export the PIN keys to the
    /// exporter again afterwards.
    Rotate {
        /// The switch's key file (default: keys.bin in --data, or [server] keys_file of
        /// --config).
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Data directory whose keys.bin to rotate (default ./data).
        #[arg(long)]
        data: Option<PathBuf>,
        /// The switch's configuration file, for `[server] data_dir` and `keys_file`.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// The key file a `keys` command names: `--keys`, else the data directory's (or the
/// configuration's `keys_file`).
fn key_file(
    keys: Option<PathBuf>,
    data: Option<PathBuf>,
    config: Option<&std::path::Path>,
) -> anyhow::Result<PathBuf> {
    let config = Config::load(config)?;
    let data_dir = data.unwrap_or(config.server.data_dir);
    Ok(keys.unwrap_or_else(|| crate::keys::key_file_path(&data_dir, &config.server.keys_file)))
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Write a test CA, a switch certificate and client certificates (PEM) to a directory.
    Init(tls::TlsInit),
}

pub(crate) fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let _ = TLS_FLAGS.set(cli.tls.clone());
    match cli.command {
        Command::Tls { command: TlsCommand::Init(args) } => tls::init(args),
        Command::Keys { command: KeysCommand::ExportPin { keys, data, config, out } } => {
            let keys = key_file(keys, data, config.as_deref())?;
            let key_id = crate::keys::export_pin_key(&keys, &out)?;
            println!(
                "pinswitch: wrote the PIN keys (newest key id {key_id}) of {} to {}",
                keys.display(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { command: KeysCommand::Rotate { keys, data, config } } => {
            let keys = key_file(keys, data, config.as_deref())?;
            let key_id = crate::keys::rotate(&keys)?;
            println!(
                "pinswitch: {} has a new PIN key, key id {key_id}: cards issued from the switch's \
                 next start are named by it; export the PIN keys to the exporter again",
                keys.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve {
            data,
            listen,
            quic_listen,
            http_listen,
            shards,
            runtime,
            accept,
            config,
        } => {
            crate::runtime::use_huge_pages();
            let mut config = Config::load(config.as_deref())?;
            if let Some(data) = data {
                config.server.data_dir = data;
            }
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            if let Some(quic_listen) = quic_listen {
                config.server.quic_listen = quic_listen;
            }
            if let Some(http_listen) = http_listen {
                config.server.http_listen = http_listen;
            }
            if let Some(shards) = shards {
                config.server.shards = shards;
            }
            if let Some(runtime) = runtime {
                config.server.runtime = runtime;
            }
            if let Some(accept) = accept {
                config.server.accept = accept;
            }
            config.validate()?;
            crate::runtime::run(config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { http } => status::status(&http),
        Command::Card { retry, command } => {
            let _ = RETRY_OP_ID.set(retry.op_id);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the client runtime")?;
            runtime.block_on(card::card(command))
        }
        Command::Call { retry, command } => {
            let _ = RETRY_OP_ID.set(retry.op_id);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the client runtime")?;
            runtime.block_on(call::call(command))
        }
    }
}

/// Prints a result line and turns declines into a failing exit code.
pub(super) fn outcome(code: u16, detail: String) -> ExitCode {
    let name = ResultCode::from_u16(code).map_or("UNKNOWN", ResultCode::name);
    println!("{name} ({code}){detail}");
    if ResultCode::from_u16(code).is_some_and(ResultCode::is_success) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub(super) fn parse_pin(text: &str) -> anyhow::Result<u64> {
    match pin::parse(text) {
        Some(value) if pin::is_valid(value) => Ok(value),
        _ => bail!("{text:?} is not a valid 16-digit PIN"),
    }
}

/// Connects to the switch at `address`: over TLS with `--tls-ca`, over QUIC with `--quic`.
pub(super) async fn connect(address: &str) -> anyhow::Result<Client> {
    let flags = TLS_FLAGS.get().cloned().unwrap_or_default();
    let Some(ca) = &flags.tls_ca else {
        return Client::connect(address).await.with_context(|| format!("connecting to {address}"));
    };
    let identity = flags.tls_cert.as_deref().zip(flags.tls_key.as_deref());
    let tls = pinswitch_protocol::tls::TlsClient::from_pem_files(ca, identity, &flags.tls_name)
        .context("the TLS flags")?;
    let options = pinswitch_protocol::ClientOptions::default();
    if flags.quic {
        return Client::connect_quic(address, &tls, options)
            .await
            .with_context(|| format!("connecting to {address} over QUIC"));
    }
    Client::connect_tls(address, &tls, options)
        .await
        .with_context(|| format!("connecting to {address} over TLS"))
}

/// The result line of an operation whose interesting figure is the balance.
pub(super) fn balance_outcome(result: OpResult) -> ExitCode {
    op_outcome(&result, format!(", balance {} won", result.balance_won))
}

/// `outcome` for an operation's result: says when it is the stored answer of an earlier run.
pub(super) fn op_outcome(result: &OpResult, detail: String) -> ExitCode {
    let replayed = if result.flags & pinswitch_protocol::FLAG_REPLAYED != 0 {
        " (replayed: this op id ran before; it did not run again)"
    } else {
        ""
    };
    outcome(result.code, format!("{detail}{replayed}"))
}

pub(super) fn single<T>(results: Vec<T>) -> anyhow::Result<T> {
    results.into_iter().next().context("the switch sent no result")
}
