//! DICOM header reader and validation: the first byte of the input picks how the rest is cut
//! into chunks (and where a prefix ends); the rest is the instance. Every method a store calls
//! on a header runs on whatever header comes out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_dicom::{HeaderReader, HeaderScan, InstanceHeader, PixelData, scan_header};
use tessera_fuzz::chunks;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, bytes)) = data.split_first() else {
        return;
    };
    // As the service reads a body: chunk by chunk, then `finish` if no chunk completed it.
    let mut reader = HeaderReader::new();
    let mut header = None;
    for chunk in chunks(bytes, seed) {
        match reader.push(chunk) {
            Ok(Some(found)) => {
                header = Some(found);
                break;
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
    let header = match header {
        Some(header) => header,
        None => match reader.finish() {
            Ok(header) => header,
            Err(_) => return,
        },
    };
    exercise(header, bytes.len());

    // A prefix scanned as incomplete (what `push` does past 64 KiB), without needing inputs
    // that long.
    let cut = bytes.len() * usize::from(seed) / 255;
    if let Ok(HeaderScan::Complete(header)) = scan_header(&bytes[..cut], false) {
        exercise(*header, cut);
    }
});

/// What the store does with a header; `len` is how many bytes it was read from.
fn exercise(mut header: InstanceHeader, len: usize) {
    match header.pixel_data() {
        Some(PixelData::Native { offset, .. }) => {
            assert!(offset <= len as u64, "pixel data starts past the input")
        }
        Some(PixelData::Encapsulated { items_offset }) => {
            assert!(items_offset <= len as u64, "items start past the input")
        }
        None => {}
    }
    let _ = header.transfer_syntax();
    let _ = header.is_implicit_vr();
    let _ = header.identifier();
    let _ = header.check_patient_id(true);
    let _ = header.check_patient_id(false);
    let _ = header.searchable_attributes();
    let problems = header.attribute_problems();
    let _ = header.frame_count();
    let _ = header.native_frame_size();
    let _ = header.metadata_json();
    // v2 drops the attributes that failed validation, then renders the metadata again.
    let tags: Vec<_> = problems.iter().map(|p| p.tag).collect();
    header.remove_attributes(&tags);
    let _ = header.metadata_json();
}
