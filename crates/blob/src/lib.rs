//! Tessera's blob layer: where an instance's bytes live and under which names.
//!
//! - [`layout`] builds every blob name, Old (`{study}/{series}/{sop}_{W}.dcm`) and New
//!   (`{P}_{W}.dcm`), byte-compatible with the original server (contract §3).
//! - [`BlobStore`] is one container over any `object_store` backend, with create-only writes that
//!   stream, range reads, head and delete-if-exists.
//! - [`BlobStoreLocation`] opens the file and metadata containers of a filesystem, memory, Azure
//!   or S3 store from the `Tessera:BlobStore` URL.
//! - [`FaultInjectingStore`] wraps a backend to fail, delay and cut calls from a seed, so tests
//!   can show Tessera stays correct when the store misbehaves ([`Containers::with_faults`]).
//! - [`metered::MeteredStore`] wraps every backend opened from a location to count its calls,
//!   failures and bytes as metrics.
//! - [`InstanceBlobStore`] applies the FormatType table (contract §4): which names are written,
//!   read (New first, Old fallback) and deleted.
//!
//! This crate is the only one that names `object_store`.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use tessera_blob::{BlobStoreLocation, ContainerNames, FormatPolicy, InstanceBlobStore};
//! use tessera_core::{FormatType, InstanceIdentifier, VersionedInstance, Watermark};
//!
//! let containers = BlobStoreLocation::Memory.open(None, &ContainerNames::default()).await?;
//! let store = InstanceBlobStore::new(containers, FormatPolicy::new(FormatType::Dual));
//! let instance = VersionedInstance::new(InstanceIdentifier::parse("1.2", "1.2.3", "1.2.3.4")?, Watermark::new(1)?);
//! let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"DICM"))]);
//! assert_eq!(store.put_file(&instance, body).await?, 4);
//! // Dual wrote both names; the New one is read first.
//! assert!(store.containers().files.exists(&"132_1.dcm".into()).await?);
//! assert!(store.containers().files.exists(&"1.2/1.2.3/1.2.3.4_1.dcm".into()).await?);
//! # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
//! ```

pub mod azure;
mod faults;
mod instance_store;
pub mod layout;
#[cfg(target_os = "linux")]
mod local_create;
mod location;
pub mod metered;
mod store;

pub use faults::{FaultInjectingStore, FaultInjection, FaultInjector, FaultTally};
pub use instance_store::{FormatPolicy, InstanceBlobStore};
pub use layout::BlobLayout;
pub use location::{BlobStoreLocation, ContainerNames, Containers, ParseLocationError};
pub use object_store::path::Path as BlobName;
pub use store::{
    BlobMeta, BlobRead, BlobStore, BlobStream, CopyBatch, DEFAULT_PART_SIZE,
    DEFAULT_SINGLE_PUT_LIMIT, MAX_BATCH_BLOBS, StagedBody,
};

/// The error a request body stream may fail with while it is being stored.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// What can go wrong with blobs. Callers map these to HTTP or operation failures; the variants
/// say which case they are in without parsing messages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The blob does not exist.
    #[error("blob '{name}' not found in container '{container}'")]
    NotFound {
        /// Container searched.
        container: String,
        /// Name searched.
        name: String,
    },
    /// A create-only write met an existing blob; the existing blob is untouched.
    #[error("blob '{name}' already exists in container '{container}'")]
    AlreadyExists {
        /// Container written.
        container: String,
        /// Name that exists.
        name: String,
    },
    /// The body being stored failed (a client that hung up, broken multipart); nothing was kept.
    #[error("the body being stored failed: {0}")]
    Body(#[source] BodyError),
    /// A copy did not reach the expected length in time.
    #[error("blob '{name}' in container '{container}' did not reach {expected} bytes after a copy")]
    Incomplete {
        /// Container written.
        container: String,
        /// Name copied to.
        name: String,
        /// Length of the source.
        expected: u64,
    },
    /// The store could not be opened or reached at start-up.
    #[error("cannot open blob store {endpoint}: {reason}")]
    Open {
        /// What was being opened (URL or endpoint; never a secret).
        endpoint: String,
        /// Why it failed.
        reason: String,
    },
    /// Any other failure of the backend, possibly transient.
    #[error("blob store failed on '{name}' in container '{container}': {source}")]
    Store {
        /// Container involved.
        container: String,
        /// Name involved.
        name: String,
        /// The backend's error.
        #[source]
        source: object_store::Error,
    },
}
