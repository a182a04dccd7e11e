//! Published ports: `-p [HOSTIP:][HOSTPORT:]CTRPORT[/tcp|/udp]`, ranges
//! `A-B` on either side (of equal length), as docker reads them.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One published port. `host_port` 0 until hull picks a free one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl std::fmt::Display for PortMapping {
    /// As `hull port` and docker show it: `80/tcp -> 0.0.0.0:8080`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ip = self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        write!(
            f,
            "{}/{} -> {ip}:{}",
            self.container_port,
            self.proto.name(),
            self.host_port
        )
    }
}

fn range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (u16, u16) = (a.parse().ok()?, b.parse().ok()?);
    (a > 0 && a <= b).then_some((a, b))
}

/// Parses one `-p` value into its mappings (several for a range).
pub fn parse(spec: &str) -> Result<Vec<PortMapping>, String> {
    let bad = || format!("invalid -p {spec:?}: want [HOSTIP:][HOSTPORT:]CTRPORT[/tcp|/udp]");
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((r, "tcp")) => (r, Proto::Tcp),
        Some((r, "udp")) => (r, Proto::Udp),
        Some(_) => return Err(bad()),
        None => (spec, Proto::Tcp),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, ctr) = match parts[..] {
        [c] => (None, "", c),
        [h, c] => (None, h, c),
        [ip, h, c] => (Some(ip), h, c),
        _ => return Err(bad()),
    };
    let host_ip = match ip {
        None | Some("") => None,
        Some(ip) => Some(ip.parse::<Ipv4Addr>().map_err(|_| bad())?),
    };
    let (c0, c1) = range(ctr).ok_or_else(bad)?;
    let host = if host.is_empty() {
        None
    } else {
        Some(range(host).ok_or_else(bad)?)
    };
    if let Some((h0, h1)) = host {
        if h1 - h0 != c1 - c0 {
            return Err(format!(
                "invalid -p {spec:?}: the host and container ranges differ in length"
            ));
        }
    }
    Ok((c0..=c1)
        .enumerate()
        .map(|(i, c)| PortMapping {
            host_ip,
            host_port: host.map_or(0, |(h0, _)| h0 + i as u16),
            container_port: c,
            proto,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_forms() {
        let p = parse("8080:80").unwrap();
        assert_eq!(p[0].to_string(), "80/tcp -> 0.0.0.0:8080");
        let p = parse("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(p[0].to_string(), "53/udp -> 127.0.0.1:5353");
        let p = parse("80").unwrap();
        assert_eq!((p[0].host_port, p[0].container_port), (0, 80));
        let p = parse("9000-9002:7000-7002").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!((p[2].host_port, p[2].container_port), (9002, 7002));
        for bad in [
            "",
            "x",
            "80/sctp",
            "1:2:3:4",
            "0",
            "9000-9001:80",
            "5-4",
            "a.b:1:2",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
