//! Two `tessera serve` processes started at the same moment on one new index both come up:
//! neither dies racing the other on the schema migrations (SQLite: a migration another process
//! applied first is run again; PostgreSQL: sqlx's advisory lock). Then a store through one is
//! found through the other.

use std::path::Path;

use tessera_testkit::server::TestServer;
use tessera_testkit::synthetic::Synthetic;
use tessera_testkit::{IndexEngine, index::FreshDatabase};

fn tessera() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tessera"))
}

/// Starts two servers in `dir` at once (each waits until the other's start overlaps its own).
fn start_two_at_once(dir: &Path, env: &[(&str, &str)]) -> (TestServer, TestServer) {
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|scope| {
        let start = || {
            barrier.wait();
            TestServer::start(tessera(), dir, env)
        };
        let a = scope.spawn(start);
        let b = scope.spawn(start);
        (
            a.join().expect("the first server started"),
            b.join().expect("the second server started"),
        )
    })
}

/// `rounds` times on a new index (SQLite) or once on `database`.
async fn both_start_and_share_the_index(database: Option<FreshDatabase>, rounds: u32) {
    for round in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let mut env = Vec::new();
        if let Some(database) = &database {
            env.push(("Tessera__Index", database.url.as_str()));
        }
        let (a, b) = start_two_at_once(dir.path(), &env);
        let study = format!("1.2.3.{}", 900 + round);
        let synthetic = Synthetic::new(&study, &format!("{study}.1"), &format!("{study}.1.1"));
        let (status, _) = a.stow("/v2/studies", &[synthetic.bytes()]).await;
        assert_eq!(status, 200);
        let found = b
            .get_json(&format!("/v2/studies?StudyInstanceUID={study}"))
            .await;
        assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_start_together_on_a_new_sqlite_index() {
    both_start_and_share_the_index(None, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_start_together_on_a_new_postgres_index() {
    if let Some(database) = IndexEngine::Postgres.fresh_database().await {
        both_start_and_share_the_index(Some(database), 1).await;
    }
}
