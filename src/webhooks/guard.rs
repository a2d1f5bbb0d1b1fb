//! The SSRF guard: which addresses a webhook may reach.
//!
//! Internal addresses (loopback, private, link-local, CGNAT, unique-local, multicast,
//! unspecified, broadcast, documentation and other reserved ranges) are refused unless they fall
//! inside a network the operator allowed (`--webhook-allowed-networks`). An IPv4-mapped IPv6
//! address is judged as the IPv4 address it carries, so `::ffff:127.0.0.1` is loopback. The
//! guard runs at registration and again inside the delivery client's resolver, after DNS, so a
//! name that later resolves elsewhere (DNS rebinding) is still refused at connect time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::http::auth::Cidr;

/// Networks the operator allowed despite being internal.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    allowed: Vec<Cidr>,
}

/// Why an address is refused (shown to API clients and kept in delivery logs).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{ip} is a {kind} address; webhooks may not reach it unless the server is started with \
     --webhook-allowed-networks covering it"
)]
pub struct Refused {
    pub ip: IpAddr,
    pub kind: &'static str,
}

impl Guard {
    pub fn new(allowed: Vec<Cidr>) -> Guard {
        Guard { allowed }
    }

    /// `Ok` when `ip` may be reached.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        match classify(ip) {
            None => Ok(()),
            Some(_) if self.allowed.iter().any(|c| c.contains(ip)) => Ok(()),
            Some(kind) => Err(Refused { ip, kind }),
        }
    }
}

/// The kind of internal address `ip` is, or `None` for a public one.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_broadcast() => "broadcast",
        (0, _, _) => "unspecified",
        (127, _, _) => "loopback",
        (10, _, _) => "private",
        (172, 16..=31, _) => "private",
        (192, 168, _) => "private",
        (169, 254, _) => "link-local",
        (100, 64..=127, _) => "shared (CGNAT)",
        (192, 0, 0) => "reserved (IETF protocol assignments)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved",
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    Some(match segments[0] {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        s if s & 0xfe00 == 0xfc00 => "unique-local",
        s if s & 0xffc0 == 0xfe80 => "link-local",
        s if s & 0xffc0 == 0xfec0 => "site-local",
        s if s & 0xff00 == 0xff00 => "multicast",
        0x2001 if segments[1] == 0x0db8 => "documentation",
        0x3fff if segments[1] & 0xf000 == 0 => "documentation",
        // 64:ff9b::/96 (NAT64) and ::/96 (IPv4-compatible) can carry an internal IPv4 address.
        0x0064 if segments[1] == 0xff9b => {
            let v4 = Ipv4Addr::new(
                (segments[6] >> 8) as u8,
                segments[6] as u8,
                (segments[7] >> 8) as u8,
                segments[7] as u8,
            );
            return classify_v4(v4);
        }
        0 if segments[1..6].iter().all(|s| *s == 0) => "reserved (IPv4-compatible)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(raw: &str) -> Option<&'static str> {
        classify(raw.parse().unwrap())
    }

    #[test]
    fn refuses_internal_ranges() {
        for (ip, expected) in [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("100.127.255.255", "shared (CGNAT)"),
            ("0.0.0.0", "unspecified"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
            ("192.0.2.10", "documentation"),
            ("198.51.100.1", "documentation"),
            ("203.0.113.7", "documentation"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
        ] {
            assert_eq!(kind(ip), Some(expected), "{ip}");
        }
    }

    #[test]
    fn allows_public_addresses() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(kind(ip), None, "{ip}");
        }
    }

    #[test]
    fn allowed_networks_override() {
        let guard = Guard::new(vec![Cidr::parse("127.0.0.0/8").unwrap()]);
        assert!(guard.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(guard.check("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        let refused = guard.check("10.0.0.1".parse().unwrap()).unwrap_err();
        assert_eq!(refused.kind, "private");
        assert!(
            Guard::default()
                .check("127.0.0.1".parse().unwrap())
                .is_err()
        );
    }
}
