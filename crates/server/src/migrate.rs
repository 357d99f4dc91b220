//! `tessera migrate`: what operators need to follow and check a blob migration.

use std::io::IsTerminal;
use std::time::Duration;

use futures::TryStreamExt;
use tessera_blob::layout::{ParsedName, parse_name};
use tessera_config::Config;
use tessera_index::{OperationResults, OperationStatus};

use crate::serve::{migration_settings, open_stores};

/// `tessera migrate status [--follow]`: the three migration operations with their counts; with
/// `--follow`, until none is running (a progress bar on a terminal, plain lines otherwise).
pub async fn status(config: &Config, follow: bool) -> Result<(), Box<dyn std::error::Error>> {
    let (index, _) = open_stores(config).await?;
    let ids = migration_settings(config);
    let operations = [
        ("copy", ids.copy_id),
        ("migrationDeletion", ids.delete_id),
        ("cleanupDeleted", ids.cleanup_id),
    ];
    let terminal = std::io::stdout().is_terminal();
    loop {
        let mut running = false;
        let mut lines = Vec::new();
        for (kind, id) in &operations {
            let line = match index.operation(id).await? {
                None => format!("{kind:<18} {id}  absent"),
                Some(record) => {
                    let results = OperationResults::parse(&record.results);
                    let percent =
                        results.percent_complete(record.status == OperationStatus::Succeeded);
                    running |= record.status == OperationStatus::Running;
                    let bar = if terminal {
                        format!("[{:<20}] ", "#".repeat((percent / 5) as usize))
                    } else {
                        String::new()
                    };
                    format!(
                        "{kind:<18} {id}  {status:<10} {bar}{percent:>3}%  processed={} copied={} alreadyPresent={} verified={} deleted={} skipped={} failed={}",
                        results.processed,
                        results.copied,
                        results.already_present,
                        results.verified,
                        results.deleted,
                        results.skipped,
                        results.failed,
                        status = record.status.as_str(),
                    )
                }
            };
            lines.push(line);
        }
        if terminal && follow {
            print!("\x1b[2J\x1b[H");
        }
        println!("{}", lines.join("\n"));
        if !follow || !running {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `tessera migrate count`: a dry run that lists the containers and counts Old-name and
/// New-name blobs, so operators can see how far a migration got (and plan one).
pub async fn count(config: &Config) -> Result<(), Box<dyn std::error::Error>> {
    let (_, blobs) = open_stores(config).await?;
    let containers = blobs.containers();
    for (label, store) in [
        ("files", &containers.files),
        ("metadata", &containers.metadata),
    ] {
        let (mut old, mut new, mut other) = (0u64, 0u64, 0u64);
        let mut listing = store.list(None);
        while let Some(meta) = listing.try_next().await? {
            match parse_name(meta.name.as_ref()) {
                Some(ParsedName::Old { .. }) => old += 1,
                Some(ParsedName::New { .. }) => new += 1,
                None => other += 1,
            }
        }
        println!(
            "{label:<9} container {:<20} old={old} new={new} other={other}",
            store.container()
        );
    }
    Ok(())
}

/// `tessera adopt [--dry-run]`: builds the index from the blob store and prints a summary:
/// instances adopted by format, and every blob left alone with the reason.
pub async fn adopt(config: &Config, dry_run: bool) -> Result<(), Box<dyn std::error::Error>> {
    let (index, blobs) = open_stores(config).await?;
    let terminal = std::io::stdout().is_terminal();
    let report = tessera_ops::adopt(&index, &blobs, dry_run, |progress| {
        let line = format!(
            "scanned {} file blobs, adopted {} instances",
            progress.scanned,
            progress.adopted()
        );
        if terminal {
            print!("\r{line}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        } else {
            println!("{line}");
        }
    })
    .await;
    if terminal {
        println!();
    }
    if let Some(tally) = blobs.containers().files.fault_tally() {
        eprintln!("fault injection: {tally}");
    }
    let report = report?;
    let verb = if dry_run { "would adopt" } else { "adopted" };
    println!(
        "{verb} {} instances: old {}, new {}, dual {}; already indexed {}",
        report.adopted(),
        report.adopted_old,
        report.adopted_new,
        report.adopted_dual,
        report.already_indexed
    );
    if !dry_run {
        println!(
            "metadata written {}, frame ranges written {}",
            report.metadata_written, report.frame_ranges_written
        );
    }
    let reasons: Vec<String> = report
        .reasons()
        .iter()
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect();
    println!(
        "reported {} blobs{}{}",
        report.reported.len(),
        if reasons.is_empty() { "" } else { ": " },
        reasons.join(", ")
    );
    for (reason, name) in &report.reported {
        println!("  {reason:<22} {name}");
    }
    Ok(())
}
