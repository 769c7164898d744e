//! What the quota layer decided for a request (phase: admit), carried from
//! admit to the request counter ([`crate::counters::RouteCounters`]) and to
//! the request's log line (`decision = …`). The words are defined here and
//! nowhere else.

/// What was decided for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Inspected, asks for no image.
    Unflagged,
    /// Flagged, one unit reserved.
    Allowed,
    /// Flagged, a limit is reached.
    Denied,
    /// Flagged without a user, forwarded (`anonymous = "forward"`).
    Anonymous,
    /// Flagged without a user, 401.
    AnonymousDenied,
    /// The identity source failed, forwarded uncounted
    /// (`on_identity_error = "allow"`).
    IdentityErrorAllowed,
    /// The identity source failed, 503.
    IdentityErrorDenied,
    /// The store failed, forwarded uncounted (fail open).
    StoreErrorAllowed,
    /// The store failed, 503.
    StoreErrorDenied,
    /// On no inspected route: forwarded untouched, no store call.
    Passthrough,
    /// Flagged, a limit is reached, but the request is in shadow mode:
    /// forwarded, and its usage still counted.
    ShadowDenied,
}

impl Decision {
    /// Every decision, in declaration order (`ALL[d as usize] == d`).
    pub const ALL: [Decision; 11] = [
        Decision::Unflagged,
        Decision::Allowed,
        Decision::Denied,
        Decision::Anonymous,
        Decision::AnonymousDenied,
        Decision::IdentityErrorAllowed,
        Decision::IdentityErrorDenied,
        Decision::StoreErrorAllowed,
        Decision::StoreErrorDenied,
        Decision::Passthrough,
        Decision::ShadowDenied,
    ];

    /// The word of the log line's `decision` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Unflagged => "unflagged",
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
            Decision::Anonymous => "anonymous",
            Decision::AnonymousDenied => "anonymous_denied",
            Decision::IdentityErrorAllowed => "identity_error_allowed",
            Decision::IdentityErrorDenied => "identity_error_denied",
            Decision::StoreErrorAllowed => "store_error_allowed",
            Decision::StoreErrorDenied => "store_error_denied",
            Decision::Passthrough => "passthrough",
            Decision::ShadowDenied => "shadow_denied",
        }
    }

    /// The request counter's `decision` label: the log word, except that
    /// an identity error counts as `identity_error` whatever the policy.
    pub fn label(self) -> &'static str {
        match self {
            Decision::IdentityErrorAllowed | Decision::IdentityErrorDenied => "identity_error",
            other => other.as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_declaration_order() {
        for (i, decision) in Decision::ALL.into_iter().enumerate() {
            assert_eq!(decision as usize, i, "{decision:?}");
        }
    }

    #[test]
    fn identity_errors_count_as_one_label_and_log_by_policy() {
        for decision in [
            Decision::IdentityErrorAllowed,
            Decision::IdentityErrorDenied,
        ] {
            assert_eq!(decision.label(), "identity_error");
        }
        assert_eq!(
            Decision::IdentityErrorDenied.as_str(),
            "identity_error_denied"
        );
        assert_eq!(Decision::Passthrough.label(), "passthrough");
    }
}
