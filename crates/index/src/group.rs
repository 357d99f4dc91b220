//! Group commit for SQLite: the write transactions of concurrent requests share one commit.
//!
//! SQLite has one writer, and every durable commit waits for its WAL to reach the disk. With
//! a transaction per request, concurrent stores queue for the write lock and pay one flush
//! each. Here one task takes whatever writes are waiting, runs them in one transaction (after
//! a failure, again, each in its own savepoint, so a write that fails is undone alone),
//! commits once, and only then answers them: acknowledged still means on disk. sqlx has no
//! such batching, hence this module.
//!
//! Every statement is a round trip to the connection's worker thread, which costs a store
//! more CPU than the statement. So a write alone in its group runs in its one-shot form, its
//! own `BEGIN`, statements and `COMMIT` in one round trip, and the task keeps the writer
//! connection between groups until another writer of this process asks for it (sqlx pings
//! every connection taken back into its pool: one more round trip).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::{IndexError, Result, Tx};

/// The most writes one commit carries; more wait for the next.
const MOST_WRITES_PER_COMMIT: usize = 64;
/// Writes waiting for a commit before callers wait to queue.
const QUEUE_LENGTH: usize = 1024;

/// The work of one write, holding the group's transaction while it runs.
pub(crate) type WriteFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// A write's one-shot form: a transaction of its own on the connection, begun and committed
/// by the work itself. A failure may leave that transaction open; the group rolls it back.
pub(crate) type AloneWork<T> =
    Box<dyn for<'a> FnOnce(&'a mut AnyConnection) -> WriteFuture<'a, T> + Send>;

/// Boxes a write's one-shot form (the bound makes a closure's signature what it must be).
pub(crate) fn alone<T, F>(work: F) -> AloneWork<T>
where
    F: for<'a> FnOnce(&'a mut AnyConnection) -> WriteFuture<'a, T> + Send + 'static,
{
    Box::new(work)
}

/// A queued write, its result type erased.
trait Write: Send {
    /// Runs the work in `tx`; says whether it succeeded (its result is kept for the answer).
    fn run<'a, 'c>(
        &'a mut self,
        tx: &'a mut Tx<'c>,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

    /// Runs the work's one-shot form on `connection`, if it has one; says whether it
    /// succeeded.
    fn run_alone<'a>(
        &'a mut self,
        connection: &'a mut AnyConnection,
    ) -> Option<Pin<Box<dyn Future<Output = bool> + Send + 'a>>>;

    /// Answers the caller once the group's fate is known: a failed write with its own error
    /// (its writes were undone either way), a successful one with its result if the group
    /// committed, else with why it did not.
    fn answer(self: Box<Self>, group: Result<(), Arc<IndexError>>);
}

struct Pending<T, F> {
    work: Option<F>,
    alone: Option<AloneWork<T>>,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Write for Pending<T, F>
where
    T: Send + 'static,
    F: for<'a, 'c> Fn(&'a mut Tx<'c>) -> WriteFuture<'a, T> + Send + 'static,
{
    fn run<'a, 'c>(
        &'a mut self,
        tx: &'a mut Tx<'c>,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let Some(work) = &self.work else {
                return false;
            };
            let result = work(tx).await;
            let succeeded = result.is_ok();
            self.result = Some(result);
            succeeded
        })
    }

    fn run_alone<'a>(
        &'a mut self,
        connection: &'a mut AnyConnection,
    ) -> Option<Pin<Box<dyn Future<Output = bool> + Send + 'a>>> {
        let alone = self.alone.take()?;
        self.work = None;
        Some(Box::pin(async move {
            let result = alone(connection).await;
            let succeeded = result.is_ok();
            self.result = Some(result);
            succeeded
        }))
    }

    fn answer(self: Box<Self>, group: Result<(), Arc<IndexError>>) {
        let reply = match (self.result, group) {
            (Some(Err(own)), _) => Err(own),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (_, Err(error)) => Err(IndexError::Grouped(error)),
            (None, Ok(())) => Err(IndexError::Grouped(Arc::new(IndexError::Stopped))),
        };
        // The caller may have gone (its request was dropped); the write stands regardless.
        let _ = self.reply.send(reply);
    }
}

/// The queue of writes waiting for the next group commit; cloned with the index.
#[derive(Clone, Debug)]
pub(crate) struct CommitGroups {
    queue: mpsc::Sender<Box<dyn Write>>,
    others: Arc<OtherWriters>,
}

/// The writers of this process that wait for the writer connection outside the groups.
#[derive(Debug, Default)]
struct OtherWriters {
    waiting: AtomicUsize,
    asked: Notify,
}

/// Held while a writer outside the groups waits for the writer connection (see
/// [`CommitGroups::ask_for_writer`]).
pub(crate) struct AskingForWriter<'a>(&'a OtherWriters);

impl Drop for AskingForWriter<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl CommitGroups {
    /// Starts the task that commits groups on `writer` (a pool of one connection). It ends
    /// when the last handle to the queue is dropped.
    pub(crate) fn start(writer: AnyPool) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE_LENGTH);
        let others = Arc::new(OtherWriters::default());
        tokio::spawn(commit_groups(writer, waiting, others.clone()));
        Self { queue, others }
    }

    /// Tells the group task that a writer outside the groups wants the writer connection:
    /// the task gives it back to the pool after its current group. Hold the guard until the
    /// connection is acquired.
    pub(crate) fn ask_for_writer(&self) -> AskingForWriter<'_> {
        self.others.waiting.fetch_add(1, Ordering::SeqCst);
        self.others.asked.notify_one();
        AskingForWriter(&self.others)
    }

    /// Runs `work` in the next group's transaction and returns its result once that
    /// transaction is committed. When `work` fails, its writes are undone and its error
    /// returned; the rest of the group commits.
    /// `alone`, if given, is the same write in its one-shot form, run when the write is
    /// alone in its group.
    pub(crate) async fn write<T, F>(&self, work: F, alone: Option<AloneWork<T>>) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a, 'c> Fn(&'a mut Tx<'c>) -> WriteFuture<'a, T> + Send + 'static,
    {
        let (reply, replied) = oneshot::channel();
        let pending = Pending {
            work: Some(work),
            alone,
            result: None,
            reply,
        };
        let stopped = || IndexError::Grouped(Arc::new(IndexError::Stopped));
        self.queue
            .send(Box::new(pending))
            .await
            .map_err(|_| stopped())?;
        replied.await.map_err(|_| stopped())?
    }
}

/// Takes the waiting writes in groups until every handle to the queue is gone. Each group runs
/// in a task of its own, so a panic in one fails only its writes (their callers see the
/// writer stopped), not every write after it. The writer connection is kept from one group to
/// the next until another writer asks for it (see [`CommitGroups::ask_for_writer`]).
async fn commit_groups(
    writer: AnyPool,
    mut waiting: mpsc::Receiver<Box<dyn Write>>,
    others: Arc<OtherWriters>,
) {
    let mut group = Vec::with_capacity(MOST_WRITES_PER_COMMIT);
    let mut held: Option<PoolConnection<Any>> = None;
    loop {
        let received = if held.is_some() {
            tokio::select! {
                received = waiting.recv_many(&mut group, MOST_WRITES_PER_COMMIT) => received,
                () = others.asked.notified() => {
                    held = None;
                    continue;
                }
            }
        } else {
            waiting.recv_many(&mut group, MOST_WRITES_PER_COMMIT).await
        };
        if received == 0 {
            break;
        }
        let mut writes = std::mem::replace(&mut group, Vec::with_capacity(MOST_WRITES_PER_COMMIT));
        let connection = match held.take() {
            Some(connection) => Ok(connection),
            None => writer.acquire().await,
        };
        let mut connection = match connection {
            Ok(connection) => connection,
            Err(error) => {
                let error = Arc::new(IndexError::Database(error));
                for write in writes {
                    write.answer(Err(error.clone()));
                }
                continue;
            }
        };
        let committed = tokio::spawn(async move {
            let outcome = run_group(&mut connection, &mut writes).await;
            for write in writes {
                write.answer(outcome.clone());
            }
            // A connection whose commit failed may be left in its transaction: it goes back
            // to the pool, which rolls it back.
            outcome.is_ok().then_some(connection)
        });
        match committed.await {
            Ok(kept) if others.waiting.load(Ordering::SeqCst) == 0 => held = kept,
            Ok(_) => {}
            Err(error) => {
                tracing::error!(%error, "a group commit of the index failed unexpectedly");
            }
        }
    }
}

/// Runs one group's writes in one transaction and commits it. An error here (a savepoint
/// that cannot be taken or undone, a failed commit) fails the whole group: nothing of it
/// was committed.
async fn run_group(
    connection: &mut PoolConnection<Any>,
    group: &mut [Box<dyn Write>],
) -> Result<(), Arc<IndexError>> {
    let shared = |error: sqlx::Error| Arc::new(IndexError::Database(error));
    if let [write] = group {
        let alone = match write.run_alone(connection) {
            Some(alone) => Some(alone.await),
            None => None,
        };
        if let Some(succeeded) = alone {
            if !succeeded {
                // Whatever the failed write left open is undone. No transaction open (the
                // failure came before its BEGIN or after its COMMIT) fails this rollback, and
                // the connection then goes back to the pool, which checks it.
                sqlx::raw_sql("ROLLBACK")
                    .execute(&mut **connection)
                    .await
                    .map_err(shared)?;
            }
            return Ok(());
        }
    }
    let mut tx = connection
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(shared)?;
    if let [write] = group {
        // Alone, a write needs no savepoint: if it fails, the dropped transaction undoes it.
        if write.run(&mut tx).await {
            tx.commit().await.map_err(shared)?;
        }
        return Ok(());
    }
    // Writes rarely fail (a store of an instance that exists), so first every write runs
    // straight in the transaction, one round trip each. If one fails, everything is undone and
    // the group runs again with a savepoint around each write, so that the failed one is undone
    // alone (each write can run again: its work is `Fn`).
    let mut failed = false;
    for write in group.iter_mut() {
        if !write.run(&mut tx).await {
            failed = true;
            break;
        }
    }
    if !failed {
        return tx.commit().await.map_err(shared);
    }
    tx.rollback().await.map_err(shared)?;
    let mut tx = connection
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(shared)?;
    // One write's release and the next one's savepoint go together, and the commit releases
    // the last.
    let mut savepoint = "SAVEPOINT grouped";
    for write in group.iter_mut() {
        execute(&mut tx, savepoint).await.map_err(shared)?;
        savepoint = "RELEASE grouped; SAVEPOINT grouped";
        if !write.run(&mut tx).await {
            execute(&mut tx, "ROLLBACK TO grouped")
                .await
                .map_err(shared)?;
        }
    }
    tx.commit().await.map_err(shared)
}

async fn execute(tx: &mut Tx<'_>, sql: &'static str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sql).execute(&mut **tx).await.map(|_| ())
}
