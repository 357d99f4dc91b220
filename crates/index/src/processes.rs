//! The processes serving from this index, and the reservations they own.
//!
//! A store's `Creating` row records the process that made it. A process registers when it
//! starts, renews a lease while it runs and unregisters when it shuts down gracefully. A
//! reservation is **dead** when its owner is no longer registered or its lease expired; a dead
//! reservation never blocks a store (it is taken over, see [`InstanceIndex::begin_create`]),
//! and a live one is never taken over. Whether a process on this machine is still running is
//! for the caller to tell (it knows the operating system); the index only records what it needs
//! to (host, pid, start time) and forgets a process on request, abandoning its reservations.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::rows::{DeletedRow, ProcessRow};
use crate::{CREATING, IndexError, InstanceIndex, Result, Tx, micros, micros_after};

/// A process's identity as a reservation owner: a random id, fresh for every start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessId(uuid::Uuid);

impl ProcessId {
    /// A new random id.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// Parses the stored form (32 hex digits).
    pub fn parse(text: &str) -> Result<Self> {
        uuid::Uuid::try_parse(text)
            .map(Self)
            .map_err(|_| IndexError::Corrupt(format!("process id '{text}'")))
    }
}

impl std::fmt::Display for ProcessId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.simple())
    }
}

/// What a process records about itself when it registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Its id.
    pub id: ProcessId,
    /// Host name, for operators.
    pub host: String,
    /// Processes with the same key (same kernel boot and pid namespace) can check each other's
    /// pid; `None` where the platform gives no such key.
    pub local_key: Option<String>,
    /// Operating-system process id.
    pub pid: u32,
    /// When the operating system started the process (clock ticks since boot on Linux): a pid
    /// reused by another process has another start time.
    pub start_ticks: Option<u64>,
}

/// Tells whether a registered process is known to be gone (its pid on this machine no longer
/// runs it): the index knows no operating system, its caller does. Consulted by
/// [`InstanceIndex::begin_create`] when a live-leased owner's reservation is in the way.
#[derive(Clone)]
pub struct GoneProbe(Arc<dyn Fn(&ProcessInfo) -> bool + Send + Sync>);

impl GoneProbe {
    /// A probe answering with `gone`.
    pub fn new(gone: impl Fn(&ProcessInfo) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(gone))
    }

    pub(crate) fn is_gone(&self, process: &ProcessInfo) -> bool {
        (self.0)(process)
    }
}

impl std::fmt::Debug for GoneProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GoneProbe")
    }
}

/// A registered process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisteredProcess {
    /// What it recorded.
    pub info: ProcessInfo,
    /// When it registered.
    pub started_at: DateTime<Utc>,
    /// Until when it counts as alive without renewing.
    pub lease_expires: DateTime<Utc>,
}

fn until(lease: Duration) -> i64 {
    micros_after(lease)
}

impl InstanceIndex {
    /// This handle, recording `owner` as the owner of every reservation it makes.
    pub fn with_owner(mut self, owner: ProcessId) -> Self {
        self.owner = Some(owner);
        self
    }

    /// This handle, asking `probe` whether the owner of a reservation in its way is gone.
    pub fn with_gone_probe(mut self, probe: GoneProbe) -> Self {
        self.gone = Some(probe);
        self
    }

    /// The owner recorded on reservations made through this handle, if any.
    pub fn owner(&self) -> Option<ProcessId> {
        self.owner
    }

    /// Registers a process as alive for `lease` (replacing an earlier registration of its id).
    pub async fn register_process(&self, info: &ProcessInfo, lease: Duration) -> Result<()> {
        sqlx::query(
            "INSERT INTO processes (owner_id, host, local_key, pid, start_ticks, started_at, lease_expires)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (owner_id) DO UPDATE SET lease_expires = excluded.lease_expires",
        )
        .bind(info.id.to_string())
        .bind(info.host.clone())
        .bind(info.local_key.clone())
        .bind(i64::from(info.pid))
        .bind(info.start_ticks.map(crate::rows::to_db).transpose()?)
        .bind(micros(Utc::now()))
        .bind(until(lease))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Extends a process's lease. False when it is no longer registered (another process
    /// declared it dead and abandoned its reservations): it must register again.
    pub async fn renew_process(&self, id: ProcessId, lease: Duration) -> Result<bool> {
        let updated = sqlx::query("UPDATE processes SET lease_expires = $1 WHERE owner_id = $2")
            .bind(until(lease))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Every registered process.
    pub async fn processes(&self) -> Result<Vec<RegisteredProcess>> {
        let rows: Vec<ProcessRow> = sqlx::query_as(
            "SELECT owner_id, host, local_key, pid, start_ticks, started_at, lease_expires FROM processes
             ORDER BY started_at",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(ProcessRow::into_registered).collect()
    }

    /// Forgets a process (it shut down, or is known to be dead) and abandons its reservations
    /// in the same transaction: their rows go and their blobs are queued for removal; the blob
    /// removals it had claimed are due again at once. Returns how many reservations were
    /// abandoned.
    pub async fn unregister_process(&self, id: ProcessId) -> Result<usize> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM processes WHERE owner_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        let abandoned = abandon_reservations_of(&mut tx, id).await?;
        tx.commit().await?;
        Ok(abandoned)
    }

    /// Unregisters every process whose lease expired before `now` (see
    /// [`Self::unregister_process`]). Returns the ids it forgot: each expired process is
    /// forgotten by one caller, whichever process takes its row first.
    pub async fn reap_expired_processes(&self, now: DateTime<Utc>) -> Result<Vec<ProcessId>> {
        let expired: Vec<String> =
            sqlx::query_scalar("SELECT owner_id FROM processes WHERE lease_expires < $1")
                .bind(micros(now))
                .fetch_all(&self.pool)
                .await?;
        let mut reaped = Vec::with_capacity(expired.len());
        for owner in expired {
            let id = ProcessId::parse(&owner)?;
            let mut tx = self.begin().await?;
            // Taken only if it is still there and still expired (not renewed meanwhile, not
            // reaped by another process).
            let taken: Option<String> = sqlx::query_scalar(
                "DELETE FROM processes WHERE owner_id = $1 AND lease_expires < $2 RETURNING owner_id",
            )
            .bind(owner)
            .bind(micros(now))
            .fetch_optional(&mut *tx)
            .await?;
            if taken.is_none() {
                tx.rollback().await?;
                continue;
            }
            let abandoned = abandon_reservations_of(&mut tx, id).await?;
            tx.commit().await?;
            tracing::warn!(owner = %id, abandoned, "a process's lease expired; its reservations were abandoned");
            reaped.push(id);
        }
        Ok(reaped)
    }

    /// Abandons the reservations whose owner is not registered (a process that died and was
    /// forgotten before its rows were, or rows of a process that never registered), and makes
    /// the blob removals such processes had claimed due again. Returns how many reservations.
    pub async fn abandon_orphaned_reservations(&self) -> Result<usize> {
        let now = micros(Utc::now());
        let mut tx = self.begin().await?;
        let orphaned = "status = $1 AND owner_id IS NOT NULL AND owner_id NOT IN (SELECT owner_id FROM processes)";
        let studies = lock_studies_where(&mut tx, orphaned, None).await?;
        let removed: Vec<DeletedRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "DELETE FROM instances WHERE {orphaned} RETURNING study_uid, series_uid, sop_uid, watermark, status"
        )))
        .bind(CREATING)
        .fetch_all(&mut *tx)
        .await?;
        for row in &removed {
            crate::queue_blob_removal(&mut tx, row.watermark, &row.uids, now, now).await?;
        }
        sqlx::query(
            "UPDATE deleted_instances SET cleanup_after = $1, claimed_by = NULL
             WHERE claimed_by IS NOT NULL AND claimed_by NOT IN (SELECT owner_id FROM processes)",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for study in &studies {
            crate::remove_empty_parents(&mut tx, study).await?;
        }
        tx.commit().await?;
        Ok(removed.len())
    }
}

/// Locks (in UID order) the studies of the `Creating` rows matching `condition` (binds: `$1`
/// `CREATING`, `$2` `owner` when given) and returns them: the study before its instances, as
/// every transaction that adds or removes instances does.
async fn lock_studies_where(
    tx: &mut Tx<'_>,
    condition: &str,
    owner: Option<ProcessId>,
) -> Result<Vec<String>> {
    let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
        "SELECT DISTINCT study_uid FROM instances WHERE {condition} ORDER BY study_uid"
    )))
    .bind(CREATING);
    if let Some(owner) = owner {
        query = query.bind(owner.to_string());
    }
    let studies = query.fetch_all(&mut **tx).await?;
    for study in &studies {
        crate::lock_study(tx, study).await?;
    }
    Ok(studies)
}

/// Abandons the reservations of process `id` (rows removed, blobs queued now) and makes the
/// removals it had claimed due again. Returns how many reservations.
async fn abandon_reservations_of(tx: &mut Tx<'_>, id: ProcessId) -> Result<usize> {
    let now = micros(Utc::now());
    let owned = "status = $1 AND owner_id = $2";
    let studies = lock_studies_where(tx, owned, Some(id)).await?;
    let removed: Vec<DeletedRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "DELETE FROM instances WHERE {owned} RETURNING study_uid, series_uid, sop_uid, watermark, status"
    )))
    .bind(CREATING)
    .bind(id.to_string())
    .fetch_all(&mut **tx)
    .await?;
    for row in &removed {
        crate::queue_blob_removal(tx, row.watermark, &row.uids, now, now).await?;
    }
    sqlx::query(
        "UPDATE deleted_instances SET cleanup_after = $1, claimed_by = NULL WHERE claimed_by = $2",
    )
    .bind(now)
    .bind(id.to_string())
    .execute(&mut **tx)
    .await?;
    for study in &studies {
        crate::remove_empty_parents(tx, study).await?;
    }
    Ok(removed.len())
}
