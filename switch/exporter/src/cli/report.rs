//! `pinswitch-exporter status`, `period` and `month`. What the exporter's state says, read
//! without holding it (a running `run` may hold it meanwhile); the files of a period or a month
//! are written from the state, final when closed, provisional otherwise.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use pinswitch_exporter::{Exporter, Options, parse_date};

use super::exit_code;

/// `status`: cursors, heads and lag, the trial balance and the safeguarding reconciliation.
pub(super) fn status(options: Options) -> anyhow::Result<ExitCode> {
    print_status(&Exporter::open_read_only(options)?)
}

/// Prints the status; the exit code says whether the safeguarding reconciliation holds.
pub(super) fn print_status(exporter: &Exporter) -> anyhow::Result<ExitCode> {
    let status = exporter.status()?;
    print!("{status}");
    Ok(exit_code(status.reconciled()))
}

/// `period DATE [--out DIR]`: the period's files, and its summary printed.
pub(super) fn period(options: Options, date: &str, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let exporter = Exporter::open_read_only(options)?;
    let Some(day) = parse_date(date) else { bail!("{date:?} is not a date (YYYY-MM-DD)") };
    let (dir, is_final) = exporter.render_period(day, out)?;
    let summary =
        std::fs::read_to_string(dir.join("summary.txt")).context("reading the period summary")?;
    print!("{summary}");
    println!("{} files in {}", if is_final { "final" } else { "provisional" }, dir.display());
    Ok(ExitCode::SUCCESS)
}

/// `month YYYY-MM [--out DIR]`: the mobile-operator remittance, printed as well.
pub(super) fn month(options: Options, month: &str, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let exporter = Exporter::open_read_only(options)?;
    let Some(day) = parse_date(&format!("{month}-01")) else {
        bail!("{month:?} is not a month (YYYY-MM)")
    };
    let (year, month_number, _) = pinswitch_exporter::calendar::civil_from_days(day);
    let (dir, is_final) = exporter.render_month(year, month_number, out)?;
    print!(
        "{}",
        std::fs::read_to_string(dir.join("operator-remittance.csv"))
            .context("reading the remittance")?
    );
    println!("{} remittance in {}", if is_final { "final" } else { "provisional" }, dir.display());
    Ok(ExitCode::SUCCESS)
}
