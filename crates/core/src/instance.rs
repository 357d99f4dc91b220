//! Identifiers of stored instances.

use crate::{Uid, UidError, Watermark};

/// The study, series and SOP instance UIDs that identify an instance across the DICOM world.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct InstanceIdentifier {
    /// Study Instance UID (0020,000D).
    pub study: Uid,
    /// Series Instance UID (0020,000E).
    pub series: Uid,
    /// SOP Instance UID (0008,0018).
    pub sop: Uid,
}

impl InstanceIdentifier {
    /// Checks all three UIDs; the first bad one is the error.
    pub fn parse(study: &str, series: &str, sop: &str) -> Result<Self, UidError> {
        Ok(Self {
            study: Uid::parse(study)?,
            series: Uid::parse(series)?,
            sop: Uid::parse(sop)?,
        })
    }
}

/// One stored version of an instance: what blob names are made from.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct VersionedInstance {
    id: InstanceIdentifier,
    watermark: Watermark,
}

impl VersionedInstance {
    /// Pairs checked UIDs with a watermark.
    pub fn new(id: InstanceIdentifier, watermark: Watermark) -> Self {
        Self { id, watermark }
    }

    /// The instance's UIDs.
    pub fn id(&self) -> &InstanceIdentifier {
        &self.id
    }

    /// The version this instance was stored under.
    pub fn watermark(&self) -> Watermark {
        self.watermark
    }
}
