//! Durations as every binary's flags and the plans file write them: `500ms`, `30s`, `10m`,
//! `12h`, `7d`, or a bare number of seconds.

use std::time::Duration;

/// A duration that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a number followed by a unit.
    #[error("{0:?} is not a duration (500ms, 30s, 10m, 12h, 7d)")]
    NotADuration(String),
    /// A number with a unit other than ms, s, m, h or d.
    #[error("{text:?}: unknown unit {unit:?} (ms, s, m, h, d)")]
    UnknownUnit { text: String, unit: String },
}

/// Parses durations like `500ms`, `30s`, `10m`, `12h`, `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| DurationError::NotADuration(s.to_owned()))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        "d" => v * 86_400.0,
        _ => {
            return Err(DurationError::UnknownUnit {
                text: s.to_owned(),
                unit: unit.to_owned(),
            });
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| DurationError::NotADuration(s.to_owned()))
}
