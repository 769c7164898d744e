//! Benchmarks of flag detection (phase: classify): `detect` on JSON,
//! urlencoded and multipart bodies of 1 KB, 100 KB and 10 MB, the flag last
//! so every byte before it is read. The multipart body is one file part
//! (binary-looking, with CRLFs) followed by the flag field; it is also
//! judged by `detect_stream` in 64 KiB chunks, as an upload is.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use quota_proxy::config::FlagRules;
use quota_proxy::flag::{FlagSource, FlagVerdict, detect, detect_stream};

const FLAG: &str = "generate_image";
const BOUNDARY: &str = "----bench-boundary-7MA4YWxkTrZu0gW";
const SIZES: [(&str, usize); 3] = [("1KB", 1_000), ("100KB", 100_000), ("10MB", 10_000_000)];

/// `size` bytes of filler that needs no escaping in JSON or urlencoding.
fn text(size: usize) -> String {
    "lorem ipsum dolor sit amet "
        .chars()
        .cycle()
        .take(size)
        .collect::<String>()
        .replace(' ', "_")
}

/// `size` bytes of binary-looking file content, with CRLFs and dashes.
fn binary(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| [0x89, b'\r', b'\n', b'-', 0x00, 0xff, b'P', b'N'][i % 8])
        .collect()
}

fn json_body(size: usize) -> Bytes {
    Bytes::from(format!(r#"{{"prompt": "{}", "{FLAG}": true}}"#, text(size)))
}

fn form_body(size: usize) -> Bytes {
    Bytes::from(format!("prompt={}&{FLAG}=true", text(size)))
}

fn multipart_body(size: usize) -> Bytes {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"cat.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&binary(size));
    body.extend_from_slice(
        format!("\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{FLAG}\"\r\n\r\ntrue\r\n--{BOUNDARY}--\r\n")
            .as_bytes(),
    );
    Bytes::from(body)
}

/// One body kind: its name, content type, body maker and expected source.
struct Kind<'a> {
    name: &'a str,
    content_type: &'a str,
    body: fn(usize) -> Bytes,
    source: FlagSource,
}

fn bench_detect(c: &mut Criterion) {
    let rules = FlagRules::default();
    let multipart_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let kinds = [
        Kind {
            name: "json",
            content_type: "application/json",
            body: json_body,
            source: FlagSource::Json,
        },
        Kind {
            name: "urlencoded",
            content_type: "application/x-www-form-urlencoded",
            body: form_body,
            source: FlagSource::Form,
        },
        Kind {
            name: "multipart",
            content_type: &multipart_type,
            body: multipart_body,
            source: FlagSource::Multipart,
        },
    ];
    for kind in kinds {
        let (content_type, source) = (kind.content_type, kind.source);
        let mut group = c.benchmark_group(format!("detect/{}", kind.name));
        for (label, size) in SIZES {
            let body = (kind.body)(size);
            // A benchmark of the wrong verdict measures nothing.
            let verdict = detect(Some(content_type), body.clone(), None, FLAG, &rules);
            assert_eq!(
                verdict,
                FlagVerdict::Flagged(source),
                "{} {label}",
                kind.name
            );
            if size >= 1_000_000 {
                group.sample_size(10);
            }
            group.throughput(Throughput::Bytes(body.len() as u64));
            group.bench_with_input(BenchmarkId::from_parameter(label), &body, |b, body| {
                b.iter(|| {
                    detect(
                        black_box(Some(content_type)),
                        body.clone(),
                        None,
                        FLAG,
                        &rules,
                    )
                });
            });
        }
        group.finish();
    }
}

/// `detect_stream` on the multipart bodies, cut in 64 KiB chunks.
fn bench_detect_stream(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let rules = FlagRules::default();
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let content_type = Some(content_type.as_str());
    let chunks = |body: &Bytes| -> Vec<Bytes> {
        body.chunks(64 * 1024).map(|c| body.slice_ref(c)).collect()
    };
    let mut group = c.benchmark_group("detect_stream/multipart");
    for (label, size) in SIZES {
        let body = multipart_body(size);
        let judge = |body: &Bytes| {
            let stream = futures_util::stream::iter(chunks(body));
            detect_stream(black_box(content_type), stream, None, FLAG, &rules)
        };
        assert_eq!(
            runtime.block_on(judge(&body)),
            FlagVerdict::Flagged(FlagSource::Multipart),
            "{label}"
        );
        if size >= 1_000_000 {
            group.sample_size(10);
        }
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(label), &body, |b, body| {
            b.iter(|| runtime.block_on(judge(body)));
        });
    }
    group.finish();
}

criterion_group!(benches, bench_detect, bench_detect_stream);
criterion_main!(benches);
