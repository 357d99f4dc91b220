//! The index conformance suite on every engine: SQLite, and PostgreSQL when the test command
//! started one (`TESSERA_TEST_POSTGRES_URL`).

use tessera_testkit::{IndexEngine, TestIndex, index_suite};

macro_rules! on_every_engine {
    ($($case:ident),* $(,)?) => {
        mod sqlite { use super::*; $( #[tokio::test] async fn $case() { run(IndexEngine::Sqlite, index_suite::$case).await } )* }
        mod postgres { use super::*; $( #[tokio::test] async fn $case() { run(IndexEngine::Postgres, index_suite::$case).await } )* }
    };
}

async fn run<F>(engine: IndexEngine, case: F)
where
    F: AsyncFnOnce(&TestIndex),
{
    if let Some(fresh) = engine.fresh().await {
        case(&fresh).await;
    }
}

on_every_engine! {
    reserve_complete_retrieve,
    delete_queues_blobs_and_never_reuses_watermarks,
    abandoned_and_stale_reservations,
    one_process_holds_an_operation_until_its_lease_expires,
    a_live_owners_reservation_blocks_and_a_dead_ones_is_taken_over,
    a_refused_duplicate_leaves_the_study_as_it_was,
    a_later_instance_updates_its_study_and_series_in_place,
    an_expired_lease_makes_a_reservation_dead,
    orphaned_and_unowned_reservations,
    a_released_operation_is_taken_at_once,
    a_dead_processs_claimed_removals_are_due_again_at_once,
    a_probe_that_knows_the_owner_is_gone_lets_a_store_take_over,
    change_feed_states_and_paging,
    qido_search,
    qido_pages_are_disjoint_and_complete,
    adoption_keeps_the_highest_watermark,
    operation_failures_and_walks,
    concurrent_reservations_get_distinct_watermarks,
    a_completion_of_nothing_fails_alone,
    concurrent_claims_never_share_a_removal,
    concurrent_acquisitions_of_an_operation_have_one_winner,
    an_expired_process_is_reaped_once,
}

mod migrations {
    use super::*;

    #[tokio::test]
    async fn sqlite_concurrent_opens_migrate_once() {
        if let Some(database) = IndexEngine::Sqlite.fresh_database().await {
            index_suite::concurrent_opens_migrate_once(database).await;
        }
    }

    #[tokio::test]
    async fn postgres_concurrent_opens_migrate_once() {
        if let Some(database) = IndexEngine::Postgres.fresh_database().await {
            index_suite::concurrent_opens_migrate_once(database).await;
        }
    }
}
