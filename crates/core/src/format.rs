//! Which blob names are written and read.

use std::fmt;
use std::str::FromStr;

/// The original's `BlobMigrationFormatType` (orig B.2): which blob layout a store writes and
/// reads. `Dual` writes both layouts so that a copy can run while the server keeps serving.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum FormatType {
    /// UID-based names only (what the original wrote before the migration).
    Old,
    /// Both names on write; New first with Old fallback on read.
    Dual,
    /// Watermark-based names only (Tessera's default).
    New,
}

/// A value that names no [`FormatType`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected one of Old, Dual, New (or 0, 1, 2)")]
pub struct ParseFormatTypeError;

impl FromStr for FormatType {
    type Err = ParseFormatTypeError;

    /// Case-insensitive names or the enum's numbers, as .NET configuration binding accepts.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "old" | "0" => Ok(Self::Old),
            "dual" | "1" => Ok(Self::Dual),
            "new" | "2" => Ok(Self::New),
            _ => Err(ParseFormatTypeError),
        }
    }
}

impl fmt::Display for FormatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Old => "Old",
            Self::Dual => "Dual",
            Self::New => "New",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_numbers() {
        assert_eq!("Dual".parse(), Ok(FormatType::Dual));
        assert_eq!("new".parse(), Ok(FormatType::New));
        assert_eq!("0".parse(), Ok(FormatType::Old));
        assert_eq!("Neww".parse::<FormatType>(), Err(ParseFormatTypeError));
    }
}
