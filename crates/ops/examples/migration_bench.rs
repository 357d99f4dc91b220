//! Benchmark (not a test): copy and delete-old throughput on the filesystem store.
//!
//! `cargo run --release -p tessera-ops --example migration_bench -- [INSTANCES] [KIB]` fills a
//! fresh SQLite index and filesystem blob store (in a temporary folder) with INSTANCES instances
//! of KIB KiB under Old names, times `cp -r` and `cp -al` of that tree, runs the copy
//! (FormatType Dual) and then delete-old (New), and prints files per second for each, with the
//! CPU time per file (per instance for the operations), which other load on a shared machine
//! disturbs less than the rates.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tessera_blob::{BlobStoreLocation, ContainerNames, FormatPolicy, InstanceBlobStore};
use tessera_core::{
    ContentChecksum, FormatType, InstanceIdentifier, SearchableAttributes, VersionedInstance,
};
use tessera_index::{InstanceIndex, NewInstance};
use tessera_ops::{OperationContext, OperationKind, RoundSizes, RunOutcome};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let count: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let kib: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let dir = tempfile::tempdir()?;
    let index = InstanceIndex::open(&format!("sqlite://{}/index.db", dir.path().display())).await?;
    let location = BlobStoreLocation::FileSystem {
        root: dir.path().join("blobs"),
    };
    let containers = location.open(None, &ContainerNames::default()).await?;
    let store = |format| {
        Arc::new(InstanceBlobStore::new(
            containers.clone(),
            FormatPolicy::new(format),
        ))
    };

    let old = store(FormatType::Old);
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(|i| {
            let (index, old) = (index.clone(), old.clone());
            async move {
                let id =
                    InstanceIdentifier::parse("1.2.3.4", "1.2.3.4.5", &format!("1.2.3.4.5.{i}"))
                        .expect("uid");
                let new = NewInstance {
                    id: id.clone(),
                    transfer_syntax: "1.2.840.10008.1.2.1".into(),
                    attributes: SearchableAttributes {
                        sop_class_uid: "1.2.840.10008.5.1.4.1.1.7".into(),
                        ..Default::default()
                    },
                    native_frames: None,
                };
                let watermark = index.begin_create(&new).await.expect("reserve");
                let instance = VersionedInstance::new(id, watermark);
                let body = Bytes::from(vec![(i % 251) as u8; kib * 1024]);
                let mut checksum = ContentChecksum::new();
                checksum.update(&body);
                old.put_file(
                    &instance,
                    futures::stream::iter([Ok::<_, std::io::Error>(body)]),
                )
                .await
                .expect("file");
                old.put_metadata(&instance, Bytes::from(format!("{{\"i\":{i}}}")))
                    .await
                    .expect("metadata");
                index
                    .end_create(watermark, checksum.length(), &checksum.value(), false)
                    .await
                    .expect("complete");
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    println!(
        "filled {count} instances of {kib} KiB in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let blobs = dir.path().join("blobs");
    let files = count_files(&blobs)?;
    for (name, flags) in [("cp -r", "-r"), ("cp -al", "-al")] {
        let target = dir.path().join(format!("copy{flags}"));
        let started = Instant::now();
        let cpu_before = children_cpu_seconds();
        let status = std::process::Command::new("cp")
            .arg(flags)
            .arg(&blobs)
            .arg(&target)
            .status()?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu = match (cpu_before, children_cpu_seconds()) {
            (Some(before), Some(after)) => {
                format!(", CPU {:.0} µs/file", (after - before) * 1e6 / files as f64)
            }
            _ => String::new(),
        };
        assert!(status.success(), "{name} failed");
        println!(
            "{name:<18} {files} files in {seconds:.1}s: {:.0} files/s{cpu}",
            files as f64 / seconds
        );
        std::fs::remove_dir_all(&target)?;
    }

    let context = |blobs| OperationContext {
        index: index.clone(),
        blobs,
        owner: "bench".into(),
        lease: Duration::from_secs(60),
        rounds: RoundSizes {
            copy: 200,
            deletion: 200,
            cleanup: 200,
        },
        parallelism: 5,
        stop: tokio_util::sync::CancellationToken::new(),
    };
    for (kind, format, id) in [
        (
            OperationKind::Copy,
            FormatType::Dual,
            "00000000000000000000000000000001",
        ),
        (
            OperationKind::MigrationDeletion,
            FormatType::New,
            "00000000000000000000000000000002",
        ),
    ] {
        let started = Instant::now();
        let cpu_before = cpu_seconds();
        let outcome = context(store(format)).run(id, kind, None).await?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu = match (cpu_before, cpu_seconds()) {
            (Some(before), Some(after)) => format!(
                ", CPU {:.0} µs/instance",
                (after - before) * 1e6 / f64::from(count)
            ),
            _ => String::new(),
        };
        assert!(matches!(outcome, RunOutcome::Finished(_)), "{outcome:?}");
        // Each instance is two blobs (its file and its metadata), so files/s compares with cp.
        println!(
            "{:<18} {count} instances in {seconds:.1}s: {:.0} instances/s, {:.0} files/s{cpu} ({outcome:?})",
            kind.name(),
            f64::from(count) / seconds,
            2.0 * f64::from(count) / seconds
        );
    }
    Ok(())
}

/// CPU time (user and system, all threads) this process has used, from `/proc/self/stat`
/// (Linux; clock ticks of 1/100 s, the usual `CLK_TCK`): on a shared machine, the figure that
/// other load disturbs least.
fn cpu_seconds() -> Option<f64> {
    stat_seconds(11)
}

/// CPU time of the children this process has waited for (the `cp` runs), likewise.
fn children_cpu_seconds() -> Option<f64> {
    stat_seconds(13)
}

/// The sum of two consecutive clock-tick fields of `/proc/self/stat`, `skip` fields after the
/// state field (11: utime and stime; 13: cutime and cstime), in seconds.
fn stat_seconds(skip: usize) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name (which may hold spaces) start at the state field.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(skip);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some((user + system) / 100.0)
}

/// Regular files under `root`, at any depth.
fn count_files(root: &std::path::Path) -> std::io::Result<u64> {
    let mut count = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            } else {
                count += 1;
            }
        }
    }
    Ok(count)
}
