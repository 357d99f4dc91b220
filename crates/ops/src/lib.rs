//! Tessera's durable background operations: the blob migration of contract §6.
//!
//! - **copy** (`copy`): every live instance's file and metadata get their New names, by a
//!   create-only copy from the Old names, and the New blobs are verified against the length and
//!   checksum in the index. Walks watermarks from the highest down, then a catch-up pass covers
//!   instances stored (or completed) after the walk began.
//! - **delete-old** (`migrationDeletion`): an instance loses its Old file and metadata only after
//!   its New blobs verify; failures are recorded, skipped, and retried alone on resume.
//! - **cleanup-deleted** (`cleanupDeleted`): Old blobs of instances deleted since a timestamp,
//!   found through the change feed.
//!
//! Each operation lives in the index under its fixed id with a checkpoint, results and a lease:
//! one process runs it, renewing the lease; when that process dies, another (or the same after a
//! restart) takes it over once the lease expires and resumes from the last checkpoint.

mod adopt;
mod migration;
mod runner;
mod triggers;

pub use adopt::{ADOPTION_OPERATION_ID, AdoptionReport, adopt};
pub use migration::{Verification, verify_new_blobs};
pub use runner::{OperationContext, OperationKind, RoundSizes, RunOutcome};
pub use triggers::{MigrationSettings, start_configured_operations};

/// What stops an operation (the per-instance failures are results, not errors).
#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    /// The index failed.
    #[error(transparent)]
    Index(#[from] tessera_index::IndexError),
    /// The blob store failed (listing, or a write adoption needed).
    #[error(transparent)]
    Blob(#[from] tessera_blob::BlobError),
    /// Another process holds the operation.
    #[error("the operation is running in another process")]
    HeldElsewhere,
    /// Another process took the operation over (this one's lease expired).
    #[error("the operation's lease was lost to another process")]
    LeaseLost,
    /// The process is shutting down ([`OperationContext::stop`]).
    #[error("the operation was interrupted by a shutdown")]
    Interrupted,
}
