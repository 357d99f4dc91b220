//! Reading the header of a Part-10 instance from a prefix of its bytes.

use dicom_core::header::Header;
use dicom_core::value::Value;
use dicom_core::{Length, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_object::mem::InMemElement;
use dicom_object::meta::FileMetaTable;
use dicom_parser::dataset::DataToken;
use dicom_parser::dataset::read::DataSetReader;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use tessera_core::{InstanceIdentifier, SearchableAttributes, Uid};

use crate::DicomError;

/// Implicit VR Little Endian: stored, with warning 45063 (orig E.3).
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
/// The largest header Tessera buffers while looking for Pixel Data.
pub const MAX_HEADER: usize = 64 * 1024 * 1024;

/// Where the pixel data of an instance starts in its Part-10 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelData {
    /// Native (uncompressed) pixel data: the value starts at `offset` and is `length` long.
    Native {
        /// Absolute offset of the first pixel byte.
        offset: u64,
        /// Value length.
        length: u64,
    },
    /// Encapsulated pixel data: the item sequence starts at `items_offset`.
    Encapsulated {
        /// Absolute offset of the first item tag (the basic offset table).
        items_offset: u64,
    },
}

/// The header of an instance: its file meta information, its data set without Pixel Data,
/// and where the pixel data is.
#[derive(Clone, Debug)]
pub struct InstanceHeader {
    transfer_syntax: String,
    dataset: InMemDicomObject,
    pixel_data: Option<PixelData>,
}

/// The outcome of looking at a prefix.
#[derive(Debug)]
pub enum HeaderScan {
    /// The prefix holds the whole header.
    Complete(Box<InstanceHeader>),
    /// More bytes are needed.
    NeedMore,
}

/// Reads the header from `prefix`. `complete` says whether `prefix` is the whole instance;
/// when it is not, a parse that runs off the end of the prefix asks for more bytes.
pub fn scan_header(prefix: &[u8], complete: bool) -> Result<HeaderScan, DicomError> {
    let need_more = |error: DicomError| {
        if complete {
            Err(error)
        } else if prefix.len() >= MAX_HEADER {
            Err(DicomError::HeaderTooLarge(MAX_HEADER))
        } else {
            Ok(HeaderScan::NeedMore)
        }
    };
    let magic_at = if prefix.get(128..132) == Some(b"DICM") {
        128
    } else if prefix.starts_with(b"DICM") {
        0
    } else if prefix.len() < 132 && !complete {
        return Ok(HeaderScan::NeedMore);
    } else {
        return Err(DicomError::NotDicom);
    };
    let mut meta_reader = &prefix[magic_at..];
    let meta = match FileMetaTable::from_reader(&mut meta_reader) {
        Ok(meta) => meta,
        Err(error) => return need_more(DicomError::Malformed(error.to_string())),
    };
    let dataset_start = prefix.len() - meta_reader.len();
    let ts_uid = meta.transfer_syntax().to_owned();
    let ts = TransferSyntaxRegistry
        .get(&ts_uid)
        .ok_or_else(|| DicomError::UnsupportedTransferSyntax(ts_uid.clone()))?;
    let body = &prefix[dataset_start..];

    // A deflated data set has no byte offsets to find: it is parsed whole.
    let (dataset_end, pixel_data) = if matches!(
        ts.codec(),
        dicom_encoding::transfer_syntax::Codec::Dataset(_)
    ) {
        if !complete {
            return need_more(DicomError::Malformed("deflated data set".into()));
        }
        (body.len(), None)
    } else {
        match find_pixel_data(body, ts, dataset_start as u64) {
            Ok(Some(found)) => found,
            Ok(None) if complete => (body.len(), None),
            Ok(None) => return Ok(HeaderScan::NeedMore),
            Err(error) => return need_more(error),
        }
    };
    let dataset = match InMemDicomObject::read_dataset_with_ts(&body[..dataset_end], ts) {
        Ok(dataset) => dataset,
        Err(error) => return need_more(DicomError::Malformed(error.to_string())),
    };
    Ok(HeaderScan::Complete(Box::new(InstanceHeader {
        transfer_syntax: ts_uid,
        dataset,
        pixel_data,
    })))
}

/// Walks the data set tokens to the top-level Pixel Data element. Returns where its header
/// starts (relative to `body`) and where its value is (absolute), or `None` at the end of input.
fn find_pixel_data(
    body: &[u8],
    ts: &dicom_encoding::TransferSyntax,
    base: u64,
) -> Result<Option<(usize, Option<PixelData>)>, DicomError> {
    let mut reader = body;
    let mut tokens = DataSetReader::new_with_ts(&mut reader, ts)
        .map_err(|e| DicomError::Malformed(e.to_string()))?;
    let mut depth = 0usize;
    let implicit = ts.uid() == IMPLICIT_VR_LE;
    loop {
        let token = match tokens.next() {
            None => return Ok(None),
            Some(Ok(token)) => token,
            Some(Err(error)) => return Err(DicomError::Malformed(error.to_string())),
        };
        match token {
            DataToken::SequenceStart { .. } | DataToken::ItemStart { .. } => depth += 1,
            DataToken::SequenceEnd | DataToken::ItemEnd => depth = depth.saturating_sub(1),
            DataToken::ElementHeader(header) if depth == 0 && header.tag == tags::PIXEL_DATA => {
                // The tokenizer reads straight from the slice, so what it consumed is known.
                drop(tokens);
                let value_at = body.len() - reader.len();
                let length = header.len.get().map(u64::from).unwrap_or(0);
                let pixel = PixelData::Native {
                    offset: base + value_at as u64,
                    length,
                };
                let start = value_at
                    .checked_sub(element_header_len(implicit, header.vr))
                    .ok_or_else(|| DicomError::Malformed("pixel data header".into()))?;
                return Ok(Some((start, Some(pixel))));
            }
            DataToken::PixelSequenceStart if depth == 0 => {
                drop(tokens);
                let value_at = body.len() - reader.len();
                let pixel = PixelData::Encapsulated {
                    items_offset: base + value_at as u64,
                };
                let start = value_at
                    .checked_sub(element_header_len(implicit, VR::OB))
                    .ok_or_else(|| DicomError::Malformed("pixel data header".into()))?;
                return Ok(Some((start, Some(pixel))));
            }
            _ => {}
        }
    }
}

/// Bytes of an element header before its value (PS3.5 7.1): 8 in Implicit VR; in Explicit VR 12
/// for the VRs with a 4-byte length, 8 for the others. Pixel Data is not always OB or OW: a
/// file may give it any VR, and the header length must follow that VR.
fn element_header_len(implicit: bool, vr: VR) -> usize {
    let long = matches!(
        vr,
        VR::OB
            | VR::OD
            | VR::OF
            | VR::OL
            | VR::OV
            | VR::OW
            | VR::SQ
            | VR::SV
            | VR::UC
            | VR::UN
            | VR::UR
            | VR::UT
            | VR::UV
    );
    if implicit || !long { 8 } else { 12 }
}

/// An attribute that fails STOW validation: failure 43264 with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    /// The offending attribute.
    pub tag: Tag,
    /// A message for the client (orig E.1 wording).
    pub message: String,
}

impl InstanceHeader {
    /// The transfer syntax UID of the file.
    pub fn transfer_syntax(&self) -> &str {
        &self.transfer_syntax
    }

    /// Whether the data set is Implicit VR Little Endian (warning 45063).
    pub fn is_implicit_vr(&self) -> bool {
        self.transfer_syntax == IMPLICIT_VR_LE
    }

    /// Where the pixel data is, if the instance has any.
    pub fn pixel_data(&self) -> Option<PixelData> {
        self.pixel_data
    }

    /// A string attribute without padding, if present and non-empty.
    pub fn string(&self, tag: Tag) -> Option<String> {
        let element = self.dataset.element_opt(tag).ok()??;
        let text = element.to_str().ok()?;
        // Only the first value of a wrongly multi-valued element is indexed (orig D.5).
        let first = text.split('\\').next().unwrap_or_default();
        let first = first.trim_end_matches([' ', '\0']).trim_start();
        (!first.is_empty()).then(|| first.to_owned())
    }

    /// A numeric attribute, if present and parseable.
    pub fn number(&self, tag: Tag) -> Option<u64> {
        let element = self.dataset.element_opt(tag).ok()??;
        element
            .to_int::<u64>()
            .ok()
            .or_else(|| element.to_str().ok()?.trim().parse().ok())
    }

    /// The required UIDs (orig E.1, E.2): present, single, valid.
    pub fn identifier(&self) -> Result<InstanceIdentifier, ValidationError> {
        Ok(InstanceIdentifier {
            study: self.required_uid(tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?,
            series: self.required_uid(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID")?,
            sop: self.required_uid(tags::SOP_INSTANCE_UID, "SOPInstanceUID")?,
        })
    }

    fn required_uid(&self, tag: Tag, keyword: &str) -> Result<Uid, ValidationError> {
        let value = self.string(tag).ok_or_else(|| missing(tag, keyword))?;
        Uid::parse(&value).map_err(|error| ValidationError {
            tag,
            message: format!(
                "DICOM100: ({:04X},{:04X}) - {error}",
                tag.group(),
                tag.element()
            ),
        })
    }

    /// Checks the other attributes a store requires and returns what the index keeps.
    /// `patient_id_value_required` is the v1 rule (v2 only requires the element to be present).
    pub fn searchable_attributes(
        &self,
        patient_id_value_required: bool,
    ) -> Result<SearchableAttributes, ValidationError> {
        let sop_class = self.required_uid(tags::SOP_CLASS_UID, "SOPClassUID")?;
        let patient_present = self
            .dataset
            .element_opt(tags::PATIENT_ID)
            .ok()
            .flatten()
            .is_some();
        let patient_id = self.string(tags::PATIENT_ID);
        if !patient_present || (patient_id_value_required && patient_id.is_none()) {
            return Err(missing(tags::PATIENT_ID, "PatientID"));
        }
        Ok(SearchableAttributes {
            sop_class_uid: sop_class.as_str().to_owned(),
            patient_id,
            patient_name: self.string(tags::PATIENT_NAME),
            patient_birth_date: self.string(tags::PATIENT_BIRTH_DATE),
            accession_number: self.string(tags::ACCESSION_NUMBER),
            referring_physician_name: self.string(tags::REFERRING_PHYSICIAN_NAME),
            study_date: self.string(tags::STUDY_DATE),
            study_description: self.string(tags::STUDY_DESCRIPTION),
            modality: self.string(tags::MODALITY),
            performed_procedure_step_start_date: self
                .string(tags::PERFORMED_PROCEDURE_STEP_START_DATE),
            manufacturer_model_name: self.string(tags::MANUFACTURER_MODEL_NAME),
        })
    }

    /// Checks the searchable attributes against their VRs (orig E.3): each problem names the
    /// attribute. v1 fails the instance on the first; v2 drops the attributes and warns.
    pub fn attribute_problems(&self) -> Vec<ValidationError> {
        crate::validation::SEARCHABLE
            .iter()
            .filter_map(|&(tag, vr)| {
                let element = self.dataset.element_opt(tag).ok()??;
                let text = element.to_str().ok()?;
                crate::validation::check(vr, &text).err().map(|reason| ValidationError {
                    tag,
                    message: format!(
                        "DICOM100: ({:04X},{:04X}) - Content \"{}\" does not validate VR {vr}: {reason}",
                        tag.group(),
                        tag.element(),
                        text.chars().take(80).collect::<String>()
                    ),
                })
            })
            .collect()
    }

    /// Removes attributes (v2 drops those that failed validation from metadata and index; the
    /// stored file keeps them).
    pub fn remove_attributes(&mut self, tags: &[Tag]) {
        for &tag in tags {
            self.dataset.remove_element(tag);
        }
    }

    /// The metadata JSON the original stores (orig A.4): the data set in the DICOM JSON model,
    /// without group 0002 (never part of `dataset`) and without bulk data (OB, OD, OF, OL, OV,
    /// OW, UN), recursively.
    pub fn metadata_json(&self) -> Result<Vec<u8>, DicomError> {
        let filtered = without_bulk_data(&self.dataset);
        dicom_json::to_string(&filtered)
            .map(String::into_bytes)
            .map_err(|e| DicomError::Malformed(e.to_string()))
    }

    /// Number of frames (Number of Frames, default 1).
    pub fn frame_count(&self) -> u64 {
        self.number(tags::NUMBER_OF_FRAMES)
            .filter(|&n| n > 0)
            .unwrap_or(1)
    }

    /// Bytes per frame of native pixel data.
    pub fn native_frame_size(&self) -> Option<u64> {
        let rows = self.number(tags::ROWS)?;
        let columns = self.number(tags::COLUMNS)?;
        let samples = self.number(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
        let bits = self.number(tags::BITS_ALLOCATED)?;
        let bits_total = rows * columns * samples * bits;
        Some(bits_total.div_ceil(8))
    }
}

fn missing(tag: Tag, keyword: &str) -> ValidationError {
    ValidationError {
        tag,
        message: format!("The required tag '{keyword}' is missing."),
    }
}

fn is_bulk(vr: VR) -> bool {
    matches!(
        vr,
        VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN
    )
}

fn without_bulk_data(object: &InMemDicomObject) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(object.iter().filter(|e| !is_bulk(e.vr())).map(|element| {
        match element.value() {
            Value::Sequence(sequence) => {
                let items: Vec<InMemDicomObject> =
                    sequence.items().iter().map(without_bulk_data).collect();
                InMemElement::new(
                    element.tag(),
                    VR::SQ,
                    dicom_core::value::DataSetSequence::new(items, Length::UNDEFINED),
                )
            }
            _ => element.clone(),
        }
    }))
}

/// Collects the first bytes of an instance as they arrive until its header can be read. The
/// prefix is rescanned only when it has doubled, so the work stays linear in its size.
#[derive(Debug)]
pub struct HeaderReader {
    prefix: Vec<u8>,
    next_scan: usize,
}

impl Default for HeaderReader {
    fn default() -> Self {
        Self {
            prefix: Vec::new(),
            next_scan: 64 * 1024,
        }
    }
}

impl HeaderReader {
    /// A reader that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next chunk; returns the header as soon as the bytes so far hold it.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Option<InstanceHeader>, DicomError> {
        self.prefix.extend_from_slice(chunk);
        if self.prefix.len() < self.next_scan {
            return Ok(None);
        }
        match scan_header(&self.prefix, false)? {
            HeaderScan::Complete(header) => Ok(Some(*header)),
            HeaderScan::NeedMore => {
                self.next_scan = self.prefix.len() * 2;
                Ok(None)
            }
        }
    }

    /// The input ended: the header of the complete instance, or why there is none.
    pub fn finish(&mut self) -> Result<InstanceHeader, DicomError> {
        match scan_header(&self.prefix, true)? {
            HeaderScan::Complete(header) => Ok(*header),
            HeaderScan::NeedMore => Err(DicomError::Malformed("truncated".into())),
        }
    }

    /// The bytes collected so far.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The bytes collected so far (they still have to be stored).
    pub fn into_prefix(self) -> Vec<u8> {
        self.prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Part-10 file (no preamble) of Explicit VR Little Endian with `dataset` as its data set.
    fn part10(dataset: &[u8]) -> Vec<u8> {
        fn element(out: &mut Vec<u8>, element: u16, vr: &[u8; 2], value: &[u8]) {
            out.extend_from_slice(&2u16.to_le_bytes());
            out.extend_from_slice(&element.to_le_bytes());
            out.extend_from_slice(vr);
            if vr == b"OB" {
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            } else {
                out.extend_from_slice(&(value.len() as u16).to_le_bytes());
            }
            out.extend_from_slice(value);
        }
        let mut meta = Vec::new();
        element(&mut meta, 0x0001, b"OB", &[0, 1]);
        element(&mut meta, 0x0002, b"UI", b"1.2.3\0");
        element(&mut meta, 0x0003, b"UI", b"1.2.3.4\0");
        element(&mut meta, 0x0010, b"UI", b"1.2.840.10008.1.2.1\0");
        let mut out = b"DICM".to_vec();
        element(&mut out, 0x0000, b"UL", &(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(dataset);
        out
    }

    /// Pixel Data with a 2-byte-length VR (`US`) has an 8-byte header; 12 were subtracted from
    /// its value offset, which underflowed (a panic) when it was the first element, and cut the
    /// element before it otherwise.
    #[test]
    fn pixel_data_with_a_short_vr_is_read_not_a_panic() {
        let pixel_data = [0xE0, 0x7F, 0x10, 0x00, b'U', b'S', 2, 0, 1, 0];
        let bytes = part10(&pixel_data);
        let header = match scan_header(&bytes, true) {
            Ok(HeaderScan::Complete(header)) => header,
            other => panic!("expected a header, got {other:?}"),
        };
        assert_eq!(
            header.pixel_data(),
            Some(PixelData::Native {
                offset: bytes.len() as u64 - 2,
                length: 2
            })
        );

        // After another element: that element is read whole.
        let mut dataset = vec![
            0x10, 0x00, 0x20, 0x00, b'L', b'O', 4, 0, b'I', b'D', b'4', b'2',
        ];
        dataset.extend_from_slice(&pixel_data);
        let header = match scan_header(&part10(&dataset), true) {
            Ok(HeaderScan::Complete(header)) => header,
            other => panic!("expected a header, got {other:?}"),
        };
        assert_eq!(header.string(tags::PATIENT_ID).as_deref(), Some("ID42"));
    }
}
