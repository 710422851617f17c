//! Cron expressions in a time zone, and which due times a schedule fires (pure; unit-tested).
//!
//! Five fields (minute hour day-of-month month day-of-week) or six with seconds first; `*`,
//! lists, ranges, steps, month and day names, `7` for Sunday, and `@yearly`, `@monthly`,
//! `@weekly`, `@daily`, `@hourly`. As in Vixie cron, when both day fields are restricted a day
//! matching either is due.
//!
//! Due times are local (civil) times of the zone: each fires once. One that a clock change
//! skips (spring forward) fires shifted by the gap (02:30 on a night that jumps from 02:00 to
//! 03:00 fires at 03:30); one that a clock change repeats (fall back) fires at its first
//! occurrence.

use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, ToSpan as _};
use serde::{Deserialize, Serialize};

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u32,
    /// Bits 1..=31.
    days: u32,
    /// Bits 1..=12.
    months: u16,
    /// Bits 0..=6, Sunday 0.
    weekdays: u8,
    days_any: bool,
    weekdays_any: bool,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Parses one field into a bit set over `lo..=hi`; `names` are values from `names_from`.
fn field(
    text: &str,
    what: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
    names_from: u32,
) -> Result<u64, String> {
    let value = |s: &str| -> Result<u32, String> {
        let upper = s.to_ascii_uppercase();
        if let Some(i) = names.iter().position(|n| *n == upper) {
            return Ok(names_from + u32::try_from(i).unwrap_or(0));
        }
        let n: u32 = s
            .parse()
            .map_err(|_| format!("{what}: {s:?} is not a number or a name"))?;
        // Day of week 7 (Sunday too) stays 7 here, so that ranges such as 5-7 hold; the
        // caller folds bit 7 onto bit 0.
        if n < lo || n > hi {
            return Err(format!("{what}: {n} is outside {lo}-{hi}"));
        }
        Ok(n)
    };
    let mut bits = 0_u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("{what}: step {s:?} is not a number"))?;
                if step == 0 || step > hi {
                    return Err(format!("{what}: step {step} is outside 1-{hi}"));
                }
                (r, step)
            }
            None => (item, 1),
        };
        let (from, to) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(format!("{what}: range {range:?} runs backwards"));
            }
            (a, b)
        } else {
            let a = value(range)?;
            // "5/15": from 5 to the end, every 15.
            (a, if item.contains('/') { hi } else { a })
        };
        let mut v = from;
        while v <= to {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Cron {
    /// Parses an expression.
    pub fn parse(expression: &str) -> Result<Self, String> {
        let expanded = match expression.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(format!("unknown cron macro {other:?}"));
            }
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (seconds, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(format!(
                    "a cron expression has 5 fields (or 6 with seconds first), not {n}"
                ));
            }
        };
        let weekdays = field(rest[4], "day of week", 0, 7, &WEEKDAYS, 0)?;
        Ok(Self {
            seconds: field(seconds, "second", 0, 59, &[], 0)?,
            minutes: field(rest[0], "minute", 0, 59, &[], 0)?,
            hours: u32::try_from(field(rest[1], "hour", 0, 23, &[], 0)?).unwrap_or(0),
            days: u32::try_from(field(rest[2], "day of month", 1, 31, &[], 0)?).unwrap_or(0),
            months: u16::try_from(field(rest[3], "month", 1, 12, &MONTHS, 1)?).unwrap_or(0),
            // Bit 7 (a range to 7) is Sunday, bit 0.
            weekdays: u8::try_from((weekdays | (weekdays >> 7)) & 0x7f).unwrap_or(0),
            // As Vixie cron: a field starting with `*` (`*/2` too) leaves the day unrestricted.
            days_any: rest[2].starts_with('*'),
            weekdays_any: rest[4].starts_with('*'),
        })
    }

    fn day_matches(&self, dt: DateTime) -> bool {
        let dom = self.days & (1 << dt.day()) != 0;
        let dow = self.weekdays & (1 << dt.weekday().to_sunday_zero_offset()) != 0;
        match (self.days_any, self.weekdays_any) {
            (false, false) => dom || dow,
            _ => dom && dow,
        }
    }

    /// The first due time strictly after `after`, in `tz`; `None` if there is none within
    /// about five years (`0 0 30 2 *`).
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(tz.clone()).datetime();
        let mut dt = start
            .with()
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.second())
            .ok()?;
        let limit = start.checked_add(5.years()).ok()?;
        while dt < limit {
            if self.months & (1 << dt.month()) == 0 {
                dt = dt
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .start_of_day();
                continue;
            }
            if !self.day_matches(dt) {
                dt = dt.tomorrow().ok()?.start_of_day();
                continue;
            }
            if self.hours & (1 << dt.hour()) == 0 {
                dt = dt
                    .with()
                    .minute(0)
                    .second(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << dt.minute()) == 0 {
                dt = dt
                    .with()
                    .second(0)
                    .build()
                    .ok()?
                    .checked_add(1.minute())
                    .ok()?;
                continue;
            }
            if self.seconds & (1 << dt.second()) == 0 {
                dt = dt.checked_add(1.second()).ok()?;
                continue;
            }
            let at = match tz.to_ambiguous_timestamp(dt).offset() {
                AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok()?,
                // Skipped by the clock: shifted by the gap's length.
                AmbiguousOffset::Gap { .. } => tz.to_ambiguous_timestamp(dt).compatible().ok()?,
                // Repeated by the clock: its first occurrence.
                AmbiguousOffset::Fold { before, .. } => before.to_timestamp(dt).ok()?,
            };
            if at > after {
                return Some(at);
            }
            dt = dt.checked_add(1.second()).ok()?;
        }
        None
    }
}

/// A time zone by IANA name ("" is UTC).
pub fn zone(name: &str) -> Result<TimeZone, String> {
    if name.is_empty() || name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name)
        .map_err(|_| format!("unknown time zone {name:?} (an IANA name such as \"Europe/Paris\")"))
}

/// What a schedule does with due times it could not fire on time (Watchman was down, or a
/// leader failed over for longer than [`ON_TIME_MS`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Of the missed due times within the catch-up window, the latest runs.
    #[default]
    Latest,
    /// Every missed due time within the catch-up window runs, in order.
    All,
    /// None runs.
    Skip,
}

/// A due time fired this long after it is still on time.
pub const ON_TIME_MS: u64 = 60_000;

/// Which of `dues` (ascending, none after `now`) fire: those on time always; of the missed
/// ones within the catch-up window, as `missed` says. Older ones never.
pub fn to_fire(dues: &[u64], now: u64, missed: Missed, catch_up_ms: u64) -> Vec<u64> {
    let on_time: Vec<u64> = dues
        .iter()
        .copied()
        .filter(|d| now.saturating_sub(*d) <= ON_TIME_MS)
        .collect();
    let late: Vec<u64> = dues
        .iter()
        .copied()
        .filter(|d| {
            let late_by = now.saturating_sub(*d);
            late_by > ON_TIME_MS && late_by <= catch_up_ms.max(ON_TIME_MS)
        })
        .collect();
    let mut fire = match missed {
        Missed::All => late,
        // Superseded by a due time that is on time.
        Missed::Latest if on_time.is_empty() => late.last().copied().into_iter().collect(),
        Missed::Latest | Missed::Skip => Vec::new(),
    };
    fire.extend(on_time);
    fire
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(expr: &str, tz: &str, after: &str) -> String {
        let z = zone(tz).unwrap();
        Cron::parse(expr)
            .unwrap()
            .next_after(at(after), &z)
            .unwrap()
            .to_string()
    }

    #[test]
    fn expressions_parse_or_say_what_is_wrong() {
        for bad in [
            "* * * *",
            "61 * * * *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "x * * * *",
            "@fortnightly",
        ] {
            assert!(Cron::parse(bad).is_err(), "{bad}");
        }
        assert!(Cron::parse("0 9 * * MON-FRI").is_ok());
        assert!(Cron::parse("*/2 * * * * *").is_ok());
        assert!(Cron::parse("@daily").is_ok());
        assert!(zone("Mars/Olympus").is_err());
    }

    #[test]
    fn due_times_follow_the_fields() {
        assert_eq!(
            next("*/15 * * * *", "", "2026-12-01T10:07:00Z"),
            "2026-12-01T10:15:00Z"
        );
        assert_eq!(
            next("*/2 * * * * *", "", "2026-12-01T10:00:01.500Z"),
            "2026-12-01T10:00:02Z"
        );
        // Weekdays at 9: from a Saturday, Monday.
        assert_eq!(
            next("0 9 * * MON-FRI", "", "2026-12-05T12:00:00Z"),
            "2026-12-07T09:00:00Z"
        );
        // Both day fields restricted: either matches (the 1st, or a Friday).
        assert_eq!(
            next("0 0 1 * FRI", "", "2026-12-01T00:00:00Z"),
            "2026-12-04T00:00:00Z"
        );
        assert_eq!(
            next("@yearly", "", "2026-06-01T00:00:00Z"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * 7", "", "2026-12-01T00:00:00Z"),
            "2026-12-06T00:00:00Z"
        );
        // 7 in a range is Sunday: Friday to Sunday, from a Sunday noon, is Friday.
        assert_eq!(
            next("0 0 * * 5-7", "", "2026-12-06T12:00:00Z"),
            "2026-12-11T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * FRI-7", "", "2026-12-05T12:00:00Z"),
            "2026-12-06T00:00:00Z"
        );
        // A stepped day of month is unrestricted for Vixie's either-day rule: both must match.
        assert_eq!(
            next("0 0 */2 * MON", "", "2026-12-01T00:00:00Z"),
            "2026-12-07T00:00:00Z"
        );
        assert!(
            Cron::parse("0 0 30 2 *")
                .unwrap()
                .next_after(at("2026-01-01T00:00:00Z"), &TimeZone::UTC)
                .is_none()
        );
    }

    #[test]
    fn time_zones_and_their_clock_changes() {
        // 08:00 in Paris is 07:00 UTC in winter, 06:00 UTC in summer.
        assert_eq!(
            next("0 8 * * *", "Europe/Paris", "2026-12-01T12:00:00Z"),
            "2026-12-02T07:00:00Z"
        );
        assert_eq!(
            next("0 8 * * *", "Europe/Paris", "2026-07-01T12:00:00Z"),
            "2026-07-02T06:00:00Z"
        );
        // New York springs forward on 2026-03-08 at 02:00: 02:30 does not exist and fires at
        // 03:30 EDT (07:30 UTC), once.
        assert_eq!(
            next("30 2 * * *", "America/New_York", "2026-03-08T05:00:00Z"),
            "2026-03-08T07:30:00Z"
        );
        assert_eq!(
            next("30 2 * * *", "America/New_York", "2026-03-08T07:30:00Z"),
            "2026-03-09T06:30:00Z"
        );
        // It falls back on 2026-11-01: 01:30 happens twice and fires at the first (EDT).
        assert_eq!(
            next("30 1 * * *", "America/New_York", "2026-11-01T04:00:00Z"),
            "2026-11-01T05:30:00Z"
        );
        assert_eq!(
            next("30 1 * * *", "America/New_York", "2026-11-01T05:30:00Z"),
            "2026-11-02T06:30:00Z"
        );
    }

    #[test]
    fn missed_due_times_follow_the_policy() {
        let min = 60_000;
        let now = 100 * min;
        // Two missed within an hour's window, one too old, one on time.
        let dues = [10 * min, 50 * min, 70 * min, now - 1_000];
        assert_eq!(
            to_fire(&dues, now, Missed::All, 60 * min),
            [50 * min, 70 * min, now - 1_000]
        );
        assert_eq!(to_fire(&dues, now, Missed::Latest, 60 * min), [now - 1_000]);
        assert_eq!(
            to_fire(&dues[..3], now, Missed::Latest, 60 * min),
            [70 * min]
        );
        assert_eq!(to_fire(&dues, now, Missed::Skip, 60 * min), [now - 1_000]);
        assert!(to_fire(&dues[..3], now, Missed::Skip, 60 * min).is_empty());
    }
}
