use std::time::Duration;

use super::*;

#[test]
fn empty_file_is_the_defaults() {
    let c = Config::from_toml("").expect("defaults");
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(String::from(c.upstream), "http://127.0.0.1:8000");
    assert_eq!(c.store.kind, StoreKind::Memory);
    assert_eq!(c.periods.timezone.0, chrono_tz::Asia::Tehran);
}

#[test]
fn shipped_config_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_PATH);
    let c = Config::load(&path).expect("config/quota-proxy.toml loads");
    assert_eq!(c.plans["free"].daily, 3);
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[0].deny_status, 403);
    assert_eq!(c.routes[1].deny_status, 429);
    assert_eq!(c.routes[1].flag, "generate_image");
    assert_eq!(c.timeouts.response_head.get(), Duration::from_secs(300));
    assert_eq!(
        (c.shadow, String::from(c.shadow_header.clone())),
        (false, "x-quota-shadow-denied".to_owned())
    );
    assert_eq!(c.status.path, None);
    // Its [tracing] section spells out the defaults: off.
    assert_eq!(c.tracing, TracesConfig::default());
}

#[test]
fn issue_shape_loads() {
    let text = r#"
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:8000"
max_body_bytes = 10485760

[timeouts]
connect = "2s"
response_head = "300s"
idle = "120s"

[store]
kind = "memory"
url = "redis://127.0.0.1:6379/0"
key_prefix = "quota:"
on_store_error = "allow"
reservation_ttl = "180s"

[periods]
timezone = "Asia/Tehran"
week_start = "monday"

[identity]
user_header = "X-User-Id"
plan_header = "X-Subscription-Type"
default_plan = "free"
anonymous = "forward"

[plans]
free = { daily = 3, weekly = 10, monthly = 30 }
pro = { daily = 50, weekly = 0, monthly = 1000 }

[[routes]]
method = "POST"
path = "/chat/session/{session_id}/send/"
flag = "generate_image"
deny_status = 403

[[routes]]
method = "POST"
path = "/api/chatbot/sessions/{id}/validate_message/"
deny_status = 429

[usage]
report_header = "X-Images-Saved"
report_json_field = "images_saved"
count = "requests"

[messages]
daily = "شما به حد مجاز تولید تصویر روزانه ({limit} عدد) رسیده‌اید"
weekly = "شما به حد مجاز تولید تصویر هفتگی ({limit} عدد) رسیده‌اید"
monthly = "شما به حد مجاز تولید تصویر ماهانه ({limit} عدد) رسیده‌اید"
"#;
    let c = Config::from_toml(text).expect("the issue's config shape loads");
    assert_eq!(c.store.reservation_ttl.get(), Duration::from_secs(180));
    // What check-config prints loads back to the same thing.
    let again = Config::from_toml(&c.to_toml()).expect("round trip");
    assert_eq!(again.to_toml(), c.to_toml());
}

fn error_of(text: &str) -> String {
    Config::from_toml(text).expect_err("must fail").to_string()
}

#[test]
fn errors_name_the_field() {
    assert!(error_of("[store]\nkind = \"mongo\"").contains("kind"));
    assert!(error_of("[periods]\ntimezone = \"Mars/Base\"").contains("timezone"));
    assert!(error_of("[periods]\nweek_start = \"someday\"").contains("week_start"));
    assert!(error_of("upstream = \"https://x:1\"").contains("upstream"));
    assert!(error_of("lisen = \"127.0.0.1:1\"").contains("lisen"));
    assert!(error_of("[identity]\ndefault_plan = \"gold\"").starts_with("identity.default_plan"));
    assert!(error_of("[store]\nkind = \"redis\"\nurl = \"http://x\"").starts_with("store.url"),);
    assert!(
        error_of("[[routes]]\nmethod = \"POST\"\npath = \"/x\"\ndeny_status = 200")
            .starts_with("routes[0].deny_status")
    );
    assert!(error_of("[timeouts]\nidle = \"0s\"").starts_with("timeouts.idle"));
    assert!(error_of("[plans]\nfree = { daly = 3 }").contains("daly"));
}

#[test]
fn operations_sections() {
    let c = Config::from_toml("").expect("defaults");
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.shutdown_grace.get(), Duration::from_secs(30));
    assert_eq!(c.log.format, LogFormat::Pretty);
    assert_eq!(c.log.filter, "info");
    assert!(error_of("shutdown_grace = \"0s\"").starts_with("shutdown_grace"));
    assert!(
        error_of("listen = \"127.0.0.1:9090\"\n[admin]\nlisten = \"127.0.0.1:9090\"")
            .starts_with("admin.listen")
    );
    assert!(
        error_of("[admin]\ntoken_env = \"T\"\ntoken_file = \"/t\"").starts_with("admin.token_env")
    );
    assert!(error_of("[log]\nfilter = \"quota_proxy=loud\"").starts_with("log.filter"));
    assert!(error_of("[log]\nformat = \"xml\"").contains("format"));
    // Port 0 twice is two free ports, not a clash.
    Config::from_toml("listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"")
        .expect("port 0 twice");
}

#[test]
fn flag_rules_forms() {
    let c = Config::from_toml(
        r#"
        [[routes]]
        method = "post"
        path = "/a/"
        flag_rules = "django-send-message"
        [[routes]]
        method = "POST"
        path = "/b/"
        flag_rules = { form = ["true", "on"], json = "python", ignore_case = true }
        [[routes]]
        method = "POST"
        path = "/c/"
        flag_rules = "django-form"
        [[routes]]
        method = "POST"
        path = "/d/"
        flag_rules = { query = true }
        [[routes]]
        method = "POST"
        path = "/e/"
        "#,
    )
    .expect("flag rules");
    // What each preset means is pinned by the value tables in
    // `flag::tests`; here only which one each spelling picks.
    assert_eq!(c.routes[0].flag_rules, FlagRules::DjangoSendMessage);
    assert_eq!(c.routes[2].flag_rules, FlagRules::DjangoForm);
    assert_eq!(
        c.routes[4].flag_rules,
        FlagRules::Drf,
        "the default is the drf preset"
    );
    let FlagRules::Table(b) = &c.routes[1].flag_rules else {
        panic!("a table: {:?}", c.routes[1].flag_rules);
    };
    assert_eq!(b.form, FlagRule::Exact(vec!["true".into(), "on".into()]));
    assert_eq!(b.json, FlagRule::PYTHON);
    assert!(b.ignore_case);
    assert!(!b.query, "the query string is not read unless asked");
    let FlagRules::Table(d) = &c.routes[3].flag_rules else {
        panic!("a table: {:?}", c.routes[3].flag_rules);
    };
    assert!(d.query && !d.ignore_case);
    assert_eq!((&d.form, &d.json), (&FlagRule::DRF, &FlagRule::DRF));
    // What check-config prints loads back to the same rules.
    let again = Config::from_toml(&c.to_toml()).expect("round trip");
    for (a, b) in again.routes.iter().zip(&c.routes) {
        assert_eq!(a.flag_rules, b.flag_rules);
    }
    let unknown = error_of("[[routes]]\nmethod = \"POST\"\npath = \"/x\"\nflag_rules = \"nope\"");
    assert!(
        unknown.contains("flag_rules") && unknown.contains("django-form"),
        "{unknown}"
    );
    assert!(
        error_of("[[routes]]\nmethod = \"POST\"\npath = \"/x\"\nflag_rules = { quer = true }")
            .contains("flag_rules")
    );
}

#[test]
fn django_preset_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/django-mobixai.toml");
    let c = Config::load(&path).expect("config/django-mobixai.toml loads");
    assert_eq!(c.routes[0].flag_rules, FlagRules::DjangoSendMessage);
    assert!(c.routes[0].probe.is_some());
    assert!(!c.messages.details);
    assert_eq!(c.status.path.as_deref(), Some("/quota-status/"));
    assert!(!c.shadow && !c.routes[0].shadow && !c.plans["free"].shadow);
    assert_eq!(
        c.usage.report_marker.as_ref().map(|m| m.start.as_str()),
        Some("[IMAGES_SAVED]")
    );
}

#[test]
fn body_spool_fields() {
    let c = Config::from_toml("").expect("defaults");
    assert_eq!(c.body_buffer_bytes.get(), 1024 * 1024);
    assert_eq!(c.spool_dir, None);
    let dir = std::env::temp_dir();
    let c = Config::from_toml(&format!(
        "body_buffer_bytes = 0\nspool_dir = {:?}",
        dir.display().to_string()
    ))
    .expect("spool fields");
    assert_eq!(c.body_buffer_bytes.get(), 0);
    assert_eq!(c.spool_dir.as_deref(), Some(dir.as_path()));
    assert!(Config::from_toml(&c.to_toml()).is_ok(), "round trip");
    let mut config = Config::from_toml("spool_dir = \"/nonexistent/quota-proxy-spool\"")
        .expect("checked with the machine, not here");
    let missing = config
        .resolve_environment()
        .expect_err("must fail")
        .to_string();
    assert!(
        missing.starts_with("spool_dir: /nonexistent/quota-proxy-spool is not a directory"),
        "{missing}"
    );
}

#[test]
fn store_defaults_hold_redis_fast() {
    let c = Config::from_toml("").expect("defaults");
    assert_eq!(c.store.command_timeout.get(), Duration::from_millis(50));
    assert_eq!(c.store.breaker.failures, 5);
    assert_eq!(c.store.breaker.open_for.get(), Duration::from_secs(2));
    assert_eq!(c.store.settle_queue, 100_000);
    assert_eq!(c.store.flush_timeout, Duration::from_secs(5));
    assert!(c.store.cluster.is_empty() && c.store.sentinel.is_none());
}

#[test]
fn store_topologies_load() {
    let c = Config::from_toml(
        r#"[store]
kind = "redis"
cluster = ["redis://10.0.0.1:6379", "rediss://10.0.0.2:6379"]
on_store_error = "local"
breaker = { failures = 3, open_for = "500ms" }"#,
    )
    .expect("cluster");
    assert_eq!(c.store.cluster.len(), 2);
    assert_eq!(c.store.on_store_error, StoreErrorPolicy::Local);
    assert_eq!(c.store.breaker.open_for.get(), Duration::from_millis(500));
    let c = Config::from_toml(
        r#"[store]
kind = "redis"
sentinel = { master = "quota", nodes = ["redis://s1:26379"], password = "pw", db = 2 }"#,
    )
    .expect("sentinel");
    let sentinel = c.store.sentinel.expect("sentinel set");
    assert_eq!((sentinel.master.as_str(), sentinel.db), ("quota", 2));
    // What check-config prints loads again.
    let again = Config::from_toml(
        &Config::from_toml("[store]\nkind = \"redis\"\ncluster = [\"redis://a:1\"]")
            .expect("cluster")
            .to_toml(),
    )
    .expect("round trip");
    assert_eq!(again.store.cluster, ["redis://a:1"]);
}

#[test]
fn store_errors_name_the_field() {
    let error_of = |text: &str| {
        Config::from_toml(text)
            .expect_err("invalid store config")
            .to_string()
    };
    let redis = "[store]\nkind = \"redis\"\n";
    assert!(
        error_of(&format!("{redis}cluster = [\"redis://a:1\", \"a:2\"]"))
            .starts_with("store.cluster[1]: expected redis://")
    );
    assert!(
        error_of(&format!(
            "{redis}cluster = [\"redis://a:1\"]\nsentinel = {{ master = \"m\", nodes = [\"redis://s:1\"] }}"
        ))
        .starts_with("store.sentinel:")
    );
    assert!(
        error_of(&format!(
            "{redis}sentinel = {{ master = \"\", nodes = [\"redis://s:1\"] }}"
        ))
        .starts_with("store.sentinel.master:")
    );
    assert!(
        error_of(&format!(
            "{redis}sentinel = {{ master = \"m\", nodes = [] }}"
        ))
        .starts_with("store.sentinel.nodes:")
    );
    assert!(
        error_of(&format!(
            "{redis}sentinel = {{ master = \"m\", nodes = [\"s:1\"] }}"
        ))
        .starts_with("store.sentinel.nodes[0]:")
    );
    assert!(error_of("[store]\nbreaker = { failures = 0 }").starts_with("store.breaker.failures:"));
    assert!(
        error_of("[store]\nbreaker = { open_for = \"0s\" }").starts_with("store.breaker.open_for:")
    );
    assert!(error_of("[store]\nsettle_queue = 0").starts_with("store.settle_queue:"));
    assert!(error_of("[store]\nlocal_max_users = 0").starts_with("store.local_max_users:"));
    assert!(error_of("[store]\nbreaker = { fails = 2 }").contains("fails"));
}

#[test]
fn body_limits_parse_and_name_the_field_to_fix() {
    let c = Config::from_toml("").expect("defaults");
    assert_eq!(c.timeouts.client_body.get(), Duration::from_secs(30));
    assert_eq!(c.timeouts.client_head.get(), Duration::from_secs(30));
    assert_eq!(c.body_budget_bytes.get(), 256 * 1024 * 1024);
    assert_eq!(c.request_buffering, RequestBuffering::Inspected);
    assert_eq!(c.max_connections_per_ip, None);
    assert_eq!(c.max_connections.get(), 10_000);
    let c = Config::from_toml(
        "request_buffering = \"all\"\nmax_connections = 64\nmax_connections_per_ip = 8\n[timeouts]\nclient_body = \"5s\"\nclient_head = \"2s\"",
    )
    .expect("valid");
    assert_eq!(c.max_connections.get(), 64);
    assert_eq!(c.request_buffering, RequestBuffering::All);
    assert_eq!(c.max_connections_per_ip.map(|n| n.get()), Some(8));
    assert_eq!(c.timeouts.client_body.get(), Duration::from_secs(5));
    assert_eq!(c.timeouts.client_head.get(), Duration::from_secs(2));
    let small = Config::from_toml("max_body_bytes = 1000\nbody_budget_bytes = 999")
        .expect_err("budget below one body");
    assert!(
        small.to_string().starts_with("body_budget_bytes:"),
        "{small}"
    );
    let zero = Config::from_toml("[timeouts]\nclient_body = \"0s\"").expect_err("zero");
    assert!(
        zero.to_string().starts_with("timeouts.client_body:"),
        "{zero}"
    );
    let zero = Config::from_toml("[timeouts]\nclient_head = \"0s\"").expect_err("zero");
    assert!(
        zero.to_string().starts_with("timeouts.client_head:"),
        "{zero}"
    );
    assert!(Config::from_toml("max_connections_per_ip = 0").is_err());
    assert!(Config::from_toml("max_connections = 0").is_err());
    assert!(Config::from_toml("request_buffering = \"some\"").is_err());
    let preset =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/django-mobixai.toml");
    let preset = Config::load(&preset).expect("the Django preset loads");
    assert_eq!(preset.request_buffering, RequestBuffering::All);
}

#[test]
fn report_token_fields() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/django-mobixai.toml");
    let c = Config::load(&path).expect("config/django-mobixai.toml loads");
    assert!(c.usage.require_report_token);
    assert_eq!(
        c.usage.report_token_header,
        HeaderField::from_static("x-quota-report-token")
    );
    assert_eq!(c.usage.max_images_per_response, 16);
    let marker = "[usage]\nreport_marker = { start = \"[A]\", end = \"[B]\" }\n";
    assert!(
        error_of(&format!("{marker}report_token_header = \"\""))
            .starts_with("usage.report_token_header")
    );
    assert!(
        Config::from_toml(&format!(
            "{marker}report_token_header = \"\"\nrequire_report_token = false"
        ))
        .is_ok()
    );
    assert!(
        error_of("[usage]\nreport_token_header = \"a b\"").starts_with("usage.report_token_header")
    );
    assert!(
        error_of("[usage]\nmax_images_per_response = 0")
            .starts_with("usage.max_images_per_response")
    );
}

/// `check-config` prints a config that parses again to the same config:
/// every shipped config, defaults filled in, and one with every value type
/// in its unit form.
#[test]
fn check_config_output_parses_to_the_same_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut texts: Vec<(String, String)> = [
        "config/quota-proxy.toml",
        "config/django-mobixai.toml",
        "deploy/kubernetes/quota-proxy.toml",
    ]
    .into_iter()
    .map(|file| {
        let text = std::fs::read_to_string(root.join(file)).expect(file);
        (file.to_owned(), text)
    })
    .collect();
    texts.push((
        "units".to_owned(),
        r#"
max_body_bytes = "55MB"
body_buffer_bytes = "512KiB"
body_budget_bytes = "1GiB"
shutdown_grace = "1m 30s"
[timeouts]
connect = "250ms"
[usage]
report_header = "X-Images-Saved"
report_token_header = ""
require_report_token = false
max_json_bytes = "2MiB"
[identity]
user_header = "X-Verified-User"
[identity.forward_auth]
forward_headers = ["Cookie", "X-Api-Key"]
cache_max_bytes = "8MiB"
"#
        .to_owned(),
    ));
    for (name, text) in texts {
        let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let shown = config.to_toml();
        let again = Config::from_toml(&shown).unwrap_or_else(|e| panic!("{name}: {e}\n{shown}"));
        assert_eq!(again, config, "{name} → {shown}");
    }
    let units = Config::from_toml("max_body_bytes = \"55MB\"\nbody_budget_bytes = \"1GiB\"")
        .expect("units");
    assert_eq!(units.max_body_bytes.get(), 55_000_000);
    assert_eq!(units.body_budget_bytes.get(), 1 << 30);
}

#[test]
fn request_header_names_with_underscores_are_refused_with_the_dashed_name() {
    for (toml, field) in [
        (
            "[identity]\nuser_header = \"X_User_Id\"",
            "identity.user_header",
        ),
        (
            "[usage]\nreport_token_header = \"X_Quota_Report_Token\"",
            "usage.report_token_header",
        ),
        (
            "[identity.forward_auth]\nurl = \"/id/\"\nforward_headers = [\"Cookie\", \"X_Token\"]",
            "identity.forward_auth.forward_headers[1]",
        ),
        (
            "[identity.jwt]\nheader_name = \"X_Access_Token\"",
            "identity.jwt.header_name",
        ),
    ] {
        let error = Config::from_toml(toml).expect_err(toml).to_string();
        assert!(error.starts_with(field), "{error}");
        assert!(error.contains('-'), "{error}");
    }
    // Routing headers to strip may hold one: they are removed, not read.
    assert!(Config::from_toml("strip_routing_headers = [\"SCRIPT_NAME\"]").is_ok());
}

#[test]
fn jwt_header_types_must_be_one_word_each() {
    let jwt = |types: &str| {
        Config::from_toml(&format!(
            "[identity]\nkind = \"jwt\"\n[identity.jwt]\nsecret_env = \"K\"\nheader_types = {types}\n"
        ))
    };
    let listed = jwt("[\"JWT\", \"Bearer\"]").expect("two schemes");
    assert_eq!(listed.identity.jwt.header_types, ["JWT", "Bearer"]);
    for bad in ["[]", "[\"\"]", "[\"Bearer token\"]"] {
        let err = jwt(bad).expect_err(bad).to_string();
        assert!(err.contains("identity.jwt.header_types"), "{bad}: {err}");
    }
    let default = Config::from_toml("").expect("defaults");
    assert_eq!(default.identity.jwt.header_types, ["Bearer"]);
}
