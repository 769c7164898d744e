//! `[tracing]`: where the phases' spans are exported (OTLP over HTTP), under
//! which service name, and how many traces are kept. See docs/tracing.md.

use serde::{Deserialize, Serialize};

/// The path the OTLP/HTTP receiver takes traces on.
pub const OTLP_TRACES_PATH: &str = "/v1/traces";

/// Traces: off unless `otlp_endpoint` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// The OTLP/HTTP receiver spans are sent to, e.g. an OpenTelemetry
    /// Collector's `http://otel-collector:4318`; unset = no spans are
    /// made or sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<OtlpEndpoint>,
    /// The `service.name` the spans carry.
    pub service_name: ServiceName,
    /// Share of new traces kept, from 0.0 to 1.0; a request that continues
    /// a trace (a valid `traceparent`) follows that trace's decision.
    pub sample_ratio: SampleRatio,
}

impl Default for TracesConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: ServiceName("quota-proxy".to_owned()),
            sample_ratio: SampleRatio(1.0),
        }
    }
}

/// An OTLP/HTTP traces URL: `http://host:port`, to which
/// [`OTLP_TRACES_PATH`] is added unless the path already ends with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OtlpEndpoint(String);

impl OtlpEndpoint {
    /// The URL spans are POSTed to.
    pub fn traces_url(&self) -> String {
        let base = self.0.trim_end_matches('/');
        if base.ends_with(OTLP_TRACES_PATH) {
            base.to_owned()
        } else {
            format!("{base}{OTLP_TRACES_PATH}")
        }
    }
}

impl TryFrom<String> for OtlpEndpoint {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let expected =
            "expected the collector's OTLP/HTTP address, e.g. \"http://otel-collector:4318\"";
        let uri: http::Uri = s
            .parse()
            .map_err(|e| format!("tracing.otlp_endpoint: {s:?} is not a URL ({e}); {expected}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "tracing.otlp_endpoint: {s:?}: https is not supported; send to a collector \
                     next to the proxy over http:// (it can forward over TLS)"
                ));
            }
            _ => return Err(format!("tracing.otlp_endpoint: {s:?}: {expected}")),
        }
        let Some(authority) = uri.authority() else {
            return Err(format!(
                "tracing.otlp_endpoint: {s:?}: missing host; {expected}"
            ));
        };
        if authority.as_str().contains('@') {
            return Err(
                "tracing.otlp_endpoint: credentials in the URL are not supported; set \
                 OTEL_EXPORTER_OTLP_HEADERS (e.g. \"authorization=Bearer …\") instead"
                    .to_owned(),
            );
        }
        if uri.query().is_some() {
            return Err(format!(
                "tracing.otlp_endpoint: {s:?}: a query is not supported; {expected}"
            ));
        }
        Ok(Self(s))
    }
}

impl From<OtlpEndpoint> for String {
    fn from(endpoint: OtlpEndpoint) -> String {
        endpoint.0
    }
}

/// The `service.name` resource attribute: not empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

impl ServiceName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ServiceName {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Err("tracing.service_name: must not be empty; e.g. \"quota-proxy\"".to_owned());
        }
        Ok(Self(s))
    }
}

impl From<ServiceName> for String {
    fn from(name: ServiceName) -> String {
        name.0
    }
}

/// A share of traces kept: a number from 0.0 (none) to 1.0 (all).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct SampleRatio(f64);

impl SampleRatio {
    /// The share, from 0.0 to 1.0.
    pub fn get(self) -> f64 {
        self.0
    }
}

impl TryFrom<f64> for SampleRatio {
    type Error = String;

    fn try_from(ratio: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&ratio) {
            Ok(Self(ratio))
        } else {
            Err(format!(
                "tracing.sample_ratio: {ratio} is not a share; expected a number from 0.0 \
                 (no trace) to 1.0 (every trace), e.g. 0.1 for one in ten"
            ))
        }
    }
}

impl From<SampleRatio> for f64 {
    fn from(ratio: SampleRatio) -> f64 {
        ratio.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(s: &str) -> Result<OtlpEndpoint, String> {
        OtlpEndpoint::try_from(s.to_owned())
    }

    #[test]
    fn endpoints_get_the_traces_path_once() {
        let url = |s| endpoint(s).expect("valid").traces_url();
        assert_eq!(
            url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
        assert_eq!(url("http://c:4318/otlp"), "http://c:4318/otlp/v1/traces");
    }

    #[test]
    fn bad_endpoints_say_what_to_write() {
        for (bad, says) in [
            ("https://collector:4318", "https is not supported"),
            (
                "collector:4318",
                "expected the collector's OTLP/HTTP address",
            ),
            ("http://", "is not a URL"),
            (
                "http://user:secret@collector:4318",
                "OTEL_EXPORTER_OTLP_HEADERS",
            ),
            ("http://collector:4318/?a=b", "a query is not supported"),
        ] {
            let err = endpoint(bad).expect_err(bad);
            assert!(err.starts_with("tracing.otlp_endpoint"), "{err}");
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn ratios_and_names_are_checked() {
        assert!(SampleRatio::try_from(0.0).is_ok());
        assert!(SampleRatio::try_from(1.0).is_ok());
        for bad in [-0.1, 1.5, f64::NAN] {
            let err = SampleRatio::try_from(bad).expect_err("out of range");
            assert!(err.contains("tracing.sample_ratio"), "{err}");
        }
        assert!(ServiceName::try_from(" ".to_owned()).is_err());
    }
}
