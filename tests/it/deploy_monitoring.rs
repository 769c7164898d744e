//! deploy/kubernetes is watched as the code reports itself: the admin port
//! is closed but to monitoring, the metrics are scraped (and disruptions
//! budgeted), and every metric the Grafana dashboard and the
//! PrometheusRule alerts query is exported by src/counters.rs and
//! src/metrics.rs, a counter an alert adds up from the start. The bundle is
//! rendered by `deploy.rs`'s helpers.

use std::collections::BTreeSet;

use serde_norway::Value;

use crate::deploy::{
    bundle, container_port, find, proxy_container, read, repo, seq, str_of, u64_of,
};
use crate::support::binary::metrics_at_start;

#[test]
fn admin_port_is_admitted_only_from_monitoring() {
    let bundle = bundle();
    let proxy = proxy_container(&bundle);
    let policy = find(&bundle, "NetworkPolicy", "chat-app");
    let selector = &policy["spec"]["podSelector"]["matchLabels"];
    let labels = &find(&bundle, "Deployment", "chat-app")["spec"]["template"]["metadata"]["labels"];
    for (key, value) in selector.as_mapping().expect("matchLabels") {
        assert_eq!(&labels[key], value, "the policy selects the app's pods");
    }
    let admin_port = container_port(proxy, &Value::String("admin".to_owned()));
    let http_port = container_port(proxy, &Value::String("http".to_owned()));
    let mut http_open = false;
    for rule in seq(&policy["spec"]["ingress"], "ingress") {
        let ports: Vec<u64> = seq(&rule["ports"], "a rule without ports admits every port")
            .iter()
            .map(|p| container_port(proxy, &p["port"]))
            .collect();
        if ports.contains(&http_port) {
            http_open = true;
        }
        if ports.contains(&admin_port) {
            let from = seq(&rule["from"], "the admin rule must say from where");
            assert!(!from.is_empty());
            for peer in from {
                assert_eq!(
                    peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                    "monitoring",
                    "admin port admitted from {peer:?}"
                );
                assert!(peer["podSelector"].is_null() && peer["ipBlock"].is_null());
            }
        }
    }
    assert!(http_open, "clients reach the proxy port");
}

#[test]
fn metrics_are_scraped_and_disruptions_budgeted() {
    let bundle = bundle();
    let deployment = find(&bundle, "Deployment", "chat-app");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &Value| {
        selector
            .as_mapping()
            .expect("matchLabels")
            .iter()
            .all(|(k, v)| &labels[k] == v)
    };

    let admin = find(&bundle, "Service", "chat-app-admin");
    assert!(selects(&admin["spec"]["selector"]));
    let port = &seq(&admin["spec"]["ports"], "ports")[0];
    assert_eq!(port["targetPort"], "admin");
    let monitor = find(&bundle, "ServiceMonitor", "quota-proxy");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels")
    {
        assert_eq!(
            &admin["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the admin Service"
        );
    }
    let endpoint = &seq(&monitor["spec"]["endpoints"], "endpoints")[0];
    assert_eq!(endpoint["port"], port["name"]);
    assert_eq!(endpoint["path"], "/metrics");

    let budget = find(&bundle, "PodDisruptionBudget", "chat-app");
    assert!(selects(&budget["spec"]["selector"]["matchLabels"]));
    let replicas = u64_of(&deployment["spec"]["replicas"], "replicas");
    let unavailable = u64_of(&budget["spec"]["maxUnavailable"], "maxUnavailable");
    assert!(
        unavailable >= 1 && unavailable < replicas,
        "drains go one pod at a time"
    );
}

/// The metric names the code exports (`pub const … = "quota_proxy_…"` in
/// src/counters.rs and src/metrics.rs).
fn exported_metrics() -> BTreeSet<String> {
    let names: BTreeSet<String> = ["src/counters.rs", "src/metrics.rs"]
        .iter()
        .flat_map(|file| {
            read(&repo(file))
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|l| l.starts_with("pub const "))
        .filter_map(|l| l.split('"').nth(1).map(str::to_owned))
        .filter(|n| n.starts_with("quota_proxy_"))
        .collect();
    assert!(names.contains("quota_proxy_requests_total"), "{names:?}");
    names
}

/// Every `quota_proxy_…` name in `query`, histogram suffixes removed.
fn queried(query: &str, exported: &BTreeSet<String>) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("quota_proxy_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| exported.contains(*b)))
            .unwrap_or(name);
        names.push(base.to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn dashboard_and_alerts_query_only_metrics_the_code_exports() {
    let bundle = bundle();
    let exported = exported_metrics();

    let rule = find(&bundle, "PrometheusRule", "quota-proxy");
    let mut alerted = BTreeSet::new();
    for group in seq(&rule["spec"]["groups"], "groups") {
        for rule in seq(&group["rules"], "rules") {
            let expr = str_of(&rule["expr"], "expr");
            for name in queried(expr, &exported) {
                assert!(
                    exported.contains(&name),
                    "alert {:?} queries unknown {name}",
                    rule["alert"]
                );
                alerted.insert(name);
            }
        }
    }
    for needed in [
        "quota_proxy_fail_open_total",
        "quota_proxy_settlements_dropped_total",
        "quota_proxy_store_call_duration_seconds",
        "quota_proxy_upstream_responses_total",
    ] {
        assert!(alerted.contains(needed), "no alert on {needed}");
    }

    let map = find(&bundle, "ConfigMap", "quota-proxy-dashboard");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    let json = str_of(&map["data"]["quota-proxy-dashboard.json"], "dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(json).expect("dashboard JSON");
    let mut charted = BTreeSet::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for name in queried(expr, &exported) {
                assert!(
                    exported.contains(&name),
                    "panel {} queries unknown {name}",
                    panel["title"]
                );
                charted.insert(name);
            }
        }
    }
    for needed in [
        "quota_proxy_requests_total",
        "quota_proxy_denials_total",
        "quota_proxy_store_call_duration_seconds",
        "quota_proxy_settlements_pending",
        "quota_proxy_fail_open_total",
    ] {
        assert!(charted.contains(needed), "no panel charts {needed}");
    }
    assert!(json.contains("retry_queue"), "the retry queue has a panel");
}

/// Every `increase(NAME{SELECTOR}[…])` of `expr`: the counter's name and
/// its selector's `key="value"` pairs.
fn increased(expr: &str) -> Vec<(String, Vec<String>)> {
    expr.split("increase(")
        .skip(1)
        .map(|call| {
            let call = &call[..call.find('[').expect("increase(…[range])")];
            let (name, selector) = call.split_once('{').unwrap_or((call, ""));
            let pairs = selector
                .trim_end_matches('}')
                .split(',')
                .map(str::trim)
                .filter(|pair| !pair.is_empty())
                .map(str::to_owned)
                .collect();
            (name.trim().to_owned(), pairs)
        })
        .collect()
}

/// A counter an alert takes the `increase` of is on `/metrics` from the
/// start, at 0, in every series the alert sums: a series that appears with
/// its first event shows no increase for it, so each pod's first failed
/// reload, or first settlement dropped for a store error, went unalerted.
#[tokio::test]
async fn every_counter_an_alert_adds_up_is_there_from_the_start() {
    let bundle = bundle();
    let rule = find(&bundle, "PrometheusRule", "quota-proxy");
    let mut wanted: Vec<(String, Vec<String>)> = Vec::new();
    for group in seq(&rule["spec"]["groups"], "groups") {
        for rule in seq(&group["rules"], "rules") {
            wanted.extend(increased(str_of(&rule["expr"], "expr")));
        }
    }
    // The alert on dropped settlements sums by reason: each reason the code
    // drops for (src/quota/settle.rs, src/app/mod.rs) is a series of its own.
    for reason in ["store_error", "retry_queue"] {
        wanted.push((
            "quota_proxy_settlements_dropped_total".to_owned(),
            vec![format!("reason=\"{reason}\"")],
        ));
    }
    assert!(
        wanted
            .iter()
            .any(|(name, _)| name == "quota_proxy_config_reloads_total"),
        "{wanted:?}"
    );

    let text = metrics_at_start().await;
    for (name, pairs) in &wanted {
        assert!(
            text.lines().any(|line| {
                line.strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
                    && pairs.iter().all(|pair| line.contains(pair.as_str()))
            }),
            "{name} {pairs:?} is not on /metrics at start:\n{text}"
        );
    }
}
