//! The URL an agent is reached at. The platform calls it, so it must not let a caller aim
//! the platform at addresses it should never reach on an agent's behalf:
//!
//! - never: link-local (`169.254.0.0/16`, `fe80::/10`, where cloud metadata lives), cloud
//!   metadata (`fd00:ec2::/48`, `metadata.google.internal`), unspecified (`0.0.0.0/8`, `::`),
//!   multicast and broadcast;
//! - private ranges (`10/8`, `172.16/12`, `192.168/16`, `100.64/10`, `fc00::/7`) only when
//!   the deployment allows them ([`AgentUrlPolicy::allow_private`]);
//! - loopback (`127/8`, `::1`, `localhost`) only when the platform itself listens on
//!   loopback, since only then do its agents live on the same host.
//!
//! [`AgentUrl::parse`] applies the rules that hold everywhere; [`AgentUrl::check`] applies a
//! deployment's [`AgentUrlPolicy`] to the host as written; [`AgentUrl::resolve_checked`]
//! judges every address a host name resolves to at the moment of use, because a name that
//! was harmless at registration can point anywhere later.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;

use crate::config::Env;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct AgentUrl(String);

/// What a deployment lets agent URLs point at, beyond the public internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgentUrlPolicy {
    /// `AGENT_URL_ALLOW_PRIVATE`: agents on the private network (RFC 1918, CGNAT, ULA).
    pub allow_private: bool,
    /// Agents on the platform's own host.
    pub allow_loopback: bool,
}

impl AgentUrlPolicy {
    /// Loopback follows the platform's own listening address: an api bound to loopback
    /// serves agents on its own host, one bound elsewhere has no business calling loopback.
    pub fn read(env: &Env, api_addr: SocketAddr) -> Result<AgentUrlPolicy> {
        Ok(AgentUrlPolicy {
            allow_private: env.flag("AGENT_URL_ALLOW_PRIVATE", false)?,
            allow_loopback: api_addr.ip().is_loopback(),
        })
    }

    /// Why `ip` may not be called under this policy, or `None` when it may.
    fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        match classify(ip) {
            Class::Forbidden(why) => Some(why),
            Class::Private if !self.allow_private => {
                Some("private address (set AGENT_URL_ALLOW_PRIVATE=true to allow private networks)")
            }
            Class::Loopback if !self.allow_loopback => {
                Some("loopback address (allowed only when the platform itself listens on loopback)")
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Forbidden(&'static str),
    Private,
    Loopback,
    Public,
}

fn classify(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        // `::ffff:a.b.c.d` (mapped) and `64:ff9b::a.b.c.d` (NAT64) reach the IPv4 address:
        // judge them as one.
        IpAddr::V6(v6) => match v6.to_ipv4_mapped().or_else(|| nat64(v6)) {
            Some(v4) => classify_v4(v4),
            None => classify_v6(v6),
        },
    }
}

fn nat64(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]).then(|| Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32))
}

fn classify_v4(v4: Ipv4Addr) -> Class {
    let [a, b, ..] = v4.octets();
    if v4 == Ipv4Addr::new(169, 254, 169, 254) {
        Class::Forbidden("cloud metadata address")
    } else if v4.is_link_local() {
        Class::Forbidden("link-local address (cloud metadata range)")
    } else if a == 0 {
        Class::Forbidden("unspecified address")
    } else if v4.is_broadcast() {
        Class::Forbidden("broadcast address")
    } else if v4.is_multicast() {
        Class::Forbidden("multicast address")
    } else if v4.is_loopback() {
        Class::Loopback
    } else if v4.is_private() || (a == 100 && (b & 0xc0) == 64) {
        Class::Private
    } else {
        Class::Public
    }
}

fn classify_v6(v6: Ipv6Addr) -> Class {
    let s = v6.segments();
    if s[..3] == [0xfd00, 0x0ec2, 0] {
        Class::Forbidden("cloud metadata address")
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Class::Forbidden("link-local address")
    } else if v6.is_unspecified() {
        Class::Forbidden("unspecified address")
    } else if v6.is_multicast() {
        Class::Forbidden("multicast address")
    } else if v6.is_loopback() {
        Class::Loopback
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Class::Private
    } else {
        Class::Public
    }
}

fn is_localhost(domain: &str) -> bool {
    domain == "localhost" || domain.ends_with(".localhost")
}

impl AgentUrl {
    /// A well-formed http(s) URL whose host is none of the addresses refused everywhere.
    /// Private and loopback hosts pass here; [`AgentUrl::check`] judges them by policy.
    pub fn parse(raw: &str) -> Result<AgentUrl> {
        let bad = |why: &str| Error::Invalid { field: "url", problem: format!("{raw:?} is not allowed: {why}") };
        let url = url::Url::parse(raw).map_err(|_| bad("not a valid URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("scheme must be http or https"));
        }
        match url.host().ok_or_else(|| bad("no host"))? {
            url::Host::Ipv4(v4) => {
                if let Class::Forbidden(why) = classify(IpAddr::V4(v4)) {
                    return Err(bad(why));
                }
            }
            url::Host::Ipv6(v6) => {
                if let Class::Forbidden(why) = classify(IpAddr::V6(v6)) {
                    return Err(bad(why));
                }
            }
            url::Host::Domain(d) => {
                let d = d.to_ascii_lowercase();
                if d == "metadata.google.internal" || d.ends_with(".metadata.google.internal") {
                    return Err(bad("cloud metadata host"));
                }
            }
        }
        Ok(AgentUrl(url.to_string()))
    }

    /// [`AgentUrl::parse`], then [`AgentUrl::check`].
    pub fn parse_with(raw: &str, policy: &AgentUrlPolicy) -> Result<AgentUrl> {
        let url = AgentUrl::parse(raw)?;
        url.check(policy)?;
        Ok(url)
    }

    /// Applies `policy` to the host as written: an address literal, or `localhost`. Other
    /// names are judged when they are resolved ([`AgentUrl::resolve_checked`]).
    pub fn check(&self, policy: &AgentUrlPolicy) -> Result<()> {
        let url = self.url()?;
        let refusal = match url.host() {
            Some(url::Host::Ipv4(v4)) => policy.refusal(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => policy.refusal(IpAddr::V6(v6)),
            Some(url::Host::Domain(d)) if is_localhost(&d.to_ascii_lowercase()) => {
                policy.refusal(IpAddr::V4(Ipv4Addr::LOCALHOST))
            }
            _ => None,
        };
        match refusal {
            Some(why) => Err(self.refused(why)),
            None => Ok(()),
        }
    }

    /// The addresses to connect to, resolved now; refused when any of them is forbidden
    /// under `policy` (a name with one harmless and one internal address is refused: the
    /// connection could go to either).
    pub async fn resolve_checked(&self, policy: &AgentUrlPolicy) -> Result<Vec<SocketAddr>> {
        let url = self.url()?;
        let port = url.port_or_known_default().ok_or_else(|| self.refused("no port"))?;
        let addrs: Vec<SocketAddr> = match url.host() {
            Some(url::Host::Ipv4(v4)) => vec![SocketAddr::new(IpAddr::V4(v4), port)],
            Some(url::Host::Ipv6(v6)) => vec![SocketAddr::new(IpAddr::V6(v6), port)],
            Some(url::Host::Domain(d)) => tokio::net::lookup_host((d, port))
                .await
                .map_err(|e| Error::Invalid {
                    field: "url",
                    problem: format!("{:?}: host {d} does not resolve: {e}", self.0),
                })?
                .collect(),
            None => return Err(self.refused("no host")),
        };
        if addrs.is_empty() {
            return Err(self.refused("its host resolves to no address"));
        }
        for a in &addrs {
            if let Some(why) = policy.refusal(a.ip()) {
                return Err(self.refused(&format!("resolves to {}, a {why}", a.ip())));
            }
        }
        Ok(addrs)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn url(&self) -> Result<url::Url> {
        url::Url::parse(&self.0).map_err(|_| self.refused("not a valid URL"))
    }

    fn refused(&self, why: &str) -> Error {
        Error::Invalid { field: "url", problem: format!("{:?} is not allowed: {why}", self.0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: AgentUrlPolicy = AgentUrlPolicy { allow_private: false, allow_loopback: false };
    const OPEN: AgentUrlPolicy = AgentUrlPolicy { allow_private: true, allow_loopback: true };

    fn refused_everywhere(raw: &str) {
        assert!(AgentUrl::parse(raw).is_err(), "{raw} parsed");
        assert!(AgentUrl::parse_with(raw, &OPEN).is_err(), "{raw} allowed by the most open policy");
    }

    #[test]
    fn link_local_and_metadata_addresses_are_refused_everywhere() {
        for raw in [
            "http://169.254.169.254/latest",
            "http://169.254.1.2/",
            "http://[fe80::1]:80/",
            "http://[febf::1]/",
            "http://[fd00:ec2::254]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:a9fe:a9fe]/latest",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://x.metadata.google.internal/",
        ] {
            refused_everywhere(raw);
        }
        let err = AgentUrl::parse("http://169.254.169.254/").unwrap_err().to_string();
        assert!(err.starts_with("url ") && err.contains("metadata"), "{err}");
    }

    #[test]
    fn unspecified_multicast_and_broadcast_addresses_are_refused_everywhere() {
        for raw in [
            "http://0.0.0.0/",
            "http://0.1.2.3/",
            "http://[::]/",
            "http://[::ffff:0.0.0.0]/",
            "http://224.0.0.1/",
            "http://239.255.255.250:1900/",
            "http://[ff02::1]/",
            "http://255.255.255.255/",
        ] {
            refused_everywhere(raw);
        }
    }

    #[test]
    fn malformed_urls_are_refused() {
        for raw in ["ftp://example.com", "not a url", "http://", "file:///etc/passwd"] {
            refused_everywhere(raw);
        }
    }

    #[test]
    fn private_ranges_need_allow_private() {
        for raw in [
            "http://10.0.0.5/",
            "http://172.16.0.1/",
            "http://172.31.255.254/",
            "http://192.168.1.10:8000/",
            "http://100.64.0.1/",
            "http://100.127.255.254/",
            "http://[fc00::1]/",
            "http://[fd12:3456::1]/",
            "http://[::ffff:10.0.0.5]/",
        ] {
            assert!(AgentUrl::parse(raw).is_ok(), "{raw}: parse judges no policy");
            let err = AgentUrl::parse_with(raw, &STRICT).unwrap_err().to_string();
            assert!(err.contains("AGENT_URL_ALLOW_PRIVATE"), "{raw}: {err}");
            let private_only = AgentUrlPolicy { allow_private: true, allow_loopback: false };
            assert!(AgentUrl::parse_with(raw, &private_only).is_ok(), "{raw} with private allowed");
        }
        // Just outside the ranges.
        for raw in ["http://172.32.0.1/", "http://100.128.0.1/", "http://11.0.0.1/", "http://[2001:db8::1]/"] {
            assert!(AgentUrl::parse_with(raw, &STRICT).is_ok(), "{raw} is public");
        }
    }

    #[test]
    fn loopback_needs_a_platform_on_loopback() {
        let loopback_only = AgentUrlPolicy { allow_private: false, allow_loopback: true };
        for raw in [
            "http://127.0.0.1:8000",
            "http://127.1.2.3/",
            "http://[::1]:8000/",
            "http://[::ffff:127.0.0.1]:8000/",
            "http://localhost:8000/",
            "http://agent.localhost/",
        ] {
            let err = AgentUrl::parse_with(raw, &STRICT).unwrap_err().to_string();
            assert!(err.contains("loopback"), "{raw}: {err}");
            assert!(AgentUrl::parse_with(raw, &loopback_only).is_ok(), "{raw} with loopback allowed");
        }
    }

    #[test]
    fn public_addresses_and_names_pass_and_are_normalised() {
        let url = AgentUrl::parse_with("http://127.0.0.1:8000", &OPEN).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8000/");
        for raw in ["https://agent.example.com/a2a", "http://8.8.8.8/", "http://[2001:db8::1]/"] {
            assert!(AgentUrl::parse_with(raw, &STRICT).is_ok(), "{raw}");
        }
    }

    #[test]
    fn the_policy_follows_the_configuration() {
        let on_loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let everywhere: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let env = Env::from_pairs([("AGENT_URL_ALLOW_PRIVATE", "true")]);
        assert_eq!(
            AgentUrlPolicy::read(&env, on_loopback).unwrap(),
            AgentUrlPolicy { allow_private: true, allow_loopback: true }
        );
        let none = Env::from_pairs::<&str, &str>([]);
        assert_eq!(AgentUrlPolicy::read(&none, everywhere).unwrap(), STRICT);
        let v6: SocketAddr = "[::1]:8080".parse().unwrap();
        assert!(AgentUrlPolicy::read(&none, v6).unwrap().allow_loopback);
        let bad = Env::from_pairs([("AGENT_URL_ALLOW_PRIVATE", "maybe")]);
        assert!(AgentUrlPolicy::read(&bad, on_loopback).unwrap_err().to_string().contains("AGENT_URL_ALLOW_PRIVATE"));
    }

    #[tokio::test]
    async fn resolution_is_judged_address_by_address() {
        let localhost = AgentUrl::parse("http://localhost:8000/").unwrap();
        let err = localhost.resolve_checked(&STRICT).await.unwrap_err().to_string();
        assert!(err.contains("loopback"), "{err}");
        let loopback_only = AgentUrlPolicy { allow_private: false, allow_loopback: true };
        let addrs = localhost.resolve_checked(&loopback_only).await.unwrap();
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 8000), "{addrs:?}");

        let literal = AgentUrl::parse("http://10.0.0.5/").unwrap();
        assert!(literal.resolve_checked(&STRICT).await.is_err());
        assert_eq!(literal.resolve_checked(&OPEN).await.unwrap(), vec!["10.0.0.5:80".parse::<SocketAddr>().unwrap()]);
        let v6 = AgentUrl::parse("https://[::1]/").unwrap();
        assert_eq!(v6.resolve_checked(&OPEN).await.unwrap(), vec!["[::1]:443".parse::<SocketAddr>().unwrap()]);

        let nowhere = AgentUrl::parse("http://no-such-host.invalid/").unwrap();
        assert!(nowhere.resolve_checked(&OPEN).await.is_err(), ".invalid never resolves");
    }
}
