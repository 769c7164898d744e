//! Configs that cannot work are refused, on the real binary, with one exit
//! code (2) wherever the problem is found (`check-config`, `serve`), and a
//! reload that meets one answers 400. Secrets never show: not in
//! `check-config`'s output, not in the logs. `check-config --online` binds
//! the listeners and pings Redis (exit 1 when the world, not the file, is
//! wrong). Plan names: `identity.plan_case`, and unknown plans counted.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use crate::support::binary::{Binary, run_cli};
use crate::support::proxy::TestClient;
use crate::support::redis::RedisServer;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use http::{Method, StatusCode};
use tempfile::TempDir;

/// Every bounded wait of this file.
const WITHIN: Duration = Duration::from_secs(10);

/// A route and a plan: enough for the spool and plan checks to apply.
const ROUTE: &str = r#"
[identity]
default_plan = "free"
[plans]
free = { daily = 1 }
pro = { daily = 5 }
[[routes]]
method = "POST"
path = "/gen/"
"#;

/// Writes `text` as a config file in a new directory.
fn config_file(text: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("quota-proxy.toml");
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `check-config` and `serve` both exit 2 naming `field` for `text` (with
/// both listeners on free ports, so `serve` gets as far as it can).
fn refused_everywhere(text: &str, field: &str) {
    let (_dir, path) = config_file(&crate::support::binary::prepare(text));
    for command in ["check-config", "serve"] {
        let output = run_cli(Some(&path), &[command]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{command} on\n{text}\n{}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(field),
            "{command}: {field} not named in {}",
            stderr(&output)
        );
    }
}

#[test]
fn methods_are_standard_or_listed_as_extensions() {
    let psot = ROUTE.replace("method = \"POST\"", "method = \"PSOT\"");
    refused_everywhere(&psot, "routes[0].method");
    let (_dir, path) = config_file(&psot);
    assert!(stderr(&run_cli(Some(&path), &["check-config"])).contains("PSOT"));
    // Lower case is the same method; an extension is accepted once listed.
    let (_dir, path) = config_file(&ROUTE.replace("\"POST\"", "\"post\""));
    assert!(run_cli(Some(&path), &["check-config"]).status.success());
    let listed = format!(
        "extension_methods = [\"PROPFIND\"]\n{}",
        ROUTE.replace("\"POST\"", "\"PROPFIND\"")
    );
    let (_dir, path) = config_file(&listed);
    let output = run_cli(Some(&path), &["check-config"]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn status_path_is_absolute_and_no_route_of_the_app() {
    refused_everywhere(
        &format!("[status]\npath = \"quota-status/\"\n{ROUTE}"),
        "status.path",
    );
    let taken = format!("[status]\npath = \"/gen/\"\n{ROUTE}");
    refused_everywhere(&taken, "status.path");
    let (_dir, path) = config_file(&taken);
    let said = stderr(&run_cli(Some(&path), &["check-config"]));
    assert!(said.contains("route \"POST /gen/\""), "{said}");
    let (_dir, path) = config_file(&format!("[status]\npath = \"/quota-status/\"\n{ROUTE}"));
    let output = run_cli(Some(&path), &["check-config"]);
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn shadow_header_is_a_header_name() {
    refused_everywhere("shadow_header = \"would deny\"\n", "shadow_header");
}

#[test]
fn local_fallback_needs_redis() {
    refused_everywhere(
        &format!("[store]\nkind = \"memory\"\non_store_error = \"local\"\n{ROUTE}"),
        "store.on_store_error",
    );
}

#[test]
fn routes_need_a_report_source_to_count_from() {
    refused_everywhere(
        &format!("[usage]\nreport_header = \"\"\nreport_json_field = \"\"\n{ROUTE}"),
        "usage: no report source",
    );
}

#[test]
fn secret_sources_must_resolve() {
    // An unset variable: check-config exited 0 and serve 1 before.
    refused_everywhere(
        "[admin]\ntoken_env = \"QP_TEST_SURELY_UNSET_TOKEN\"\n",
        "QP_TEST_SURELY_UNSET_TOKEN",
    );
    refused_everywhere(
        "[admin]\ntoken_file = \"/nonexistent/admin-token\"\n",
        "admin.token_file",
    );
    refused_everywhere(
        "[store]\nkind = \"redis\"\npassword_file = \"/nonexistent/redis-password\"\n",
        "store.password_file",
    );
    refused_everywhere(
        "[store]\nkind = \"redis\"\nurl_env = \"QP_TEST_SURELY_UNSET_URL\"\n",
        "store.url_env",
    );
    // A key the identity source reads when it is built: found by serve,
    // so check-config builds it too.
    refused_everywhere(
        "[identity]\nkind = \"jwt\"\n[identity.jwt]\npublic_key_file = \"/nonexistent/key.pem\"\n",
        "identity.jwt",
    );
}

/// A value its type refuses (a header name, a duration above zero, a byte
/// size) is refused by the parser itself, naming the field and saying what
/// to write.
#[test]
fn values_are_refused_by_their_type_naming_the_field() {
    for (text, field, hint) in [
        (
            "[usage]\nreport_header = \"X Images\"\n",
            "usage.report_header",
            "or \"\" to turn it off",
        ),
        (
            "[identity]\nuser_header = \"\"\n",
            "identity.user_header",
            "is not a header name",
        ),
        (
            "[identity.forward_auth]\nforward_headers = [\"Cookie\", \"a b\"]\n",
            "identity.forward_auth.forward_headers[1]",
            "is not a header name",
        ),
        (
            "[store]\nbreaker = { open_for = \"0s\" }\n",
            "store.breaker.open_for",
            "must be longer than 0s",
        ),
        (
            "shutdown_grace = \"soon\"\n",
            "shutdown_grace",
            "is not a duration",
        ),
        (
            "max_body_bytes = \"10 furlongs\"\n",
            "max_body_bytes",
            "unknown unit \"furlongs\"; use B, kB, MB",
        ),
        (
            "max_body_bytes = 0\n",
            "max_body_bytes",
            "must be above 0 bytes",
        ),
        (
            "[identity.forward_auth]\ncache_max_bytes = \"0MiB\"\n",
            "identity.forward_auth.cache_max_bytes",
            "must be above 0 bytes",
        ),
    ] {
        refused_everywhere(text, &format!("{field}: "));
        let (_dir, path) = config_file(text);
        let error = stderr(&run_cli(Some(&path), &["check-config"]));
        assert!(error.contains(hint), "{text}: {hint:?} not in {error}");
    }
    // The unit form is accepted, and shown back as the integer it means.
    let (_dir, path) = config_file("max_body_bytes = \"55MB\"\nbody_budget_bytes = \"1GiB\"\n");
    let output = run_cli(Some(&path), &["check-config"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("max_body_bytes = 55000000"));
    assert!(stdout(&output).contains("body_budget_bytes = 1073741824"));
}

#[test]
fn tracing_settings_are_checked() {
    for (section, says) in [
        (
            "otlp_endpoint = \"https://collector:4318\"",
            "https is not supported",
        ),
        (
            "otlp_endpoint = \"collector:4318\"",
            "http://otel-collector:4318",
        ),
        ("sample_ratio = 1.5", "from 0.0"),
        ("service_name = \"\"", "must not be empty"),
    ] {
        let text = format!("{ROUTE}\n[tracing]\n{section}\n");
        refused_everywhere(&text, "tracing.");
        let (_dir, path) = config_file(&text);
        let output = run_cli(Some(&path), &["check-config"]);
        assert!(
            stderr(&output).contains(says),
            "{section}: {}",
            stderr(&output)
        );
    }
    let (_dir, path) = config_file(&format!(
        "{ROUTE}\n[tracing]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 1\n"
    ));
    let output = run_cli(Some(&path), &["check-config"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("otlp_endpoint = \"http://127.0.0.1:4318\""));
}

#[test]
fn spool_directory_must_be_writable() {
    // /proc is a directory no one, root included, can create files in.
    refused_everywhere(&format!("spool_dir = \"/proc\"\n{ROUTE}"), "spool_dir");
    refused_everywhere(
        &format!("spool_dir = \"/nonexistent/spool\"\n{ROUTE}"),
        "spool_dir",
    );
}

#[test]
fn check_config_masks_redis_passwords() {
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("redis-password");
    std::fs::write(&secret, "hunter2-from-file\n").expect("write");
    let (_d, path) = config_file(&format!(
        "[store]\nkind = \"redis\"\npassword_file = {:?}\n",
        secret.display().to_string()
    ));
    let output = run_cli(Some(&path), &["check-config"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(
        printed.contains("url = \"redis://:***@127.0.0.1:6379/0\""),
        "{printed}"
    );
    assert!(printed.contains("password_file"), "{printed}");

    let (_d, path) = config_file(
        "[store]\nkind = \"redis\"\nsentinel = { master = \"m\", nodes = \
         [\"redis://:sentinel-pw@s1:26379\"], password = \"master-pw\" }\n",
    );
    let output = run_cli(Some(&path), &["check-config"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    assert!(
        !printed.contains("sentinel-pw") && !printed.contains("master-pw"),
        "{printed}"
    );

    // A malformed URL from the environment is named, its password not shown.
    let (_d, path) = config_file("[store]\nkind = \"redis\"\nurl_env = \"QP_TEST_REDIS_URL\"\n");
    let output = std::process::Command::new(crate::support::binary::BINARY)
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .env("QP_TEST_REDIS_URL", "http://:env-secret@cache:6379")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("store.url_env"),
        "{}",
        stderr(&output)
    );
    assert!(
        !stderr(&output).contains("env-secret"),
        "{}",
        stderr(&output)
    );
}

/// An upstream that saves an image for every request and says so.
async fn saving_upstream() -> TestUpstream {
    TestUpstream::start(|_: RecordedRequest| async move {
        Reply::ok().header("x-images-saved", "1").body("an image")
    })
    .await
}

#[tokio::test]
async fn redis_password_from_a_file_and_url_from_the_environment_work_unlogged() {
    let redis = RedisServer::start();
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "requirepass", "hunter2-s3cret"]),
        "OK"
    );
    let upstream = saving_upstream().await;
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("redis-password");
    std::fs::write(&secret, "hunter2-s3cret\n").expect("write");
    let base = format!("upstream = \"http://{}\"\n{ROUTE}", upstream.authority());

    // The password from a file, added to store.url.
    let config = format!(
        "{base}\n[store]\nkind = \"redis\"\nurl = \"{}\"\npassword_file = {:?}\n",
        redis.url(),
        secret.display().to_string()
    );
    let binary = Binary::start(&config, &[]).await;
    let proxy = TestClient::new(binary.proxy);
    assert_eq!(
        proxy.generate("/gen/", "u1", "free").await.status,
        StatusCode::OK
    );
    // Counted in that Redis: the second is denied on the spot.
    assert_eq!(
        proxy.generate("/gen/", "u1", "free").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert!(
        !binary.logs().join("\n").contains("hunter2"),
        "{}",
        binary.logs().join("\n")
    );
    drop(binary);

    // The whole URL from the environment.
    let url = redis.url().replace("redis://", "redis://:hunter2-s3cret@");
    let config = format!("{base}\n[store]\nkind = \"redis\"\nurl_env = \"QP_TEST_REDIS_URL\"\n");
    let binary = Binary::start(&config, &[("QP_TEST_REDIS_URL", &url)]).await;
    let proxy = TestClient::new(binary.proxy);
    // Same Redis, same user: already at the limit.
    assert_eq!(
        proxy.generate("/gen/", "u1", "free").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        proxy.generate("/gen/", "u2", "free").await.status,
        StatusCode::OK
    );
    assert!(
        !binary.logs().join("\n").contains("hunter2"),
        "{}",
        binary.logs().join("\n")
    );
}

#[test]
fn check_config_online_binds_and_pings() {
    let redis = RedisServer::start();
    let good = format!("[store]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url());
    let with_ports = |text: &str| crate::support::binary::prepare(text);
    let (_d, path) = config_file(&with_ports(&good));
    let output = run_cli(Some(&path), &["check-config", "--online"]);
    assert!(output.status.success(), "{}", stderr(&output));

    // Redis not answering: the file is fine, the world is not (exit 1).
    let dead = TcpListener::bind("127.0.0.1:0").expect("port");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    let (_d, path) = config_file(&with_ports(&format!(
        "[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:{dead_port}/0\"\n"
    )));
    let output = run_cli(Some(&path), &["check-config", "--online"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("store"), "{}", stderr(&output));
    // Offline, the same file passes.
    assert!(run_cli(Some(&path), &["check-config"]).status.success());

    // The proxy's port taken.
    let taken = TcpListener::bind("127.0.0.1:0").expect("port");
    let text = format!(
        "listen = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        taken.local_addr().expect("addr")
    );
    let (_d, path) = config_file(&text);
    let output = run_cli(Some(&path), &["check-config", "--online"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("listen"), "{}", stderr(&output));
    assert!(run_cli(Some(&path), &["check-config"]).status.success());
}

#[tokio::test]
async fn reload_refuses_a_config_that_cannot_work_with_400() {
    let upstream = saving_upstream().await;
    let token = "reload-token-1";
    let good = format!(
        "upstream = \"http://{}\"\n[admin]\ntoken_env = \"QP_TEST_TOKEN\"\n{ROUTE}",
        upstream.authority()
    );
    let binary = Binary::start(&good, &[("QP_TEST_TOKEN", token)]).await;
    let admin = TestClient::new(binary.admin);
    let bearer = format!("Bearer {token}");
    for (bad, field) in [
        (good.replace("\"POST\"", "\"PSOT\""), "routes[0].method"),
        (
            good.replace("[admin]", "[store]\non_store_error = \"local\"\n[admin]"),
            "store.on_store_error",
        ),
        (
            good.replace("[admin]", "spool_dir = \"/proc\"\n[admin]"),
            "spool_dir",
        ),
    ] {
        binary.write_config(&bad);
        let answer = admin
            .send(
                Method::POST,
                "/v1/reload",
                &[("authorization", &bearer)],
                "",
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text());
        assert!(answer.text().contains(field), "{field}: {}", answer.text());
    }
    // Still serving the first config.
    let proxy = TestClient::new(binary.proxy);
    assert_eq!(
        proxy.generate("/gen/", "r", "free").await.status,
        StatusCode::OK
    );
}

/// The value of one series in a Prometheus text page.
fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{page}"))
}

#[tokio::test]
async fn plan_case_and_unknown_plans() {
    let upstream = saving_upstream().await;
    let base = format!("upstream = \"http://{}\"\n{ROUTE}", upstream.authority());

    // Sensitive (the default): "Pro" is not "pro"; the default plan (daily
    // 1) decides, the name is logged once and counted each time.
    let binary = Binary::start(&base, &[]).await;
    let proxy = TestClient::new(binary.proxy);
    assert_eq!(
        proxy.generate("/gen/", "a", "Pro").await.status,
        StatusCode::OK
    );
    let second = proxy.generate("/gen/", "a", "Pro").await;
    assert_eq!(
        second.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        second.text()
    );
    let unknown = |l: &serde_json::Value| {
        l["plan"] == "Pro"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("unknown plan"))
    };
    binary.wait_for_logs(1, WITHIN, unknown).await;
    assert_eq!(binary.count_logs(unknown), 1, "logged once per name");
    let page = TestClient::new(binary.admin)
        .send(Method::GET, "/metrics", &[], "")
        .await
        .text();
    assert_eq!(metric(&page, "quota_proxy_unknown_plan_total"), 2.0);
    drop(binary);

    // Insensitive: "Pro" is "pro" (daily 5).
    let binary = Binary::start(
        &base.replace("[identity]", "[identity]\nplan_case = \"insensitive\""),
        &[],
    )
    .await;
    let proxy = TestClient::new(binary.proxy);
    for _ in 0..5 {
        assert_eq!(
            proxy.generate("/gen/", "a", "Pro").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        proxy.generate("/gen/", "a", "PRO").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(binary.count_logs(unknown), 0);

    // Two plans that are one under insensitive matching: refused.
    refused_everywhere(
        &ROUTE
            .replace("[identity]", "[identity]\nplan_case = \"insensitive\"")
            .replace("pro = ", "Pro = { daily = 2 }\npro = "),
        "plans",
    );
}
