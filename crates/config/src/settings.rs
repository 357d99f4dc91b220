//! The typed settings, bound from a [`RawConfig`] with every value checked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tessera_blob::azure::{AzureConnection, mask_connection_string};
use tessera_blob::{BlobStoreLocation, ContainerNames};
use tessera_core::FormatType;
use uuid::Uuid;

use crate::sources::{Origin, RawConfig, RawValue};
use crate::values::{
    format_timespan, parse_bool, parse_datetime, parse_guid, parse_number, parse_timespan,
};
use crate::{ConfigError, keys};

/// Everything Tessera is configured with, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Tessera's own keys (`Tessera:*`).
    pub tessera: TesseraSettings,
    /// `DicomServer:Services:BlobMigration:*` (orig B.1).
    pub blob_migration: BlobMigrationSettings,
    /// `DicomServer:Services:DeletedInstanceCleanup:*` (orig A.5).
    pub deleted_instance_cleanup: DeletedInstanceCleanupSettings,
    /// `DicomFunctions:*`: batching of the background operations (orig B.1).
    pub functions: FunctionsSettings,
    /// `DicomWeb:DicomStore:ContainerName` and `DicomWeb:MetadataStore:ContainerName`.
    pub containers: ContainerNames,
    /// `BlobStore:ConnectionString`: the Azure Storage connection string (a secret).
    pub blob_connection_string: Option<String>,
    /// `Tessera:ShutdownTimeout` and `Tessera:ProcessLease`: how a process stops and how
    /// long it counts as alive.
    pub lifecycle: LifecycleSettings,
}

/// How a process stops, and how long it counts as alive without renewing its registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LifecycleSettings {
    /// Grace period of a graceful shutdown.
    pub shutdown_timeout: Duration,
    /// Lease of this process's registration in the index (at least one second).
    pub process_lease: Duration,
}

/// Keys under `Tessera:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TesseraSettings {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// Index database URL: `sqlite://PATH` or `postgres://…`.
    pub index: String,
    /// Where blobs live.
    pub blob_store: BlobStoreLocation,
    /// Read Old names when a New blob is missing in FormatType New.
    pub read_fallback: bool,
    /// A store still `Creating` after this long is swept as crashed.
    pub stale_store_timeout: Duration,
    /// Time between sweeps.
    pub sweep_interval: Duration,
    /// Lease of a background operation.
    pub operation_lease: Duration,
}

/// The original's blob-migration settings, with Tessera's default format `New`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobMigrationSettings {
    /// Which blob names are written and read.
    pub format_type: FormatType,
    /// Start (or resume) the copy of Old names to New at start-up.
    pub start_copy: bool,
    /// Start (or resume) the deletion of Old names at start-up, once the copy succeeded.
    pub start_delete: bool,
    /// Log each use of an Old blob name.
    pub log_old_format_usage: bool,
    /// Fixed id of the copy operation.
    pub copy_operation_id: Uuid,
    /// Fixed id of the delete-old operation.
    pub delete_operation_id: Uuid,
    /// Fixed id of the cleanup-deleted operation.
    pub cleanup_deleted_operation_id: Uuid,
    /// Deleted instances since this moment lose their Old blobs; unset means no cleanup run.
    pub cleanup_filter_timestamp: Option<DateTime<Utc>>,
}

/// The deferred blob deletion of deleted instances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletedInstanceCleanupSettings {
    /// Time between a delete and the removal of its blobs.
    pub delete_delay: Duration,
    /// Attempts after which a failing removal is left for an operator.
    pub max_retries: u32,
    /// Wait before retrying a failed removal.
    pub retry_back_off: Duration,
    /// Sleep between polling rounds.
    pub polling_interval: Duration,
    /// Rows taken per round.
    pub batch_size: u32,
}

/// Batching of one background operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// Instances per batch.
    pub size: u32,
    /// Batches per round (one checkpoint per round).
    pub max_parallel_count: u32,
}

/// `DicomFunctions:*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionsSettings {
    /// `DicomFunctions:Copy:Batching`.
    pub copy: Batching,
    /// `DicomFunctions:MigrationDeletion:Batching`.
    pub migration_deletion: Batching,
    /// `DicomFunctions:CleanupDeleted:Batching`.
    pub cleanup_deleted: Batching,
    /// Instances worked on at once within a batch.
    pub max_parallel_threads: u32,
}

/// One effective setting, for `tessera config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveValue {
    /// The setting's key as documented.
    pub key: &'static str,
    /// Its value, normalized, with secrets masked.
    pub value: String,
    /// Where it came from.
    pub origin: Origin,
}

/// Binds keys one by one and remembers what it bound, for display.
struct Binder<'a> {
    raw: &'a RawConfig,
    effective: Vec<EffectiveValue>,
}

impl Binder<'_> {
    /// The value of the first-spelled key among `keys` from the strongest source (aliases let
    /// the original's documented spellings bind, orig G.7), parsed; else `default`.
    fn bind<T>(
        &mut self,
        keys: &[&'static str],
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
        show: impl Fn(&T) -> String,
    ) -> Result<T, ConfigError> {
        // Strongest source first; among equals, the earlier spelling in `keys`.
        let mut best: Option<(&'static str, &RawValue)> = None;
        for (key, found) in keys.iter().filter_map(|k| Some((*k, self.raw.get(k)?))) {
            if best.is_none_or(|(_, b)| found.origin.rank() > b.origin.rank()) {
                best = Some((key, found));
            }
        }
        let (value, origin) = match best {
            None => (default, Origin::Default),
            Some((key, found)) => {
                let value = parse(&found.value).map_err(|reason| ConfigError::InvalidValue {
                    key: if found.key.eq_ignore_ascii_case(key) {
                        key.to_owned()
                    } else {
                        found.key.clone()
                    },
                    value: found.value.clone(),
                    origin: found.origin.clone(),
                    reason,
                })?;
                (value, found.origin.clone())
            }
        };
        self.effective.push(EffectiveValue {
            key: keys[0],
            value: show(&value),
            origin,
        });
        Ok(value)
    }

    fn boolean(&mut self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        self.bind(&[key], default, parse_bool, bool::to_string)
    }

    fn guid(&mut self, keys: &[&'static str], default: &str) -> Result<Uuid, ConfigError> {
        let default = Uuid::parse_str(default).unwrap_or_default();
        self.bind(keys, default, parse_guid, Uuid::to_string)
    }

    fn timespan(&mut self, key: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        self.bind(&[key], default, parse_timespan, |d| format_timespan(*d))
    }

    fn number(
        &mut self,
        key: &'static str,
        default: u32,
        min: u32,
        max: u32,
    ) -> Result<u32, ConfigError> {
        let parse = |text: &str| parse_number(text, min.into(), max.into()).map(|n| n as u32);
        self.bind(&[key], default, parse, u32::to_string)
    }

    fn batching(
        &mut self,
        size: &'static str,
        count: &'static str,
    ) -> Result<Batching, ConfigError> {
        Ok(Batching {
            size: self.number(size, 100, 1, 10_000)?,
            max_parallel_count: self.number(count, 2, 1, 100)?,
        })
    }

    fn container(&mut self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        self.bind(
            &[key],
            default.to_owned(),
            parse_container_name,
            String::clone,
        )
    }
}

/// Azure's container naming rule, which also keeps the name a plain folder name on a filesystem.
fn parse_container_name(text: &str) -> Result<String, String> {
    let valid = (3..=63).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
        && !text.contains("--");
    if valid {
        Ok(text.to_owned())
    } else {
        Err("expected 3-63 lowercase letters, digits and single hyphens".into())
    }
}

fn parse_index(text: &str) -> Result<String, String> {
    let text = text.trim();
    let scheme = text.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("sqlite" | "postgres" | "postgresql") => Ok(text.to_owned()),
        _ => Err("expected sqlite://PATH or postgres://USER@HOST/DB".into()),
    }
}

/// The index URL with any password replaced by `***`.
fn mask_url_password(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => text.to_owned(),
    }
}

impl Settings {
    /// Binds and checks every setting; the first bad value is the error, naming its key.
    pub fn bind(raw: &RawConfig) -> Result<(Self, Vec<EffectiveValue>), ConfigError> {
        let mut b = Binder {
            raw,
            effective: Vec::new(),
        };
        let tessera = TesseraSettings {
            listen: b.bind(
                &[keys::LISTEN],
                SocketAddr::from(([127, 0, 0, 1], 8080)),
                |t| {
                    t.trim()
                        .parse()
                        .map_err(|_| "expected an address such as 127.0.0.1:8080".into())
                },
                SocketAddr::to_string,
            )?,
            index: b.bind(
                &[keys::INDEX],
                "sqlite://./data/index.db".into(),
                parse_index,
                |s| mask_url_password(s),
            )?,
            blob_store: b.bind(
                &[keys::BLOB_STORE],
                BlobStoreLocation::FileSystem {
                    root: PathBuf::from("./data/blobs"),
                },
                |t| {
                    t.parse()
                        .map_err(|e: tessera_blob::ParseLocationError| e.to_string())
                },
                BlobStoreLocation::to_string,
            )?,
            read_fallback: b.boolean(keys::READ_FALLBACK, true)?,
            stale_store_timeout: b
                .timespan(keys::STALE_STORE_TIMEOUT, Duration::from_secs(3600))?,
            sweep_interval: b.timespan(keys::SWEEP_INTERVAL, Duration::from_secs(300))?,
            operation_lease: b.timespan(keys::OPERATION_LEASE, Duration::from_secs(60))?,
        };
        let blob_migration = BlobMigrationSettings {
            format_type: b.bind(
                &[keys::FORMAT_TYPE],
                FormatType::New,
                |t| {
                    t.parse()
                        .map_err(|e: tessera_core::ParseFormatTypeError| e.to_string())
                },
                FormatType::to_string,
            )?,
            start_copy: b.boolean(keys::START_COPY, false)?,
            start_delete: b.boolean(keys::START_DELETE, false)?,
            log_old_format_usage: b.boolean(keys::LOG_OLD_FORMAT_USAGE, false)?,
            copy_operation_id: b.guid(
                keys::COPY_OPERATION_ID,
                "1d4689da-ca3b-4659-b0c7-7bf6c9ff25e1",
            )?,
            delete_operation_id: b.guid(
                keys::DELETE_OPERATION_ID,
                "ce38a27e-b194-4645-b47a-fe91c38c330f",
            )?,
            cleanup_deleted_operation_id: b.guid(
                keys::CLEANUP_DELETED_OPERATION_ID,
                "d32a0469-9c27-4df3-a1e8-12f7f8fecbc8",
            )?,
            cleanup_filter_timestamp: b.bind(
                &[keys::CLEANUP_FILTER_TIMESTAMP],
                None,
                |t| {
                    if t.trim().is_empty() {
                        Ok(None)
                    } else {
                        parse_datetime(t).map(Some)
                    }
                },
                |v| {
                    v.map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "(unset)".into())
                },
            )?,
        };
        let deleted_instance_cleanup = DeletedInstanceCleanupSettings {
            delete_delay: b.timespan(keys::DELETE_DELAY, Duration::from_secs(3 * 86_400))?,
            max_retries: b.number(keys::MAX_RETRIES, 5, 0, 1_000)?,
            retry_back_off: b.timespan(keys::RETRY_BACK_OFF, Duration::from_secs(86_400))?,
            polling_interval: b.timespan(keys::POLLING_INTERVAL, Duration::from_secs(180))?,
            batch_size: b.number(keys::CLEANUP_BATCH_SIZE, 10, 1, 10_000)?,
        };
        let functions = FunctionsSettings {
            copy: b.batching(keys::COPY_BATCH_SIZE, keys::COPY_MAX_PARALLEL_COUNT)?,
            migration_deletion: b
                .batching(keys::DELETION_BATCH_SIZE, keys::DELETION_MAX_PARALLEL_COUNT)?,
            cleanup_deleted: b.batching(
                keys::CLEANUP_DELETED_BATCH_SIZE,
                keys::CLEANUP_DELETED_MAX_PARALLEL_COUNT,
            )?,
            // The original's code default was unbounded (-1, orig G.7); its host.json said 5.
            max_parallel_threads: b.number(keys::MAX_PARALLEL_THREADS, 5, 1, 256)?,
        };
        let defaults = ContainerNames::default();
        let containers = ContainerNames {
            files: b.container(keys::FILE_CONTAINER, &defaults.files)?,
            metadata: b.container(keys::METADATA_CONTAINER, &defaults.metadata)?,
        };
        let needs_azure = tessera.blob_store == BlobStoreLocation::Azure;
        let blob_connection_string = b
            .bind(
                &[keys::BLOB_CONNECTION_STRING],
                None,
                |t| {
                    if t.trim().is_empty() {
                        return Ok(None);
                    }
                    AzureConnection::parse(t).map_err(|e| e.to_string())?;
                    Ok(Some(t.to_owned()))
                },
                |v| {
                    v.as_deref()
                        .map(mask_connection_string)
                        .unwrap_or_else(|| "(unset)".into())
                },
            )
            .map_err(ConfigError::masked)?;
        if needs_azure && blob_connection_string.is_none() {
            return Err(ConfigError::Missing {
                key: keys::BLOB_CONNECTION_STRING,
                because: format!("{} is az://", keys::BLOB_STORE),
            });
        }
        let lifecycle = LifecycleSettings {
            shutdown_timeout: b.timespan(keys::SHUTDOWN_TIMEOUT, Duration::from_secs(30))?,
            process_lease: b.bind(
                &[keys::PROCESS_LEASE],
                Duration::from_secs(60),
                |t| match parse_timespan(t)? {
                    lease if lease < Duration::from_secs(1) => {
                        Err("expected at least one second".into())
                    }
                    lease => Ok(lease),
                },
                |d| format_timespan(*d),
            )?,
        };
        let settings = Self {
            tessera,
            blob_migration,
            deleted_instance_cleanup,
            functions,
            containers,
            blob_connection_string,
            lifecycle,
        };
        Ok((settings, b.effective))
    }
}
