//! `[[routes]]` and their probes (phase: classify): which requests are
//! inspected, the flag that marks them, and the denial status.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{FlagRules, Method, RequiredHeader};

/// The default `strip_routing_headers` (lower case, as header names are
/// kept; `SCRIPT_NAME` is `script_name`).
pub const DEFAULT_ROUTING_HEADERS: [&str; 8] = [
    "script_name",
    "path_info",
    "x-script-name",
    "x-forwarded-prefix",
    "x-forwarded-path",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
];

/// One route to inspect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// HTTP method, e.g. `POST`.
    pub method: Method,
    /// Path pattern in Django's `path()` syntax, as in `urls.py`
    /// (`chat/session/<int:session_id>/send/`; a leading `/` is optional),
    /// or `{name}` for one segment; see `docs/routes.md`.
    pub path: String,
    /// Name of the field that asks for an image.
    #[serde(default = "default_flag")]
    pub flag: String,
    /// How the backend reads the flag's value.
    #[serde(default)]
    pub flag_rules: FlagRules,
    /// Status of a denial: 403 for Django's web views, 429 for its API.
    #[serde(default = "default_deny_status")]
    pub deny_status: u16,
    /// A message for every period's denial on this route, overriding
    /// `[messages]`; `{limit}` and `{period}` are filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// An upstream endpoint that says whether a request on this route will
    /// generate images whatever its flag says (e.g. image-editing sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeConfig>,
    /// Shadow mode on this route: a request over a limit is forwarded and
    /// flagged instead of denied (see the top-level `shadow`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

/// A probe: `GET path` on the upstream, with the client's credentials,
/// answering JSON whose `json_field` is true for requests that will generate
/// images even without the flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// Path on the upstream; `<int:name>` or `{name}` is the route's path
    /// parameter of that name, in its canonical form, e.g.
    /// `/chat/session/<int:session_id>/image-generation-access/`.
    pub path: String,
    /// Top-level JSON field that is `true` for image-generating requests.
    #[serde(default = "default_probe_field")]
    pub json_field: String,
    /// How long an answer is reused for the same path and user.
    #[serde(default = "default_probe_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Request headers passed on to the probe (the client's credentials);
    /// `identity.jwt.header_name` or `identity.forward_auth.forward_headers`
    /// too, as `identity.kind` says.
    #[serde(default = "default_probe_headers")]
    pub forward_headers: Vec<RequiredHeader>,
    /// Longest wait for the probe's answer; a probe that fails or times out
    /// counts the request as asking for an image (it is checked, and
    /// released if no image is saved).
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_probe_field() -> String {
    "has_access".to_owned()
}

fn default_probe_ttl() -> Duration {
    Duration::from_secs(600)
}

fn default_probe_headers() -> Vec<RequiredHeader> {
    vec![
        RequiredHeader::from_static("cookie"),
        RequiredHeader::from_static("authorization"),
    ]
}

fn default_flag() -> String {
    "generate_image".to_owned()
}

fn default_deny_status() -> u16 {
    429
}
