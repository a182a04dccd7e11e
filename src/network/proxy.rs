//! The userland proxy for published ports on the host's IPv6 addresses,
//! `::1` first of all, as docker's docker-proxy. nftables DNAT serves every
//! IPv4 address (127.0.0.1 through `route_localnet`) and, on a dual-stack
//! network, the host's other IPv6 addresses; a connection to `::1` cannot
//! be DNATed: the container's answer, turned back to `::1`, arrives on the
//! bridge, and IPv6 has no `route_localnet` to let the host take it. So the
//! container's monitor listens on `[::]:PORT` (IPv6 only) for each port
//! published without a host address and relays what arrives there to the
//! container's IPv4 address: connections to `::1`, and, on a network
//! without IPv6 (no DNAT in `ip6 hull`), to every IPv6 address of the host.
//!
//! The listeners live on a thread of the monitor, in the host's network
//! namespace, as long as the published port: [`Proxy`]'s drop (the
//! container's end, `stop`, `rm -f`) closes them, and a monitor killed
//! with kill -9 takes them along.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, oneshot};

use super::{Attachment, Proto};

/// How long a UDP client's flow lives without an answer from the
/// container (docker's proxy: 90 s).
const UDP_IDLE: Duration = Duration::from_secs(90);
/// UDP clients relayed at once per port; datagrams of more are dropped.
const UDP_FLOWS: usize = 1024;
/// TCP connections relayed at once per port; more wait in the backlog.
const TCP_CONNECTIONS: usize = 1024;
/// How long the container has to take a relayed connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest UDP datagram.
const DATAGRAM: usize = 65536;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("publishing port {port}/{proto} on [::]")]
    Bind {
        port: u16,
        proto: &'static str,
        source: io::Error,
    },
    #[error("starting the port proxy")]
    Start(#[source] io::Error),
}

/// One published port's listening socket and where it leads.
struct Listener {
    socket: Socket,
    proto: Proto,
    to: SocketAddr,
}

/// The proxy of one container's published ports (none when it publishes
/// nothing without a host address, or the host has no IPv6).
pub struct Proxy {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on `[::]:PORT` for each of `att`'s ports published on every
    /// address, relaying to the container's IPv4 address. A port taken on
    /// IPv6 is an error, as it is for docker.
    pub fn start(att: &Attachment) -> Result<Option<Proxy>, ProxyError> {
        let mut listeners = Vec::new();
        for p in att.ports.iter().filter(|p| p.host_ip.is_none()) {
            let socket = match bind(p.proto, p.host_port) {
                Ok(s) => s,
                Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                    log::info!("no IPv6 on this host: published ports answer on IPv4 only");
                    return Ok(None);
                }
                Err(source) => {
                    return Err(ProxyError::Bind {
                        port: p.host_port,
                        proto: p.proto.name(),
                        source,
                    });
                }
            };
            listeners.push(Listener {
                socket,
                proto: p.proto,
                to: SocketAddr::from((att.ip, p.container_port)),
            });
        }
        if listeners.is_empty() {
            return Ok(None);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(ProxyError::Start)?;
        let (stop, stopped) = oneshot::channel();
        // The runtime goes at the end of the thread, and with it every
        // listener, connection and flow.
        let thread = std::thread::Builder::new()
            .name("port-proxy".into())
            .spawn(move || runtime.block_on(serve(listeners, stopped)))
            .map_err(ProxyError::Start)?;
        Ok(Some(Proxy {
            stop: Some(stop),
            thread: Some(thread),
        }))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A socket on `[::]:port` for `proto`, IPv6 only (IPv4 is DNATed).
fn bind(proto: Proto, port: u16) -> io::Result<Socket> {
    let (kind, protocol) = match proto {
        Proto::Tcp => (Type::STREAM, Protocol::TCP),
        Proto::Udp => (Type::DGRAM, Protocol::UDP),
    };
    let s = Socket::new(Domain::IPV6, kind, Some(protocol))?;
    s.set_only_v6(true)?;
    s.set_nonblocking(true)?;
    if proto == Proto::Tcp {
        s.set_reuse_address(true)?;
    }
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    if proto == Proto::Tcp {
        s.listen(1024)?;
    }
    Ok(s)
}

/// Whether `port` is free for `proto` on `[::]` (true on a host without
/// IPv6, where the proxy listens nowhere).
pub(super) fn free6(proto: Proto, port: u16) -> bool {
    match bind(proto, port) {
        Ok(_) => true,
        Err(e) => e.raw_os_error() == Some(libc::EAFNOSUPPORT),
    }
}

async fn serve(listeners: Vec<Listener>, stopped: oneshot::Receiver<()>) {
    for l in listeners {
        match l.proto {
            Proto::Tcp => tokio::spawn(relay_tcp(l.socket.into(), l.to)),
            Proto::Udp => tokio::spawn(relay_udp(l.socket.into(), l.to)),
        };
    }
    // Told to stop, or the Proxy is gone.
    let _ = stopped.await;
}

async fn relay_tcp(listener: std::net::TcpListener, to: SocketAddr) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return log::warn!("port proxy for {to}: {e}"),
    };
    let slots = Arc::new(Semaphore::new(TCP_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut client = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                // Out of fds, most likely: let some connections end.
                log::warn!("port proxy for {to}: accepting: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await {
                Ok(Ok(mut server)) => {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
                // The client sees its connection closed, as with docker's
                // proxy when the container does not answer.
                Ok(Err(e)) => log::info!("port proxy: connecting to {to}: {e}"),
                Err(_) => log::info!("port proxy: connecting to {to}: timed out"),
            }
        });
    }
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>>;

/// Relays each client's datagrams through a socket of its own, connected
/// to the container, whose answers go back to that client.
async fn relay_udp(socket: std::net::UdpSocket, to: SocketAddr) {
    let listener = match UdpSocket::from_std(socket) {
        Ok(l) => Arc::new(l),
        Err(e) => return log::warn!("port proxy for {to}/udp: {e}"),
    };
    let flows: Flows = Arc::default();
    let mut buf = vec![0u8; DATAGRAM];
    loop {
        let (n, client) = match listener.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                log::warn!("port proxy for {to}/udp: receiving: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let known = flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&client)
            .cloned();
        let flow = match known {
            Some(f) => f,
            None => match new_flow(&flows, &listener, client, to).await {
                Some(f) => f,
                None => continue,
            },
        };
        let _ = flow.send(&buf[..n]).await;
    }
}

/// A socket for `client`'s datagrams to `to`, its answers relayed back
/// until it idles for UDP_IDLE; None when there are too many flows or the
/// socket cannot be made.
async fn new_flow(
    flows: &Flows,
    listener: &Arc<UdpSocket>,
    client: SocketAddr,
    to: SocketAddr,
) -> Option<Arc<UdpSocket>> {
    if flows.lock().unwrap_or_else(|p| p.into_inner()).len() >= UDP_FLOWS {
        return None;
    }
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await.ok()?;
    socket.connect(to).await.ok()?;
    let flow = Arc::new(socket);
    flows
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(client, flow.clone());
    let (flows, listener, answers) = (flows.clone(), listener.clone(), flow.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; DATAGRAM];
        while let Ok(Ok(n)) = tokio::time::timeout(UDP_IDLE, answers.recv(&mut buf)).await {
            let _ = listener.send_to(&buf[..n], client).await;
        }
        flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&client);
    });
    Some(flow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::PortMapping;
    use std::io::{Read, Write};

    fn attachment(ports: Vec<PortMapping>) -> Attachment {
        Attachment {
            container: "c".into(),
            name: "web".into(),
            network: "bridge".into(),
            ip: Ipv4Addr::LOCALHOST,
            ip6: None,
            mac: "02:42:7f:00:00:01".into(),
            host_veth: "hvc".into(),
            ports,
            aliases: Vec::new(),
        }
    }

    fn port(host_port: u16, container_port: u16, proto: Proto) -> PortMapping {
        PortMapping {
            host_ip: None,
            host_port,
            container_port,
            proto,
        }
    }

    /// A free port on `[::]` and 127.0.0.1 for `proto`.
    fn free(proto: Proto) -> u16 {
        (40000..41000)
            .find(|&p| {
                free6(proto, p)
                    && match proto {
                        Proto::Tcp => std::net::TcpListener::bind(("127.0.0.1", p)).is_ok(),
                        Proto::Udp => std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok(),
                    }
            })
            .expect("a free port")
    }

    /// The "container" is a server on 127.0.0.1: what reaches [::1]:PORT
    /// reaches it, both ways, for TCP and UDP; the ports are free again
    /// once the proxy is dropped.
    #[test]
    fn relays_tcp_and_udp_from_ipv6_loopback_and_lets_go_when_dropped() {
        if Socket::new(Domain::IPV6, Type::STREAM, None).is_err() {
            panic!("this test needs IPv6 (::1) on the test host");
        }
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_to = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut c in server.incoming().flatten() {
                let mut buf = [0u8; 5];
                if c.read_exact(&mut buf).is_ok() {
                    let _ = c.write_all(&[b"echo ".as_slice(), &buf].concat());
                }
            }
        });
        let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_to = echo.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        });
        let (tcp, udp) = (free(Proto::Tcp), free(Proto::Udp));
        let mut pinned = port(tcp, 1, Proto::Tcp);
        pinned.host_ip = Some(Ipv4Addr::LOCALHOST);
        // Published on one IPv4 address: no IPv6 side, no proxy.
        assert!(Proxy::start(&attachment(vec![pinned])).unwrap().is_none());
        let att = attachment(vec![
            port(tcp, tcp_to, Proto::Tcp),
            port(udp, udp_to, Proto::Udp),
        ]);
        let proxy = Proxy::start(&att).unwrap().expect("a proxy");
        let mut c = std::net::TcpStream::connect(("::1", tcp)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"hello").unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"echo hello");
        let u = std::net::UdpSocket::bind("[::1]:0").unwrap();
        u.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        u.send_to(b"ping", ("::1", udp)).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = u.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from.port()), (b"ping".as_slice(), udp));
        // A second port taken on IPv6 is refused in one line.
        let e = Proxy::start(&att).err().expect("the port is taken");
        assert!(e.to_string().starts_with("publishing port "), "{e}");
        drop(proxy);
        assert!(free6(Proto::Tcp, tcp) && free6(Proto::Udp, udp));
        assert!(std::net::TcpStream::connect(("::1", tcp)).is_err());
    }
}
