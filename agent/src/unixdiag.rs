//! Finds the client socket behind an accepted Unix connection, through the kernel's
//! sock_diag netlink interface (`unix_diag`): the accepted socket's peer is the client's socket,
//! whose cookie keys the record `connect_unix` left. Two exact lookups by inode; a few
//! microseconds. Hand-written netlink (two fixed-size messages) rather than a netlink crate:
//! nix gives the socket calls, and no maintained crate covers `unix_diag`.
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const AF_UNIX: u8 = 1;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_PEER: u16 = 2;
const NLMSG_HDR: usize = 16;
const DIAG_MSG: usize = 16;

/// The request for one Unix socket by inode (`struct nlmsghdr` + `struct unix_diag_req`).
fn request(ino: u32, show: u32, seq: u32) -> [u8; 40] {
    let mut b = [0u8; 40];
    b[0..4].copy_from_slice(&40u32.to_ne_bytes());
    b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    b[16] = AF_UNIX;
    b[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
    b[24..28].copy_from_slice(&ino.to_ne_bytes());
    b[28..32].copy_from_slice(&show.to_ne_bytes());
    b[32..40].copy_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    b
}

/// What one answer says of the socket: its cookie, and its peer's inode when asked for.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    cookie: u64,
    peer: Option<u32>,
}

fn parse(b: &[u8]) -> io::Result<Answer> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "short sock_diag answer");
    let u16_at = |at: usize| -> io::Result<u16> {
        Ok(u16::from_ne_bytes(
            b.get(at..at + 2)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ))
    };
    let u32_at = |at: usize| -> io::Result<u32> {
        Ok(u32::from_ne_bytes(
            b.get(at..at + 4)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ))
    };
    let len = u32_at(0)? as usize;
    if u16_at(4)? == NLMSG_ERROR {
        let errno = i32::from_ne_bytes(u32_at(NLMSG_HDR)?.to_ne_bytes());
        return Err(io::Error::from_raw_os_error(-errno));
    }
    let end = len.min(b.len());
    let cookie = u64::from(u32_at(NLMSG_HDR + 8)?) | (u64::from(u32_at(NLMSG_HDR + 12)?) << 32);
    let mut at = NLMSG_HDR + DIAG_MSG;
    let mut peer = None;
    while at + 4 <= end {
        let rta_len = u16_at(at)? as usize;
        if rta_len < 4 {
            break;
        }
        if u16_at(at + 2)? == UNIX_DIAG_PEER {
            peer = Some(u32_at(at + 4)?);
        }
        at += (rta_len + 3) & !3;
    }
    Ok(Answer { cookie, peer })
}

fn ask(nl: &OwnedFd, ino: u32, show: u32, seq: u32) -> io::Result<Answer> {
    sendto(
        nl.as_raw_fd(),
        &request(ino, show, seq),
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut buf = [0u8; 512];
    let n = recv(nl.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    parse(&buf[..n])
}

/// A sock_diag netlink socket; it answers for the network namespace it was created in.
pub fn socket() -> io::Result<OwnedFd> {
    Ok(nix::sys::socket::socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?)
}

/// The cookie of the socket at the other end of the Unix stream `sock` (in this network
/// namespace).
pub fn peer_cookie(sock: BorrowedFd<'_>) -> io::Result<u64> {
    peer_cookie_via(&socket()?, sock)
}

/// As [`peer_cookie`], asking through `nl` (a [`socket`] made in `sock`'s namespace).
pub fn peer_cookie_via(nl: &OwnedFd, sock: BorrowedFd<'_>) -> io::Result<u64> {
    let ino = u32::try_from(nix::sys::stat::fstat(sock)?.st_ino)
        .map_err(|_| io::Error::other("socket inode over 32 bits"))?;
    let peer = ask(nl, ino, UDIAG_SHOW_PEER, 1)?
        .peer
        .filter(|&p| p != 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "the socket has no peer"))?;
    Ok(ask(nl, peer, 0, 2)?.cookie)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd as _;

    #[test]
    fn finds_the_client_of_an_accepted_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let client = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let want = agent_sys::socket_cookie(client.as_fd()).unwrap();
        assert_eq!(peer_cookie(accepted.as_fd()).unwrap(), want);
        // And the other way round.
        let want = agent_sys::socket_cookie(accepted.as_fd()).unwrap();
        assert_eq!(peer_cookie(client.as_fd()).unwrap(), want);
    }

    #[test]
    fn a_listener_has_no_peer() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        assert!(peer_cookie(listener.as_fd()).is_err());
    }

    #[test]
    fn parses_errors_and_attributes() {
        let mut err = vec![0u8; 36];
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[16..20].copy_from_slice(&(-2i32).to_ne_bytes());
        assert_eq!(parse(&err).unwrap_err().raw_os_error(), Some(2));
        let mut ok = vec![0u8; 40];
        ok[0..4].copy_from_slice(&40u32.to_ne_bytes());
        ok[24..28].copy_from_slice(&7u32.to_ne_bytes());
        ok[32..34].copy_from_slice(&8u16.to_ne_bytes());
        ok[34..36].copy_from_slice(&UNIX_DIAG_PEER.to_ne_bytes());
        ok[36..40].copy_from_slice(&99u32.to_ne_bytes());
        assert_eq!(
            parse(&ok).unwrap(),
            Answer {
                cookie: 7,
                peer: Some(99)
            }
        );
        assert!(parse(&ok[..10]).is_err());
    }
}
