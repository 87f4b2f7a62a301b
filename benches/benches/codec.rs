//! Frame codec benchmark: encoding and decoding a SALE request frame of 1 and of 8000 events
//! (the default batch maximum), reported in events per second. "encode" archives the batch
//! straight into the frame and checksums it; "decode_access" is what the server does per frame
//! (checksum, header, validated zero-copy access); "decode_owned" adds a full decode into `Vec`s.
//! Kept short (well under a minute) because it runs beside the other benches on shared cores.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pinswitch_protocol::{
    BatchSlice, FrameHeader, MsgType, Sale, access_body, decode_body, decode_frame,
    encode_frame_body, pin,
};

/// Generous enough for 8000 sales (about 0.5 MB).
const BODY_BYTES_MAX: u32 = 16 << 20;

fn sales(count: usize) -> Vec<Sale> {
    (0..count as u64)
        .map(|i| Sale {
            op_id: pinswitch_protocol::op_id_at(1_700_000_000_000 + i, u128::from(i)),
            pin: pin::with_check_digit(100_000_000_000_000 + i),
            password: b"123456".to_vec(),
            amount_won: 1_000 + i,
            merchant_id: 42,
            category: 1,
        })
        .collect()
}

fn encode(events: &[Sale], out: &mut Vec<u8>) {
    out.clear();
    let header = FrameHeader::request(MsgType::Sale, 1, 1_000);
    encode_frame_body(out, &header, &BatchSlice(events));
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec_sale_frame");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    for count in [1usize, 8000] {
        let events = sales(count);
        let mut frame = Vec::new();
        encode(&events, &mut frame);
        group.throughput(Throughput::Elements(count as u64));

        group.bench_with_input(BenchmarkId::new("encode", count), &events, |b, events| {
            let mut out = Vec::new();
            b.iter(|| {
                encode(black_box(events), &mut out);
                black_box(out.len())
            })
        });
        group.bench_with_input(BenchmarkId::new("decode_access", count), &frame, |b, frame| {
            b.iter(|| {
                let decoded =
                    decode_frame(black_box(frame), BODY_BYTES_MAX).expect("valid").expect("whole");
                let sales = access_body::<Vec<Sale>>(decoded.body).expect("valid body");
                black_box(sales.iter().map(|sale| sale.amount_won.to_native()).sum::<u64>())
            })
        });
        group.bench_with_input(BenchmarkId::new("decode_owned", count), &frame, |b, frame| {
            b.iter(|| {
                let decoded =
                    decode_frame(black_box(frame), BODY_BYTES_MAX).expect("valid").expect("whole");
                black_box(decode_body::<Vec<Sale>>(decoded.body).expect("valid body").len())
            })
        });
        group.bench_with_input(
            BenchmarkId::new("encode_then_decode_access", count),
            &events,
            |b, events| {
                let mut out = Vec::new();
                b.iter(|| {
                    encode(black_box(events), &mut out);
                    let decoded =
                        decode_frame(&out, BODY_BYTES_MAX).expect("valid").expect("whole");
                    black_box(access_body::<Vec<Sale>>(decoded.body).expect("valid body").len())
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
