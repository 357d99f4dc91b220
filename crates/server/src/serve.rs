//! `tessera serve`: opens the stores, starts the workers and the configured operations, serves.

use std::sync::Arc;

use tessera_blob::{FormatPolicy, InstanceBlobStore};
use tessera_config::Config;
use tessera_index::InstanceIndex;
use tessera_ops::{MigrationSettings, OperationContext, RoundSizes, start_configured_operations};
use tessera_service::{
    DeletedInstanceCleanup, DicomService, ProcessHeartbeat, ServiceSettings, StaleStoreSweeper,
    current_process,
};
use tokio_util::sync::CancellationToken;

use crate::shutdown;

/// Opens the index and the blob store the configuration names.
pub async fn open_stores(
    config: &Config,
) -> Result<(InstanceIndex, Arc<InstanceBlobStore>), Box<dyn std::error::Error>> {
    let settings = &config.settings;
    let migration = &settings.blob_migration;
    let containers = settings
        .tessera
        .blob_store
        .open(
            settings.blob_connection_string.as_deref(),
            &settings.containers,
        )
        .await?
        .with_faults(&settings.fault_injection);
    if settings.fault_injection.is_active() {
        tracing::warn!(faults = ?settings.fault_injection, "injecting blob-store faults (tests only)");
    }
    let policy = FormatPolicy {
        format: migration.format_type,
        read_fallback: settings.tessera.read_fallback,
        log_old_format_usage: migration.log_old_format_usage,
    };
    let index = InstanceIndex::open(&settings.tessera.index).await?;
    Ok((index, Arc::new(InstanceBlobStore::new(containers, policy))))
}

/// The operation context of this process for the configured batching.
pub fn operation_context(
    config: &Config,
    index: InstanceIndex,
    blobs: Arc<InstanceBlobStore>,
) -> OperationContext {
    let functions = &config.settings.functions;
    let round = |b: tessera_config::Batching| b.size.saturating_mul(b.max_parallel_count);
    OperationContext {
        index,
        blobs,
        owner: uuid::Uuid::new_v4().simple().to_string(),
        lease: config.settings.tessera.operation_lease,
        rounds: RoundSizes {
            copy: round(functions.copy),
            deletion: round(functions.migration_deletion),
            cleanup: round(functions.cleanup_deleted),
        },
        parallelism: functions.max_parallel_threads as usize,
        stop: CancellationToken::new(),
    }
}

/// The migration settings of the configuration, with ids in the 32-hex form.
pub fn migration_settings(config: &Config) -> MigrationSettings {
    let m = &config.settings.blob_migration;
    MigrationSettings {
        format: m.format_type,
        start_copy: m.start_copy,
        start_delete: m.start_delete,
        copy_id: m.copy_operation_id.simple().to_string(),
        delete_id: m.delete_operation_id.simple().to_string(),
        cleanup_id: m.cleanup_deleted_operation_id.simple().to_string(),
        cleanup_since: m.cleanup_filter_timestamp,
    }
}

/// Runs the server until Ctrl-C or SIGTERM, then shuts down gracefully (see [`shutdown`]).
pub async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let settings = &config.settings;
    let (index, blobs) = open_stores(&config).await?;
    // Registered before serving, so reservations of dead processes are freed first.
    let heartbeat = ProcessHeartbeat {
        me: current_process(),
        lease: settings.lifecycle.process_lease,
    };
    let freed = heartbeat.register(&index).await?;
    tracing::info!(owner = %heartbeat.me.id, freed, "registered; reservations of dead processes freed");
    let index = index
        .with_owner(heartbeat.me.id)
        .with_gone_probe(heartbeat.gone_probe());
    let stop = CancellationToken::new();
    let stop_heartbeat = CancellationToken::new();
    let cleanup = &settings.deleted_instance_cleanup;
    let service = DicomService::new(
        index.clone(),
        blobs.clone(),
        ServiceSettings {
            delete_delay: cleanup.delete_delay,
            limits: settings.limits.clone(),
        },
    );
    let mut workers = vec![
        tokio::spawn(
            DeletedInstanceCleanup {
                polling_interval: cleanup.polling_interval,
                batch_size: cleanup.batch_size,
                max_retries: cleanup.max_retries,
                retry_back_off: cleanup.retry_back_off,
            }
            .run(service.clone(), stop.clone()),
        ),
        tokio::spawn(
            StaleStoreSweeper {
                timeout: settings.tessera.stale_store_timeout,
                interval: settings.tessera.sweep_interval,
            }
            .run(service.clone(), stop.clone()),
        ),
    ];
    let heartbeat_task = tokio::spawn(heartbeat.clone().run(index.clone(), stop_heartbeat.clone()));
    let listener = tokio::net::TcpListener::bind(settings.tessera.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.tessera.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(
        blob_store = %settings.tessera.blob_store,
        format = %settings.blob_migration.format_type,
        "listening on {address}"
    );
    let operations = OperationContext {
        stop: stop.clone(),
        ..operation_context(&config, index.clone(), blobs)
    };
    workers.extend(start_configured_operations(
        operations,
        migration_settings(&config),
    ));
    let public_url = tessera_http::PublicUrl {
        base: settings.public_url.base.clone(),
        trust_forwarded_headers: settings.public_url.trust_forwarded_headers,
    };
    let metrics = install_metrics(&config, stop.clone())?;
    let state = tessera_http::AppState::new(service, settings.limits.clone(), public_url)
        .with_security(security(&config)?)
        .with_metrics(metrics)
        .with_shutdown(stop.clone())
        .with_cors(cors(&settings.cors)?);
    let drain = tessera_http::Drain::new();
    let app = tessera_http::with_drain(tessera_http::router(state), drain.clone());
    let grace = settings.lifecycle.shutdown_timeout;
    let deadline = shutdown::serve(listener, app, &settings.limits, drain, stop, grace).await?;
    shutdown::join_workers(workers, deadline).await;
    stop_heartbeat.cancel();
    let _ = heartbeat_task.await;
    let abandoned = heartbeat.unregister(&index).await?;
    tracing::info!(abandoned, "stopped");
    Ok(())
}

/// Installs the Prometheus recorder `/metrics` renders, reporting the configured operations,
/// and keeps its histograms drained until `stop`.
fn install_metrics(
    config: &Config,
    stop: CancellationToken,
) -> Result<tessera_http::Metrics, Box<dyn std::error::Error>> {
    let ids = migration_settings(config);
    let metrics = tessera_http::Metrics::install(vec![
        ("copy".into(), ids.copy_id),
        ("migrationDeletion".into(), ids.delete_id),
        ("cleanupDeleted".into(), ids.cleanup_id),
        ("adopt".into(), tessera_ops::ADOPTION_OPERATION_ID.into()),
    ])?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = every.tick() => upkeep.run_upkeep(),
            }
        }
    });
    Ok(metrics)
}

/// The CORS policy the configuration asks for.
fn cors(
    settings: &tessera_config::CorsSettings,
) -> Result<tessera_http::Cors, tessera_http::InvalidCors> {
    if !settings.origins.is_empty() {
        tracing::info!(origins = ?settings.origins, "CORS on");
    }
    tessera_http::Cors::new(&tessera_http::CorsPolicy {
        origins: settings.origins.clone(),
        headers: settings.headers.clone(),
        methods: settings.methods.clone(),
        max_age: settings.max_age,
        allow_credentials: settings.allow_credentials,
    })
}

/// The token checks and audit the configuration asks for.
fn security(config: &Config) -> Result<tessera_http::Security, Box<dyn std::error::Error>> {
    let security = &config.settings.security;
    let authenticator = match &security.authentication {
        None => {
            tracing::warn!(
                "security is disabled: anyone who reaches this port may read, store and delete"
            );
            None
        }
        Some(auth) => {
            tracing::info!(
                authority = %auth.authority,
                roles = auth.roles.as_ref().map_or(0, tessera_auth::Roles::len),
                "bearer tokens required{}",
                if auth.roles.is_some() { ", roles enforced" } else { "" }
            );
            Some(Arc::new(tessera_auth::Authenticator::new(auth.clone())?))
        }
    };
    Ok(tessera_http::Security {
        authenticator,
        audit: security.audit_log,
    })
}
