//! The per-instance version number.

use std::fmt;
use std::num::NonZeroU64;

/// The monotonically increasing 64-bit version of a stored instance (orig A.2).
///
/// It is the only thing in a New blob name, so it is never 0 (the original rejects 0) and never
/// above `i64::MAX` (it lives in a signed SQL `BIGINT`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Watermark(NonZeroU64);

/// Why a number is not a [`Watermark`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatermarkError {
    /// Watermarks start at 1.
    #[error("watermark 0 is not valid: watermarks start at 1")]
    Zero,
    /// The index stores watermarks as signed 64-bit integers.
    #[error("watermark {0} is above the largest allowed value {max}", max = i64::MAX)]
    TooLarge(u64),
}

impl Watermark {
    /// The largest watermark an SQL `BIGINT` can hold.
    pub const MAX: u64 = i64::MAX as u64;

    /// Checks that `value` is in `1..=i64::MAX`.
    pub fn new(value: u64) -> Result<Self, WatermarkError> {
        if value > Self::MAX {
            return Err(WatermarkError::TooLarge(value));
        }
        NonZeroU64::new(value).map(Self).ok_or(WatermarkError::Zero)
    }

    /// The number itself.
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for Watermark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Watermark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Watermark({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_values_beyond_bigint_are_refused() {
        assert_eq!(Watermark::new(0), Err(WatermarkError::Zero));
        assert_eq!(Watermark::new(1).unwrap().get(), 1);
        assert_eq!(
            Watermark::new(Watermark::MAX).unwrap().get(),
            9_223_372_036_854_775_807
        );
        assert_eq!(
            Watermark::new(Watermark::MAX + 1),
            Err(WatermarkError::TooLarge(Watermark::MAX + 1))
        );
    }
}
