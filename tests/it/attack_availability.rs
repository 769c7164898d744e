//! Availability attacks on the real binary (an attack session, December
//! 7th): what one hostile client can do to the rest of the app. Each test
//! says what the fault was; each wait is bounded and fails the test when
//! it runs out.

use std::time::Instant;

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
