//! Links, addresses, routes and tc redirects through netlink (rtnetlink),
//! in the host's network namespace or inside a container's. A netlink
//! socket belongs to the namespace of the thread that opened it, so work
//! inside a container's namespace runs on a short-lived thread that joined
//! it first.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{what}")]
    Netlink {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("{what}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("no network interface {0}")]
    NoLink(String),
    #[error("no IPv6 address in {1} goes with {0}: the IPv6 subnet is too small")]
    NoAddress6(Ipv4Addr, String),
    #[error("the thread working in the network namespace {0} panicked")]
    Thread(PathBuf),
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let what = what.into();
    move |source| LinkError::Netlink { what, source }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LinkError {
    let what = what.into();
    move |source| LinkError::Io { what, source }
}

/// A netlink connection in the calling thread's network namespace, with a
/// single-threaded runtime to drive it (no thread of its own: hull forks
/// its monitor after network setup in some paths).
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

impl Netlink {
    pub fn open() -> Result<Netlink, LinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(io("starting the netlink runtime"))?;
        let (conn, handle, _) = {
            let _guard = rt.enter();
            rtnetlink::new_connection().map_err(io("opening a netlink socket"))?
        };
        rt.spawn(conn);
        Ok(Netlink { rt, handle })
    }

    /// The index of link `name`, None when there is none.
    pub fn index(&self, name: &str) -> Result<Option<u32>, LinkError> {
        let mut req = std::pin::pin!(
            self.handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute()
        );
        match self.rt.block_on(req.try_next()) {
            Ok(Some(m)) => Ok(Some(m.header.index)),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(nl(format!("looking up link {name}"))(e)),
        }
    }

    fn must_index(&self, name: &str) -> Result<u32, LinkError> {
        self.index(name)?
            .ok_or_else(|| LinkError::NoLink(name.to_string()))
    }

    /// Makes bridge `name` with `addr`/`prefix_len` (and the IPv6 `v6`), up;
    /// an existing one is kept as it is.
    pub fn ensure_bridge(
        &self,
        name: &str,
        addr: Ipv4Addr,
        prefix_len: u8,
        v6: Option<(Ipv6Addr, u8)>,
    ) -> Result<(), LinkError> {
        if self.index(name)?.is_some() {
            return Ok(());
        }
        let msg = LinkBridge::new(name).build();
        self.rt
            .block_on(self.handle.link().add(msg).execute())
            .map_err(nl(format!("creating bridge {name}")))?;
        let idx = self.must_index(name)?;
        self.rt
            .block_on(
                self.handle
                    .address()
                    .add(idx, addr.into(), prefix_len)
                    .execute(),
            )
            .map_err(nl(format!("adding {addr}/{prefix_len} to {name}")))?;
        if let Some((addr6, len6)) = v6 {
            self.add_address6(idx, addr6, len6)?;
        }
        self.set_up(idx, name)
    }

    /// `addr`/`prefix_len` on link `idx` without duplicate address
    /// detection (hull's IPAM hands out each address once; DAD would hold
    /// it tentative, unusable, for a second or more).
    fn add_address6(&self, idx: u32, addr: Ipv6Addr, prefix_len: u8) -> Result<(), LinkError> {
        let mut req = self.handle.address().add(idx, addr.into(), prefix_len);
        let msg = req.message_mut();
        msg.header.flags = AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        self.rt
            .block_on(req.execute())
            .map_err(nl(format!("adding {addr}/{prefix_len}")))
    }

    pub fn set_up(&self, idx: u32, name: &str) -> Result<(), LinkError> {
        let msg = LinkUnspec::new_with_index(idx).up().build();
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(nl(format!("setting {name} up")))
    }

    /// Deletes link `name` if it exists.
    pub fn delete(&self, name: &str) -> Result<(), LinkError> {
        let Some(idx) = self.index(name)? else {
            return Ok(());
        };
        match self.rt.block_on(self.handle.link().del(idx).execute()) {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            r => r.map_err(nl(format!("deleting {name}"))),
        }
    }

    /// A veth pair: `host` on `bridge`, up, with MTU `mtu`; its peer moved
    /// into the network namespace `netns` under the name `peer`.
    pub fn veth_into(
        &self,
        host: &str,
        peer: &str,
        bridge: &str,
        mtu: u32,
        netns: &std::fs::File,
    ) -> Result<(), LinkError> {
        let msg = LinkVeth::new(host, peer).mtu(mtu).build();
        self.rt
            .block_on(self.handle.link().add(msg).execute())
            .map_err(nl(format!("creating veth {host}")))?;
        let (h, p, b) = (
            self.must_index(host)?,
            self.must_index(peer)?,
            self.must_index(bridge)?,
        );
        let msg = LinkUnspec::new_with_index(p)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(nl(format!("moving {peer} into the container's namespace")))?;
        let msg = LinkUnspec::new_with_index(h).controller(b).up().build();
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(nl(format!("attaching {host} to {bridge}")))
    }

    /// Renames link `from` to `to` and gives it `mac` (down, as renaming
    /// needs).
    pub fn rename(&self, from: &str, to: &str, mac: [u8; 6]) -> Result<u32, LinkError> {
        let idx = self.must_index(from)?;
        let msg = LinkUnspec::new_with_index(idx)
            .name(to)
            .address(mac.to_vec())
            .build();
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(nl(format!("renaming {from} to {to}")))?;
        Ok(idx)
    }

    /// `addr`/`prefix_len` on link `idx` (IPv4, or IPv6 without duplicate
    /// address detection), and the default route of that family via
    /// `gateway` when there is one.
    pub fn address_and_route<A: Into<IpAddr>>(
        &self,
        idx: u32,
        addr: A,
        prefix_len: u8,
        gateway: Option<A>,
    ) -> Result<(), LinkError> {
        match addr.into() {
            IpAddr::V4(a) => self
                .rt
                .block_on(
                    self.handle
                        .address()
                        .add(idx, a.into(), prefix_len)
                        .execute(),
                )
                .map_err(nl(format!("adding {a}/{prefix_len}")))?,
            IpAddr::V6(a) => self.add_address6(idx, a, prefix_len)?,
        }
        let Some(gateway) = gateway.map(Into::into) else {
            return Ok(());
        };
        let route = match gateway {
            IpAddr::V4(g) => RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(g)
                .output_interface(idx)
                .build(),
            IpAddr::V6(g) => RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(g)
                .output_interface(idx)
                .build(),
        };
        self.rt
            .block_on(self.handle.route().add(route).execute())
            .map_err(nl(format!("adding the default route via {gateway}")))
    }

    /// The engine-made link an OCI runtime's microVM takes over: the first
    /// link other than `lo` with an IPv4 address, with its MAC, MTU, that
    /// address, the default routes' gateways and the namespace's other
    /// routes through it. None when there is none (`--network none`).
    pub fn engine_link(&self) -> Result<Option<EngineLink>, LinkError> {
        use rtnetlink::packet_route::address::AddressAttribute;
        use rtnetlink::packet_route::link::LinkAttribute;
        let links: Vec<_> = self
            .rt
            .block_on(self.handle.link().get().execute().try_collect())
            .map_err(nl("listing links"))?;
        let addrs: Vec<_> = self
            .rt
            .block_on(self.handle.address().get().execute().try_collect())
            .map_err(nl("listing addresses"))?;
        for link in links {
            let mut name = None;
            let mut mac = None;
            let mut mtu = None;
            for a in &link.attributes {
                match a {
                    LinkAttribute::IfName(n) => name = Some(n.clone()),
                    LinkAttribute::Address(m) if m.len() == 6 => {
                        mac = <[u8; 6]>::try_from(m.as_slice()).ok()
                    }
                    LinkAttribute::Mtu(m) => mtu = Some(*m),
                    _ => {}
                }
            }
            let (Some(name), Some(mac)) = (name, mac) else {
                continue;
            };
            if name == "lo" {
                continue;
            }
            let index = link.header.index;
            let v4 = addrs.iter().find_map(|m| {
                if m.header.index != index {
                    return None;
                }
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(std::net::IpAddr::V4(ip)) => {
                        Some((*ip, m.header.prefix_len))
                    }
                    _ => None,
                })
            });
            let Some((address, prefix_len)) = v4 else {
                continue;
            };
            let routes4 = self.main_routes(RouteMessageBuilder::<Ipv4Addr>::new().build())?;
            let routes6 = self.main_routes(RouteMessageBuilder::<Ipv6Addr>::new().build())?;
            let default_via = |routes: &[EngineRoute]| {
                routes
                    .iter()
                    .find(|r| r.prefix_len == 0)
                    .and_then(|r| r.gateway)
            };
            let gateway = match default_via(&routes4) {
                Some(std::net::IpAddr::V4(g)) => Some(g),
                _ => None,
            };
            // A global IPv6 address (not link-local: the guest makes its own)
            // and the IPv6 default route, when the engine's network has them.
            let v6 = addrs.iter().find_map(|m| {
                if m.header.index != index {
                    return None;
                }
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(std::net::IpAddr::V6(ip))
                        if !ip.is_unicast_link_local() && !ip.is_loopback() =>
                    {
                        Some((*ip, m.header.prefix_len))
                    }
                    _ => None,
                })
            });
            let gateway6 = match default_via(&routes6) {
                Some(std::net::IpAddr::V6(g)) => Some(g),
                _ => None,
            };
            let ipv6 = v6.map(|(address, prefix_len)| EngineLink6 {
                address,
                prefix_len,
                gateway: gateway6,
            });
            // The others through this link, both families (the default
            // ones are the gateways above).
            let routes = routes4
                .into_iter()
                .chain(routes6)
                .filter(|r| r.prefix_len > 0 && r.oif.is_none_or(|o| o == index))
                .collect();
            return Ok(Some(EngineLink {
                index,
                name,
                mac,
                mtu: mtu.unwrap_or(1500),
                address,
                prefix_len,
                gateway,
                ipv6,
                routes,
            }));
        }
        Ok(None)
    }

    /// This namespace's routes of `query`'s family in the main table that
    /// an engine or a user added: unicast, not the kernel's own (an
    /// address's prefix route, IPv6 link-local).
    fn main_routes(
        &self,
        query: rtnetlink::packet_route::route::RouteMessage,
    ) -> Result<Vec<EngineRoute>, LinkError> {
        use rtnetlink::packet_route::route::{
            RouteAddress, RouteAttribute, RouteHeader, RouteProtocol, RouteType,
        };
        let ip = |a: &RouteAddress| match a {
            RouteAddress::Inet(v4) => Some(std::net::IpAddr::V4(*v4)),
            RouteAddress::Inet6(v6) => Some(std::net::IpAddr::V6(*v6)),
            _ => None,
        };
        let routes: Vec<_> = self
            .rt
            .block_on(self.handle.route().get(query).execute().try_collect())
            .map_err(nl("listing routes"))?;
        let mut out = Vec::new();
        for r in routes {
            let h = &r.header;
            if h.table != RouteHeader::RT_TABLE_MAIN
                || h.kind != RouteType::Unicast
                || h.protocol == RouteProtocol::Kernel
            {
                continue;
            }
            let mut destination = None;
            let mut gateway = None;
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(d) => destination = ip(d),
                    RouteAttribute::Gateway(g) => gateway = ip(g),
                    RouteAttribute::Oif(o) => oif = Some(*o),
                    _ => {}
                }
            }
            let destination = match (destination, h.address_family) {
                (Some(d), _) => d,
                (None, rtnetlink::packet_route::AddressFamily::Inet6) => {
                    Ipv6Addr::UNSPECIFIED.into()
                }
                (None, _) => Ipv4Addr::UNSPECIFIED.into(),
            };
            out.push(EngineRoute {
                destination,
                prefix_len: h.destination_prefix_length,
                gateway,
                oif,
            });
        }
        Ok(out)
    }

    /// Every packet arriving on `from` leaves through `to`, and back (an
    /// ingress qdisc and a match-all u32 filter with a mirred redirect on
    /// each: Kata's tcfilter).
    pub fn redirect_both_ways(&self, a: (u32, &str), b: (u32, &str)) -> Result<(), LinkError> {
        for ((from, from_name), (to, _)) in [(a, b), (b, a)] {
            self.rt
                .block_on(self.handle.qdisc().add(from as i32).ingress().execute())
                .map_err(nl(format!("adding an ingress qdisc to {from_name}")))?;
            let filter = self
                .handle
                .traffic_filter(from as i32)
                .add()
                .parent(0xffff_0000)
                .protocol((libc::ETH_P_ALL as u16).to_be())
                .redirect(to)
                .map_err(nl(format!("building the redirect from {from_name}")))?;
            self.rt
                .block_on(filter.execute())
                .map_err(nl(format!("redirecting {from_name}'s ingress")))?;
        }
        Ok(())
    }
}

/// A link an engine made in a container's network namespace, as
/// [`Netlink::engine_link`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineLink {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub ipv6: Option<EngineLink6>,
    /// The namespace's other routes through it (see [`EngineRoute`]).
    pub routes: Vec<EngineRoute>,
}

/// A route of the engine's namespace other than the default ones:
/// `destination/prefix_len` via `gateway` (or on the link), out of `oif`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineRoute {
    pub destination: std::net::IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<std::net::IpAddr>,
    pub oif: Option<u32>,
}

/// The engine link's IPv6 address, prefix and default gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineLink6 {
    pub address: Ipv6Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv6Addr>,
}

/// Runs `f` on a thread that joined the network namespace at `netns`.
pub fn in_netns<T: Send>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, LinkError> + Send,
) -> Result<T, LinkError> {
    let file = std::fs::File::open(netns).map_err(io(format!("opening {}", netns.display())))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            sys::setns_net(&file).map_err(io(format!("joining {}", netns.display())))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(LinkError::Thread(netns.to_path_buf())))
    })
}

/// A new, empty network namespace held by a bind mount at `path` (a file
/// it creates), with `lo` up.
pub fn create_netns(path: &Path) -> Result<(), LinkError> {
    std::fs::File::create(path).map_err(io(format!("creating {}", path.display())))?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> Result<(), LinkError> {
            sys::unshare_net().map_err(io("creating a network namespace"))?;
            sys::bind_mount(Path::new("/proc/thread-self/ns/net"), path).map_err(io(format!(
                "holding the network namespace at {}",
                path.display()
            )))?;
            let nl = Netlink::open()?;
            let lo = nl.must_index("lo")?;
            nl.set_up(lo, "lo")
        })
        .join()
        .unwrap_or_else(|_| Err(LinkError::Thread(path.to_path_buf())))
    });
    if made.is_err() {
        remove_netns(path);
    }
    made
}

/// Releases the network namespace held at `path` (its links go with it
/// once nothing else holds it) and removes the file.
pub fn remove_netns(path: &Path) {
    let _ = sys::unmount_detach(path);
    let _ = std::fs::remove_file(path);
}

/// Creates tap `name` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) in the calling
/// thread's network namespace and returns its fd.
pub fn create_tap(name: &str) -> Result<OwnedFd, LinkError> {
    sys::open_tap(name).map_err(io(format!("creating tap {name}")))
}
