//! The deployments outside Kubernetes agree with the code: the Dockerfile
//! (multi-stage, unprivileged, the ports and the stop signal, links to
//! docs that exist) and the systemd unit (SIGHUP reload, a stop timeout
//! longer than the drain, credentials, and a config to install whose
//! identity a client cannot choose).

use std::time::Duration;

use quota_proxy::app::SETTLE_FLUSH_MIN;
use quota_proxy::config::{Config, IdentityKind};

use crate::deploy::{STOP_SPARE, deploy, read, repo};

#[test]
fn dockerfile_builds_in_stages_runs_unprivileged_and_links_docs_that_exist() {
    let defaults = Config::default();
    let text = read(&deploy("Dockerfile"));
    for (at, _) in text.match_indices("docs/") {
        let link = text[at..]
            .split(|c: char| !(c.is_ascii_alphanumeric() || "/._-".contains(c)))
            .next()
            .unwrap_or("")
            .trim_end_matches('.');
        assert!(
            repo(link).is_file(),
            "the Dockerfile points to {link}, which does not exist"
        );
    }
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let stages = lines.iter().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "a multi-stage build");
    let last_stage = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("FROM");
    let runtime = &lines[last_stage..];
    let value = |instruction: &str| {
        runtime
            .iter()
            .find_map(|l| l.strip_prefix(instruction))
            .unwrap_or_else(|| panic!("the runtime stage has no {instruction}"))
            .trim()
    };
    let user = value("USER ");
    assert!(
        !matches!(user.split(':').next(), Some("root" | "0")),
        "USER {user}"
    );
    let exposed: Vec<u16> = value("EXPOSE ")
        .split_whitespace()
        .map(|p| p.parse().expect("port"))
        .collect();
    assert!(exposed.contains(&defaults.listen.port()));
    assert!(exposed.contains(&defaults.admin.listen.port()));
    assert_eq!(value("STOPSIGNAL "), "SIGTERM");
    assert!(value("ENTRYPOINT ").contains("quota-proxy"));
}

#[test]
fn systemd_unit_reloads_with_sighup_and_waits_for_the_drain() {
    let defaults = Config::default();
    let text = read(&deploy("systemd/quota-proxy.service"));
    let setting = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in the unit"))
    };
    assert!(setting("ExecStart").ends_with(" serve"));
    assert!(setting("ExecReload").contains("-HUP $MAINPID"));
    assert_eq!(setting("KillSignal"), "SIGTERM");
    assert_eq!(setting("DynamicUser"), "yes");
    assert_eq!(setting("RestartPreventExitStatus"), "2");
    let stop = Duration::from_secs(setting("TimeoutStopSec").parse().expect("seconds"));
    assert!(
        stop >= defaults.shutdown_grace.get()
            + 2 * SETTLE_FLUSH_MIN
            + defaults.store.flush_timeout
            + STOP_SPARE,
        "TimeoutStopSec {stop:?} is shorter than the drain"
    );
    let credential = setting("LoadCredential");
    let (name, _) = credential.split_once(':').expect("name:path");
    assert!(
        text.contains(&format!("/run/credentials/quota-proxy.service/{name}")),
        "the unit's comment shows token_file pointing at the credential"
    );
}

/// The config the unit's comment installs is the chat app's preset: an
/// identity the client cannot choose (the default config's header identity
/// is whatever a client behind nginx sends), on the addresses the comment
/// puts nginx and gunicorn at.
#[test]
fn systemd_unit_installs_a_config_whose_identity_clients_cannot_choose() {
    let text = read(&deploy("systemd/quota-proxy.service"));
    let install = text
        .lines()
        .find(|l| l.contains("install ") && l.ends_with(" /etc/quota-proxy/quota-proxy.toml"))
        .expect("the comment installs /etc/quota-proxy/quota-proxy.toml");
    let source = install
        .split_whitespace()
        .rev()
        .nth(1)
        .expect("install SOURCE DEST");
    let config = Config::from_toml(&read(&repo(source)))
        .unwrap_or_else(|e| panic!("{source} does not load: {e}"));
    assert_ne!(
        config.identity.kind,
        IdentityKind::Header,
        "{source}: behind nginx, identity headers are the client's choice"
    );
    assert!(
        config.usage.report_marker.is_some(),
        "{source}: the app's streamed replies report in band"
    );
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080", "{source}");
    assert_eq!(config.upstream.authority, "127.0.0.1:8000", "{source}");
}
