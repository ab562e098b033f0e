//! Free loopback ports for the nodes a harness starts, and signals to their
//! processes.

use std::process::Command;

use crate::ChaosError;

/// A loopback port that was free a moment ago and that this process has not handed out before
/// (two nodes must never share one).
///
/// Ports come from outside the kernel's ephemeral range: a port from `bind(":0")` is one the
/// kernel also hands to outgoing connections, and between its release here and the child's
/// bind a client connection (our own load, a proxy) took it often enough to fail 2 of 80 fault
/// campaign runs with "Address already in use". Below the range only an explicit bind can take
/// it. The scan starts at a per-process offset so that concurrent test processes rarely probe
/// the same ports.
pub fn free_port() -> std::io::Result<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut seen = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let candidates = fixed_port_range();
    if !candidates.is_empty() {
        let span = candidates.len() as u32;
        let start = std::process::id()
            .wrapping_mul(7919)
            .wrapping_add(seen.len() as u32 * 13);
        for i in 0..span {
            let port = candidates.start + ((start.wrapping_add(i)) % span) as u16;
            if seen.contains(&port) {
                continue;
            }
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                seen.push(port);
                return Ok(port);
            }
        }
    }
    // No room outside the ephemeral range (an unusual ip_local_port_range): ask the kernel.
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if !seen.contains(&port) {
            seen.push(port);
            return Ok(port);
        }
    }
}

/// Ports from 10000 (above the well-known and most registered service ports) up to the start
/// of the kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`; Linux's default
/// 32768 when unreadable).
fn fixed_port_range() -> std::ops::Range<u16> {
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    10000..first_ephemeral.max(10000)
}

/// Sends `sig` (as `kill` spells it: `-STOP`, `-CONT`, `-TERM`, ...) to process `pid`.
pub fn signal(pid: u32, sig: &str) -> Result<(), ChaosError> {
    let st = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(ChaosError::Cluster(format!("kill {sig} {pid} failed")))
    }
}
