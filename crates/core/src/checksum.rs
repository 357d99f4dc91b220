//! The checksum recorded for every stored file and checked before anything is deleted.

use xxhash_rust::xxh3::Xxh3;

/// XXH3-128 over a blob's bytes, fed as they stream past; printed as `xxh3-128:<32 hex>`.
/// Fast enough to run on every store and every verification (it is an integrity check against
/// truncation and corruption, not a defence against an adversary).
#[derive(Clone, Default)]
pub struct ContentChecksum {
    hasher: Xxh3,
    length: u64,
}

impl ContentChecksum {
    /// A checksum over no bytes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.length += bytes.len() as u64;
    }

    /// Bytes seen so far.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// The checksum of the bytes seen so far.
    pub fn value(&self) -> String {
        format!("xxh3-128:{:032x}", self.hasher.digest128())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_does_not_matter() {
        let mut whole = ContentChecksum::new();
        whole.update(b"hello world");
        let mut parts = ContentChecksum::new();
        parts.update(b"hello");
        parts.update(b" world");
        assert_eq!(whole.value(), parts.value());
        assert_eq!(parts.length(), 11);
        assert!(whole.value().starts_with("xxh3-128:"));
        assert_ne!(whole.value(), ContentChecksum::new().value());
    }
}
