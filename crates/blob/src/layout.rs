//! Every blob name Tessera reads or writes, and nothing else (contract §3, orig A.3).
//!
//! Names must match the original server byte for byte, so that Tessera can be pointed at a
//! container the original wrote. They are built only here, only from checked types
//! ([`VersionedInstance`] holds [`tessera_core::Uid`]s, a [`Watermark`] is never 0), and tested
//! against fixed vectors: the original once shipped a frame-range name with a stray space because
//! its names were assembled in several places (orig G.17).

use object_store::path::Path;
use tessera_core::{VersionedInstance, Watermark};

/// The two naming schemes of the original server.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum BlobLayout {
    /// `{study}/{series}/{sop}_{W}.dcm`: names carry UIDs, which may carry patient context.
    Old,
    /// `{P}_{W}.dcm`, where `P` is [`hash_prefix`] of `W`: names carry nothing but the watermark.
    New,
}

impl BlobLayout {
    /// Name of the instance's Part-10 file in the file container.
    pub fn file(self, instance: &VersionedInstance) -> Path {
        self.name(instance, ".dcm")
    }

    /// Name of the instance's DICOM JSON metadata in the metadata container.
    pub fn metadata(self, instance: &VersionedInstance) -> Path {
        self.name(instance, "_metadata.json")
    }

    fn name(self, instance: &VersionedInstance, suffix: &str) -> Path {
        let w = instance.watermark();
        let name = match self {
            Self::Old => {
                let id = instance.id();
                format!("{}/{}/{}_{w}{suffix}", id.study, id.series, id.sop)
            }
            Self::New => format!("{}_{w}{suffix}", hash_prefix(w)),
        };
        // Path::from splits on '/' and percent-encodes nothing a checked UID or a number can
        // contain, so the object name is exactly the string above.
        Path::from(name)
    }
}

/// Name of the frame-range file in the metadata container. It has only a New name, in every
/// FormatType (orig A.3).
pub fn frame_ranges(watermark: Watermark) -> Path {
    Path::from(format!(
        "{}_{watermark}_frames_range.json",
        hash_prefix(watermark)
    ))
}

/// The frame-range name a regression of the original wrote, with a space after the first
/// underscore (orig A.3 "Later deltas"). Read and delete only; never written.
pub fn legacy_spaced_frame_ranges(watermark: Watermark) -> Path {
    Path::from(format!(
        "{}_ {watermark}_frames_range.json",
        hash_prefix(watermark)
    ))
}

/// The folder of staging blobs that large uploads go through before they take their final,
/// create-only name. It is not a name the original ever wrote, so adoption can tell it apart.
pub const STAGING_PREFIX: &str = "tessera-staging";

/// Which blob of an instance a name designates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKind {
    /// The Part-10 file (`.dcm`).
    File,
    /// The metadata JSON (`_metadata.json`).
    Metadata,
    /// The frame ranges (`_frames_range.json`, New names only).
    FrameRanges,
}

/// What a blob name says, read back (for counting, adoption and checks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedName {
    /// `{study}/{series}/{sop}_{W}…`.
    Old {
        /// The UIDs and watermark in the name.
        instance: VersionedInstance,
        /// Which blob.
        kind: BlobKind,
    },
    /// `{P}_{W}…` (or the historical `{P}_ {W}_frames_range.json`).
    New {
        /// The watermark in the name.
        watermark: Watermark,
        /// Which blob.
        kind: BlobKind,
        /// Whether `P` is the hash prefix of the watermark (a mismatch is reported by adoption).
        prefix_matches: bool,
    },
}

/// Reads a blob name back into what it designates; `None` for names neither layout produces.
pub fn parse_name(name: &str) -> Option<ParsedName> {
    let (stem, kind) = [
        ("_frames_range.json", BlobKind::FrameRanges),
        ("_metadata.json", BlobKind::Metadata),
        (".dcm", BlobKind::File),
    ]
    .into_iter()
    .find_map(|(suffix, kind)| name.strip_suffix(suffix).map(|stem| (stem, kind)))?;
    let (head, watermark) = stem.rsplit_once('_')?;
    // The historical frame-range name has a space after the underscore.
    let watermark = match kind {
        BlobKind::FrameRanges => watermark.strip_prefix(' ').unwrap_or(watermark),
        _ => watermark,
    };
    if watermark.is_empty()
        || !watermark.bytes().all(|b| b.is_ascii_digit())
        || watermark.starts_with('0')
    {
        return None;
    }
    let watermark = Watermark::new(watermark.parse().ok()?).ok()?;
    let parts: Vec<&str> = head.split('/').collect();
    match parts.as_slice() {
        [study, series, sop] if kind != BlobKind::FrameRanges => {
            let id = tessera_core::InstanceIdentifier::parse(study, series, sop).ok()?;
            // Only names the layout would produce (no padding, no odd forms).
            (id.study.as_str() == *study
                && id.series.as_str() == *series
                && id.sop.as_str() == *sop)
                .then(|| ParsedName::Old {
                    instance: VersionedInstance::new(id, watermark),
                    kind,
                })
        }
        [prefix]
            if !prefix.is_empty()
                && prefix.len() <= 3
                && prefix.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Some(ParsedName::New {
                watermark,
                kind,
                prefix_matches: *prefix == hash_prefix(watermark),
            })
        }
        _ => None,
    }
}

/// The New layout's prefix: the first three characters of the decimal XXH64 (seed 0) of the
/// watermark's decimal digits. It spreads names over the storage partition key space.
pub fn hash_prefix(watermark: Watermark) -> String {
    let digits = watermark.get().to_string();
    let mut hash = xxhash_rust::xxh64::xxh64(digits.as_bytes(), 0).to_string();
    hash.truncate(3);
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::InstanceIdentifier;

    fn w(value: u64) -> Watermark {
        Watermark::new(value).unwrap()
    }

    fn instance(value: u64) -> VersionedInstance {
        let id = InstanceIdentifier::parse("1.2.3", "4.5.6", "7.8.9").unwrap();
        VersionedInstance::new(id, w(value))
    }

    #[test]
    fn new_file_names_match_the_original_vectors() {
        let vectors = [
            (1, "132_1.dcm"),
            (2, "692_2.dcm"),
            (3, "274_3.dcm"),
            (4, "104_4.dcm"),
            (5, "767_5.dcm"),
            (10, "542_10.dcm"),
            (42, "791_42.dcm"),
            (100, "614_100.dcm"),
            (1000, "768_1000.dcm"),
            (12345, "143_12345.dcm"),
            (123_456_789, "101_123456789.dcm"),
            (9_223_372_036_854_775_807, "156_9223372036854775807.dcm"),
        ];
        for (watermark, expected) in vectors {
            assert_eq!(
                BlobLayout::New.file(&instance(watermark)).as_ref(),
                expected
            );
        }
    }

    #[test]
    fn xxh64_is_the_reference_function() {
        assert_eq!(xxhash_rust::xxh64::xxh64(b"123", 0), 0x3c69_7d22_3fa7_e885);
        assert_eq!(xxhash_rust::xxh64::xxh64(b"", 0), 0xef46_db37_51d8_e999);
        assert_eq!(
            xxhash_rust::xxh64::xxh64(b"1", 0),
            13_237_225_503_670_494_420
        );
    }

    #[test]
    fn new_metadata_and_frame_range_names() {
        assert_eq!(
            BlobLayout::New.metadata(&instance(1)).as_ref(),
            "132_1_metadata.json"
        );
        assert_eq!(frame_ranges(w(42)).as_ref(), "791_42_frames_range.json");
        assert_eq!(
            legacy_spaced_frame_ranges(w(42)).as_ref(),
            "791_ 42_frames_range.json"
        );
    }

    #[test]
    fn old_names_carry_the_uids() {
        assert_eq!(
            BlobLayout::Old.file(&instance(7)).as_ref(),
            "1.2.3/4.5.6/7.8.9_7.dcm"
        );
        assert_eq!(
            BlobLayout::Old.metadata(&instance(7)).as_ref(),
            "1.2.3/4.5.6/7.8.9_7_metadata.json"
        );
    }

    #[test]
    fn names_parse_back() {
        let inst = instance(42);
        for kind_name in [BlobLayout::Old.file(&inst), BlobLayout::Old.metadata(&inst)] {
            assert!(
                matches!(parse_name(kind_name.as_ref()), Some(ParsedName::Old { instance, .. }) if instance == inst)
            );
        }
        assert_eq!(
            parse_name("791_42.dcm"),
            Some(ParsedName::New {
                watermark: w(42),
                kind: BlobKind::File,
                prefix_matches: true
            })
        );
        assert_eq!(
            parse_name("791_42_metadata.json"),
            Some(ParsedName::New {
                watermark: w(42),
                kind: BlobKind::Metadata,
                prefix_matches: true
            })
        );
        assert_eq!(
            parse_name("791_42_frames_range.json"),
            Some(ParsedName::New {
                watermark: w(42),
                kind: BlobKind::FrameRanges,
                prefix_matches: true
            })
        );
        assert_eq!(
            parse_name(legacy_spaced_frame_ranges(w(42)).as_ref()),
            Some(ParsedName::New {
                watermark: w(42),
                kind: BlobKind::FrameRanges,
                prefix_matches: true
            })
        );
        assert_eq!(
            parse_name("999_42.dcm"),
            Some(ParsedName::New {
                watermark: w(42),
                kind: BlobKind::File,
                prefix_matches: false
            })
        );
        for other in [
            "tessera-staging/abc",
            "readme.txt",
            "1.2/3_0.dcm",
            "132_01.dcm",
            "a/b/c_1.dcm",
            "1.2/1.3/1.4_5_frames_range.json",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }

    #[test]
    fn bad_uids_and_watermark_zero_never_reach_a_name() {
        // Names take only checked types; these are the checks they rely on.
        assert!(Watermark::new(0).is_err());
        let too_long = "1".repeat(65);
        for bad in ["../x", "1.2.a", too_long.as_str(), ""] {
            assert!(
                InstanceIdentifier::parse(bad, "1.2", "1.3").is_err(),
                "{bad:?}"
            );
            assert!(
                InstanceIdentifier::parse("1.2", bad, "1.3").is_err(),
                "{bad:?}"
            );
            assert!(
                InstanceIdentifier::parse("1.2", "1.3", bad).is_err(),
                "{bad:?}"
            );
        }
    }
}
