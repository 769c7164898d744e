//! The answer to a request over its limit: the route's status, the period's
//! message as `{"error": …}` (what the Django frontend reads), the extra
//! fields `period`, `limit` and `retry_after`, and `Retry-After`.

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::Full;

use crate::config::Messages;
use crate::periods::Period;
use crate::quota::routes::Route;
use crate::response::json_response;

/// Why a request is denied.
pub(crate) struct Denial<'a> {
    pub(crate) route: &'a Route,
    pub(crate) messages: &'a Messages,
    pub(crate) period: Period,
    pub(crate) limit: u64,
    pub(crate) retry_after: u64,
}

impl Denial<'_> {
    /// The message shown to the user: the route's template if it has one,
    /// else the period's, with `{limit}` and `{period}` filled in.
    pub(crate) fn message(&self) -> String {
        let template = self.route.message.as_deref().unwrap_or(match self.period {
            Period::Daily => &self.messages.daily,
            Period::Weekly => &self.messages.weekly,
            Period::Monthly => &self.messages.monthly,
        });
        template
            .replace("{limit}", &self.limit.to_string())
            .replace("{period}", self.period.as_str())
    }

    /// The response.
    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        let body = if self.messages.details {
            serde_json::json!({
                "error": self.message(),
                "period": self.period.as_str(),
                "limit": self.limit,
                "retry_after": self.retry_after,
            })
        } else {
            serde_json::json!({ "error": self.message() })
        };
        let mut response = json_response(self.route.deny_status, &body);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(self.retry_after));
        response
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;
    use crate::config::FlagRules;

    fn route(message: Option<&str>) -> Route {
        Route {
            name: "POST /x".to_owned(),
            pattern: crate::quota::routes::PathPattern::parse("/x").expect("pattern"),
            flag: "generate_image".to_owned(),
            flag_rules: FlagRules::default(),
            deny_status: StatusCode::FORBIDDEN,
            message: message.map(str::to_owned),
            probe: None,
            shadow: false,
            counters: crate::counters::RouteCounters::new("POST /x"),
        }
    }

    #[test]
    fn persian_daily_message_and_headers() {
        let messages = Messages::default();
        let route = route(None);
        let denial = Denial {
            route: &route,
            messages: &messages,
            period: Period::Daily,
            limit: 3,
            retry_after: 120,
        };
        assert_eq!(
            denial.message(),
            "شما به حد مجاز تولید تصویر روزانه (3 عدد) رسیده‌اید"
        );
        let response = denial.into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[header::RETRY_AFTER], "120");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/json; charset=utf-8"
        );
    }

    #[tokio::test]
    async fn body_is_exactly_the_error_without_details() {
        use http_body_util::BodyExt;
        let messages = Messages {
            details: false,
            ..Messages::default()
        };
        let route = route(Some("no more images"));
        let denial = Denial {
            route: &route,
            messages: &messages,
            period: Period::Monthly,
            limit: 30,
            retry_after: 5,
        };
        let body = denial.into_response().into_body().collect().await;
        let bytes = body.expect("full body").to_bytes();
        assert_eq!(&bytes[..], br#"{"error":"no more images"}"#);
    }

    #[test]
    fn route_message_overrides_period_templates() {
        let messages = Messages::default();
        let route = route(Some("limit {limit} per {period}"));
        let denial = Denial {
            route: &route,
            messages: &messages,
            period: Period::Weekly,
            limit: 10,
            retry_after: 1,
        };
        assert_eq!(denial.message(), "limit 10 per weekly");
    }
}
