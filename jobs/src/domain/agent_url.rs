//! The URL an agent is reached at. The platform calls it, so it must not point at
//! link-local or cloud-metadata addresses; loopback stays allowed because agents on the
//! platform's own host use it.

use std::net::IpAddr;

use serde::Serialize;

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct AgentUrl(String);

impl AgentUrl {
    pub fn parse(raw: &str) -> Result<AgentUrl> {
        let bad = |why: &str| Error::Invalid { field: "url", problem: format!("{raw:?} is not allowed: {why}") };
        let url = url::Url::parse(raw).map_err(|_| bad("not a valid URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("scheme must be http or https"));
        }
        let host = url.host().ok_or_else(|| bad("no host"))?;
        let ip = match host {
            url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            // `::ffff:a.b.c.d` reaches the IPv4 address: judge it as one.
            url::Host::Ipv6(v6) => Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)),
            url::Host::Domain(d) => {
                let d = d.to_ascii_lowercase();
                if d == "metadata.google.internal" || d.ends_with(".metadata.google.internal") {
                    return Err(bad("cloud metadata host"));
                }
                None
            }
        };
        match ip {
            Some(IpAddr::V4(v4)) if v4.is_link_local() => Err(bad("link-local address (cloud metadata range)")),
            Some(IpAddr::V4(v4)) if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() => {
                Err(bad("not a unicast address"))
            }
            Some(IpAddr::V6(v6)) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Err(bad("link-local address")),
            Some(IpAddr::V6(v6)) if v6.segments()[..3] == [0xfd00, 0x0ec2, 0] => Err(bad("cloud metadata address")),
            Some(IpAddr::V6(v6)) if v6.is_unspecified() || v6.is_multicast() => Err(bad("not a unicast address")),
            _ => Ok(AgentUrl(url.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::AgentUrl;

    #[test]
    fn metadata_and_link_local_urls_are_refused() {
        assert!(AgentUrl::parse("http://169.254.169.254/latest").is_err());
        assert!(AgentUrl::parse("http://[fe80::1]:80/").is_err());
        assert!(AgentUrl::parse("http://[fd00:ec2::254]/").is_err());
        assert!(AgentUrl::parse("http://[::ffff:169.254.169.254]/").is_err(), "IPv4-mapped metadata address");
        assert!(AgentUrl::parse("http://[::ffff:a9fe:a9fe]/latest").is_err(), "the same, in hex");
        assert!(AgentUrl::parse("http://[::ffff:0.0.0.0]/").is_err());
        assert!(AgentUrl::parse("http://[::ffff:127.0.0.1]:8000/").is_ok());
        assert!(AgentUrl::parse("ftp://example.com").is_err());
        assert!(AgentUrl::parse("http://127.0.0.1:8000").is_ok());
        assert!(AgentUrl::parse("https://agent.example.com/a2a").is_ok());
    }
}
