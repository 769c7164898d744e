//! A large inspected body that is not an upload (JSON, parsed whole) is
//! held once by the real binary: its buffer grows in place as the bytes
//! arrive (`src/quota/read/buffer.rs`). It used to double by copying,
//! which held the old and the new buffer at once and left the freed ones
//! resident: a 10 MB body grew the peak RSS by 2.49 bodies (BENCHMARKS.md).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::binary::Binary;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};

const BODY: usize = 10 * 1024 * 1024;

/// Measures: one 10 MB JSON body on an inspected route, sent in 64 KiB
/// writes, reaches the upstream whole and grows the proxy's peak resident
/// memory (`VmHWM`) by less than 1.25 bodies.
#[tokio::test]
async fn a_large_json_body_is_held_once() {
    let upstream = TestUpstream::start(|request: RecordedRequest| async move {
        Reply::ok().body(request.body.len().to_string())
    })
    .await;
    let config = format!(
        r#"
upstream = "http://{}"
max_body_bytes = 20000000

[plans.free]
daily = 10
weekly = 0
monthly = 0

[identity]
default_plan = "free"

[[routes]]
method = "POST"
path = "/chat/{{id}}/send/"
"#,
        upstream.addr()
    );
    let binary = Binary::start(&config, &[]).await;
    let filler = "a".repeat(BODY - 64);
    let body = format!(r#"{{"message": "{filler}", "generate_image": true}}"#);
    let head = format!(
        "POST /chat/1/send/ HTTP/1.1\r\nhost: app\r\nx-user-id: 7\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    // A warm-up request, so that threads and pools are in the baseline.
    let small = r#"{"message": "hi"}"#;
    let warm = head.replace(&body.len().to_string(), &small.len().to_string());
    assert!(
        exchange(&binary, &warm, small.as_bytes())
            .await
            .starts_with("HTTP/1.1 200")
    );
    let before = binary.memory("VmHWM");

    let answer = exchange(&binary, &head, body.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(&body.len().to_string()), "{answer}");
    let grown = binary.memory("VmHWM").saturating_sub(before);
    eprintln!(
        "peak RSS grew {} KiB for a {} KiB body",
        grown >> 10,
        body.len() >> 10
    );
    assert!(
        grown < (body.len() as u64) * 5 / 4,
        "peak RSS grew {:.2} bodies",
        grown as f64 / body.len() as f64
    );
}

/// Sends `head` and `body` in 64 KiB writes and reads the whole answer
/// (the request asks to close); bounded in time.
async fn exchange(binary: &Binary, head: &str, body: &[u8]) -> String {
    let run = async {
        let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("head");
        for piece in body.chunks(64 * 1024) {
            stream.write_all(piece).await.expect("body");
        }
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.expect("answer");
        String::from_utf8_lossy(&answer).into_owned()
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("answered within 30 s")
}
