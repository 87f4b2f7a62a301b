//! `pinswitch-loadgen iso8583`: one-event ISO 8583 traffic against the switch's `[iso8583]`
//! listener, as an acquirer sends it: each connection a terminal (DE 41) keeping `in_flight`
//! 0200 sales of `amount_won` outstanding, matched back by their trace number (DE 11), each on
//! a card drawn uniformly from the cards file with its password as a clear format-0 PIN block
//! (the listener must say `pin_block = "clear"`). Closed loop for `duration_s`; then every
//! sale still in flight is awaited, the approved ones are written back to the cards file (so
//! `validate` still holds), and the report gives the same figures as `run`'s (ops/s, latency,
//! CPU per operation of the generator and the switch, declines by DE 39), in JSON and text.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use pinswitch_protocol::iso8583::{self, Encoding, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cards::{self, CardRecord};
use crate::cpu::{CpuFigures, CpuWindow};
use crate::rng::Rng;
use crate::stats::{duration_us, new_histogram, record};

/// What one `iso8583` run does.
pub(crate) struct IsoSpec {
    pub address: String,
    pub cards_file: PathBuf,
    pub connections: usize,
    pub in_flight: usize,
    pub duration_s: u64,
    pub amount_won: u64,
    pub merchant_id: u64,
    pub seed: u64,
    pub server_pid: Option<u32>,
    pub report: Option<PathBuf>,
}

/// What one connection measured: latencies, DE 39 counts, and the cards its approvals debited.
struct Measured {
    latency_us: Histogram<u64>,
    codes: BTreeMap<String, u64>,
    debited: Vec<usize>,
}

/// Runs the spec; true when every answer came (declines included).
pub(crate) async fn run(spec: IsoSpec) -> anyhow::Result<bool> {
    let mut file = cards::read(&spec.cards_file)?;
    anyhow::ensure!(!file.cards.is_empty(), "the cards file holds no cards");
    let cards = Arc::new(file.cards.clone());
    let mut cpu = CpuWindow::new(spec.server_pid).map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(spec.duration_s);
    cpu.start();
    let mut tasks = Vec::new();
    for connection in 0..spec.connections {
        let stream = TcpStream::connect(&spec.address)
            .await
            .with_context(|| format!("connecting to {}", spec.address))?;
        stream.set_nodelay(true)?;
        let rng = Rng::stream(spec.seed, connection as u64);
        let terminal = format!("LG{connection:06}");
        let (cards, in_flight) = (cards.clone(), spec.in_flight.max(1));
        let (amount_won, merchant_id) = (spec.amount_won, spec.merchant_id);
        tasks.push(tokio::spawn(async move {
            terminal_loop(
                stream,
                cards,
                rng,
                terminal,
                in_flight,
                amount_won,
                merchant_id,
                deadline,
            )
            .await
        }));
    }
    let mut latency_us = new_histogram();
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    let mut complete = true;
    for task in tasks {
        match task.await.context("a connection task")? {
            Ok(measured) => {
                latency_us.add(&measured.latency_us).context("merging latencies")?;
                for (code, count) in measured.codes {
                    *codes.entry(code).or_default() += count;
                }
                for card in measured.debited {
                    let record: &mut CardRecord = &mut file.cards[card];
                    record.expected_balance_won -= i64::try_from(spec.amount_won)?;
                }
            }
            Err(error) => {
                eprintln!("iso8583: a connection failed: {error:#}");
                complete = false;
            }
        }
    }
    cpu.finish();
    let elapsed_s = started.elapsed().as_secs_f64();
    if complete {
        cards::write(&spec.cards_file, &file)?;
    }
    let answered = latency_us.len();
    let figures = cpu.figures();
    let declines: BTreeMap<_, _> = codes.iter().filter(|(code, _)| *code != "00").collect();
    let report = serde_json::json!({
        "protocol": "iso8583",
        "connections": spec.connections,
        "in_flight": spec.in_flight,
        "ops": answered,
        "ops_per_s": answered as f64 / elapsed_s,
        "p50_us": latency_us.value_at_quantile(0.50),
        "p99_us": latency_us.value_at_quantile(0.99),
        "max_us": latency_us.max(),
        "loadgen_cpu_us_per_op": CpuFigures::us_per_op(figures.loadgen_cpu_s, answered),
        "server_cpu_us_per_op": CpuFigures::us_per_op(figures.server_cpu_s, answered),
        "errors_by_code": declines,
        "de39": codes,
    });
    println!(
        "iso8583: {answered} answers in {elapsed_s:.1} s = {:.0}/s, p50 {} µs, p99 {} µs, \
         DE 39 {}",
        answered as f64 / elapsed_s,
        latency_us.value_at_quantile(0.50),
        latency_us.value_at_quantile(0.99),
        report["de39"]
    );
    if let Some(path) = &spec.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(complete)
}

/// One terminal: keeps `in_flight` sales outstanding until `deadline`, then takes the rest
/// of its answers.
#[expect(clippy::too_many_arguments, reason = "one terminal's whole configuration")]
async fn terminal_loop(
    mut stream: TcpStream,
    cards: Arc<Vec<CardRecord>>,
    mut rng: Rng,
    terminal: String,
    in_flight: usize,
    amount_won: u64,
    merchant_id: u64,
    deadline: Instant,
) -> anyhow::Result<Measured> {
    let mut measured =
        Measured { latency_us: new_histogram(), codes: BTreeMap::new(), debited: Vec::new() };
    // Trace number → (card, sent at).
    let mut outstanding: HashMap<u32, (usize, Instant)> = HashMap::new();
    let mut stan = 0u32;
    let mut buffer = Vec::new();
    loop {
        while outstanding.len() < in_flight && Instant::now() < deadline {
            stan = stan % 999_999 + 1;
            let card = rng.index_below(cards.len());
            let sale = sale(&cards[card], stan, &terminal, amount_won, merchant_id)?;
            buffer.clear();
            buffer.extend_from_slice(&u16::try_from(sale.len())?.to_be_bytes());
            buffer.extend_from_slice(&sale);
            stream.write_all(&buffer).await.context("sending a sale")?;
            outstanding.insert(stan, (card, Instant::now()));
        }
        if outstanding.is_empty() {
            return Ok(measured);
        }
        let mut prefix = [0u8; 2];
        stream.read_exact(&mut prefix).await.context("reading an answer")?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        stream.read_exact(&mut answer).await.context("reading an answer")?;
        let answer = iso8583::decode(&answer, Encoding::Ascii).context("decoding an answer")?;
        let trace = answer
            .get(11)
            .and_then(|trace| std::str::from_utf8(trace).ok()?.parse::<u32>().ok())
            .context("an answer without its trace number")?;
        let (card, sent_at) = outstanding.remove(&trace).context("an answer to no request")?;
        record(&mut measured.latency_us, duration_us(sent_at.elapsed()), 1);
        let code = String::from_utf8_lossy(answer.get(39).unwrap_or(b"??")).to_string();
        if code == "00" {
            measured.debited.push(card);
        }
        *measured.codes.entry(code).or_default() += 1;
    }
}

/// An 0200 sale of `card` (its password as a clear format-0 PIN block).
fn sale(
    card: &CardRecord,
    stan: u32,
    terminal: &str,
    amount_won: u64,
    merchant_id: u64,
) -> anyhow::Result<Vec<u8>> {
    // The PAN is the card's PIN, all sixteen digits (leading zeros count).
    let pan = format!("{:016}", card.pin);
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let mut message = Message::new(*b"0200");
    message.set(2, pan.clone().into_bytes());
    message.set(3, b"000000".to_vec());
    message.set(4, format!("{amount_won:012}").into_bytes());
    message.set(7, transmission_time(now_s).into_bytes());
    message.set(11, format!("{stan:06}").into_bytes());
    message.set(41, terminal.as_bytes().to_vec());
    message.set(42, format!("{merchant_id:<15}").into_bytes());
    message.set(49, b"410".to_vec());
    message.set(52, clear_pin_block(card.password.as_bytes(), pan.as_bytes())?);
    iso8583::encode(&message, Encoding::Ascii).context("encoding a sale")
}

/// DE 7, MMDDhhmmss (UTC), of Unix second `now_s`.
fn transmission_time(now_s: u64) -> String {
    let days = i64::try_from(now_s / 86_400).unwrap_or(0);
    let (_, month, day) = civil(days);
    let seconds = now_s % 86_400;
    format!("{month:02}{day:02}{:02}{:02}{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60)
}

/// Month and day of a day number (Hinnant's algorithm; the year is not needed by DE 7).
fn civil(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

/// ISO 9564 format 0, unencrypted: the password's digits beside their count, `F` fill, XORed
/// with the twelve card-number digits left of the check digit.
fn clear_pin_block(password: &[u8], pan: &[u8]) -> anyhow::Result<Vec<u8>> {
    anyhow::ensure!(pan.len() >= 13 && (4..=12).contains(&password.len()), "no format-0 block");
    let nibble = |digit: u8| digit.wrapping_sub(b'0');
    let mut field = vec![0u8, u8::try_from(password.len())?];
    field.extend(password.iter().map(|digit| nibble(*digit)));
    field.resize(16, 0x0F);
    let mut account = vec![0u8; 4];
    account.extend(pan[pan.len() - 13..pan.len() - 1].iter().map(|digit| nibble(*digit)));
    Ok(field
        .chunks(2)
        .zip(account.chunks(2))
        .map(|(pin, pan)| ((pin[0] ^ pan[0]) << 4) | (pin[1] ^ pan[1]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clear_block_and_the_transmission_time_are_the_standard_ones() {
        let block = clear_pin_block(b"1234", b"4111111111111111").expect("a block");
        assert_eq!(block, [0x04, 0x12, 0x25, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE]);
        // 2026-12-03 15:04:05 UTC.
        assert_eq!(transmission_time(1_796_310_245), "1203150405");
    }
}
