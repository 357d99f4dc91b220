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
//! more CPU than the statement. So the writes of a group run in their framed form: the first
//! one's statements begin the transaction and the last one's commit it, each write one round
//! trip (a write alone in its group does both), and the task keeps the writer connection
//! between groups until another writer of this process asks for it (sqlx pings every
//! connection taken back into its pool: one more round trip).

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

/// Where a write's framed form stands in its group's transaction: whether its statements
/// begin it (`BEGIN IMMEDIATE` in front) and whether they commit it (`COMMIT` behind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) begins: bool,
    pub(crate) commits: bool,
}

impl Frame {
    /// `body` (statements separated by `;`) in this frame: one of the four `framings`, built
    /// once by [`framings`].
    pub(crate) fn pick(self, framings: &[String; 4]) -> &str {
        &framings[usize::from(self.begins) * 2 + usize::from(self.commits)]
    }
}

/// The four framings of `body`, in the order [`Frame::pick`] reads them.
pub(crate) fn framings(body: &str) -> [String; 4] {
    [
        body.to_owned(),
        format!("{body}; COMMIT"),
        format!("BEGIN IMMEDIATE; {body}"),
        format!("BEGIN IMMEDIATE; {body}; COMMIT"),
    ]
}

/// What a write's framed form came to.
pub(crate) enum Framed<T> {
    /// Every statement ran, its frame's `BEGIN` and `COMMIT` included; the write's result.
    Ran(Result<T>),
    /// Not every statement ran (one failed, or none was sent): nothing of the group was
    /// committed, and its transaction may be open or not.
    Stopped(IndexError),
}

impl<T> Framed<T> {
    /// The same outcome with `f` applied to a result that is a value.
    pub(crate) fn and_then<U>(self, f: impl FnOnce(T) -> Result<U>) -> Framed<U> {
        match self {
            Self::Ran(result) => Framed::Ran(result.and_then(f)),
            Self::Stopped(error) => Framed::Stopped(error),
        }
    }
}

/// The future of a write's framed form.
pub(crate) type FramedFuture<'a, T> = Pin<Box<dyn Future<Output = Framed<T>> + Send + 'a>>;

/// A write's framed form: its statements with its frame's `BEGIN` and `COMMIT`, in one round
/// trip on the writer connection.
pub(crate) type FramedWork<T> =
    Box<dyn for<'a> Fn(&'a mut AnyConnection, Frame) -> FramedFuture<'a, T> + Send>;

/// Boxes a write's framed form (the bound makes a closure's signature what it must be).
pub(crate) fn framed<T, F>(work: F) -> FramedWork<T>
where
    F: for<'a> Fn(&'a mut AnyConnection, Frame) -> FramedFuture<'a, T> + Send + 'static,
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

    /// Runs the work's framed form on `connection`; says whether every statement ran (see
    /// [`Framed`]).
    fn run_framed<'a>(
        &'a mut self,
        connection: &'a mut AnyConnection,
        frame: Frame,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

    /// Answers the caller once the group's fate is known: a failed write with its own error
    /// (its writes were undone either way), a successful one with its result if the group
    /// committed, else with why it did not.
    fn answer(self: Box<Self>, group: Result<(), Arc<IndexError>>);
}

struct Pending<T, F> {
    work: F,
    framed: FramedWork<T>,
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
            let result = (self.work)(tx).await;
            let succeeded = result.is_ok();
            self.result = Some(result);
            succeeded
        })
    }

    fn run_framed<'a>(
        &'a mut self,
        connection: &'a mut AnyConnection,
        frame: Frame,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let (result, ran) = match (self.framed)(connection, frame).await {
                Framed::Ran(result) => (result, true),
                Framed::Stopped(error) => (Err(error), false),
            };
            self.result = Some(result);
            ran
        })
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
    /// `framed` is the same write in its framed form, which runs first; `work` runs when a
    /// write of the group failed there.
    pub(crate) async fn write<T, F>(&self, work: F, framed: FramedWork<T>) -> Result<T>
    where
        T: Send + 'static,
        F: for<'a, 'c> Fn(&'a mut Tx<'c>) -> WriteFuture<'a, T> + Send + 'static,
    {
        let (reply, replied) = oneshot::channel();
        let pending = Pending {
            work,
            framed,
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
    let last = group.len().saturating_sub(1);
    let mut failed = false;
    for (at, write) in group.iter_mut().enumerate() {
        let frame = Frame {
            begins: at == 0,
            commits: at == last,
        };
        if !write.run_framed(connection, frame).await {
            failed = true;
            break;
        }
    }
    if !failed {
        return Ok(());
    }
    // A statement failed or was never sent, so the last write's COMMIT did not run: nothing
    // was committed. Whatever is open is undone (with nothing open, the rollback fails, which
    // is as good), and the group runs again in a transaction of the pool's, where each write's
    // work decides what the failed statement could not (a reservation whose UIDs are taken
    // looks at who holds them).
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut **connection).await;
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
    // With a savepoint around each write, the failed one is undone alone (each write can run
    // again: its work is `Fn`). One write's release and the next one's savepoint go together,
    // and the commit releases the last.
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
