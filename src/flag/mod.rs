//! Flag detection (phase: classify): does an inspected request ask Django
//! for an image? The verdict is what the backend itself will decide from the
//! same bytes, so the route's `flag_rules` name the backend's stack and this
//! module reproduces it: which content types it reads at all, how it decodes
//! them, which duplicate wins, which values mean true, and which bodies it
//! refuses before it can generate anything. `docs/flag-rules.md` is the
//! user's guide, with the table of every case where the proxy counts
//! because it cannot be sure.
//!
//! | stack (`flag_rules`) | `multipart/form-data` | `application/x-www-form-urlencoded` | `application/json` | other |
//! |---|---|---|---|---|
//! | `"drf"` | Django's parser, `BooleanField` | `QueryDict`, `BooleanField` | `JSONParser`, `BooleanField` | 415 |
//! | `"django-send-message"` | Django's parser, `== "true"` | `json.loads`, truthiness | `json.loads`, truthiness | `json.loads`, truthiness |
//! | `"django-form"` | Django's parser, `.lower() in (true, 1, on)` | `QueryDict`, same | `json.loads`, truthiness | not read (empty `request.POST`) |
//! | table | Django's parser, `form` rule | `QueryDict`, `form` rule | `json.loads`, `json` rule | `json.loads`, `json` rule |
//!
//! (DRF picks its parser by `media_type_matches`, so `*/*` and
//! `application/*` are JSON and `multipart/*` is multipart, and `+json`
//! types are 415.)
//!
//! # Verdicts
//!
//! - [`FlagVerdict::Flagged`] / [`FlagVerdict::NotFlagged`]: what the view
//!   decides.
//! - [`FlagVerdict::Rejected`]: the backend answers an error from parsing
//!   (DRF's 415 or 400, Django's 400 for a malformed multipart body, the
//!   500 of `json.loads` raising in a view) before it can generate
//!   anything. The request is forwarded and not reserved, so the user sees
//!   the backend's own error.
//! - [`FlagVerdict::Unreadable`]: the proxy cannot be sure what the backend
//!   does; the request is counted as flagged. Between "rejected" and "not
//!   flagged" no certainty is needed (neither is reserved), so an unsure
//!   rejection (a size limit that is a Django setting) is judged as if the
//!   body were read.
//!
//! Only the table form reads the query string, and only with `query = true`
//! (no view of these stacks reads a POST's query string for the flag).
//!
//! # No copies, streaming
//!
//! `Bytes` is shared, JSON is walked in place, form names are decoded only
//! when escaped and values only for the flag. A multipart body is parsed as
//! it streams ([`detect_stream`]): file parts pass through and are dropped,
//! and only the flag's value is kept, up to a cap.

mod form;
mod header;
mod json;
mod multipart;
mod truth;

#[cfg(test)]
mod tests;

use std::future::ready;

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, Stream, StreamExt, stream};

use crate::config::{FlagRule, FlagRuleName, FlagRules, FlagTable};
use form::FieldValue;
use json::{Decoding, JsonError, TopLevel};
use multipart::MultipartError;
use truth::{FlagValue, Rule, Truth};

/// Where a flag was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagSource {
    /// A top-level field of a JSON object body.
    Json,
    /// An `application/x-www-form-urlencoded` body.
    Form,
    /// A plain field of a `multipart/form-data` body.
    Multipart,
    /// The query string (table rules with `query = true` only).
    Query,
}

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlagVerdict {
    /// The request asks for an image.
    Flagged(FlagSource),
    /// It does not.
    NotFlagged,
    /// The backend refuses this body before it can generate anything (a 4xx
    /// or 5xx from parsing); forwarded, not reserved. The reason is for
    /// logs, e.g. `"DRF 415: unsupported media type \"text/plain\""`.
    Rejected(String),
    /// The proxy cannot be sure what the backend does with this body;
    /// counted as flagged. The reason is for logs.
    Unreadable(String),
}

impl FlagVerdict {
    /// Whether the request is counted (reserved): flagged, or unsure.
    pub fn counts(&self) -> bool {
        matches!(self, FlagVerdict::Flagged(_) | FlagVerdict::Unreadable(_))
    }
}

/// Judges a request from its whole body (and, for table rules with
/// `query = true`, its raw query string without `?`). Read in place,
/// without waiting: the buffered body of every inspected request that is
/// not an upload comes here.
pub fn detect(
    content_type: Option<&str>,
    body: Bytes,
    query: Option<&str>,
    flag: &str,
    rules: &FlagRules,
) -> FlagVerdict {
    let plan = match plan(content_type, body.is_empty(), rules) {
        Ok(plan) => plan,
        Err(verdict) => return verdict,
    };
    let said = match plan {
        // The multipart parser reads a stream: a whole body is a stream of
        // one ready chunk, read to its end in one poll. Were it ever to
        // wait, the request counts (fail closed).
        Plan::Multipart { .. } => {
            return detect_stream(content_type, stream::once(ready(body)), query, flag, rules)
                .now_or_never()
                .unwrap_or_else(|| {
                    FlagVerdict::Unreadable("a whole multipart body read as waiting".to_owned())
                });
        }
        plan => whole_said(plan, &body, flag, rules),
    };
    verdict(said, query, flag, rules)
}

/// [`detect`] for a body given as a stream of chunks: the same verdict for
/// the same bytes, however they are cut.
///
/// A multipart body is parsed as the chunks arrive: file parts are skipped
/// without being kept, and the verdict comes at the end of the body (the
/// last flag field wins, and Django reads parts even after the closing
/// boundary). A body of another kind is parsed whole and is collected
/// first: pass those only when already bounded. The stream is dropped once
/// the verdict is known.
pub async fn detect_stream<S>(
    content_type: Option<&str>,
    body: S,
    query: Option<&str>,
    flag: &str,
    rules: &FlagRules,
) -> FlagVerdict
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    let mut body = Box::pin(body.filter(|chunk| ready(!chunk.is_empty())));
    let first = body.next().await;
    let empty = first.is_none();
    let body = stream::iter(first).chain(body);
    let plan = match plan(content_type, empty, rules) {
        Ok(plan) => plan,
        Err(verdict) => return verdict,
    };
    let said = match plan {
        Plan::Multipart { separator, rule } => {
            let cap = truth::value_cap(rule);
            match multipart::last_value(Box::pin(body), &separator, flag, cap).await {
                // DRF's `request.data` is POST updated with FILES: a file
                // under the flag's name is its last value, which
                // `BooleanField` refuses.
                Ok(found) if found.file && matches!(rules, FlagRules::Drf) => Said::Stop(
                    FlagVerdict::Rejected("DRF 400: BooleanField given a file".to_owned()),
                ),
                Ok(found) => field(found.field, rule, FlagSource::Multipart, rules),
                Err(e) => Said::Stop(multipart_error(e, rules)),
            }
        }
        plan => whole_said(plan, &collect(body).await, flag, rules),
    };
    verdict(said, query, flag, rules)
}

/// What a whole body read under `plan` (not multipart) says.
fn whole_said(plan: Plan<'_>, whole: &[u8], flag: &str, rules: &FlagRules) -> Said {
    match plan {
        Plan::Nothing => Said::Missing,
        Plan::Form { rule } => {
            let value = form::last_value(whole, flag, truth::value_cap(rule));
            field(value, rule, FlagSource::Form, rules)
        }
        Plan::Json { decoding, rule } => {
            match json::parse(whole, decoding, flag, truth::value_cap(rule)) {
                Ok(TopLevel::Object(None)) => Said::Missing,
                Ok(TopLevel::Object(Some(value))) => Said::from_truth(
                    truth::judge(rule, value.as_value()),
                    FlagSource::Json,
                    rules,
                ),
                // DRF's serializer: "Invalid data. Expected a dictionary"
                // (400); a view's `data.get(…)`: AttributeError (500).
                Ok(TopLevel::Other) => {
                    rejected_or_unsure("the JSON body is not an object".to_owned(), rules)
                }
                Err(JsonError::Invalid(reason)) => rejected_or_unsure(reason, rules),
                Err(JsonError::Unsure(reason)) => Said::Stop(FlagVerdict::Unreadable(reason)),
            }
        }
        Plan::Multipart { .. } => Said::Stop(FlagVerdict::Unreadable(
            "a multipart body read whole".to_owned(),
        )),
    }
}

/// The verdict on what the body said, the query string read when the body
/// says nothing for sure.
fn verdict(said: Said, query: Option<&str>, flag: &str, rules: &FlagRules) -> FlagVerdict {
    match said {
        Said::Stop(verdict) => verdict,
        Said::True(source) => FlagVerdict::Flagged(source),
        Said::Missing | Said::False => query_verdict(query, flag, rules),
    }
}

/// Whether the body is read as `multipart/form-data` under `rules`: the one
/// kind [`detect_stream`] reads without holding it.
pub fn is_multipart(content_type: Option<&str>, rules: &FlagRules) -> bool {
    // Only a type that names multipart can be: the others skip the parse.
    let ct = content_type.unwrap_or("");
    if !ct
        .as_bytes()
        .windows(9)
        .any(|w| w.eq_ignore_ascii_case(b"multipart") || w.eq_ignore_ascii_case(b"form-data"))
    {
        return false;
    }
    matches!(plan(content_type, false, rules), Ok(Plan::Multipart { .. }))
}

/// What a body said.
enum Said {
    /// The verdict, whatever the query says.
    Stop(FlagVerdict),
    /// The flag is true.
    True(FlagSource),
    /// The flag is false.
    False,
    /// There is no flag.
    Missing,
}

impl Said {
    fn from_truth(truth: Truth, source: FlagSource, rules: &FlagRules) -> Said {
        match truth {
            Truth::True => Said::True(source),
            Truth::False => Said::False,
            Truth::Invalid => match rules {
                FlagRules::Table(_) => Said::False,
                _ => Said::Stop(FlagVerdict::Rejected(
                    "DRF 400: BooleanField: \"Must be a valid boolean.\"".to_owned(),
                )),
            },
        }
    }
}

/// A form or multipart field's value under `rule`. DRF's `BooleanField`
/// reads a blank HTML value as absent (`required=False`).
fn field(value: Option<FieldValue>, rule: Rule<'_>, source: FlagSource, rules: &FlagRules) -> Said {
    match value {
        None => Said::Missing,
        Some(FieldValue::Text(text)) if text.is_empty() && matches!(rules, FlagRules::Drf) => {
            Said::Missing
        }
        Some(FieldValue::Text(text)) => {
            Said::from_truth(truth::judge(rule, FlagValue::Str(&text)), source, rules)
        }
        Some(FieldValue::Long) => {
            Said::from_truth(truth::judge(rule, FlagValue::OtherText), source, rules)
        }
    }
}

/// A parse error: the backend's error for a preset, unsure for the table
/// form (whose backend is not known).
fn rejected_or_unsure(reason: String, rules: &FlagRules) -> Said {
    Said::Stop(match rules {
        FlagRules::Table(_) => FlagVerdict::Unreadable(reason),
        _ => FlagVerdict::Rejected(reason),
    })
}

fn multipart_error(e: MultipartError, rules: &FlagRules) -> FlagVerdict {
    match e {
        MultipartError::Invalid(reason) => match rejected_or_unsure(reason, rules) {
            Said::Stop(verdict) => verdict,
            _ => FlagVerdict::NotFlagged,
        },
        MultipartError::Unsure(reason) => FlagVerdict::Unreadable(reason),
    }
}

/// The query string's verdict, for table rules with `query = true`.
fn query_verdict(query: Option<&str>, flag: &str, rules: &FlagRules) -> FlagVerdict {
    let FlagRules::Table(table) = rules else {
        return FlagVerdict::NotFlagged;
    };
    if !table.query {
        return FlagVerdict::NotFlagged;
    }
    let rule = value_rule(&table.form, table);
    let value = query.and_then(|q| form::last_value(q.as_bytes(), flag, truth::value_cap(rule)));
    match field(value, rule, FlagSource::Query, rules) {
        Said::True(source) => FlagVerdict::Flagged(source),
        _ => FlagVerdict::NotFlagged,
    }
}

async fn collect<S: Stream<Item = Bytes>>(body: S) -> Bytes {
    let mut body = std::pin::pin!(body);
    let Some(first) = body.next().await else {
        return Bytes::new();
    };
    let Some(second) = body.next().await else {
        return first;
    };
    let mut whole = BytesMut::from(&first[..]);
    whole.extend_from_slice(&second);
    while let Some(chunk) = body.next().await {
        whole.extend_from_slice(&chunk);
    }
    whole.freeze()
}

/// How a body is read.
enum Plan<'a> {
    /// Not read: the flag is absent.
    Nothing,
    /// `json.loads` or DRF's `JSONParser`.
    Json { decoding: Decoding, rule: Rule<'a> },
    /// `QueryDict`.
    Form { rule: Rule<'a> },
    /// Django's `MultiPartParser`.
    Multipart { separator: Vec<u8>, rule: Rule<'a> },
}

/// A plain Django view's `.lower() in ('true', '1', 'on')`.
const DJANGO_FORM_TRUE: Rule<'static> = Rule::Words {
    words: &["true", "1", "on"],
    ignore_case: true,
};
/// The production view's multipart `== 'true'`.
const SEND_MESSAGE_TRUE: Rule<'static> = Rule::Words {
    words: &["true"],
    ignore_case: false,
};

fn value_rule<'a>(rule: &'a FlagRule, table: &FlagTable) -> Rule<'a> {
    match rule {
        FlagRule::Named(FlagRuleName::Drf) => Rule::Drf,
        FlagRule::Named(FlagRuleName::Python) => Rule::Python,
        FlagRule::Exact(list) => Rule::Strings {
            strings: list,
            ignore_case: table.ignore_case,
        },
    }
}

/// Names Python's `codecs.lookup` resolves to UTF-8 (after its
/// normalization: case, `-` and spaces).
fn is_utf8_name(charset: &str) -> bool {
    let name: String = charset
        .trim()
        .chars()
        .map(|c| {
            if c == '-' || c == ' ' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    matches!(
        name.as_str(),
        "utf_8" | "utf8" | "u8" | "utf" | "cp65001" | "utf8_ucs2" | "utf8_ucs4"
    )
}

/// Names Python's `codecs.lookup` certainly resolves (a few common ones;
/// an unknown name is not known *not* to resolve).
fn is_known_codec(charset: &str) -> bool {
    let name: String = charset
        .trim()
        .chars()
        .map(|c| {
            if c == '-' || c == ' ' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    is_utf8_name(charset)
        || matches!(
            name.as_str(),
            "ascii"
                | "us_ascii"
                | "latin_1"
                | "latin1"
                | "iso_8859_1"
                | "iso8859_1"
                | "l1"
                | "utf_16"
                | "utf16"
                | "utf_16_le"
                | "utf_16_be"
                | "utf_32"
                | "utf32"
                | "cp1252"
                | "windows_1252"
                | "iso_8859_15"
                | "koi8_r"
                | "shift_jis"
                | "euc_jp"
                | "gbk"
                | "gb2312"
                | "big5"
                | "cp1256"
                | "windows_1256"
        )
}

/// How `rules` read a body of `content_type`; `Err` is the verdict itself.
fn plan<'a>(
    content_type: Option<&str>,
    empty: bool,
    rules: &'a FlagRules,
) -> Result<Plan<'a>, FlagVerdict> {
    let raw = content_type.unwrap_or("");
    // Django parses `CONTENT_TYPE` when it builds the request; DRF's
    // `_MediaType` parses it again the same way.
    let parsed = header::parse(raw);
    // Django 5.1 splits some values otherwise (angle brackets, quotes at
    // one end, RFC 2231 in place): which one the backend runs is not known.
    if header::read_otherwise_by_django_5_1(raw, &parsed, &["boundary", "charset"]) {
        return Err(FlagVerdict::Unreadable(
            "a Content-Type Django 5.1 and 5.2 read differently".to_owned(),
        ));
    }
    // An RFC 2231 parameter is decoded by Django, or makes it raise (a
    // 500): only one that could set the charset changes a reading.
    if parsed.rfc2231.iter().any(|n| n == "charset") {
        return Err(FlagVerdict::Unreadable(
            "an RFC 2231 charset*= parameter in Content-Type".to_owned(),
        ));
    }
    let charset_ok = parsed.param("charset").is_none_or(is_utf8_name);
    let foreign = || {
        FlagVerdict::Unreadable(format!(
            "charset {:?} in Content-Type; only UTF-8 is read",
            parsed.param("charset").unwrap_or("")
        ))
    };
    let multipart = || {
        multipart::separator(raw).map_err(|e| match e {
            MultipartError::Invalid(reason) => match rules {
                FlagRules::Table(_) => FlagVerdict::Unreadable(reason),
                _ => FlagVerdict::Rejected(reason),
            },
            MultipartError::Unsure(reason) => FlagVerdict::Unreadable(reason),
        })
    };
    let key = parsed.key.as_str();
    match rules {
        FlagRules::Drf => {
            // `Request._parse`: no body (CONTENT_LENGTH 0), no data.
            if empty {
                return Ok(Plan::Nothing);
            }
            // No length limit on the type: DRF 3.16 and Django 5.2 read a
            // type of any length gunicorn lets through (a 1,000-character
            // one generated where a 415 was assumed from 257 characters on;
            // `tests/it/attack_content_type.rs`).
            let (main, sub) = key.split_once('/').unwrap_or((key, ""));
            let matches = |m: &str, s: &str| (sub == "*" || sub == s) && (main == "*" || main == m);
            if !charset_ok {
                return Err(foreign());
            }
            if matches("application", "json") {
                Ok(Plan::Json {
                    decoding: Decoding::Drf,
                    rule: Rule::Drf,
                })
            } else if matches("application", "x-www-form-urlencoded") {
                Ok(Plan::Form { rule: Rule::Drf })
            } else if matches("multipart", "form-data") {
                Ok(Plan::Multipart {
                    separator: multipart()?,
                    rule: Rule::Drf,
                })
            } else {
                Err(FlagVerdict::Rejected(format!(
                    "DRF 415: unsupported media type {raw:?}"
                )))
            }
        }
        FlagRules::DjangoSendMessage => {
            if key == "multipart/form-data" {
                // `MultiPartParser.__init__` checks the type before it sees
                // that the body is empty.
                let separator = multipart()?;
                if empty {
                    return Ok(Plan::Nothing);
                }
                if !charset_ok {
                    return Err(foreign());
                }
                Ok(Plan::Multipart {
                    separator,
                    rule: SEND_MESSAGE_TRUE,
                })
            } else {
                // `json.loads(request.body)`, whatever the type and charset;
                // an empty body raises too.
                Ok(Plan::Json {
                    decoding: Decoding::Loads,
                    rule: Rule::Python,
                })
            }
        }
        FlagRules::DjangoForm => {
            let rule = DJANGO_FORM_TRUE;
            match key {
                "application/json" => Ok(Plan::Json {
                    decoding: Decoding::Loads,
                    rule: Rule::Python,
                }),
                "multipart/form-data" => {
                    let separator = multipart()?;
                    if empty {
                        return Ok(Plan::Nothing);
                    }
                    if !charset_ok {
                        return Err(foreign());
                    }
                    Ok(Plan::Multipart { separator, rule })
                }
                // `_load_post_and_files` refuses a charset other than
                // "utf-8" when Python knows it (400); an unknown one is
                // ignored. Only UTF-8 spellings are known here, so others
                // are read as UTF-8 (the counting side).
                "application/x-www-form-urlencoded" => match parsed.param("charset") {
                    Some(c) if !c.eq_ignore_ascii_case("utf-8") && is_known_codec(c) => {
                        Err(FlagVerdict::Rejected(format!(
                            "Django 400: urlencoded body with charset {c:?} (must be \"utf-8\")"
                        )))
                    }
                    _ => Ok(Plan::Form { rule }),
                },
                _ => Ok(Plan::Nothing),
            }
        }
        FlagRules::Table(table) => {
            if empty {
                return Ok(Plan::Nothing);
            }
            if !charset_ok {
                return Err(foreign());
            }
            let form = value_rule(&table.form, table);
            match key {
                "application/x-www-form-urlencoded" => Ok(Plan::Form { rule: form }),
                "multipart/form-data" => Ok(Plan::Multipart {
                    separator: multipart()?,
                    rule: form,
                }),
                _ => Ok(Plan::Json {
                    decoding: Decoding::Loads,
                    rule: value_rule(&table.json, table),
                }),
            }
        }
    }
}
