//! Tessera's domain types, shared by every other crate and free of IO.
//!
//! The types here are the vocabulary of the blob layout and the index: a [`Uid`] is a DICOM unique
//! identifier that has been checked (PS3.5 §9.1, with the original server's tolerances), a
//! [`Watermark`] is the 64-bit version every stored instance gets, and a [`VersionedInstance`]
//! ties the two together. Because a [`Uid`] can only be built by [`Uid::parse`], no unchecked
//! string can reach a blob name.
//!
//! ```
//! use tessera_core::{Uid, Watermark, VersionedInstance, InstanceIdentifier};
//!
//! let id = InstanceIdentifier::parse("1.2.3", "1.2.3.4", "1.2.3.4.5")?;
//! let instance = VersionedInstance::new(id, Watermark::new(42)?);
//! assert_eq!(instance.watermark().get(), 42);
//! assert!(Uid::parse("../x").is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod attributes;
mod checksum;
mod format;
mod instance;
mod limits;
mod qido;
mod uid;
mod watermark;

pub use attributes::SearchableAttributes;
pub use checksum::ContentChecksum;
pub use format::{FormatType, ParseFormatTypeError};
pub use instance::{InstanceIdentifier, VersionedInstance};
pub use limits::Limits;
pub use qido::{
    Matcher, QidoFields, QidoQuery, QueryAttribute, QueryLevel, fold_person_name,
    person_name_search_forms,
};
pub use uid::{Uid, UidError};
pub use watermark::{Watermark, WatermarkError};
