//! The index conformance suite: every engine passes the same assertions (watermarks, create
//! and delete transactions, the change feed, the removal queue and its leases, operations with
//! leases and checkpoints, QIDO search, adoption, the process registry, and claims and
//! migrations raced by several callers at once). Each case takes a fresh index;
//! `tests/index_engines.rs` runs each on SQLite and PostgreSQL.

use std::collections::BTreeSet;
use std::time::Duration;

use tessera_core::{
    InstanceIdentifier, Matcher, QidoFields, QidoQuery, QueryAttribute, QueryLevel,
    SearchableAttributes, Uid, Watermark,
};
use tessera_index::{
    Acquisition, Adoption, ChangeAction, ChangeState, FoundInstance, GoneProbe, IndexError,
    InstanceIndex, NativeFrames, NewInstance, OperationStatus, ProcessId, ProcessInfo,
    RetrieveScope,
};

use crate::index::{FreshDatabase, TestIndex};

fn new(sop: &str) -> NewInstance {
    NewInstance {
        id: InstanceIdentifier::parse("1.2", "1.2.3", sop).unwrap(),
        transfer_syntax: "1.2.840.10008.1.2.1".into(),
        attributes: SearchableAttributes {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.7".into(),
            patient_id: Some("P1".into()),
            ..Default::default()
        },
        native_frames: None,
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

pub async fn reserve_complete_retrieve(t: &TestIndex) {
    let index = &t.index;
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
    assert_eq!(found[0].native_frames, None);

    // A native frame layout recorded at reservation comes back with the row.
    let frames = NativeFrames::fitting(1_000, 512, 3, 1_600).unwrap();
    let w3 = index
        .begin_create(&NewInstance {
            native_frames: Some(frames),
            ..new("1.2.3.3")
        })
        .await
        .unwrap();
    index
        .end_create(w3, 2_600, "xxh3-128:00", false)
        .await
        .unwrap();
    let scope =
        RetrieveScope::Instance(InstanceIdentifier::parse("1.2", "1.2.3", "1.2.3.3").unwrap());
    let found = index.instances(&scope).await.unwrap();
    assert_eq!(found[0].native_frames, Some(frames));
    assert!(!found[0].has_frame_ranges);
    let feed = index.change_feed_by_sequence(0, 10).await.unwrap();
    assert_eq!(feed.len(), 2);
    assert_eq!(
        (feed[0].action, feed[0].state),
        (ChangeAction::Create, ChangeState::Current)
    );
}

pub async fn delete_queues_blobs_and_never_reuses_watermarks(t: &TestIndex) {
    let index = &t.index;
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

pub async fn abandoned_and_stale_reservations(t: &TestIndex) {
    let index = &t.index;
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

pub async fn one_process_holds_an_operation_until_its_lease_expires(t: &TestIndex) {
    let index = &t.index;
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

pub async fn a_live_owners_reservation_blocks_and_a_dead_ones_is_taken_over(t: &TestIndex) {
    let index = &t.index;
    let (a, as_a) = process(index, Duration::from_secs(60)).await;
    let (_b, as_b) = process(index, Duration::from_secs(60)).await;
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

pub async fn an_expired_lease_makes_a_reservation_dead(t: &TestIndex) {
    let index = &t.index;
    let (a, as_a) = process(index, Duration::from_millis(200)).await;
    let (_b, as_b) = process(index, Duration::from_secs(60)).await;
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

pub async fn orphaned_and_unowned_reservations(t: &TestIndex) {
    let index = &t.index;
    let (a, as_a) = process(index, Duration::from_secs(60)).await;
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

pub async fn a_released_operation_is_taken_at_once(t: &TestIndex) {
    let index = &t.index;
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

pub async fn a_dead_processs_claimed_removals_are_due_again_at_once(t: &TestIndex) {
    let index = &t.index;
    let (a, as_a) = process(index, Duration::from_secs(60)).await;
    let (_b, as_b) = process(index, Duration::from_secs(60)).await;
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

pub async fn a_probe_that_knows_the_owner_is_gone_lets_a_store_take_over(t: &TestIndex) {
    let index = &t.index;
    let (a, as_a) = process(index, Duration::from_secs(60)).await;
    let (_b, as_b) = process(index, Duration::from_secs(60)).await;
    let w = as_a.begin_create(&new("1.2.3.1")).await.unwrap();
    let alive = as_b.clone().with_gone_probe(GoneProbe::new(|_| false));
    assert!(alive.begin_create(&new("1.2.3.1")).await.is_err());
    let knows = as_b.with_gone_probe(GoneProbe::new(move |p| p.id == a && p.pid == 4242));
    let w2 = knows.begin_create(&new("1.2.3.1")).await.unwrap();
    assert!(w2 > w && index.is_referenced(w).await.unwrap());
}

fn instance(study: &str, series: &str, sop: &str, attributes: SearchableAttributes) -> NewInstance {
    NewInstance {
        id: InstanceIdentifier::parse(study, series, sop).unwrap(),
        transfer_syntax: "1.2.840.10008.1.2.1".into(),
        attributes: SearchableAttributes {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.7".into(),
            ..attributes
        },
        native_frames: None,
    }
}

/// The first 10 rows of `level`, newest first, with every field.
fn all_at(level: QueryLevel) -> QidoQuery {
    QidoQuery {
        level,
        study: None,
        series: None,
        filters: vec![],
        limit: 10,
        offset: 0,
        fields: QidoFields::all(),
    }
}

async fn store(index: &InstanceIndex, new: &NewInstance) -> Watermark {
    let w = index.begin_create(new).await.unwrap();
    index.end_create(w, 1, "xxh3-128:0", false).await.unwrap();
    w
}

pub async fn change_feed_states_and_paging(t: &TestIndex) {
    let index = &t.index;
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let w1 = store(index, &new("1.2.3.1")).await;
    let scope = RetrieveScope::Instance(new("1.2.3.1").id);
    index.delete(&scope, Duration::ZERO).await.unwrap();
    let w2 = store(index, &new("1.2.3.1")).await;
    let w3 = store(index, &new("1.2.3.2")).await;
    let feed = index.change_feed_by_sequence(0, 100).await.unwrap();
    let seen: Vec<_> = feed
        .iter()
        .map(|e| {
            (
                e.action,
                e.instance.watermark(),
                e.state,
                e.current_watermark,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (ChangeAction::Create, w1, ChangeState::Replaced, Some(w2)),
            (ChangeAction::Delete, w1, ChangeState::Replaced, Some(w2)),
            (ChangeAction::Create, w2, ChangeState::Current, Some(w2)),
            (ChangeAction::Create, w3, ChangeState::Current, Some(w3)),
        ]
    );
    assert!(feed.windows(2).all(|p| p[0].sequence < p[1].sequence));
    let window = index
        .change_feed_by_sequence(feed[0].sequence, 2)
        .await
        .unwrap();
    assert_eq!(window, feed[1..3]);
    let after = chrono::Utc::now() + chrono::Duration::seconds(1);
    let by_time = index
        .change_feed_by_time(Some(before), Some(after), 1, 2)
        .await
        .unwrap();
    assert_eq!(by_time, feed[1..3]);
    assert!(
        index
            .change_feed_by_time(Some(after), None, 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        index.change_feed_latest().await.unwrap().as_ref(),
        feed.last()
    );
    assert_eq!(
        index.deletes_since(before, 0, 10).await.unwrap(),
        feed[1..2]
    );
    assert_eq!(index.count_deletes_since(before).await.unwrap(), 1);
}

/// A refused store changes nothing: not the stored study's attributes, and not what comes next
/// (on SQLite the refusal rolls back a one-shot transaction on the writer connection).
pub async fn a_refused_duplicate_leaves_the_study_as_it_was(t: &TestIndex) {
    let index = &t.index;
    let named = |name: &str| SearchableAttributes {
        patient_name: Some(name.into()),
        patient_id: Some("P1".into()),
        ..Default::default()
    };
    store(
        index,
        &instance("4.4", "4.4.1", "4.4.1.1", named("First^Name")),
    )
    .await;
    assert!(matches!(
        index
            .begin_create(&instance("4.4", "4.4.1", "4.4.1.1", named("Second^Name")))
            .await,
        Err(IndexError::AlreadyExists { creating: false })
    ));
    let studies = async || index.search(&all_at(QueryLevel::Study)).await.unwrap();
    let rows = studies().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        rows[0].value(QueryAttribute::PatientName),
        Some("First^Name")
    );
    // A write outside the group commits (a delete) still gets the writer connection.
    store(
        index,
        &instance("5.5", "5.5.1", "5.5.1.1", named("Other^Name")),
    )
    .await;
    let other = RetrieveScope::Study(Uid::parse("5.5").unwrap());
    assert_eq!(index.delete(&other, Duration::ZERO).await.unwrap(), 1);
    store(
        index,
        &instance("4.4", "4.4.1", "4.4.1.2", named("First^Name")),
    )
    .await;
    let rows = studies().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].study_instances, Some(2));
}

/// Studies and series are listed newest first by when they were created, as the original lists
/// them (by StudyKey and SeriesKey): a later store into one leaves it in its place, whether it
/// repeats its attributes or changes them, and changed attributes are the latest store's.
pub async fn a_later_instance_updates_its_study_and_series_in_place(t: &TestIndex) {
    let index = &t.index;
    let attributes = |name: &str, modality: &str| SearchableAttributes {
        patient_name: Some(name.into()),
        patient_id: Some("P7".into()),
        modality: Some(modality.into()),
        ..Default::default()
    };
    let listed = async |level, attribute| {
        let rows = index.search(&all_at(level)).await.unwrap();
        let values = |attribute| -> Vec<String> {
            rows.iter()
                .map(|row| row.value(attribute).unwrap_or_default().to_owned())
                .collect()
        };
        (values(attribute), values(QueryAttribute::StudyInstanceUid))
    };
    let studies = async || listed(QueryLevel::Study, QueryAttribute::PatientName).await;
    let series = async || listed(QueryLevel::Series, QueryAttribute::Modality).await;
    let add = async |study: &str, sop: &str, name: &str, modality: &str| {
        let series = format!("{study}.1");
        let new = instance(study, &series, sop, attributes(name, modality));
        store(index, &new).await;
    };
    let owned = |values: [&str; 2]| values.map(str::to_owned).to_vec();
    add("7.1", "7.1.1.1", "A^A", "CT").await;
    add("7.2", "7.2.1.1", "B^B", "CT").await;
    assert_eq!(studies().await.1, ["7.2", "7.1"]);
    // The same attributes again: nothing moves.
    add("7.1", "7.1.1.2", "A^A", "CT").await;
    assert_eq!(
        studies().await,
        (owned(["B^B", "A^A"]), owned(["7.2", "7.1"]))
    );
    assert_eq!(series().await.1, ["7.2", "7.1"]);
    // New attributes: the latest store's win, and the rows stay in their place.
    add("7.1", "7.1.1.3", "C^C", "MR").await;
    assert_eq!(
        studies().await,
        (owned(["B^B", "C^C"]), owned(["7.2", "7.1"]))
    );
    assert_eq!(series().await, (owned(["CT", "MR"]), owned(["7.2", "7.1"])));
    // A study created later comes first.
    add("7.3", "7.3.1.1", "D^D", "CT").await;
    assert_eq!(studies().await.1, ["7.3", "7.2", "7.1"]);
}

pub async fn qido_search(t: &TestIndex) {
    let index = &t.index;
    let patient = |name: &str, id: &str, date: &str| SearchableAttributes {
        patient_name: Some(name.into()),
        patient_id: Some(id.into()),
        study_date: Some(date.into()),
        accession_number: Some(format!("ACC-{id}")),
        ..Default::default()
    };
    let ct = |a: SearchableAttributes| SearchableAttributes {
        modality: Some("CT".into()),
        ..a
    };
    let mr = |a: SearchableAttributes| SearchableAttributes {
        modality: Some("MR".into()),
        ..a
    };
    let muller = patient("Müller^Jürgen", "P1", "20240105");
    let doe = patient("Doe^Jane", "p2", "20230610");
    store(
        index,
        &instance("1.1", "1.1.1", "1.1.1.1", ct(muller.clone())),
    )
    .await;
    store(
        index,
        &instance("1.1", "1.1.1", "1.1.1.2", ct(muller.clone())),
    )
    .await;
    store(
        index,
        &instance("1.1", "1.1.2", "1.1.2.1", mr(muller.clone())),
    )
    .await;
    store(index, &instance("2.2", "2.2.1", "2.2.1.1", mr(doe.clone()))).await;
    // Reserved, never completed: invisible everywhere.
    index
        .begin_create(&instance("3.3", "3.3.1", "3.3.1.1", ct(doe.clone())))
        .await
        .unwrap();
    // A reservation beside a stored instance: its study and series stay visible.
    index
        .begin_create(&instance("2.2", "2.2.1", "2.2.1.9", mr(doe.clone())))
        .await
        .unwrap();

    let query = |level, filters: Vec<(QueryAttribute, Matcher)>| QidoQuery {
        level,
        study: None,
        series: None,
        filters,
        limit: 100,
        offset: 0,
        fields: QidoFields::all(),
    };
    let studies = |rows: Vec<tessera_index::QidoRow>| -> Vec<String> {
        rows.iter()
            .map(|r| {
                r.value(QueryAttribute::StudyInstanceUid)
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let all = index
        .search(&query(QueryLevel::Study, vec![]))
        .await
        .unwrap();
    assert_eq!(
        studies(all.clone()),
        ["2.2", "1.1"],
        "newest first, Creating hidden"
    );
    let muller_row = &all[1];
    assert_eq!(muller_row.study_series, Some(2));
    assert_eq!(muller_row.study_instances, Some(3));
    assert_eq!(muller_row.modalities_in_study, ["CT", "MR"]);
    let only_asked = index
        .search(&QidoQuery {
            fields: QidoFields {
                attributes: vec![QueryAttribute::PatientId],
                ..QidoFields::default()
            },
            ..query(QueryLevel::Study, vec![])
        })
        .await
        .unwrap();
    assert_eq!(
        only_asked[1],
        tessera_index::QidoRow {
            values: vec![
                (QueryAttribute::StudyInstanceUid, "1.1".into()),
                (QueryAttribute::PatientId, "P1".into()),
            ],
            ..Default::default()
        },
        "only what is asked for, and the study's UID"
    );
    assert_eq!(muller_row.value(QueryAttribute::PatientId), Some("P1"));
    assert_eq!(muller_row.series_instances, None);

    for (filter, expected) in [
        (
            (QueryAttribute::PatientId, Matcher::Exact("P2".into())),
            vec!["2.2"],
        ),
        (
            (QueryAttribute::PatientName, Matcher::Fuzzy("mul".into())),
            vec!["1.1"],
        ),
        (
            (
                QueryAttribute::PatientName,
                Matcher::Exact("MULLER^JURGEN".into()),
            ),
            vec!["1.1"],
        ),
        (
            (
                QueryAttribute::AccessionNumber,
                Matcher::Wildcard("acc-p?".into()),
            ),
            vec!["2.2", "1.1"],
        ),
        (
            (
                QueryAttribute::StudyDate,
                Matcher::Range(Some("20240101".into()), None),
            ),
            vec!["1.1"],
        ),
        (
            (
                QueryAttribute::ModalitiesInStudy,
                Matcher::Exact("ct".into()),
            ),
            vec!["1.1"],
        ),
        (
            (
                QueryAttribute::StudyInstanceUid,
                Matcher::UidList(vec!["2.2".into(), "9.9".into()]),
            ),
            vec!["2.2"],
        ),
        (
            (QueryAttribute::PatientId, Matcher::Exact("P%".into())),
            vec![],
        ),
    ] {
        let found = index
            .search(&query(QueryLevel::Study, vec![filter.clone()]))
            .await
            .unwrap();
        assert_eq!(studies(found), expected, "{filter:?}");
    }

    let series = index
        .search(&QidoQuery {
            study: Some(Uid::parse("1.1").unwrap()),
            ..query(QueryLevel::Series, vec![])
        })
        .await
        .unwrap();
    let counts: Vec<_> = series
        .iter()
        .map(|r| {
            (
                r.value(QueryAttribute::SeriesInstanceUid)
                    .unwrap()
                    .to_owned(),
                r.series_instances,
            )
        })
        .collect();
    assert_eq!(
        counts,
        [("1.1.2".to_owned(), Some(1)), ("1.1.1".to_owned(), Some(2))]
    );

    let instances = index
        .search(&QidoQuery {
            limit: 2,
            offset: 1,
            ..query(QueryLevel::Instance, vec![])
        })
        .await
        .unwrap();
    let sops: Vec<_> = instances
        .iter()
        .map(|r| r.value(QueryAttribute::SopInstanceUid).unwrap().to_owned())
        .collect();
    assert_eq!(sops, ["1.1.2.1", "1.1.1.2"], "newest first, paged");
    assert_eq!(
        instances[0].sop_class_uid.as_deref(),
        Some("1.2.840.10008.5.1.4.1.1.7")
    );
    assert_eq!(instances[0].value(QueryAttribute::Modality), Some("MR"));
}

/// Paging through a search gives every match exactly once, at each level, whatever index the
/// engine picks for the search (an index in result order once made SQLite apply OFFSET wrongly:
/// it counted OFFSET once per instance of a matching series or study). Two instances per series.
pub async fn qido_pages_are_disjoint_and_complete(t: &TestIndex) {
    let index = &t.index;
    for study in 0..60 {
        for series in 0..2 {
            let attributes = SearchableAttributes {
                modality: Some(if series == 0 { "MR" } else { "CT" }.into()),
                patient_id: Some(format!("P{}", study % 7)),
                ..Default::default()
            };
            let (study, series) = (format!("9.{study}"), format!("9.{study}.{series}"));
            for sop in 1..=2 {
                store(
                    index,
                    &instance(
                        &study,
                        &series,
                        &format!("{series}.{sop}"),
                        attributes.clone(),
                    ),
                )
                .await;
            }
        }
    }
    let cases = [
        (
            QueryLevel::Series,
            vec![(QueryAttribute::Modality, Matcher::Exact("MR".into()))],
            60,
        ),
        (QueryLevel::Series, vec![], 120),
        (
            QueryLevel::Study,
            vec![(
                QueryAttribute::ModalitiesInStudy,
                Matcher::Exact("MR".into()),
            )],
            60,
        ),
        (QueryLevel::Study, vec![], 60),
        (
            QueryLevel::Instance,
            vec![(QueryAttribute::Modality, Matcher::Exact("MR".into()))],
            120,
        ),
    ];
    for (level, filters, expected) in cases {
        let mut seen = Vec::new();
        for page in 0.. {
            let rows = index
                .search(&QidoQuery {
                    level,
                    study: None,
                    series: None,
                    filters: filters.clone(),
                    limit: 7,
                    offset: page * 7,
                    fields: QidoFields::default(),
                })
                .await
                .unwrap();
            assert!(rows.len() <= 7);
            if rows.is_empty() {
                break;
            }
            seen.extend(rows.iter().map(|r| {
                [
                    QueryAttribute::StudyInstanceUid,
                    QueryAttribute::SeriesInstanceUid,
                    QueryAttribute::SopInstanceUid,
                ]
                .map(|a| r.value(a).unwrap_or_default().to_owned())
            }));
        }
        let distinct: std::collections::HashSet<_> = seen.iter().cloned().collect();
        assert_eq!(
            seen.len(),
            expected,
            "{level:?} {filters:?}: every match once"
        );
        assert_eq!(
            distinct.len(),
            expected,
            "{level:?} {filters:?}: no match twice"
        );
    }
}

pub async fn adoption_keeps_the_highest_watermark(t: &TestIndex) {
    let index = &t.index;
    let found = |watermark: u64| FoundInstance {
        instance: new("1.2.3.1"),
        watermark: Watermark::new(watermark).unwrap(),
        content_length: 10,
        checksum: "xxh3-128:1".into(),
        has_frame_ranges: false,
    };
    assert_eq!(index.adopt(&found(100)).await.unwrap(), Adoption::Adopted);
    assert_eq!(
        index.adopt(&found(100)).await.unwrap(),
        Adoption::AlreadyIndexed
    );
    assert_eq!(
        index.adopt(&found(50)).await.unwrap(),
        Adoption::Leftover(Watermark::new(100).unwrap())
    );
    assert_eq!(
        index.adopt(&found(150)).await.unwrap(),
        Adoption::Replaced(Watermark::new(100).unwrap())
    );
    assert!(index.next_watermark().await.unwrap() > 150);
    let next = index.begin_create(&new("1.2.3.2")).await.unwrap();
    assert!(
        next.get() > 150,
        "reservations continue above what was found"
    );
    let stored = index
        .instances(&RetrieveScope::Instance(new("1.2.3.1").id))
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].instance.watermark().get(), 150);
    assert_eq!(stored[0].content_length, Some(10));
    assert_eq!(index.count_created().await.unwrap(), 1);
    assert_eq!(index.max_created_watermark().await.unwrap(), Some(150));
}

pub async fn operation_failures_and_walks(t: &TestIndex) {
    let index = &t.index;
    let mut stored = Vec::new();
    for n in 1..=5 {
        stored.push(store(index, &new(&format!("1.2.3.{n}"))).await.get());
    }
    let below = index.instances_below(Some(stored[3]), 2).await.unwrap();
    let walked: Vec<u64> = below.iter().map(|s| s.instance.watermark().get()).collect();
    assert_eq!(walked, [stored[2], stored[1]]);
    let started = chrono::Utc::now();
    let since = index
        .instances_since(stored[2], stored[4], started, 10)
        .await
        .unwrap();
    assert!(
        since.is_empty(),
        "nothing stored or completed after the walk"
    );
    assert_eq!(
        index
            .instance_by_watermark(stored[0])
            .await
            .unwrap()
            .map(|s| s.instance.watermark().get()),
        Some(stored[0])
    );
    index.record_content(stored[0], 99, "x").await.unwrap();
    index
        .record_operation_failure("op", stored[1], "first")
        .await
        .unwrap();
    index
        .record_operation_failure("op", stored[1], "second")
        .await
        .unwrap();
    index
        .record_operation_failure("op", stored[3], "other")
        .await
        .unwrap();
    assert_eq!(
        index.operation_failures("op", 0, 10).await.unwrap(),
        [
            (stored[1], "second".to_owned()),
            (stored[3], "other".to_owned())
        ]
    );
    index
        .clear_operation_failure("op", stored[1])
        .await
        .unwrap();
    assert_eq!(
        index.operation_failures("op", 0, 10).await.unwrap().len(),
        1
    );
    // A round's outcomes at once: stored[3] succeeded now, stored[0] and stored[2] failed.
    index
        .settle_operation_failures(
            "op",
            &[stored[3], stored[1]],
            &[(stored[0], "zero".into()), (stored[2], "two".into())],
        )
        .await
        .unwrap();
    assert_eq!(
        index.operation_failures("op", 0, 10).await.unwrap(),
        [
            (stored[0], "zero".to_owned()),
            (stored[2], "two".to_owned())
        ]
    );
    index
        .settle_operation_failures("op", &[stored[0]], &[(stored[2], "again".into())])
        .await
        .unwrap();
    assert_eq!(
        index.operation_failures("op", 0, 10).await.unwrap(),
        [(stored[2], "again".to_owned())]
    );
    index
        .acquire_operation("op", "copy", "a", Duration::from_secs(60), "{}", "{}")
        .await
        .unwrap();
    index.delete_operation("op").await.unwrap();
    assert!(index.operation("op").await.unwrap().is_none());
    assert!(
        index
            .operation_failures("op", 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn concurrent_reservations_get_distinct_watermarks(t: &TestIndex) {
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let index = t.index.clone();
            tokio::spawn(async move {
                let mut watermarks = Vec::new();
                for n in 0..10 {
                    let new = instance(
                        &format!("1.{}", n % 3),
                        &format!("1.{}.1", n % 3),
                        &format!("1.{}.1.{task}.{n}", n % 3),
                        SearchableAttributes::default(),
                    );
                    let w = index.begin_create(&new).await.unwrap();
                    index.end_create(w, 1, "c", false).await.unwrap();
                    watermarks.push(w);
                }
                watermarks
            })
        })
        .collect();
    let mut all = BTreeSet::new();
    for task in tasks {
        for w in task.await.unwrap() {
            assert!(all.insert(w), "watermark {w:?} handed out twice");
        }
    }
    assert_eq!(all.len(), 80);
    assert_eq!(t.index.count_created().await.unwrap(), 80);

    // The same instance stored by many at once: one reservation wins.
    let same: Vec<_> = (0..6)
        .map(|_| {
            let index = t.index.clone();
            tokio::spawn(async move { index.begin_create(&new("1.2.3.77")).await })
        })
        .collect();
    let mut won = 0;
    for task in same {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(IndexError::AlreadyExists { creating: true }) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(won, 1);

    // Losers among winners (on SQLite they share group commits): each loser's writes are
    // undone alone, and every other reservation stands.
    let mixed: Vec<_> = (0..12)
        .map(|n| {
            let index = t.index.clone();
            let sop = if n % 2 == 0 {
                "1.2.3.78".to_owned()
            } else {
                format!("1.2.3.79.{n}")
            };
            tokio::spawn(async move {
                let w = index.begin_create(&new(&sop)).await?;
                index.end_create(w, 1, "c", false).await.map(|()| w)
            })
        })
        .collect();
    let (mut won, mut lost, mut distinct) = (0, 0, BTreeSet::new());
    for (n, task) in mixed.into_iter().enumerate() {
        match (n % 2, task.await.unwrap()) {
            (0, Ok(_)) => won += 1,
            (0, Err(IndexError::AlreadyExists { .. })) => lost += 1,
            (_, Ok(w)) => assert!(distinct.insert(w)),
            (_, Err(other)) => panic!("a distinct instance failed: {other}"),
        }
    }
    assert_eq!((won, lost, distinct.len()), (1, 5, 6));
    assert_eq!(t.index.count_created().await.unwrap(), 80 + 1 + 6);
}

/// A completion whose reservation is gone changes nothing and fails alone, wherever it falls
/// in a group commit (on SQLite: opening, inside or closing a group's framed writes; a
/// closing one has committed the group when it finds nothing).
pub async fn a_completion_of_nothing_fails_alone(t: &TestIndex) {
    // Queued in this order, the first group holds every task's first write. In the first
    // round such a completion closes it; in the second it also opens it and falls inside.
    let rounds: [fn(usize) -> bool; 2] = [|n| n == 11, |n| n == 0 || n % 3 == 2];
    let mut stored = BTreeSet::new();
    for (round, completes_nothing) in rounds.into_iter().enumerate() {
        let tasks: Vec<_> = (0..12)
            .map(|n| {
                let index = t.index.clone();
                let nothing = completes_nothing(n);
                tokio::spawn(async move {
                    if nothing {
                        let gone = Watermark::new(1_000_000).unwrap();
                        return index.end_create(gone, 1, "c", false).await.map(|()| None);
                    }
                    let w = index
                        .begin_create(&new(&format!("1.2.3.8{round}.{n}")))
                        .await?;
                    index.end_create(w, 1, "c", false).await.map(|()| Some(w))
                })
            })
            .collect();
        for (n, task) in tasks.into_iter().enumerate() {
            match (completes_nothing(n), task.await.unwrap()) {
                (true, Err(IndexError::NotFound)) => {}
                (true, other) => panic!("completing nothing gave {other:?}"),
                (false, Ok(Some(w))) => assert!(stored.insert(w)),
                (false, other) => panic!("a store failed: {other:?}"),
            }
        }
    }
    assert_eq!(stored.len(), 11 + 7);
    assert_eq!(t.index.count_created().await.unwrap(), 11 + 7);
}

pub async fn concurrent_claims_never_share_a_removal(t: &TestIndex) {
    let index = &t.index;
    let mut queued = BTreeSet::new();
    for n in 0..24 {
        let w = index
            .begin_create(&new(&format!("1.2.3.{n}")))
            .await
            .unwrap();
        index.abandon_create(w).await.unwrap();
        queued.insert(w);
    }
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let index = index.clone();
            tokio::spawn(async move {
                let mut claimed = Vec::new();
                loop {
                    let batch = index
                        .claim_due_removals(5, 3, Duration::from_secs(300))
                        .await
                        .unwrap();
                    if batch.is_empty() {
                        return claimed;
                    }
                    claimed.extend(batch.into_iter().map(|d| d.instance.watermark()));
                }
            })
        })
        .collect();
    let mut claimed = BTreeSet::new();
    for worker in workers {
        for w in worker.await.unwrap() {
            assert!(claimed.insert(w), "removal {w:?} claimed twice");
        }
    }
    assert_eq!(claimed, queued);
}

pub async fn concurrent_acquisitions_of_an_operation_have_one_winner(t: &TestIndex) {
    let tasks: Vec<_> = (0..6)
        .map(|n| {
            let index = t.index.clone();
            tokio::spawn(async move {
                index
                    .acquire_operation(
                        "race",
                        "copy",
                        &format!("owner-{n}"),
                        Duration::from_secs(60),
                        "{}",
                        "{}",
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut acquired = 0;
    for task in tasks {
        match task.await.unwrap() {
            Acquisition::Acquired(_) => acquired += 1,
            Acquisition::HeldElsewhere(record) => {
                assert_eq!(record.status, OperationStatus::Running)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acquired, 1);
}

pub async fn an_expired_process_is_reaped_once(t: &TestIndex) {
    let index = &t.index;
    let (_gone, as_gone) = process(index, Duration::from_millis(1)).await;
    let w = as_gone.begin_create(&new("1.2.3.1")).await.unwrap();
    let (alive, _) = process(index, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let reapers: Vec<_> = (0..4)
        .map(|_| {
            let index = index.clone();
            tokio::spawn(async move {
                index
                    .reap_expired_processes(chrono::Utc::now())
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut reaped = 0;
    for reaper in reapers {
        reaped += reaper.await.unwrap().len();
    }
    assert_eq!(reaped, 1, "reaped by exactly one caller");
    assert!(
        index.is_referenced(w).await.unwrap(),
        "its reservation's blobs are queued"
    );
    let left: Vec<_> = index
        .processes()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.info.id)
        .collect();
    assert_eq!(left, [alive]);
}

/// Several processes opening one new database at once: each migration is applied once and
/// every open succeeds.
pub async fn concurrent_opens_migrate_once(database: FreshDatabase) {
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = database.url.clone();
            tokio::spawn(async move { InstanceIndex::open(&url).await })
        })
        .collect();
    let mut indexes = Vec::new();
    for open in opens {
        indexes.push(open.await.unwrap().expect("every concurrent open succeeds"));
    }
    let w = indexes[0].begin_create(&new("1.2.3.1")).await.unwrap();
    assert!(indexes[3].is_referenced(w).await.unwrap());
}
