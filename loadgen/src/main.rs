//! `pinswitch-loadgen`: the bundled load generator of Pinswitch. `prepare` issues and activates
//! cards and writes a cards file; `run` drives a workload (open loop at a target rate, or
//! unthrottled), prints a progress line every second and a report at the end (optionally JSON,
//! an HdrHistogram log and an SVG), and with `--validate` checks every reply and every balance;
//! `validate` re-checks a cards file against the switch, e.g. after a crash and restart.
//!
//! Exit status: 0 success, 1 validation failed, 2 the run could not be carried out.

mod adapters;
mod args;
mod calls;
mod cards;
mod cpu;
mod dist;
mod future_set;
mod model;
mod pool;
mod prepare;
mod report;
mod rng;
mod run;
mod stats;
mod svg;
mod validate;
mod workload;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::args::{Cli, Command};
use crate::calls::CallParams;
use crate::prepare::PrepareSpec;
use crate::run::{RunOutputs, RunSpec};
use crate::validate::ValidateSpec;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("pinswitch-loadgen: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("loadgen-worker")
        .enable_all()
        .build()
        .context("building the tokio runtime")
}

/// Runs a command; `Ok(false)` means "completed, but validation failed".
/// `iso8583` and `diameter`: `protocol` requests, each approval debiting `amount_won`.
fn adapter_load(
    args: crate::args::AdapterLoadArgs,
    protocol: adapters::Protocol,
    amount_won: u64,
) -> anyhow::Result<bool> {
    let spec = adapters::AdapterSpec {
        protocol,
        address: args.connect,
        cards_file: args.cards_file,
        connections: args.connections,
        in_flight: args.in_flight,
        duration_s: args.duration_s,
        amount_won,
        seed: args.seed,
        server_pid: args.server_pid,
        report: args.report,
    };
    runtime(args.threads)?.block_on(adapters::run(spec))
}

fn execute(cli: Cli) -> anyhow::Result<bool> {
    // The adapter generators speak their protocols over plain TCP alone: a TLS or QUIC flag
    // would otherwise be silently ignored and the figure taken for what it is not.
    if matches!(cli.command, Command::Iso8583(_) | Command::Diameter(_))
        && (cli.tls.tls_ca.is_some() || cli.tls.quic)
    {
        anyhow::bail!("iso8583 and diameter connect over plain TCP only (no --tls-ca, no --quic)");
    }
    crate::pool::configure_tls(&cli.tls)?;
    match cli.command {
        Command::Prepare(args) => {
            let spec = PrepareSpec {
                address: args.connect,
                card_count: args.cards,
                face_value_won: args.face_value_won,
                load_won: args.load_won,
                connections: args.connections,
                in_flight: args.in_flight,
                batch: args.batch,
            };
            runtime(args.threads)?.block_on(prepare::prepare_to_file(&spec, &args.cards_file))?;
            Ok(true)
        }
        Command::Iso8583(args) => {
            let protocol = adapters::Protocol::Iso8583 { merchant_id: args.merchant_id };
            adapter_load(args.load, protocol, args.amount_won)
        }
        Command::Diameter(args) => {
            let protocol = adapters::Protocol::Diameter { destination: args.destination };
            adapter_load(args.load, protocol, args.event_won)
        }
        Command::Run(args) => {
            let spec = RunSpec {
                address: args.connect.clone(),
                workload: args.workload.clone(),
                dist: args.dist,
                connections: args.connections,
                in_flight: args.in_flight,
                batch: args.batch,
                rate_ops_per_s: args.rate_ops_per_s,
                duration_s: args.duration_s,
                warmup_s: args.warmup_s,
                seed: args.seed,
                validate: args.validate,
                threads: args.threads,
                server_pid: args.server_pid,
                sale_min_won: args.sale_min_won,
                sale_max_won: args.sale_max_won,
                load_amount_won: args.load_amount_won,
                balance_cap_won: args.balance_cap_won,
                write_back: !args.no_write_back,
                calls: CallParams {
                    calls: args.calls,
                    update_interval_s: args.update_interval_s,
                    length: args.call_length,
                    category: args.call_category,
                    destination: args.call_destination.clone().into_bytes(),
                    calls_per_card_max: args.calls_per_card_max,
                    send_password: !args.calls_without_password,
                    tariff: args.tariff,
                },
            };
            let outputs = RunOutputs { report_json: args.report, hdr_log: args.hdr, svg: args.svg };
            runtime(args.threads)?.block_on(async {
                if !args.cards_file.exists() {
                    eprintln!(
                        "run: {} does not exist; preparing {} cards first",
                        args.cards_file.display(),
                        args.cards
                    );
                    let prepare = PrepareSpec {
                        address: args.connect.clone(),
                        card_count: args.cards,
                        face_value_won: args.face_value_won,
                        load_won: args.load_won,
                        connections: args.connections.max(1),
                        in_flight: 4,
                        batch: pool::BULK_BATCH_MAX,
                    };
                    prepare::prepare_to_file(&prepare, &args.cards_file).await?;
                }
                run::run(&spec, &args.cards_file, &outputs).await
            })
        }
        Command::Validate(args) => {
            let spec = ValidateSpec {
                address: args.connect,
                cards_file: args.cards_file,
                connections: args.connections,
                in_flight: args.in_flight,
            };
            runtime(args.threads)?.block_on(validate::validate_command(&spec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The adapter generators refuse TLS and QUIC flags rather than ignore them.
    #[test]
    fn the_adapter_generators_refuse_what_they_do_not_speak() {
        for command in ["iso8583", "diameter"] {
            let cli = Cli::parse_from([
                "pinswitch-loadgen",
                command,
                "--connect",
                "127.0.0.1:1",
                "--cards-file",
                "/nonexistent",
                "--tls-ca",
                "/nonexistent.pem",
            ]);
            let error = execute(cli).expect_err("refused").to_string();
            assert!(error.contains("plain TCP only"), "{command}: {error}");
        }
    }
}
