//! The command line of `pinswitch-exporter`. Here: the schema, the places every command shares
//! (the switch's data directory, the exporter's state, the configuration files) and the
//! dispatch; one function per subcommand, in files by group: `run.rs` (`run`, also with
//! `--follow`), `report.rs` (`status`, `period`, `month`), `deposits.rs` (`deposits`) and
//! `statements.rs` (`statement`, `serve`).

mod deposits;
mod report;
mod run;
mod statements;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pinswitch_exporter::{ExportConfig, Options};

/// The settlement exporter: reads the journals (never the hot path), see
/// switch/exporter/EXPORT.md.
// (clap joins a doc paragraph's lines into one `about` line.)
#[derive(Parser)]
#[command(name = "pinswitch-exporter", version)]
struct Cli {
    #[command(flatten)]
    places: Places,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Places {
    /// The switch's data directory (default: the one in --config, else ./data).
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    /// The exporter's state and output directory (default: DATA/export).
    #[arg(long, global = true)]
    state: Option<PathBuf>,
    /// The switch's configuration file (only for its data directory: journals start under the
    /// switch's fixed baseline rules, and every change of rules is journaled).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The exporter's configuration file (cut-off, commission rates, payout accounts).
    #[arg(long = "export-config", global = true)]
    export_config: Option<PathBuf>,
    /// The merchant (associate) registry, CSV `merchant_id,name,category`: names in statements.
    #[arg(long, global = true)]
    merchants: Option<PathBuf>,
    /// The switch's PIN key alone, for statements (`pinswitch keys export-pin --out FILE`;
    /// default: STATE/pin.key). The exporter never takes the switch's full key file.
    #[arg(long = "pin-key", global = true)]
    pin_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the journals from the cursors to their end, then close every finished period.
    Run {
        /// Stop after this many journal records (resume with the next run).
        #[arg(long)]
        max_records: Option<u64>,
        /// Keep following the journals for this many seconds (0: one pass, as without it),
        /// printing each second the records applied and how old they were when applied.
        #[arg(long, conflicts_with = "max_records")]
        follow: Option<u64>,
        /// With --follow: how long to wait when a pass found nothing new, in milliseconds.
        #[arg(long, default_value_t = 100, requires = "follow")]
        poll_ms: u64,
    },
    /// Cursors, journal heads and lag per shard, the trial balance and the safeguarding
    /// reconciliation.
    Status,
    /// Write the files of one period (YYYY-MM-DD): final when closed, else provisional.
    Period {
        date: String,
        /// Write into this directory instead of the state directory.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Match a camt.054 deposit notice to pending card orders and sell the paid ones (prints each
    /// new PIN once).
    Deposits {
        /// The bank's ISO 20022 camt.054 notice.
        #[arg(long)]
        camt: PathBuf,
        /// The shop's pending orders (CSV:
        /// order_ref,face_value_won,price_won,channel_id,gift_recipient_ref).
        #[arg(long)]
        orders: PathBuf,
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
    },
    /// Write the mobile-operator remittance of one month (YYYY-MM).
    Month {
        month: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A card's usage statement from the exporter's index: summary and internet payments.
    Statement {
        pin: String,
        /// First day (YYYY-MM-DD, local time of the export configuration's zone).
        #[arg(long)]
        from: Option<String>,
        /// Last day, included.
        #[arg(long)]
        to: Option<String>,
        /// Time this many queries of the statement's first page and print the latencies on stderr.
        #[arg(long, default_value_t = 0)]
        repeat: u32,
    },
    /// Answer STATEMENT frames (and HELLO, PING) from the exporter's index; never the switch's
    /// shards.
    Serve {
        #[arg(long, default_value = "127.0.0.1:7421")]
        listen: String,
    },
}

pub(crate) fn main() -> anyhow::Result<ExitCode> {
    let Cli { places, command } = Cli::parse();
    let merchants = places.merchants.clone();
    let pin_key = places.pin_key.clone();
    let options = places.options()?;
    let pin_key = pin_key.unwrap_or_else(|| options.state_dir.join("pin.key"));
    match command {
        Command::Run { max_records: None, follow: Some(seconds), poll_ms } => {
            run::follow(options, seconds, poll_ms)
        }
        Command::Run { max_records, .. } => run::run(options, max_records),
        Command::Status => report::status(options),
        Command::Period { date, out } => report::period(options, &date, out.as_deref()),
        Command::Month { month, out } => report::month(options, &month, out.as_deref()),
        Command::Deposits { camt, orders, connect } => {
            deposits::deposits(options, &camt, &orders, &connect)
        }
        Command::Statement { pin, from, to, repeat } => statements::statement(
            &options,
            merchants.as_deref(),
            &pin_key,
            &pin,
            from.as_deref(),
            to.as_deref(),
            repeat,
        ),
        Command::Serve { listen } => {
            statements::serve(&options, merchants.as_deref(), &pin_key, &listen)
        }
    }
}

impl Places {
    /// What the library needs: both directories, the baseline rules and the exporter's
    /// configuration.
    fn options(self) -> anyhow::Result<Options> {
        let switch_data_dir = switch_data_dir(self.config.as_deref())?;
        let data_dir = self.data.unwrap_or(switch_data_dir);
        let state_dir = self.state.unwrap_or_else(|| data_dir.join("export"));
        let config = ExportConfig::load(self.export_config.as_deref())?;
        // The shadow starts under the switch's fixed baseline, never today's `[engine]`: every
        // change of rules since is a journaled CONFIGURE the shadow replays.
        Ok(Options {
            data_dir,
            state_dir,
            engine: pinswitch_core::EngineConfig::production(),
            config,
        })
    }
}

/// `[server] data_dir` of the switch's configuration file (without one: the switch's default,
/// `data`). Only that key is read: the rest of the file is the switch's to check, and reading it
/// here would make the exporter depend on the server.
fn switch_data_dir(path: Option<&Path>) -> anyhow::Result<PathBuf> {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct SwitchConfig {
        server: ServerSection,
    }
    #[derive(serde::Deserialize)]
    #[serde(default)]
    struct ServerSection {
        data_dir: PathBuf,
    }
    impl Default for ServerSection {
        fn default() -> Self {
            ServerSection { data_dir: PathBuf::from("data") }
        }
    }
    let Some(path) = path else { return Ok(ServerSection::default().data_dir) };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    let config: SwitchConfig =
        toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
    Ok(config.server.data_dir)
}

/// Milliseconds since the Unix epoch on this machine's clock (closing quiet periods, and the
/// age of a record when `run --follow` applies it).
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

fn exit_code(success: bool) -> ExitCode {
    if success { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
