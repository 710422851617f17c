//! Who may come in, decided before any upstream connection: the session token (its signature,
//! expiry, and a `pod` claim equal to the path's pod), the browser's Origin, the client's
//! address (through trusted proxies only), and how many connections that user and that address
//! already hold.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, header};
use session_token::{Claims, Expectations, TokenError, VerifyingKey};

use crate::refusal::Refusal;

/// An address block, `10.0.0.0/8` or `2001:db8::/32` (a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, bits) = s.trim().split_once('/').unwrap_or((s.trim(), ""));
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR block"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = if bits.is_empty() {
            max
        } else {
            bits.parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?
        };
        Ok(Self { net, bits })
    }
}

impl Cidr {
    /// Whether `ip` is in this block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy; then the rightmost
/// `X-Forwarded-For` entry that is not one (entries further left are the client's to forge).
pub fn client_address(peer: SocketAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let mut client = peer.ip();
    if !is_trusted(client) {
        return client;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            // Garbage in the chain: stop at the last address we could trust.
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// Verifies tokens and origins.
#[derive(Debug, Clone)]
pub struct Gatekeeper {
    key: VerifyingKey,
    leeway_secs: u64,
    allowed_origins: Arc<[String]>,
}

impl Gatekeeper {
    pub fn new(key: VerifyingKey, leeway_secs: u64, allowed_origins: &[String]) -> Self {
        Self {
            key,
            leeway_secs,
            allowed_origins: allowed_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
        }
    }

    /// The token from `Authorization: Bearer` (or Jupyter's `token`) or the query's `token`.
    pub fn token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(session_token::from_authorization)
            .or(query.filter(|t| !t.is_empty()))
    }

    /// The claims of a valid token for `pod`.
    pub fn admit(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
        pod: &str,
    ) -> Result<Claims, Refusal> {
        self.check_origin(headers)?;
        let token = Self::token(headers, query_token).ok_or(Refusal::TokenMissing)?;
        let expect = Expectations {
            document: None,
            pod: Some(pod),
            leeway_secs: self.leeway_secs,
            audience: None,
        };
        self.key.verify(token, &expect).map_err(|e| match e {
            TokenError::Expired { .. } => Refusal::TokenExpired,
            TokenError::WrongPod => Refusal::WrongPod,
            other => Refusal::TokenInvalid(other.to_string()),
        })
    }

    /// The claims of a valid Jupyter API token (never a session token: the audiences differ).
    /// Whether the token reaches the kernel is Watchman's to say (`Routes.ResolveKernel`).
    pub fn admit_jupyter(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Claims, Refusal> {
        self.check_origin(headers)?;
        let token = Self::token(headers, query_token).ok_or(Refusal::TokenMissing)?;
        let expect = Expectations {
            document: None,
            pod: None,
            leeway_secs: self.leeway_secs,
            audience: Some(session_token::JUPYTER_AUDIENCE),
        };
        self.key.verify(token, &expect).map_err(|e| match e {
            TokenError::Expired { .. } => Refusal::TokenExpired,
            other => Refusal::TokenInvalid(other.to_string()),
        })
    }

    /// A browser page may connect only from an allowed origin: the host it connects to, or one
    /// of `--allowed-origin`. No Origin: not a browser, nothing to check.
    fn check_origin(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let same_host = origin
            .split_once("://")
            .is_some_and(|(_, rest)| !host.is_empty() && rest.eq_ignore_ascii_case(host));
        if same_host || self.allowed_origins.iter().any(|o| o == origin) {
            Ok(())
        } else {
            Err(Refusal::OriginNotAllowed)
        }
    }
}

/// Connection counts per user, per client address, and in all, on this replica.
#[derive(Debug, Clone)]
pub struct Limits {
    inner: Arc<Mutex<Counts>>,
    per_user: usize,
    per_address: usize,
    total: usize,
}

#[derive(Debug, Default)]
struct Counts {
    users: HashMap<String, usize>,
    addresses: HashMap<IpAddr, usize>,
    total: usize,
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct Permit {
    limits: Limits,
    user: String,
    address: IpAddr,
}

impl Limits {
    pub fn new(per_user: usize, per_address: usize, total: usize) -> Self {
        Self {
            inner: Arc::default(),
            per_user,
            per_address,
            total,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Plain counters: a panic elsewhere cannot leave them inconsistent.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for `user` from `address`, or why not.
    pub fn acquire(&self, user: &str, address: IpAddr) -> Result<Permit, Refusal> {
        let mut c = self.lock();
        if c.total >= self.total {
            return Err(Refusal::Capacity);
        }
        if c.users.get(user).copied().unwrap_or(0) >= self.per_user {
            return Err(Refusal::UserLimit);
        }
        if c.addresses.get(&address).copied().unwrap_or(0) >= self.per_address {
            return Err(Refusal::AddressLimit);
        }
        c.total += 1;
        *c.users.entry(user.to_owned()).or_default() += 1;
        *c.addresses.entry(address).or_default() += 1;
        Ok(Permit {
            limits: self.clone(),
            user: user.to_owned(),
            address,
        })
    }

    /// Connections held now.
    pub fn total(&self) -> usize {
        self.lock().total
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.limits.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.users.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                c.users.remove(&self.user);
            }
        }
        if let Some(n) = c.addresses.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                c.addresses.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::http::HeaderValue;
    use session_token::{Role, SigningKey};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn cidrs_match_their_blocks_only() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::5".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }

    #[test]
    fn forwarded_addresses_count_only_through_trusted_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.2")]);
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.4:5000".parse().unwrap();
        // Through our proxies: the rightmost untrusted hop, not the forgeable leftmost.
        assert_eq!(
            client_address(proxy, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // A client that is not a proxy cannot claim another address.
        assert_eq!(client_address(stranger, &h, &trusted), stranger.ip());
        // No proxies trusted: the peer.
        assert_eq!(client_address(proxy, &h, &[]), proxy.ip());
        // Garbage stops the walk.
        let bad = headers(&[("x-forwarded-for", "203.0.113.9, junk")]);
        assert_eq!(client_address(proxy, &bad, &trusted), proxy.ip());
    }

    #[test]
    fn tokens_must_be_valid_and_for_this_pod() {
        let key = SigningKey::generate();
        let gate = Gatekeeper::new(key.verifying_key(), 0, &[]);
        let mint = |pod: &str, ttl: u64| {
            key.mint(&Claims::new(
                "t",
                "ada",
                "Ada",
                "doc",
                pod,
                Role::Editor,
                ttl,
            ))
            .unwrap()
        };
        let good = mint("p1", 60);
        assert_eq!(
            gate.admit(&HeaderMap::new(), Some(&good), "p1")
                .unwrap()
                .sub,
            "ada"
        );
        let bearer = headers(&[("authorization", &format!("Bearer {good}"))]);
        assert!(gate.admit(&bearer, None, "p1").is_ok());
        assert_eq!(
            gate.admit(&HeaderMap::new(), Some(&good), "p2"),
            Err(Refusal::WrongPod)
        );
        assert_eq!(
            gate.admit(&HeaderMap::new(), None, "p1"),
            Err(Refusal::TokenMissing)
        );
        let mut expired = Claims::new("t", "ada", "Ada", "doc", "p1", Role::Editor, 60);
        expired.exp = session_token::now_secs() - 120;
        let expired = key.mint(&expired).unwrap();
        assert_eq!(
            gate.admit(&HeaderMap::new(), Some(&expired), "p1"),
            Err(Refusal::TokenExpired)
        );
        let forged = SigningKey::generate()
            .mint(&Claims::new(
                "t",
                "ada",
                "Ada",
                "doc",
                "p1",
                Role::Editor,
                60,
            ))
            .unwrap();
        assert!(matches!(
            gate.admit(&HeaderMap::new(), Some(&forged), "p1"),
            Err(Refusal::TokenInvalid(_))
        ));
    }

    #[test]
    fn browsers_must_come_from_the_same_host_or_an_allowed_origin() {
        let key = SigningKey::generate();
        let token = key
            .mint(&Claims::new(
                "t",
                "ada",
                "Ada",
                "doc",
                "p1",
                Role::Editor,
                60,
            ))
            .unwrap();
        let gate = Gatekeeper::new(
            key.verifying_key(),
            0,
            &["https://app.example.com/".to_owned()],
        );
        let same = headers(&[
            ("host", "gw.example.com"),
            ("origin", "https://gw.example.com"),
        ]);
        assert!(gate.admit(&same, Some(&token), "p1").is_ok());
        let allowed = headers(&[
            ("host", "gw.example.com"),
            ("origin", "https://app.example.com"),
        ]);
        assert!(gate.admit(&allowed, Some(&token), "p1").is_ok());
        let foreign = headers(&[
            ("host", "gw.example.com"),
            ("origin", "https://evil.example"),
        ]);
        assert_eq!(
            gate.admit(&foreign, Some(&token), "p1"),
            Err(Refusal::OriginNotAllowed)
        );
    }

    #[test]
    fn limits_count_users_addresses_and_the_total() {
        let limits = Limits::new(2, 3, 4);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = limits.acquire("ada", a).unwrap();
        let _p2 = limits.acquire("ada", a).unwrap();
        assert_eq!(limits.acquire("ada", b).unwrap_err(), Refusal::UserLimit);
        let _p3 = limits.acquire("bob", a).unwrap();
        assert_eq!(limits.acquire("cy", a).unwrap_err(), Refusal::AddressLimit);
        let _p4 = limits.acquire("cy", b).unwrap();
        assert_eq!(limits.acquire("dee", b).unwrap_err(), Refusal::Capacity);
        drop(p1);
        assert_eq!(limits.total(), 3);
        assert!(limits.acquire("ada", b).is_ok());
    }
}
