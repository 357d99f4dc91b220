//! Background workers that keep the index and the blobs consistent.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::DicomService;

/// Removes the blobs of deleted instances once their `DeleteDelay` has passed (orig A.5), with
/// the original's retry rules. Rows are claimed under a lease, so several processes can run it.
#[derive(Clone, Debug)]
pub struct DeletedInstanceCleanup {
    /// Sleep between rounds.
    pub polling_interval: Duration,
    /// Rows per claim.
    pub batch_size: u32,
    /// Failed attempts after which a row is left for an operator.
    pub max_retries: u32,
    /// Wait before a retry.
    pub retry_back_off: Duration,
}

/// How long a claimed removal is reserved for the worker that claimed it.
const REMOVAL_LEASE: Duration = Duration::from_secs(300);

impl DeletedInstanceCleanup {
    /// Runs until `stop` (a claimed batch is finished first, so its lease does not linger).
    pub async fn run(self, service: DicomService, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.polling_interval) => {}
            }
            if let Err(error) = self.round(&service, &stop).await {
                tracing::warn!(%error, "deleted-instance cleanup round failed; retrying next interval");
            }
        }
    }

    /// One round: claims and removes due rows until fewer than a batch remain or `stop`.
    /// Returns how many were removed.
    pub async fn round(
        &self,
        service: &DicomService,
        stop: &CancellationToken,
    ) -> Result<usize, crate::ServiceError> {
        let mut removed = 0;
        while !stop.is_cancelled() {
            let claimed = service
                .index
                .claim_due_removals(self.max_retries, self.batch_size, REMOVAL_LEASE)
                .await?;
            for row in &claimed {
                let watermark = row.instance.watermark();
                match service.blobs.delete_instance(&row.instance).await {
                    Ok(()) => {
                        service.index.finish_removal(watermark).await?;
                        removed += 1;
                        metrics::counter!(crate::metrics::CLEANUP_REMOVALS, "outcome" => "removed")
                            .increment(1);
                    }
                    Err(error) => {
                        let retries = service
                            .index
                            .fail_removal(watermark, self.retry_back_off)
                            .await?;
                        metrics::counter!(crate::metrics::CLEANUP_REMOVALS, "outcome" => "failed")
                            .increment(1);
                        if retries > self.max_retries {
                            tracing::error!(%watermark, %error, retries, "giving up removing the blobs of a deleted instance");
                        } else {
                            tracing::warn!(%watermark, %error, retries, "could not remove the blobs of a deleted instance");
                        }
                    }
                }
            }
            if claimed.len() < self.batch_size as usize {
                break;
            }
        }
        Ok(removed)
    }
}

/// Sweeps what crashed stores leave: reservations stuck in `Creating` past a timeout that no
/// registered process owns (their blobs are queued for removal; a dead process's reservations
/// are freed sooner, see [`crate::ProcessHeartbeat`]) and staging blobs of uploads that never
/// finished.
#[derive(Clone, Debug)]
pub struct StaleStoreSweeper {
    /// A store older than this is considered dead.
    pub timeout: Duration,
    /// Sleep between sweeps.
    pub interval: Duration,
}

impl StaleStoreSweeper {
    /// Runs until `stop`, starting with a sweep.
    pub async fn run(self, service: DicomService, stop: CancellationToken) {
        loop {
            if let Err(error) = self.sweep(&service).await {
                tracing::warn!(%error, "sweep failed; retrying next interval");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// One sweep; returns how many reservations and staging blobs it removed.
    pub async fn sweep(&self, service: &DicomService) -> Result<usize, crate::ServiceError> {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(self.timeout).unwrap_or(chrono::Duration::MAX);
        let mut swept = 0;
        for watermark in service.index.stale_creating(cutoff).await? {
            tracing::warn!(%watermark, "abandoning a store that did not finish");
            service.abandon(watermark).await?;
            swept += 1;
        }
        let containers = service.blobs.containers();
        for store in [&containers.files, &containers.metadata] {
            swept += store.sweep_staging(cutoff).await?;
        }
        Ok(swept)
    }
}
