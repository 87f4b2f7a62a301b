//! Civil dates as day numbers (days since 1970-01-01, proleptic Gregorian), by Howard Hinnant's
//! `civil_from_days` / `days_from_civil`: pure arithmetic, no time-zone database. Settlement
//! names its periods with them; the ISO 8583 front end reads a transmission time that has no
//! year with them.

/// Days since 1970-01-01 (may be negative).
pub type Day = i64;

/// `(year, month 1..=12, day 1..=31)` of a day number.
pub fn civil_from_days(days: Day) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // 1..=31 and 1..=12 by construction (Hinnant's `civil_from_days`), so they always fit.
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).expect("a day of the month fits u32");
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).expect("a month fits u32");
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The day number of a civil date (no range checks; see `parse_date`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> Day {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
