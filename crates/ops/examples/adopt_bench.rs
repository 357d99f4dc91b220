//! Benchmark (not a test): adoption throughput and peak memory on the filesystem store.
//!
//! `cargo run --release -p tessera-ops --example adopt_bench -- [INSTANCES]` writes INSTANCES
//! small synthetic DICOM files (default 20,000) under Old names with their metadata into a
//! temporary filesystem container, adopts them into a fresh SQLite index, and prints instances
//! per second and the process's peak RSS.

use std::sync::Arc;
use std::time::Instant;

use tessera_blob::{BlobStoreLocation, ContainerNames, FormatPolicy, InstanceBlobStore};
use tessera_core::FormatType;
use tessera_index::InstanceIndex;
use tessera_testkit::synthetic::Synthetic;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("blobs");
    let started = Instant::now();
    for i in 1..=count {
        let mut synthetic = Synthetic::new(
            "1.2.3.4",
            &format!("1.2.3.4.{}", i % 50),
            &format!("1.2.3.4.5.{i}"),
        );
        (synthetic.rows, synthetic.columns, synthetic.frames) = (64, 64, 2);
        let stem = format!(
            "{}/{}/{}_{}",
            synthetic.study,
            synthetic.series,
            synthetic.sop,
            i * 3
        );
        let file = root.join("dicomwebcontainer").join(format!("{stem}.dcm"));
        std::fs::create_dir_all(file.parent().expect("parent"))?;
        std::fs::write(file, synthetic.bytes())?;
    }
    println!(
        "wrote {count} Old-name instances in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let index = InstanceIndex::open(&format!("sqlite://{}/index.db", dir.path().display())).await?;
    let containers = BlobStoreLocation::FileSystem { root }
        .open(None, &ContainerNames::default())
        .await?;
    let blobs = Arc::new(InstanceBlobStore::new(
        containers,
        FormatPolicy::new(FormatType::Old),
    ));
    tessera_testkit::memory::reset_peak_rss();
    let before = tessera_testkit::memory::rss_bytes().unwrap_or(0);
    let started = Instant::now();
    let report = tessera_ops::adopt(&index, &blobs, false, |_| {}).await?;
    let seconds = started.elapsed().as_secs_f64();
    let peak = tessera_testkit::memory::peak_rss_bytes().unwrap_or(0);
    println!(
        "adopted {} instances (metadata written {}, frame ranges written {}, reported {}) in {seconds:.1}s: {:.0} instances/s",
        report.adopted(),
        report.metadata_written,
        report.frame_ranges_written,
        report.reported.len(),
        f64::from(count) / seconds
    );
    println!(
        "peak RSS {} MiB (before adoption {} MiB)",
        peak / 1_048_576,
        before / 1_048_576
    );
    Ok(())
}
