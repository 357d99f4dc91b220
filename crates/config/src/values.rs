//! Parsers for the value types the original's settings use, with .NET's text forms.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

/// `System.Boolean`: `true` or `false`, any casing.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// `System.TimeSpan` (non-negative): `d`, `hh:mm`, `hh:mm:ss`, `d.hh:mm:ss` with optional
/// `.fffffff` fractions of a second, as in `3.00:00:00` or `00:03:00`.
pub fn parse_timespan(text: &str) -> Result<Duration, String> {
    const FORMAT: &str = "expected a TimeSpan such as 3.00:00:00, 00:03:00 or 1";
    let text = text.trim();
    if text.starts_with('-') {
        return Err("must not be negative".into());
    }
    let number = |part: &str, max: u64| -> Result<u64, String> {
        let valid =
            !part.is_empty() && part.len() <= 10 && part.bytes().all(|b| b.is_ascii_digit());
        let value: u64 = if valid {
            part.parse().map_err(|_| FORMAT)?
        } else {
            return Err(FORMAT.into());
        };
        if value > max {
            Err(FORMAT.into())
        } else {
            Ok(value)
        }
    };
    let Some((head, rest)) = text.split_once(':') else {
        return Ok(Duration::from_secs(number(text, 10_675_199)? * 86_400));
    };
    let (days, hours) = match head.split_once('.') {
        Some((days, hours)) => (number(days, 10_675_199)?, number(hours, 23)?),
        None => (0, number(head, 23)?),
    };
    let mut parts = rest.split(':');
    let minutes = number(parts.next().unwrap_or_default(), 59)?;
    let (seconds, nanos) = match parts.next() {
        None => (0, 0),
        Some(seconds) => {
            let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
            let nanos = if fraction.is_empty() {
                0
            } else {
                if fraction.len() > 7 {
                    return Err(FORMAT.into());
                }
                number(fraction, 9_999_999)? * 10u64.pow(9 - fraction.len() as u32)
            };
            (number(whole, 59)?, nanos)
        }
    };
    if parts.next().is_some() {
        return Err(FORMAT.into());
    }
    let secs = ((days * 24 + hours) * 60 + minutes) * 60 + seconds;
    Ok(Duration::new(secs, nanos as u32))
}

/// Formats a duration the way .NET prints a TimeSpan (`3.00:00:00`, `00:03:00`).
pub fn format_timespan(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut text = if days > 0 {
        format!("{days}.{hours:02}:{minutes:02}:{seconds:02}")
    } else {
        format!("{hours:02}:{minutes:02}:{seconds:02}")
    };
    if duration.subsec_nanos() > 0 {
        text.push_str(&format!(".{:07}", duration.subsec_nanos() / 100));
    }
    text
}

/// `System.Guid` in any of its usual forms (hyphenated, 32 digits, braced).
pub fn parse_guid(text: &str) -> Result<uuid::Uuid, String> {
    uuid::Uuid::parse_str(text.trim())
        .map_err(|_| "expected a GUID such as 1d4689da-ca3b-4659-b0c7-7bf6c9ff25e1".into())
}

/// `System.DateTime`: a date (`2022-08-01`, midnight UTC) or a date and time, with or without an
/// offset (without one it is taken as UTC).
pub fn parse_datetime(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    if let Ok(moment) = DateTime::parse_from_rfc3339(text) {
        return Ok(moment.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(moment) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(moment.and_utc());
        }
    }
    Err("expected a date such as 2022-08-01 or 2022-08-01T10:00:00Z".into())
}

/// A whole number in `min..=max`.
pub fn parse_number(text: &str, min: u64, max: u64) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(value) if (min..=max).contains(&value) => Ok(value),
        _ => Err(format!("expected a whole number from {min} to {max}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespans_in_dotnet_forms() {
        assert_eq!(
            parse_timespan("3.00:00:00"),
            Ok(Duration::from_secs(3 * 86_400))
        );
        assert_eq!(parse_timespan("00:03:00"), Ok(Duration::from_secs(180)));
        assert_eq!(parse_timespan("1"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_timespan("01:30"), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse_timespan("00:00:01.5"),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_timespan("1.02:03:04"),
            Ok(Duration::from_secs(93_784))
        );
        assert_eq!(
            parse_timespan("3.00:00"),
            Ok(Duration::from_secs(3 * 86_400))
        );
        for bad in [
            "",
            "abc",
            "25:00:00",
            "00:60:00",
            "-1",
            "1:2:3:4",
            "00:00:01.12345678",
        ] {
            assert!(parse_timespan(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            format_timespan(Duration::from_secs(3 * 86_400)),
            "3.00:00:00"
        );
        assert_eq!(format_timespan(Duration::from_secs(180)), "00:03:00");
        assert_eq!(
            format_timespan(Duration::from_millis(1500)),
            "00:00:01.5000000"
        );
    }

    #[test]
    fn guids_dates_bools_numbers() {
        let id = parse_guid("1d4689da-ca3b-4659-b0c7-7bf6c9ff25e1").unwrap();
        assert_eq!(parse_guid("1d4689daca3b4659b0c77bf6c9ff25e1"), Ok(id));
        assert_eq!(parse_guid("{1d4689da-ca3b-4659-b0c7-7bf6c9ff25e1}"), Ok(id));
        assert!(parse_guid("not-a-guid").is_err());
        assert_eq!(
            parse_datetime("2022-08-01").unwrap().to_rfc3339(),
            "2022-08-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_datetime("2022-08-01T10:00:00+02:00")
                .unwrap()
                .to_rfc3339(),
            "2022-08-01T08:00:00+00:00"
        );
        assert!(parse_datetime("2022-13-01").is_err());
        assert_eq!(parse_bool("True"), Ok(true));
        assert!(parse_bool("yes").is_err());
        assert_eq!(parse_number("5", 1, 10), Ok(5));
        assert!(parse_number("0", 1, 10).is_err());
        assert!(parse_number("-1", 1, 10).is_err());
    }
}
