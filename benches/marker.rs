//! Benchmarks of the in-band report scanner (phase: report): a 1 MB
//! streamed body fed to [`MarkerScanner`] in 1 KB and 16 KB chunks, with one
//! `[IMAGES_SAVED]{"count": 1, "token": "…"}[IMAGES_SAVED_END]` report at its very end, with and
//! without stripping. The text is full of `[` so the scanner keeps meeting
//! possible marker starts, as it would in markdown with links.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quota_proxy::report::{MarkerScanner, ReportRules, ReportToken, UsageReport};

const START: &str = "[IMAGES_SAVED]";
const END: &str = "[IMAGES_SAVED_END]";
const STREAM_BYTES: usize = 1 << 20;

fn rules() -> ReportRules {
    ReportRules::with_token(ReportToken::from(1), 16)
}

fn marker() -> String {
    format!(
        r#"{START}{{"count": 1, "token": "{}"}}{END}"#,
        ReportToken::from(1).as_str()
    )
}

/// 1 MB of markdown-like text ending in one marker, cut into `chunk`-byte
/// chunks (the marker may straddle two of them).
fn chunks(chunk: usize) -> Vec<Bytes> {
    let marker = marker();
    let line = "Here is [a link](https://example.com/x) and [IMAGES] text.\n";
    let mut text: String = line
        .chars()
        .cycle()
        .take(STREAM_BYTES - marker.len())
        .collect();
    text.push_str(&marker);
    let bytes = Bytes::from(text);
    (0..bytes.len())
        .step_by(chunk)
        .map(|at| bytes.slice(at..(at + chunk).min(bytes.len())))
        .collect()
}

fn bench_scanner(c: &mut Criterion) {
    let mut group = c.benchmark_group("marker/1MB");
    group.throughput(Throughput::Bytes(STREAM_BYTES as u64));
    for (label, size) in [("1KB-chunks", 1024), ("16KB-chunks", 16 * 1024)] {
        let stream = chunks(size);
        for strip in [false, true] {
            // A benchmark of a scanner that misses the marker measures nothing.
            let mut check = MarkerScanner::new(START, END, strip, rules());
            let sent: usize = stream.iter().map(|c| check.feed(c.clone()).len()).sum();
            assert_eq!(check.report(), Some(UsageReport::images(1)), "{label}");
            let expected = if strip {
                STREAM_BYTES - marker().len()
            } else {
                STREAM_BYTES
            };
            assert_eq!(
                sent + check.finish().len(),
                expected,
                "{label} strip={strip}"
            );

            let id = BenchmarkId::new(if strip { "strip" } else { "keep" }, label);
            group.bench_with_input(id, &stream, |b, stream| {
                b.iter(|| {
                    let mut scanner = MarkerScanner::new(START, END, strip, rules());
                    for chunk in stream {
                        black_box(scanner.feed(chunk.clone()));
                    }
                    black_box(scanner.finish());
                    scanner.report()
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_scanner);
criterion_main!(benches);
