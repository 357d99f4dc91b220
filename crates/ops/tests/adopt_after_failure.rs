//! An adoption that fails on the blob store releases its operation, so a re-run starts at once
//! (instead of waiting out the lease) and finishes the job.

use bytes::Bytes;
use tessera_blob::{
    BlobLayout, BlobStoreLocation, ContainerNames, FaultInjection, FormatPolicy, InstanceBlobStore,
};
use tessera_core::{FormatType, InstanceIdentifier, VersionedInstance, Watermark};
use tessera_index::InstanceIndex;
use tessera_testkit::synthetic::Synthetic;

#[tokio::test]
async fn a_failed_adoption_can_be_run_again_at_once() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let index = InstanceIndex::open(&format!("sqlite://{}/index.db", dir.path().display()))
        .await
        .expect("index");
    let containers = BlobStoreLocation::Memory
        .open(None, &ContainerNames::default())
        .await
        .expect("containers");
    for i in 1..=3u64 {
        let synthetic = Synthetic::new("1.2.3", "1.2.3.4", &format!("1.2.3.4.{i}"));
        let id = InstanceIdentifier::parse("1.2.3", "1.2.3.4", &synthetic.sop).expect("UIDs");
        let instance = VersionedInstance::new(id, Watermark::new(i).expect("watermark"));
        containers
            .files
            .put_create(
                &BlobLayout::New.file(&instance),
                Bytes::from(synthetic.bytes()),
            )
            .await
            .expect("file");
    }
    let policy = FormatPolicy::new(FormatType::New);
    let broken = containers.clone().with_faults(&FaultInjection {
        failure_rate: 1.0,
        seed: 5,
        ..FaultInjection::default()
    });
    let failed = tessera_ops::adopt(
        &index,
        &InstanceBlobStore::new(broken, policy),
        false,
        |_| {},
    )
    .await;
    assert!(failed.is_err(), "every blob call fails");
    let report = tessera_ops::adopt(
        &index,
        &InstanceBlobStore::new(containers, policy),
        false,
        |_| {},
    )
    .await
    .expect("a re-run is not blocked by the failed one");
    assert_eq!(report.adopted(), 3);
}
