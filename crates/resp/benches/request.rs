//! Decoding a pipeline of 1,000 `XADD s * field value` commands, as multibulk (what client
//! libraries send) and as inline lines (what a telnet user sends), from one buffer.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use manifold_resp::request::{Decoder, Limits};

const COMMANDS: usize = 1000;

fn decode_all(input: &[u8]) -> usize {
    let mut decoder = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(input);
    let mut args = 0;
    while let Some(command) = decoder.decode(&mut buf).expect("valid pipeline") {
        args += command.len();
    }
    assert!(buf.is_empty());
    args
}

fn xadd_pipeline(c: &mut Criterion) {
    let multibulk = b"*5\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n*\r\n$5\r\nfield\r\n$5\r\nvalue\r\n"
        .repeat(COMMANDS);
    let inline = b"XADD s * field value\r\n".repeat(COMMANDS);
    assert_eq!(decode_all(&multibulk), 5 * COMMANDS);
    assert_eq!(decode_all(&inline), 5 * COMMANDS);

    let mut g = c.benchmark_group("request");
    g.throughput(Throughput::Elements(COMMANDS as u64));
    g.bench_function("xadd_pipeline_multibulk", |b| {
        b.iter(|| black_box(decode_all(black_box(&multibulk))))
    });
    g.bench_function("xadd_pipeline_inline", |b| {
        b.iter(|| black_box(decode_all(black_box(&inline))))
    });
    g.finish();
}

criterion_group!(benches, xadd_pipeline);
criterion_main!(benches);
