//! Free loopback ports for servers the tests start, checked on both 127.0.0.1 and [::1] because
//! PostgreSQL and the agent listen on both; and reading one HTTP/1.1 request, for the small
//! receivers that stand in for a webhook or a collector.

use std::io::{BufRead, ErrorKind};
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};

/// A TCP port free on 127.0.0.1 and on [::1] right now (hosts without IPv6 loopback only need
/// the IPv4 one). Another process may still take it before the caller binds it (rare), and a
/// child that another thread of this process forks at the same moment holds the probe sockets
/// until it execs (microseconds; a server started after `initdb` never sees it).
///
/// # Panics
///
/// When no such port turns up in 100 tries.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("cannot bind 127.0.0.1:0");
        let port = v4
            .local_addr()
            .expect("local_addr of a bound socket")
            .port();
        match TcpListener::bind((Ipv6Addr::LOCALHOST, port)) {
            Ok(_) => return port,
            Err(err) if err.kind() == ErrorKind::AddrNotAvailable => return port,
            Err(_) => {}
        }
    }
    panic!("no TCP port free on both 127.0.0.1 and [::1] after 100 tries");
}

/// One HTTP/1.1 request from `reader`: its head (request line and headers, as sent) and its
/// body (`Content-Length` bytes).
pub fn read_http_request(reader: &mut impl BufRead) -> (String, Vec<u8>) {
    let (mut length, mut head) = (0usize, String::new());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    (head, body)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::thread::sleep;
    use std::time::Duration;

    use super::*;

    /// Binds `addr`, retrying briefly: a child another test thread forks in the meantime holds a
    /// copy of `free_port`'s probe sockets until it execs.
    fn bind_soon(addr: SocketAddr) -> std::io::Result<TcpListener> {
        let mut tries = 0;
        loop {
            match TcpListener::bind(addr) {
                Err(err) if err.kind() == ErrorKind::AddrInUse && tries < 50 => {
                    tries += 1;
                    sleep(Duration::from_millis(20));
                }
                result => return result,
            }
        }
    }

    #[test]
    fn port_is_bindable_on_both_loopbacks() {
        let port = free_port();
        assert_ne!(port, 0);
        let _v4 = bind_soon((Ipv4Addr::LOCALHOST, port).into()).expect("v4 bind");
        match bind_soon((Ipv6Addr::LOCALHOST, port).into()) {
            Ok(_) => {}
            Err(err) => assert_eq!(err.kind(), ErrorKind::AddrNotAvailable, "{err}"),
        }
    }
}
