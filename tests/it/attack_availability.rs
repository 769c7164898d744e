//! Availability attacks on the real binary (an attack session, December
//! 7th): what one hostile client can do to the rest of the app. Each test
//! says what the fault was; each wait is bounded and fails the test when
//! it runs out.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::open_files::{ANSWER_WITHIN, config, get_page};
use crate::support::binary::Binary;
use crate::support::raw_http::status_on_new_connection;
use crate::support::upstream::{Reply, TestUpstream};

/// Fault: the admin listener (probes, `/metrics`, the usage API) took
/// every connection offered, with no `max_connections` of its own, and
/// its connections share the process's open files with the proxy port.
/// A client holding connections to the admin port (a scraper gone wrong,
/// anything in the namespaces the admin port is open to) took every
/// descriptor: `accept` on the proxy port failed (EMFILE) and no page of
/// the app was answered until the flood let go (silent connections are
/// closed after `timeouts.client_head`, 30 s; keep-alive ones that send a
/// request now and then, never). Here the process may open 256 files and
/// 300 admin connections stand open (silent, part of a request head, and
/// idle once answered, the answer left unread): a page through the proxy port and a probe on
/// the admin port must still be answered.
#[tokio::test]
async fn an_admin_connection_flood_does_not_take_the_proxys_open_files() {
    const LIMIT: u64 = 256;
    const FLOOD: usize = 300;
    let upstream = TestUpstream::always(Reply::ok()).await;
    let binary = Binary::start_with_open_files_hard(&config(upstream.addr(), ""), &[], LIMIT).await;
    assert_eq!(
        get_page(binary.proxy, ANSWER_WITHIN).await,
        Ok(200),
        "a page before the flood"
    );
    let mut flood = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let Ok(mut stream) = TcpStream::connect(binary.admin).await else {
            continue;
        };
        match i % 3 {
            0 => {}
            1 => {
                let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: a").await;
            }
            _ => {
                let _ = stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\n\r\n")
                    .await;
            }
        }
        flood.push(stream);
    }
    let started = Instant::now();
    let page = get_page(binary.proxy, ANSWER_WITHIN).await;
    let probe = status_on_new_connection(
        binary.admin,
        b"GET /healthz HTTP/1.1\r\nhost: admin\r\n\r\n",
        ANSWER_WITHIN,
    )
    .await;
    assert_eq!(
        page,
        Ok(200),
        "a page behind {FLOOD} admin connections (after {:?})",
        started.elapsed()
    );
    assert_eq!(probe, Ok(200), "a probe behind {FLOOD} admin connections");
    drop(flood);
}

/// Fault: hyper's HTTP/2 server advertises flow-control windows of 1 MiB
/// per connection and per stream, so a client may send 1 MiB of each
/// connection's request bodies before the proxy reads any of it, and h2
/// keeps what the proxy has not read yet in memory: outside
/// `body_budget_bytes`, and outside the bound docs/limits.md gives
/// (`max_connections` × 22 KB + 1.5 × the budget). The proxy does not read
/// a body while it waits for the upstream to take it (an app whose workers
/// are busy), for room in the budget, or for a place among the HTTP/2
/// requests. Here the upstream does not accept (its backlog is full, as a
/// busy app's), `max_connections = 200` and the budget is 1 MiB (a bound of
/// about 46 MB); 150 HTTP/2 connections each send one 1 MB pass-through
/// upload (the HTTP/1 counterpart holds `H1_READ_BUFFER`, 64 KiB, each).
/// Before: the proxy's resident memory grew by 191 MiB.
#[tokio::test(flavor = "multi_thread")]
async fn http2_bodies_the_proxy_has_not_read_stay_within_the_memory_bound() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    const CONNECTIONS: usize = 150;
    // An upstream whose accept queue is full: a connection to it waits
    // for `timeouts.connect`, and nothing reads the request's body.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let listener = socket.listen(1).expect("listen");
    let upstream = listener.local_addr().expect("address");
    let mut queued = Vec::new();
    for _ in 0..4 {
        let connecting = TcpStream::connect(upstream);
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(200), connecting).await {
            queued.push(stream);
        }
    }
    let config = format!(
        "upstream = \"http://{upstream}\"\nbody_budget_bytes = 1048576\n\
         max_body_bytes = 1048576\nmax_connections = 200\n\
         [identity]\ndefault_plan = \"free\"\n[plans.free]\ndaily = 3\n\
         [[routes]]\nmethod = \"POST\"\npath = \"/chat/{{id}}/send/\"\n"
    );
    let binary = Binary::start(&config, &[]).await;
    let before = binary.memory("VmRSS");
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let tcp = TcpStream::connect(binary.proxy).await.expect("connect");
        let (mut sender, connection) =
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake::<_, http_body_util::Full<bytes::Bytes>>(TokioIo::new(tcp))
                .await
                .expect("h2 handshake");
        clients.push(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let proxy = binary.proxy;
        clients.push(tokio::spawn(async move {
            let upload = http::Request::post(format!("http://{proxy}/upload"))
                .body(http_body_util::Full::new(bytes::Bytes::from(vec![
                    b'x';
                    1_000_000
                ])))
                .expect("request");
            let _ = sender.send_request(upload).await;
        }));
    }
    // The uploads wait for the upstream's connect timeout (2 s): the peak.
    let mut grown = 0;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        grown = grown.max(binary.memory("VmRSS").saturating_sub(before));
    }
    for client in clients {
        client.abort();
    }
    drop((listener, queued));
    assert!(
        grown < 64 << 20,
        "{CONNECTIONS} HTTP/2 uploads the proxy had not read grew its memory by {} MiB",
        grown >> 20
    );
}

/// A loopback listener that accepts connections and never answers (a hung
/// Redis, an address black-holed on the way): its address, and the task
/// holding what it accepted.
async fn silent_listener() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, held)
}

/// A Redis that accepts connections and never answers, from the start:
/// `outage.rs` covers a Redis that hangs once the proxy is serving; here
/// the proxy starts against one, and is then reloaded to another. The
/// binary must start, answer pages at once, refuse flagged requests under
/// `deny` without forwarding them, keep answering pages while a reload to
/// a second silent Redis is tried and refused (the running config kept),
/// and exit on SIGTERM within its flush bound. Two bounds hold it: the
/// client's connection timeout (`store/topology.rs`, the handshake) and
/// the store's preparation, three command timeouts (`RedisStore::prepare`).
/// With both removed the binary did not start within 15 s. (An attack
/// session found this defended; no test covered it.)
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_that_never_answers_stops_no_page_at_start_reload_or_exit() {
    use crate::support::gen_route::{daily_config, flagged_answer, saving_upstream};
    let (first, _first) = silent_listener().await;
    let (second, _second) = silent_listener().await;
    let store = |redis: std::net::SocketAddr| {
        format!(
            "kind = \"redis\"\nurl = \"redis://{redis}\"\ncommand_timeout = \"300ms\"\n\
             on_store_error = \"deny\"\n"
        )
    };
    let upstream = saving_upstream().await;
    let mut binary = Binary::start(&daily_config(&upstream, 2, &store(first)), &[]).await;
    assert_eq!(
        get_page(binary.proxy, ANSWER_WITHIN).await,
        Ok(200),
        "a page"
    );
    let flagged = tokio::time::timeout(ANSWER_WITHIN, flagged_answer(&binary, "u"))
        .await
        .expect("a flagged request answered in time");
    assert_eq!(flagged.status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.count(), 1, "only the page was forwarded");

    binary.write_config(&daily_config(&upstream, 3, &store(second)));
    binary.signal("HUP");
    assert_eq!(
        get_page(binary.proxy, ANSWER_WITHIN).await,
        Ok(200),
        "a page while the reload waits on the second silent Redis"
    );
    binary
        .wait_for_logs(1, Duration::from_secs(20), |line| {
            line["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("config reload failed"))
        })
        .await;
    assert_eq!(
        get_page(binary.proxy, ANSWER_WITHIN).await,
        Ok(200),
        "a page after"
    );

    binary.signal("TERM");
    binary.wait_exit(Duration::from_secs(20)).await;
}
