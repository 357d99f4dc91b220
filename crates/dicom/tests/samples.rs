//! The header reader on the real sample files, read whole and as growing prefixes.

use std::path::PathBuf;

use tessera_dicom::{FragmentScanner, HeaderScan, InstanceHeader, PixelData, scan_header};

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata")
}

fn samples() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in [testdata(), testdata().join("transfer-syntaxes")] {
        for entry in std::fs::read_dir(&dir).expect("testdata") {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "dcm") {
                out.push((
                    path.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&path).unwrap(),
                ));
            }
        }
    }
    assert!(out.len() >= 15, "expected the shared samples");
    out
}

/// Feeds growing prefixes like a store does, doubling from 4 KiB.
fn incremental(bytes: &[u8]) -> InstanceHeader {
    let mut len = 4096;
    loop {
        let complete = len >= bytes.len();
        match scan_header(&bytes[..len.min(bytes.len())], complete).unwrap() {
            HeaderScan::Complete(header) => return *header,
            HeaderScan::NeedMore => {
                assert!(!complete);
                len *= 2;
            }
        }
    }
}

#[test]
fn every_sample_has_a_header_with_its_uids() {
    for (name, bytes) in samples() {
        let header = incremental(&bytes);
        let id = header
            .identifier()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!id.sop.as_str().is_empty());
        header
            .searchable_attributes()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let json: serde_json::Value =
            serde_json::from_slice(&header.metadata_json().unwrap()).unwrap();
        let object = json.as_object().unwrap();
        assert!(
            object.contains_key("00080018"),
            "{name}: SOP Instance UID in metadata"
        );
        assert!(
            !object.keys().any(|k| k.starts_with("0002")),
            "{name}: group 0002 in metadata"
        );
        assert!(
            !object.contains_key("7FE00010"),
            "{name}: pixel data in metadata"
        );
        // Bulk data is only named, by a BulkDataURI relative to the instance.
        for (tag, value) in object {
            if matches!(
                value["vr"].as_str(),
                Some("OB" | "OW" | "UN" | "OF" | "OD" | "OL" | "OV")
            ) {
                assert_eq!(
                    value["BulkDataURI"].as_str(),
                    Some(format!("bulkdata/{tag}").as_str()),
                    "{name}: bulk data in metadata"
                );
                assert!(value.get("InlineBinary").is_none() && value.get("Value").is_none());
            }
        }
    }
}

#[test]
fn native_pixel_data_is_located_exactly() {
    for (name, bytes) in samples() {
        let header = incremental(&bytes);
        if let Some(PixelData::Native { offset, length }) = header.pixel_data() {
            assert_eq!(
                offset + length,
                bytes.len() as u64,
                "{name}: pixel data is the last element"
            );
            let field = &bytes[offset as usize - 4..offset as usize];
            let len = length as u32;
            assert!(
                field == len.to_le_bytes() || field == len.to_be_bytes(),
                "{name}: the length field precedes the value"
            );
        }
    }
}

#[test]
fn encapsulated_frames_of_layer1_are_its_fragments() {
    let bytes = std::fs::read(testdata().join("layer1.dcm")).unwrap();
    let header = incremental(&bytes);
    let Some(PixelData::Encapsulated { items_offset }) = header.pixel_data() else {
        panic!("layer1 is encapsulated")
    };
    let mut scanner = FragmentScanner::new(items_offset);
    for (i, chunk) in bytes.chunks(1000).enumerate() {
        scanner.feed((i * 1000) as u64, chunk);
    }
    let ranges = scanner
        .frame_ranges(header.frame_count())
        .expect("one fragment per frame");
    let first = ranges.0[0];
    let fragment = &bytes[first.offset as usize..(first.offset + first.length) as usize];
    assert_eq!(
        &fragment[..2],
        &[0xFF, 0xD8],
        "a JPEG frame starts with SOI"
    );
}

#[test]
fn implicit_vr_and_garbage_are_told_apart() {
    let case1 = std::fs::read(testdata().join("case1_008.dcm")).unwrap();
    assert!(incremental(&case1).is_implicit_vr());
    assert!(scan_header(b"definitely not dicom, just some text that goes on", true).is_err());
    assert!(matches!(
        scan_header(b"short", false),
        Ok(HeaderScan::NeedMore)
    ));
}

#[test]
fn invalid_searchable_attributes_are_reported() {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let mut bytes = std::fs::read(testdata().join("layer9.dcm")).unwrap();
    let mut object = dicom_object::from_reader(&bytes[128..]).unwrap();
    object.put(DataElement::new(
        tags::STUDY_DATE,
        VR::DA,
        PrimitiveValue::from("NotAValidDate"),
    ));
    bytes.clear();
    object.write_all(&mut bytes).unwrap();
    let header = incremental(&bytes);
    let problems = header.attribute_problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].message.contains("(0008,0020)"),
        "{}",
        problems[0].message
    );
}

/// Streams `bytes` in `chunk`-sized pieces as a store does: the header reader first, then its
/// walk over the rest; the outcome of the walk at the end.
fn stream_whole(bytes: &[u8], chunk: usize) -> Result<(), tessera_dicom::DicomError> {
    let mut reader = tessera_dicom::HeaderReader::new();
    let mut pieces = bytes.chunks(chunk);
    let mut header = None;
    for piece in pieces.by_ref() {
        if let Some(found) = reader.push(piece)? {
            header = Some(found);
            break;
        }
    }
    if header.is_none() {
        return reader.finish().map(|_| ());
    }
    let (prefix, walker) = reader.into_parts();
    let mut walker = walker.expect("a walk for a non-deflated instance");
    let mut offset = prefix.len() as u64;
    for piece in pieces {
        walker.feed(offset, piece)?;
        offset += piece.len() as u64;
    }
    walker.finish(offset)
}

#[test]
fn every_sample_walks_complete_and_every_cut_is_truncated() {
    for (name, bytes) in samples() {
        for chunk in [997, 65_536] {
            stream_whole(&bytes, chunk).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for percent in [10, 50, 99] {
            let cut = bytes.len() * percent / 100;
            assert!(
                stream_whole(&bytes[..cut], 4096).is_err(),
                "{name} cut at {percent}% was accepted"
            );
        }
    }
}
