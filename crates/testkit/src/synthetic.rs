//! Synthetic DICOM instances: native multi-frame images of any size, with chosen UIDs.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

/// The shape of a synthetic instance.
#[derive(Clone, Debug)]
pub struct Synthetic {
    /// Study Instance UID.
    pub study: String,
    /// Series Instance UID.
    pub series: String,
    /// SOP Instance UID.
    pub sop: String,
    /// Patient ID.
    pub patient_id: String,
    /// Study Date (any text: tests set invalid ones).
    pub study_date: String,
    /// Patient's Name.
    pub patient_name: String,
    /// Modality.
    pub modality: String,
    /// Rows × columns of each 8-bit frame.
    pub rows: u16,
    /// Columns.
    pub columns: u16,
    /// Number of frames.
    pub frames: u32,
    /// Leave PatientID out altogether (tests of the required-attribute rules).
    pub omit_patient_id: bool,
}

impl Synthetic {
    /// A small instance with these UIDs: 3 frames of 4 × 5 pixels.
    pub fn new(study: &str, series: &str, sop: &str) -> Self {
        Self {
            study: study.into(),
            series: series.into(),
            sop: sop.into(),
            patient_id: "SYNTH".into(),
            study_date: "20240101".into(),
            patient_name: "Synthetic^Patient".into(),
            modality: "OT".into(),
            rows: 4,
            columns: 5,
            frames: 3,
            omit_patient_id: false,
        }
    }

    /// Bytes per frame.
    pub fn frame_size(&self) -> u64 {
        u64::from(self.rows) * u64::from(self.columns)
    }

    /// Length of the pixel data value (even, as DICOM requires).
    pub fn pixel_length(&self) -> u64 {
        let length = self.frame_size() * u64::from(self.frames);
        length + length % 2
    }

    /// The pixel byte at `offset` of the pixel data (a pattern that differs between frames).
    pub fn pixel(offset: u64) -> u8 {
        (offset.wrapping_mul(7) ^ (offset >> 11)) as u8
    }

    /// Everything up to and including the Pixel Data element header (Explicit VR Little
    /// Endian); `pixel_length()` bytes of [`Self::pixel`] must follow.
    pub fn header(&self) -> Vec<u8> {
        let ts = TransferSyntaxRegistry
            .get(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .expect("explicit VR LE");
        let mut dataset = InMemDicomObject::from_element_iter([
            DataElement::new(
                tags::SOP_CLASS_UID,
                VR::UI,
                PrimitiveValue::from(uids::SECONDARY_CAPTURE_IMAGE_STORAGE),
            ),
            DataElement::new(
                tags::SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(self.sop.as_str()),
            ),
            DataElement::new(
                tags::MODALITY,
                VR::CS,
                PrimitiveValue::from(self.modality.as_str()),
            ),
            DataElement::new(
                tags::STUDY_DATE,
                VR::DA,
                PrimitiveValue::from(self.study_date.as_str()),
            ),
            DataElement::new(
                tags::PATIENT_NAME,
                VR::PN,
                PrimitiveValue::from(self.patient_name.as_str()),
            ),
            DataElement::new(
                tags::PATIENT_ID,
                VR::LO,
                PrimitiveValue::from(self.patient_id.as_str()),
            ),
            DataElement::new(
                tags::STUDY_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(self.study.as_str()),
            ),
            DataElement::new(
                tags::SERIES_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(self.series.as_str()),
            ),
            DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1_u16)),
            DataElement::new(
                tags::PHOTOMETRIC_INTERPRETATION,
                VR::CS,
                PrimitiveValue::from("MONOCHROME2"),
            ),
            DataElement::new(
                tags::NUMBER_OF_FRAMES,
                VR::IS,
                PrimitiveValue::from(self.frames.to_string()),
            ),
            DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(self.rows)),
            DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(self.columns)),
            DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(8_u16)),
            DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(8_u16)),
            DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(7_u16)),
            DataElement::new(
                tags::PIXEL_REPRESENTATION,
                VR::US,
                PrimitiveValue::from(0_u16),
            ),
        ]);
        if self.omit_patient_id {
            dataset.remove_element(tags::PATIENT_ID);
        }
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(uids::SECONDARY_CAPTURE_IMAGE_STORAGE)
            .media_storage_sop_instance_uid(self.sop.as_str())
            .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .implementation_class_uid("1.2.826.0.1.3680043.10.1234")
            .build()
            .expect("file meta");
        let mut out = vec![0u8; 128];
        out.extend_from_slice(b"DICM");
        meta.write(&mut out).expect("write meta");
        dataset
            .write_dataset_with_ts(&mut out, ts)
            .expect("write dataset");
        let length = u32::try_from(self.pixel_length()).expect("pixel data under 4 GiB");
        out.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0]);
        out.extend_from_slice(&length.to_le_bytes());
        out
    }

    /// The whole instance in memory (for small ones).
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = self.header();
        out.extend((0..self.pixel_length()).map(Self::pixel));
        out
    }

    /// Frame `index` (0-based) as stored.
    pub fn frame(&self, index: u32) -> Vec<u8> {
        let start = u64::from(index) * self.frame_size();
        (start..start + self.frame_size())
            .map(Self::pixel)
            .collect()
    }
}
