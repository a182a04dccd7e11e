//! The container's network, from the main process's Start: `lo` up, the
//! interface's address, MTU, default and other routes (vm; the ns backend's host
//! side configured its interface already), and the container's /etc/hosts
//! and /etc/resolv.conf.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use hull_agent::protocol::{NetworkSetup, Route};

use crate::sys;

/// Applies `net` in the container whose root is `root`; says what failed.
pub fn apply(net: &NetworkSetup, root: &Path) -> Result<(), String> {
    // lo may be missing or up already (ns: the host brought it up); a
    // failure here only matters if the interface below fails too.
    let _ = sys::link_up("lo");
    if let Some(i) = &net.interface {
        let name = &i.name;
        if let Some(mac) = &i.mac {
            // A guest restored from a template has the template's MAC.
            let bytes = parse_mac(mac)
                .ok_or_else(|| format!("the MAC {mac:?} is not aa:bb:cc:dd:ee:ff"))?;
            sys::set_mac(name, bytes).map_err(|e| format!("setting the MAC of {name}: {e}"))?;
        }
        sys::set_mtu(name, i.mtu).map_err(|e| format!("setting the MTU of {name}: {e}"))?;
        sys::set_ipv4(name, i.address, i.prefix_len)
            .map_err(|e| format!("setting the address of {name}: {e}"))?;
        sys::link_up(name).map_err(|e| format!("setting {name} up: {e}"))?;
        if let Some(gw) = i.gateway {
            sys::add_route4(name, Ipv4Addr::UNSPECIFIED, 0, Some(gw))
                .map_err(|e| format!("adding the default route via {gw}: {e}"))?;
        }
        if let Some(v6) = &i.ipv6 {
            // hull hands out each address once: no duplicate address
            // detection holding it tentative (unusable) for a second.
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/accept_dad"), "0");
            sys::set_ipv6(name, v6.address, v6.prefix_len)
                .map_err(|e| format!("setting the IPv6 address of {name}: {e}"))?;
            if let Some(gw) = v6.gateway {
                sys::add_route6(name, Ipv6Addr::UNSPECIFIED, 0, Some(gw))
                    .map_err(|e| format!("adding the IPv6 default route via {gw}: {e}"))?;
            }
        }
        for r in &i.routes {
            add_route(name, r).map_err(|e| {
                let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
                format!(
                    "adding the route to {}/{}{via}: {e}",
                    r.destination, r.prefix_len
                )
            })?;
        }
    }
    let etc = root.join("etc");
    if net.hosts.is_some() || net.resolv_conf.is_some() {
        std::fs::create_dir_all(&etc).map_err(|e| format!("creating /etc: {e}"))?;
    }
    for (file, content) in [("hosts", &net.hosts), ("resolv.conf", &net.resolv_conf)] {
        if let Some(c) = content {
            let path = etc.join(file);
            // A symlink in the image must not send the write elsewhere.
            let _ = std::fs::remove_file(&path);
            std::fs::write(&path, c).map_err(|e| format!("writing /etc/{file}: {e}"))?;
        }
    }
    Ok(())
}

/// Adds route `r` on interface `name`; a gateway of the other family than
/// the destination is refused.
fn add_route(name: &str, r: &Route) -> std::io::Result<()> {
    match (r.destination, r.gateway) {
        (IpAddr::V4(d), None) => sys::add_route4(name, d, r.prefix_len, None),
        (IpAddr::V4(d), Some(IpAddr::V4(g))) => sys::add_route4(name, d, r.prefix_len, Some(g)),
        (IpAddr::V6(d), None) => sys::add_route6(name, d, r.prefix_len, None),
        (IpAddr::V6(d), Some(IpAddr::V6(g))) => sys::add_route6(name, d, r.prefix_len, Some(g)),
        _ => Err(std::io::ErrorKind::InvalidInput.into()),
    }
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::parse_mac;

    #[test]
    fn macs_parse_and_anything_else_is_refused() {
        assert_eq!(
            parse_mac("02:42:ac:11:00:0a"),
            Some([0x02, 0x42, 0xac, 0x11, 0x00, 0x0a])
        );
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:0a:01",
            "2:42:ac:11:00:0a",
            "zz:42:ac:11:00:0a",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
