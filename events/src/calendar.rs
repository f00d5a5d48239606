//! The span of time Circle records: dates from 1900-01-01 to 2199-12-31, times in
//! whole civil seconds.
//!
//! Every date and time a command carries is checked here, so the log never holds a
//! year 0, a six-digit year or a leap second (`23:59:60`): values that other readers
//! of the log (PostgreSQL, JavaScript dashboards, report exports) cannot represent or
//! would read differently. The span covers any birth, membership or session a
//! practice records.

use chrono::{DateTime, FixedOffset, NaiveDate, Timelike};

/// The first date Circle records.
pub const EARLIEST: NaiveDate = NaiveDate::from_ymd_opt(1900, 1, 1).expect("a valid date");
/// The last date Circle records.
pub const LATEST: NaiveDate = NaiveDate::from_ymd_opt(2199, 12, 31).expect("a valid date");

/// Why a date or time is refused; the message follows the field's name.
pub const OUTSIDE_THE_CALENDAR: &str = "must be a date from 1900-01-01 to 2199-12-31";
pub const LEAP_SECOND: &str = "must not be a leap second (23:59:60)";

/// Checks a date; `Err` carries the reason.
pub fn check_date(date: NaiveDate) -> Result<(), &'static str> {
    if (EARLIEST..=LATEST).contains(&date) {
        Ok(())
    } else {
        Err(OUTSIDE_THE_CALENDAR)
    }
}

/// Checks a time by the date it was written on (in its own offset), and refuses
/// leap seconds, which chrono keeps as a nanosecond count of one second or more.
pub fn check_time(at: &DateTime<FixedOffset>) -> Result<(), &'static str> {
    check_date(at.date_naive())?;
    if at.nanosecond() >= 1_000_000_000 {
        return Err(LEAP_SECOND);
    }
    Ok(())
}
