//! `pinswitch export …`: the settlement exporter's commands (the logic is in the
//! pinswitch-exporter crate; this is its command line).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use pinswitch_protocol::{self as protocol, ResultCode, pin};

use super::{connect, outcome, parse_pin};
use crate::config::Config;

#[derive(clap::Args)]
pub(super) struct ExportPlaces {
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
pub(super) enum ExportCommand {
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

/// `pinswitch export …`: the logic is in the pinswitch-exporter crate.
pub(super) fn export(places: ExportPlaces, command: ExportCommand) -> anyhow::Result<ExitCode> {
    use pinswitch_exporter::{ExportConfig, Exporter, Options, date_string, parse_date};
    let config = Config::load(places.config.as_deref())?;
    let data_dir = places.data.unwrap_or(config.server.data_dir.clone());
    let state_dir = places.state.unwrap_or_else(|| data_dir.join("export"));
    let export_config = ExportConfig::load(places.export_config.as_deref())?;
    let options = Options {
        data_dir,
        state_dir,
        engine: pinswitch_core::EngineConfig::production(),
        config: export_config,
    };
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
            let applied: Vec<String> = report
                .applied
                .iter()
                .enumerate()
                .map(|(shard, count)| format!("shard {shard}: {count}"))
                .collect();
            println!(
                "applied {} records ({})",
                report.applied.iter().sum::<u64>(),
                applied.join(", ")
            );
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
            let summary = std::fs::read_to_string(dir.join("summary.txt"))
                .context("reading the period summary")?;
            print!("{summary}");
            println!(
                "{} files in {}",
                if is_final { "final" } else { "provisional" },
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        ExportCommand::Deposits { camt, orders, connect: address } => {
            use pinswitch_exporter::deposits;
            let read = |path: &PathBuf| {
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
            };
            let credits = deposits::parse_camt054(&read(&camt)?)
                .map_err(|why| anyhow::anyhow!("{}: {why}", camt.display()))?;
            let orders = deposits::parse_orders(&read(&orders)?)
                .map_err(|why| anyhow::anyhow!("{}: {why}", orders.display()))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the client runtime")?;
            let report = runtime.block_on(async {
                let client = connect(&address).await?;
                anyhow::Ok(
                    deposits::settle(exporter.state_dir(), &client, &orders, &credits).await?,
                )
            })?;
            for (order, card_pin) in &report.sold {
                println!("sold {order}  {}", pin::format(*card_pin));
            }
            for (order, code) in &report.declined {
                println!(
                    "declined {order}: {} ({code})",
                    ResultCode::from_u16(*code).map_or("UNKNOWN", ResultCode::name)
                );
            }
            for order in &report.in_flight {
                println!("in flight since an interrupted run, resolve by hand: {order}");
            }
            println!(
                "already done: {}, pending: {}",
                report.already_done.len(),
                report.pending.join(" ")
            );
            for credit in &report.unmatched {
                println!(
                    "unmatched credit {} of {} won ({} {})",
                    credit.entry_ref, credit.amount_won, credit.end_to_end_id, credit.remittance
                );
            }
            Ok(if report.declined.is_empty() && report.in_flight.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        ExportCommand::Statement { .. } | ExportCommand::Serve { .. } => {
            unreachable!("answered by statements()")
        }
        ExportCommand::Month { month, out } => {
            let Some(day) = parse_date(&format!("{month}-01")) else {
                bail!("{month:?} is not a month (YYYY-MM)")
            };
            let (year, month_number, _) = pinswitch_exporter::calendar::civil_from_days(day);
            let (dir, is_final) = exporter.render_month(year, month_number, out.as_deref())?;
            print!(
                "{}",
                std::fs::read_to_string(dir.join("operator-remittance.csv"))
                    .context("reading the remittance")?
            );
            println!(
                "{} remittance in {}",
                if is_final { "final" } else { "provisional" },
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `export run --follow SECONDS`: follows the journals, printing a line a second (records
/// applied, their rate, the oldest record's age at apply: now minus its journaled time, on the
/// same machine's clock) and at the end the age percentiles over the whole run.
fn follow(
    exporter: &mut pinswitch_exporter::Exporter,
    seconds: u64,
    poll_ms: u64,
) -> anyhow::Result<pinswitch_exporter::RunReport> {
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
            println!(
                "t={:>4}s  applied {applied:>10}  {rate:>9.0} records/s  oldest record applied was {} ms old",
                started.elapsed().as_secs(),
                window_max_age_ms.replace(0)
            );
            last = (Instant::now(), applied);
        }
        started.elapsed() < Duration::from_secs(seconds)
    };
    let report =
        exporter.follow(Duration::from_millis(poll_ms), &now_ms, &mut keep_going, &mut observe)?;
    let mut ages = ages_ms.into_inner();
    ages.sort_unstable();
    let at = |quantile: f64| {
        ages.get(((ages.len() as f64 - 1.0) * quantile).round() as usize).copied().unwrap_or(0)
    };
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
fn statements(
    options: &pinswitch_exporter::Options,
    merchants: Option<&std::path::Path>,
    command: ExportCommand,
) -> anyhow::Result<ExitCode> {
    use pinswitch_exporter::merchants::MerchantRegistry;
    use pinswitch_exporter::parse_date;
    use pinswitch_exporter::serve::StatementService;
    let key_path = options.data_dir.join(pinswitch_core::keys::KEY_FILE);
    if !key_path.exists() {
        bail!("{} not found: statements need the switch's PIN key", key_path.display());
    }
    let keys = crate::keys::load_or_create(&options.data_dir)?;
    let shard_count = pinswitch_exporter::exporter::read_shard_count(&options.data_dir)?;
    let registry = MerchantRegistry::load(merchants)?;
    let service = StatementService::open(
        &options.state_dir,
        shard_count,
        registry,
        options.config.statements.clone(),
        Box::new(move |pin| keys.pin_hash(pin)),
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    match command {
        ExportCommand::Serve { listen } => runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            println!("statements on {}", listener.local_addr()?);
            use std::io::Write as _;
            std::io::stdout().flush()?;
            pinswitch_exporter::serve::serve(listener, std::sync::Arc::new(service)).await?;
            Ok(ExitCode::SUCCESS)
        }),
        ExportCommand::Statement { pin: text, from, to, repeat } => {
            let card = parse_pin(&text)?;
            let zone = pinswitch_exporter::Cutoff {
                utc_offset_hours: options.config.utc_offset_hours,
                cutoff_hour: 0,
            };
            let day = |text: &str| {
                parse_date(text).with_context(|| format!("{text:?} is not a date (YYYY-MM-DD)"))
            };
            let from_ms = from
                .as_deref()
                .map(day)
                .transpose()?
                .map_or(0, |day| u64::try_from(zone.start_ms(day)).unwrap_or(0));
            let to_ms = to
                .as_deref()
                .map(day)
                .transpose()?
                .map_or(0, |day| u64::try_from(zone.end_ms(day)).unwrap_or(0));
            let mut query =
                protocol::StatementQuery { pin: card, from_ms, to_ms, cursor: 0, limit: 0 };
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
                eprintln!(
                    "{repeat} queries: p50 {} us, p99 {} us, max {} us",
                    at(50),
                    at(99),
                    micros[micros.len() - 1]
                );
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
                next =
                    if page.code == ResultCode::Approved.as_u16() { page.next_cursor } else { 0 };
            }
            print!(
                "{}",
                pinswitch_exporter::statement::render(&pin::format(card), &first, &lines, zone)
            );
            Ok(ExitCode::SUCCESS)
        }
        _ => unreachable!("only statement and serve come here"),
    }
}
