//! Addresses: IPv4 subnets, the default subnet chosen as docker does
//! (skipping ranges the host routes already), and leases, one file per
//! address under the network's directory, taken under the networks lock.
//! A dual-stack network's IPv6 subnet ([`Subnet6`]) gives each container
//! the host number of its IPv4 lease ([`Subnet6::for_lease`]), so the one
//! lease holds both addresses.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// An IPv4 subnet, `A.B.C.D/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Subnet {
    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// Host number `n` of the subnet (1 is the gateway by default).
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.prefix_len));
        (u64::from(n) < size.saturating_sub(1) && n > 0)
            .then(|| Ipv4Addr::from((u32::from(self.addr) & self.mask()) + n))
    }

    /// Whether `ip` may be given to a container: inside, neither the
    /// network nor the broadcast address.
    pub fn usable(&self, ip: Ipv4Addr) -> bool {
        let host = u32::from(ip) & !self.mask();
        self.contains(ip) && host != 0 && host != !self.mask()
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl std::str::FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Subnet, String> {
        let bad = || format!("invalid subnet {s:?}: want A.B.C.D/N, N from 8 to 30");
        let (a, n) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix_len: u8 = n.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix_len) {
            return Err(bad());
        }
        let s = Subnet { addr, prefix_len };
        Ok(Subnet {
            addr: Ipv4Addr::from(u32::from(addr) & s.mask()),
            prefix_len,
        })
    }
}

impl TryFrom<String> for Subnet {
    type Error = String;
    fn try_from(s: String) -> Result<Subnet, String> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

/// The IPv4 destinations the calling thread's network namespace routes
/// (from /proc/net/route).
pub fn routed_subnets() -> Vec<Subnet> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dst = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            (mask != 0).then(|| Subnet {
                addr: Ipv4Addr::from(u32::from_be(dst)),
                prefix_len: u32::from_be(mask).count_ones() as u8,
            })
        })
        .collect()
}

/// The first subnet of docker's default pools (172.17-31.0.0/16, then
/// 192.168.0-240.0/20) that overlaps neither `taken` nor a routed range.
pub fn pick_subnet(taken: &[Subnet]) -> Option<Subnet> {
    let routed = routed_subnets();
    let pool = (17..=31)
        .map(|b| Subnet {
            addr: Ipv4Addr::new(172, b, 0, 0),
            prefix_len: 16,
        })
        .chain((0..16).map(|c| Subnet {
            addr: Ipv4Addr::new(192, 168, c * 16, 0),
            prefix_len: 20,
        }));
    pool.into_iter()
        .find(|s| !taken.iter().chain(&routed).any(|t| t.overlaps(s)))
}

/// An IPv6 subnet, `ADDR/N` with N from 48 to 124.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet6 {
    pub addr: Ipv6Addr,
    pub prefix_len: u8,
}

impl Subnet6 {
    fn mask(&self) -> u128 {
        u128::MAX
            .checked_shl(128 - u32::from(self.prefix_len))
            .unwrap_or(0)
    }

    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & self.mask() == u128::from(self.addr) & self.mask()
    }

    pub fn overlaps(&self, other: &Subnet6) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// Whether `ip` can be a host's address: inside, and not the
    /// subnet-router anycast address (host 0).
    pub fn usable(&self, ip: Ipv6Addr) -> bool {
        self.contains(ip) && u128::from(ip) & !self.mask() != 0
    }

    /// Host number `n` of the subnet (1 is the gateway by default); the
    /// subnet-router anycast address (host 0) is never one.
    pub fn host(&self, n: u32) -> Option<Ipv6Addr> {
        let n = u128::from(n);
        (n > 0 && n & self.mask() == 0)
            .then(|| Ipv6Addr::from((u128::from(self.addr) & self.mask()) | n))
    }

    /// A container's IPv6 address for its IPv4 lease `ip` in `v4`: the same
    /// host number, or, for the one lease whose number is the IPv6
    /// gateway's, the number just past the IPv4 subnet (never leased).
    pub fn for_lease(&self, v4: &Subnet, ip: Ipv4Addr, gateway: Ipv6Addr) -> Option<Ipv6Addr> {
        let n = u32::from(ip) & !v4.mask();
        let own = self.host(n)?;
        if own != gateway {
            return Some(own);
        }
        let past = (!v4.mask()).checked_add(1)?;
        self.host(past).filter(|a| *a != gateway)
    }
}

impl std::fmt::Display for Subnet6 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl std::str::FromStr for Subnet6 {
    type Err = String;
    fn from_str(s: &str) -> Result<Subnet6, String> {
        let bad = || format!("invalid IPv6 subnet {s:?}: want ADDR/N, N from 48 to 124");
        let (a, n) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv6Addr = a.parse().map_err(|_| bad())?;
        let prefix_len: u8 = n.parse().map_err(|_| bad())?;
        if !(48..=124).contains(&prefix_len) {
            return Err(bad());
        }
        let s = Subnet6 { addr, prefix_len };
        Ok(Subnet6 {
            addr: Ipv6Addr::from(u128::from(addr) & s.mask()),
            prefix_len,
        })
    }
}

impl TryFrom<String> for Subnet6 {
    type Error = String;
    fn try_from(s: String) -> Result<Subnet6, String> {
        s.parse()
    }
}

impl From<Subnet6> for String {
    fn from(s: Subnet6) -> String {
        s.to_string()
    }
}

/// A unique local /64 (RFC 4193: fd00::/8 and a random 40-bit global ID)
/// that overlaps none of `taken`, for `--ipv6` without an IPv6 subnet.
pub fn pick_subnet6(taken: &[Subnet6], random: impl Fn() -> [u8; 5]) -> Option<Subnet6> {
    (0..16).find_map(|_| {
        let id = random();
        let mut octets = [0u8; 16];
        octets[0] = 0xfd;
        octets[1..6].copy_from_slice(&id);
        let s = Subnet6 {
            addr: Ipv6Addr::from(octets),
            prefix_len: 64,
        };
        (!taken.iter().any(|t| t.overlaps(&s))).then_some(s)
    })
}

/// Leases of one network: a file per address, holding the container id.
pub struct Leases {
    dir: PathBuf,
}

impl Leases {
    pub fn new(dir: &Path) -> Leases {
        Leases {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, ip: Ipv4Addr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    /// Who holds `ip`, if anyone.
    pub fn holder(&self, ip: Ipv4Addr) -> Option<String> {
        std::fs::read_to_string(self.path(ip)).ok()
    }

    /// Every lease: address and holder.
    pub fn all(&self) -> Vec<(Ipv4Addr, String)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                let ip = e.file_name().to_str()?.parse().ok()?;
                Some((ip, std::fs::read_to_string(e.path()).ok()?))
            })
            .collect()
    }

    /// Takes `ip` for `holder` (the caller holds the networks lock and
    /// checked it is free).
    pub fn take(&self, ip: Ipv4Addr, holder: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::write(self.path(ip), holder)
    }

    /// The lowest free address that is not the gateway and that `usable`
    /// accepts (on a dual-stack network: its IPv6 address is free too).
    pub fn next_free(
        &self,
        subnet: &Subnet,
        gateway: Ipv4Addr,
        usable: impl Fn(Ipv4Addr) -> bool,
    ) -> Option<Ipv4Addr> {
        (1..)
            .map_while(|n| subnet.host(n))
            .find(|ip| *ip != gateway && self.holder(*ip).is_none() && usable(*ip))
    }

    /// Frees `ip` if `holder` holds it.
    pub fn free(&self, ip: Ipv4Addr, holder: &str) {
        if self.holder(ip).as_deref() == Some(holder) {
            let _ = std::fs::remove_file(self.path(ip));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_contain_and_overlap() {
        let s: Subnet = "10.1.2.3/24".parse().unwrap();
        assert_eq!(s.to_string(), "10.1.2.0/24");
        assert!(s.contains("10.1.2.200".parse().unwrap()));
        assert!(!s.contains("10.1.3.1".parse().unwrap()));
        assert!(s.usable("10.1.2.1".parse().unwrap()));
        assert!(!s.usable("10.1.2.255".parse().unwrap()));
        assert!(!s.usable("10.1.2.0".parse().unwrap()));
        let big: Subnet = "10.1.0.0/16".parse().unwrap();
        assert!(big.overlaps(&s) && s.overlaps(&big));
        assert!(!s.overlaps(&"10.2.0.0/16".parse().unwrap()));
        assert_eq!(s.host(1), Some("10.1.2.1".parse().unwrap()));
        assert_eq!(s.host(255), None);
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0.0/31", "x/8", "10.0.0/8"] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_subnets_parse_and_follow_the_ipv4_lease() {
        let s: Subnet6 = "fd00:1:2:3::9/64".parse().unwrap();
        assert_eq!(s.to_string(), "fd00:1:2:3::/64");
        assert!(s.contains("fd00:1:2:3::ffff".parse().unwrap()));
        assert!(!s.contains("fd00:1:2:4::1".parse().unwrap()));
        assert!(s.overlaps(&"fd00:1:2::/48".parse().unwrap()));
        assert!(!s.overlaps(&"fd00:1::/48".parse().unwrap()));
        for bad in ["fd00::/47", "fd00::/125", "10.0.0.0/8", "fd00::"] {
            assert!(bad.parse::<Subnet6>().is_err(), "{bad}");
        }
        let v4: Subnet = "10.9.0.0/24".parse().unwrap();
        let gw = s.host(1).unwrap();
        let ip = "10.9.0.7".parse().unwrap();
        assert_eq!(
            s.for_lease(&v4, ip, gw),
            Some("fd00:1:2:3::7".parse().unwrap())
        );
        // The lease whose number is the IPv6 gateway's (an IPv4 gateway
        // elsewhere) takes the number past the IPv4 subnet.
        let one = "10.9.0.1".parse().unwrap();
        assert_eq!(
            s.for_lease(&v4, one, gw),
            Some("fd00:1:2:3::100".parse().unwrap())
        );
        let tiny: Subnet6 = "fd00::/124".parse().unwrap();
        assert_eq!(tiny.host(16), None);
        assert_eq!(tiny.host(0), None);
        let picked = pick_subnet6(&[s], || [1, 2, 3, 4, 5]).unwrap();
        assert_eq!(picked.to_string(), "fd01:203:405::/64");
        let clash: Subnet6 = "fd01:203:405::/48".parse().unwrap();
        assert_eq!(pick_subnet6(&[clash], || [1, 2, 3, 4, 5]), None);
    }

    #[test]
    fn leases_are_taken_once_and_freed_by_their_holder() {
        let t = tempfile::tempdir().unwrap();
        let l = Leases::new(t.path());
        let s: Subnet = "10.9.0.0/29".parse().unwrap();
        let gw = s.host(1).unwrap();
        let a = l.next_free(&s, gw, |_| true).unwrap();
        assert_eq!(a, "10.9.0.2".parse::<Ipv4Addr>().unwrap());
        l.take(a, "c1").unwrap();
        let b = l.next_free(&s, gw, |_| true).unwrap();
        assert_eq!(b, "10.9.0.3".parse::<Ipv4Addr>().unwrap());
        l.free(a, "someone else");
        assert_eq!(l.holder(a).as_deref(), Some("c1"));
        l.free(a, "c1");
        assert_eq!(l.holder(a), None);
        for n in 2..7 {
            l.take(s.host(n).unwrap(), "x").unwrap();
        }
        assert_eq!(l.next_free(&s, gw, |_| true), None, "a /29 has 6 hosts");
        // On a dual-stack network a lease whose IPv6 address someone took
        // with --ip6 is passed over.
        l.free(s.host(3).unwrap(), "x");
        l.free(s.host(5).unwrap(), "x");
        let five = s.host(5).unwrap();
        assert_eq!(
            l.next_free(&s, gw, |ip| ip != s.host(3).unwrap()),
            Some(five)
        );
    }
}
