//! Statement query latency on a big index: builds a statement index the way `run` does
//! (`StatementWriter::append`, a checkpoint every 1,000,000 entries) with `entries` entries
//! spread over `cards` cards on 2 shards, one card getting `card_entries` of them spread evenly
//! through the logs, then times `StatementIndex::statement` for that card and for ordinary ones.
//! It measures the index alone (as a journal of that many card records leaves it), not the
//! shadow replay; the figures are in EXPORT.md.
//!
//! ```sh
//! cargo run --release -p pinswitch-exporter --example statement_latency -- DIR 10000000 1000000 1000
//! ```

use std::time::Instant;

use pinswitch_core::shard_of_card;
use pinswitch_exporter::statement::{
    Entry, EntryKind, StatementIndex, StatementLimits, StatementPage, StatementWriter,
};
use pinswitch_tests::Rng;

const SHARDS: u16 = 2;
const CHECKPOINT_EVERY_ENTRIES: u64 = 1_000_000;
const QUERIES: usize = 1_000;

fn pin_of(card: u64) -> u128 {
    let mut rng = Rng(card);
    u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())
}

fn percentiles(mut micros: Vec<u128>) -> String {
    micros.sort_unstable();
    let at = |share: usize| micros[(micros.len() * share / 100).min(micros.len() - 1)];
    format!("p50 {} us, p99 {} us, max {} us", at(50), at(99), micros[micros.len() - 1])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, entries, cards, card_entries] = args.as_slice() else {
        return Err("usage: statement_latency DIR ENTRIES CARDS CARD_ENTRIES".into());
    };
    let (dir, entries, cards, card_entries): (&str, u64, u64, u64) =
        (dir, entries.parse()?, cards.parse()?, card_entries.parse()?);
    std::fs::create_dir_all(dir)?;
    let dir = std::path::Path::new(dir);
    let mut writer = StatementWriter::open(dir, &[0; SHARDS as usize])?;
    let target = pin_of(0);
    let every = (entries / card_entries.max(1)).max(1);
    let mut rng = Rng(20_261_124);
    let mut seqs = [0u64; SHARDS as usize];
    let started = Instant::now();
    for index in 0..entries {
        let pin_hash = if index % every == every / 2 {
            target
        } else {
            pin_of(1 + rng.next_u64() % cards.max(1))
        };
        let shard = shard_of_card(pin_hash, SHARDS);
        seqs[usize::from(shard)] += 1;
        let category = 1 + (rng.next_u64() % 6) as u8;
        let entry = Entry {
            pin_hash,
            op_id: u128::from(index),
            time_ms: 1_790_000_000_000 + index,
            seq: seqs[usize::from(shard)],
            prev_plus_one: 0,
            counterparty: 70 + rng.next_u64() % 30,
            amount_won: 100 + rng.next_u64() % 5_000,
            balance_won: 100_000,
            face_value_won: 100_000,
            valid_until_s: 1_950_000_000,
            points: 0,
            kind: if rng.next_u64().is_multiple_of(10) {
                EntryKind::Recharge
            } else {
                EntryKind::Payment
            },
            category,
            means: 4,
            state: 3,
        };
        writer.append(shard, entry)?;
        if (index + 1).is_multiple_of(CHECKPOINT_EVERY_ENTRIES) {
            writer.checkpoint()?;
        }
    }
    writer.checkpoint()?;
    let built_s = started.elapsed().as_secs_f64();
    println!(
        "built {entries} entries over {cards} cards in {built_s:.1} s ({:.0} entries/s)",
        entries as f64 / built_s
    );

    let index = StatementIndex::open(dir, SHARDS)?;
    let limits = StatementLimits { lines_max: 1000, recharges_max: 100 };
    let name = |id: u64| format!("merchant {id}");
    let time = |pin_hash: u128,
                page: StatementPage|
     -> Result<(u128, u32), Box<dyn std::error::Error>> {
        let started = Instant::now();
        let result = index.statement(pin_hash, &page, &limits, &name)?.ok_or("card not found")?;
        Ok((started.elapsed().as_micros(), result.lines_total))
    };
    let (first_us, lines) = time(target, StatementPage::default())?;
    println!(
        "card with {} entries ({lines} internet-payment lines): first query {first_us} us",
        index.entries(target)?.len()
    );
    let mut micros = Vec::with_capacity(QUERIES);
    for _ in 0..QUERIES {
        micros.push(time(target, StatementPage::default())?.0);
    }
    println!("same card, {QUERIES} queries (first page of 1000 lines): {}", percentiles(micros));
    let mut micros = Vec::with_capacity(QUERIES);
    for _ in 0..QUERIES {
        micros.push(time(target, StatementPage { limit: 20, ..StatementPage::default() })?.0);
    }
    println!("same card, {QUERIES} queries (page of 20 lines): {}", percentiles(micros));
    let mut micros = Vec::with_capacity(QUERIES);
    for query in 0..QUERIES as u64 {
        micros.push(
            time(pin_of(1 + query * 7919 % cards.max(1)), StatementPage::default())
                .map_or(0, |(us, _)| us),
        );
    }
    println!(
        "{QUERIES} ordinary cards (~{} entries each): {}",
        entries / cards.max(1),
        percentiles(micros)
    );
    Ok(())
}
