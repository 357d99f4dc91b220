//! The rows the index hands out and takes in.

use chrono::{DateTime, Utc};
use tessera_core::{InstanceIdentifier, SearchableAttributes, Uid, VersionedInstance, Watermark};

/// What a store records when it reserves an instance.
#[derive(Clone, Debug)]
pub struct NewInstance {
    /// The instance's UIDs.
    pub id: InstanceIdentifier,
    /// Transfer syntax of the stored file.
    pub transfer_syntax: String,
    /// Searchable attributes.
    pub attributes: SearchableAttributes,
}

/// A `Created` instance as the index knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredInstance {
    /// UIDs and watermark.
    pub instance: VersionedInstance,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// Transfer syntax of the stored file.
    pub transfer_syntax: String,
    /// Length of the stored file, when recorded.
    pub content_length: Option<u64>,
    /// Checksum of the stored file (`xxh3-128:<hex>`), when recorded.
    pub checksum: Option<String>,
    /// Whether a frame-range blob exists.
    pub has_frame_ranges: bool,
}

/// Which instances a retrieve or delete addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetrieveScope {
    /// All instances of a study.
    Study(Uid),
    /// All instances of a series.
    Series(Uid, Uid),
    /// One instance.
    Instance(InstanceIdentifier),
}

impl RetrieveScope {
    /// The study the scope lies in.
    pub fn study(&self) -> &Uid {
        match self {
            Self::Study(study) | Self::Series(study, _) => study,
            Self::Instance(id) => &id.study,
        }
    }

    /// The SQL condition and its values, with placeholders numbered from `first`.
    pub(crate) fn clause(&self, first: usize) -> (String, Vec<String>) {
        let uids: Vec<String> = match self {
            Self::Study(study) => vec![study.to_string()],
            Self::Series(study, series) => vec![study.to_string(), series.to_string()],
            Self::Instance(id) => vec![
                id.study.to_string(),
                id.series.to_string(),
                id.sop.to_string(),
            ],
        };
        let clause = ["study_uid", "series_uid", "sop_uid"]
            .iter()
            .zip(first..)
            .take(uids.len())
            .map(|(column, n)| format!("{column} = ${n}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        (clause, uids)
    }
}

/// A queued blob removal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletedInstance {
    /// The deleted instance's UIDs and watermark (its blob names).
    pub instance: VersionedInstance,
    /// Failed attempts so far.
    pub retry_count: u32,
}

/// What a change-feed row records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i16)]
pub enum ChangeAction {
    /// An instance was stored.
    Create = 0,
    /// An instance was deleted.
    Delete = 1,
}

/// Whether the instance of a change-feed row still exists in that version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeState {
    /// The row's version is the current one.
    Current,
    /// A newer version exists.
    Replaced,
    /// The instance is deleted.
    Deleted,
}

/// One change-feed row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeFeedEntry {
    /// Position in the feed.
    pub sequence: i64,
    /// When it happened.
    pub timestamp: DateTime<Utc>,
    /// Store or delete.
    pub action: ChangeAction,
    /// UIDs and the watermark at the time of the event.
    pub instance: VersionedInstance,
    /// Current, replaced or deleted.
    pub state: ChangeState,
    /// The instance's current watermark, when it still exists.
    pub current_watermark: Option<Watermark>,
}
