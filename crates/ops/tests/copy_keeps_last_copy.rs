//! The copy never deletes the last good copy: a New file that fails verification is replaced
//! from the Old file only when the Old file exists and matches the recorded length and
//! checksum; otherwise the instance fails and both files stay as they were.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tessera_blob::{
    BlobLayout, BlobStore, BlobStoreLocation, ContainerNames, FormatPolicy, InstanceBlobStore,
};
use tessera_core::{
    ContentChecksum, FormatType, InstanceIdentifier, SearchableAttributes, VersionedInstance,
};
use tessera_index::{InstanceIndex, NewInstance, OperationStatus};
use tessera_ops::{OperationContext, OperationKind, RoundSizes, RunOutcome};

const COPY_ID: &str = "1d4689daca3b4659b0c77bf6c9ff25e1";

fn body(seed: u8) -> Bytes {
    (0..5_000u32)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect::<Vec<_>>()
        .into()
}

async fn get(store: &BlobStore, name: &tessera_blob::BlobName) -> Option<Bytes> {
    store.get_bytes(name).await.ok()
}

/// Indexes an instance whose recorded content is `body(1)` and writes its Old metadata and a
/// New file that does not match (`body(9)`); `old_file` is what the Old file holds, if any.
async fn instance_with_bad_new_file(
    index: &InstanceIndex,
    blobs: &InstanceBlobStore,
    sop: &str,
    old_file: Option<Bytes>,
) -> VersionedInstance {
    let id = InstanceIdentifier::parse("1.2", "1.2.3", sop).expect("UIDs");
    let watermark = index
        .begin_create(&NewInstance {
            id: id.clone(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            attributes: SearchableAttributes {
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.7".into(),
                patient_id: Some("P1".into()),
                ..Default::default()
            },
            native_frames: None,
        })
        .await
        .expect("reserve");
    let mut checksum = ContentChecksum::new();
    checksum.update(&body(1));
    index
        .end_create(watermark, checksum.length(), &checksum.value(), false)
        .await
        .expect("created");
    let instance = VersionedInstance::new(id, watermark);
    let containers = blobs.containers();
    if let Some(old) = old_file {
        containers
            .files
            .put_create(&BlobLayout::Old.file(&instance), old)
            .await
            .expect("old file");
    }
    containers
        .files
        .put_create(&BlobLayout::New.file(&instance), body(9))
        .await
        .expect("bad new file");
    let metadata = Bytes::from_static(b"{}");
    for layout in [BlobLayout::Old, BlobLayout::New] {
        containers
            .metadata
            .put_create(&layout.metadata(&instance), metadata.clone())
            .await
            .expect("metadata");
    }
    instance
}

#[tokio::test]
async fn a_bad_new_file_is_replaced_only_from_a_verified_old_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let index = InstanceIndex::open(&format!("sqlite://{}/index.db", dir.path().display()))
        .await
        .expect("index");
    let containers = BlobStoreLocation::Memory
        .open(None, &ContainerNames::default())
        .await
        .expect("containers");
    let blobs = Arc::new(InstanceBlobStore::new(
        containers.clone(),
        FormatPolicy::new(FormatType::Dual),
    ));
    let old_gone = instance_with_bad_new_file(&index, &blobs, "1.2.3.1", None).await;
    let old_altered = instance_with_bad_new_file(&index, &blobs, "1.2.3.2", Some(body(5))).await;
    let old_good = instance_with_bad_new_file(&index, &blobs, "1.2.3.3", Some(body(1))).await;

    let context = OperationContext {
        index: index.clone(),
        blobs: blobs.clone(),
        owner: "test".into(),
        lease: Duration::from_secs(60),
        rounds: RoundSizes {
            copy: 10,
            deletion: 10,
            cleanup: 10,
        },
        parallelism: 2,
        stop: tokio_util::sync::CancellationToken::new(),
    };
    let outcome = context
        .run(COPY_ID, OperationKind::Copy, None)
        .await
        .expect("copy runs");
    assert_eq!(outcome, RunOutcome::Finished(OperationStatus::Failed));

    let files = &containers.files;
    // Old file gone: the bad New file is the last copy there is, and it is kept.
    assert_eq!(
        get(files, &BlobLayout::New.file(&old_gone)).await,
        Some(body(9))
    );
    // Old file altered: neither file matches the record; both stay as they were.
    assert_eq!(
        get(files, &BlobLayout::New.file(&old_altered)).await,
        Some(body(9))
    );
    assert_eq!(
        get(files, &BlobLayout::Old.file(&old_altered)).await,
        Some(body(5))
    );
    // Old file good: the bad New file is replaced by a copy of it.
    assert_eq!(
        get(files, &BlobLayout::New.file(&old_good)).await,
        Some(body(1))
    );
    assert_eq!(
        get(files, &BlobLayout::Old.file(&old_good)).await,
        Some(body(1))
    );

    let failures = index
        .operation_failures(COPY_ID, 0, 10)
        .await
        .expect("failures");
    let failed: Vec<u64> = failures.iter().map(|(w, _)| *w).collect();
    assert_eq!(
        failed,
        vec![old_gone.watermark().get(), old_altered.watermark().get()]
    );
    assert!(failures[0].1.contains("is missing"), "{}", failures[0].1);
    assert!(
        failures[1].1.contains("not the recorded"),
        "{}",
        failures[1].1
    );
    assert!(
        failures
            .iter()
            .all(|(_, m)| m.contains("both files are kept"))
    );
}
