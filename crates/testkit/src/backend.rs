//! Fresh, isolated containers on each blob store backend.

use tessera_blob::{BlobStore, BlobStoreLocation, ContainerNames, Containers};

/// Environment variable with the Azure connection string of the Azurite the test command started.
pub const AZURE_CONNECTION_ENV: &str = "TESSERA_TEST_AZURE_CONNECTION_STRING";
/// Environment variable with the S3 bucket of the S3 server the test command started; the
/// endpoint and credentials are in the usual `AWS_*` variables, which the server processes
/// inherit.
pub const S3_BUCKET_ENV: &str = "TESSERA_TEST_S3_BUCKET";
/// Set to `1` to make a missing test service a failure rather than a skip.
pub const REQUIRE_SERVICES_ENV: &str = "TESSERA_TEST_REQUIRE_SERVICES";

/// A blob store backend the suites run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Local folders in a temporary directory.
    FileSystem,
    /// Process memory.
    Memory,
    /// Azure Blob Storage API served by Azurite.
    Azurite,
    /// The S3 API served by moto's server mode; each test gets its own key prefix.
    S3,
}

/// Containers for one test, and what must live as long as they do.
pub struct TestContainers {
    /// The file and metadata containers, empty at the start.
    pub containers: Containers,
    /// The location they were opened from (to open them again).
    pub location: BlobStoreLocation,
    /// The connection string they need, if any.
    pub connection_string: Option<String>,
    /// Their names.
    pub names: ContainerNames,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    /// Opens new, empty containers, or returns `None` (after saying why) when the backend's
    /// service is not available and not required.
    pub async fn fresh(self) -> Option<TestContainers> {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let names = ContainerNames {
            files: format!("files-{suffix}"),
            metadata: format!("metadata-{suffix}"),
        };
        let (location, connection_string, dir) = match self {
            Self::Memory => (BlobStoreLocation::Memory, None, None),
            Self::FileSystem => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let root = dir.path().to_owned();
                (BlobStoreLocation::FileSystem { root }, None, Some(dir))
            }
            Self::Azurite => match std::env::var(AZURE_CONNECTION_ENV) {
                Ok(connection) => (BlobStoreLocation::Azure, Some(connection), None),
                Err(_) => {
                    service_missing("Azurite", AZURE_CONNECTION_ENV);
                    return None;
                }
            },
            Self::S3 => match std::env::var(S3_BUCKET_ENV) {
                Ok(bucket) => {
                    let prefix = Some(format!("test-{suffix}"));
                    (BlobStoreLocation::S3 { bucket, prefix }, None, None)
                }
                Err(_) => {
                    service_missing("S3", S3_BUCKET_ENV);
                    return None;
                }
            },
        };
        let containers = location
            .open(connection_string.as_deref(), &names)
            .await
            .unwrap_or_else(|e| panic!("opening {self:?} containers: {e}"));
        Some(TestContainers {
            containers,
            location,
            connection_string,
            names,
            _dir: dir,
        })
    }
}

pub(crate) fn service_missing(service: &str, variable: &str) {
    if std::env::var(REQUIRE_SERVICES_ENV).as_deref() == Ok("1") {
        panic!("{service} is required ({REQUIRE_SERVICES_ENV}=1) but {variable} is not set");
    }
    eprintln!(
        "skipped: {service} is not available ({variable} is not set; the README's test command starts it)"
    );
}

/// Which of a blob store's two containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    /// Part-10 files (`DicomWeb:DicomStore:ContainerName`).
    Files,
    /// Metadata and frame ranges (`DicomWeb:MetadataStore:ContainerName`).
    Metadata,
}

/// The blob store a test server runs on, and the test's own handle on the same containers, so
/// that end-to-end tests can look at (and tamper with) blobs on any backend the same way.
///
/// On the filesystem the server keeps its embedded default (`file://./data/blobs` in its
/// working directory, default container names), so the defaults stay covered; on the other
/// backends it gets fresh containers through its environment.
pub struct ServerBlobs {
    /// The backend.
    pub backend: Backend,
    env: Vec<(String, String)>,
    containers: Containers,
    _fresh: Option<TestContainers>,
}

impl ServerBlobs {
    /// Blobs for a server whose working directory is `dir`, or `None` (after saying why) when
    /// the backend's service is not available and not required.
    pub async fn new(backend: Backend, dir: &std::path::Path) -> Option<Self> {
        if backend == Backend::FileSystem {
            let location = BlobStoreLocation::FileSystem {
                root: dir.join("data/blobs"),
            };
            let containers = location
                .open(None, &ContainerNames::default())
                .await
                .expect("opening the server's folders");
            return Some(Self {
                backend,
                env: Vec::new(),
                containers,
                _fresh: None,
            });
        }
        let fresh = backend.fresh().await?;
        let mut env = vec![
            ("Tessera__BlobStore".to_owned(), fresh.location.to_string()),
            (
                "DicomWeb__DicomStore__ContainerName".to_owned(),
                fresh.names.files.clone(),
            ),
            (
                "DicomWeb__MetadataStore__ContainerName".to_owned(),
                fresh.names.metadata.clone(),
            ),
        ];
        if let Some(connection) = &fresh.connection_string {
            env.push(("BlobStore__ConnectionString".to_owned(), connection.clone()));
        }
        Some(Self {
            backend,
            env,
            containers: fresh.containers.clone(),
            _fresh: Some(fresh),
        })
    }

    /// The configuration variables that point a server at these containers.
    pub fn env(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// `env()` followed by `more`.
    pub fn env_with<'a>(&'a self, more: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut env = self.env();
        env.extend_from_slice(more);
        env
    }

    /// The test's handle on the server's containers.
    pub fn containers(&self) -> &Containers {
        &self.containers
    }

    fn store(&self, container: Container) -> &BlobStore {
        match container {
            Container::Files => &self.containers.files,
            Container::Metadata => &self.containers.metadata,
        }
    }

    /// Every blob name in `container`, sorted.
    pub async fn names(&self, container: Container) -> Vec<String> {
        let names: std::collections::BTreeSet<String> =
            crate::blob_suite::names(self.store(container)).await;
        names.into_iter().collect()
    }

    /// Every blob name in both containers.
    pub async fn all_names(&self) -> Vec<String> {
        let mut names = self.names(Container::Files).await;
        names.extend(self.names(Container::Metadata).await);
        names
    }

    /// The bytes of a blob.
    pub async fn read(&self, container: Container, name: &str) -> bytes::Bytes {
        self.store(container)
            .get_bytes(&name.into())
            .await
            .unwrap_or_else(|e| panic!("reading {name}: {e}"))
    }

    /// Replaces a blob (or creates it), as an operator or a fault outside Tessera would.
    pub async fn replace(&self, container: Container, name: &str, body: bytes::Bytes) {
        let store = self.store(container);
        store
            .delete_if_exists(&name.into())
            .await
            .unwrap_or_else(|e| panic!("removing {name}: {e}"));
        store
            .put_create(&name.into(), body)
            .await
            .unwrap_or_else(|e| panic!("writing {name}: {e}"));
    }
}

/// Waits up to `limit` for the async check `done` to hold, checking every 50 ms; panics naming
/// `what`.
pub async fn eventually_async(
    what: &str,
    limit: std::time::Duration,
    mut done: impl AsyncFnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if done().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}
