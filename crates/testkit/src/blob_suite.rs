//! The blob-store conformance suite: every function takes fresh, empty containers and panics
//! on the first broken guarantee. `tests/blob_backends.rs` runs each on every backend.

use std::collections::BTreeSet;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use tessera_blob::{
    BlobError, BlobLayout, BlobName, BlobStore, Containers, FormatPolicy, InstanceBlobStore, layout,
};
use tessera_core::{FormatType, InstanceIdentifier, VersionedInstance, Watermark};

/// A test instance with the given watermark.
pub fn instance(watermark: u64) -> VersionedInstance {
    let id = InstanceIdentifier::parse("1.2.826.0.1.1", "1.2.826.0.1.1.2", "1.2.826.0.1.1.2.3")
        .expect("valid UIDs");
    VersionedInstance::new(id, Watermark::new(watermark).expect("valid watermark"))
}

/// Deterministic bytes of the given length, different for each `seed`.
pub fn pattern(seed: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<_>>()
        .into()
}

/// `body` as a stream of chunks of at most `chunk` bytes, the way a request body arrives.
pub fn chunked(
    body: Bytes,
    chunk: usize,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let pieces: Vec<_> = (0..body.len())
        .step_by(chunk)
        .map(|at| Ok(body.slice(at..(at + chunk).min(body.len()))))
        .collect();
    stream::iter(pieces)
}

/// Every blob name in a container.
pub async fn names(store: &BlobStore) -> BTreeSet<String> {
    store
        .list(None)
        .map_ok(|meta| meta.name.to_string())
        .try_collect()
        .await
        .expect("listing")
}

async fn read_all(store: &InstanceBlobStore, instance: &VersionedInstance) -> Bytes {
    let read = store.get_file(instance).await.expect("file readable");
    let chunks: Vec<Bytes> = read.stream.try_collect().await.expect("file stream");
    let body: Bytes = chunks.concat().into();
    assert_eq!(read.size, body.len() as u64, "announced size");
    body
}

fn set<const N: usize>(names: [&str; N]) -> BTreeSet<String> {
    names.into_iter().map(str::to_owned).collect()
}

/// Writes, reads and deletes an instance under `format` and checks that the containers hold
/// exactly the names the FormatType table prescribes (contract §4) at each step.
pub async fn format_table(containers: Containers, format: FormatType) {
    let store = InstanceBlobStore::new(containers.clone(), FormatPolicy::new(format));
    let inst = instance(42);
    let body = pattern(1, 10_000);
    let metadata = Bytes::from_static(br#"{"00080018":{"vr":"UI","Value":["1.2.826.0.1.1.2.3"]}}"#);
    let ranges = Bytes::from_static(br#"{"0":{"offset":10,"length":20}}"#);

    let len = store
        .put_file(&inst, chunked(body.clone(), 1000))
        .await
        .expect("put file");
    assert_eq!(len, body.len() as u64);
    store
        .put_metadata(&inst, metadata.clone())
        .await
        .expect("put metadata");
    store
        .put_frame_ranges(inst.watermark(), ranges.clone())
        .await
        .expect("put frame ranges");

    let old_file = "1.2.826.0.1.1/1.2.826.0.1.1.2/1.2.826.0.1.1.2.3_42.dcm";
    let old_meta = "1.2.826.0.1.1/1.2.826.0.1.1.2/1.2.826.0.1.1.2.3_42_metadata.json";
    let (files, metas) = match format {
        FormatType::Old => (set([old_file]), set([old_meta, "791_42_frames_range.json"])),
        FormatType::Dual => (
            set([old_file, "791_42.dcm"]),
            set([old_meta, "791_42_metadata.json", "791_42_frames_range.json"]),
        ),
        FormatType::New => (
            set(["791_42.dcm"]),
            set(["791_42_metadata.json", "791_42_frames_range.json"]),
        ),
    };
    assert_eq!(names(&containers.files).await, files, "{format} file names");
    assert_eq!(
        names(&containers.metadata).await,
        metas,
        "{format} metadata names"
    );

    assert_eq!(read_all(&store, &inst).await, body);
    assert_eq!(store.get_metadata(&inst).await.expect("metadata"), metadata);
    assert_eq!(
        store
            .get_frame_ranges(inst.watermark())
            .await
            .expect("ranges"),
        Some(ranges)
    );
    assert_eq!(
        store.head_file(&inst).await.expect("head").size,
        body.len() as u64
    );
    let range = store.get_file_range(&inst, 100..164).await.expect("range");
    assert_eq!(range, body.slice(100..164));
    assert_eq!(
        store.fallback_reads(),
        0,
        "{format} reads its own names first"
    );

    store.delete_instance(&inst).await.expect("delete");
    assert!(
        names(&containers.files).await.is_empty(),
        "{format} files left after delete"
    );
    assert!(
        names(&containers.metadata).await.is_empty(),
        "{format} metadata left after delete"
    );
    store
        .delete_instance(&inst)
        .await
        .expect("deleting again is not an error");
    assert!(matches!(
        store.get_file(&inst).await,
        Err(BlobError::NotFound { .. })
    ));
}

/// The small-body path (one atomic put) and the staged path (multipart then copy) are both
/// create-only, in every format: an existing name is never overwritten, and a Dual write that
/// meets an existing New name leaves no Old name behind.
pub async fn create_only(containers: Containers) {
    for staged in [false, true] {
        let containers = small_uploads(containers.clone(), staged);
        let dual = InstanceBlobStore::new(containers.clone(), FormatPolicy::new(FormatType::Dual));
        let new = InstanceBlobStore::new(containers.clone(), FormatPolicy::new(FormatType::New));
        let inst = instance(if staged { 7 } else { 8 });
        let first = pattern(2, 50_000);
        dual.put_file(&inst, chunked(first.clone(), 4096))
            .await
            .expect("first write");
        for store in [&dual, &new] {
            let again = store
                .put_file(&inst, chunked(pattern(3, 50_000), 4096))
                .await;
            assert!(
                matches!(again, Err(BlobError::AlreadyExists { .. })),
                "staged={staged}: {again:?}"
            );
        }
        assert_eq!(
            read_all(&dual, &inst).await,
            first,
            "existing blob untouched"
        );
        dual.put_metadata(&inst, Bytes::from_static(b"{}"))
            .await
            .expect("metadata");
        let again = dual
            .put_metadata(&inst, Bytes::from_static(b"{\"x\":1}"))
            .await;
        assert!(matches!(again, Err(BlobError::AlreadyExists { .. })));
        assert_eq!(
            dual.get_metadata(&inst).await.expect("metadata"),
            Bytes::from_static(b"{}")
        );

        // Only the New name exists: a Dual write creates the Old name, meets the New one, and
        // must roll its Old name back.
        let lone = instance(if staged { 9 } else { 10 });
        new.put_file(&lone, chunked(first.clone(), 4096))
            .await
            .expect("new write");
        let dual_again = dual
            .put_file(&lone, chunked(pattern(4, 50_000), 4096))
            .await;
        assert!(matches!(dual_again, Err(BlobError::AlreadyExists { .. })));
        assert!(
            !containers
                .files
                .exists(&BlobLayout::Old.file(&lone))
                .await
                .expect("exists"),
            "staged={staged}: the Old name of a failed Dual write was left behind"
        );
        assert_no_staging(&containers).await;
    }
}

/// An instance written before its watermark is known (`stage_instance`, as a store does while
/// its reservation runs) gets every name the format writes once named, create-only; staged
/// bodies never named leave nothing behind.
pub async fn staged_instance(containers: Containers) {
    let store = InstanceBlobStore::new(containers.clone(), FormatPolicy::new(FormatType::Dual));
    let inst = instance(21);
    let body = pattern(6, 70_000);
    let metadata = Bytes::from_static(b"{\"00080018\":{}}");
    let (file, meta) = store
        .stage_instance(
            vec![body.slice(..1000), body.slice(1000..)],
            metadata.clone(),
        )
        .await;
    let len = store
        .put_staged_file(&inst, file.expect("file staged"))
        .await
        .expect("file named");
    assert_eq!(len, body.len() as u64);
    store
        .put_staged_metadata(&inst, meta.expect("metadata staged"))
        .await
        .expect("metadata named");
    assert_eq!(read_all(&store, &inst).await, body);
    assert_eq!(store.get_metadata(&inst).await.expect("metadata"), metadata);
    for layout in [BlobLayout::Old, BlobLayout::New] {
        assert!(
            containers
                .files
                .exists(&layout.file(&inst))
                .await
                .expect("exists"),
            "{layout:?} name"
        );
    }

    let (again, _) = store
        .stage_instance(vec![pattern(7, 100)], metadata.clone())
        .await;
    let again = store.put_staged_file(&inst, again.expect("staged")).await;
    assert!(
        matches!(again, Err(BlobError::AlreadyExists { .. })),
        "{again:?}"
    );
    assert_eq!(
        read_all(&store, &inst).await,
        body,
        "existing blob untouched"
    );

    let before = (
        names(&containers.files).await,
        names(&containers.metadata).await,
    );
    let unnamed = store.stage_instance(vec![pattern(8, 100)], metadata).await;
    drop(unnamed);
    assert_eq!(
        (
            names(&containers.files).await,
            names(&containers.metadata).await
        ),
        before,
        "a staged instance never named leaves nothing"
    );
    assert_no_staging(&containers).await;
}

/// A body larger than the single-put limit streams through a staged multipart upload into every
/// name the format writes, and the staging blob is gone afterwards.
pub async fn staged_upload(containers: Containers) {
    let containers = small_uploads(containers, true);
    let store = InstanceBlobStore::new(containers.clone(), FormatPolicy::new(FormatType::Dual));
    let inst = instance(1000);
    let body = pattern(5, 1_000_003);
    let len = store
        .put_file(&inst, chunked(body.clone(), 10_000))
        .await
        .expect("staged put");
    assert_eq!(len, body.len() as u64);
    assert_eq!(
        names(&containers.files).await,
        set([
            "1.2.826.0.1.1/1.2.826.0.1.1.2/1.2.826.0.1.1.2.3_1000.dcm",
            "768_1000.dcm"
        ])
    );
    for layout in [BlobLayout::Old, BlobLayout::New] {
        let read = containers
            .files
            .get(&layout.file(&inst))
            .await
            .expect("read");
        let chunks: Vec<Bytes> = read.stream.try_collect().await.expect("stream");
        assert_eq!(Bytes::from(chunks.concat()), body, "{layout:?} copy");
    }
}

/// A body that fails halfway (client hung up, broken multipart) fails the write and leaves no
/// blob under any name, on both write paths.
pub async fn failed_body_leaves_nothing(containers: Containers) {
    for staged in [false, true] {
        let containers = small_uploads(containers.clone(), staged);
        let store = InstanceBlobStore::new(containers.clone(), FormatPolicy::new(FormatType::Dual));
        let good = chunked(pattern(6, 300_000), 10_000);
        let broken = good.take(20).chain(stream::iter([Err(std::io::Error::other(
            "client went away",
        ))]));
        let result = store.put_file(&instance(77), broken).await;
        assert!(
            matches!(result, Err(BlobError::Body(_))),
            "staged={staged}: {result:?}"
        );
        assert!(
            names(&containers.files).await.is_empty(),
            "staged={staged}: blobs left behind"
        );
    }
}

/// Reads fall back from New to Old names in Dual and New (counted), not in Old, and not in New
/// when the fallback is switched off.
pub async fn fallback_reads(containers: Containers) {
    let old = InstanceBlobStore::new(containers.clone(), FormatPolicy::new(FormatType::Old));
    let inst = instance(5);
    let body = pattern(7, 4096);
    old.put_file(&inst, chunked(body.clone(), 1000))
        .await
        .expect("old put");
    old.put_metadata(&inst, Bytes::from_static(b"{}"))
        .await
        .expect("old metadata");

    for format in [FormatType::Dual, FormatType::New] {
        let store = InstanceBlobStore::new(containers.clone(), FormatPolicy::new(format));
        assert_eq!(read_all(&store, &inst).await, body, "{format} falls back");
        assert_eq!(
            store.get_metadata(&inst).await.expect("metadata"),
            Bytes::from_static(b"{}")
        );
        assert_eq!(store.head_file(&inst).await.expect("head").size, 4096);
        assert_eq!(
            store.get_file_range(&inst, 0..8).await.expect("range"),
            body.slice(0..8)
        );
        assert_eq!(store.fallback_reads(), 4, "{format} counts each fallback");
    }
    let strict = InstanceBlobStore::new(
        containers.clone(),
        FormatPolicy {
            read_fallback: false,
            ..FormatPolicy::new(FormatType::New)
        },
    );
    assert!(matches!(
        strict.get_file(&inst).await,
        Err(BlobError::NotFound { .. })
    ));
    assert!(matches!(
        strict.get_metadata(&inst).await,
        Err(BlobError::NotFound { .. })
    ));

    // Old never reads New names.
    let new_only = instance(6);
    let new = InstanceBlobStore::new(containers.clone(), FormatPolicy::new(FormatType::New));
    new.put_file(&new_only, chunked(body.clone(), 1000))
        .await
        .expect("new put");
    assert!(matches!(
        old.get_file(&new_only).await,
        Err(BlobError::NotFound { .. })
    ));
    assert_eq!(read_all(&new, &new_only).await, body);
}

/// What the original left behind is read: metadata starting with a UTF-8 BOM and frame ranges
/// under the historical spaced name; the delete removes the spaced name too.
pub async fn legacy_blobs(containers: Containers) {
    let store = InstanceBlobStore::new(containers.clone(), FormatPolicy::new(FormatType::New));
    let inst = instance(3);
    let json = br#"{"00100020":{"vr":"LO","Value":["ID1"]}}"#;
    let with_bom = [b"\xEF\xBB\xBF".as_slice(), json].concat();
    containers
        .metadata
        .put_create(&BlobName::from("274_3_metadata.json"), with_bom.into())
        .await
        .expect("seed metadata");
    assert_eq!(
        store.get_metadata(&inst).await.expect("metadata"),
        Bytes::from_static(json)
    );

    let ranges = Bytes::from_static(br#"{"0":{"offset":1,"length":2}}"#);
    containers
        .metadata
        .put_create(
            &layout::legacy_spaced_frame_ranges(inst.watermark()),
            ranges.clone(),
        )
        .await
        .expect("seed spaced frame ranges");
    assert_eq!(
        store
            .get_frame_ranges(inst.watermark())
            .await
            .expect("ranges"),
        Some(ranges)
    );
    assert_eq!(
        store
            .get_frame_ranges(Watermark::new(4).expect("w"))
            .await
            .expect("none"),
        None
    );

    store.delete_instance(&inst).await.expect("delete");
    assert!(names(&containers.metadata).await.is_empty());
}

/// The plain container operations behave the same on every backend.
pub async fn container_basics(containers: Containers) {
    let store = &containers.files;
    let name = BlobName::from("a/b_1.dcm");
    assert!(!store.exists(&name).await.expect("exists"));
    assert!(matches!(
        store.head(&name).await,
        Err(BlobError::NotFound { .. })
    ));
    assert!(matches!(
        store.get(&name).await,
        Err(BlobError::NotFound { .. })
    ));
    store
        .delete_if_exists(&name)
        .await
        .expect("deleting a missing blob is fine");
    store.put_create(&name, pattern(8, 100)).await.expect("put");
    assert!(store.exists(&name).await.expect("exists"));
    assert_eq!(store.head(&name).await.expect("head").size, 100);
    assert_eq!(
        store.get_range(&name, 10..20).await.expect("range"),
        pattern(8, 100).slice(10..20)
    );
    let copy = BlobName::from("c_1.dcm");
    store.copy_create(&name, &copy).await.expect("copy");
    assert!(matches!(
        store.copy_create(&name, &copy).await,
        Err(BlobError::AlreadyExists { .. })
    ));
    assert_eq!(
        store.get_bytes(&copy).await.expect("copy read"),
        pattern(8, 100)
    );
    store.delete_if_exists(&name).await.expect("delete");
    store.delete_if_exists(&copy).await.expect("delete");
    assert!(names(store).await.is_empty());
}

/// A batch of copies (the migration's rounds) behaves like single copies: create-only, a
/// missing source is not found, new folders are made, and after `sync` every copy reads back.
pub async fn batched_copies(containers: Containers) {
    let store = &containers.files;
    let source = BlobName::from("s/t/u_1.dcm");
    store
        .put_create(&source, pattern(9, 40_000))
        .await
        .expect("put");
    let taken = BlobName::from("taken_1.dcm");
    store
        .put_create(&taken, pattern(10, 10))
        .await
        .expect("put");
    let batch = store.copy_batch();
    let flat = BlobName::from("flat_1.dcm");
    let nested = BlobName::from("new/folders/here_1.dcm");
    batch.copy_create(&source, &flat).await.expect("copy");
    batch.copy_create(&source, &nested).await.expect("copy");
    assert!(matches!(
        batch.copy_create(&source, &taken).await,
        Err(BlobError::AlreadyExists { .. })
    ));
    assert!(matches!(
        batch
            .copy_create(&BlobName::from("missing_1.dcm"), &BlobName::from("m_1.dcm"))
            .await,
        Err(BlobError::NotFound { .. })
    ));
    batch.sync().await.expect("sync");
    batch.sync().await.expect("a second sync is harmless");
    for name in [&flat, &nested] {
        let read = store.get(name).await.expect("copy readable");
        let body: Vec<Bytes> = read.stream.try_collect().await.expect("copy read");
        assert_eq!(Bytes::from(body.concat()), pattern(9, 40_000), "{name}");
    }
    assert_eq!(
        store.get_bytes(&taken).await.expect("read"),
        pattern(10, 10),
        "an existing blob is untouched"
    );
    assert_eq!(
        names(store).await,
        set([
            "flat_1.dcm",
            "new/folders/here_1.dcm",
            "s/t/u_1.dcm",
            "taken_1.dcm"
        ])
    );
    store
        .copy_batch()
        .sync()
        .await
        .expect("an empty batch syncs");
}

/// Lowers the upload thresholds so small test bodies take the staged path (or not).
fn small_uploads(containers: Containers, staged: bool) -> Containers {
    let (limit, part) = if staged {
        (16 * 1024, 64 * 1024)
    } else {
        (usize::MAX / 2, 64 * 1024)
    };
    Containers {
        files: containers.files.with_upload_sizes(limit, part),
        metadata: containers.metadata.with_upload_sizes(limit, part),
    }
}

async fn assert_no_staging(containers: &Containers) {
    let staging = BlobName::from(layout::STAGING_PREFIX);
    let left: Vec<_> = containers
        .files
        .list(Some(&staging))
        .try_collect()
        .await
        .expect("list");
    assert!(left.is_empty(), "staging blobs left: {left:?}");
}
