//! Who is asking, and what their plan allows (phase: identify).
//!
//! An [`IdentitySource`] reads a request's headers and answers with an
//! [`Identity`] or `None` (anonymous). Sources plug in behind one trait:
//! [`HeaderIdentity`] trusts headers set by a front that already
//! authenticated the user; sources that ask Django or verify a token fit the
//! same seam.

mod header;
mod plans;

use async_trait::async_trait;
use http::HeaderMap;

pub use self::header::HeaderIdentity;
pub use self::plans::PlanTable;
use crate::config::Limits;

/// A user and the limits that apply to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id counters are kept under.
    pub user_id: String,
    /// The plan the limits come from (for logs); `None` when the user has no
    /// known plan and no default plan is configured.
    pub plan: Option<String>,
    /// Daily, weekly and monthly limits (0 = unlimited).
    pub limits: Limits,
}

/// Why a request's identity could not be established (as opposed to the
/// request being anonymous).
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The identity source could not be asked.
    #[error("identity source unavailable: {0}")]
    Unavailable(String),
}

/// Finds the identity of a request from its headers.
#[async_trait]
pub trait IdentitySource: Send + Sync + 'static {
    /// The request's identity, or `None` when it carries none.
    async fn identify(&self, headers: &HeaderMap) -> Result<Option<Identity>, IdentityError>;
}
