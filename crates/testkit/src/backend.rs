//! Fresh, isolated containers on each blob store backend.

use tessera_blob::{BlobStoreLocation, ContainerNames, Containers};

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

fn service_missing(service: &str, variable: &str) {
    if std::env::var(REQUIRE_SERVICES_ENV).as_deref() == Ok("1") {
        panic!("{service} is required ({REQUIRE_SERVICES_ENV}=1) but {variable} is not set");
    }
    eprintln!(
        "skipped: {service} is not available ({variable} is not set; the README's test command starts it)"
    );
}
