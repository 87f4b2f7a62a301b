//! Engine apply benchmark: the pure shard's hot path, a SALE (debit if covered) against a shard
//! holding 1,000,000 active cards chosen uniformly, with the op-id record kept as in
//! production. Also the journal-record encoding the server does for each changed command.
//! Reported in events per second; run with `cargo bench -p pinswitch-benches --bench engine`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pinswitch_benches::{active_shard, next};
use pinswitch_core::{Body, Command, EngineConfig, JournalEntry, PinHash, Shard, encode_entry};
use pinswitch_protocol::op_id_at;

const CARDS: u64 = 1_000_000;
const T0_MS: u64 = 1_800_000_000_000;
const PASSWORD_MAC: u64 = 0x5EC2E7;

/// A keyed-hash-like spread of card names (the server hashes PINs with SipHash-128).
fn pin_hash(index: u64) -> PinHash {
    let mixed = u128::from(index).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    mixed ^ (mixed >> 61)
}

fn prepared_shard() -> Shard {
    let config = EngineConfig { idempotency_entries_max: 4_000_000, ..EngineConfig::production() };
    active_shard(config, CARDS, T0_MS, |index| (pin_hash(index), PASSWORD_MAC))
}

fn engine(c: &mut Criterion) {
    let mut shard = prepared_shard();
    let mut group = c.benchmark_group("engine_apply");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(1));
    let mut rng = 7u64;
    let mut op = 1u128 << 40;
    let mut now_ms = T0_MS;
    group.bench_function("sale_1m_cards", |b| {
        b.iter(|| {
            op += 1;
            if op % 1024 == 0 {
                now_ms += 1;
            }
            let body = Body::Sale {
                pin_hash: pin_hash(next(&mut rng) % CARDS),
                password_mac: PASSWORD_MAC,
                amount_won: 1,
                merchant_id: 9,
                category: 1,
            };
            black_box(
                shard.apply(
                    now_ms,
                    &Command { op_id: op_id_at(now_ms, op), deadline_at_ms: 0, body },
                ),
            )
        })
    });
    // The shard loop's shape: a group of 8,000 commands at one clock reading, applied in order.
    // (Touching the memory of commands a few places ahead with plain loads was tried and was
    // 10-15 % slower: the core already overlaps the misses of consecutive commands.)
    const GROUP: usize = 8000;
    group.throughput(Throughput::Elements(GROUP as u64));
    let mut commands = Vec::with_capacity(GROUP);
    group.bench_function("sale_1m_cards_group_8000", |b| {
        b.iter(|| {
            commands.clear();
            now_ms += 1;
            for _ in 0..GROUP {
                op += 1;
                let body = Body::Sale {
                    pin_hash: pin_hash(next(&mut rng) % CARDS),
                    password_mac: PASSWORD_MAC,
                    amount_won: 1,
                    merchant_id: 9,
                    category: 1,
                };
                commands.push(Command { op_id: op_id_at(now_ms, op), deadline_at_ms: 0, body });
            }
            for command in &commands {
                black_box(shard.apply(now_ms, command));
            }
        })
    });
    group.throughput(Throughput::Elements(1));
    let entry = JournalEntry {
        now_ms: T0_MS,
        command: Command {
            op_id: op_id_at(T0_MS, 99),
            deadline_at_ms: 0,
            body: Body::Sale {
                pin_hash: pin_hash(5),
                password_mac: PASSWORD_MAC,
                amount_won: 1,
                merchant_id: 9,
                category: 1,
            },
        },
        reply: shard.apply(T0_MS, &Command { op_id: 0, deadline_at_ms: 0, body: Body::Tick }).reply,
    };
    group.bench_function("encode_journal_entry", |b| {
        b.iter(|| black_box(encode_entry(black_box(&entry))))
    });
    group.finish();

    // A snapshot image of the shard as the SALE run left it (1M cards, millions of op records).
    let mut group = c.benchmark_group("engine_snapshot");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(shard.card_count() as u64 + shard.op_count() as u64));
    group.bench_function("to_snapshot_bytes", |b| {
        b.iter(|| black_box(shard.to_snapshot_bytes().len()))
    });
    group.bench_function("clone", |b| b.iter(|| black_box(shard.clone().card_count())));
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
