//! The JWT identity source (phase: identify), as djangorestframework-
//! simplejwt issues tokens: HMAC secrets, PEM and JWK public keys, the
//! claims read, and the tokens refused. The forward-auth source and the
//! identity config are in `identity.rs`, whose helpers these share.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::HeaderMap;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use quota_proxy::config::Limits;
use quota_proxy::identity::{IdentityError, IdentitySource};
use serde_json::{Value, json};

use crate::identity::{PLANS, headers, source};

pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/identity")
        .join(name)
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture")
}

pub(crate) const SECRET: &str = "django-insecure-test-secret-key-for-quota-proxy-tests";

/// A file holding `SECRET` and a newline, as an editor would save it.
pub(crate) fn secret_file() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), format!("{SECRET}\n")).expect("write secret");
    file
}

fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).expect("timestamp")
}

/// Claims shaped like a djangorestframework-simplejwt access token.
pub(crate) fn simplejwt_claims(user_id: Value) -> Value {
    let now = now();
    json!({
        "token_type": "access",
        "exp": now + 300,
        "iat": now,
        "jti": "6f1c0b1e2a9d4c3e8b7a6f5e4d3c2b1a",
        "user_id": user_id,
    })
}

pub(crate) fn hs256(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

fn signed(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

pub(crate) fn bearer(token: &str) -> HeaderMap {
    headers(&[("authorization", &format!("Bearer {token}"))])
}

fn hs_source(secret: &tempfile::NamedTempFile, extra: &str) -> Arc<dyn IdentitySource> {
    source(&format!(
        "{PLANS}\n[identity]\nkind = \"jwt\"\ndefault_plan = \"free\"\n\
         [identity.jwt]\nsecret_file = {:?}\n{extra}",
        secret.path()
    ))
}

async fn user_of(source: &Arc<dyn IdentitySource>, headers: &HeaderMap) -> Option<String> {
    source
        .identify(headers)
        .await
        .expect("a user or anonymous")
        .map(|i| i.user_id)
}

/// What `source` makes of `headers`: the user id, `anonymous`, or the
/// error's kind (`unreadable`: a genuine token the config cannot read,
/// refused; `unavailable`: no key to verify it with).
async fn reading_of(source: &Arc<dyn IdentitySource>, headers: &HeaderMap) -> String {
    match source.identify(headers).await {
        Ok(Some(identity)) => identity.user_id,
        Ok(None) => "anonymous".to_owned(),
        Err(IdentityError::Unreadable(_)) => "unreadable".to_owned(),
        Err(IdentityError::Unavailable(_)) => "unavailable".to_owned(),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn hs256_simplejwt_token() {
    let secret = secret_file();
    let source = hs_source(&secret, "");
    let numeric = hs256(&simplejwt_claims(json!(42)), SECRET.as_bytes());
    let id = source
        .identify(&bearer(&numeric))
        .await
        .expect("ok")
        .expect("a user");
    assert_eq!(id.user_id, "42");
    assert_eq!(id.plan.as_deref(), Some("free"));
    assert_eq!(id.limits.daily, 3);
    let string = hs256(&simplejwt_claims(json!("42")), SECRET.as_bytes());
    assert_eq!(
        user_of(&source, &bearer(&string)).await.as_deref(),
        Some("42")
    );
    // No token at all.
    assert_eq!(user_of(&source, &HeaderMap::new()).await, None);
}

#[tokio::test]
async fn hs256_secret_from_the_environment() {
    // Setting a variable would race with the other tests reading the
    // environment; borrow one the process already has (PATH, HOME, …).
    let (name, value) = std::env::vars()
        .find(|(name, value)| {
            !value.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .expect("some environment variable is set");
    let source = source(&format!(
        "[identity]\nkind = \"jwt\"\n[identity.jwt]\nsecret_env = \"{name}\""
    ));
    let token = hs256(&simplejwt_claims(json!(1)), value.as_bytes());
    assert_eq!(
        user_of(&source, &bearer(&token)).await.as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn plan_and_limit_claims_override_the_plan_table() {
    let secret = secret_file();
    let source = hs_source(
        &secret,
        "plan_claim = \"plan\"\ndaily_claim = \"daily\"\nmonthly_claim = \"monthly\"",
    );
    let mut claims = simplejwt_claims(json!(7));
    claims["plan"] = json!("pro");
    claims["daily"] = json!(2);
    let id = source
        .identify(&bearer(&hs256(&claims, SECRET.as_bytes())))
        .await
        .expect("ok")
        .expect("a user");
    assert_eq!(id.plan.as_deref(), Some("pro"));
    assert_eq!(
        id.limits,
        Limits {
            daily: 2,
            weekly: 0,
            monthly: 1000
        }
    );
    // A limit claim of the wrong type makes the genuine token unreadable.
    claims["daily"] = json!("lots");
    assert_eq!(
        reading_of(&source, &bearer(&hs256(&claims, SECRET.as_bytes()))).await,
        "unreadable"
    );
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_anonymous() {
    let secret = secret_file();
    let source = hs_source(&secret, "leeway = \"30s\"");
    let mut claims = simplejwt_claims(json!(1));
    claims["exp"] = json!(now() - 120);
    assert_eq!(
        user_of(&source, &bearer(&hs256(&claims, SECRET.as_bytes()))).await,
        None
    );
    // Within the leeway it still counts.
    claims["exp"] = json!(now() - 10);
    assert!(
        user_of(&source, &bearer(&hs256(&claims, SECRET.as_bytes())))
            .await
            .is_some()
    );
    let mut early = simplejwt_claims(json!(1));
    early["nbf"] = json!(now() + 300);
    assert_eq!(
        user_of(&source, &bearer(&hs256(&early, SECRET.as_bytes()))).await,
        None
    );
    // exp is required.
    let mut forever = simplejwt_claims(json!(1));
    forever.as_object_mut().expect("object").remove("exp");
    assert_eq!(
        user_of(&source, &bearer(&hs256(&forever, SECRET.as_bytes()))).await,
        None
    );
}

#[tokio::test]
async fn wrong_signature_is_anonymous() {
    let secret = secret_file();
    let source = hs_source(&secret, "");
    let forged = hs256(&simplejwt_claims(json!(1)), b"another-secret");
    assert_eq!(user_of(&source, &bearer(&forged)).await, None);
    // A genuine token whose payload was swapped.
    let genuine = hs256(&simplejwt_claims(json!(1)), SECRET.as_bytes());
    let other = hs256(&simplejwt_claims(json!(2)), SECRET.as_bytes());
    let g: Vec<&str> = genuine.split('.').collect();
    let o: Vec<&str> = other.split('.').collect();
    let spliced = format!("{}.{}.{}", g[0], o[1], g[2]);
    assert_eq!(user_of(&source, &bearer(&spliced)).await, None);
    assert_eq!(user_of(&source, &bearer("not-a-token")).await, None);
}

#[tokio::test]
async fn audience_and_issuer_are_checked() {
    let secret = secret_file();
    let source = hs_source(
        &secret,
        "issuer = \"https://app.example\"\naudience = \"quota-proxy\"",
    );
    let mut claims = simplejwt_claims(json!(1));
    claims["iss"] = json!("https://app.example");
    claims["aud"] = json!("quota-proxy");
    let sign = |c: &Value| bearer(&hs256(c, SECRET.as_bytes()));
    assert!(user_of(&source, &sign(&claims)).await.is_some());

    let mut wrong_aud = claims.clone();
    wrong_aud["aud"] = json!("billing");
    assert_eq!(reading_of(&source, &sign(&wrong_aud)).await, "unreadable");
    let mut no_aud = claims.clone();
    no_aud.as_object_mut().expect("object").remove("aud");
    assert_eq!(reading_of(&source, &sign(&no_aud)).await, "unreadable");

    let mut wrong_iss = claims.clone();
    wrong_iss["iss"] = json!("https://evil.example");
    assert_eq!(reading_of(&source, &sign(&wrong_iss)).await, "unreadable");
    let mut no_iss = claims.clone();
    no_iss.as_object_mut().expect("object").remove("iss");
    assert_eq!(reading_of(&source, &sign(&no_iss)).await, "unreadable");

    // Without a configured audience, a token addressed to someone is
    // refused: genuine, and the app (simplejwt without AUDIENCE) reads it.
    let plain = hs_source(&secret, "");
    assert_eq!(reading_of(&plain, &sign(&claims)).await, "unreadable");
}

#[tokio::test]
async fn alg_none_is_refused() {
    use base64::Engine;
    let secret = secret_file();
    let source = hs_source(&secret, "");
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = b64.encode(simplejwt_claims(json!(1)).to_string());
    for token in [format!("{header}.{claims}."), format!("{header}.{claims}")] {
        assert_eq!(user_of(&source, &bearer(&token)).await, None);
    }
}

fn rs_source() -> Arc<dyn IdentitySource> {
    source(&format!(
        "[identity]\nkind = \"jwt\"\n[identity.jwt]\npublic_key_file = {:?}",
        fixture("rs256_public.pem")
    ))
}

#[tokio::test]
async fn rs256_with_a_pem_public_key() {
    let source = rs_source();
    let key = EncodingKey::from_rsa_pem(&fixture_bytes("rs256_private.pem")).expect("key");
    let token = signed(Algorithm::RS256, None, &simplejwt_claims(json!(9)), &key);
    assert_eq!(
        user_of(&source, &bearer(&token)).await.as_deref(),
        Some("9")
    );
}

#[tokio::test]
async fn key_confusion_is_refused() {
    // An attacker knows the public key and "signs" HS256 with its PEM bytes
    // as the HMAC secret: a verifier that let the token pick HMAC would
    // accept it.
    let source = rs_source();
    let public_pem = fixture_bytes("rs256_public.pem");
    let token = hs256(&simplejwt_claims(json!(1)), &public_pem);
    assert_eq!(user_of(&source, &bearer(&token)).await, None);
    // The token is a genuine HS256 token for that secret: an HMAC source
    // holding the PEM bytes accepts it (secret_file drops one trailing
    // newline, hence the extra one).
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), [public_pem.as_slice(), b"\n"].concat()).expect("write");
    let hmac = hs_source(&file, "");
    assert_eq!(user_of(&hmac, &bearer(&token)).await.as_deref(), Some("1"));
}

fn jwks_source() -> Arc<dyn IdentitySource> {
    source(&format!(
        "[identity]\nkind = \"jwt\"\n[identity.jwt]\njwks_file = {:?}",
        fixture("jwks.json")
    ))
}

#[tokio::test]
async fn es256_and_rs256_from_a_jwks_chosen_by_kid() {
    let source = jwks_source();
    let ec = EncodingKey::from_ec_pem(&fixture_bytes("es256_private.pem")).expect("ec key");
    let rsa = EncodingKey::from_rsa_pem(&fixture_bytes("rs256_private.pem")).expect("rsa key");
    let claims = simplejwt_claims(json!(3));
    let es = signed(Algorithm::ES256, Some("es256-test-1"), &claims, &ec);
    assert_eq!(user_of(&source, &bearer(&es)).await.as_deref(), Some("3"));
    let rs = signed(Algorithm::RS256, Some("rs256-test-1"), &claims, &rsa);
    assert_eq!(user_of(&source, &bearer(&rs)).await.as_deref(), Some("3"));
    // Unknown kid, a kid naming the other key, or no kid with two keys.
    // No key to verify with: the app may have rotated its keys.
    let unknown = signed(Algorithm::ES256, Some("rotated-away"), &claims, &ec);
    assert_eq!(reading_of(&source, &bearer(&unknown)).await, "unavailable");
    let crossed = signed(Algorithm::ES256, Some("rs256-test-1"), &claims, &ec);
    assert_eq!(user_of(&source, &bearer(&crossed)).await, None);
    let anonymous_kid = signed(Algorithm::ES256, None, &claims, &ec);
    assert_eq!(
        reading_of(&source, &bearer(&anonymous_kid)).await,
        "unavailable"
    );
    // HMAC with the EC key's JWK text as secret, naming its kid.
    let jwks = String::from_utf8(fixture_bytes("jwks.json")).expect("utf-8");
    let confused = signed(
        Algorithm::HS256,
        Some("es256-test-1"),
        &claims,
        &EncodingKey::from_secret(jwks.as_bytes()),
    );
    assert_eq!(user_of(&source, &bearer(&confused)).await, None);
}

#[tokio::test]
async fn es256_with_a_pem_public_key() {
    let source = source(&format!(
        "[identity]\nkind = \"jwt\"\n[identity.jwt]\npublic_key_file = {:?}",
        fixture("es256_public.pem")
    ));
    let ec = EncodingKey::from_ec_pem(&fixture_bytes("es256_private.pem")).expect("ec key");
    let token = signed(Algorithm::ES256, None, &simplejwt_claims(json!(4)), &ec);
    assert_eq!(
        user_of(&source, &bearer(&token)).await.as_deref(),
        Some("4")
    );
}

#[tokio::test]
async fn token_from_a_cookie() {
    let secret = secret_file();
    let token = hs256(&simplejwt_claims(json!(11)), SECRET.as_bytes());
    let cookie = headers(&[("cookie", &format!("csrftoken=x; access_token={token}"))]);
    let with_cookie = hs_source(&secret, "cookie = \"access_token\"");
    assert_eq!(user_of(&with_cookie, &cookie).await.as_deref(), Some("11"));
    // Another Authorization scheme is not ours: the cookie still counts.
    let mut both = cookie.clone();
    both.insert("authorization", "Token drf-token".parse().expect("value"));
    assert_eq!(user_of(&with_cookie, &both).await.as_deref(), Some("11"));
    // Without `cookie`, cookies are not read.
    let without = hs_source(&secret, "");
    assert_eq!(user_of(&without, &cookie).await, None);
}

#[tokio::test]
async fn user_id_claim_is_configurable_and_required() {
    let secret = secret_file();
    let source = hs_source(&secret, "user_id_claim = \"sub\"");
    let mut claims = simplejwt_claims(json!(1));
    claims["sub"] = json!("u-77");
    assert_eq!(
        user_of(&source, &bearer(&hs256(&claims, SECRET.as_bytes())))
            .await
            .as_deref(),
        Some("u-77")
    );
    claims.as_object_mut().expect("object").remove("sub");
    assert_eq!(
        reading_of(&source, &bearer(&hs256(&claims, SECRET.as_bytes()))).await,
        "unreadable"
    );
}
