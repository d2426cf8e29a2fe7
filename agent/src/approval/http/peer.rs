//! Which process of this host is on the other end of an HTTP connection: a tagged workload
//! must never decide approvals (it could release its own held statements with a leaked token,
//! or, behind a same-host SSO proxy, by sending the proxy's header itself). The client's socket
//! is found by its address pair in `/proc/net/tcp{,6}` (the agent's network namespace) and in
//! `/proc/PID/net/tcp{,6}` of a process in each namespace the agent serves (a tagged
//! container's), and its owner by the `socket:[inode]` link among `/proc/*/fd`, as `ss -p`
//! does (approvals are rare, so the scan's cost does not matter). A peer found nowhere is
//! another host's.
use std::net::{IpAddr, SocketAddr};

/// Whether `peer` is a process of this host (in the agent's network namespace).
pub fn is_local(peer: SocketAddr, local: SocketAddr) -> bool {
    let ip = canonical(peer.ip());
    ip.is_loopback() || ip == canonical(local.ip())
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The pid owning the TCP socket at `peer` connected to `local`, searched in the agent's
/// namespace and in those of the processes `namespaces`, if it can be found.
pub fn pid_of(peer: SocketAddr, local: SocketAddr, namespaces: &[u32]) -> Option<u32> {
    let dirs = std::iter::once("/proc/net".to_owned())
        .chain(namespaces.iter().map(|pid| format!("/proc/{pid}/net")));
    let inode = dirs
        .flat_map(|d| [format!("{d}/tcp"), format!("{d}/tcp6")])
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .find_map(|table| inode_in(&table, peer, local))?;
    owner(inode)
}

/// The socket inode of the `/proc/net/tcp{,6}` row whose local address is `peer` and remote
/// address `local` (the client's side of our connection).
fn inode_in(table: &str, peer: SocketAddr, local: SocketAddr) -> Option<u64> {
    let (want_local, want_remote) = (encode(peer), encode(local));
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (l, r, inode) = (cols.get(1)?, cols.get(2)?, cols.get(9)?);
        (want_local.iter().any(|w| w.eq_ignore_ascii_case(l))
            && want_remote.iter().any(|w| w.eq_ignore_ascii_case(r)))
        .then(|| inode.parse().ok())
        .flatten()
        .filter(|&i| i != 0)
    })
}

/// The address as `/proc/net/tcp{,6}` prints it: the address's 32-bit words in host (little
/// endian) order, `:`, the port in hex; an IPv4 address also as its IPv4-mapped IPv6 form.
fn encode(a: SocketAddr) -> Vec<String> {
    let port = a.port();
    let v4 = |o: [u8; 4]| format!("{:08X}", u32::from_le_bytes(o));
    match canonical(a.ip()) {
        IpAddr::V4(ip) => {
            let mapped = ip.to_ipv6_mapped().octets();
            vec![
                format!("{}:{port:04X}", v4(ip.octets())),
                format!("{}:{port:04X}", v6(mapped)),
            ]
        }
        IpAddr::V6(ip) => vec![format!("{}:{port:04X}", v6(ip.octets()))],
    }
}

fn v6(o: [u8; 16]) -> String {
    o.chunks(4)
        .map(|c| format!("{:08X}", u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        .collect()
}

/// The process holding the socket with this inode.
fn owner(inode: u64) -> Option<u32> {
    let want = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let pid: u32 = p.file_name().to_str()?.parse().ok()?;
        let fds = std::fs::read_dir(p.path().join("fd")).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()))
            .then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_process_on_the_other_end() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(local).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert!(is_local(peer, local));
        assert_eq!(pid_of(peer, local, &[]), Some(std::process::id()));
        // Through another process's view of the (same) namespace.
        assert_eq!(pid_of(peer, local, &[1]), Some(std::process::id()));
        // A socket nobody holds.
        let gone: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(pid_of(gone, local, &[]), None);
    }

    #[test]
    fn encodes_as_the_kernel_prints() {
        let a: SocketAddr = "127.0.0.1:9188".parse().unwrap();
        assert_eq!(encode(a)[0], "0100007F:23E4");
        assert_eq!(encode(a)[1], "0000000000000000FFFF00000100007F:23E4");
        let remote: SocketAddr = "192.0.2.7:1".parse().unwrap();
        assert!(!is_local(remote, a));
        assert!(is_local("[::ffff:127.0.0.1]:5".parse().unwrap(), a));
    }
}
