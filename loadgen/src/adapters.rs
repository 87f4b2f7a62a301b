//! `pinswitch-loadgen iso8583` and `pinswitch-loadgen diameter`: one-event traffic against the
//! switch's adapter front ends, as the gear in the field sends it. Each connection keeps
//! `in_flight` requests outstanding, matched back by their own ids, each on a card drawn
//! uniformly from the cards file:
//! - ISO 8583 (`[iso8583]` listener): a terminal (DE 41) sending 0200 sales of `amount_won`,
//!   matched by trace number (DE 11), the password as a clear format-0 PIN block (the listener
//!   must say `pin_block = "clear"`);
//! - Diameter (`[diameter]` listener): a peer that sends its CER, then CCR EVENT requests of
//!   one unit to `destination` (Requested-Action DIRECT_DEBITING, Event-Timestamp), matched by
//!   Hop-by-Hop Identifier; `amount_won` is what one event costs by the tariff (write-back).
//!
//! Closed loop for `duration_s`; then every request still in flight is awaited, the approved
//! ones are written back to the cards file (so `validate` still holds), and the report gives
//! the same figures as `run`'s (ops/s, latency, CPU per operation of the generator and the
//! switch, declines by their code: DE 39, or Result-Code), in JSON and text.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use pinswitch_protocol::diameter::{self, Avp};
use pinswitch_protocol::iso8583::{self, Encoding, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cards::{self, CardRecord};
use crate::cpu::{CpuFigures, CpuWindow};
use crate::rng::Rng;
use crate::stats::{duration_us, new_histogram, record};

/// Which front end a run speaks to.
#[derive(Clone, Debug)]
pub(crate) enum Protocol {
    /// ISO 8583 0200 sales for this merchant id (DE 42).
    Iso8583 { merchant_id: u64 },
    /// Diameter CCR EVENTs to this service number.
    Diameter { destination: String },
}

/// What one run does.
pub(crate) struct AdapterSpec {
    pub protocol: Protocol,
    pub address: String,
    pub cards_file: PathBuf,
    pub connections: usize,
    pub in_flight: usize,
    pub duration_s: u64,
    pub amount_won: u64,
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
pub(crate) async fn run(spec: AdapterSpec) -> anyhow::Result<bool> {
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
        let terminal = Terminal {
            protocol: spec.protocol.clone(),
            name: format!("LG{connection:06}"),
            amount_won: spec.amount_won,
            next_id: 0,
        };
        let rng = Rng::stream(spec.seed, connection as u64);
        let (cards, in_flight) = (cards.clone(), spec.in_flight.max(1));
        tasks.push(tokio::spawn(async move {
            terminal_loop(stream, cards, rng, terminal, in_flight, deadline).await
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
    let declines: BTreeMap<_, _> =
        codes.iter().filter(|(code, _)| !spec.protocol.approves(code)).collect();
    let report = serde_json::json!({
        "protocol": match spec.protocol {
            Protocol::Iso8583 { .. } => "iso8583",
            Protocol::Diameter { .. } => "diameter",
        },
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
        "codes": codes,
    });
    println!(
        "{answered} answers in {elapsed_s:.1} s = {:.0}/s, p50 {} µs, p99 {} µs, codes {}",
        answered as f64 / elapsed_s,
        latency_us.value_at_quantile(0.50),
        latency_us.value_at_quantile(0.99),
        report["codes"]
    );
    if let Some(path) = &spec.report {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(complete)
}

/// One connection's sender: its protocol, its name (ISO 8583's terminal id, Diameter's
/// Origin-Host), what an approval debits, and its next request id.
struct Terminal {
    protocol: Protocol,
    name: String,
    amount_won: u64,
    next_id: u32,
}

impl Protocol {
    fn approves(&self, code: &str) -> bool {
        match self {
            Protocol::Iso8583 { .. } => code == "00",
            Protocol::Diameter { .. } => code == "2001",
        }
    }
}

impl Terminal {
    /// The next request id: a trace number (1..=999,999) or a Hop-by-Hop Identifier.
    fn next_id(&mut self) -> u32 {
        self.next_id = match self.protocol {
            Protocol::Iso8583 { .. } => self.next_id % 999_999 + 1,
            Protocol::Diameter { .. } => self.next_id.wrapping_add(1),
        };
        self.next_id
    }

    /// What opens the connection: Diameter's CER.
    fn greeting(&self) -> Option<Vec<u8>> {
        let Protocol::Diameter { .. } = self.protocol else { return None };
        Some(diameter::encode(&diameter::Message {
            flags: diameter::FLAG_REQUEST,
            command: 257,
            application: 0,
            hop_by_hop: 0,
            end_to_end: 0,
            avps: vec![
                Avp::text(264, &self.name),
                Avp::text(296, "loadgen"),
                Avp::new(257, vec![0, 1, 127, 0, 0, 1]),
                Avp::u32(266, 0),
                Avp::text(269, "pinswitch-loadgen"),
                Avp::u32(258, 4),
            ],
        }))
    }

    /// One request for `card` under `id`, framed.
    fn request(&self, card: &CardRecord, id: u32) -> anyhow::Result<Vec<u8>> {
        match &self.protocol {
            Protocol::Iso8583 { merchant_id } => {
                let sale = sale(card, id, &self.name, self.amount_won, *merchant_id)?;
                let mut framed = u16::try_from(sale.len())?.to_be_bytes().to_vec();
                framed.extend_from_slice(&sale);
                Ok(framed)
            }
            Protocol::Diameter { destination } => Ok(event(card, id, &self.name, destination)?),
        }
    }

    /// Reads one answer: its id and its code (DE 39, or Result-Code).
    async fn answer(&self, stream: &mut TcpStream) -> anyhow::Result<(u32, String)> {
        match self.protocol {
            Protocol::Iso8583 { .. } => {
                let mut prefix = [0u8; 2];
                stream.read_exact(&mut prefix).await.context("reading an answer")?;
                let mut answer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
                stream.read_exact(&mut answer).await.context("reading an answer")?;
                let answer = iso8583::decode(&answer, Encoding::Ascii).context("an answer")?;
                let trace = answer
                    .get(11)
                    .and_then(|trace| std::str::from_utf8(trace).ok()?.parse::<u32>().ok())
                    .context("an answer without its trace number")?;
                Ok((trace, String::from_utf8_lossy(answer.get(39).unwrap_or(b"??")).to_string()))
            }
            Protocol::Diameter { .. } => {
                let mut head = vec![0u8; 4];
                stream.read_exact(&mut head).await.context("reading an answer")?;
                let len = diameter::message_len(&head).context("a Diameter header")?;
                anyhow::ensure!(len >= diameter::HEADER_BYTES, "a Diameter answer of {len} bytes");
                head.resize(len, 0);
                stream.read_exact(&mut head[4..]).await.context("reading an answer")?;
                let answer = diameter::decode(&head).context("an answer")?;
                let code = answer.avp(268).and_then(Avp::as_u32).unwrap_or(0);
                Ok((answer.hop_by_hop, code.to_string()))
            }
        }
    }
}

/// One connection: greets (Diameter's CER, whose answer must approve), keeps `in_flight`
/// requests outstanding until `deadline`, then takes the rest of its answers.
async fn terminal_loop(
    mut stream: TcpStream,
    cards: Arc<Vec<CardRecord>>,
    mut rng: Rng,
    mut terminal: Terminal,
    in_flight: usize,
    deadline: Instant,
) -> anyhow::Result<Measured> {
    if let Some(greeting) = terminal.greeting() {
        stream.write_all(&greeting).await.context("sending the CER")?;
        let (_, code) = terminal.answer(&mut stream).await?;
        anyhow::ensure!(terminal.protocol.approves(&code), "the CER was answered {code}");
    }
    let mut measured =
        Measured { latency_us: new_histogram(), codes: BTreeMap::new(), debited: Vec::new() };
    // Request id → (card, sent at).
    let mut outstanding: HashMap<u32, (usize, Instant)> = HashMap::new();
    loop {
        while outstanding.len() < in_flight && Instant::now() < deadline {
            let id = terminal.next_id();
            let card = rng.index_below(cards.len());
            let request = terminal.request(&cards[card], id)?;
            stream.write_all(&request).await.context("sending a request")?;
            outstanding.insert(id, (card, Instant::now()));
        }
        if outstanding.is_empty() {
            return Ok(measured);
        }
        let (id, code) = terminal.answer(&mut stream).await?;
        let (card, sent_at) = outstanding.remove(&id).context("an answer to no request")?;
        record(&mut measured.latency_us, duration_us(sent_at.elapsed()), 1);
        if terminal.protocol.approves(&code) {
            measured.debited.push(card);
        }
        *measured.codes.entry(code).or_default() += 1;
    }
}

/// A Diameter CCR EVENT of one unit of `destination` on `card`, from peer `origin`.
fn event(card: &CardRecord, id: u32, origin: &str, destination: &str) -> anyhow::Result<Vec<u8>> {
    const NTP_UNIX_OFFSET_S: u64 = 2_208_988_800;
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let ntp_s = u32::try_from((now_s + NTP_UNIX_OFFSET_S) & 0xFFFF_FFFF)?;
    let subscription =
        Avp::grouped(443, &[Avp::u32(450, 4), Avp::text(444, &format!("{:016}", card.pin))]);
    let requested = Avp::grouped(437, &[Avp::u64(417, 1)]);
    Ok(diameter::encode(&diameter::Message {
        flags: diameter::FLAG_REQUEST | diameter::FLAG_PROXIABLE,
        command: 272,
        application: 4,
        hop_by_hop: id,
        end_to_end: id,
        avps: vec![
            Avp::text(263, &format!("{origin};event;{id}")),
            Avp::text(264, origin),
            Avp::text(296, "loadgen"),
            Avp::text(283, "local"),
            Avp::u32(258, 4),
            Avp::text(461, "32260@3gpp.org"),
            Avp::u32(416, 4),
            Avp::u32(415, 0),
            Avp::u32(55, ntp_s),
            subscription,
            Avp::u32(436, 0),
            Avp::grouped(456, &[requested]),
            Avp::text(30, destination),
        ],
    }))
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
