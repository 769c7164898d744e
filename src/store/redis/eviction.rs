//! Redis's eviction policy, checked when the store prepares (phase:
//! startup): every quota key has a TTL, so a `volatile-*` or `allkeys-*`
//! `maxmemory-policy` deletes counters under memory pressure and users
//! start over. Managed services that disable `CONFIG` are not checked.

use redis::Value;

use crate::store::topology::Connection;

/// Logs a warning when the Redis behind `connection` (shown as `shown`)
/// may evict keys.
pub(super) async fn warn_if_evicting(connection: &Connection, shown: &str) {
    let mut get = redis::cmd("CONFIG");
    get.arg("GET").arg("maxmemory-policy");
    match connection.query::<Value>(&get).await {
        Ok(answer) => {
            if let Some(policy) = evicting_policy(&answer) {
                tracing::warn!(redis = %shown, maxmemory_policy = %policy,
                    "redis may evict quota counters under memory pressure, and users \
                     would start over; set maxmemory-policy noeviction (docs/redis.md)");
            }
        }
        Err(e) => tracing::debug!(redis = %shown, error = %e,
            "cannot read maxmemory-policy (CONFIG disabled?); eviction not checked"),
    }
}

/// The first eviction policy other than `noeviction` in a `CONFIG GET
/// maxmemory-policy` answer (a name and its value; from a cluster, one pair
/// per node in whatever shape).
fn evicting_policy(answer: &Value) -> Option<String> {
    match answer {
        Value::BulkString(bytes) => {
            let text = String::from_utf8_lossy(bytes);
            (text != "maxmemory-policy" && text != "noeviction").then(|| text.into_owned())
        }
        Value::SimpleString(text) => {
            (text != "maxmemory-policy" && text != "noeviction").then(|| text.clone())
        }
        Value::Array(items) | Value::Set(items) => items.iter().find_map(evicting_policy),
        Value::Map(pairs) => pairs
            .iter()
            .find_map(|(k, v)| evicting_policy(k).or_else(|| evicting_policy(v))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_evicting_policy_is_found_in_any_answer_shape() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let pair = |policy: &str| Value::Array(vec![bulk("maxmemory-policy"), bulk(policy)]);
        assert_eq!(evicting_policy(&pair("noeviction")), None);
        assert_eq!(
            evicting_policy(&pair("volatile-lru")).as_deref(),
            Some("volatile-lru")
        );
        let map = Value::Map(vec![(bulk("maxmemory-policy"), bulk("allkeys-lfu"))]);
        assert_eq!(evicting_policy(&map).as_deref(), Some("allkeys-lfu"));
        let nodes = Value::Array(vec![pair("noeviction"), pair("volatile-ttl")]);
        assert_eq!(evicting_policy(&nodes).as_deref(), Some("volatile-ttl"));
        assert_eq!(evicting_policy(&Value::Array(vec![])), None);
    }
}
