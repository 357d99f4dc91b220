//! The attributes the index keeps for search (orig D.5).

/// Searchable attributes of one instance, as read from its header: the first value of each,
/// without padding. Study and series attributes follow "latest wins" in the index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchableAttributes {
    /// SOP Class UID (0008,0016).
    pub sop_class_uid: String,
    /// Patient ID (0010,0020).
    pub patient_id: Option<String>,
    /// Patient's Name (0010,0010).
    pub patient_name: Option<String>,
    /// Patient's Birth Date (0010,0030).
    pub patient_birth_date: Option<String>,
    /// Accession Number (0008,0050).
    pub accession_number: Option<String>,
    /// Referring Physician's Name (0008,0090).
    pub referring_physician_name: Option<String>,
    /// Study Date (0008,0020).
    pub study_date: Option<String>,
    /// Study Description (0008,1030).
    pub study_description: Option<String>,
    /// Modality (0008,0060).
    pub modality: Option<String>,
    /// Performed Procedure Step Start Date (0040,0244).
    pub performed_procedure_step_start_date: Option<String>,
    /// Manufacturer's Model Name (0008,1090).
    pub manufacturer_model_name: Option<String>,
}
