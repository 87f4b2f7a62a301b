//! End-to-end path benchmark, everything but the sockets: a SALE request frame is checked and
//! accessed in place, each event's PIN is hashed and its password MACed (SipHash, as the
//! server does), the engine applies it against 1,000,000 active cards, the journal record is
//! encoded and appended, the group is made durable with one commit (msync), and the response
//! frame of one result per event is encoded. Frames of 1 event (one group commit per event:
//! what one connection with one request in flight pays) and of 8,000 events (the batched
//! shape). The network and the thread hand-offs are measured by the load generator instead
//! (ops/benchmarking.md). A third group runs the shard driver's pipelined commit: groups of ten
//! one-event frames applied while the previous group's `fdatasync` runs on a sync thread. Run
//! with `cargo bench -p pinswitch-benches --bench pipeline`.

use std::hash::Hasher;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pinswitch_benches::{active_shard, next};
use pinswitch_core::{Body, Command, EngineConfig, JournalEntry, Shard, encode_entry_into};
use pinswitch_journal::{Journal, JournalOptions};
use pinswitch_protocol::{
    ArchivedSale, BatchSlice, FrameHeader, MsgType, OpResult, ResultCode, Sale, access_body,
    decode_frame, encode_frame_body, op_id_at, pin,
};
use siphasher::sip::SipHasher24;
use siphasher::sip128::{Hasher128, SipHasher24 as SipHasher128};

const CARDS: u64 = 1_000_000;
const T0_MS: u64 = 1_800_000_000_000;
const PASSWORD: &[u8] = b"4321";
const FRAME_BYTES_MAX: u32 = 16 << 20;
const PIN_KEY: [u8; 16] = [7; 16];
const PASSWORD_KEY: [u8; 16] = [9; 16];

fn pin_of(index: u64) -> u64 {
    pin::with_check_digit(100_000_000_000_000 + index)
}

fn pin_hash(pin: u64) -> u128 {
    let mut hasher = SipHasher128::new_with_key(&PIN_KEY);
    hasher.write_u64(pin);
    hasher.finish128().as_u128()
}

fn password_mac(pin_hash: u128, password: &[u8]) -> u64 {
    let mut hasher = SipHasher24::new_with_key(&PASSWORD_KEY);
    hasher.write_u128(pin_hash);
    hasher.write(password);
    hasher.finish()
}

fn prepared_shard() -> Shard {
    active_shard(EngineConfig::production(), CARDS, T0_MS, |index| {
        let hash = pin_hash(pin_of(index));
        (hash, password_mac(hash, PASSWORD))
    })
}

/// One SALE event on the server's path: PIN hash and password MAC, engine apply, journal
/// record encoded and appended; its result.
fn apply_sale(
    shard: &mut Shard,
    journal: &mut Journal,
    now_ms: u64,
    sale: &ArchivedSale,
    encoded: &mut Vec<u8>,
) -> OpResult {
    let hash = pin_hash(sale.pin.to_native());
    let body = Body::Sale {
        pin_hash: hash,
        password_mac: password_mac(hash, &sale.password),
        amount_won: sale.amount_won.to_native(),
        merchant_id: sale.merchant_id.to_native(),
        category: sale.category,
    };
    let command = Command { op_id: sale.op_id.to_native(), deadline_at_ms: 0, body };
    let applied = shard.apply(now_ms, &command);
    assert_eq!(applied.reply.code, ResultCode::Approved.as_u16());
    encode_entry_into(&JournalEntry { now_ms, command, reply: applied.reply }, encoded);
    journal.append(encoded).expect("append");
    // The front end's conversion to the wire result (`native/answers.rs`, `op_result`).
    let reply = applied.reply;
    OpResult {
        code: reply.code,
        flags: 0,
        field: reply.field,
        approval_code: reply.approval_code,
        amount_won: reply.amount_won,
        balance_won: reply.balance_won,
        available_won: reply.available_won,
        hold_expires_at_ms: reply.hold_expires_at_ms,
    }
}

fn pipeline(c: &mut Criterion) {
    let mut shard = prepared_shard();
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("temporary directory");
    let (_, recovery) =
        Journal::recover(dir.path(), JournalOptions::production()).expect("fresh journal");
    let mut journal = recovery.into_journal().expect("journal opens");
    let mut group = c.benchmark_group("pipeline_sale");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    let (mut rng, mut op, mut now_ms) = (11u64, 1u128 << 40, T0_MS);
    let (mut request, mut encoded, mut response) = (Vec::new(), Vec::new(), Vec::new());
    let mut results: Vec<OpResult> = Vec::new();
    for events in [1usize, 8000] {
        group.throughput(Throughput::Elements(events as u64));
        group.bench_function(BenchmarkId::from_parameter(events), |b| {
            b.iter(|| {
                // The client's frame (built outside the server's path, but cheap next to it).
                now_ms += 1;
                let sales: Vec<Sale> = (0..events)
                    .map(|_| {
                        op += 1;
                        Sale {
                            op_id: op_id_at(now_ms, op),
                            pin: pin_of(next(&mut rng) % CARDS),
                            password: PASSWORD.to_vec(),
                            amount_won: 1,
                            merchant_id: 9,
                            category: 1,
                        }
                    })
                    .collect();
                request.clear();
                encode_frame_body(
                    &mut request,
                    &FrameHeader::request(MsgType::Sale, 1, 0),
                    &BatchSlice(&sales),
                );

                // The server's path.
                let frame = decode_frame(&request, FRAME_BYTES_MAX).expect("valid").expect("whole");
                let archived = access_body::<Vec<Sale>>(frame.body).expect("valid body");
                results.clear();
                for sale in archived.iter() {
                    results.push(apply_sale(&mut shard, &mut journal, now_ms, sale, &mut encoded));
                }
                journal.commit().expect("commit");
                response.clear();
                let header = FrameHeader::response_to(&frame.header, ResultCode::Approved);
                encode_frame_body(&mut response, &header, &BatchSlice(&results));
                black_box(response.len())
            })
        });
    }
    group.finish();
    pipelined(c, &mut shard, &mut journal);
}

/// The server's commit path since the shard-per-core runtime: frames of one event each, a group
/// of `GROUP_FRAMES` of them applied and appended (pending buffer) while the previous group's
/// commit runs on a sync thread (`commit_start`, `fdatasync` there, `commit_finish`), as the
/// shard driver does. An iteration ends when the previous group is durable, so the figure is the
/// throughput of one shard whose connections always have the next group ready: bounded by the
/// disk's flush (one per group) or the shard thread's own work, whichever is slower.
fn pipelined(c: &mut Criterion, shard: &mut Shard, journal: &mut Journal) {
    const GROUP_FRAMES: usize = 10;
    let (requests, work) = std::sync::mpsc::channel::<pinswitch_journal::CommitRequest>();
    let (finished, done) = std::sync::mpsc::channel();
    let syncer = std::thread::spawn(move || {
        for request in work {
            let synced = request.sync();
            if finished.send((request, synced)).is_err() {
                return;
            }
        }
    });
    let mut group = c.benchmark_group("pipeline_sale_pipelined");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(GROUP_FRAMES as u64));
    let (mut rng, mut op, mut now_ms) = (13u64, 1u128 << 41, T0_MS + 10_000_000);
    let (mut request, mut encoded, mut response) = (Vec::new(), Vec::new(), Vec::new());
    let mut in_flight = false;
    group.bench_function(BenchmarkId::from_parameter(GROUP_FRAMES), |b| {
        b.iter(|| {
            now_ms += 1;
            for _ in 0..GROUP_FRAMES {
                op += 1;
                let sale = Sale {
                    op_id: op_id_at(now_ms, op),
                    pin: pin_of(next(&mut rng) % CARDS),
                    password: PASSWORD.to_vec(),
                    amount_won: 1,
                    merchant_id: 9,
                    category: 1,
                };
                request.clear();
                encode_frame_body(
                    &mut request,
                    &FrameHeader::request(MsgType::Sale, 1, 0),
                    &BatchSlice(std::slice::from_ref(&sale)),
                );
                let frame = decode_frame(&request, FRAME_BYTES_MAX).expect("valid").expect("whole");
                let archived = access_body::<Vec<Sale>>(frame.body).expect("valid body");
                let result = apply_sale(shard, journal, now_ms, &archived[0], &mut encoded);
                response.clear();
                let header = FrameHeader::response_to(&frame.header, ResultCode::Approved);
                encode_frame_body(&mut response, &header, &BatchSlice(&[result]));
                black_box(response.len());
            }
            if in_flight {
                let (finished, synced) = done.recv().expect("the sync thread answers");
                journal.commit_finish(finished, synced).expect("commit");
            }
            let started = journal.commit_start().expect("commit start").expect("records wait");
            requests.send(started).expect("the sync thread runs");
            in_flight = true;
        })
    });
    group.finish();
    if in_flight {
        let (finished, synced) = done.recv().expect("the sync thread answers");
        journal.commit_finish(finished, synced).expect("commit");
    }
    drop(requests);
    syncer.join().expect("the sync thread ends");
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
