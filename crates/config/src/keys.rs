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
/// Threads that run the server's async tasks (requests, background work); blocking file I/O and
/// the index's connections have threads of their own besides.
pub const WORKER_THREADS: &str = "Tessera:WorkerThreads";
/// Run the server's threads under Linux's `SCHED_BATCH` policy (a woken thread does not
/// preempt the one that woke it).
pub const BATCH_SCHEDULING: &str = "Tessera:BatchScheduling";
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

/// Bytes of one request body.
pub const MAX_REQUEST_BODY_BYTES: &str = "Tessera:Limits:MaxRequestBodyBytes";
/// Bytes of a DICOM header (everything before Pixel Data).
pub const MAX_HEADER_BYTES: &str = "Tessera:Limits:MaxHeaderBytes";
/// Nesting depth of sequences.
pub const MAX_SEQUENCE_DEPTH: &str = "Tessera:Limits:MaxSequenceDepth";
/// Bytes a deflated data set may inflate to.
pub const MAX_INFLATED_BYTES: &str = "Tessera:Limits:MaxInflatedBytes";
/// Parts of one multipart request.
pub const MAX_PARTS: &str = "Tessera:Limits:MaxParts";
/// Bytes of one part's headers.
pub const MAX_PART_HEADER_BYTES: &str = "Tessera:Limits:MaxPartHeaderBytes";
/// Bytes before the first multipart boundary.
pub const MAX_PREAMBLE_BYTES: &str = "Tessera:Limits:MaxPreambleBytes";
/// Distinct frames of one frames request.
pub const MAX_FRAMES_PER_REQUEST: &str = "Tessera:Limits:MaxFramesPerRequest";
/// Parameters of one QIDO request.
pub const MAX_QUERY_PARAMETERS: &str = "Tessera:Limits:MaxQueryParameters";
/// UIDs of one UID-list match.
pub const MAX_UID_LIST_LENGTH: &str = "Tessera:Limits:MaxUidListLength";
/// Words of a fuzzy person-name match.
pub const MAX_FUZZY_NAME_WORDS: &str = "Tessera:Limits:MaxFuzzyNameWords";
/// STOW requests served at once.
pub const MAX_CONCURRENT_UPLOADS: &str = "Tessera:Limits:MaxConcurrentUploads";
/// Time to receive a request's headers.
pub const REQUEST_HEADER_TIMEOUT: &str = "Tessera:Limits:RequestHeaderTimeout";
/// Time a request body may send nothing.
pub const BODY_READ_TIMEOUT: &str = "Tessera:Limits:BodyReadTimeout";
/// Time an idle keep-alive connection stays open.
pub const KEEP_ALIVE_TIMEOUT: &str = "Tessera:Limits:KeepAliveTimeout";
/// Bytes of an instance (stored, and decoded) that rendering or transcoding may hold in memory.
pub const MAX_DECODE_BYTES: &str = "Tessera:Limits:MaxDecodeBytes";
/// Base URL of RetrieveURL and Location (`https://pacs.example.org/dicom`).
pub const PUBLIC_BASE_URL: &str = "Tessera:PublicBaseUrl";
/// Trust `Host`, `X-Forwarded-Host` and `X-Forwarded-Proto` for RetrieveURL.
pub const TRUST_FORWARDED_HEADERS: &str = "Tessera:TrustForwardedHeaders";

/// Fault injection (tests only): fraction of blob-store calls that fail, 0 to 1.
pub const FAULT_FAILURE_RATE: &str = "Tessera:FaultInjection:FailureRate";
/// Fault injection: each blob-store call waits a random time up to this long.
pub const FAULT_LATENCY: &str = "Tessera:FaultInjection:Latency";
/// Fault injection: fraction of blob reads whose stream breaks at a random byte, 0 to 1.
pub const FAULT_CUT_STREAM_RATE: &str = "Tessera:FaultInjection:CutStreamRate";
/// Fault injection: seed of the fault sequence.
pub const FAULT_SEED: &str = "Tessera:FaultInjection:Seed";
/// Whether bearer tokens protect the API (the original's switch; off by default).
pub const SECURITY_ENABLED: &str = "DicomServer:Security:Enabled";
/// The OpenID Connect authority whose tokens are accepted.
pub const AUTHORITY: &str = "DicomServer:Security:Authentication:Authority";
/// The audience a token must be issued for.
pub const AUDIENCE: &str = "DicomServer:Security:Authentication:Audience";
/// More accepted audiences (a list: `Audiences:0`, `Audiences:1`, …).
pub const AUDIENCES: &str = "DicomServer:Security:Authentication:Audiences";
/// Whether roles decide what a valid token may do.
pub const AUTHORIZATION_ENABLED: &str = "DicomServer:Security:Authorization:Enabled";
/// The token claim that lists the caller's roles.
pub const ROLES_CLAIM: &str = "DicomServer:Security:Authorization:RolesClaim";
/// The `roles.json` defining the roles (the original read it beside the binary).
pub const ROLES_FILE: &str = "Tessera:Security:RolesFile";
/// Least time between two fetches of the authority's keys caused by an unknown key id.
pub const KEY_REFRESH_INTERVAL: &str = "Tessera:Security:KeyRefreshInterval";
/// One audit line per DICOMweb request on the `tessera::audit` log target.
pub const AUDIT_LOG: &str = "Tessera:Security:AuditLog";
/// How long a graceful shutdown (SIGTERM, Ctrl-C) lets requests in flight and background work
/// finish before failing them.
pub const SHUTDOWN_TIMEOUT: &str = "Tessera:ShutdownTimeout";
/// How long a process counts as alive in the index without renewing its registration; after
/// that, other processes free the reservations of its unfinished stores.
pub const PROCESS_LEASE: &str = "Tessera:ProcessLease";
/// Origins allowed to call from a browser (a list: `Origins:0`, …; `*` for any). CORS is off
/// while it is empty, as in the original.
pub const CORS_ORIGINS: &str = "DicomServer:Cors:Origins";
/// Request headers a preflight allows besides `Accept`, `Authorization` and `Content-Type` (a list).
pub const CORS_HEADERS: &str = "DicomServer:Cors:Headers";
/// Methods a preflight allows (a list; default GET, HEAD, POST, PUT, DELETE).
pub const CORS_METHODS: &str = "DicomServer:Cors:Methods";
/// Seconds a browser may cache a preflight's answer.
pub const CORS_MAX_AGE: &str = "DicomServer:Cors:MaxAge";
/// Whether browsers may send credentials (cookies, `Authorization`) cross-origin.
pub const CORS_ALLOW_CREDENTIALS: &str = "DicomServer:Cors:AllowCredentials";
