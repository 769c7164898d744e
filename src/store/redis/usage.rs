//! The usage read (admin API): one pipeline of plain commands that reads a
//! user's counted and live units and counters in three periods.

use chrono::{DateTime, Utc};
use redis::Value;

use super::commands::{Commands, LiveFrom, SETTLED, UNITS, refusal, take};
use super::{RedisStore, count, count_field, ms};
use crate::periods::PeriodWindows;
use crate::store::{PeriodUsage, StoreError};

impl RedisStore {
    /// Usage and live reservations of `user` in each of `windows`: per
    /// period, the counted units plus the counter, and the live units.
    pub(super) async fn read_usage(
        &self,
        user: &str,
        windows: &PeriodWindows,
        now: DateTime<Utc>,
    ) -> Result<[PeriodUsage; 3], StoreError> {
        // Per period: the counted units, the live ones, then the counters.
        let mut commands = Commands::new(&self.prefix, 7);
        for (from, to) in [(SETTLED, SETTLED), ("", "(+inf")] {
            for window in windows.iter() {
                let label = window.label.text();
                commands.add("ZCOUNT", user, &[label.as_str(), UNITS], |zcount| {
                    if from.is_empty() {
                        zcount.arg(LiveFrom(ms(now)));
                    } else {
                        zcount.arg(from);
                    }
                    zcount.arg(to);
                });
            }
        }
        commands.counters(user, windows.iter());
        let answers = self.pipeline(&commands).await?;
        if let Some(refused) = refusal("usage read", &answers) {
            return Err(refused);
        }
        let mut answers = answers.into_iter();
        let (Some(units), Some(live), Some(Value::Array(counters))) =
            (take(&mut answers, 3), take(&mut answers, 3), answers.next())
        else {
            return Err(StoreError::Protocol(
                "redis answered a usage read out of shape".to_owned(),
            ));
        };
        let mut usage = [PeriodUsage::default(); 3];
        for (((slot, units), live), counter) in usage.iter_mut().zip(units).zip(live).zip(counters)
        {
            let (Value::Int(units), Value::Int(live)) = (units, live) else {
                return Err(StoreError::Protocol(
                    "redis answered a usage read with no counts".to_owned(),
                ));
            };
            slot.used = count(units.saturating_add(count_field(counter)?).max(0))?;
            slot.reserved = count(live)?;
        }
        Ok(usage)
    }
}
