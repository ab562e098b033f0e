//! kvchaos: runs real kvserver clusters on this machine, injects faults into
//! them while clients record every operation, and checks the recorded
//! histories for linearizability and lost acknowledged writes.
//!
//! # Layout
//! - [`checker`]: a Porcupine-style (Wing–Gong with memoization) linearizability
//!   checker for a key-value register with CAS, partitioned per key, with a search budget
//!   and a report of the smallest failing sub-history it found.
//! - [`history`]: the operations clients record (invoke/complete times, outcome).
//! - [`proxy`]: the fault-injecting TCP proxy in front of every node's peer and
//!   forwarding ports; partitions are cut links in its table.
//! - [`cluster`]: the one process harness (kvserver's tests, the campaign, the benchmark):
//!   kvserver processes (spawn, `kill -9`, `SIGTERM`, `SIGSTOP`/`SIGCONT`, wipe, restart),
//!   optional proxies, and the typed cluster API calls that form and repair membership.
//! - [`wait`]: waiting on conditions with deadlines (never bare sleeps).
//! - [`workload`]: concurrent clients doing reads, writes, CAS and unique inserts.
//! - [`campaign`]: one seeded run (form → load + faults → heal → checks) and a campaign of runs;
//!   [`faults`] draws, injects and heals the faults of a run.
//! - [`rng`]: the seeded generator every random choice comes from, so a run's schedule
//!   is reproducible from its seed.
//!
//! The `kvchaos` binary is the command line of [`campaign`] and of the harness (`kvchaos
//! cluster`, which `bench/compare.sh` uses); kvserver's test suite runs a short campaign
//! (`kvserver/tests/chaos.rs`) and starts its clusters through [`cluster`].

pub mod campaign;
pub mod checker;
pub mod cluster;
pub mod faults;
pub mod history;
pub mod metrics;
pub mod proxy;
pub mod rng;
pub mod wait;
pub mod workload;

/// Errors of the harness (not of the system under test: those are findings in reports).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{0}")]
    Cluster(String),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(std::time::Duration, String),
}
