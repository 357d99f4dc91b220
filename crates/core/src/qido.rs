//! The QIDO-RS query model (PS3.18 §10.6, PS3.4 C.2.2.2, orig D.5), free of HTTP and SQL.

use crate::Uid;

/// The level a search returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryLevel {
    /// Studies.
    Study,
    /// Series.
    Series,
    /// Instances.
    Instance,
}

/// The attributes a search can match on (orig D.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueryAttribute {
    /// (0020,000D)
    StudyInstanceUid,
    /// (0010,0010)
    PatientName,
    /// (0010,0020)
    PatientId,
    /// (0010,0030)
    PatientBirthDate,
    /// (0008,0050)
    AccessionNumber,
    /// (0008,0090)
    ReferringPhysicianName,
    /// (0008,0020)
    StudyDate,
    /// (0008,1030)
    StudyDescription,
    /// (0008,0061)
    ModalitiesInStudy,
    /// (0020,000E)
    SeriesInstanceUid,
    /// (0008,0060)
    Modality,
    /// (0040,0244)
    PerformedProcedureStepStartDate,
    /// (0008,1090)
    ManufacturerModelName,
    /// (0008,0018)
    SopInstanceUid,
}

/// How an attribute matches (PS3.4 C.2.2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Matcher {
    /// Single value: equal (case-insensitive; for names also accent-insensitive).
    Exact(String),
    /// `*` and `?` wildcards.
    Wildcard(String),
    /// Inclusive date range; either end may be open.
    Range(Option<String>, Option<String>),
    /// Any of these UIDs.
    UidList(Vec<String>),
    /// Fuzzy person name: each word is a prefix of some name component.
    Fuzzy(String),
}

/// A search.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QidoQuery {
    /// What is returned.
    pub level: QueryLevel,
    /// Restricts to one study (from the URL).
    pub study: Option<Uid>,
    /// Restricts to one series (from the URL).
    pub series: Option<Uid>,
    /// Conditions, all of which must hold.
    pub filters: Vec<(QueryAttribute, Matcher)>,
    /// At most this many results (1–200).
    pub limit: u32,
    /// Results skipped.
    pub offset: u32,
    /// What each result carries.
    pub fields: QidoFields,
}

/// What each search result carries. Each field costs per result (a value copied out of the
/// index, a lookup, or for ModalitiesInStudy one more query), so a search returns only what its
/// response shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QidoFields {
    /// Attributes whose values results carry, of the search's level and above (the UIDs of the
    /// result and its parents always; ModalitiesInStudy: the modalities of the study's series).
    pub attributes: Vec<QueryAttribute>,
    /// SOP Class UID (instance level).
    pub sop_class_uid: bool,
    /// NumberOfStudyRelatedSeries.
    pub study_series: bool,
    /// NumberOfStudyRelatedInstances.
    pub study_instances: bool,
    /// NumberOfSeriesRelatedInstances (series and instance levels).
    pub series_instances: bool,
    /// The newest instance, whose metadata has the attributes the index does not keep.
    pub representative: bool,
}

impl QidoFields {
    /// Everything.
    pub fn all() -> Self {
        Self {
            attributes: QueryAttribute::ALL.to_vec(),
            sop_class_uid: true,
            study_series: true,
            study_instances: true,
            series_instances: true,
            representative: true,
        }
    }
}

impl QueryAttribute {
    /// Every searchable attribute.
    pub const ALL: [Self; 14] = [
        Self::StudyInstanceUid,
        Self::PatientName,
        Self::PatientId,
        Self::PatientBirthDate,
        Self::AccessionNumber,
        Self::ReferringPhysicianName,
        Self::StudyDate,
        Self::StudyDescription,
        Self::ModalitiesInStudy,
        Self::SeriesInstanceUid,
        Self::Modality,
        Self::PerformedProcedureStepStartDate,
        Self::ManufacturerModelName,
        Self::SopInstanceUid,
    ];

    /// The DICOM keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Self::StudyInstanceUid => "StudyInstanceUID",
            Self::PatientName => "PatientName",
            Self::PatientId => "PatientID",
            Self::PatientBirthDate => "PatientBirthDate",
            Self::AccessionNumber => "AccessionNumber",
            Self::ReferringPhysicianName => "ReferringPhysicianName",
            Self::StudyDate => "StudyDate",
            Self::StudyDescription => "StudyDescription",
            Self::ModalitiesInStudy => "ModalitiesInStudy",
            Self::SeriesInstanceUid => "SeriesInstanceUID",
            Self::Modality => "Modality",
            Self::PerformedProcedureStepStartDate => "PerformedProcedureStepStartDate",
            Self::ManufacturerModelName => "ManufacturerModelName",
            Self::SopInstanceUid => "SOPInstanceUID",
        }
    }

    /// The tag as 8 hex digits, as DICOM JSON keys it.
    pub fn tag(self) -> &'static str {
        match self {
            Self::StudyInstanceUid => "0020000D",
            Self::PatientName => "00100010",
            Self::PatientId => "00100020",
            Self::PatientBirthDate => "00100030",
            Self::AccessionNumber => "00080050",
            Self::ReferringPhysicianName => "00080090",
            Self::StudyDate => "00080020",
            Self::StudyDescription => "00081030",
            Self::ModalitiesInStudy => "00080061",
            Self::SeriesInstanceUid => "0020000E",
            Self::Modality => "00080060",
            Self::PerformedProcedureStepStartDate => "00400244",
            Self::ManufacturerModelName => "00081090",
            Self::SopInstanceUid => "00080018",
        }
    }

    /// The value representation.
    pub fn vr(self) -> &'static str {
        match self {
            Self::StudyInstanceUid | Self::SeriesInstanceUid | Self::SopInstanceUid => "UI",
            Self::PatientName | Self::ReferringPhysicianName => "PN",
            Self::PatientId | Self::StudyDescription | Self::ManufacturerModelName => "LO",
            Self::PatientBirthDate | Self::StudyDate | Self::PerformedProcedureStepStartDate => {
                "DA"
            }
            Self::AccessionNumber => "SH",
            Self::ModalitiesInStudy | Self::Modality => "CS",
        }
    }

    /// The level the attribute belongs to.
    pub fn level(self) -> QueryLevel {
        match self {
            Self::SeriesInstanceUid
            | Self::Modality
            | Self::PerformedProcedureStepStartDate
            | Self::ManufacturerModelName => QueryLevel::Series,
            Self::SopInstanceUid => QueryLevel::Instance,
            _ => QueryLevel::Study,
        }
    }

    /// Reads a query key: a keyword (any case) or a tag as 8 hex digits.
    pub fn from_key(key: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.keyword().eq_ignore_ascii_case(key) || a.tag().eq_ignore_ascii_case(key))
    }
}

/// The forms of a person name the index searches: the whole name lowercased without accents
/// (exact and wildcard matching), and its components as space-separated words with a leading
/// space (fuzzy matching: `% word%`).
pub fn person_name_search_forms(name: &str) -> (String, String) {
    use unicode_normalization::UnicodeNormalization;
    let folded: String = name
        .nfd()
        .filter(|c| !unicode_normalization::char::is_combining_mark(*c))
        .collect::<String>()
        .to_lowercase();
    let words: Vec<&str> = folded
        .split(['^', '=', ' '])
        .filter(|w| !w.is_empty())
        .collect();
    (
        folded.trim_end_matches('^').to_owned(),
        format!(" {} ", words.join(" ")),
    )
}

/// Folds a query value the way [`person_name_search_forms`] folds names.
pub fn fold_person_name(value: &str) -> String {
    person_name_search_forms(value).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_keywords_or_tags() {
        assert_eq!(
            QueryAttribute::from_key("PatientID"),
            Some(QueryAttribute::PatientId)
        );
        assert_eq!(
            QueryAttribute::from_key("patientid"),
            Some(QueryAttribute::PatientId)
        );
        assert_eq!(
            QueryAttribute::from_key("00100020"),
            Some(QueryAttribute::PatientId)
        );
        assert_eq!(
            QueryAttribute::from_key("0020000d"),
            Some(QueryAttribute::StudyInstanceUid)
        );
        assert_eq!(QueryAttribute::from_key("PatientWeight"), None);
    }

    #[test]
    fn names_fold_case_and_accents() {
        assert_eq!(
            person_name_search_forms("Müller^Jürgen"),
            ("muller^jurgen".into(), " muller jurgen ".into())
        );
        assert_eq!(
            person_name_search_forms("Doe^John^^^"),
            ("doe^john".into(), " doe john ".into())
        );
    }
}
