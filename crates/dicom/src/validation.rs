//! VR rules for the searchable attributes (PS3.5 §6.2, with the original's minimal checks, orig
//! E.3). Only the attributes the index keeps are checked: they are what a bad value could break.

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;

/// The searchable attributes and their VRs.
pub const SEARCHABLE: &[(Tag, VR)] = &[
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::PATIENT_BIRTH_DATE, VR::DA),
    (tags::ACCESSION_NUMBER, VR::SH),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    (tags::STUDY_DATE, VR::DA),
    (tags::STUDY_DESCRIPTION, VR::LO),
    (tags::MODALITY, VR::CS),
    (tags::PERFORMED_PROCEDURE_STEP_START_DATE, VR::DA),
    (tags::MANUFACTURER_MODEL_NAME, VR::LO),
];

/// Checks every value of `text` (values separated by `\`) against `vr`.
pub fn check(vr: VR, text: &str) -> Result<(), String> {
    for value in text.split('\\') {
        // Trailing NUL or space padding is accepted silently (orig E.3).
        let value = value.trim_end_matches(['\0', ' ']);
        check_value(vr, value)?;
    }
    Ok(())
}

fn check_value(vr: VR, value: &str) -> Result<(), String> {
    let controls = |v: &str| v.chars().any(|c| c.is_control() && c != '\u{1b}');
    match vr {
        VR::DA => {
            let valid = value.is_empty()
                || (value.len() == 8
                    && value.bytes().all(|b| b.is_ascii_digit())
                    && chrono_like_date(value));
            if valid {
                Ok(())
            } else {
                Err("expected a date YYYYMMDD".into())
            }
        }
        VR::CS => {
            let valid = value.chars().count() <= 16
                && value
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == ' ' || c == '_');
            if valid {
                Ok(())
            } else {
                Err("expected up to 16 upper-case letters, digits, spaces or underscores".into())
            }
        }
        VR::SH | VR::LO => {
            let max = if vr == VR::SH { 16 } else { 64 };
            if value.chars().count() > max {
                Err(format!("longer than {max} characters"))
            } else if controls(value) {
                Err("contains control characters".into())
            } else {
                Ok(())
            }
        }
        VR::PN => {
            let groups: Vec<&str> = value.split('=').collect();
            if groups.len() > 3 {
                Err("more than three component groups".into())
            } else if groups.iter().any(|g| g.chars().count() > 64) {
                Err("a component group is longer than 64 characters".into())
            } else if groups.iter().any(|g| g.split('^').count() > 5) {
                Err("more than five name components".into())
            } else if controls(value) {
                Err("contains control characters".into())
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Month 1–12 and day 1–31 (leap years are not worth a calendar dependency here).
fn chrono_like_date(value: &str) -> bool {
    let month: u32 = value[4..6].parse().unwrap_or(0);
    let day: u32 = value[6..8].parse().unwrap_or(0);
    (1..=12).contains(&month) && (1..=31).contains(&day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_by_vr() {
        assert!(check(VR::DA, "20240131").is_ok());
        assert!(check(VR::DA, "20240131 ").is_ok());
        assert!(check(VR::DA, "NotAValidDate").is_err());
        assert!(check(VR::DA, "20241301").is_err());
        assert!(check(VR::CS, "MR").is_ok());
        assert!(check(VR::CS, "mr").is_err());
        assert!(check(VR::SH, &"x".repeat(17)).is_err());
        assert!(check(VR::LO, &"x".repeat(64)).is_ok());
        assert!(check(VR::PN, "Doe^John^^^").is_ok());
        assert!(check(VR::PN, "a^b^c^d^e^f").is_err());
        assert!(check(VR::LO, "ID1\\ID2").is_ok());
    }
}
