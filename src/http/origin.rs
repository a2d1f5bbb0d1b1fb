//! Which browser origins and host names the server answers: the defences of a server that
//! trusts its network position (loopback, auth off) against the web pages its user has open.
//!
//! A page on another site can reach `127.0.0.1` from the user's browser in three ways, and each
//! is closed here or by CORS:
//!
//! - Reading a response: CORS. The browser hides the response unless the origin is allowed.
//! - A WebSocket, which CORS does not cover: the upgrade's `Origin` must be one CORS allows (or
//!   the server's own), in every auth mode.
//! - DNS rebinding: the page's own host name is re-pointed at 127.0.0.1, so the page is
//!   same-origin and CORS never applies. Only the `Host` header tells: with auth off, only
//!   loopback names and the configured `allowed_hosts` are answered.
//!
//! Writes that a page may send without a preflight (a "simple" POST) are refused as well when
//! their `Origin` is foreign, on top of the JSON content type they need anyway.
//!
//! Nothing here knows axum: [`HostPolicy`] and [`origin_allowed`] take header text and answer
//! yes or no; `auth::Guard` (its `browser_refusal`) wires them in at one place.

use axum::http::HeaderValue;

use super::CorsOrigins;

/// Host names answered when auth is off: the loopback names, plus the configured ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostPolicy {
    /// `*` in `allowed_hosts`: every host (the check is off).
    any: bool,
    /// Exact names, lowercase, no port.
    names: Vec<String>,
    /// `.example.com` entries: the name and every subdomain (stored without the dot).
    domains: Vec<String>,
}

impl HostPolicy {
    /// Parses `allowed_hosts`: a comma-separated list of host names (`sessiond.internal`),
    /// `.example.com` for a domain and its subdomains, or `*` for any host. Ports are not part
    /// of an entry: every port of an allowed name is allowed.
    pub fn parse(list: &str) -> Result<HostPolicy, String> {
        let mut policy = HostPolicy::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                policy.any = true;
                continue;
            }
            let (domain, name) = match entry.strip_prefix('.') {
                Some(rest) => (true, rest),
                None => (false, entry),
            };
            let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
            let valid = !name.is_empty()
                && name.len() <= 253
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
                && !name.starts_with('.');
            if !valid {
                return Err(format!(
                    "{entry:?} is not a host name (expected a name such as sessiond.internal, \
                     .example.com for a domain and its subdomains, or *; no scheme, no port)"
                ));
            }
            if domain {
                policy.domains.push(name);
            } else {
                policy.names.push(name);
            }
        }
        Ok(policy)
    }

    /// Whether a request naming `authority` (a `Host` header: a name with an optional port)
    /// is answered.
    pub fn allows(&self, authority: &str) -> bool {
        if self.any {
            return true;
        }
        let Some(mut host) = host_of(authority) else {
            return false;
        };
        // `localhost.` is `localhost`: a fully qualified name.
        if host.ends_with('.') {
            host.pop();
        }
        is_loopback_name(&host)
            || self.names.contains(&host)
            || self.domains.iter().any(|d| {
                host == *d
                    || host
                        .strip_suffix(d.as_str())
                        .is_some_and(|sub| sub.ends_with('.'))
            })
    }
}

/// The lowercase host of an authority (`name[:port]` or `[v6][:port]`); `None` when it is not
/// well formed (a bad port, userinfo, a path).
pub fn host_of(authority: &str) -> Option<String> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        (&authority[..=end], &authority[end + 1..])
    } else {
        match authority.rfind(':') {
            Some(colon) => (&authority[..colon], &authority[colon..]),
            None => (authority, ""),
        }
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|p| {
            !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
        });
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b));
    (port_ok && host_ok).then(|| host.to_ascii_lowercase())
}

/// `localhost`, `127.0.0.1` and `[::1]`: names that always mean this machine, so no DNS
/// answer can re-point them.
fn is_loopback_name(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// The authority (`host[:port]`) of an `http(s)` origin; `None` for anything else (`null`,
/// other schemes, a path).
fn origin_authority(origin: &str) -> Option<&str> {
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))?;
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

/// `http(s)://localhost`, `127.0.0.1` or `[::1]`, with any port.
pub fn is_localhost_origin(origin: &HeaderValue) -> bool {
    origin
        .to_str()
        .ok()
        .and_then(origin_authority)
        .and_then(host_of)
        .is_some_and(|host| is_loopback_name(&host))
}

/// Whether a request with `origin` (its `Origin` header) and `host` (its `Host`) may open a
/// WebSocket or write: its origin is one CORS allows, or the server's own (a page the server
/// itself served, under a name `hosts` answers). No `Origin` at all is a program, not a page.
pub fn origin_allowed(
    cors: &CorsOrigins,
    hosts: &HostPolicy,
    origin: Option<&HeaderValue>,
    host: Option<&str>,
) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let allowed_by_cors = match cors {
        CorsOrigins::Any => true,
        CorsOrigins::Localhost => is_localhost_origin(origin),
        CorsOrigins::List(list) => list
            .iter()
            .any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes())),
    };
    if allowed_by_cors {
        return true;
    }
    let Some(authority) = origin.to_str().ok().and_then(origin_authority) else {
        return false;
    };
    host.is_some_and(|host| host.eq_ignore_ascii_case(authority) && hosts.allows(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_origins() {
        for ok in [
            "http://localhost",
            "http://localhost:3000",
            "https://127.0.0.1:8443",
            "http://[::1]:5173",
        ] {
            assert!(is_localhost_origin(&HeaderValue::from_static(ok)), "{ok}");
        }
        for bad in [
            "http://localhost.evil.com",
            "http://evil.com",
            "http://127.0.0.1.evil.com:80",
            "ftp://localhost",
            "http://localhost:",
            "http://localhost:80x",
            "http://localhost/path",
            "null",
        ] {
            assert!(
                !is_localhost_origin(&HeaderValue::from_static(bad)),
                "{bad}"
            );
        }
    }

    #[test]
    fn loopback_hosts_are_answered_and_others_are_not() {
        let policy = HostPolicy::default();
        for ok in [
            "localhost",
            "localhost:4096",
            "LOCALHOST:4096",
            "localhost.:4096",
            "127.0.0.1",
            "127.0.0.1:4096",
            "[::1]",
            "[::1]:4096",
        ] {
            assert!(policy.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:4096",
            "localhost.evil.example",
            "127.0.0.1.nip.io:4096",
            "127.0.0.2",
            "[::2]:4096",
            "localhost:99999999",
            "localhost:",
            "user@localhost",
            "",
        ] {
            assert!(!policy.allows(bad), "{bad}");
        }
    }

    #[test]
    fn allowed_hosts_add_names_and_domains() {
        let policy = HostPolicy::parse("sessiond.internal, .example.com").unwrap();
        assert!(policy.allows("sessiond.internal:4096"));
        assert!(policy.allows("SESSIOND.internal"));
        assert!(policy.allows("example.com"));
        assert!(policy.allows("api.example.com:443"));
        assert!(!policy.allows("badexample.com"));
        assert!(!policy.allows("sessiond.internal.evil"));
        assert!(policy.allows("localhost:1"), "loopback stays allowed");
        assert!(HostPolicy::parse("*").unwrap().allows("anything.at.all:1"));
        assert!(HostPolicy::parse("").unwrap() == HostPolicy::default());
        for bad in ["http://x.example", "x.example/path", ".", "a b"] {
            assert!(HostPolicy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn origins_follow_cors_and_same_origin() {
        let hosts = HostPolicy::parse("sessiond.internal").unwrap();
        let local = |o: Option<&'static str>, host: &str| {
            let origin = o.map(HeaderValue::from_static);
            origin_allowed(&CorsOrigins::Localhost, &hosts, origin.as_ref(), Some(host))
        };
        assert!(local(None, "evil.example"), "no Origin: a program");
        assert!(local(Some("http://localhost:5173"), "127.0.0.1:4096"));
        assert!(!local(Some("http://evil.example"), "127.0.0.1:4096"));
        assert!(!local(Some("null"), "127.0.0.1:4096"));
        // The server's own page under an allowed name; a rebound name is not.
        assert!(local(
            Some("http://sessiond.internal:4096"),
            "sessiond.internal:4096"
        ));
        assert!(!local(
            Some("http://evil.example:4096"),
            "evil.example:4096"
        ));
        let listed = CorsOrigins::List(vec![HeaderValue::from_static("https://app.example")]);
        let none = HostPolicy::default();
        let app = HeaderValue::from_static("https://app.example");
        let other = HeaderValue::from_static("https://other.example");
        assert!(origin_allowed(&listed, &none, Some(&app), None));
        assert!(!origin_allowed(&listed, &none, Some(&other), None));
        assert!(origin_allowed(&CorsOrigins::Any, &none, Some(&other), None));
    }
}
