//! The `[identity]` config fields: their defaults and the shipped file, every
//! field parsed and round-tripped through what `check-config` prints, and
//! errors (of parsing, and of building the source from keys) that name the
//! field to fix.

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use quota_proxy::config::{Config, IdentityErrorPolicy, IdentityKind};
use quota_proxy::identity;

use crate::identity_jwt::fixture;

#[test]
fn defaults_and_the_shipped_file_are_the_header_kind() {
    let c = Config::default();
    assert_eq!(c.identity.kind, IdentityKind::Header);
    assert_eq!(c.identity.on_identity_error, IdentityErrorPolicy::Deny);
    let fa = &c.identity.forward_auth;
    assert_eq!(fa.url, "/api/quota/identity/");
    assert_eq!(
        fa.forward_headers
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<&str>>(),
        ["cookie", "authorization"]
    );
    assert_eq!(fa.timeout.get(), Duration::from_secs(2));
    assert_eq!(fa.cache_ttl, Duration::from_secs(30));
    assert_eq!(fa.negative_cache_ttl, Duration::from_secs(5));
    assert_eq!(fa.cache_max_entries, 100_000);
    assert_eq!(c.identity.jwt.user_id_claim, "user_id");
    assert_eq!(c.identity.jwt.leeway, Duration::from_secs(30));
    assert_eq!(
        fa.endpoint(&c.upstream).expect("endpoint").to_string(),
        "http://127.0.0.1:8000/api/quota/identity/"
    );
    let shipped =
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/quota-proxy.toml"))
            .expect("shipped config");
    assert_eq!(shipped.identity.kind, IdentityKind::Header);
    assert_eq!(
        shipped.identity.on_identity_error,
        IdentityErrorPolicy::Deny
    );
    identity::from_config(&shipped).expect("header source");
}

#[test]
fn every_new_field_parses_and_round_trips() {
    let text = r#"
[identity]
kind = "forward_auth"
on_identity_error = "allow"

[identity.forward_auth]
url = "http://10.0.0.5:8001/who/"
forward_headers = ["Cookie", "Authorization", "X-Api-Key"]
timeout = "750ms"
cache_ttl = "1m"
negative_cache_ttl = "2s"
cache_max_entries = 500

[identity.jwt]
secret_env = "DJANGO_SECRET_KEY"
algorithms = ["HS256", "HS512"]
cookie = "access_token"
issuer = "https://app.example"
audience = "quota-proxy"
leeway = "10s"
user_id_claim = "sub"
plan_claim = "plan"
daily_claim = "daily"
weekly_claim = "weekly"
monthly_claim = "monthly"
"#;
    let c = Config::from_toml(text).expect("config");
    let (fa, jwt) = (&c.identity.forward_auth, &c.identity.jwt);
    assert_eq!(c.identity.kind, IdentityKind::ForwardAuth);
    assert_eq!(c.identity.on_identity_error, IdentityErrorPolicy::Allow);
    assert_eq!(
        fa.endpoint(&c.upstream).expect("endpoint").to_string(),
        "http://10.0.0.5:8001/who/"
    );
    assert_eq!(fa.forward_headers.len(), 3);
    assert_eq!(fa.timeout.get(), Duration::from_millis(750));
    assert_eq!(fa.cache_ttl, Duration::from_secs(60));
    assert_eq!(fa.negative_cache_ttl, Duration::from_secs(2));
    assert_eq!(fa.cache_max_entries, 500);
    assert_eq!(jwt.secret_env.as_deref(), Some("DJANGO_SECRET_KEY"));
    assert_eq!(
        jwt.allowed_algorithms().expect("algorithms"),
        [Algorithm::HS256, Algorithm::HS512]
    );
    assert_eq!(jwt.cookie.as_deref(), Some("access_token"));
    assert_eq!(jwt.issuer.as_deref(), Some("https://app.example"));
    assert_eq!(jwt.audience.as_deref(), Some("quota-proxy"));
    assert_eq!(jwt.leeway, Duration::from_secs(10));
    assert_eq!(jwt.user_id_claim, "sub");
    assert_eq!(jwt.plan_claim.as_deref(), Some("plan"));
    assert_eq!(jwt.daily_claim.as_deref(), Some("daily"));
    assert_eq!(jwt.weekly_claim.as_deref(), Some("weekly"));
    assert_eq!(jwt.monthly_claim.as_deref(), Some("monthly"));
    // What check-config prints loads back to the same thing.
    let again = Config::from_toml(&c.to_toml()).expect("round trip");
    assert_eq!(again.to_toml(), c.to_toml());
    // Other key sources parse too.
    let c = Config::from_toml(
        "[identity]\nkind = \"jwt\"\n[identity.jwt]\njwks_file = \"/etc/keys.json\"\nalgorithms = [\"ES256\"]",
    )
    .expect("jwks");
    assert_eq!(
        c.identity.jwt.jwks_file.as_deref(),
        Some(Path::new("/etc/keys.json"))
    );
    let c = Config::from_toml("[identity]\nkind = \"forward-auth\"").expect("hyphen alias");
    assert_eq!(c.identity.kind, IdentityKind::ForwardAuth);
}

fn error_of(text: &str) -> String {
    Config::from_toml(text).expect_err("must fail").to_string()
}

#[test]
fn bad_values_name_the_field() {
    let fa = "[identity]\nkind = \"forward_auth\"\n[identity.forward_auth]\n";
    let jwt = "[identity]\nkind = \"jwt\"\n[identity.jwt]\n";
    for (text, field) in [
        ("[identity]\nkind = \"oauth\"".to_owned(), "kind"),
        (
            "[identity]\non_identity_error = \"maybe\"".to_owned(),
            "on_identity_error",
        ),
        (
            format!("{fa}url = \"https://app:443/who/\""),
            "identity.forward_auth.url",
        ),
        (
            format!("{fa}url = \"api/quota/\""),
            "identity.forward_auth.url",
        ),
        (
            format!("{fa}forward_headers = []"),
            "identity.forward_auth.forward_headers",
        ),
        (
            format!("{fa}forward_headers = [\"Cookie\", \"bad header\"]"),
            "identity.forward_auth.forward_headers[1]",
        ),
        (
            format!("{fa}timeout = \"0s\""),
            "identity.forward_auth.timeout",
        ),
        (
            format!("{fa}cache_max_entries = 0"),
            "identity.forward_auth.cache_max_entries",
        ),
        (format!("{fa}cache_ttl = \"soon\""), "cache_ttl"),
        (format!("{fa}forwrd_headers = []"), "forwrd_headers"),
        (jwt.to_owned(), "identity.jwt"),
        (
            format!("{jwt}secret_env = \"K\"\nsecret_file = \"/k\""),
            "identity.jwt.secret_file",
        ),
        (
            format!("{jwt}secret_env = \"K\"\nalgorithms = [\"none\"]"),
            "identity.jwt.algorithms",
        ),
        (
            format!("{jwt}secret_env = \"K\"\nalgorithms = [\"RS256\"]"),
            "identity.jwt.algorithms",
        ),
        (
            format!("{jwt}secret_env = \"K\"\nalgorithms = [\"HS257\"]"),
            "identity.jwt.algorithms",
        ),
        (
            format!("{jwt}public_key_file = \"/k.pem\"\nalgorithms = [\"HS256\"]"),
            "identity.jwt.algorithms",
        ),
        (format!("{jwt}secret_env = \"\""), "identity.jwt.secret_env"),
        (
            format!("{jwt}secret_env = \"K\"\ncookie = \"a b\""),
            "identity.jwt.cookie",
        ),
        (
            format!("{jwt}secret_env = \"K\"\nuser_id_claim = \"\""),
            "identity.jwt.user_id_claim",
        ),
        (format!("{jwt}secret_env = \"K\"\nleeway = 30"), "leeway"),
        (format!("{jwt}secrt_env = \"K\""), "secrt_env"),
    ] {
        let message = error_of(&text);
        assert!(
            message.contains(field),
            "{text:?} → {message:?} should name {field}"
        );
    }
    let confusion = error_of(&format!(
        "{jwt}jwks_file = \"/k.json\"\nalgorithms = [\"HS256\"]"
    ));
    assert!(confusion.contains("public key"), "{confusion}");
}

fn from_config_error(text: &str) -> String {
    let config = Config::from_toml(text).expect("valid on its own");
    match identity::from_config(&config) {
        Ok(_) => panic!("{text:?} must fail to build"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn key_problems_name_the_field() {
    let jwt = "[identity]\nkind = \"jwt\"\n[identity.jwt]\n";
    let message = from_config_error(&format!(
        "{jwt}secret_env = \"QUOTA_PROXY_TEST_VARIABLE_THAT_IS_NEVER_SET\""
    ));
    assert!(message.starts_with("identity.jwt.secret_env"), "{message}");
    let message = from_config_error(&format!("{jwt}secret_file = \"/nonexistent/secret\""));
    assert!(message.starts_with("identity.jwt.secret_file"), "{message}");
    let message = from_config_error(&format!(
        "{jwt}public_key_file = {:?}",
        fixture("rs256_private.pem")
    ));
    assert!(
        message.starts_with("identity.jwt.public_key_file"),
        "{message}"
    );
    assert!(message.contains("private key"), "{message}");
    let message = from_config_error(&format!(
        "{jwt}public_key_file = {:?}",
        fixture("jwks.json")
    ));
    assert!(
        message.starts_with("identity.jwt.public_key_file"),
        "{message}"
    );
    let message = from_config_error(&format!(
        "{jwt}public_key_file = {:?}\nalgorithms = [\"ES256\"]",
        fixture("rs256_public.pem")
    ));
    assert!(message.starts_with("identity.jwt.algorithms"), "{message}");
    let message = from_config_error(&format!(
        "{jwt}jwks_file = {:?}",
        fixture("rs256_public.pem")
    ));
    assert!(message.starts_with("identity.jwt.jwks_file"), "{message}");
    let message = from_config_error(&format!(
        "{jwt}jwks_file = {:?}\nalgorithms = [\"PS512\"]",
        fixture("jwks.json")
    ));
    assert!(message.starts_with("identity.jwt.jwks_file"), "{message}");
}
