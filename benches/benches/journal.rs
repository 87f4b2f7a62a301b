//! Journal benchmark: append a group of 64-byte records and make them durable with one commit
//! (msync of the dirty range), the server's group commit. Groups of 1, 64, 1024 and 8192
//! records; throughput in records per second. The files live in a temporary directory on the
//! same disk as the build (set TMPDIR to measure another disk). Run with
//! `cargo bench -p pinswitch-benches --bench journal`.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pinswitch_journal::{Journal, JournalOptions};

const RECORD_BYTES: usize = 64;

fn journal(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).expect("temporary directory");
    let (_, recovery) =
        Journal::recover(dir.path(), JournalOptions::production()).expect("fresh journal");
    let mut journal = recovery.into_journal().expect("journal opens");
    let payload = [0xA5u8; RECORD_BYTES];
    let mut group = c.benchmark_group("journal_append_commit");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for records in [1u64, 64, 1024, 8192] {
        group.throughput(Throughput::Elements(records));
        group.bench_with_input(BenchmarkId::from_parameter(records), &records, |b, &records| {
            b.iter(|| {
                for _ in 0..records {
                    journal.append(&payload).expect("append");
                }
                journal.commit().expect("commit");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, journal);
criterion_main!(benches);
