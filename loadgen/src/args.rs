//! Command-line arguments of `pinswitch-loadgen`: `prepare` (issue and activate cards, write the
//! cards file), `run` (drive a workload, measure, optionally validate) and `validate` (check a
//! cards file against the switch). Every quantity names its unit.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::calls::{CallLength, TariffSpec};
use crate::dist::DistSpec;
use crate::workload::WorkloadSpec;

#[derive(Parser, Debug)]
#[command(
    name = "pinswitch-loadgen",
    version,
    about = "Load generator and validator for the Pinswitch prepaid-card switch",
    long_about = "Prepares cards, drives open-loop (or unthrottled) workloads over the Pinswitch \
                  protocol with latency measured from each frame's scheduled send time, and \
                  validates every card balance against the replies afterwards."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// TLS to the switch (ops/trust.md): every connection of every command uses it when given.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct TlsArgs {
    /// Connect with TLS, trusting the authority in this PEM file.
    #[arg(long, global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS: this client certificate (PEM) ...
    #[arg(long, global = true, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// ... and its private key (PEM).
    #[arg(long, global = true, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The name the switch's certificate carries.
    #[arg(long, global = true, default_value = "localhost")]
    pub tls_name: String,
    /// The address is the switch's QUIC (UDP) address: every connection is a QUIC connection
    /// (one stream each) with the TLS flags above.
    #[arg(long, global = true, requires = "tls_ca")]
    pub quic: bool,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Issue and activate cards (optionally recharge them) and write the cards file.
    Prepare(PrepareArgs),
    /// Drive a workload against the switch and report throughput and latency.
    Run(Box<RunArgs>),
    /// Check the balances a cards file expects against the switch.
    Validate(ValidateArgs),
    /// One-event ISO 8583 0200 sales against an `[iso8583]` listener (clear PIN blocks).
    Iso8583(Iso8583Args),
    /// One-event Diameter CCR EVENTs against a `[diameter]` listener.
    Diameter(DiameterArgs),
}

/// What `iso8583` and `diameter` share: where, which cards, how many connections, how long.
#[derive(Args, Debug, Clone)]
pub(crate) struct AdapterLoadArgs {
    /// The switch's listener for the protocol.
    #[arg(long)]
    pub connect: String,
    /// The cards file (`prepare`'s); the approved requests are written back to it.
    #[arg(long = "cards-file")]
    pub cards_file: PathBuf,
    /// Connections, each one terminal or peer.
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// Requests outstanding per connection.
    #[arg(long = "in-flight", default_value_t = 1)]
    pub in_flight: usize,
    /// Seconds of traffic.
    #[arg(long = "duration", default_value_t = 10)]
    pub duration_s: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The switch's process id: the report gives its CPU per operation.
    #[arg(long = "server-pid")]
    pub server_pid: Option<u32>,
    /// Where to write the JSON report.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Tokio worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct Iso8583Args {
    #[command(flatten)]
    pub load: AdapterLoadArgs,
    /// Each sale's amount (won).
    #[arg(long = "amount", default_value_t = 100)]
    pub amount_won: u64,
    /// The merchant id sent as DE 42.
    #[arg(long = "merchant", default_value_t = 1001)]
    pub merchant_id: u64,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct DiameterArgs {
    #[command(flatten)]
    pub load: AdapterLoadArgs,
    /// The service number each event is of (production tariff 4: "15881234", 500 won).
    #[arg(long, default_value = "15881234")]
    pub destination: String,
    /// What one event costs by the switch's tariff (won), for the write-back.
    #[arg(long = "event-won", default_value_t = 500)]
    pub event_won: u64,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct PrepareArgs {
    /// Switch address.
    #[arg(long, default_value = "127.0.0.1:7420")]
    pub connect: String,
    /// How many cards to issue.
    #[arg(long, default_value_t = 10_000)]
    pub cards: u32,
    /// Face value (won) of the product to issue: 5000, 10000, 20000, 30000, 50000 or 100000.
    #[arg(long = "face-value", default_value_t = 10_000)]
    pub face_value_won: u64,
    /// Recharge each card by this much (won, a multiple of 10,000) after activation; 0 = none.
    #[arg(long = "load-won", default_value_t = 0)]
    pub load_won: u64,
    /// Where to write the cards (`*.txt` = text, otherwise compact binary).
    #[arg(long = "cards-file")]
    pub cards_file: PathBuf,
    /// Connections used for issuing.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Frames in flight per connection.
    #[arg(long = "in-flight", default_value_t = 4)]
    pub in_flight: usize,
    /// Events per frame (at most 8,000 and the server's limit).
    #[arg(long, default_value_t = 8_000)]
    pub batch: usize,
    /// Tokio worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct RunArgs {
    /// Switch address.
    #[arg(long, default_value = "127.0.0.1:7420")]
    pub connect: String,
    /// The cards file; prepared first (with --cards, --face-value, --load-won) when absent.
    #[arg(long = "cards-file")]
    pub cards_file: PathBuf,
    /// Cards to prepare when the cards file does not exist.
    #[arg(long, default_value_t = 10_000)]
    pub cards: u32,
    /// Face value (won) of cards prepared implicitly.
    #[arg(long = "face-value", default_value_t = 10_000)]
    pub face_value_won: u64,
    /// Recharge of cards prepared implicitly (won, multiple of 10,000).
    #[arg(long = "load-won", default_value_t = 0)]
    pub load_won: u64,
    /// sale | gateway | recharge | calls | mix:sale=8,gateway=1,recharge=1
    #[arg(long, default_value = "sale")]
    pub workload: WorkloadSpec,
    /// Card choice: uniform | zipf:0.99 | hot:0.01,0.9 (1% of cards get 90% of operations).
    #[arg(long, default_value = "uniform")]
    pub dist: DistSpec,
    /// Connections (each with its own pipeline and schedule).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Frames in flight per connection.
    #[arg(long = "in-flight", default_value_t = 8)]
    pub in_flight: usize,
    /// Events per frame.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Target operations per second over all connections (open loop, latency measured from
    /// each frame's scheduled send); 0 = unthrottled (closed loop).
    #[arg(long = "rate", default_value_t = 0)]
    pub rate_ops_per_s: u64,
    /// Measured run length in seconds (after the warmup).
    #[arg(long = "duration", default_value_t = 10)]
    pub duration_s: u64,
    /// Seconds run before measuring starts.
    #[arg(long = "warmup", default_value_t = 0)]
    pub warmup_s: u64,
    /// Seed of card choice, amounts and operation kinds.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Track every card's expected balance, check every reply and all balances at the end.
    #[arg(long)]
    pub validate: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write per-second latency histograms as an HdrHistogram V2 interval log.
    #[arg(long)]
    pub hdr: Option<PathBuf>,
    /// Write a self-contained SVG with latency and throughput charts.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Tokio worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// The switch's process id: its CPU time over the measured window is reported beside the
    /// generator's (read from /proc/PID/stat).
    #[arg(long = "server-pid", value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Smallest SALE/AUTHORIZE amount (won).
    #[arg(long = "sale-min-won", default_value_t = 10)]
    pub sale_min_won: u64,
    /// Largest SALE/AUTHORIZE amount (won).
    #[arg(long = "sale-max-won", default_value_t = 500)]
    pub sale_max_won: u64,
    /// Amount of each CARD_LOAD (won, a multiple of the recharge unit).
    #[arg(long = "load-amount-won", default_value_t = 10_000)]
    pub load_amount_won: u64,
    /// The switch's balance cap (won); loads that would pass it are steered to other cards.
    #[arg(long = "balance-cap-won", default_value_t = 500_000)]
    pub balance_cap_won: u64,
    /// Do not write the expected balances back to the cards file at the end.
    #[arg(long = "no-write-back")]
    pub no_write_back: bool,
    /// calls: concurrent calls kept in progress (over all connections).
    #[arg(long = "calls", default_value_t = 100_000)]
    pub calls: u64,
    /// calls: simulated seconds between a call's reports (SESSION_UPDATE), also the grant asked.
    #[arg(long = "update-interval-s", default_value_t = 60)]
    pub update_interval_s: u32,
    /// calls: call length in simulated seconds: exp:MEAN | fixed:S | uniform:MIN,MAX.
    #[arg(long = "call-length", default_value = "exp:120")]
    pub call_length: CallLength,
    /// calls: the service category (2 = telephone call).
    #[arg(long = "call-category", default_value_t = 2)]
    pub call_category: u8,
    /// calls: the called number (1 to 15 digits).
    #[arg(long = "call-destination", default_value = "01012345678")]
    pub call_destination: String,
    /// calls: a new call avoids cards with this many calls in progress (the switch's
    /// sessions_per_card_max).
    #[arg(long = "calls-per-card-max", default_value_t = 4)]
    pub calls_per_card_max: u16,
    /// calls: send SESSION_START without the card's password.
    #[arg(long = "calls-without-password")]
    pub calls_without_password: bool,
    /// calls: the switch's tariff for the destination, CONNECT_FEE_WON,RATE_WON,INCREMENT_S[,FIRST_S]
    /// (production "010": 10,12,6,0); every ended call's debits are checked against it.
    #[arg(long = "tariff")]
    pub tariff: Option<TariffSpec>,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct ValidateArgs {
    /// Switch address.
    #[arg(long, default_value = "127.0.0.1:7420")]
    pub connect: String,
    /// The cards file to check.
    #[arg(long = "cards-file")]
    pub cards_file: PathBuf,
    /// Connections used for reading.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Frames in flight per connection.
    #[arg(long = "in-flight", default_value_t = 4)]
    pub in_flight: usize,
    /// Tokio worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_consistent_and_parses_a_full_run() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "pinswitch-loadgen",
            "run",
            "--connect",
            "127.0.0.1:7499",
            "--cards-file",
            "/tmp/cards.bin",
            "--workload",
            "mix:sale=8,gateway=1,recharge=1",
            "--dist",
            "hot:0.01,0.9",
            "--rate",
            "50000",
            "--validate",
            "--report",
            "r.json",
            "--server-pid",
            "4242",
        ])
        .expect("parses");
        let Command::Run(run) = cli.command else { panic!("not a run") };
        assert_eq!(run.rate_ops_per_s, 50_000);
        assert_eq!(run.workload.parts.len(), 3);
        assert!(run.validate);
        assert_eq!(run.server_pid, Some(4242));
        assert_eq!(run.calls, 100_000);
        assert_eq!(run.call_length, CallLength::Exp { mean_s: 120 });
        assert!(run.tariff.is_none());
        let cli = Cli::try_parse_from([
            "pinswitch-loadgen",
            "run",
            "--cards-file",
            "x",
            "--workload",
            "calls",
            "--calls",
            "500",
            "--update-interval-s",
            "30",
            "--call-length",
            "uniform:10,300",
            "--tariff",
            "10,12,6,0",
        ])
        .expect("parses");
        let Command::Run(run) = cli.command else { panic!("not a run") };
        assert!(run.workload.is_calls());
        assert_eq!(run.server_pid, None);
        assert_eq!((run.calls, run.update_interval_s), (500, 30));
        assert_eq!(run.tariff.map(|tariff| tariff.rate_won), Some(12));
        assert!(
            Cli::try_parse_from([
                "pinswitch-loadgen",
                "run",
                "--cards-file",
                "x",
                "--dist",
                "pareto"
            ])
            .is_err()
        );
    }
}
