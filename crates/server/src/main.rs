//! `tessera`: the DICOMweb server and its operator commands.
//!
//! Parses the command line, loads the configuration, starts tracing and hands over to the
//! libraries. Every error ends the process with one line on stderr and a non-zero status.

mod migrate;
mod scheduling;
mod serve;
mod shutdown;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tessera_config::{Config, LoadOptions, keys};

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
    /// Run the DICOMweb server, its background workers and the configured migration operations.
    Serve {
        /// Address to listen on (overrides Tessera:Listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Print the effective configuration, with secrets masked, and where each value came from.
    Config,
    /// Build the index from the blobs of an existing container (one the original server wrote,
    /// or Tessera's own after losing its index). Never modifies or deletes a blob.
    Adopt {
        /// Only count and report; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Follow and check a blob migration.
    Migrate {
        #[command(subcommand)]
        command: MigrateCommand,
    },
}

#[derive(Subcommand)]
enum MigrateCommand {
    /// Show the copy, delete-old and cleanup-deleted operations with their counts.
    Status {
        /// Keep showing until no operation is running.
        #[arg(long)]
        follow: bool,
    },
    /// Count Old-name and New-name blobs in both containers (reads only).
    Count,
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
    if let Command::Config = cli.command {
        print!("{}", config.describe());
        return ExitCode::SUCCESS;
    }
    if let Command::Serve { .. } = cli.command {
        tracing_subscriber::fmt()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .init();
    }
    if config.settings.tessera.batch_scheduling
        && let Err(error) = scheduling::run_as_batch()
    {
        tracing::warn!(%error, "could not run the threads under SCHED_BATCH; they keep the default policy");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.settings.tessera.worker_threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&error),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { .. } => serve::run(config).await,
            Command::Migrate {
                command: MigrateCommand::Status { follow },
            } => migrate::status(&config, follow).await,
            Command::Migrate {
                command: MigrateCommand::Count,
            } => migrate::count(&config).await,
            Command::Adopt { dry_run } => migrate::adopt(&config, dry_run).await,
            Command::Config => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::FAILURE
}
