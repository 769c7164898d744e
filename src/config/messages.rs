//! `[messages]` (phase: admit): the denial message per period.

use serde::{Deserialize, Serialize};

/// Denial message templates; `{limit}` is replaced by the period's limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Messages {
    /// When the daily limit is reached.
    pub daily: String,
    /// When the weekly limit is reached.
    pub weekly: String,
    /// When the monthly limit is reached.
    pub monthly: String,
    /// Add `period`, `limit` and `retry_after` to the denial body beside
    /// `error`; `false` makes the body exactly `{"error": "<message>"}`.
    pub details: bool,
}

impl Default for Messages {
    fn default() -> Self {
        Self {
            daily: "شما به حد مجاز تولید تصویر روزانه ({limit} عدد) رسیده‌اید".to_owned(),
            weekly: "شما به حد مجاز تولید تصویر هفتگی ({limit} عدد) رسیده‌اید".to_owned(),
            monthly: "شما به حد مجاز تولید تصویر ماهانه ({limit} عدد) رسیده‌اید".to_owned(),
            details: true,
        }
    }
}
