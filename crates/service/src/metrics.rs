//! Names of the metrics the use cases record (through the `metrics` facade; a no-op until the
//! server installs a recorder).

/// Instances stored (marked `Created`).
pub const INSTANCES_STORED: &str = "tessera_instances_stored_total";
/// Bytes of the instances stored (their Part-10 length).
pub const BYTES_STORED: &str = "tessera_stored_bytes_total";
/// Bytes handed to WADO responses, by `kind` (`file`, `frame`, `metadata`).
pub const BYTES_SERVED: &str = "tessera_served_bytes_total";
/// Blobs of deleted instances removed by the cleanup worker, by `outcome` (`removed`, `failed`).
pub const CLEANUP_REMOVALS: &str = "tessera_deleted_instance_cleanup_total";
