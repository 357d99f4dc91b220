//! Tessera's DICOM knowledge, over the dicom-rs crates.
//!
//! - [`scan_header`] reads a Part-10 instance from a *prefix* of its bytes, up to the Pixel Data
//!   element, so that a store can learn the UIDs and attributes of an instance while the rest of
//!   it streams on to the blob store (the instance is never held whole in memory).
//! - [`InstanceHeader`] validates what STOW requires (orig E), extracts the instance identifier
//!   and the attributes the index keeps, and renders the metadata JSON (PS3.18 F.2, without group
//!   0002 and without bulk data, orig A.4).
//! - [`FragmentScanner`] follows encapsulated pixel data as it streams past, to record the byte
//!   range of each fragment, from which [`FrameRanges`] are built.

mod frames;
mod header;
mod validation;
mod walk;

pub use dicom_dictionary_std::tags;
pub use frames::{FragmentScanner, FrameRange, FrameRanges};
pub use header::{
    BULK_DATA_URI_PREFIX, HeaderReader, HeaderScan, InstanceHeader, PixelData, ValidationError,
    scan_header,
};
pub use walk::{DataSetWalker, Encoding, MAX_RECORDED_FRAGMENTS, PixelDataStart};

/// Why bytes are not a DICOM instance Tessera can store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DicomError {
    /// No `DICM` magic code where a Part-10 file has one.
    #[error("not a DICOM Part-10 file (no DICM magic code)")]
    NotDicom,
    /// The file meta information or the data set cannot be parsed.
    #[error("malformed DICOM: {0}")]
    Malformed(String),
    /// A transfer syntax dicom-rs does not know.
    #[error("unsupported transfer syntax {0}")]
    UnsupportedTransferSyntax(String),
    /// The header (everything before Pixel Data) is larger than the header limit
    /// (`Tessera:Limits:MaxHeaderBytes`).
    #[error("the DICOM header exceeds Tessera:Limits:MaxHeaderBytes: {0}")]
    HeaderTooLarge(String),
    /// Sequences nest deeper than `Tessera:Limits:MaxSequenceDepth`.
    #[error("sequences nest deeper than Tessera:Limits:MaxSequenceDepth ({0})")]
    TooDeep(u32),
    /// A deflated data set inflates beyond `Tessera:Limits:MaxInflatedBytes`.
    #[error("the deflated data set inflates beyond Tessera:Limits:MaxInflatedBytes ({0} bytes)")]
    InflatedTooLarge(u64),
    /// The bytes end before an element, pixel data or sequence they declare.
    #[error("truncated DICOM: {0}")]
    Truncated(String),
}

/// Whether `uid` names a transfer syntax dicom-rs knows (one an instance may be stored in).
pub fn is_known_transfer_syntax(uid: &str) -> bool {
    use dicom_encoding::TransferSyntaxIndex;
    dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(uid)
        .is_some()
}

/// The tag of a DICOM keyword (`StudyTime` → `00080030`), from the standard dictionary, as the
/// 8 hex digits DICOM JSON keys use.
pub fn tag_of_keyword(keyword: &str) -> Option<String> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
    let entry = dicom_dictionary_std::StandardDataDictionary.by_name(keyword)?;
    match entry.tag_range() {
        dicom_core::dictionary::TagRange::Single(tag) => {
            Some(format!("{:04X}{:04X}", tag.group(), tag.element()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod keyword_tests {
    #[test]
    fn keywords_resolve_to_tags() {
        assert_eq!(
            super::tag_of_keyword("StudyTime").as_deref(),
            Some("00080030")
        );
        assert_eq!(super::tag_of_keyword("NoSuchKeyword"), None);
    }
}
