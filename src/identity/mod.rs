//! Who is asking, and what their plan allows (phase: identify).
//!
//! An [`IdentitySource`] reads a request's headers and answers with an
//! [`Identity`] or `None` (anonymous). Sources plug in behind one trait,
//! chosen by `identity.kind` in [`from_config`]:
//!
//! | kind | source | trusts the client's identity headers |
//! |---|---|---|
//! | `header` | [`HeaderIdentity`]: headers set by a trusted front | yes |
//! | `forward_auth` | [`ForwardAuthIdentity`]: asks the Django app | no |
//! | `jwt` | [`JwtIdentity`]: verifies a token | no |
//!
//! No spoofing: when [`IdentitySource::trusts_client_headers`] is false,
//! the request path calls [`strip_client_headers`] before anything reads the
//! request, and [`set_identity_headers`] with the verified identity, so the
//! upstream sees only identity headers the proxy vouches for.
//!
//! An `Err` means the source could not answer (not that the caller is
//! anonymous); `identity.on_identity_error` says what the request gets.

mod authorization;
mod cache;
mod claims;
mod cookie;
mod format;
mod forward_auth;
mod header;
mod jwt;
mod plans;
mod pyjwt;

use std::sync::Arc;

use async_trait::async_trait;
use http::header::InvalidHeaderValue;
use http::{HeaderMap, HeaderName, HeaderValue};

pub use self::format::{canonical_ids, canonical_user_id};

/// The headers that tell Django which site, scheme and client a request
/// came through (`ALLOWED_HOSTS`, `SECURE_SSL_REDIRECT` with
/// `SECURE_PROXY_SSL_HEADER`, `USE_X_FORWARDED_HOST`): sent with the
/// identity call and the probe as with the request itself, so Django judges
/// them as it judges the request (a redirect to `https://` would otherwise
/// read as "not logged in").
pub const SITE_HEADERS: [HeaderName; 6] = [
    http::header::HOST,
    http::header::FORWARDED,
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-for"),
];
pub use self::forward_auth::ForwardAuthIdentity;
pub use self::header::HeaderIdentity;
pub use self::jwt::JwtIdentity;
pub use self::plans::PlanTable;
use crate::config::{Config, ConfigError, IdentityConfig, IdentityKind, Limits};

/// A user and the limits that apply to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id counters are kept under.
    pub user_id: String,
    /// The plan the limits come from (for logs); `None` when the user has no
    /// known plan and no default plan is configured. Shared with the plan
    /// table.
    pub plan: Option<Arc<str>>,
    /// Daily, weekly and monthly limits (0 = unlimited).
    pub limits: Limits,
}

/// Why a request's identity could not be established (as opposed to the
/// request being anonymous).
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    /// The identity source could not be asked.
    #[error("identity source unavailable: {0}")]
    Unavailable(String),
    /// The request itself makes its user unknowable: it carries credentials
    /// the app's views may read otherwise than the identity source did (a
    /// bad token beside a good session, two tokens naming two users). The
    /// client chose this, so it is refused whatever `on_identity_error`
    /// says: `"allow"` is for a source that cannot answer, and would send
    /// such a request on uncounted at will (`tests/it/attack_identity.rs`).
    #[error("identity ambiguous: {0}")]
    Ambiguous(String),
    /// The request carries a genuine credential (its signature verified)
    /// that the configured source cannot read as the app may: claims,
    /// audience, issuer or header type that the config does not name. The
    /// app may log the user in from it, so it is refused whatever
    /// `on_identity_error` says, and the operator must fit the config to
    /// the app's tokens (`tests/it/jwt_fit.rs`).
    #[error("identity unreadable: {0}")]
    Unreadable(String),
}

/// Finds the identity of a request from its headers.
#[async_trait]
pub trait IdentitySource: Send + Sync + 'static {
    /// The request's identity, or `None` when it carries none.
    async fn identify(&self, headers: &HeaderMap) -> Result<Option<Identity>, IdentityError>;

    /// Whether the client's own identity headers (`identity.user_header`,
    /// `identity.plan_header`) are believed. When false (the default, and
    /// every source but [`HeaderIdentity`]), the request path must
    /// [`strip_client_headers`] and [`set_identity_headers`].
    fn trusts_client_headers(&self) -> bool {
        false
    }
}

/// The source `config.identity.kind` names, built from the validated
/// config. `jwt` reads its secret or key file here; errors name the field.
pub fn from_config(config: &Config) -> Result<Arc<dyn IdentitySource>, ConfigError> {
    Ok(match config.identity.kind {
        IdentityKind::Header => {
            let names = IdentityHeaders::from_config(&config.identity);
            Arc::new(HeaderIdentity::new(
                names.user,
                names.plan,
                PlanTable::from_config(config),
            ))
        }
        IdentityKind::ForwardAuth => Arc::new(ForwardAuthIdentity::from_config(config)?),
        IdentityKind::Jwt => Arc::new(JwtIdentity::from_config(config)?),
    })
}

/// The headers that carry an identity to the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// The user id (`identity.user_header`, default `X-User-Id`).
    pub user: HeaderName,
    /// The plan name (`identity.plan_header`, default `X-Subscription-Type`).
    pub plan: HeaderName,
}

impl IdentityHeaders {
    /// The names configured in `identity`.
    pub fn from_config(identity: &IdentityConfig) -> Self {
        Self {
            user: identity.user_header.name().clone(),
            plan: identity.plan_header.name().clone(),
        }
    }
}

/// Removes every value of the client's identity headers from `headers`: a
/// client must not claim to be someone, or on some plan.
pub fn strip_client_headers(headers: &mut HeaderMap, names: &IdentityHeaders) {
    headers.remove(&names.user);
    headers.remove(&names.plan);
}

/// Sets the identity headers of `headers` from `identity`, replacing any
/// value; the plan header is removed when the identity has no plan. Fails,
/// changing nothing, when the user id or plan cannot be a header value
/// (control characters).
pub fn set_identity_headers(
    headers: &mut HeaderMap,
    identity: &Identity,
    names: &IdentityHeaders,
) -> Result<(), InvalidHeaderValue> {
    let user = HeaderValue::from_bytes(identity.user_id.as_bytes())?;
    let plan = identity
        .plan
        .as_deref()
        .map(|p| HeaderValue::from_bytes(p.as_bytes()))
        .transpose()?;
    headers.insert(names.user.clone(), user);
    match plan {
        Some(plan) => {
            headers.insert(names.plan.clone(), plan);
        }
        None => {
            headers.remove(&names.plan);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> IdentityHeaders {
        IdentityHeaders::from_config(&IdentityConfig::default())
    }

    fn identity(plan: Option<&str>) -> Identity {
        Identity {
            user_id: "42".to_owned(),
            plan: plan.map(Arc::from),
            limits: Limits::default(),
        }
    }

    #[test]
    fn spoofed_headers_are_replaced_by_the_verified_identity() {
        let mut h = HeaderMap::new();
        h.append("x-user-id", "1".parse().expect("value"));
        h.append("X-User-Id", "2".parse().expect("value"));
        h.insert("x-subscription-type", "enterprise".parse().expect("value"));
        h.insert("cookie", "sessionid=s".parse().expect("value"));
        strip_client_headers(&mut h, &names());
        assert!(h.get("x-user-id").is_none());
        assert!(h.get("x-subscription-type").is_none());
        assert!(h.get("cookie").is_some());
        set_identity_headers(&mut h, &identity(Some("pro")), &names()).expect("set");
        assert_eq!(h.get_all("x-user-id").iter().count(), 1);
        assert_eq!(h["x-user-id"], "42");
        assert_eq!(h["x-subscription-type"], "pro");
    }

    #[test]
    fn no_plan_means_no_plan_header() {
        let mut h = HeaderMap::new();
        h.insert("x-subscription-type", "enterprise".parse().expect("value"));
        set_identity_headers(&mut h, &identity(None), &names()).expect("set");
        assert!(h.get("x-subscription-type").is_none());
        assert_eq!(h["x-user-id"], "42");
    }

    #[test]
    fn unsendable_ids_change_nothing() {
        let mut h = HeaderMap::new();
        let mut bad = identity(Some("pro"));
        bad.user_id = "4\n2".to_owned();
        assert!(set_identity_headers(&mut h, &bad, &names()).is_err());
        assert!(h.is_empty());
        // Non-ASCII (UTF-8) ids are sent as their bytes.
        let mut utf8 = identity(None);
        utf8.user_id = "کاربر".to_owned();
        set_identity_headers(&mut h, &utf8, &names()).expect("set");
        assert_eq!(h["x-user-id"].as_bytes(), "کاربر".as_bytes());
    }

    #[test]
    fn only_header_sources_trust_client_headers() {
        let mut config = Config::default();
        assert!(
            from_config(&config)
                .expect("header")
                .trusts_client_headers()
        );
        config.identity.kind = IdentityKind::ForwardAuth;
        assert!(
            !from_config(&config)
                .expect("forward_auth")
                .trusts_client_headers()
        );
    }
}
