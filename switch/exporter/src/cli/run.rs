//! `pinswitch-exporter run`. The journals from the cursors to their end (or to
//! `--max-records`), then every finished period closed; with `--follow SECONDS` the same, kept
//! up as the journals grow, with a line a second on how far behind the switch the exporter runs.

use std::cell::{Cell, RefCell};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use pinswitch_exporter::{Exporter, Options, RunReport, date_string};

use super::report::print_status;
use super::wall_clock_ms;

/// `run [--max-records N]`: one pass.
pub(super) fn run(options: Options, max_records: Option<u64>) -> anyhow::Result<ExitCode> {
    let mut exporter = Exporter::open(options)?;
    let report = exporter.run(max_records, wall_clock_ms())?;
    let applied: Vec<String> = report
        .applied
        .iter()
        .enumerate()
        .map(|(shard, count)| format!("shard {shard}: {count}"))
        .collect();
    println!("applied {} records ({})", report.applied.iter().sum::<u64>(), applied.join(", "));
    print_closed(&report);
    if report.stopped_early {
        println!("stopped at --max-records; run again to continue");
    }
    print_status(&exporter)
}

/// `run --follow SECONDS`: follows the journals, printing a line a second (records applied,
/// their rate, the oldest record's age at apply: now minus its journaled time, on the same
/// machine's clock) and at the end the age percentiles over the whole run.
pub(super) fn follow(options: Options, seconds: u64, poll_ms: u64) -> anyhow::Result<ExitCode> {
    let mut exporter = Exporter::open(options)?;
    let started = Instant::now();
    let ages_ms = RefCell::new(Vec::new());
    let window_max_age_ms = Cell::new(0u64);
    let mut last = (Instant::now(), 0u64);
    let mut observe = |time_ms: u64| {
        let age_ms = wall_clock_ms().saturating_sub(time_ms);
        ages_ms.borrow_mut().push(u32::try_from(age_ms).unwrap_or(u32::MAX));
        window_max_age_ms.set(window_max_age_ms.get().max(age_ms));
    };
    let mut keep_going = |applied: u64| {
        let elapsed = last.0.elapsed();
        if elapsed >= Duration::from_secs(1) {
            let rate = (applied - last.1) as f64 / elapsed.as_secs_f64();
            println!(
                "t={:>4}s  applied {applied:>10}  {rate:>9.0} records/s  \
                 oldest record applied was {} ms old",
                started.elapsed().as_secs(),
                window_max_age_ms.replace(0)
            );
            last = (Instant::now(), applied);
        }
        started.elapsed() < Duration::from_secs(seconds)
    };
    let report = exporter.follow(
        Duration::from_millis(poll_ms),
        &wall_clock_ms,
        &mut keep_going,
        &mut observe,
    )?;
    let mut ages = ages_ms.into_inner();
    ages.sort_unstable();
    // The nearest rank, in integers: index (count - 1) x per mille / 1000, rounded half up.
    let at = |per_mille: usize| {
        ages.get((ages.len().saturating_sub(1) * per_mille + 500) / 1000).copied().unwrap_or(0)
    };
    let applied: u64 = report.applied.iter().sum();
    println!(
        "followed {:.1} s: applied {applied} records ({:.0}/s); \
         age of a record when applied: p50 {} ms, p99 {} ms, max {} ms",
        started.elapsed().as_secs_f64(),
        applied as f64 / started.elapsed().as_secs_f64(),
        at(500),
        at(990),
        at(1000)
    );
    print_closed(&report);
    print_status(&exporter)
}

fn print_closed(report: &RunReport) {
    for day in &report.closed {
        println!("closed period {}", date_string(*day));
    }
}
