//! The configuration keys, spelled as documented (lookups ignore case).

/// Address the HTTP server listens on.
pub const LISTEN: &str = "Tessera:Listen";
/// Index database URL.
pub const INDEX: &str = "Tessera:Index";
/// Blob store URL.
pub const BLOB_STORE: &str = "Tessera:BlobStore";
/// Old-name read fallback in FormatType New.
pub const READ_FALLBACK: &str = "Tessera:ReadFallback";
/// A store still `Creating` after this long is considered crashed and swept.
pub const STALE_STORE_TIMEOUT: &str = "Tessera:StaleStoreTimeout";
/// Time between sweeps for crashed stores.
pub const SWEEP_INTERVAL: &str = "Tessera:SweepInterval";
/// How long a process holds a background operation without renewing its lease; after a crash,
/// another process (or the restarted one) resumes the operation once this has passed.
pub const OPERATION_LEASE: &str = "Tessera:OperationLease";

/// Blob format: Old, Dual or New.
pub const FORMAT_TYPE: &str = "DicomServer:Services:BlobMigration:FormatType";
/// Start the copy at start-up.
pub const START_COPY: &str = "DicomServer:Services:BlobMigration:StartCopy";
/// Start delete-old at start-up.
pub const START_DELETE: &str = "DicomServer:Services:BlobMigration:StartDelete";
/// Log each use of an Old name.
pub const LOG_OLD_FORMAT_USAGE: &str = "DicomServer:Services:BlobMigration:LogOldFormatUsage";
/// Copy operation id: the property's name first, then the documented spelling.
pub const COPY_OPERATION_ID: &[&str] = &[
    "DicomServer:Services:BlobMigration:CopyOperationId",
    "DicomServer:Services:BlobMigration:CopyFileOperationId",
];
/// Delete-old operation id, both spellings.
pub const DELETE_OPERATION_ID: &[&str] = &[
    "DicomServer:Services:BlobMigration:DeleteOperationId",
    "DicomServer:Services:BlobMigration:DeleteFileOperationId",
];
/// Cleanup-deleted operation id, both spellings.
pub const CLEANUP_DELETED_OPERATION_ID: &[&str] = &[
    "DicomServer:Services:BlobMigration:CleanupDeletedOperationId",
    "DicomServer:Services:BlobMigration:CleanupDeletedFileOperationId",
];
/// Start of the window of deleted instances whose Old blobs are cleaned up.
pub const CLEANUP_FILTER_TIMESTAMP: &str =
    "DicomServer:Services:BlobMigration:CleanupFilterTimeStamp";

/// Delay between a delete and the removal of its blobs.
pub const DELETE_DELAY: &str = "DicomServer:Services:DeletedInstanceCleanup:DeleteDelay";
/// Retries of a failed blob removal.
pub const MAX_RETRIES: &str = "DicomServer:Services:DeletedInstanceCleanup:MaxRetries";
/// Wait before a retry.
pub const RETRY_BACK_OFF: &str = "DicomServer:Services:DeletedInstanceCleanup:RetryBackOff";
/// Sleep between cleanup rounds.
pub const POLLING_INTERVAL: &str = "DicomServer:Services:DeletedInstanceCleanup:PollingInterval";
/// Rows per cleanup round.
pub const CLEANUP_BATCH_SIZE: &str = "DicomServer:Services:DeletedInstanceCleanup:BatchSize";

/// Copy batch size.
pub const COPY_BATCH_SIZE: &str = "DicomFunctions:Copy:Batching:Size";
/// Copy batches per round.
pub const COPY_MAX_PARALLEL_COUNT: &str = "DicomFunctions:Copy:Batching:MaxParallelCount";
/// Delete-old batch size.
pub const DELETION_BATCH_SIZE: &str = "DicomFunctions:MigrationDeletion:Batching:Size";
/// Delete-old batches per round.
pub const DELETION_MAX_PARALLEL_COUNT: &str =
    "DicomFunctions:MigrationDeletion:Batching:MaxParallelCount";
/// Cleanup-deleted batch size.
pub const CLEANUP_DELETED_BATCH_SIZE: &str = "DicomFunctions:CleanupDeleted:Batching:Size";
/// Cleanup-deleted batches per round.
pub const CLEANUP_DELETED_MAX_PARALLEL_COUNT: &str =
    "DicomFunctions:CleanupDeleted:Batching:MaxParallelCount";
/// Instances worked on at once within a batch.
pub const MAX_PARALLEL_THREADS: &str = "DicomFunctions:BlobMigration:MaxParallelThreads";

/// File container name.
pub const FILE_CONTAINER: &str = "DicomWeb:DicomStore:ContainerName";
/// Metadata container name.
pub const METADATA_CONTAINER: &str = "DicomWeb:MetadataStore:ContainerName";
/// Azure Storage connection string.
pub const BLOB_CONNECTION_STRING: &str = "BlobStore:ConnectionString";

/// How long a graceful shutdown (SIGTERM, Ctrl-C) lets requests in flight and background work
/// finish before failing them.
pub const SHUTDOWN_TIMEOUT: &str = "Tessera:ShutdownTimeout";
/// How long a process counts as alive in the index without renewing its registration; after
/// that, other processes free the reservations of its unfinished stores.
pub const PROCESS_LEASE: &str = "Tessera:ProcessLease";
