//! Value types of the config file that need more than a plain string or
//! number: each parses from what a person writes and says what it accepts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The upstream's base URL: `http://host:port`, no path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UpstreamUrl {
    /// The authority (`host:port`) requests are sent to.
    pub authority: http::uri::Authority,
}

impl Default for UpstreamUrl {
    fn default() -> Self {
        Self {
            authority: http::uri::Authority::from_static("127.0.0.1:8000"),
        }
    }
}

impl TryFrom<String> for UpstreamUrl {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let uri: http::Uri = s.parse().map_err(|e| {
            format!("upstream: {s:?} is not a URL ({e}); expected http://host:port")
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "upstream: {s:?}: https upstreams are not supported; run quota-proxy next to the \
                     app and use http://host:port"
                ));
            }
            _ => return Err(format!("upstream: {s:?}: expected http://host:port")),
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "upstream: {s:?}: a path prefix is not supported; give only http://host:port"
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("upstream: {s:?}: missing host; expected http://host:port"))?;
        Ok(Self { authority })
    }
}

impl From<UpstreamUrl> for String {
    fn from(u: UpstreamUrl) -> String {
        format!("http://{}", u.authority)
    }
}

/// Which store counts usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In this process's memory: one instance, nothing else to run.
    Memory,
    /// In Redis, shared by every replica.
    Redis,
}

/// What a flagged request gets when the store cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreErrorPolicy {
    /// Forward it uncounted (fail open), and log it.
    Allow,
    /// Answer 503 with a JSON error (fail closed).
    Deny,
    /// Enforce the same limits from this replica's memory for the length of
    /// the outage, and hand what it counted to Redis when Redis is back
    /// (see `store::ResilientStore`). A request the local count cannot take
    /// either (its memory is full) is denied.
    Local,
}

/// What a flagged request without a user id gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnonymousPolicy {
    /// Forward it uncounted; the upstream decides (Django redirects to login).
    Forward,
    /// Answer 401 with a JSON error.
    Deny,
}

/// What a user id is (`identity.user_id_format`): ids are kept, counted
/// and sent in their canonical form, and an id not in the format is
/// anonymous.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserIdFormat {
    /// Any non-empty text, as it is (the default).
    #[default]
    String,
    /// An integer as Python's `int()` reads it: `0017`, `+17` and `1_7`
    /// are user `17`.
    Integer,
    /// A UUID in any of the forms Python's `uuid.UUID()` reads, kept in
    /// lower-case hyphenated form.
    Uuid,
}

/// Where a request's identity comes from (`identity.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    /// Headers set by a trusted front (`identity.user_header`,
    /// `identity.plan_header`); clients must not be able to reach the proxy
    /// without that front.
    Header,
    /// Ask the Django app who the caller is, forwarding the caller's
    /// credential headers (`[identity.forward_auth]`).
    #[serde(alias = "forward-auth")]
    ForwardAuth,
    /// Verify a JSON Web Token from `Authorization: Bearer …` or a cookie
    /// (`[identity.jwt]`).
    Jwt,
}

/// What a flagged request gets when its identity cannot be established
/// (`identity.on_identity_error`): the identity source is down, slow or
/// answered nonsense. An anonymous caller is not an error; see
/// [`AnonymousPolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityErrorPolicy {
    /// Forward it uncounted (fail open), and log it.
    Allow,
    /// Answer 503 with a JSON error (fail closed).
    Deny,
}

/// What one report of saved images adds to usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CountMode {
    /// +1 per response that saved at least one image (the Django app's rule).
    Requests,
    /// + the number of images reported.
    Images,
}

/// Limits of one plan; 0 means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Images per calendar day.
    pub daily: u64,
    /// Images per calendar week.
    pub weekly: u64,
    /// Images per calendar month.
    pub monthly: u64,
}

impl Limits {
    /// The limit of one period (0 = unlimited).
    pub fn of(&self, period: crate::periods::Period) -> u64 {
        match period {
            crate::periods::Period::Daily => self.daily,
            crate::periods::Period::Weekly => self.weekly,
            crate::periods::Period::Monthly => self.monthly,
        }
    }

    /// True when no period is limited.
    pub fn is_unlimited(&self) -> bool {
        self.daily == 0 && self.weekly == 0 && self.monthly == 0
    }
}

/// One plan of `[plans]`: its limits (0 = unlimited) and whether they are
/// only watched (`shadow = true`: a request over them is forwarded and
/// flagged instead of denied; see docs/shadow-and-status.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Plan {
    /// Images per calendar day.
    pub daily: u64,
    /// Images per calendar week.
    pub weekly: u64,
    /// Images per calendar month.
    pub monthly: u64,
    /// Users on this plan are in shadow mode.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
}

impl Plan {
    /// The plan's limits.
    pub fn limits(&self) -> Limits {
        Limits {
            daily: self.daily,
            weekly: self.weekly,
            monthly: self.monthly,
        }
    }
}

/// An IANA time zone name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeZone(pub chrono_tz::Tz);

impl TryFrom<String> for TimeZone {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        chrono_tz::Tz::from_str(&s)
            .map(TimeZone)
            .map_err(|_| format!("{s:?} is not an IANA time zone name (e.g. \"Asia/Tehran\")"))
    }
}

impl From<TimeZone> for String {
    fn from(tz: TimeZone) -> String {
        tz.0.name().to_owned()
    }
}

/// The first day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WeekStart(pub chrono::Weekday);

impl TryFrom<String> for WeekStart {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        use chrono::Weekday::*;
        let day = match s.to_ascii_lowercase().as_str() {
            "monday" => Mon,
            "tuesday" => Tue,
            "wednesday" => Wed,
            "thursday" => Thu,
            "friday" => Fri,
            "saturday" => Sat,
            "sunday" => Sun,
            _ => {
                return Err(format!(
                    "{s:?} is not a weekday (e.g. \"monday\", \"saturday\")"
                ));
            }
        };
        Ok(WeekStart(day))
    }
}

impl From<WeekStart> for String {
    fn from(w: WeekStart) -> String {
        use chrono::Weekday::*;
        match w.0 {
            Mon => "monday",
            Tue => "tuesday",
            Wed => "wednesday",
            Thu => "thursday",
            Fri => "friday",
            Sat => "saturday",
            Sun => "sunday",
        }
        .to_owned()
    }
}

/// An HTTP method name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Method(pub http::Method);

impl TryFrom<String> for Method {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        http::Method::from_bytes(s.to_ascii_uppercase().as_bytes())
            .map(Method)
            .map_err(|_| format!("{s:?} is not an HTTP method"))
    }
}

impl From<Method> for String {
    fn from(m: Method) -> String {
        m.0.as_str().to_owned()
    }
}

/// How the backend reads one flag value (table form of `flag_rules`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FlagRule {
    /// `"drf"` or `"python"`.
    Named(FlagRuleName),
    /// Exactly these strings mean true, e.g. `["true"]` (case-sensitive
    /// unless the table says `ignore_case = true`).
    Exact(Vec<String>),
}

/// The named flag rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlagRuleName {
    /// Django REST framework's `BooleanField` (3.15+): case-insensitive
    /// `true`, `t`, `yes`, `y`, `on`, `1`, and JSON `true`, `1`, `1.0`.
    Drf,
    /// Python truthiness of the parsed value: "false" is true, "" is false.
    Python,
}

impl FlagRule {
    /// REST framework's `BooleanField`.
    pub const DRF: FlagRule = FlagRule::Named(FlagRuleName::Drf);
    /// Python truthiness.
    pub const PYTHON: FlagRule = FlagRule::Named(FlagRuleName::Python);
}

/// How a route's backend reads the flag: a preset that reproduces one
/// backend stack exactly, or a table for anything else
/// (`docs/flag-rules.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FlagRulesRepr", into = "FlagRulesRepr")]
pub enum FlagRules {
    /// `"drf"`: REST framework 3.15+ parsers (JSON, form, multipart; 415
    /// for other types) and `BooleanField`.
    #[default]
    Drf,
    /// `"django-send-message"`: the chat app's view: multipart by Django's
    /// parser and `== 'true'`, every other body by `json.loads` and Python
    /// truthiness.
    DjangoSendMessage,
    /// `"django-form"`: a plain Django view: `application/json` by
    /// `json.loads` and truthiness, form bodies by `request.POST` and
    /// `.lower() in ('true', '1', 'on')`.
    DjangoForm,
    /// `{ form = …, json = …, ignore_case = …, query = … }`.
    Table(FlagTable),
}

/// The table form of `flag_rules`, for a backend no preset reproduces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagTable {
    /// For `multipart/form-data`, urlencoded bodies and the query string.
    #[serde(default = "drf")]
    pub form: FlagRule,
    /// For JSON bodies (every type but the two form types).
    #[serde(default = "drf")]
    pub json: FlagRule,
    /// Compare the strings of an `Exact` list lowercased.
    #[serde(default)]
    pub ignore_case: bool,
    /// Also read the query string (after the body). Off by default: no
    /// Django or DRF view reads a POST's query string unless written to.
    #[serde(default)]
    pub query: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum FlagRulesRepr {
    Preset(String),
    Table(FlagTable),
}

fn drf() -> FlagRule {
    FlagRule::DRF
}

impl TryFrom<FlagRulesRepr> for FlagRules {
    type Error = String;

    fn try_from(repr: FlagRulesRepr) -> Result<Self, String> {
        match repr {
            FlagRulesRepr::Table(t) => Ok(FlagRules::Table(t)),
            FlagRulesRepr::Preset(name) => match name.as_str() {
                "drf" => Ok(FlagRules::Drf),
                "django-send-message" => Ok(FlagRules::DjangoSendMessage),
                "django-form" => Ok(FlagRules::DjangoForm),
                "python" => Ok(FlagRules::Table(FlagTable {
                    form: FlagRule::PYTHON,
                    json: FlagRule::PYTHON,
                    ignore_case: false,
                    query: false,
                })),
                _ => Err(format!(
                    "unknown flag_rules preset {name:?}; expected \"drf\", \"django-send-message\", \
                     \"django-form\", \"python\" or a table {{ form = …, json = …, ignore_case = …, \
                     query = … }}"
                )),
            },
        }
    }
}

impl From<FlagRules> for FlagRulesRepr {
    fn from(r: FlagRules) -> Self {
        match r {
            FlagRules::Drf => FlagRulesRepr::Preset("drf".to_owned()),
            FlagRules::DjangoSendMessage => FlagRulesRepr::Preset("django-send-message".to_owned()),
            FlagRules::DjangoForm => FlagRulesRepr::Preset("django-form".to_owned()),
            FlagRules::Table(t) => FlagRulesRepr::Table(t),
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreKind::Memory => "memory",
            StoreKind::Redis => "redis",
        })
    }
}

/// How a plan name is matched against `[plans]` (`identity.plan_case`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanCase {
    /// Exactly: `Pro` is not `pro`.
    #[default]
    Sensitive,
    /// Ignoring ASCII and Unicode case: `Pro` is `pro`.
    Insensitive,
}
