//! Naming the caller of a connection the proxy cannot read: with TLS, the
//! first bytes are a ClientHello, not a hello frame or an HTTP head. The
//! harness registers each node's process id; the proxy finds the socket whose
//! local address is the connection's source and whose remote address is the
//! proxy's end in `/proc/net/tcp`, and the process holding that socket among the
//! registered ones. Both ends, because Linux gives one local port to several
//! connections to different destinations: matched by its source alone, a
//! connection was once traced to another node's socket and the wrong link cut
//! (`tests/durability.rs`, run beside the other crash tests: the two majority
//! nodes could not reach each other). Linux only, as the harness
//! is, and test-side only: kvserver needs no knowledge of the proxy.

use std::collections::HashMap;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::Mutex;

/// Node processes by id, as the harness starts and stops them.
#[derive(Debug, Default)]
pub struct Callers {
    pids: Mutex<HashMap<u32, u64>>,
}

impl Callers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, u64>> {
        self.pids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Process `pid` is node `id`.
    pub fn register(&self, pid: u32, id: u64) {
        self.lock().insert(pid, id);
    }

    /// Process `pid` ended.
    pub fn forget(&self, pid: u32) {
        self.lock().remove(&pid);
    }

    /// The node whose process owns the socket from `source` to `dest`.
    pub fn lookup(&self, source: SocketAddr, dest: SocketAddr) -> Option<u64> {
        let inode = socket_inode(source, dest)?;
        let pids: Vec<(u32, u64)> = self.lock().iter().map(|(p, i)| (*p, *i)).collect();
        pids.into_iter()
            .find(|(pid, _)| holds_socket(*pid, inode))
            .map(|(_, id)| id)
    }
}

/// `127.0.0.1:8080` as `/proc/net/tcp` prints it: `0100007F:1F90`.
fn proc_format(addr: SocketAddr) -> Option<String> {
    match addr.ip() {
        IpAddr::V4(ip) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(ip.octets()),
            addr.port()
        )),
        IpAddr::V6(_) => None,
    }
}

/// The inode of the open TCP socket from `local` to `remote`. Closed sockets
/// linger in the table with inode 0 (TIME_WAIT, say), also under a port a new
/// connection reuses: those are skipped.
fn socket_inode(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let (local, remote) = (proc_format(local)?, proc_format(remote)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.get(1) != Some(&local.as_str()) || cols.get(2) != Some(&remote.as_str()) {
            return None;
        }
        cols.get(9)?.parse().ok().filter(|inode| *inode != 0)
    })
}

/// Whether process `pid` has the socket `inode` open.
fn holds_socket(pid: u32, inode: u64) -> bool {
    let wanted = format!("socket:[{inode}]");
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_print_as_the_kernel_prints_them() {
        let a: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        if cfg!(target_endian = "little") {
            assert_eq!(proc_format(a).as_deref(), Some("0100007F:1F90"));
        }
    }

    #[test]
    fn a_connection_is_traced_to_the_process_that_opened_it() -> std::io::Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let client = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (server, source) = listener.accept()?;
        let dest = server.local_addr()?;
        assert_eq!(source, client.local_addr()?);
        let callers = Callers::default();
        assert_eq!(callers.lookup(source, dest), None, "nobody registered");
        callers.register(std::process::id(), 7);
        assert_eq!(callers.lookup(source, dest), Some(7));
        // The same source towards another destination is another socket.
        let elsewhere = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        assert_eq!(callers.lookup(source, elsewhere), None);
        callers.forget(std::process::id());
        assert_eq!(callers.lookup(source, dest), None);
        Ok(())
    }
}
