//! Throughput of the RESP codec on the proxy's hot paths.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use redlock_proxy::protocol::{Limits, Protocol, Reply, decode};

/// Decodes every request in `buf`, returning how many there were.
fn decode_all(buf: &mut BytesMut, limits: &Limits) -> usize {
    let mut count = 0;
    while let Ok(Some(argv)) = decode(buf, limits) {
        black_box(argv);
        count += 1;
    }
    count
}

fn bench_decode(c: &mut Criterion) {
    let limits = Limits::default();
    let mut batch = Vec::new();
    for _ in 0..16 {
        batch.extend_from_slice(b"*3\r\n$4\r\nLOCK\r\n$16\r\nkey:000000000123\r\n$4\r\n5000\r\n");
    }
    let mut group = c.benchmark_group("decode");
    group.bench_function("resp_lock_x16", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&batch[..]),
            |buf| decode_all(buf, &limits),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("inline_ping", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&b"PING\r\n"[..]),
            |buf| decode_all(buf, &limits),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let token = Reply::bulk(Bytes::from_static(b"5f2b8c1e9a7d4036b1e2c3d4e5f60718"));
    let array = Reply::Array(vec![
        Reply::bulk("key:000000000123"),
        Reply::Integer(4999),
        Reply::Null,
        Reply::ok(),
    ]);
    let mut group = c.benchmark_group("encode");
    for (proto, name) in [(Protocol::Resp2, "resp2"), (Protocol::Resp3, "resp3")] {
        let mut out = BytesMut::with_capacity(256);
        group.bench_function(format!("bulk_token_{name}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(&token).encode(proto, &mut out);
                black_box(&out);
            })
        });
        group.bench_function(format!("small_array_{name}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(&array).encode(proto, &mut out);
                black_box(&out);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
