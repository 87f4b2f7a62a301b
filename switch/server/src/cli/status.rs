//! `pinswitch status`: asks a running switch's HTTP port whether it is ready and prints a line
//! per shard from its metrics (cards, liability, journal, storage, last snapshot), for an
//! operator at a terminal or a script (the exit code is 0 only when the switch is ready).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

/// How long each request may take.
const STATUS_TIMEOUT_MS: u64 = 5_000;
/// The most bytes of one answer read.
const STATUS_ANSWER_BYTES_MAX: u64 = 16 << 20;

pub(super) fn status(http: &str) -> anyhow::Result<ExitCode> {
    let (ready_status, ready) = get(http, "/health/ready")?;
    let (metrics_status, metrics) = get(http, "/metrics")?;
    if metrics_status != 200 {
        bail!("{http}/metrics answered {metrics_status}");
    }
    println!("{}", ready.trim_end());
    let value = |name: &str, shard: usize| -> String {
        let prefix = format!("{name}{{shard=\"{shard}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .unwrap_or("?")
            .to_string()
    };
    let uptime = metrics
        .lines()
        .find_map(|line| line.strip_prefix("pinswitch_uptime_seconds "))
        .unwrap_or("?");
    println!("up {uptime} s");
    let shards = metrics.lines().filter(|line| line.starts_with("pinswitch_cards{")).count();
    for shard in 0..shards {
        let storage = match value("pinswitch_storage_state", shard).as_str() {
            "0" => "ready",
            "1" => "short (no space for the next segment)",
            "2" => "FULL (writes refused)",
            _ => "?",
        };
        println!(
            "shard {shard}: {} cards, balances {} won, held {} won, {} op records, {} live \
             sessions, journal durable to {}, {} connections, storage {storage}, {} snapshots \
             written ({} failed)",
            value("pinswitch_cards", shard),
            value("pinswitch_balances_won", shard),
            value("pinswitch_held_won", shard),
            value("pinswitch_op_records", shard),
            value("pinswitch_sessions_live", shard),
            value("pinswitch_journal_durable_seq", shard),
            value("pinswitch_connections_open", shard),
            value("pinswitch_snapshots_written", shard),
            value("pinswitch_snapshots_failed", shard),
        );
    }
    Ok(if ready_status == 200 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// One GET over a fresh connection: the status code and the body.
fn get(http: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let timeout = Duration::from_millis(STATUS_TIMEOUT_MS);
    let address = std::net::ToSocketAddrs::to_socket_addrs(http)
        .with_context(|| format!("resolving {http}"))?
        .next()
        .with_context(|| format!("{http} names no address"))?;
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .with_context(|| format!("connecting to the switch's HTTP port {http}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.1\r\nhost: {http}\r\nconnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream
        .take(STATUS_ANSWER_BYTES_MAX)
        .read_to_string(&mut answer)
        .with_context(|| format!("reading {path} from {http}"))?;
    let (head, body) = answer.split_once("\r\n\r\n").context("an answer without a head")?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("an odd status line from {http}: {head:?}"))?;
    Ok((code, body.to_string()))
}
