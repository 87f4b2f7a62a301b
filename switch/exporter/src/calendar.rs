//! Periods and civil dates. A settlement period is one business day in a configured time zone
//! (a fixed UTC offset in whole hours, e.g. +9 for KST) closing at a configured local hour: the
//! period named `D` runs from `D` at the cut-off hour, local time, to `D + 1` at the cut-off hour.
//! With the default (offset +9, hour 0) period `2026-05-01` is 2026-05-01 00:00 to 2026-05-02
//! 00:00 KST. Dates are days since 1970-01-01 (`Day`), converted with Howard Hinnant's
//! `civil_from_days` / `days_from_civil`, so no time-zone database is involved.

/// Days since 1970-01-01 (may be negative).
pub type Day = i64;

const MS_PER_DAY: i64 = 86_400_000;
const MS_PER_HOUR: i64 = 3_600_000;

/// When periods end: `utc_offset_hours` east of UTC, closing at local `cutoff_hour`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cutoff {
    pub utc_offset_hours: i8,
    pub cutoff_hour: u8,
}

impl Cutoff {
    /// The period a server time (ms since the epoch, UTC) belongs to.
    pub fn period_of(&self, time_ms: u64) -> Day {
        let shifted_ms = i64::try_from(time_ms).unwrap_or(i64::MAX)
            + i64::from(self.utc_offset_hours) * MS_PER_HOUR
            - i64::from(self.cutoff_hour) * MS_PER_HOUR;
        shifted_ms.div_euclid(MS_PER_DAY)
    }

    /// The first millisecond (UTC) of period `day`.
    pub fn start_ms(&self, day: Day) -> i64 {
        day * MS_PER_DAY - i64::from(self.utc_offset_hours) * MS_PER_HOUR
            + i64::from(self.cutoff_hour) * MS_PER_HOUR
    }

    /// The first millisecond (UTC) after period `day`.
    pub fn end_ms(&self, day: Day) -> i64 {
        self.start_ms(day + 1)
    }

    /// A UTC time in ms as `YYYY-MM-DDThh:mm:ss+hh:00` in the configured zone (ISO 8601, as ISO
    /// 20022 `ISODateTime` wants it).
    pub fn local_date_time(&self, time_ms: i64) -> String {
        let local_ms = time_ms + i64::from(self.utc_offset_hours) * MS_PER_HOUR;
        let day = local_ms.div_euclid(MS_PER_DAY);
        let seconds = local_ms.rem_euclid(MS_PER_DAY) / 1000;
        let sign = if self.utc_offset_hours < 0 { '-' } else { '+' };
        format!(
            "{}T{:02}:{:02}:{:02}{sign}{:02}:00",
            date_string(day),
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60,
            self.utc_offset_hours.unsigned_abs()
        )
    }
}

pub use pinswitch_core::calendar::{civil_from_days, days_from_civil};

/// `YYYY-MM-DD`.
pub fn date_string(day: Day) -> String {
    let (year, month, day) = civil_from_days(day);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Parses `YYYY-MM-DD` (a real calendar date) into a day number.
pub fn parse_date(text: &str) -> Option<Day> {
    let mut parts = text.split('-');
    let (year, month, day) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return None;
    }
    let (year, month, day) =
        (year.parse::<i64>().ok()?, month.parse::<u32>().ok()?, day.parse::<u32>().ok()?);
    if !(1..=12).contains(&month) || day == 0 {
        return None;
    }
    let number = days_from_civil(year, month, day);
    (civil_from_days(number) == (year, month, day)).then_some(number)
}

/// The same calendar day `years` later (29 February becomes 1 March in a common year).
pub fn add_years(day: Day, years: i64) -> Day {
    let (year, month, day_of_month) = civil_from_days(day);
    // days_from_civil turns an impossible 29 February into 1 March by itself.
    days_from_civil(year + years, month, day_of_month)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_reject_nonsense() {
        assert_eq!(date_string(0), "1970-01-01");
        assert_eq!(parse_date("2024-02-29").map(date_string).as_deref(), Some("2024-02-29"));
        for day in [-700_000, -1, 0, 59, 19_000, 20_000, 2_000_000] {
            assert_eq!(parse_date(&date_string(day)), Some(day));
        }
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-1-01",
            "2024-01-00",
            "24-01-01",
            "x",
            "2024-01-01-01",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        assert_eq!(date_string(add_years(parse_date("2024-02-29").unwrap(), 1)), "2025-03-01");
        assert_eq!(date_string(add_years(parse_date("2026-05-01").unwrap(), 5)), "2031-05-01");
    }

    #[test]
    fn periods_follow_the_zone_and_the_cutoff_hour() {
        let kst = Cutoff { utc_offset_hours: 9, cutoff_hour: 0 };
        let day = parse_date("2026-05-01").unwrap();
        // 2026-05-01 00:00 KST is 2026-04-30 15:00 UTC.
        let start_ms = kst.start_ms(day);
        assert_eq!(kst.local_date_time(start_ms), "2026-05-01T00:00:00+09:00");
        assert_eq!(kst.period_of(start_ms as u64), day);
        assert_eq!(kst.period_of(start_ms as u64 - 1), day - 1);
        assert_eq!(kst.end_ms(day) - start_ms, MS_PER_DAY);
        let evening = Cutoff { utc_offset_hours: 9, cutoff_hour: 22 };
        // 22:00 KST on 1 May starts the period named 1 May; 21:59 belongs to 30 April.
        let ten_pm = kst.start_ms(day) + 22 * MS_PER_HOUR;
        assert_eq!(evening.period_of(ten_pm as u64), day);
        assert_eq!(evening.period_of(ten_pm as u64 - 1), day - 1);
        let west = Cutoff { utc_offset_hours: -5, cutoff_hour: 0 };
        assert_eq!(west.local_date_time(0), "1969-12-31T19:00:00-05:00");
    }
}
