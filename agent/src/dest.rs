//! Intercepted destinations: `ip:port`, `cidr:port`, `host:port` (resolved at load) and
//! `*:port`, turned into the port-then-address prefixes of the kernel's LPM trie.
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

use agent_common::{DEST_PORT_BITS, DestKey};

/// One network (address and prefix length) on one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length in bits of `addr`'s own family.
    pub prefix: u8,
    /// Destination port.
    pub port: u16,
}

/// One configured destination, as written and as resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The text from the config.
    pub text: String,
    /// What it covers.
    pub nets: Vec<Net>,
}

/// Why a destination could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DestError {
    /// No `:port` at the end.
    #[error("`{0}`: expected ADDRESS:PORT, CIDR:PORT, HOST:PORT or *:PORT")]
    Shape(String),
    /// The port is not a number in 1..=65535.
    #[error("`{0}`: bad port")]
    Port(String),
    /// A CIDR prefix too long for its family, or not a number.
    #[error("`{0}`: bad prefix length")]
    Prefix(String),
    /// A host name that did not resolve.
    #[error("`{0}`: cannot resolve host: {1}")]
    Resolve(String, String),
}

impl Destination {
    /// The default: any address, port 5432.
    pub fn default_postgres() -> Self {
        Self::parse("*:5432").expect("static destination parses")
    }

    /// Parses one entry; host names are resolved now.
    pub fn parse(text: &str) -> Result<Self, DestError> {
        let shape = || DestError::Shape(text.to_owned());
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(shape)?;
            let port = after.strip_prefix(':').ok_or_else(shape)?;
            (inner, port)
        } else {
            text.rsplit_once(':').ok_or_else(shape)?
        };
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| DestError::Port(text.to_owned()))?;
        let nets = if host == "*" {
            vec![
                Net {
                    addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    prefix: 0,
                    port,
                },
                Net {
                    addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    prefix: 0,
                    port,
                },
            ]
        } else if let Some((addr, prefix)) = host.split_once('/') {
            let addr: IpAddr = addr.parse().map_err(|_| shape())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| DestError::Prefix(text.to_owned()))?;
            vec![Net { addr, prefix, port }]
        } else if let Ok(addr) = host.parse::<IpAddr>() {
            vec![Net {
                addr,
                prefix: if addr.is_ipv4() { 32 } else { 128 },
                port,
            }]
        } else {
            if host.is_empty() {
                return Err(shape());
            }
            let mut nets: Vec<Net> = (host, port)
                .to_socket_addrs()
                .map_err(|e| DestError::Resolve(text.to_owned(), e.to_string()))?
                .map(|sa: SocketAddr| {
                    let addr = sa.ip();
                    Net {
                        addr,
                        prefix: if addr.is_ipv4() { 32 } else { 128 },
                        port,
                    }
                })
                .collect();
            nets.dedup();
            if nets.is_empty() {
                return Err(DestError::Resolve(text.to_owned(), "no addresses".into()));
            }
            nets
        };
        Ok(Self {
            text: text.to_owned(),
            nets,
        })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Destination {
    /// Whether `addr` is one of this entry's addresses on its port (an IPv4-mapped IPv6
    /// address counts as its IPv4 address).
    pub fn covers(&self, addr: SocketAddr) -> bool {
        self.nets.iter().any(|n| n.covers(addr))
    }

    /// Whether this entry covers every address of a port (`*:PORT`).
    pub fn is_wildcard(&self) -> bool {
        self.nets.iter().any(|n| n.prefix == 0)
    }
}

impl Net {
    /// Whether `addr` is in this network, on its port.
    pub fn covers(&self, addr: SocketAddr) -> bool {
        if addr.port() != self.port {
            return false;
        }
        let ip = match addr.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let bits = |a: IpAddr| -> (u128, u32) {
            match a {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((have, width), (want, want_width)) = (bits(ip), bits(self.addr));
        if width != want_width {
            return false;
        }
        let prefix = u32::from(self.prefix);
        prefix == 0 || (have ^ want) >> (width - prefix) == 0
    }

    /// The kernel LPM key for this net: prefix length and data.
    pub fn lpm_key(&self) -> (u32, DestKey) {
        let (addr, bits) = match self.addr {
            IpAddr::V4(v4) => (
                agent_common::v4_mapped(v4.octets()),
                96 + u32::from(self.prefix),
            ),
            IpAddr::V6(v6) => (v6.octets(), u32::from(self.prefix)),
        };
        (
            DEST_PORT_BITS + bits,
            DestKey {
                port: self.port.to_be_bytes(),
                addr,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_addresses_of_its_nets_on_its_port() {
        let d = Destination::parse("10.1.0.0/16:5432").unwrap();
        assert!(d.covers("10.1.2.3:5432".parse().unwrap()));
        assert!(d.covers("[::ffff:10.1.2.3]:5432".parse().unwrap()));
        assert!(!d.covers("10.1.2.3:5433".parse().unwrap()));
        assert!(!d.covers("10.2.0.1:5432".parse().unwrap()));
        assert!(!d.covers("[::1]:5432".parse().unwrap()));
        assert!(!d.is_wildcard());
        let one = Destination::parse("[::1]:5432").unwrap();
        assert!(one.covers("[::1]:5432".parse().unwrap()));
        assert!(!one.covers("[::2]:5432".parse().unwrap()));
        let any = Destination::parse("*:5432").unwrap();
        assert!(any.is_wildcard());
        assert!(any.covers("192.0.2.1:5432".parse().unwrap()));
    }

    #[test]
    fn parses_each_form() {
        let d = Destination::parse("127.0.0.1:5432").unwrap();
        assert_eq!(
            d.nets,
            vec![Net {
                addr: "127.0.0.1".parse().unwrap(),
                prefix: 32,
                port: 5432
            }]
        );
        let d = Destination::parse("[::1]:6432").unwrap();
        assert_eq!(
            d.nets,
            vec![Net {
                addr: "::1".parse().unwrap(),
                prefix: 128,
                port: 6432
            }]
        );
        let d = Destination::parse("10.0.0.0/8:5432").unwrap();
        assert_eq!(d.nets[0].prefix, 8);
        let d = Destination::parse("[fd00::/8]:5432").unwrap();
        assert_eq!(d.nets[0].prefix, 8);
        let d = Destination::parse("*:5432").unwrap();
        assert_eq!(d.nets.len(), 2);
        let d = Destination::parse("localhost:5432").unwrap();
        assert!(d.nets.iter().any(|n| n.addr.is_loopback()));
    }

    #[test]
    fn rejects_bad_entries() {
        assert!(matches!(
            Destination::parse("127.0.0.1"),
            Err(DestError::Port(_) | DestError::Shape(_))
        ));
        assert_eq!(
            Destination::parse("127.0.0.1:0"),
            Err(DestError::Port("127.0.0.1:0".into()))
        );
        assert_eq!(
            Destination::parse("1.2.3.4/33:5432"),
            Err(DestError::Prefix("1.2.3.4/33:5432".into()))
        );
        assert!(matches!(
            Destination::parse(":5432"),
            Err(DestError::Shape(_))
        ));
        assert!(matches!(
            Destination::parse("no-such-host.invalid:5432"),
            Err(DestError::Resolve(..))
        ));
    }

    #[test]
    fn lpm_keys_put_port_first_and_map_v4() {
        let (len, key) = Destination::parse("10.0.0.0/8:5432").unwrap().nets[0].lpm_key();
        assert_eq!(len, 16 + 96 + 8);
        assert_eq!(key.port, 5432u16.to_be_bytes());
        assert_eq!(&key.addr[10..13], &[0xff, 0xff, 10]);
        let (len, _) = Destination::parse("*:5432").unwrap().nets[1].lpm_key();
        assert_eq!(len, 16);
    }
}
