//! The index on SQLite: reservations, completion, retrieval, delete, change feed, removal queue.

use std::time::Duration;

use tessera_core::{InstanceIdentifier, SearchableAttributes, Uid};
use tessera_index::{
    ChangeAction, ChangeState, IndexError, InstanceIndex, NewInstance, RetrieveScope,
};

async fn index() -> (tempfile::TempDir, InstanceIndex) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/sub/index.db", dir.path().display());
    (dir, InstanceIndex::open(&url).await.unwrap())
}

fn new(sop: &str) -> NewInstance {
    NewInstance {
        id: InstanceIdentifier::parse("1.2", "1.2.3", sop).unwrap(),
        transfer_syntax: "1.2.840.10008.1.2.1".into(),
        attributes: SearchableAttributes {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.7".into(),
            patient_id: Some("P1".into()),
            ..Default::default()
        },
    }
}

#[tokio::test]
async fn reserve_complete_retrieve() {
    let (_dir, index) = index().await;
    let w1 = index.begin_create(&new("1.2.3.1")).await.unwrap();
    let w2 = index.begin_create(&new("1.2.3.2")).await.unwrap();
    assert!(w2 > w1);
    let study = RetrieveScope::Study(Uid::parse("1.2").unwrap());
    assert!(
        index.instances(&study).await.unwrap().is_empty(),
        "Creating rows are invisible"
    );
    assert!(matches!(
        index.begin_create(&new("1.2.3.1")).await,
        Err(IndexError::AlreadyExists { creating: true })
    ));
    index
        .end_create(w1, 10, "xxh3-128:00", false)
        .await
        .unwrap();
    assert!(matches!(
        index.begin_create(&new("1.2.3.1")).await,
        Err(IndexError::AlreadyExists { creating: false })
    ));
    let found = index.instances(&study).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].instance.watermark(), w1);
    assert_eq!(found[0].content_length, Some(10));
    let feed = index.change_feed_by_sequence(0, 10).await.unwrap();
    assert_eq!(feed.len(), 1);
    assert_eq!(
        (feed[0].action, feed[0].state),
        (ChangeAction::Create, ChangeState::Current)
    );
}

#[tokio::test]
async fn delete_queues_blobs_and_never_reuses_watermarks() {
    let (_dir, index) = index().await;
    let w1 = index.begin_create(&new("1.2.3.1")).await.unwrap();
    index.end_create(w1, 10, "c", false).await.unwrap();
    let scope = RetrieveScope::Instance(new("1.2.3.1").id);
    assert_eq!(index.delete(&scope, Duration::ZERO).await.unwrap(), 1);
    assert!(matches!(
        index.delete(&scope, Duration::ZERO).await,
        Err(IndexError::NotFound)
    ));
    let feed = index.change_feed_by_sequence(0, 10).await.unwrap();
    assert_eq!(
        feed.iter().map(|e| e.action).collect::<Vec<_>>(),
        [ChangeAction::Create, ChangeAction::Delete]
    );
    assert!(feed.iter().all(|e| e.state == ChangeState::Deleted));
    let w2 = index.begin_create(&new("1.2.3.1")).await.unwrap();
    assert!(w2 > w1, "a new store of the same UIDs gets a new watermark");

    let claimed = index
        .claim_due_removals(5, 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].instance.watermark(), w1);
    assert!(
        index
            .claim_due_removals(5, 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );
    assert_eq!(index.fail_removal(w1, Duration::ZERO).await.unwrap(), 1);
    let again = index
        .claim_due_removals(5, 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(again[0].retry_count, 1);
    index.finish_removal(w1).await.unwrap();
    assert!(!index.is_referenced(w1).await.unwrap());
}

#[tokio::test]
async fn abandoned_and_stale_reservations() {
    let (_dir, index) = index().await;
    let w = index.begin_create(&new("1.2.3.9")).await.unwrap();
    assert_eq!(
        index
            .stale_creating(chrono::Utc::now() + chrono::Duration::seconds(1))
            .await
            .unwrap(),
        [w]
    );
    assert!(
        index
            .stale_creating(chrono::Utc::now() - chrono::Duration::seconds(60))
            .await
            .unwrap()
            .is_empty()
    );
    index.abandon_create(w).await.unwrap();
    assert!(
        index.change_feed_latest().await.unwrap().is_none(),
        "no feed row for an instance that never existed"
    );
    assert!(
        index.is_referenced(w).await.unwrap(),
        "its blobs are queued for removal"
    );
    assert!(matches!(
        index.end_create(w, 1, "c", false).await,
        Err(IndexError::NotFound)
    ));
}

#[tokio::test]
async fn one_process_holds_an_operation_until_its_lease_expires() {
    use tessera_index::{Acquisition, OperationStatus};
    let (_dir, index) = index().await;
    let lease = Duration::from_millis(300);
    let first = index
        .acquire_operation("op", "copy", "a", lease, "{}", "{}")
        .await
        .unwrap();
    assert!(matches!(first, Acquisition::Acquired(ref r) if r.status == OperationStatus::Running));
    assert!(matches!(
        index
            .acquire_operation("op", "copy", "b", lease, "{}", "{}")
            .await
            .unwrap(),
        Acquisition::HeldElsewhere(_)
    ));
    assert!(
        index
            .checkpoint_operation("op", "a", lease, r#"{"x":1}"#, "{}")
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let taken = index
        .acquire_operation("op", "copy", "b", lease, "{}", "{}")
        .await
        .unwrap();
    let Acquisition::Acquired(record) = taken else {
        panic!("expired lease not taken over")
    };
    assert_eq!(
        record.checkpoint, r#"{"x":1}"#,
        "resumes from the last checkpoint"
    );
    assert!(
        !index
            .checkpoint_operation("op", "a", lease, "{}", "{}")
            .await
            .unwrap(),
        "the old owner lost it"
    );
    assert!(
        index
            .finish_operation("op", "b", OperationStatus::Succeeded, "{}", "{}")
            .await
            .unwrap()
    );
    assert!(matches!(
        index
            .acquire_operation("op", "copy", "c", lease, "{}", "{}")
            .await
            .unwrap(),
        Acquisition::AlreadySucceeded(_)
    ));
}
