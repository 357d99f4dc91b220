//! DICOM unique identifiers.

use std::fmt;

/// A DICOM unique identifier that is safe to use in an index row and in a blob name.
///
/// The rule is the original server's (orig E.2): after trailing padding (spaces, NULs) is
/// removed, 1 to 64 characters of digits and dots ending with a digit. Leading zeros and empty
/// components (`1..2`) are accepted for compatibility with data the original stored; anything
/// else — letters, slashes, `..` path segments — is refused, which is what keeps Old blob names
/// (`{study}/{series}/{sop}_{W}.dcm`) free of path injection.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uid(String);

/// Why a string is not a [`Uid`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UidError {
    /// Nothing was left after trailing padding was removed.
    #[error("the UID is empty")]
    Empty,
    /// More than 64 characters.
    #[error("the UID '{0}' is longer than 64 characters")]
    TooLong(String),
    /// A character other than a digit or a dot, or a last character that is not a digit.
    #[error("the UID '{0}' is not made of digits and dots ending with a digit")]
    InvalidCharacters(String),
}

impl Uid {
    /// The longest UID DICOM allows (PS3.5 §9.1).
    pub const MAX_LEN: usize = 64;

    /// Checks `value` and keeps it without its trailing padding.
    pub fn parse(value: &str) -> Result<Self, UidError> {
        let trimmed = value.trim_end_matches([' ', '\0']);
        if trimmed.is_empty() {
            return Err(UidError::Empty);
        }
        if trimmed.len() > Self::MAX_LEN {
            return Err(UidError::TooLong(printable(trimmed)));
        }
        let well_formed = trimmed.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && trimmed.ends_with(|c: char| c.is_ascii_digit());
        if !well_formed {
            return Err(UidError::InvalidCharacters(printable(trimmed)));
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The UID as text, without padding.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Keeps error messages readable (and bounded) when a client sends garbage.
fn printable(value: &str) -> String {
    value
        .chars()
        .take(80)
        .flat_map(char::escape_default)
        .collect()
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uid({})", self.0)
    }
}

impl std::str::FromStr for Uid {
    type Err = UidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_digits_and_dots() {
        for ok in ["1", "1.2.840.10008.1.2.1", "1..2", "01.02", ".5"] {
            assert_eq!(Uid::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn trailing_padding_is_removed() {
        assert_eq!(Uid::parse("1.2.3 ").unwrap().as_str(), "1.2.3");
        assert_eq!(Uid::parse("1.2.3\0").unwrap().as_str(), "1.2.3");
    }

    #[test]
    fn exactly_64_characters_is_accepted() {
        let uid = "1.".repeat(31) + "12";
        assert_eq!(uid.len(), 64);
        assert!(Uid::parse(&uid).is_ok());
    }

    #[test]
    fn refuses_what_could_escape_a_blob_name() {
        assert_eq!(Uid::parse(""), Err(UidError::Empty));
        assert_eq!(Uid::parse("   "), Err(UidError::Empty));
        assert!(matches!(
            Uid::parse(&"1".repeat(65)),
            Err(UidError::TooLong(_))
        ));
        for bad in [
            "../x", "1.2.a", "1/2", "1.2.", "..", "1.2\\3", " 1.2", "1-2", "１.２",
        ] {
            assert!(
                matches!(Uid::parse(bad), Err(UidError::InvalidCharacters(_))),
                "{bad:?} was accepted"
            );
        }
    }
}
