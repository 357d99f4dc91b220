//! Reservation owners: a dead process's reservation never blocks a store, a live one's is never
//! taken over, and a released operation lease is taken at once.

use std::time::Duration;

use tessera_core::{InstanceIdentifier, SearchableAttributes, Uid};
use tessera_index::{
    Acquisition, IndexError, InstanceIndex, NewInstance, ProcessId, ProcessInfo, RetrieveScope,
};

async fn index() -> (tempfile::TempDir, InstanceIndex) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/index.db", dir.path().display());
    (dir, InstanceIndex::open(&url).await.unwrap())
}

fn new(sop: &str) -> NewInstance {
    NewInstance {
        id: InstanceIdentifier::parse("1.2", "1.2.3", sop).unwrap(),
        transfer_syntax: "1.2.840.10008.1.2.1".into(),
        attributes: SearchableAttributes {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.7".into(),
            ..Default::default()
        },
    }
}

fn info(id: ProcessId) -> ProcessInfo {
    ProcessInfo {
        id,
        host: "h".into(),
        local_key: Some("boot:pidns".into()),
        pid: 4242,
        start_ticks: Some(7),
    }
}

/// A process registered for `lease`, and an index handle that reserves as it.
async fn process(index: &InstanceIndex, lease: Duration) -> (ProcessId, InstanceIndex) {
    let id = ProcessId::random();
    index.register_process(&info(id), lease).await.unwrap();
    (id, index.clone().with_owner(id))
}

#[tokio::test]
async fn a_live_owners_reservation_blocks_and_a_dead_ones_is_taken_over() {
    let (_dir, index) = index().await;
    let (a, as_a) = process(&index, Duration::from_secs(60)).await;
    let (_b, as_b) = process(&index, Duration::from_secs(60)).await;
    let w = as_a.begin_create(&new("1.2.3.1")).await.unwrap();
    assert!(matches!(
        as_b.begin_create(&new("1.2.3.1")).await,
        Err(IndexError::AlreadyExists { creating: true })
    ));
    let registered = index.processes().await.unwrap();
    assert_eq!(registered.len(), 2);
    assert_eq!(registered[0].info, info(a));

    // `a` is forgotten (found dead): its reservation no longer blocks, and is replaced.
    index
        .unregister_process(a)
        .await
        .map(|n| assert_eq!(n, 1))
        .unwrap();
    assert!(index.is_referenced(w).await.unwrap(), "blobs queued");
    let w2 = as_b.begin_create(&new("1.2.3.1")).await.unwrap();
    assert!(w2 > w);
    assert!(matches!(
        as_a.end_create(w, 1, "c", false).await,
        Err(IndexError::NotFound)
    ));
    as_b.end_create(w2, 1, "c", false).await.unwrap();
    let study = RetrieveScope::Study(Uid::parse("1.2").unwrap());
    assert_eq!(index.instances(&study).await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_expired_lease_makes_a_reservation_dead() {
    let (_dir, index) = index().await;
    let (a, as_a) = process(&index, Duration::from_millis(200)).await;
    let (_b, as_b) = process(&index, Duration::from_secs(60)).await;
    let w = as_a.begin_create(&new("1.2.3.1")).await.unwrap();
    assert!(as_b.begin_create(&new("1.2.3.1")).await.is_err());
    assert!(
        as_a.renew_process(a, Duration::from_millis(200))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Taken over directly by a store, before any reaping.
    let w2 = as_b.begin_create(&new("1.2.3.1")).await.unwrap();
    assert!(w2 > w && index.is_referenced(w).await.unwrap());
    assert_eq!(
        index
            .reap_expired_processes(chrono::Utc::now())
            .await
            .unwrap(),
        [a]
    );
    assert!(
        !as_a.renew_process(a, Duration::from_secs(1)).await.unwrap(),
        "a reaped process learns it must register again"
    );
}

#[tokio::test]
async fn orphaned_and_unowned_reservations() {
    let (_dir, index) = index().await;
    let (a, as_a) = process(&index, Duration::from_secs(60)).await;
    let owned = as_a.begin_create(&new("1.2.3.1")).await.unwrap();
    let unowned = index.begin_create(&new("1.2.3.2")).await.unwrap();
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(
        index.stale_creating(later).await.unwrap(),
        [unowned],
        "a registered process's reservation is never stale by age"
    );
    assert_eq!(index.abandon_orphaned_reservations().await.unwrap(), 0);
    // The process row goes without its reservations (as if removed by hand).
    index.unregister_process(ProcessId::random()).await.unwrap();
    assert!(
        matches!(
            index.begin_create(&new("1.2.3.2")).await,
            Err(IndexError::AlreadyExists { creating: true })
        ),
        "an unowned reservation is only swept by age"
    );
    assert_eq!(index.unregister_process(a).await.unwrap(), 1);
    assert!(index.is_referenced(owned).await.unwrap());
    assert_eq!(index.abandon_orphaned_reservations().await.unwrap(), 0);
}

#[tokio::test]
async fn a_released_operation_is_taken_at_once() {
    let (_dir, index) = index().await;
    let lease = Duration::from_secs(600);
    let first = index
        .acquire_operation("op", "copy", "a", lease, "{}", "{}")
        .await
        .unwrap();
    assert!(matches!(first, Acquisition::Acquired(_)));
    assert!(
        index
            .checkpoint_operation("op", "a", lease, r#"{"x":1}"#, "{}")
            .await
            .unwrap()
    );
    assert!(index.release_operation("op", "a").await.unwrap());
    assert!(!index.release_operation("op", "a").await.unwrap());
    let Acquisition::Acquired(record) = index
        .acquire_operation("op", "copy", "b", lease, "{}", "{}")
        .await
        .unwrap()
    else {
        panic!("a released lease is not taken at once")
    };
    assert_eq!(record.checkpoint, r#"{"x":1}"#);
}

#[tokio::test]
async fn a_dead_processs_claimed_removals_are_due_again_at_once() {
    let (_dir, index) = index().await;
    let (a, as_a) = process(&index, Duration::from_secs(60)).await;
    let (_b, as_b) = process(&index, Duration::from_secs(60)).await;
    let w = as_a.begin_create(&new("1.2.3.1")).await.unwrap();
    as_a.abandon_create(w).await.unwrap();
    let lease = Duration::from_secs(300);
    assert_eq!(
        as_a.claim_due_removals(5, 10, lease).await.unwrap().len(),
        1
    );
    assert!(
        as_b.claim_due_removals(5, 10, lease)
            .await
            .unwrap()
            .is_empty()
    );
    index.unregister_process(a).await.unwrap();
    let claimed = as_b.claim_due_removals(5, 10, lease).await.unwrap();
    assert_eq!(claimed.len(), 1, "released with its claimer");
    assert_eq!(claimed[0].instance.watermark(), w);
}

#[tokio::test]
async fn a_probe_that_knows_the_owner_is_gone_lets_a_store_take_over() {
    use tessera_index::GoneProbe;
    let (_dir, index) = index().await;
    let (a, as_a) = process(&index, Duration::from_secs(60)).await;
    let (_b, as_b) = process(&index, Duration::from_secs(60)).await;
    let w = as_a.begin_create(&new("1.2.3.1")).await.unwrap();
    let alive = as_b.clone().with_gone_probe(GoneProbe::new(|_| false));
    assert!(alive.begin_create(&new("1.2.3.1")).await.is_err());
    let knows = as_b.with_gone_probe(GoneProbe::new(move |p| p.id == a && p.pid == 4242));
    let w2 = knows.begin_create(&new("1.2.3.1")).await.unwrap();
    assert!(w2 > w && index.is_referenced(w).await.unwrap());
}
