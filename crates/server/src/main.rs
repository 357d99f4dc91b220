//! `tessera`: the DICOMweb server and its operator commands.
//!
//! Parses the command line, loads the configuration, starts tracing and wires the libraries
//! together. Every error ends the process with one line on stderr and a non-zero status.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tessera_blob::{FormatPolicy, InstanceBlobStore};
use tessera_config::{Config, LoadOptions, keys};
use tessera_index::InstanceIndex;
use tessera_service::{DeletedInstanceCleanup, DicomService, ServiceSettings, StaleStoreSweeper};

/// Tessera, a DICOMweb server for object storage.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Settings file (appsettings.json format); default: ./appsettings.json if present.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the DICOMweb server and its background workers.
    Serve {
        /// Address to listen on (overrides Tessera:Listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Print the effective configuration, with secrets masked, and where each value came from.
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut options = LoadOptions {
        config_file: cli.config,
        environment: std::env::vars().collect(),
        flags: Vec::new(),
    };
    if let Command::Serve {
        listen: Some(listen),
    } = &cli.command
    {
        options
            .flags
            .push((keys::LISTEN, listen.to_string(), "--listen"));
    }
    let config = match Config::load(&options) {
        Ok(config) => config,
        Err(error) => return fail(&error),
    };
    match cli.command {
        Command::Config => {
            print!("{}", config.describe());
            ExitCode::SUCCESS
        }
        Command::Serve { .. } => serve(config),
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::FAILURE
}

fn serve(config: Config) -> ExitCode {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&error),
    };
    match runtime.block_on(run_server(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            fail(&error)
        }
    }
}

async fn run_server(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let settings = &config.settings;
    let migration = &settings.blob_migration;
    let containers = settings
        .tessera
        .blob_store
        .open(
            settings.blob_connection_string.as_deref(),
            &settings.containers,
        )
        .await?;
    let policy = FormatPolicy {
        format: migration.format_type,
        read_fallback: settings.tessera.read_fallback,
        log_old_format_usage: migration.log_old_format_usage,
    };
    let blobs = Arc::new(InstanceBlobStore::new(containers, policy));
    let index = InstanceIndex::open(&settings.tessera.index).await?;
    let cleanup = &settings.deleted_instance_cleanup;
    let service = DicomService::new(
        index,
        blobs,
        ServiceSettings {
            delete_delay: cleanup.delete_delay,
        },
    );
    let workers = [
        tokio::spawn(
            DeletedInstanceCleanup {
                polling_interval: cleanup.polling_interval,
                batch_size: cleanup.batch_size,
                max_retries: cleanup.max_retries,
                retry_back_off: cleanup.retry_back_off,
            }
            .run(service.clone()),
        ),
        tokio::spawn(
            StaleStoreSweeper {
                timeout: settings.tessera.stale_store_timeout,
                interval: settings.tessera.sweep_interval,
            }
            .run(service.clone()),
        ),
    ];
    let listener = tokio::net::TcpListener::bind(settings.tessera.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.tessera.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(
        blob_store = %settings.tessera.blob_store,
        format = %migration.format_type,
        "listening on {address}"
    );
    let app = tessera_http::router(tessera_http::AppState { service });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    for worker in workers {
        worker.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM, so in-flight requests finish before exit.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}
