//! The bearer token of the admin `/v1/` API: read from an environment
//! variable (`admin.token_env`) or a file (`admin.token_file`), compared in
//! constant time, never logged or shown.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::config::AdminConfig;

/// Why the configured token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The variable `admin.token_env` names is not set (or not UTF-8).
    #[error(
        "admin.token_env: environment variable {0} is not set; set it to the admin API token, \
         or remove admin.token_env to turn the usage API off"
    )]
    EnvMissing(String),
    /// The token file cannot be read.
    #[error("admin.token_file: cannot read {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The token is empty.
    #[error("{0}: the admin API token is empty")]
    Empty(&'static str),
}

/// The admin API's bearer token.
#[derive(Clone)]
pub struct AdminToken(Arc<[u8]>);

impl AdminToken {
    /// The token `config` points at; `None` when none is configured (the
    /// `/v1/` API is then off).
    pub fn from_config(config: &AdminConfig) -> Result<Option<Self>, TokenError> {
        let (field, value) = match (&config.token_env, &config.token_file) {
            (Some(name), _) => (
                "admin.token_env",
                std::env::var(name).map_err(|_| TokenError::EnvMissing(name.clone()))?,
            ),
            (None, Some(path)) => (
                "admin.token_file",
                std::fs::read_to_string(path).map_err(|source| TokenError::File {
                    path: path.clone(),
                    source,
                })?,
            ),
            (None, None) => return Ok(None),
        };
        let token = value.trim();
        if token.is_empty() {
            return Err(TokenError::Empty(field));
        }
        Ok(Some(Self(Arc::from(token.as_bytes()))))
    }

    /// True when an `Authorization` header value is `Bearer <this token>`.
    /// The comparison takes the same time wherever the first difference is
    /// (only the token's length can be learned from timing).
    pub fn authorizes(&self, authorization: &[u8]) -> bool {
        let Some(presented) = bearer(authorization) else {
            return false;
        };
        presented.ct_eq(&self.0).into()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// The credentials of a `Bearer` authorization (scheme case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    Some(rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(value: &str) -> AdminToken {
        AdminToken(Arc::from(value.as_bytes()))
    }

    #[test]
    fn only_the_exact_bearer_token_authorizes() {
        let t = token("s3cret-token");
        assert!(t.authorizes(b"Bearer s3cret-token"));
        assert!(t.authorizes(b"bearer s3cret-token"));
        assert!(!t.authorizes(b"Bearer s3cret-tokem"));
        assert!(!t.authorizes(b"Bearer s3cret"));
        assert!(!t.authorizes(b"Basic s3cret-token"));
        assert!(!t.authorizes(b"s3cret-token"));
        assert!(!t.authorizes(b""));
        assert_eq!(format!("{t:?}"), "AdminToken(***)");
    }

    #[test]
    fn token_from_a_file_is_trimmed_and_never_empty() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\n").expect("write");
        let config = AdminConfig {
            token_file: Some(path.clone()),
            ..AdminConfig::default()
        };
        let t = AdminToken::from_config(&config)
            .expect("readable")
            .expect("configured");
        assert!(t.authorizes(b"Bearer abc"));
        std::fs::write(&path, " \n").expect("write");
        assert!(matches!(
            AdminToken::from_config(&config),
            Err(TokenError::Empty("admin.token_file"))
        ));
        let missing = AdminConfig {
            token_env: Some("QUOTA_PROXY_TEST_SURELY_UNSET_VARIABLE".to_owned()),
            ..AdminConfig::default()
        };
        let err = AdminToken::from_config(&missing).expect_err("unset");
        assert!(err.to_string().starts_with("admin.token_env"), "{err}");
        assert!(
            AdminToken::from_config(&AdminConfig::default())
                .expect("off")
                .is_none()
        );
    }
}
