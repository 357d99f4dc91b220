//! The typed settings, bound from a [`RawConfig`] with every value checked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tessera_blob::azure::{AzureConnection, mask_connection_string};
use tessera_blob::{BlobStoreLocation, ContainerNames, FaultInjection};
use tessera_core::{FormatType, Limits};
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
    /// `Tessera:Limits:*`: what one request may make the server hold, read or compute.
    pub limits: Limits,
    /// Where RetrieveURL and Location point.
    pub public_url: PublicUrlSettings,
    /// `Tessera:FaultInjection:*`: faults injected into blob-store calls, for tests; off by
    /// default.
    pub fault_injection: FaultInjection,
    /// `DicomServer:Security:*` and `Tessera:Security:*`.
    pub security: SecuritySettings,
    /// `Tessera:ShutdownTimeout` and `Tessera:ProcessLease`: how a process stops and how
    /// long it counts as alive.
    pub lifecycle: LifecycleSettings,
    /// `DicomServer:Cors:*`: which browser origins may call; off by default.
    pub cors: CorsSettings,
}

/// Cross-origin resource sharing, so that a web viewer served from another origin can call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CorsSettings {
    /// Allowed origins (`https://viewer.example.org`), or `*`; empty turns CORS off.
    pub origins: Vec<String>,
    /// Request headers allowed besides `Accept`, `Authorization` and `Content-Type`, or `*`.
    pub headers: Vec<String>,
    /// Allowed methods; empty means GET, HEAD, POST, PUT and DELETE.
    pub methods: Vec<String>,
    /// How long a browser may cache a preflight's answer.
    pub max_age: Option<Duration>,
    /// Whether credentials may be sent cross-origin.
    pub allow_credentials: bool,
}

/// How the URLs Tessera returns (RetrieveURL, Location) are built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicUrlSettings {
    /// `Tessera:PublicBaseUrl`: used as is when set.
    pub base: Option<url::Url>,
    /// `Tessera:TrustForwardedHeaders`: otherwise use the request's `Host` and `X-Forwarded-*`
    /// (validated) instead of the address the connection came in on.
    pub trust_forwarded_headers: bool,
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
    /// Async worker threads (see [`default_worker_threads`]).
    pub worker_threads: usize,
    /// Whether the process's threads run under `SCHED_BATCH` (Linux), see
    /// [`keys::BATCH_SCHEDULING`].
    pub batch_scheduling: bool,
}

/// Half the cores this process may use, at least one. A store or a read waits mostly on
/// threads of its own (blocking file I/O, fsync, the index's connections), and with one async
/// worker per core, idle workers were woken again and again to look for work to steal: on
/// 2 cores, a single-instance STOW cost 12% more CPU with 2 workers than with 1.
fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).max(1))
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

/// Authentication, authorization and audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecuritySettings {
    /// How tokens are checked; `None` when `DicomServer:Security:Enabled` is false.
    pub authentication: Option<tessera_auth::AuthSettings>,
    /// Write one audit line per DICOMweb request.
    pub audit_log: bool,
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

    /// A list bound from `key:0`, `key:1`, … (the first missing index ends it), each item
    /// trimmed, blank items skipped, and parsed.
    fn list(
        &mut self,
        key: &'static str,
        parse: impl Fn(&str) -> Result<String, String>,
    ) -> Result<Vec<String>, ConfigError> {
        let mut items = Vec::new();
        let mut origin = Origin::Default;
        for index in 0.. {
            let Some(found) = self.raw.get(&format!("{key}:{index}")) else {
                break;
            };
            origin = found.origin.clone();
            let text = found.value.trim();
            if text.is_empty() {
                continue;
            }
            items.push(parse(text).map_err(|reason| ConfigError::InvalidValue {
                key: found.key.clone(),
                value: found.value.clone(),
                origin: found.origin.clone(),
                reason,
            })?);
        }
        self.effective.push(EffectiveValue {
            key,
            value: if items.is_empty() {
                "(unset)".into()
            } else {
                items.join(", ")
            },
            origin,
        });
        Ok(items)
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

    fn count(
        &mut self,
        key: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        self.bind(
            &[key],
            default,
            |t| parse_number(t, min, max),
            u64::to_string,
        )
    }

    fn limits(&mut self) -> Result<Limits, ConfigError> {
        const GIB: u64 = 1024 * 1024 * 1024;
        let d = Limits::default();
        Ok(Limits {
            max_request_body_bytes: self.count(
                keys::MAX_REQUEST_BODY_BYTES,
                d.max_request_body_bytes,
                1024,
                1024 * GIB,
            )?,
            max_header_bytes: self.count(
                keys::MAX_HEADER_BYTES,
                d.max_header_bytes,
                4096,
                4 * GIB,
            )?,
            max_sequence_depth: self.number(
                keys::MAX_SEQUENCE_DEPTH,
                d.max_sequence_depth,
                1,
                1_000,
            )?,
            max_inflated_bytes: self.count(
                keys::MAX_INFLATED_BYTES,
                d.max_inflated_bytes,
                4096,
                4 * GIB,
            )?,
            max_parts: self.number(keys::MAX_PARTS, d.max_parts, 1, 1_000_000)?,
            max_part_header_bytes: self.number(
                keys::MAX_PART_HEADER_BYTES,
                d.max_part_header_bytes,
                256,
                1 << 20,
            )?,
            max_preamble_bytes: self.number(
                keys::MAX_PREAMBLE_BYTES,
                d.max_preamble_bytes,
                0,
                16 << 20,
            )?,
            max_frames_per_request: self.number(
                keys::MAX_FRAMES_PER_REQUEST,
                d.max_frames_per_request,
                1,
                1_000_000,
            )?,
            max_query_parameters: self.number(
                keys::MAX_QUERY_PARAMETERS,
                d.max_query_parameters,
                1,
                10_000,
            )?,
            max_uid_list_length: self.number(
                keys::MAX_UID_LIST_LENGTH,
                d.max_uid_list_length,
                1,
                100_000,
            )?,
            max_fuzzy_name_words: self.number(
                keys::MAX_FUZZY_NAME_WORDS,
                d.max_fuzzy_name_words,
                1,
                1_000,
            )?,
            max_concurrent_uploads: self.number(
                keys::MAX_CONCURRENT_UPLOADS,
                d.max_concurrent_uploads,
                1,
                100_000,
            )?,
            request_header_timeout: self
                .positive_timespan(keys::REQUEST_HEADER_TIMEOUT, d.request_header_timeout)?,
            body_read_timeout: self
                .positive_timespan(keys::BODY_READ_TIMEOUT, d.body_read_timeout)?,
            keep_alive_timeout: self
                .positive_timespan(keys::KEEP_ALIVE_TIMEOUT, d.keep_alive_timeout)?,
            max_decode_bytes: self.count(
                keys::MAX_DECODE_BYTES,
                d.max_decode_bytes,
                1024,
                16 * GIB,
            )?,
        })
    }

    fn positive_timespan(
        &mut self,
        key: &'static str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let parse = |t: &str| match parse_timespan(t)? {
            d if d.is_zero() => Err("must be longer than zero".to_owned()),
            d => Ok(d),
        };
        self.bind(&[key], default, parse, |d| format_timespan(*d))
    }

    fn public_url(&mut self) -> Result<PublicUrlSettings, ConfigError> {
        let base = self.bind(
            &[keys::PUBLIC_BASE_URL],
            None,
            |t| {
                let t = t.trim();
                if t.is_empty() {
                    return Ok(None);
                }
                let url = url::Url::parse(t).map_err(|e| e.to_string())?;
                let valid = matches!(url.scheme(), "http" | "https")
                    && url.host().is_some()
                    && url.query().is_none()
                    && url.fragment().is_none()
                    && url.username().is_empty();
                if valid {
                    Ok(Some(url))
                } else {
                    Err("expected an http(s) URL with a host and no query, such as https://pacs.example.org/dicom".into())
                }
            },
            |v| v.as_ref().map(url::Url::to_string).unwrap_or_else(|| "(unset)".into()),
        )?;
        Ok(PublicUrlSettings {
            base,
            trust_forwarded_headers: self.boolean(keys::TRUST_FORWARDED_HEADERS, false)?,
        })
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

/// A fraction from 0 to 1, such as `0.1`.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err("expected a fraction from 0 to 1, such as 0.1".into()),
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
            worker_threads: b.bind(
                &[keys::WORKER_THREADS],
                default_worker_threads(),
                |t| parse_number(t, 1, 1024).map(|n| n as usize),
                usize::to_string,
            )?,
            batch_scheduling: b.boolean(keys::BATCH_SCHEDULING, true)?,
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
        let limits = b.limits()?;
        let public_url = b.public_url()?;
        let fault_injection = FaultInjection {
            failure_rate: b.bind(&[keys::FAULT_FAILURE_RATE], 0.0, parse_rate, f64::to_string)?,
            latency: b.timespan(keys::FAULT_LATENCY, Duration::ZERO)?,
            cut_stream_rate: b.bind(
                &[keys::FAULT_CUT_STREAM_RATE],
                0.0,
                parse_rate,
                f64::to_string,
            )?,
            seed: b.bind(
                &[keys::FAULT_SEED],
                0,
                |t| parse_number(t, 0, u64::MAX),
                u64::to_string,
            )?,
        };
        let security = bind_security(&mut b)?;
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
        let cors = bind_cors(&mut b)?;
        let settings = Self {
            cors,
            limits,
            public_url,
            tessera,
            blob_migration,
            deleted_instance_cleanup,
            functions,
            containers,
            blob_connection_string,
            fault_injection,
            security,
            lifecycle,
        };
        Ok((settings, b.effective))
    }
}

/// `DicomServer:Cors:*`: lists bound from `Key:0`, `Key:1`, … as ASP.NET binds arrays.
fn bind_cors(b: &mut Binder<'_>) -> Result<CorsSettings, ConfigError> {
    let origins = b.list(keys::CORS_ORIGINS, |t| {
        let valid = t == "*"
            || url::Url::parse(t).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && !t.ends_with('/')
                    && u.query().is_none()
                    && u.username().is_empty()
            });
        if valid {
            Ok(t.to_owned())
        } else {
            Err("expected * or an origin such as https://viewer.example.org (no path)".into())
        }
    })?;
    let token = |t: &str| {
        if t == "*"
            || t.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
        {
            Ok(t.to_owned())
        } else {
            Err(format!("{t:?} is not an HTTP token"))
        }
    };
    let headers = b.list(keys::CORS_HEADERS, token)?;
    let methods = b.list(keys::CORS_METHODS, |t| {
        if t == "*" {
            Err("expected method names such as GET".to_owned())
        } else {
            token(t).map(|m| m.to_ascii_uppercase())
        }
    })?;
    let max_age = b.bind(
        &[keys::CORS_MAX_AGE],
        None,
        |t| {
            if t.trim().is_empty() {
                return Ok(None);
            }
            parse_number(t, 0, 86_400 * 365).map(|s| Some(Duration::from_secs(s)))
        },
        |v| v.map_or_else(|| "(unset)".into(), |d| format!("{}", d.as_secs())),
    )?;
    let allow_credentials = b.boolean(keys::CORS_ALLOW_CREDENTIALS, false)?;
    Ok(CorsSettings {
        origins,
        headers,
        methods,
        max_age,
        allow_credentials,
    })
}

/// `DicomServer:Security:*` as the original documents it, plus Tessera's roles file, key refresh
/// and audit keys; an inconsistent combination is an error naming the key to change.
fn bind_security(b: &mut Binder<'_>) -> Result<SecuritySettings, ConfigError> {
    let optional_text = |t: &str| Ok((!t.trim().is_empty()).then(|| t.trim().to_owned()));
    let show_optional = |v: &Option<String>| v.clone().unwrap_or_else(|| "(unset)".into());
    let enabled = b.boolean(keys::SECURITY_ENABLED, false)?;
    let authority = b.bind(
        &[keys::AUTHORITY],
        None,
        |t| {
            if t.trim().is_empty() {
                Ok(None)
            } else {
                tessera_auth::check_authority(t).map(Some)
            }
        },
        |v| {
            v.as_ref()
                .map(url::Url::to_string)
                .unwrap_or_else(|| "(unset)".into())
        },
    )?;
    let audience = b.bind(&[keys::AUDIENCE], None, optional_text, show_optional)?;
    let mut audiences: Vec<String> = audience.into_iter().collect();
    let mut listed = Vec::new();
    let mut listed_origin = Origin::Default;
    for index in 0.. {
        let Some(found) = b.raw.get(&format!("{}:{index}", keys::AUDIENCES)) else {
            break;
        };
        listed_origin = found.origin.clone();
        if !found.value.trim().is_empty() {
            listed.push(found.value.trim().to_owned());
        }
    }
    b.effective.push(EffectiveValue {
        key: keys::AUDIENCES,
        value: if listed.is_empty() {
            "(unset)".into()
        } else {
            listed.join(", ")
        },
        origin: listed_origin,
    });
    audiences.extend(listed);
    let authorization = b.boolean(keys::AUTHORIZATION_ENABLED, false)?;
    let roles_claim = b.bind(
        &[keys::ROLES_CLAIM],
        "roles".to_owned(),
        |t| {
            if t.trim().is_empty() {
                Err("expected the name of a claim, such as roles".into())
            } else {
                Ok(t.trim().to_owned())
            }
        },
        String::clone,
    )?;
    let roles_file = b.bind(
        &[keys::ROLES_FILE],
        PathBuf::from("roles.json"),
        |t| Ok(PathBuf::from(t.trim())),
        |p| p.display().to_string(),
    )?;
    let key_refresh_interval = b.timespan(keys::KEY_REFRESH_INTERVAL, Duration::from_secs(300))?;
    let audit_log = b.boolean(keys::AUDIT_LOG, true)?;
    let origin_of = |key: &str| {
        b.raw
            .get(key)
            .map(|v| v.origin.clone())
            .unwrap_or(Origin::Default)
    };
    if !enabled {
        if authorization {
            return Err(ConfigError::InvalidValue {
                key: keys::AUTHORIZATION_ENABLED.to_owned(),
                value: "true".into(),
                origin: origin_of(keys::AUTHORIZATION_ENABLED),
                reason: format!("authorization needs {} = true", keys::SECURITY_ENABLED),
            });
        }
        return Ok(SecuritySettings {
            authentication: None,
            audit_log,
        });
    }
    let because = format!("{} is true", keys::SECURITY_ENABLED);
    let authority = authority.ok_or_else(|| ConfigError::Missing {
        key: keys::AUTHORITY,
        because: because.clone(),
    })?;
    if audiences.is_empty() {
        return Err(ConfigError::Missing {
            key: keys::AUDIENCE,
            because,
        });
    }
    let roles = if authorization {
        let invalid = |reason: String| ConfigError::InvalidValue {
            key: keys::ROLES_FILE.to_owned(),
            value: roles_file.display().to_string(),
            origin: origin_of(keys::ROLES_FILE),
            reason,
        };
        let roles = tessera_auth::Roles::load(&roles_file).map_err(|e| invalid(e.to_string()))?;
        if roles.is_empty() {
            return Err(invalid(
                "defines no role, so authorization would refuse every request".into(),
            ));
        }
        Some(roles)
    } else {
        None
    };
    Ok(SecuritySettings {
        authentication: Some(tessera_auth::AuthSettings {
            authority,
            audiences,
            roles_claim,
            roles,
            key_refresh_interval,
        }),
        audit_log,
    })
}
