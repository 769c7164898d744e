//! JSON bodies (phase: classify): the flag is a top-level key of an object.
//!
//! The body is walked once with serde and never built into a
//! `serde_json::Value`: other keys' values are skipped with
//! [`IgnoredAny`] (still fully checked, so invalid JSON anywhere is
//! unreadable), and each occurrence of the flag is judged where it stands.
//! The last occurrence decides, as Python's `json.loads` keeps the last of
//! duplicate keys.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::truth::{self, FlagValue};
use crate::config::FlagRule;

/// Whether the JSON object in `body` has `flag` as a top-level key whose
/// value is true under `rule`. `Err` holds why the body is not a JSON
/// object.
pub(super) fn judge(body: &[u8], flag: &str, rule: &FlagRule) -> Result<bool, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let verdict = TopLevel { flag, rule }
        .deserialize(&mut de)
        .and_then(|verdict| de.end().map(|()| verdict))
        .map_err(|e| match e.classify() {
            serde_json::error::Category::Data => format!("JSON body is not an object: {e}"),
            _ => format!("invalid JSON: {e}"),
        })?;
    Ok(verdict)
}

/// The top-level object: its verdict is that of the flag's last occurrence.
struct TopLevel<'a> {
    flag: &'a str,
    rule: &'a FlagRule,
}

impl<'de> DeserializeSeed<'de> for TopLevel<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<bool, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut verdict = false;
        while let Some(is_flag) = map.next_key_seed(KeyIs(self.flag))? {
            if is_flag {
                verdict = map.next_value_seed(Judge(self.rule))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(verdict)
    }
}

/// Compares a key with the flag after unescaping, without allocating when
/// the key has no escapes.
struct KeyIs<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<bool, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

/// Judges one flag value under a rule. Arrays and objects are only counted
/// (empty or not), never kept.
struct Judge<'a>(&'a FlagRule);

impl Judge<'_> {
    fn judge(&self, value: FlagValue<'_>) -> bool {
        truth::is_true(self.0, value)
    }
}

impl<'de> DeserializeSeed<'de> for Judge<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<bool, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Judge<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<bool, E> {
        Ok(self.judge(FlagValue::Null))
    }

    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<bool, E> {
        Ok(self.judge(FlagValue::Bool(b)))
    }

    // Integers become `f64` on purpose: only "== 0" and "== 1" matter, and
    // no integer rounds onto either.
    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<bool, E> {
        Ok(self.judge(FlagValue::Number(n as f64)))
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<bool, E> {
        Ok(self.judge(FlagValue::Number(n as f64)))
    }

    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<bool, E> {
        Ok(self.judge(FlagValue::Number(n)))
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<bool, E> {
        Ok(self.judge(FlagValue::Str(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let empty = seq.next_element::<IgnoredAny>()?.is_none();
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.judge(FlagValue::Container { empty }))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let empty = map.next_entry::<IgnoredAny, IgnoredAny>()?.is_none();
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(self.judge(FlagValue::Container { empty }))
    }
}
