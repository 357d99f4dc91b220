//! The scheduling policy of the process's threads.
//!
//! A store hands work from thread to thread: the async worker asks the index's connection
//! thread for a statement, each statement's result wakes the worker again, a blocking thread
//! writes a blob and wakes it once more. On a busy core, Linux lets a woken thread preempt the
//! one that woke it, so the connection thread was switched out after every statement of a
//! multi-statement query (about 14 times per single-instance store on 2 cores) and the worker
//! woke for each result instead of once for all. Under `SCHED_BATCH` a woken thread waits for
//! the running one to block or use up its slice: the same store then took 30 context switches
//! instead of 55, and about 4–15% less CPU (runs on one machine vary more than that). Every
//! thread inherits its creator's policy, so setting it on the main thread before any other
//! exists covers the runtime's workers, its blocking threads and the index's connection
//! threads.

/// Puts the calling thread (and so every thread it creates later) under `SCHED_BATCH`,
/// keeping its nice value.
#[cfg(target_os = "linux")]
pub(crate) fn run_as_batch() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `sched_setscheduler` only reads `param`, which lives across the call; pid 0 is
    // the calling thread. Hand-written because no kept crate sets the policy alone:
    // thread-priority's `set_thread_priority_and_policy` also resets the nice value.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Other systems have no such policy: threads keep theirs.
#[cfg(not(target_os = "linux"))]
pub(crate) fn run_as_batch() -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn policy() -> i32 {
        // SAFETY: no arguments besides pid 0, the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn the_calling_thread_and_the_threads_it_creates_run_as_batch() {
        let before = policy();
        let (own, created) = std::thread::spawn(|| {
            run_as_batch().map(|()| (policy(), std::thread::spawn(policy).join()))
        })
        .join()
        .expect("the thread ran")
        .expect("the policy was set");
        assert_eq!(own, libc::SCHED_BATCH);
        assert_eq!(created.expect("the created thread ran"), libc::SCHED_BATCH);
        assert_eq!(policy(), before, "only the calling thread changed");
    }
}
