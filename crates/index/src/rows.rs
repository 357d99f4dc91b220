//! Rows as the database returns them, read by column name, and their checked conversion into
//! the domain types: a value that does not fit is [`IndexError::Corrupt`], never a default.

use tessera_core::{InstanceIdentifier, Uid, VersionedInstance, Watermark};

use crate::processes::{ProcessId, ProcessInfo, RegisteredProcess};
use crate::{
    ChangeAction, ChangeFeedEntry, ChangeState, DeletedInstance, IndexError, NativeFrames, Result,
    StoredInstance, from_micros,
};

pub(crate) fn watermark(value: i64) -> Result<Watermark> {
    u64::try_from(value)
        .ok()
        .and_then(|v| Watermark::new(v).ok())
        .ok_or_else(|| IndexError::Corrupt(format!("watermark {value}")))
}

pub(crate) fn unsigned(value: i64, what: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| IndexError::Corrupt(format!("{what} {value}")))
}

/// A watermark (or length) from the caller as the index stores it.
pub(crate) fn to_db(value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| IndexError::Corrupt(format!("value {value} out of range")))
}

fn uid(value: &str) -> Result<Uid> {
    Uid::parse(value).map_err(|e| IndexError::Corrupt(e.to_string()))
}

/// An instance's three UIDs.
#[derive(Clone, Debug, sqlx::FromRow)]
pub(crate) struct UidsRow {
    pub study_uid: String,
    pub series_uid: String,
    pub sop_uid: String,
}

impl UidsRow {
    pub(crate) fn versioned(&self, watermark: i64) -> Result<VersionedInstance> {
        let id = InstanceIdentifier {
            study: uid(&self.study_uid)?,
            series: uid(&self.series_uid)?,
            sop: uid(&self.sop_uid)?,
        };
        Ok(VersionedInstance::new(id, self::watermark(watermark)?))
    }
}

/// `INSTANCE_SELECT`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct InstanceRow {
    watermark: i64,
    #[sqlx(flatten)]
    uids: UidsRow,
    sop_class_uid: String,
    transfer_syntax: String,
    content_length: Option<i64>,
    checksum: Option<String>,
    has_frame_ranges: i16,
    native_frame_offset: Option<i64>,
    native_frame_length: Option<i64>,
    native_frame_count: Option<i64>,
}

impl InstanceRow {
    pub(crate) fn into_stored(self) -> Result<StoredInstance> {
        Ok(StoredInstance {
            instance: self.uids.versioned(self.watermark)?,
            sop_class_uid: self.sop_class_uid,
            transfer_syntax: self.transfer_syntax,
            content_length: self
                .content_length
                .map(|v| unsigned(v, "content length"))
                .transpose()?,
            checksum: self.checksum,
            has_frame_ranges: self.has_frame_ranges != 0,
            native_frames: match (
                self.native_frame_offset,
                self.native_frame_length,
                self.native_frame_count,
            ) {
                (Some(offset), Some(length), Some(count)) => Some(NativeFrames {
                    offset: unsigned(offset, "native frame offset")?,
                    length: unsigned(length, "native frame length")?,
                    count: unsigned(count, "native frame count")?,
                }),
                (None, None, None) => None,
                _ => return Err(IndexError::Corrupt("a partial native frame layout".into())),
            },
        })
    }
}

/// An instance row removed by a delete.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DeletedRow {
    #[sqlx(flatten)]
    pub uids: UidsRow,
    pub watermark: i64,
    pub status: i16,
}

/// A claimed blob removal.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RemovalRow {
    watermark: i64,
    #[sqlx(flatten)]
    uids: UidsRow,
    retry_count: i64,
}

impl RemovalRow {
    pub(crate) fn into_deleted(self) -> Result<DeletedInstance> {
        Ok(DeletedInstance {
            instance: self.uids.versioned(self.watermark)?,
            retry_count: u32::try_from(self.retry_count)
                .map_err(|_| IndexError::Corrupt(format!("retry count {}", self.retry_count)))?,
        })
    }
}

/// `CHANGE_FEED_SELECT`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ChangeFeedRow {
    sequence: i64,
    timestamp: i64,
    action: i16,
    #[sqlx(flatten)]
    uids: UidsRow,
    original_watermark: i64,
    current_watermark: Option<i64>,
}

impl ChangeFeedRow {
    pub(crate) fn into_entry(self) -> Result<ChangeFeedEntry> {
        let action = match self.action {
            a if a == ChangeAction::Create as i16 => ChangeAction::Create,
            a if a == ChangeAction::Delete as i16 => ChangeAction::Delete,
            other => return Err(IndexError::Corrupt(format!("change action {other}"))),
        };
        let current = self.current_watermark.map(watermark).transpose()?;
        Ok(ChangeFeedEntry {
            sequence: self.sequence,
            timestamp: from_micros(self.timestamp)?,
            action,
            instance: self.uids.versioned(self.original_watermark)?,
            state: match self.current_watermark {
                None => ChangeState::Deleted,
                Some(current) if current == self.original_watermark => ChangeState::Current,
                Some(_) => ChangeState::Replaced,
            },
            current_watermark: current,
        })
    }
}

/// A registered process (`owner_id, host, local_key, pid, start_ticks, started_at,
/// lease_expires`).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ProcessRow {
    owner_id: String,
    host: String,
    local_key: Option<String>,
    pid: i64,
    start_ticks: Option<i64>,
    started_at: i64,
    lease_expires: i64,
}

impl ProcessRow {
    pub(crate) fn into_registered(self) -> Result<RegisteredProcess> {
        Ok(RegisteredProcess {
            info: ProcessInfo {
                id: ProcessId::parse(&self.owner_id)?,
                host: self.host,
                local_key: self.local_key,
                pid: u32::try_from(self.pid)
                    .map_err(|_| IndexError::Corrupt(format!("pid {}", self.pid)))?,
                start_ticks: self
                    .start_ticks
                    .map(|t| unsigned(t, "start ticks"))
                    .transpose()?,
            },
            started_at: from_micros(self.started_at)?,
            lease_expires: from_micros(self.lease_expires)?,
        })
    }
}

/// An existing instance row in the way of a reservation, with its owner's registration when
/// the owner is registered.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ReservationRow {
    pub status: i16,
    pub watermark: i64,
    pub owner_id: Option<String>,
    registered_id: Option<String>,
    host: Option<String>,
    local_key: Option<String>,
    pid: Option<i64>,
    start_ticks: Option<i64>,
    started_at: Option<i64>,
    lease_expires: Option<i64>,
}

impl ReservationRow {
    /// The owner's registration, if it is registered.
    pub(crate) fn registered(&self) -> Result<Option<RegisteredProcess>> {
        let (Some(owner_id), Some(host), Some(pid), Some(started_at), Some(lease_expires)) = (
            self.registered_id.clone(),
            self.host.clone(),
            self.pid,
            self.started_at,
            self.lease_expires,
        ) else {
            return Ok(None);
        };
        ProcessRow {
            owner_id,
            host,
            local_key: self.local_key.clone(),
            pid,
            start_ticks: self.start_ticks,
            started_at,
            lease_expires,
        }
        .into_registered()
        .map(Some)
    }
}
