//! This process as the owner of reservations: registration under a lease, its renewal, and the
//! reaping of processes that are gone (so that their reservations never block a store).
//!
//! A process is gone when its lease expired, or, for a process on this machine (same kernel
//! boot and pid namespace), as soon as its pid is no longer running the same program start
//! (Linux: `/proc/<pid>/stat`, whose start time guards against a reused pid).

use std::time::Duration;

use tessera_index::{GoneProbe, InstanceIndex, ProcessId, ProcessInfo};
use tokio_util::sync::CancellationToken;

use crate::ServiceError;

/// Whether a process on this machine still runs, as far as this one can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// It runs.
    Alive,
    /// Its pid is gone, is a zombie, or belongs to a later process.
    Dead,
    /// It is not on this machine (or the platform cannot tell): only its lease counts.
    Unknown,
}

/// What this process records about itself, under a new random id.
pub fn current_process() -> ProcessInfo {
    let pid = std::process::id();
    ProcessInfo {
        id: ProcessId::random(),
        host: host_name(),
        local_key: local_key(),
        pid,
        start_ticks: start_ticks(pid),
    }
}

/// Whether `other` still runs, seen from `me`.
pub fn liveness(me: &ProcessInfo, other: &ProcessInfo) -> Liveness {
    if me.local_key.is_none() || me.local_key != other.local_key {
        return Liveness::Unknown;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", other.pid)) else {
        return Liveness::Dead;
    };
    match parse_stat(&stat) {
        Some((state, _)) if state == 'Z' || state == 'X' => Liveness::Dead,
        Some((_, ticks)) if other.start_ticks.is_some_and(|t| t != ticks) => Liveness::Dead,
        Some(_) => Liveness::Alive,
        None => Liveness::Unknown,
    }
}

/// Registration and renewal of this process, and reaping of the processes that are gone.
#[derive(Clone, Debug)]
pub struct ProcessHeartbeat {
    /// This process.
    pub me: ProcessInfo,
    /// How long a registration lasts without renewal; renewed every third of it.
    pub lease: Duration,
}

impl ProcessHeartbeat {
    /// Registers this process and reaps the dead ones (at start-up, before serving). Returns how
    /// many reservations of dead processes were abandoned.
    pub async fn register(&self, index: &InstanceIndex) -> Result<usize, ServiceError> {
        index.register_process(&self.me, self.lease).await?;
        self.reap(index).await
    }

    /// Forgets the processes that are gone (a local pid that no longer runs, an expired lease)
    /// and abandons their reservations, and those of owners no longer registered. Returns how
    /// many reservations were abandoned.
    pub async fn reap(&self, index: &InstanceIndex) -> Result<usize, ServiceError> {
        let mut abandoned = 0;
        for process in index.processes().await? {
            if process.info.id != self.me.id && liveness(&self.me, &process.info) == Liveness::Dead
            {
                let freed = index.unregister_process(process.info.id).await?;
                tracing::warn!(owner = %process.info.id, pid = process.info.pid, reservations = freed, "a process on this machine is gone; its reservations were abandoned");
                abandoned += freed;
            }
        }
        index.reap_expired_processes(chrono::Utc::now()).await?;
        abandoned += index.abandon_orphaned_reservations().await?;
        Ok(abandoned)
    }

    /// Renews the registration every third of the lease (registering again if another process
    /// reaped this one) and reaps, until `stop`.
    pub async fn run(self, index: InstanceIndex, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.lease / 3) => {}
            }
            match index.renew_process(self.me.id, self.lease).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::error!(owner = %self.me.id, "this process was declared dead (its lease expired); registering again");
                    if let Err(error) = index.register_process(&self.me, self.lease).await {
                        tracing::warn!(%error, "could not register this process again");
                    }
                }
                Err(error) => tracing::warn!(%error, "could not renew this process's lease"),
            }
            if let Err(error) = self.reap(&index).await {
                tracing::warn!(%error, "could not reap dead processes");
            }
        }
    }

    /// Tells the index which processes on this machine are gone, so that a store takes over
    /// their reservations at once (see [`InstanceIndex::with_gone_probe`]).
    pub fn gone_probe(&self) -> GoneProbe {
        let me = self.me.clone();
        GoneProbe::new(move |other| other.id != me.id && liveness(&me, other) == Liveness::Dead)
    }

    /// Unregisters this process at a graceful shutdown, abandoning the reservations it still
    /// holds (stores that did not finish). Returns how many.
    pub async fn unregister(&self, index: &InstanceIndex) -> Result<usize, ServiceError> {
        Ok(index.unregister_process(self.me.id).await?)
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Boot id and pid namespace: two processes with the same key see the same pids.
fn local_key() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("{}:{}", boot.trim(), namespace.display()))
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, ticks)| ticks)
}

/// State and start time (field 22) of `/proc/<pid>/stat`; the command name before them is in
/// parentheses and may contain spaces or parentheses itself.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ticks = fields.nth(18)?.parse().ok()?;
    Some((state, ticks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_stat(stat), Some(('S', 98765)));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let me = current_process();
        assert!(me.start_ticks.is_some() && me.local_key.is_some());
        assert_eq!(liveness(&me, &me), Liveness::Alive);
        let reused = ProcessInfo {
            start_ticks: me.start_ticks.map(|t| t + 1),
            ..me.clone()
        };
        assert_eq!(liveness(&me, &reused), Liveness::Dead);
        let elsewhere = ProcessInfo {
            local_key: Some("other".into()),
            pid: u32::MAX,
            ..me.clone()
        };
        assert_eq!(liveness(&me, &elsewhere), Liveness::Unknown);
        let gone = ProcessInfo {
            pid: u32::MAX,
            ..me.clone()
        };
        assert_eq!(liveness(&me, &gone), Liveness::Dead);
    }
}
