//! Where blobs live, from the `Tessera:BlobStore` URL, and opening the two containers there.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3CopyIfNotExists};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;

use crate::azure::AzureConnection;
use crate::faults::{FaultInjection, FaultInjector};
use crate::metered::MeteredStore;
use crate::{BlobError, BlobStore};

/// A blob store backend, as named by a URL: `file://./data/blobs`, `memory://`, `az://`
/// (account and key from `BlobStore:ConnectionString`), or `s3://bucket[/prefix]` (credentials
/// and endpoint from the usual `AWS_*` environment variables).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobStoreLocation {
    /// A folder per container under `root`.
    FileSystem {
        /// The folder that holds the container folders; relative paths are from the current
        /// directory.
        root: PathBuf,
    },
    /// Process memory: for tests and trials, gone at exit.
    Memory,
    /// Azure Blob Storage (or Azurite), one Azure container per Tessera container.
    Azure,
    /// An S3 bucket, one key prefix per Tessera container.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket, if any.
        prefix: Option<String>,
    },
}

/// A `Tessera:BlobStore` value that names no supported backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected file://PATH, memory://, az:// or s3://BUCKET[/PREFIX]")]
pub struct ParseLocationError;

impl FromStr for BlobStoreLocation {
    type Err = ParseLocationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s.trim().split_once("://").ok_or(ParseLocationError)?;
        match scheme.to_ascii_lowercase().as_str() {
            // Not parsed as a URL: `file://./data/blobs` is a relative path, which URLs lack.
            "file" if !rest.is_empty() => Ok(Self::FileSystem { root: rest.into() }),
            "memory" if rest.trim_matches('/').is_empty() => Ok(Self::Memory),
            "az" | "azure" if rest.trim_matches('/').is_empty() => Ok(Self::Azure),
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let prefix = prefix.trim_matches('/');
                if bucket.is_empty() {
                    return Err(ParseLocationError);
                }
                Ok(Self::S3 {
                    bucket: bucket.to_owned(),
                    prefix: (!prefix.is_empty()).then(|| prefix.to_owned()),
                })
            }
            _ => Err(ParseLocationError),
        }
    }
}

impl fmt::Display for BlobStoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FileSystem { root } => write!(f, "file://{}", root.display()),
            Self::Memory => f.write_str("memory://"),
            Self::Azure => f.write_str("az://"),
            Self::S3 {
                bucket,
                prefix: None,
            } => write!(f, "s3://{bucket}"),
            Self::S3 {
                bucket,
                prefix: Some(prefix),
            } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// Names of the two containers (orig A.1 defaults `dicomwebcontainer` and `metadatacontainer`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerNames {
    /// Holds the Part-10 files.
    pub files: String,
    /// Holds metadata JSON and frame-range JSON.
    pub metadata: String,
}

impl Default for ContainerNames {
    fn default() -> Self {
        Self {
            files: "dicomwebcontainer".into(),
            metadata: "metadatacontainer".into(),
        }
    }
}

/// The file container and the metadata container of one blob store.
#[derive(Clone, Debug)]
pub struct Containers {
    /// Part-10 files.
    pub files: BlobStore,
    /// Metadata and frame ranges.
    pub metadata: BlobStore,
}

impl Containers {
    /// Both containers with `injection`'s faults injected into every call, from one shared
    /// sequence; unchanged when it injects nothing. For tests of failure handling only.
    pub fn with_faults(self, injection: &FaultInjection) -> Self {
        if !injection.is_active() {
            return self;
        }
        let faults = FaultInjector::new(injection.clone());
        Self {
            files: self.files.with_faults(faults.clone()),
            metadata: self.metadata.with_faults(faults),
        }
    }
}

impl BlobStoreLocation {
    /// Opens both containers, creating them where the backend needs it, and checks that the
    /// store answers, so that a wrong endpoint stops start-up rather than the first request.
    /// `connection_string` is `BlobStore:ConnectionString`, needed for Azure.
    pub async fn open(
        &self,
        connection_string: Option<&str>,
        names: &ContainerNames,
    ) -> Result<Containers, BlobError> {
        let files = self.open_container(connection_string, &names.files).await?;
        let metadata = self
            .open_container(connection_string, &names.metadata)
            .await?;
        for container in [&files, &metadata] {
            container
                .exists(&"tessera-probe".into())
                .await
                .map_err(|e| BlobError::Open {
                    endpoint: self.to_string(),
                    reason: e.to_string(),
                })?;
        }
        Ok(Containers { files, metadata })
    }

    async fn open_container(
        &self,
        connection_string: Option<&str>,
        container: &str,
    ) -> Result<BlobStore, BlobError> {
        let open_error = |reason: String| BlobError::Open {
            endpoint: self.to_string(),
            reason,
        };
        let inner: Arc<dyn ObjectStore> = match self {
            Self::Memory => Arc::new(InMemory::new()),
            Self::FileSystem { root } => {
                let folder = root.join(container);
                std::fs::create_dir_all(&folder)
                    .map_err(|e| open_error(format!("cannot create {}: {e}", folder.display())))?;
                // Canonical, as `LocalFileSystem` makes its root, so the paths it maps names
                // to lie under it.
                let folder = std::fs::canonicalize(&folder)
                    .map_err(|e| open_error(format!("cannot open {}: {e}", folder.display())))?;
                let store = LocalFileSystem::new_with_prefix(&folder)
                    .map_err(|e| open_error(e.to_string()))?
                    .with_automatic_cleanup(true);
                let backend = self.backend_label();
                let durable = Arc::new(store.clone().with_fsync(true));
                let metered = MeteredStore::new(durable.clone(), backend);
                let unsynced = MeteredStore::new(Arc::new(store), backend);
                return Ok(
                    BlobStore::new(Arc::new(metered), container).with_local_folder(
                        folder,
                        durable,
                        backend,
                        Arc::new(unsynced),
                    ),
                );
            }
            Self::Azure => {
                let connection_string = connection_string
                    .ok_or_else(|| open_error("BlobStore:ConnectionString is not set".into()))?;
                let connection = AzureConnection::parse(connection_string)
                    .map_err(|e| open_error(format!("BlobStore:ConnectionString: {e}")))?;
                connection.ensure_container(container).await?;
                let store = MicrosoftAzureBuilder::new()
                    .with_account(&connection.account)
                    .with_access_key(&connection.key)
                    .with_endpoint(connection.blob_endpoint.clone())
                    .with_allow_http(connection.blob_endpoint.starts_with("http:"))
                    .with_container_name(container)
                    .build()
                    .map_err(|e| BlobError::Open {
                        endpoint: connection.blob_endpoint.clone(),
                        reason: e.to_string(),
                    })?;
                Arc::new(store)
            }
            Self::S3 { bucket, prefix } => {
                // Writes are create-only: puts send `If-None-Match: *` (object_store's default
                // conditional put), and copies, which S3 cannot make conditional, are a
                // one-part multipart upload copying the source and completed with
                // `If-None-Match: *`, unless `AWS_COPY_IF_NOT_EXISTS` names another way
                // (a header some S3-compatible stores take instead).
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if builder
                    .get_config_value(&AmazonS3ConfigKey::CopyIfNotExists)
                    .is_none()
                {
                    builder = builder.with_copy_if_not_exists(S3CopyIfNotExists::Multipart);
                }
                let store = builder.build().map_err(|e| open_error(e.to_string()))?;
                let scope = match prefix {
                    Some(prefix) => format!("{prefix}/{container}"),
                    None => container.to_owned(),
                };
                Arc::new(PrefixStore::new(store, scope))
            }
        };
        let metered = MeteredStore::new(inner, self.backend_label());
        Ok(BlobStore::new(Arc::new(metered), container))
    }

    /// The `backend` label of this store's metrics.
    pub fn backend_label(&self) -> &'static str {
        match self {
            Self::FileSystem { .. } => "filesystem",
            Self::Memory => "memory",
            Self::Azure => "azure",
            Self::S3 { .. } => "s3",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_backend() {
        assert_eq!(
            "file://./data/blobs".parse(),
            Ok(BlobStoreLocation::FileSystem {
                root: "./data/blobs".into()
            })
        );
        assert_eq!(
            "file:///var/lib/tessera".parse(),
            Ok(BlobStoreLocation::FileSystem {
                root: "/var/lib/tessera".into()
            })
        );
        assert_eq!("memory://".parse(), Ok(BlobStoreLocation::Memory));
        assert_eq!("az://".parse(), Ok(BlobStoreLocation::Azure));
        assert_eq!(
            "s3://bucket/some/prefix/".parse(),
            Ok(BlobStoreLocation::S3 {
                bucket: "bucket".into(),
                prefix: Some("some/prefix".into())
            })
        );
        for bad in ["", "file://", "ftp://x", "./data", "s3://", "memory://x"] {
            assert_eq!(
                bad.parse::<BlobStoreLocation>(),
                Err(ParseLocationError),
                "{bad}"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for url in ["file://./data/blobs", "memory://", "az://", "s3://b/p"] {
            assert_eq!(url.parse::<BlobStoreLocation>().unwrap().to_string(), url);
        }
    }
}
