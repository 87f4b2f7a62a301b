//! `pinswitch-exporter statement` and `serve`. Card usage statements from the exporter's
//! statement index (no exporter state is loaded, so a running `run` does not stand in the way).
//! A statement is asked for by PIN and the index knows cards by their keyed hash, so the PIN is
//! hashed with the switch's PIN key by the same function the switch uses
//! (`pinswitch_core::keys`). The exporter gets that key alone (`pinswitch keys export-pin`),
//! never the password key: a settlement host that is broken into gives away no password MAC.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use pinswitch_core::keys::{KeyFile, PinKeys};
use pinswitch_exporter::merchants::MerchantRegistry;
use pinswitch_exporter::serve::StatementService;
use pinswitch_exporter::{Cutoff, Options, parse_date};
use pinswitch_protocol::{ResultCode, StatementQuery, pin};

use super::exit_code;

/// `serve [--listen ADDR]`: STATEMENT frames (and HELLO, PING) answered until killed.
pub(super) fn serve(
    options: &Options,
    merchants: Option<&Path>,
    pin_key: &Path,
    listen: &str,
) -> anyhow::Result<ExitCode> {
    let service = service(options, merchants, pin_key)?;
    runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        println!("statements on {}", listener.local_addr()?);
        // The address line is how a supervisor (and the tests) learn a port 0 listener's port.
        use std::io::Write as _;
        std::io::stdout().flush()?;
        pinswitch_exporter::serve::serve(listener, std::sync::Arc::new(service)).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `statement PIN [--from DATE] [--to DATE] [--repeat N]`: every page of the card's statement,
/// printed as the seed's FIGS. 10H and 10I show it.
pub(super) fn statement(
    options: &Options,
    merchants: Option<&Path>,
    pin_key: &Path,
    text: &str,
    from: Option<&str>,
    to: Option<&str>,
    repeat: u32,
) -> anyhow::Result<ExitCode> {
    let service = service(options, merchants, pin_key)?;
    let card = parse_pin(text)?;
    let zone = Cutoff { utc_offset_hours: options.config.utc_offset_hours, cutoff_hour: 0 };
    let day = |text: &str| {
        parse_date(text).with_context(|| format!("{text:?} is not a date (YYYY-MM-DD)"))
    };
    let from_ms =
        from.map(day).transpose()?.map_or(0, |day| u64::try_from(zone.start_ms(day)).unwrap_or(0));
    let to_ms =
        to.map(day).transpose()?.map_or(0, |day| u64::try_from(zone.end_ms(day)).unwrap_or(0));
    let mut query = StatementQuery { pin: card, from_ms, to_ms, cursor: 0, limit: 0 };
    if repeat > 0 {
        time_queries(&service, &query, repeat);
    }
    let first = service.answer(&query);
    if first.code != ResultCode::Approved.as_u16() {
        let name = ResultCode::from_u16(first.code).map_or("UNKNOWN", ResultCode::name);
        println!("{name} ({})", first.code);
        return Ok(exit_code(ResultCode::from_u16(first.code).is_some_and(ResultCode::is_success)));
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

/// `--repeat N`: the first page asked for N times, its latency percentiles on stderr.
fn time_queries(service: &StatementService, query: &StatementQuery, repeat: u32) {
    let mut micros: Vec<u128> = (0..repeat)
        .map(|_| {
            let started = std::time::Instant::now();
            std::hint::black_box(service.answer(query));
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

/// The statement index opened for reading, with the switch's PIN hash and the merchant names.
fn service(
    options: &Options,
    merchants: Option<&Path>,
    pin_key: &Path,
) -> anyhow::Result<StatementService> {
    let key = read_pin_key(pin_key)?;
    let shard_count = pinswitch_exporter::exporter::read_shard_count(&options.data_dir)?;
    let registry = MerchantRegistry::load(merchants)?;
    Ok(StatementService::open(
        &options.state_dir,
        shard_count,
        registry,
        options.config.statements.clone(),
        Box::new(move |pin| {
            let names = key.names(pin, shard_count);
            std::iter::once(names.newest).chain(names.older).collect()
        }),
    )?)
}

/// The switch's PIN key, read and never created (new keys would name no card the switch
/// knows). The switch's full key file is refused: the exporter has no use for the password key
/// and must not hold it.
fn read_pin_key(path: &Path) -> anyhow::Result<PinKeys> {
    let export = "make it with `pinswitch keys export-pin --out FILE` and pass --pin-key FILE";
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            bail!("{} not found: statements need the switch's PIN key; {export}", path.display())
        }
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    match KeyFile::parse(&bytes) {
        Some(KeyFile::PinOnly(key)) => Ok(key),
        Some(KeyFile::Both(_)) => bail!(
            "{} is the switch's full key file (with the password key), which the exporter never \
             takes; {export}",
            path.display()
        ),
        None => bail!("key file {} is damaged; refusing to start", path.display()),
    }
}

fn parse_pin(text: &str) -> anyhow::Result<u64> {
    match pin::parse(text) {
        Some(value) if pin::is_valid(value) => Ok(value),
        _ => bail!("{text:?} is not a valid 16-digit PIN"),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")
}
