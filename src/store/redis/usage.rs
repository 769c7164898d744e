//! The usage read (admin API): one pipeline of plain commands that reads a
//! user's units counted in each of three periods, the live ones, and the
//! period counters.

use chrono::{DateTime, Utc};
use redis::Value;

use super::commands::{
    Commands, Exclusive, LIVE_CEILING, UNITS, count, count_field, counted_from, live_score,
    refusal, take,
};
use super::{RedisStore, ms};
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
        // Per period: the units counted in it; then the live ones (each
        // counts in every period), then the counters.
        let mut commands = Commands::new(&self.prefix, 5);
        for window in windows.iter() {
            commands.add("ZCOUNT", user, &[UNITS], |zcount| {
                let end = Exclusive(counted_from(ms(window.end)));
                zcount.arg(end).arg(counted_from(ms(window.start)));
            });
        }
        commands.add("ZCOUNT", user, &[UNITS], |zcount| {
            let live = Exclusive(live_score(ms(now)));
            zcount.arg(live).arg(Exclusive(LIVE_CEILING));
        });
        commands.counters(user, windows.iter());
        let answers = self.pipeline(&commands).await?;
        if let Some(refused) = refusal("usage read", &answers) {
            return Err(refused);
        }
        let mut answers = answers.into_iter();
        let (Some(units), Some(Value::Int(live)), Some(Value::Array(counters))) =
            (take(&mut answers, 3), answers.next(), answers.next())
        else {
            return Err(StoreError::Protocol(
                "redis answered a usage read out of shape".to_owned(),
            ));
        };
        let mut usage = [PeriodUsage::default(); 3];
        for ((slot, units), counter) in usage.iter_mut().zip(units).zip(counters) {
            let Value::Int(units) = units else {
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
