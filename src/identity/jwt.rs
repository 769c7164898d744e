//! Identity from a JSON Web Token (phase: identify), as
//! djangorestframework-simplejwt issues them: read from
//! `Authorization: Bearer …` (or the header `header_name` names, simplejwt's
//! `AUTH_HEADER_NAME`), and from a configured cookie.
//!
//! Keys: an HMAC secret (simplejwt signs with Django's `SECRET_KEY` by
//! default), a PEM public key, or a local JWK set chosen by `kid`. The
//! accepted algorithms follow from the key: `none` never, and HMAC never
//! with a public key (a token "signed" with the public key's bytes as an
//! HMAC secret must not pass). `exp` is required, `nbf` honoured, `iss` and
//! `aud` required when configured, all with the configured leeway.
//!
//! A token that fails a check Django's simplejwt makes too (signature,
//! algorithm, `exp`, `nbf`) is anonymous (`Ok(None)`), logged at debug
//! with the reason and never the token: the app refuses it as well. A
//! genuine token (its signature verified) that the config cannot read as
//! the app may is [`IdentityError::Unreadable`], refused: claims the
//! config does not name, an `aud` or `iss` it does not expect (simplejwt
//! checks those only when its own settings name them), or a header type
//! `header_types` does not list (simplejwt's `AUTH_HEADER_TYPES`). Made
//! anonymous, each of those was forwarded unchecked under `anonymous =
//! "forward"` while the app logged the user in (`tests/it/jwt_fit.rs`).
//! A `kid` no key in the JWK set has is [`IdentityError::Unavailable`]:
//! the app may have rotated its keys. These apply only when no token of
//! the request names a user.

use std::borrow::Cow;
use std::path::Path;

use async_trait::async_trait;
use http::{HeaderMap, HeaderName};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::authorization::authorization_token;
use super::claims::{LimitOverrides, identity_of, user_id_of};
use super::cookie::django_cookie;
use super::pyjwt::pyjwt_signature;
use super::{Identity, IdentityError, IdentitySource, PlanTable};
use crate::config::{Config, ConfigError, JwtConfig};

/// Verifies JSON Web Tokens; see the module docs.
#[derive(Debug)]
pub struct JwtIdentity {
    keys: Vec<VerifyingKey>,
    /// The header holding `<scheme> <token>` (`Authorization`).
    header_name: HeaderName,
    /// Its schemes whose token is the app's (`Bearer`).
    header_types: Vec<String>,
    cookie: Option<String>,
    claims: ClaimNames,
    plans: PlanTable,
}

/// One key and what it accepts.
#[derive(Debug)]
struct VerifyingKey {
    /// The JWK's `kid`; `None` for a secret or a PEM key, which verify
    /// whatever `kid` a token names.
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

#[derive(Debug)]
struct ClaimNames {
    user_id: String,
    plan: Option<String>,
    daily: Option<String>,
    weekly: Option<String>,
    monthly: Option<String>,
}

/// Why a token was not accepted (logged at debug, never with the token).
#[derive(Debug, thiserror::Error)]
enum Rejected {
    #[error("{0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    #[error("no configured key has kid {0:?}")]
    UnknownKid(Option<String>),
    #[error("claim {claim:?} {problem}")]
    Claim {
        claim: String,
        problem: &'static str,
    },
}

impl Rejected {
    /// Whether the token is genuine (its signature verified) and only the
    /// config keeps it from naming a user: claims, `aud`, `iss`.
    fn genuine(&self) -> bool {
        use jsonwebtoken::errors::ErrorKind;
        match self {
            Self::Claim { .. } => true,
            Self::Token(e) => match e.kind() {
                ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => true,
                ErrorKind::MissingRequiredClaim(claim) => claim == "aud" || claim == "iss",
                _ => false,
            },
            Self::UnknownKid(_) => false,
        }
    }
}

impl JwtIdentity {
    /// The source `config.identity.jwt` describes, resolving plans in
    /// `config.plans`. Reads the secret's environment variable or the key
    /// file now; errors name the field.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let jwt = &config.identity.jwt;
        let configured = jwt.allowed_algorithms()?;
        let keys = load_keys(jwt, &configured)?;
        Ok(Self {
            keys,
            header_name: jwt.header_name.name().clone(),
            header_types: jwt.header_types.clone(),
            cookie: jwt.cookie.clone(),
            claims: ClaimNames {
                user_id: jwt.user_id_claim.clone(),
                plan: jwt.plan_claim.clone(),
                daily: jwt.daily_claim.clone(),
                weekly: jwt.weekly_claim.clone(),
                monthly: jwt.monthly_claim.clone(),
            },
            plans: PlanTable::from_config(config),
        })
    }

    /// The identity `token` proves, or why it proves none.
    fn verify(&self, token: &str) -> Result<Identity, Rejected> {
        let token = &*pyjwt_signature(token);
        let header = jsonwebtoken::decode_header(token)?;
        let key = self.key_for(header.kid)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation)?;
        self.identity(&data.claims)
    }

    fn key_for(&self, kid: Option<String>) -> Result<&VerifyingKey, Rejected> {
        let found = match (self.keys.as_slice(), kid.as_deref()) {
            ([only], _) if only.kid.is_none() => Some(only),
            ([only], None) => Some(only),
            (keys, Some(kid)) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            (_, None) => None,
        };
        found.ok_or(Rejected::UnknownKid(kid))
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, Rejected> {
        let names = &self.claims;
        let user_id = claims
            .get(&names.user_id)
            .and_then(user_id_of)
            .ok_or_else(|| Rejected::Claim {
                claim: names.user_id.clone(),
                problem: "is missing or not a non-empty string or an integer",
            })?;
        let plan = match names.plan.as_ref().and_then(|c| Some((c, claims.get(c)?))) {
            None | Some((_, Value::Null)) => None,
            Some((_, Value::String(plan))) => Some(plan.as_str()),
            Some((claim, _)) => {
                return Err(Rejected::Claim {
                    claim: claim.clone(),
                    problem: "is not a string",
                });
            }
        };
        let overrides = LimitOverrides {
            daily: limit_claim(claims, names.daily.as_ref())?,
            weekly: limit_claim(claims, names.weekly.as_ref())?,
            monthly: limit_claim(claims, names.monthly.as_ref())?,
        };
        Ok(identity_of(&self.plans, user_id, plan, overrides))
    }
}

fn limit_claim(
    claims: &Map<String, Value>,
    name: Option<&String>,
) -> Result<Option<u64>, Rejected> {
    let Some(name) = name else { return Ok(None) };
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| Rejected::Claim {
            claim: name.clone(),
            problem: "is not a non-negative integer",
        }),
    }
}

#[async_trait]
impl IdentitySource for JwtIdentity {
    async fn identify(&self, headers: &HeaderMap) -> Result<Option<Identity>, IdentityError> {
        // Both are read: the app's views may read either (a cookie-JWT
        // class never looks at `Authorization`), so a bad bearer token must
        // not hide a good cookie (an attack session).
        let (scheme, header_token) = match authorization_token(headers, &self.header_name) {
            Some((scheme, token)) => (Some(scheme), Some(token)),
            None => (None, None),
        };
        // Exactly, as simplejwt does (`parts[0] not in
        // AUTH_HEADER_TYPE_BYTES`): `bearer` is no credential to the app,
        // and read as its user here, the probe's answer for an anonymous
        // caller was kept for them (`tests/it/jwt_fit.rs`).
        let listed = scheme
            .as_deref()
            .is_some_and(|scheme| self.header_types.iter().any(|t| t == scheme));
        let cookie = self
            .cookie
            .as_deref()
            .and_then(|name| django_cookie(headers, name))
            .map(Cow::Owned);
        let mut found: Option<Identity> = None;
        let mut unreadable: Option<String> = None;
        let mut unknown_key: Option<String> = None;
        let tokens = [(header_token, listed), (cookie, true)];
        for (token, ours) in tokens.into_iter().filter_map(|(t, ours)| Some((t?, ours))) {
            match self.verify(&token) {
                Ok(identity) if ours => match &found {
                    Some(other) if other.user_id != identity.user_id => {
                        return Err(IdentityError::Ambiguous(
                            "the bearer token and the cookie name different users; which one \
                             the app's views use cannot be known"
                                .to_owned(),
                        ));
                    }
                    Some(_) => {}
                    None => found = Some(identity),
                },
                Ok(_) => {
                    unreadable = Some(format!(
                        "a valid token under the {} scheme {:?}, which \
                         identity.jwt.header_types ({:?}) does not list: the app reads it if \
                         its AUTH_HEADER_TYPES does",
                        self.header_name,
                        scheme.as_deref().unwrap_or_default(),
                        self.header_types
                    ));
                }
                Err(reason) if reason.genuine() => {
                    // The token is genuine: its claims not fitting the
                    // config is an operator's problem, which must not turn
                    // counting off.
                    unreadable = Some(format!(
                        "a genuine token whose {reason}: set identity.jwt to match the app's \
                         SIMPLE_JWT settings"
                    ));
                }
                Err(reason @ Rejected::UnknownKid(_)) if ours => {
                    unknown_key = Some(format!(
                        "{reason}: reload the JWK set if the app rotated its keys"
                    ));
                }
                Err(reason) => tracing::debug!(%reason, "jwt rejected; treated as anonymous"),
            }
        }
        match (found, unreadable, unknown_key) {
            (Some(identity), _, _) => Ok(Some(identity)),
            (None, Some(why), _) => Err(IdentityError::Unreadable(why)),
            (None, None, Some(why)) => Err(IdentityError::Unavailable(why)),
            (None, None, None) => Ok(None),
        }
    }
}

/// The keys `jwt` names, each with the algorithms it may verify: those of
/// its kind, narrowed to `configured` when that is not empty.
fn load_keys(jwt: &JwtConfig, configured: &[Algorithm]) -> Result<Vec<VerifyingKey>, ConfigError> {
    let single = |field: &str, key: DecodingKey, kind: &str, family: &[Algorithm]| {
        let algorithms = narrow(family, configured);
        if algorithms.is_empty() {
            return Err(ConfigError::invalid(
                "identity.jwt.algorithms",
                format!(
                    "none of them fits the {kind} key in {field} (it verifies {})",
                    names(family)
                ),
            ));
        }
        Ok(vec![VerifyingKey {
            kid: None,
            key,
            validation: validation(jwt, algorithms),
        }])
    };
    let hmac = AlgorithmFamily::Hmac.algorithms();
    if let Some(var) = &jwt.secret_env {
        let field = "identity.jwt.secret_env";
        let secret = std::env::var(var)
            .map_err(|e| ConfigError::invalid(field, format!("environment variable {var}: {e}")))?;
        if secret.is_empty() {
            return Err(ConfigError::invalid(
                field,
                format!("environment variable {var} is empty"),
            ));
        }
        return single(
            field,
            DecodingKey::from_secret(secret.as_bytes()),
            "HMAC",
            hmac,
        );
    }
    if let Some(path) = &jwt.secret_file {
        let field = "identity.jwt.secret_file";
        let bytes = read(field, path)?;
        let secret = bytes
            .strip_suffix(b"\n")
            .map(|s| s.strip_suffix(b"\r").unwrap_or(s))
            .unwrap_or(&bytes);
        if secret.is_empty() {
            return Err(ConfigError::invalid(
                field,
                format!("{} is empty", path.display()),
            ));
        }
        return single(field, DecodingKey::from_secret(secret), "HMAC", hmac);
    }
    if let Some(path) = &jwt.public_key_file {
        let field = "identity.jwt.public_key_file";
        let (key, kind, family) = pem_key(field, path, &read(field, path)?)?;
        return single(field, key, kind, family);
    }
    if let Some(path) = &jwt.jwks_file {
        return jwks_keys(jwt, path, configured);
    }
    // allowed_algorithms() has refused this already, with the full story.
    Err(ConfigError::invalid("identity.jwt", "no key source is set"))
}

fn read(field: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError::invalid(field, format!("cannot read {}: {e}", path.display())))
}

/// A PEM public key, its kind and the algorithms of that kind.
fn pem_key(
    field: &str,
    path: &Path,
    pem: &[u8],
) -> Result<(DecodingKey, &'static str, &'static [Algorithm]), ConfigError> {
    if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
        return Err(ConfigError::invalid(
            field,
            format!(
                "{} holds a private key; give the public key (openssl pkey -in key.pem -pubout)",
                path.display()
            ),
        ));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((key, "RSA", AlgorithmFamily::Rsa.algorithms()));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        // The key is the uncompressed SEC1 point: 0x04 || x || y.
        return match key.as_bytes().len() {
            65 => Ok((key, "EC P-256", &[Algorithm::ES256])),
            97 => Ok((key, "EC P-384", &[Algorithm::ES384])),
            _ => Err(ConfigError::invalid(
                field,
                format!(
                    "{}: only P-256 (ES256) and P-384 (ES384) EC keys are supported",
                    path.display()
                ),
            )),
        };
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok((key, "Ed25519", AlgorithmFamily::Ed.algorithms()));
    }
    Err(ConfigError::invalid(
        field,
        format!(
            "{} is not a PEM public key (RSA, EC P-256/P-384 or Ed25519)",
            path.display()
        ),
    ))
}

/// The signing keys of a JWK set file.
fn jwks_keys(
    jwt: &JwtConfig,
    path: &Path,
    configured: &[Algorithm],
) -> Result<Vec<VerifyingKey>, ConfigError> {
    let field = "identity.jwt.jwks_file";
    let set: JwkSet = serde_json::from_slice(&read(field, path)?).map_err(|e| {
        ConfigError::invalid(
            field,
            format!(
                "{} is not a JWK set ({{\"keys\": […]}}): {e}",
                path.display()
            ),
        )
    })?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for (i, jwk) in set.keys.iter().enumerate() {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let invalid = |reason: String| {
            let name = jwk
                .common
                .key_id
                .as_ref()
                .map_or_else(|| format!("keys[{i}]"), |kid| format!("key {kid:?}"));
            ConfigError::invalid(field, format!("{}: {name}: {reason}", path.display()))
        };
        let algorithms = narrow(&jwk_algorithms(jwk).map_err(invalid)?, configured);
        if algorithms.is_empty() {
            continue;
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| invalid(e.to_string()))?;
        keys.push(VerifyingKey {
            kid: jwk.common.key_id.clone(),
            key,
            validation: validation(jwt, algorithms),
        });
    }
    if keys.is_empty() {
        return Err(ConfigError::invalid(
            field,
            format!(
                "{} has no signing key usable with the configured algorithms",
                path.display()
            ),
        ));
    }
    Ok(keys)
}

/// What a JWK may verify: its `alg` when stated (checked against its key
/// type), else every algorithm of its key type.
fn jwk_algorithms(jwk: &Jwk) -> Result<Vec<Algorithm>, String> {
    let of_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            ref other => return Err(format!("curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            AlgorithmFamily::Ed.algorithms()
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            return Err(format!("curve {:?} is not supported", p.curve));
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err(
                "symmetric (\"oct\") keys are refused here; give an HMAC secret with \
                 secret_env or secret_file"
                    .to_owned(),
            );
        }
    };
    match jwk.common.key_algorithm {
        None => Ok(of_type.to_vec()),
        Some(alg) => {
            let alg: Algorithm = alg
                .to_string()
                .parse()
                .map_err(|_| format!("alg {alg} is not a signature algorithm"))?;
            if of_type.contains(&alg) {
                Ok(vec![alg])
            } else {
                Err(format!("alg {alg:?} does not match the key type"))
            }
        }
    }
}

/// `family`, narrowed to `configured` unless that is empty.
fn narrow(family: &[Algorithm], configured: &[Algorithm]) -> Vec<Algorithm> {
    family
        .iter()
        .copied()
        .filter(|a| configured.is_empty() || configured.contains(a))
        .collect()
}

fn names(algorithms: &[Algorithm]) -> String {
    algorithms
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The checks for tokens verified with a key accepting `algorithms`.
fn validation(jwt: &JwtConfig, algorithms: Vec<Algorithm>) -> Validation {
    let mut validation = Validation::default();
    validation.algorithms = algorithms;
    validation.leeway = jwt.leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    // jsonwebtoken checks iss and aud only when present: require them when
    // configured, or a token without them would pass.
    let mut required = vec!["exp"];
    if let Some(issuer) = &jwt.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    if let Some(audience) = &jwt.audience {
        validation.set_audience(&[audience]);
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    validation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowing() {
        let rsa = AlgorithmFamily::Rsa.algorithms();
        assert_eq!(narrow(rsa, &[]).len(), 6);
        assert_eq!(narrow(rsa, &[Algorithm::RS256]), vec![Algorithm::RS256]);
        assert!(narrow(rsa, &[Algorithm::ES256]).is_empty());
    }
}
