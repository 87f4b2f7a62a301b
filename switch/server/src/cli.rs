//! Command-line parsing and the operator commands. Card commands speak the protocol through the
//! client library, so what the CLI can do, any client can do, and the other way round.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use pinswitch_protocol::client::Client;
use pinswitch_protocol::{
    self as protocol, BalanceInquiry, BlockReason, CardActivate, CardBlock, CardClaim, CardIssue, CardLoad,
    CardConsign, CardRefund, CardRegister, CardSell, CardState, CardUnblock, EventCharge, ForeignConvert, ForeignImport, Funding,
    OpResult, PriceQuote, ResultCode, Sale, SessionAudit, pin,
};

use crate::config::Config;

#[derive(Parser)]
#[command(name = "pinswitch", version, about = "In-memory authorization switch for prepaid PIN cards")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
        #[command(subcommand)]
        command: CardCommand,
    },
    /// Call-switch operations against a running switch: price quotes, event charges, audits.
    Call {
        #[command(subcommand)]
        command: CallCommand,
    },
    /// The settlement exporter: reads the journals (never the hot path), see switch/exporter/EXPORT.md.
    Export {
        #[command(flatten)]
        places: ExportPlaces,
        #[command(subcommand)]
        command: ExportCommand,
    },
}

#[derive(clap::Args)]
struct ExportPlaces {
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
}

#[derive(Subcommand)]
enum ExportCommand {
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
    /// Cursors, journal heads and lag per shard, the trial balance and the safeguarding reconciliation.
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
        /// The shop's pending orders (CSV: order_ref,face_value_won,price_won,channel_id,gift_recipient_ref).
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
    /// Answer STATEMENT frames (and HELLO, PING) from the exporter's index; never the switch's shards.
    Serve {
        #[arg(long, default_value = "127.0.0.1:7421")]
        listen: String,
    },
}

#[derive(Subcommand)]
enum CallCommand {
    /// What a call of --seconds to --to, or --units events, would cost now (PRICE_QUOTE); with
    /// --pin also how many seconds the card's available balance buys.
    Quote {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        /// Service category (2 telephone call, 3 phone information, 4 prepaid mobile, ...).
        #[arg(long)]
        category: u8,
        /// The called number (digits).
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 0)]
        seconds: u32,
        #[arg(long, default_value_t = 0)]
        units: u32,
        #[arg(long)]
        pin: Option<String>,
    },
    /// Charge --units events of the service at --to to the card (EVENT_CHARGE).
    Charge {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        #[arg(long)]
        category: u8,
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 1)]
        units: u32,
        /// The holder's password (required only when the switch's session_password_required is on).
        #[arg(long)]
        password: Option<String>,
    },
    /// Compare a call switch's live sessions (--session, repeated; hex or decimal ids) with the
    /// switch's (SESSION_AUDIT); with --close, end the switch's sessions of --owner missing
    /// from the list.
    Audit {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        #[arg(long)]
        owner: u32,
        #[arg(long = "session")]
        sessions: Vec<String>,
        #[arg(long)]
        close: bool,
    },
}

#[derive(Subcommand)]
enum CardCommand {
    /// Issue cards of one product; prints each new PIN once.
    Issue {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        /// Face value in won (5000, 10000, 20000, 30000, 50000, 100000 by default).
        #[arg(long)]
        product: u64,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Write the new PINs to this file for printing physical cards (one `PIN,face value`
        /// line each; created new with mode 0600, never overwritten) instead of printing them.
        #[arg(long)]
        pin_file: Option<PathBuf>,
    },
    /// Show a card's state, balance and live holds.
    Show {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
    },
    /// Register the holder's password; the card becomes active.
    Activate {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        #[arg(long)]
        password: String,
    },
    /// Recharge a card.
    Load {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        #[arg(long)]
        amount: u64,
    },
    /// Debit a card (single-phase sale), as a gateway would.
    Sale {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        #[arg(long)]
        password: String,
        #[arg(long)]
        amount: u64,
        #[arg(long, default_value_t = 0)]
        merchant: u64,
    },
    /// Sell an issued card through a channel; its validity period starts.
    Sell {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        /// The selling channel (non-zero).
        #[arg(long)]
        channel: u32,
        /// What the buyer paid, in won.
        #[arg(long)]
        price: u64,
        /// How the buyer paid: 1 credit card, 2 bank transfer, 3 deposit without bankbook,
        /// 4 cash, 5 mobile bill.
        #[arg(long, default_value_t = Funding::Cash as u8, value_parser = clap::value_parser!(u8).range(1..=5))]
        means: u8,
        /// Sell as a gift to this recipient reference (0: for the buyer).
        #[arg(long = "gift-to", default_value_t = 0)]
        gift_to: u64,
    },
    /// Stop an active card from paying; the balance is kept.
    Block {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        #[arg(long, value_enum)]
        reason: Reason,
    },
    /// Return a blocked card to active, or clear a wrong-password lockout.
    Unblock {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
    },
    /// Consign an issued card to a partner channel (mobile operator, agent): only it may sell it.
    Consign {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        /// The partner's channel id (non-zero).
        #[arg(long)]
        partner: u32,
        /// The partner's commission, per mille of the sale price.
        #[arg(long, default_value_t = 0)]
        commission: u16,
    },
    /// Register the holder (user information stays with the card site); with --verified-name the
    /// named-card balance cap applies.
    Register {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        /// The card site's reference of the holder (non-zero).
        #[arg(long)]
        holder: u64,
        /// The holder's real name was verified.
        #[arg(long)]
        verified_name: bool,
    },
    /// Pay the whole balance out to an account and close the card (refund rule permitting).
    Refund {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        /// The payout account reference (non-zero).
        #[arg(long)]
        account: u64,
    },
    /// Activation with details: a gift's recipient claims it with the reference the sale named
    /// (`--gift-ref`), and `--hint` records that the holder left a password hint with the site.
    Claim {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        #[arg(long)]
        password: String,
        /// The recipient reference of the gift sale (0: the card is not a gift).
        #[arg(long, default_value_t = 0)]
        gift_ref: u64,
        #[arg(long)]
        hint: bool,
    },
    /// Import foreign PINs bought from a foreign operator into a foreign product's pool: one
    /// code per line of FILE (blank lines skipped); prints one result per code.
    ForeignImport {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        /// The foreign product (`[[engine.foreign_products]]` in the configuration).
        #[arg(long)]
        product: u32,
        file: PathBuf,
    },
    /// Convert part of a card's balance into one foreign PIN of a product; prints the PIN.
    Convert {
        #[arg(long, default_value = "127.0.0.1:7420")]
        connect: String,
        pin: String,
        #[arg(long)]
        product: u32,
        #[arg(long)]
        password: String,
    },
}

/// Why a card is blocked (`card block --reason`).
#[derive(Clone, Copy, ValueEnum)]
enum Reason {
    Lost,
    Stolen,
    Operator,
    Holder,
}

impl Reason {
    fn code(self) -> u8 {
        let reason = match self {
            Reason::Lost => BlockReason::Lost,
            Reason::Stolen => BlockReason::Stolen,
            Reason::Operator => BlockReason::Operator,
            Reason::Holder => BlockReason::HolderRequest,
        };
        reason as u8
    }
}

pub fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { data, listen, shards, runtime, accept, config } => {
            crate::runtime::use_huge_pages();
            let mut config = Config::load(config.as_deref())?;
            if let Some(data) = data {
                config.server.data_dir = data;
            }
            if let Some(listen) = listen {
                config.server.listen = listen;
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
        Command::Export { places, command } => export(places, command),
        Command::Card { command } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the client runtime")?;
            runtime.block_on(card(command))
        }
        Command::Call { command } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the client runtime")?;
            runtime.block_on(call(command))
        }
    }
}

/// `pinswitch export …`: the logic is in the pinswitch-exporter crate.
fn export(places: ExportPlaces, command: ExportCommand) -> anyhow::Result<ExitCode> {
    use pinswitch_exporter::{ExportConfig, Exporter, Options, date_string, parse_date};
    let config = Config::load(places.config.as_deref())?;
    let data_dir = places.data.unwrap_or(config.server.data_dir.clone());
    let state_dir = places.state.unwrap_or_else(|| data_dir.join("export"));
    let export_config = ExportConfig::load(places.export_config.as_deref())?;
    let options = Options { data_dir, state_dir, engine: pinswitch_core::EngineConfig::production(), config: export_config };
    if matches!(command, ExportCommand::Statement { .. } | ExportCommand::Serve { .. }) {
        return statements(&options, places.merchants.as_deref(), command);
    }
    // Runs (and deposit matching) hold the state exclusively; looking at it does not.
    let mut exporter = match command {
        ExportCommand::Run { .. } | ExportCommand::Deposits { .. } => Exporter::open(options)?,
        _ => Exporter::open_read_only(options)?,
    };
    match command {
        ExportCommand::Run { max_records: None, follow: Some(seconds), poll_ms } => {
            let report = follow(&mut exporter, seconds, poll_ms)?;
            for day in &report.closed {
                println!("closed period {}", date_string(*day));
            }
            let status = exporter.status()?;
            print!("{status}");
            Ok(if status.reconciled() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        ExportCommand::Run { max_records, .. } => {
            let report = exporter.run(max_records, crate::shard_loop::wall_clock_ms())?;
            let applied: Vec<String> = report.applied.iter().enumerate().map(|(shard, count)| format!("shard {shard}: {count}")).collect();
            println!("applied {} records ({})", report.applied.iter().sum::<u64>(), applied.join(", "));
            for day in &report.closed {
                println!("closed period {}", date_string(*day));
            }
            if report.stopped_early {
                println!("stopped at --max-records; run again to continue");
            }
            let status = exporter.status()?;
            print!("{status}");
            Ok(if status.reconciled() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        ExportCommand::Status => {
            let status = exporter.status()?;
            print!("{status}");
            Ok(if status.reconciled() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        ExportCommand::Period { date, out } => {
            let Some(day) = parse_date(&date) else { bail!("{date:?} is not a date (YYYY-MM-DD)") };
            let (dir, is_final) = exporter.render_period(day, out.as_deref())?;
            let summary = std::fs::read_to_string(dir.join("summary.txt")).context("reading the period summary")?;
            print!("{summary}");
            println!("{} files in {}", if is_final { "final" } else { "provisional" }, dir.display());
            Ok(ExitCode::SUCCESS)
        }
        ExportCommand::Deposits { camt, orders, connect: address } => {
            use pinswitch_exporter::deposits;
            let read = |path: &PathBuf| std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()));
            let credits = deposits::parse_camt054(&read(&camt)?).map_err(|why| anyhow::anyhow!("{}: {why}", camt.display()))?;
            let orders = deposits::parse_orders(&read(&orders)?).map_err(|why| anyhow::anyhow!("{}: {why}", orders.display()))?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("building the client runtime")?;
            let report = runtime.block_on(async {
                let client = connect(&address).await?;
                anyhow::Ok(deposits::settle(exporter.state_dir(), &client, &orders, &credits).await?)
            })?;
            for (order, card_pin) in &report.sold {
                println!("sold {order}  {}", pin::format(*card_pin));
            }
            for (order, code) in &report.declined {
                println!("declined {order}: {} ({code})", ResultCode::from_u16(*code).map_or("UNKNOWN", ResultCode::name));
            }
            for order in &report.in_flight {
                println!("in flight since an interrupted run, resolve by hand: {order}");
            }
            println!("already done: {}, pending: {}", report.already_done.len(), report.pending.join(" "));
            for credit in &report.unmatched {
                println!("unmatched credit {} of {} won ({} {})", credit.entry_ref, credit.amount_won, credit.end_to_end_id, credit.remittance);
            }
            Ok(if report.declined.is_empty() && report.in_flight.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        ExportCommand::Statement { .. } | ExportCommand::Serve { .. } => unreachable!("answered by statements()"),
        ExportCommand::Month { month, out } => {
            let Some(day) = parse_date(&format!("{month}-01")) else { bail!("{month:?} is not a month (YYYY-MM)") };
            let (year, month_number, _) = pinswitch_exporter::calendar::civil_from_days(day);
            let (dir, is_final) = exporter.render_month(year, month_number, out.as_deref())?;
            print!("{}", std::fs::read_to_string(dir.join("operator-remittance.csv")).context("reading the remittance")?);
            println!("{} remittance in {}", if is_final { "final" } else { "provisional" }, dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `export run --follow SECONDS`: follows the journals, printing a line a second (records
/// applied, their rate, the oldest record's age at apply: now minus its journaled time, on the
/// same machine's clock) and at the end the age percentiles over the whole run.
fn follow(exporter: &mut pinswitch_exporter::Exporter, seconds: u64, poll_ms: u64) -> anyhow::Result<pinswitch_exporter::RunReport> {
    use std::cell::{Cell, RefCell};
    use std::time::{Duration, Instant};
    let now_ms = crate::shard_loop::wall_clock_ms;
    let started = Instant::now();
    let ages_ms = RefCell::new(Vec::new());
    let window_max_age_ms = Cell::new(0u64);
    let mut last = (Instant::now(), 0u64);
    let mut observe = |time_ms: u64| {
        let age_ms = now_ms().saturating_sub(time_ms);
        ages_ms.borrow_mut().push(u32::try_from(age_ms).unwrap_or(u32::MAX));
        window_max_age_ms.set(window_max_age_ms.get().max(age_ms));
    };
    let mut keep_going = |applied: u64| {
        let elapsed = last.0.elapsed();
        if elapsed >= Duration::from_secs(1) {
            let rate = (applied - last.1) as f64 / elapsed.as_secs_f64();
            println!("t={:>4}s  applied {applied:>10}  {rate:>9.0} records/s  oldest record applied was {} ms old", started.elapsed().as_secs(), window_max_age_ms.replace(0));
            last = (Instant::now(), applied);
        }
        started.elapsed() < Duration::from_secs(seconds)
    };
    let report = exporter.follow(Duration::from_millis(poll_ms), &now_ms, &mut keep_going, &mut observe)?;
    let mut ages = ages_ms.into_inner();
    ages.sort_unstable();
    let at = |quantile: f64| ages.get(((ages.len() as f64 - 1.0) * quantile).round() as usize).copied().unwrap_or(0);
    let applied: u64 = report.applied.iter().sum();
    println!(
        "followed {:.1} s: applied {applied} records ({:.0}/s); age of a record when applied: p50 {} ms, p99 {} ms, max {} ms",
        started.elapsed().as_secs_f64(),
        applied as f64 / started.elapsed().as_secs_f64(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    Ok(report)
}

/// `export statement` and `export serve`: card statements from the exporter's statement index
/// (no exporter state is loaded); PINs are hashed with the data directory's keys, as the switch does.
fn statements(options: &pinswitch_exporter::Options, merchants: Option<&std::path::Path>, command: ExportCommand) -> anyhow::Result<ExitCode> {
    use pinswitch_exporter::merchants::MerchantRegistry;
    use pinswitch_exporter::parse_date;
    use pinswitch_exporter::serve::StatementService;
    let key_path = options.data_dir.join(crate::keys::KEY_FILE);
    if !key_path.exists() {
        bail!("{} not found: statements need the switch's PIN key", key_path.display());
    }
    let keys = crate::keys::Keys::load_or_create(&options.data_dir)?;
    let shard_count = pinswitch_exporter::exporter::read_shard_count(&options.data_dir)?;
    let registry = MerchantRegistry::load(merchants)?;
    let service = StatementService::open(&options.state_dir, shard_count, registry, options.config.statements.clone(), Box::new(move |pin| keys.pin_hash(pin)))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("building the runtime")?;
    match command {
        ExportCommand::Serve { listen } => runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("listening on {listen}"))?;
            println!("statements on {}", listener.local_addr()?);
            use std::io::Write as _;
            std::io::stdout().flush()?;
            pinswitch_exporter::serve::serve(listener, std::sync::Arc::new(service)).await?;
            Ok(ExitCode::SUCCESS)
        }),
        ExportCommand::Statement { pin: text, from, to, repeat } => {
            let card = parse_pin(&text)?;
            let zone = pinswitch_exporter::Cutoff { utc_offset_hours: options.config.utc_offset_hours, cutoff_hour: 0 };
            let day = |text: &str| parse_date(text).with_context(|| format!("{text:?} is not a date (YYYY-MM-DD)"));
            let from_ms = from.as_deref().map(day).transpose()?.map_or(0, |day| u64::try_from(zone.start_ms(day)).unwrap_or(0));
            let to_ms = to.as_deref().map(day).transpose()?.map_or(0, |day| u64::try_from(zone.end_ms(day)).unwrap_or(0));
            let mut query = protocol::StatementQuery { pin: card, from_ms, to_ms, cursor: 0, limit: 0 };
            if repeat > 0 {
                let mut micros: Vec<u128> = (0..repeat)
                    .map(|_| {
                        let started = std::time::Instant::now();
                        std::hint::black_box(service.answer(&query));
                        started.elapsed().as_micros()
                    })
                    .collect();
                micros.sort_unstable();
                let at = |share: usize| micros[(micros.len() * share / 100).min(micros.len() - 1)];
                eprintln!("{repeat} queries: p50 {} us, p99 {} us, max {} us", at(50), at(99), micros[micros.len() - 1]);
            }
            let first = service.answer(&query);
            if first.code != ResultCode::Approved.as_u16() {
                return Ok(outcome(first.code, String::new()));
            }
            let mut lines = first.lines.clone();
            let mut next = first.next_cursor;
            while next != 0 {
                query.cursor = next;
                let page = service.answer(&query);
                lines.extend(page.lines.iter().cloned());
                next = if page.code == ResultCode::Approved.as_u16() { page.next_cursor } else { 0 };
            }
            print!("{}", pinswitch_exporter::statement::render(&pin::format(card), &first, &lines, zone));
            Ok(ExitCode::SUCCESS)
        }
        _ => unreachable!("only statement and serve come here"),
    }
}

/// Prints a result line and turns declines into a failing exit code.
fn outcome(code: u16, detail: String) -> ExitCode {
    let name = ResultCode::from_u16(code).map_or("UNKNOWN", ResultCode::name);
    println!("{name} ({code}){detail}");
    if ResultCode::from_u16(code).is_some_and(ResultCode::is_success) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn parse_pin(text: &str) -> anyhow::Result<u64> {
    match pin::parse(text) {
        Some(value) if pin::is_valid(value) => Ok(value),
        _ => bail!("{text:?} is not a valid 16-digit PIN"),
    }
}

async fn connect(address: &str) -> anyhow::Result<Client> {
    Client::connect(address).await.with_context(|| format!("connecting to {address}"))
}

async fn card(command: CardCommand) -> anyhow::Result<ExitCode> {
    match command {
        CardCommand::Issue { connect: address, product, count, pin_file } => {
            // The PIN file is created before anything is issued: a PIN is shown only once, so
            // it must have somewhere to go (an existing file is never overwritten).
            let mut pin_out = match &pin_file {
                Some(path) => {
                    use std::os::unix::fs::OpenOptionsExt;
                    let file = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(path)
                        .with_context(|| format!("creating the PIN file {}", path.display()))?;
                    Some(std::io::BufWriter::new(file))
                }
                None => None,
            };
            let client = connect(&address).await?;
            let hello = client.hello("pinswitch-cli").await.context("greeting the switch")?;
            let batch_max = hello.batch_events_max.max(1) as usize;
            let mut failed = 0u32;
            let mut remaining = count as usize;
            while remaining > 0 {
                let take = remaining.min(batch_max);
                remaining -= take;
                let events: Vec<CardIssue> = (0..take)
                    .map(|_| CardIssue { op_id: protocol::new_op_id(), face_value_won: product })
                    .collect();
                for result in client.card_issue(&events).await.context("issuing cards")? {
                    if result.code == ResultCode::Approved.as_u16() {
                        match pin_out.as_mut() {
                            Some(out) => writeln!(out, "{},{}", pin::format(result.pin), result.balance_won).context("writing the PIN file")?,
                            None => println!("{}  {} won", pin::format(result.pin), result.balance_won),
                        }
                    } else {
                        failed += 1;
                        let name = ResultCode::from_u16(result.code).map_or("UNKNOWN", ResultCode::name);
                        eprintln!("not issued: {name} ({})", result.code);
                    }
                }
            }
            if let (Some(mut out), Some(path)) = (pin_out, pin_file) {
                out.flush().context("writing the PIN file")?;
                out.into_inner().map_err(|error| error.into_error()).and_then(|file| file.sync_all()).context("syncing the PIN file")?;
                println!("{} PINs written to {}", count as u64 - u64::from(failed), path.display());
            }
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        CardCommand::Show { connect: address, pin } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let results = client.balance_inquiry(&[BalanceInquiry { pin }]).await.context("reading the card")?;
            let Some(card) = results.into_iter().next() else { bail!("the switch sent no result") };
            if card.code != ResultCode::Approved.as_u16() {
                return Ok(outcome(card.code, String::new()));
            }
            let state = CardState::from_u8(card.state).map_or("unknown", CardState::name);
            println!("card      {}", pin::format(pin));
            println!("state     {state}");
            println!("face      {} won", card.face_value_won);
            println!("balance   {} won", card.balance_won);
            println!("available {} won", card.available_won);
            println!("held      {} won", card.held_won);
            println!("password  {} tries left", card.password_tries_left);
            println!("points    {}", card.points);
            println!("valid to  {} s since the epoch", card.valid_until_s);
            if card.password_hint {
                println!("hint      a password hint is kept by the card site");
            }
            for hold in &card.holds {
                println!(
                    "hold      {:032x}  {} won, {} captured, expires at {} ms",
                    hold.hold_id, hold.amount_won, hold.captured_won, hold.expires_at_ms
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CardCommand::Activate { connect: address, pin, password } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = CardActivate { op_id: protocol::new_op_id(), pin, password: password.into_bytes() };
            Ok(balance_outcome(single(client.card_activate(&[event]).await.context("activating")?)?))
        }
        CardCommand::Load { connect: address, pin, amount } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = CardLoad { op_id: protocol::new_op_id(), pin, amount_won: amount, funding: Funding::Cash as u8 };
            Ok(balance_outcome(single(client.card_load(&[event]).await.context("recharging")?)?))
        }
        CardCommand::Sale { connect: address, pin, password, amount, merchant } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = Sale {
                op_id: protocol::new_op_id(),
                pin,
                password: password.into_bytes(),
                amount_won: amount,
                merchant_id: merchant,
                category: protocol::Category::InternetPayment as u8,
            };
            let result = single(client.sale(&[event]).await.context("debiting")?)?;
            Ok(outcome(result.code, format!(", approval {:06}, balance {} won", result.approval_code, result.balance_won)))
        }
        CardCommand::Sell { connect: address, pin, channel, price, means, gift_to } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = CardSell {
                op_id: protocol::new_op_id(),
                pin,
                channel_id: channel,
                price_won: price,
                payment_means: means,
                gift_recipient_ref: gift_to,
            };
            let result = single(client.card_sell(&[event]).await.context("selling")?)?;
            Ok(outcome(result.code, format!(", face value {} won", result.amount_won)))
        }
        CardCommand::Block { connect: address, pin, reason } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = CardBlock { op_id: protocol::new_op_id(), pin, reason: reason.code() };
            Ok(balance_outcome(single(client.card_block(&[event]).await.context("blocking")?)?))
        }
        CardCommand::Unblock { connect: address, pin } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = CardUnblock { op_id: protocol::new_op_id(), pin };
            Ok(balance_outcome(single(client.card_unblock(&[event]).await.context("unblocking")?)?))
        }
        CardCommand::Consign { connect: address, pin, partner, commission } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = CardConsign { op_id: protocol::new_op_id(), pin, partner_id: partner, commission_per_mille: commission };
            let result = single(client.card_consign(&[event]).await.context("consigning")?)?;
            Ok(outcome(result.code, format!(", face value {} won", result.amount_won)))
        }
        CardCommand::Register { connect: address, pin, holder, verified_name } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = CardRegister { op_id: protocol::new_op_id(), pin, holder_ref: holder, verified_name };
            let result = single(client.card_register(&[event]).await.context("registering the holder")?)?;
            Ok(outcome(result.code, format!(", balance cap {} won", result.amount_won)))
        }
        CardCommand::Refund { connect: address, pin, account } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = CardRefund { op_id: protocol::new_op_id(), pin, payout_account_ref: account };
            let result = single(client.card_refund(&[event]).await.context("refunding the balance")?)?;
            Ok(outcome(result.code, format!(", paid out {} won, balance {} won", result.amount_won, result.balance_won)))
        }
        CardCommand::Claim { connect: address, pin, password, gift_ref, hint } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = CardClaim { op_id: protocol::new_op_id(), pin, password: password.into_bytes(), gift_recipient_ref: gift_ref, password_hint: hint };
            Ok(balance_outcome(single(client.card_claim(&[event]).await.context("claiming")?)?))
        }
        CardCommand::ForeignImport { connect: address, product, file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let codes: Vec<&str> = text.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
            let client = connect(&address).await?;
            let hello = client.hello("pinswitch-cli").await.context("greeting the switch")?;
            let mut failed = false;
            for chunk in codes.chunks(hello.batch_events_max.max(1) as usize) {
                let events: Vec<ForeignImport> = chunk
                    .iter()
                    .map(|code| ForeignImport { op_id: protocol::new_op_id(), product_id: product, foreign_pin: code.as_bytes().to_vec() })
                    .collect();
                let results = client.foreign_import(&events).await.context("importing foreign PINs")?;
                for (code, result) in chunk.iter().zip(results) {
                    let name = ResultCode::from_u16(result.code).map_or("UNKNOWN", ResultCode::name);
                    println!("{code} {name} ({})", result.code);
                    failed |= result.code != ResultCode::Approved.as_u16();
                }
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        CardCommand::Convert { connect: address, pin, product, password } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = ForeignConvert { op_id: protocol::new_op_id(), pin, password: password.into_bytes(), product_id: product };
            let converted = single(client.foreign_convert(&[event]).await.context("converting")?)?;
            let result = converted.result;
            let foreign_pin = String::from_utf8_lossy(&converted.foreign_pin).into_owned();
            let detail = if foreign_pin.is_empty() {
                format!(", balance {} won", result.balance_won)
            } else {
                format!(", foreign PIN {foreign_pin}, debited {} won, balance {} won", result.amount_won, result.balance_won)
            };
            Ok(outcome(result.code, detail))
        }
    }
}

/// A session id as a call switch logs it: `0x…` hex or decimal.
fn parse_session_id(text: &str) -> anyhow::Result<u128> {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u128::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.with_context(|| format!("{text:?} is not a session id"))
}

async fn call(command: CallCommand) -> anyhow::Result<ExitCode> {
    match command {
        CallCommand::Quote { connect: address, category, to, seconds, units, pin } => {
            let pin = pin.as_deref().map(parse_pin).transpose()?.unwrap_or(0);
            let client = connect(&address).await?;
            let quote = PriceQuote { pin, category, destination: to.into_bytes(), duration_s: seconds, units };
            let quoted = single(client.price_quote(&[quote]).await.context("asking for a quote")?)?;
            if quoted.code != ResultCode::Approved.as_u16() {
                return Ok(outcome(quoted.code, String::new()));
            }
            println!("tariff    {}", quoted.tariff_id);
            println!("rate      {} won per {} s (first {} s), {} won to connect", quoted.rate_won, quoted.increment_s, quoted.first_increment_s, quoted.connect_fee_won);
            println!("event     {} won", quoted.event_won);
            println!("call      {seconds} s cost {} won", quoted.duration_cost_won);
            println!("events    {units} cost {} won", quoted.event_cost_won);
            if pin != 0 {
                println!("card      {} won available, buys {} s", quoted.available_won, quoted.affordable_s);
            }
            Ok(outcome(quoted.code, String::new()))
        }
        CallCommand::Charge { connect: address, pin, category, to, units, password } => {
            let pin = parse_pin(&pin)?;
            let client = connect(&address).await?;
            let event = EventCharge {
                op_id: protocol::new_op_id(),
                pin,
                password: password.unwrap_or_default().into_bytes(),
                category,
                destination: to.into_bytes(),
                units,
            };
            let result = single(client.event_charge(&[event]).await.context("charging the event")?)?;
            Ok(outcome(result.code, format!(", charged {} won, balance {} won", result.amount_won, result.balance_won)))
        }
        CallCommand::Audit { connect: address, owner, sessions, close } => {
            let session_ids = sessions.iter().map(|text| parse_session_id(text)).collect::<anyhow::Result<Vec<u128>>>()?;
            let client = connect(&address).await?;
            let audit = SessionAudit {
                owner_id: owner,
                count: u32::try_from(session_ids.len()).context("too many sessions")?,
                digest: protocol::session_digest(session_ids.iter().copied()),
                list: close,
                session_ids: if close { session_ids } else { Vec::new() },
            };
            let answer = client.session_audit(&audit).await.context("auditing the sessions")?;
            Ok(outcome(answer.code, format!(", {} live on the switch, {} ended", answer.live_count, answer.ended)))
        }
    }
}

/// The result line of an operation whose interesting figure is the balance.
fn balance_outcome(result: OpResult) -> ExitCode {
    outcome(result.code, format!(", balance {} won", result.balance_won))
}

fn single<T>(results: Vec<T>) -> anyhow::Result<T> {
    results.into_iter().next().context("the switch sent no result")
}
