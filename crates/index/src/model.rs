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
    /// Where the frames of native pixel data lie; `None` for encapsulated or no pixel data.
    pub native_frames: Option<NativeFrames>,
}

/// The frames of native pixel data follow each other, all of one length, so three numbers
/// locate every one of them: kept in the index, they spare a store its frame-range blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NativeFrames {
    /// Offset of the first frame in the file.
    pub offset: u64,
    /// Length of each frame in bytes.
    pub length: u64,
    /// Number of frames.
    pub count: u64,
}

impl NativeFrames {
    /// `count` frames of `length` bytes from `offset`, if they fit in a pixel data value of
    /// `value_length` bytes.
    pub fn fitting(offset: u64, length: u64, count: u64, value_length: u64) -> Option<Self> {
        let fits = length
            .checked_mul(count)
            .is_some_and(|total| total <= value_length);
        (length > 0 && count > 0 && fits).then_some(Self {
            offset,
            length,
            count,
        })
    }

    /// Offset and length of the frame at 0-based `index`, if there is one.
    pub fn frame(&self, index: u64) -> Option<(u64, u64)> {
        if index >= self.count {
            return None;
        }
        let offset = index
            .checked_mul(self.length)
            .and_then(|start| start.checked_add(self.offset))?;
        Some((offset, self.length))
    }
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
    /// Where the frames of native pixel data lie, when recorded in the index.
    pub native_frames: Option<NativeFrames>,
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

#[cfg(test)]
mod tests {
    use super::NativeFrames;

    #[test]
    fn native_frames_fit_their_value_and_locate_each_frame() {
        assert_eq!(NativeFrames::fitting(100, 10, 3, 29), None);
        assert_eq!(NativeFrames::fitting(100, 0, 3, 30), None);
        assert_eq!(NativeFrames::fitting(100, u64::MAX, 2, u64::MAX), None);
        let frames = NativeFrames::fitting(100, 10, 3, 30).unwrap();
        assert_eq!(frames.frame(0), Some((100, 10)));
        assert_eq!(frames.frame(2), Some((120, 10)));
        assert_eq!(frames.frame(3), None);
    }
}
