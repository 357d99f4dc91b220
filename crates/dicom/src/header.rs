//! Reading the header of a Part-10 instance from a prefix of its bytes.

use dicom_core::header::Header;
use dicom_core::value::Value;
use dicom_core::{Length, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntax;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_object::mem::InMemElement;
use dicom_object::meta::FileMetaTable;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use tessera_core::{InstanceIdentifier, Limits, SearchableAttributes, Uid};

use crate::DicomError;
use crate::walk::{self, DataSetWalker, Encoding};

/// Implicit VR Little Endian: stored, with warning 45063 (orig E.3).
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

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

/// Reads the header from `prefix` with the default limits. `complete` says whether `prefix` is
/// the whole instance; when it is, the whole structure must be intact.
pub fn scan_header(prefix: &[u8], complete: bool) -> Result<HeaderScan, DicomError> {
    let mut reader = HeaderReader::new();
    match reader.push(prefix)? {
        Some(header) => Ok(HeaderScan::Complete(Box::new(header))),
        None if complete => Ok(HeaderScan::Complete(Box::new(reader.finish()?))),
        None => Ok(HeaderScan::NeedMore),
    }
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
        let element = self.dataset.get(tag)?;
        let text = element.to_str().ok()?;
        // Only the first value of a wrongly multi-valued element is indexed (orig D.5).
        let first = text.split('\\').next().unwrap_or_default();
        let first = first.trim_end_matches([' ', '\0']).trim_start();
        (!first.is_empty()).then(|| first.to_owned())
    }

    /// A numeric attribute, if present and parseable.
    pub fn number(&self, tag: Tag) -> Option<u64> {
        let element = self.dataset.get(tag)?;
        element
            .to_int::<u64>()
            .ok()
            .or_else(|| element.to_str().ok()?.trim().parse().ok())
    }

    /// The required UIDs (orig E.1, E.2): present, single, valid.
    pub fn identifier(&self) -> Result<InstanceIdentifier, ValidationError> {
        Ok(InstanceIdentifier {
            study: self.required_uid(tags::STUDY_INSTANCE_UID)?,
            series: self.required_uid(tags::SERIES_INSTANCE_UID)?,
            sop: self.required_uid(tags::SOP_INSTANCE_UID)?,
        })
    }

    fn required_uid(&self, tag: Tag) -> Result<Uid, ValidationError> {
        let value = self.string(tag).ok_or_else(|| missing(tag))?;
        Uid::parse(&value).map_err(|error| ValidationError {
            tag,
            message: attribute_comment(tag, &error.to_string()),
        })
    }

    /// Checks PatientID as the original's v2 partial validation does (issue 14; orig E.1, E.3,
    /// its v1 and v2 tests). Both versions fail a value that is not a valid LO once its trailing
    /// padding is set aside. v1 (`full_validation`) also fails a missing element, an empty value
    /// and a NUL anywhere, padding included; v2 stores an instance whose PatientID is missing or
    /// empty with the warning returned here.
    pub fn check_patient_id(
        &self,
        full_validation: bool,
    ) -> Result<Option<ValidationError>, ValidationError> {
        let tag = tags::PATIENT_ID;
        let absent = || {
            if full_validation {
                Err(missing(tag))
            } else {
                Ok(Some(missing(tag)))
            }
        };
        let Some(element) = self.dataset.get(tag) else {
            return absent();
        };
        let raw = element.to_raw_str().unwrap_or_default();
        let value = raw.trim_end_matches([' ', '\0']);
        if value.trim().is_empty() {
            return absent();
        }
        let invalid_character = || ValidationError {
            tag,
            message: attribute_comment(
                tag,
                "Dicom element 'PatientID' failed validation for VR 'LO': Value contains invalid character.",
            ),
        };
        if full_validation && raw.contains('\0') {
            return Err(invalid_character());
        }
        if value.contains('\0') {
            return Err(invalid_character());
        }
        crate::validation::check(VR::LO, value).map_err(|reason| ValidationError {
            tag,
            message: attribute_comment(
                tag,
                &format!(
                    "Content \"{}\" does not validate VR LO: {reason}",
                    value.chars().take(80).collect::<String>()
                ),
            ),
        })?;
        Ok(None)
    }

    /// The attributes the index keeps, once [`Self::identifier`] and
    /// [`Self::check_patient_id`] have passed.
    pub fn searchable_attributes(&self) -> Result<SearchableAttributes, ValidationError> {
        let sop_class = self.required_uid(tags::SOP_CLASS_UID)?;
        let patient_id = self.string(tags::PATIENT_ID);
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

    /// Checks the searchable attributes but PatientID (see [`Self::check_patient_id`]) against
    /// their VRs (orig E.3): each problem names the attribute. v1 fails the instance; v2 drops
    /// the attributes and warns.
    pub fn attribute_problems(&self) -> Vec<ValidationError> {
        crate::validation::SEARCHABLE
            .iter()
            .filter(|&&(tag, _)| tag != tags::PATIENT_ID)
            .filter_map(|&(tag, vr)| {
                let element = self.dataset.get(tag)?;
                let text = element.to_str().ok()?;
                crate::validation::check(vr, &text)
                    .err()
                    .map(|reason| ValidationError {
                        tag,
                        message: attribute_comment(
                            tag,
                            &format!(
                                "Content \"{}\" does not validate VR {vr}: {reason}",
                                text.chars().take(80).collect::<String>()
                            ),
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
    /// OW, UN), recursively. A top-level bulk element is named by a BulkDataURI relative to the
    /// instance ([`BULK_DATA_URI_PREFIX`] and its tag), which a retrieve makes absolute.
    pub fn metadata_json(&self) -> Result<Vec<u8>, DicomError> {
        // Most headers hold neither bulk data nor NUL-padded strings: their JSON is dicom-json's
        // own, written at once instead of through a copy of the data set and a tree of values.
        if !needs_rewriting(&self.dataset) {
            return dicom_json::to_vec(&self.dataset)
                .map_err(|e| DicomError::Malformed(e.to_string()));
        }
        self.rewritten_metadata_json()
    }

    /// [`Self::metadata_json`] built through a tree of values, with bulk data left out and named
    /// and NUL padding restored.
    fn rewritten_metadata_json(&self) -> Result<Vec<u8>, DicomError> {
        let filtered = without_bulk_data(&self.dataset);
        let mut json =
            dicom_json::to_value(&filtered).map_err(|e| DicomError::Malformed(e.to_string()))?;
        restore_nul_padding(&filtered, &mut json);
        if let serde_json::Value::Object(dataset) = &mut json {
            // Pixel data is served as frames, not as bulk data.
            let named = |e: &&InMemElement| is_bulk(e.vr()) && e.tag().group() != 0x7FE0;
            for element in self.dataset.iter().filter(named) {
                let tag = element.tag();
                let key = format!("{:04X}{:04X}", tag.group(), tag.element());
                let uri = format!("{BULK_DATA_URI_PREFIX}{key}");
                dataset.insert(
                    key,
                    serde_json::json!({"vr": element.vr().to_string(), "BulkDataURI": uri}),
                );
            }
        }
        serde_json::to_vec(&json).map_err(|e| DicomError::Malformed(e.to_string()))
    }

    /// Number of frames (Number of Frames, default 1).
    pub fn frame_count(&self) -> u64 {
        self.number(tags::NUMBER_OF_FRAMES)
            .filter(|&n| n > 0)
            .unwrap_or(1)
    }

    /// Why native pixel data cannot hold the frames the header declares, if it cannot:
    /// NumberOfFrames × Rows × Columns × SamplesPerPixel × BitsAllocated bits must fit the
    /// value (checked arithmetic, so a crafted product cannot overflow).
    pub fn pixel_data_problem(&self) -> Option<String> {
        let Some(PixelData::Native { length, .. }) = self.pixel_data else {
            return None;
        };
        let rows = self.number(tags::ROWS)?;
        let columns = self.number(tags::COLUMNS)?;
        let bits = self.number(tags::BITS_ALLOCATED)?;
        let samples = self.number(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
        let frames = self.frame_count();
        let needed = rows
            .checked_mul(columns)
            .and_then(|n| n.checked_mul(samples))
            .and_then(|n| n.checked_mul(bits))
            .and_then(|n| n.checked_mul(frames))
            .map(|bits| bits.div_ceil(8));
        match needed {
            Some(needed) if needed <= length => None,
            _ => Some(format!(
                "Pixel Data (7FE0,0010) holds {length} bytes, fewer than NumberOfFrames ({frames}) \
                 × Rows ({rows}) × Columns ({columns}) × SamplesPerPixel ({samples}) × \
                 BitsAllocated ({bits}) / 8"
            )),
        }
    }

    /// Bytes per frame of native pixel data.
    pub fn native_frame_size(&self) -> Option<u64> {
        let rows = self.number(tags::ROWS)?;
        let columns = self.number(tags::COLUMNS)?;
        let samples = self.number(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
        let bits = self.number(tags::BITS_ALLOCATED)?;
        let bits_total = rows
            .checked_mul(columns)?
            .checked_mul(samples)?
            .checked_mul(bits)?;
        Some(bits_total.div_ceil(8))
    }
}

/// A comment about one attribute in the original's form, `DICOM100: (gggg,eeee) - message`
/// (its `ErrorMessageFormat`, with `ErrorNumbers.ValidationFailure` 100): what clients parse
/// out of FailedAttributesSequence.
pub fn attribute_comment(tag: Tag, message: &str) -> String {
    format!(
        "DICOM100: ({:04X},{:04X}) - {message}",
        tag.group(),
        tag.element()
    )
}

/// The original's `MissingRequiredTag`, which names the tag as `(gggg,eeee)`.
fn missing(tag: Tag) -> ValidationError {
    ValidationError {
        tag,
        message: attribute_comment(
            tag,
            &format!(
                "The required tag '({:04X},{:04X})' is missing.",
                tag.group(),
                tag.element()
            ),
        ),
    }
}

/// Puts back the trailing NUL padding of string values other than UIDs, which dicom-json
/// trims: the original kept values "as is in dicom+json metadata" (its v2 conformance statement), and its clients
/// compare them so.
fn restore_nul_padding(object: &InMemDicomObject, json: &mut serde_json::Value) {
    for element in object.iter() {
        let tag = element.tag();
        let key = format!("{:04X}{:04X}", tag.group(), tag.element());
        let Some(values) = json
            .get_mut(&key)
            .and_then(|entry| entry.get_mut("Value"))
            .and_then(serde_json::Value::as_array_mut)
        else {
            continue;
        };
        match element.value() {
            Value::Sequence(sequence) => {
                for (item, item_json) in sequence.items().iter().zip(values.iter_mut()) {
                    restore_nul_padding(item, item_json);
                }
            }
            // A UID's NUL is its VR's own padding (PS3.5 §6.2), which the original trimmed too.
            Value::Primitive(_) if element.vr() == VR::UI => {}
            Value::Primitive(primitive) => {
                let Ok(raw) = primitive.strings() else {
                    continue;
                };
                if raw.len() != values.len() {
                    continue;
                }
                for (value, raw) in values.iter_mut().zip(raw) {
                    let kept = raw.trim_end_matches(' ');
                    if kept.ends_with('\0') && value.is_string() {
                        *value = serde_json::Value::String(kept.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
}

/// Whether the metadata JSON of `object` differs from what dicom-json writes of it at once: bulk
/// data to leave out and name, a string value ending in NUL padding, which dicom-json trims
/// (see [`restore_nul_padding`]), or an `FL` value, which the tree of values holds as an `f64`
/// and so writes with more digits than dicom-json's own `f32` (the stored metadata always had
/// them), at any depth.
fn needs_rewriting(object: &InMemDicomObject) -> bool {
    object.iter().any(|element| {
        if is_bulk(element.vr()) || element.vr() == VR::FL {
            return true;
        }
        match element.value() {
            Value::Sequence(sequence) => sequence.items().iter().any(needs_rewriting),
            Value::Primitive(_) if element.vr() == VR::UI => false,
            Value::Primitive(primitive) => primitive.strings().is_ok_and(|raw| {
                raw.iter()
                    .any(|value| value.trim_end_matches(' ').ends_with('\0'))
            }),
            _ => false,
        }
    })
}

/// How a stored BulkDataURI begins: relative to its instance's URL, so that the stored metadata
/// holds no host (the retrieve puts the request's or the configured public base in front).
pub const BULK_DATA_URI_PREFIX: &str = "bulkdata/";

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

/// What the reader learned from the file meta information.
struct Meta {
    transfer_syntax: &'static TransferSyntax,
    dataset_start: usize,
}

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meta")
            .field("transfer_syntax", &self.transfer_syntax.uid())
            .field("dataset_start", &self.dataset_start)
            .finish()
    }
}

/// Collects the first bytes of an instance as they arrive until its header can be read. A
/// [`DataSetWalker`] checks every declared length and the nesting depth as bytes arrive, so the
/// prefix never grows past the header limit and dicom-rs only ever parses bytes that are whole.
#[derive(Debug)]
pub struct HeaderReader {
    limits: Limits,
    prefix: Vec<u8>,
    meta: Option<Meta>,
    /// `None` for a deflated data set, which is read whole at the end.
    walker: Option<DataSetWalker>,
}

impl Default for HeaderReader {
    fn default() -> Self {
        Self::with_limits(&Limits::default())
    }
}

impl HeaderReader {
    /// A reader with the default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// A reader bounded by `limits` (header size, sequence depth, inflated size).
    pub fn with_limits(limits: &Limits) -> Self {
        Self {
            limits: limits.clone(),
            prefix: Vec::new(),
            meta: None,
            walker: None,
        }
    }

    fn max_header(&self) -> usize {
        usize::try_from(self.limits.max_header_bytes).unwrap_or(usize::MAX)
    }

    /// Adds the next chunk; returns the header as soon as the bytes so far hold it.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Option<InstanceHeader>, DicomError> {
        let fed = self.prefix.len();
        self.prefix.extend_from_slice(chunk);
        let fed = if self.meta.is_none() {
            match self.read_meta()? {
                Some(start) => start,
                None => return Ok(None),
            }
        } else {
            fed
        };
        let Some(walker) = &mut self.walker else {
            if self.prefix.len() > self.max_header() {
                return Err(DicomError::HeaderTooLarge(format!(
                    "the deflated data set is longer than {} bytes",
                    self.limits.max_header_bytes
                )));
            }
            return Ok(None);
        };
        walker.feed(fed as u64, &self.prefix[fed..])?;
        match (walker.pixel_data(), &self.meta) {
            (Some(start), Some(meta)) => {
                let end = usize::try_from(start.element_offset)
                    .map_err(|_| DicomError::Malformed("offset out of range".into()))?;
                let dataset = parse(&self.prefix[meta.dataset_start..end], meta.transfer_syntax)?;
                Ok(Some(InstanceHeader {
                    transfer_syntax: meta.transfer_syntax.uid().to_owned(),
                    dataset,
                    pixel_data: Some(start.pixel_data),
                }))
            }
            _ => Ok(None),
        }
    }

    /// Reads the file meta information once the prefix holds it; returns where the data set
    /// starts, or `None` while more bytes are needed.
    fn read_meta(&mut self) -> Result<Option<usize>, DicomError> {
        let prefix = &self.prefix;
        let magic_at = if prefix.get(128..132) == Some(b"DICM") {
            128
        } else if prefix.starts_with(b"DICM") {
            0
        } else if prefix.len() < 132 {
            return Ok(None);
        } else {
            return Err(DicomError::NotDicom);
        };
        let Some(end) = walk::meta_end(prefix, magic_at + 4, self.max_header())? else {
            return Ok(None);
        };
        let meta = FileMetaTable::from_reader(&prefix[magic_at..end])
            .map_err(|e| DicomError::Malformed(e.to_string()))?;
        let ts_uid = meta.transfer_syntax();
        let ts = TransferSyntaxRegistry
            .get(ts_uid)
            .ok_or_else(|| DicomError::UnsupportedTransferSyntax(ts_uid.to_owned()))?;
        let deflated = matches!(
            ts.codec(),
            dicom_encoding::transfer_syntax::Codec::Dataset(_)
        );
        if !deflated {
            let encoding = Encoding {
                explicit_vr: ts.uid() != IMPLICIT_VR_LE,
                big_endian: ts.endianness() == dicom_encoding::Endianness::Big,
            };
            self.walker = Some(DataSetWalker::new(
                end as u64,
                encoding,
                self.limits.max_sequence_depth,
                self.limits.max_header_bytes,
            ));
        }
        self.meta = Some(Meta {
            transfer_syntax: ts,
            dataset_start: end,
        });
        Ok(Some(end))
    }

    /// The input ended without Pixel Data: the header of the complete instance, or why there
    /// is none (including an instance cut short).
    pub fn finish(&mut self) -> Result<InstanceHeader, DicomError> {
        let Some(meta) = &self.meta else {
            return Err(
                if self.prefix.len() < 132 && !self.prefix.starts_with(b"DICM") {
                    DicomError::NotDicom
                } else {
                    DicomError::Truncated(
                        "the instance ends inside its file meta information".into(),
                    )
                },
            );
        };
        let body = &self.prefix[meta.dataset_start..];
        let dataset = match &self.walker {
            Some(walker) => {
                walker.finish(self.prefix.len() as u64)?;
                parse(body, meta.transfer_syntax)?
            }
            None => {
                let inflated = inflate(body, self.limits.max_inflated_bytes)?;
                let mut walker = DataSetWalker::new(
                    0,
                    Encoding::EXPLICIT_LE,
                    self.limits.max_sequence_depth,
                    u64::MAX,
                );
                walker.feed(0, &inflated)?;
                walker.finish(inflated.len() as u64)?;
                parse(
                    &inflated,
                    &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
                )?
            }
        };
        Ok(InstanceHeader {
            transfer_syntax: meta.transfer_syntax.uid().to_owned(),
            dataset,
            pixel_data: None,
        })
    }

    /// The bytes collected so far.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The bytes collected so far (they still have to be stored).
    pub fn into_prefix(self) -> Vec<u8> {
        self.prefix
    }

    /// The bytes collected so far and the walk over them, which goes on over the rest of the
    /// instance to prove it complete (`None` for a deflated data set, proven by [`Self::finish`]).
    pub fn into_parts(self) -> (Vec<u8>, Option<DataSetWalker>) {
        (self.prefix, self.walker)
    }
}

/// Parses bytes the walker has proven whole and shallow.
fn parse(bytes: &[u8], ts: &TransferSyntax) -> Result<InMemDicomObject, DicomError> {
    InMemDicomObject::read_dataset_with_ts(bytes, ts)
        .map_err(|e| DicomError::Malformed(e.to_string()))
}

/// Inflates a deflated data set (raw deflate, PS3.5 A.5), at most `limit` bytes of it.
fn inflate(deflated: &[u8], limit: u64) -> Result<Vec<u8>, DicomError> {
    use std::io::Read;
    let mut inflated = Vec::new();
    flate2::read::DeflateDecoder::new(deflated)
        .take(limit.saturating_add(1))
        .read_to_end(&mut inflated)
        .map_err(|e| {
            DicomError::Truncated(format!("the deflated data set does not inflate: {e}"))
        })?;
    if inflated.len() as u64 > limit {
        return Err(DicomError::InflatedTooLarge(limit));
    }
    Ok(inflated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::walk::tests::element;

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
        let header = header_of(&bytes);
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
        let header = header_of(&part10(&dataset));
        assert_eq!(header.string(tags::PATIENT_ID).as_deref(), Some("ID42"));
    }

    fn header_of(bytes: &[u8]) -> InstanceHeader {
        match scan_header(bytes, true) {
            Ok(HeaderScan::Complete(header)) => *header,
            other => panic!("expected a header, got {other:?}"),
        }
    }

    /// The metadata JSON of a data set that must take the rewriting path.
    fn rewritten_json(dataset: &[u8]) -> String {
        let header = header_of(&part10(dataset));
        assert!(needs_rewriting(&header.dataset));
        String::from_utf8(header.metadata_json().unwrap()).unwrap()
    }

    #[test]
    fn metadata_is_written_at_once_only_where_nothing_needs_rewriting() {
        // One sequence item holding a 4-byte code value.
        let item = |code: &[u8; 4]| {
            [
                [0xFE, 0xFF, 0x00, 0xE0].as_slice(),
                &12u32.to_le_bytes(),
                &element((0x0008, 0x0100), b"SH", code),
            ]
            .concat()
        };
        let plain = [
            element((0x0008, 0x1140), b"SQ", &item(b"CODE")),
            element((0x0010, 0x0020), b"LO", b"ID42"),
        ]
        .concat();
        let header = header_of(&part10(&plain));
        assert!(!needs_rewriting(&header.dataset));
        let json = header.metadata_json().unwrap();
        assert_eq!(json, header.rewritten_metadata_json().unwrap());
        assert!(String::from_utf8(json).unwrap().contains("\"CODE\""));

        let padded = [
            element((0x0008, 0x1140), b"SQ", &item(b"COD\0")),
            element((0x0010, 0x0020), b"LO", b"ID42"),
        ]
        .concat();
        let json = rewritten_json(&padded);
        assert!(
            json.contains("COD\\u0000"),
            "NUL padding in an item: {json}"
        );

        let bulk = [
            element((0x0009, 0x0010), b"LO", b"PRIVATE"),
            element((0x0009, 0x1001), b"OB", &[1, 2]),
            element((0x0010, 0x0020), b"LO", b"ID42"),
        ]
        .concat();
        let json = rewritten_json(&bulk);
        assert!(json.contains("BulkDataURI"), "bulk data: {json}");

        let testdata =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata");
        let (mut compared, mut at_once) = (0, 0);
        for folder in [testdata.clone(), testdata.join("transfer-syntaxes")] {
            for entry in std::fs::read_dir(folder).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "dcm") {
                    let header = header_of(&std::fs::read(&path).unwrap());
                    let rewritten = header.rewritten_metadata_json().unwrap();
                    assert_eq!(header.metadata_json().unwrap(), rewritten, "{path:?}");
                    compared += 1;
                    at_once += usize::from(!needs_rewriting(&header.dataset));
                }
            }
        }
        assert!(compared >= 15, "expected the shared samples");
        assert!(at_once > 0, "no sample is written at once");
    }
}
