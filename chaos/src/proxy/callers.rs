//! Naming the caller of a connection the proxy cannot read: with TLS, the
//! first bytes are a ClientHello, not a hello frame or an HTTP head. The
//! harness registers each node's process id; the proxy asks the kernel for the
//! socket whose local address is the connection's source and whose remote
//! address is the proxy's end (netlink `sock_diag`, an exact lookup), and finds
//! the process holding that socket among the registered ones.
//!
//! Not `/proc/net/tcp`, which this used first: every read of it walks the
//! kernel's whole established-connection hash table. In the 200-run campaign of
//! 2026-12-03 (TLS on), the proxy spent most of its CPU there (`perf`:
//! `established_get_first` 39 %), synchronously on the runtime that also pumps
//! every link's bytes; links starved, and four runs in 55 failed their recovery
//! or start-up deadlines. The table is still the fallback where `sock_diag` is
//! not available. Both ends, because Linux gives one local port to several
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

/// The inode of the open TCP socket from `local` to `remote`.
fn socket_inode(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    match diag_inode(local, remote) {
        Ok(inode) => inode,
        Err(_) => table_inode(local, remote),
    }
}

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLMSG_ERROR` (linux/netlink.h): the answer when no socket matches.
const NLMSG_ERROR: u16 = 2;
/// `NLM_F_REQUEST`.
const NLM_F_REQUEST: u16 = 1;
/// Where `idiag_inode` sits in the answer: `nlmsghdr` (16 bytes), then
/// `inet_diag_msg` (family, state, timer, retrans: 4; `inet_diag_sockid`: 48;
/// expires, rqueue, wqueue, uid: 16).
const INODE_AT: usize = 16 + 4 + 48 + 16;

/// A `sock_diag` request for the one TCP socket from `local` to `remote`:
/// `nlmsghdr` + `inet_diag_req_v2` (linux/inet_diag.h), 72 bytes. Ports and
/// addresses are in network byte order, the rest in the host's.
fn diag_request(local: std::net::SocketAddrV4, remote: std::net::SocketAddrV4) -> Vec<u8> {
    let mut req = Vec::with_capacity(72);
    req.extend(72u32.to_ne_bytes()); // nlmsg_len
    req.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend(NLM_F_REQUEST.to_ne_bytes());
    req.extend(1u32.to_ne_bytes()); // nlmsg_seq
    req.extend(0u32.to_ne_bytes()); // nlmsg_pid: the kernel
    req.extend([2u8, 6, 0, 0]); // AF_INET, IPPROTO_TCP, no extensions, pad
    req.extend(u32::MAX.to_ne_bytes()); // every TCP state
    req.extend(local.port().to_be_bytes());
    req.extend(remote.port().to_be_bytes());
    req.extend(local.ip().octets());
    req.extend([0u8; 12]);
    req.extend(remote.ip().octets());
    req.extend([0u8; 12]);
    req.extend(0u32.to_ne_bytes()); // any interface
    req.extend([0xffu8; 8]); // INET_DIAG_NOCOOKIE
    req
}

/// The socket's inode through netlink `sock_diag`: `Ok(None)` when the kernel
/// knows no such socket, `Err` when the query itself is not possible.
fn diag_inode(local: SocketAddr, remote: SocketAddr) -> std::io::Result<Option<u64>> {
    use rustix::net::AddressFamily;
    use rustix::net::RecvFlags;
    use rustix::net::SendFlags;
    use rustix::net::SocketType;
    use rustix::net::netlink;
    let (SocketAddr::V4(local), SocketAddr::V4(remote)) = (local, remote) else {
        return Ok(None);
    };
    let fd = rustix::net::socket(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        Some(netlink::SOCK_DIAG),
    )?;
    let req = diag_request(local, remote);
    rustix::net::sendto(
        &fd,
        &req,
        SendFlags::empty(),
        &netlink::SocketAddrNetlink::new(0, 0),
    )?;
    let mut buf = [0u8; 1024];
    let (_, n) = rustix::net::recv(&fd, &mut buf[..], RecvFlags::empty())?;
    let answer = &buf[..n.min(buf.len())];
    let kind = answer
        .get(4..6)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .ok_or_else(|| std::io::Error::other("short sock_diag answer"))?;
    match kind {
        SOCK_DIAG_BY_FAMILY => Ok(answer
            .get(INODE_AT..INODE_AT + 4)
            .map(|b| u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])))
            .filter(|inode| *inode != 0)),
        NLMSG_ERROR => {
            // `nlmsgerr.error`: -ENOENT when nothing matches; anything else says the
            // query is not served here (no inet_diag in this kernel, say).
            let errno = answer
                .get(16..20)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0);
            if errno == -2 {
                Ok(None)
            } else {
                Err(std::io::Error::from_raw_os_error(-errno))
            }
        }
        other => Err(std::io::Error::other(format!(
            "unexpected sock_diag answer type {other}"
        ))),
    }
}

/// The same from `/proc/net/tcp`. Closed sockets linger in the table with inode
/// 0 (TIME_WAIT, say), also under a port a new connection reuses: those are
/// skipped.
fn table_inode(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
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
        // Both ways of finding the socket agree (the fast one must not silently fall back).
        let inode = diag_inode(source, dest)?;
        assert!(inode.is_some(), "sock_diag knows the socket");
        assert_eq!(inode, table_inode(source, dest));
        assert_eq!(diag_inode(source, elsewhere)?, None);
        Ok(())
    }
}
