//! The guest's end of a DNS relay ([`Kind::DnsRelay`]): queries sent to
//! an address on the guest's loopback (docker's `nameserver 127.0.0.11`)
//! go to the host over the connection, which sends them to the engine's
//! resolver in its network namespace; answers come back the same way.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

use hull_agent::protocol::{DnsPacket, Frame, MAX_DNS, read_frame};

/// Relays until the host closes the connection or a query cannot be sent;
/// says what failed when the socket cannot be had.
pub fn relay(
    address: Ipv4Addr,
    mut reader: File,
    send: impl Fn(&Frame) -> bool,
) -> Result<(), String> {
    // The loopback addresses exist once lo is up (the main process's
    // network setup may not have run yet).
    let _ = crate::sys::link_up("lo");
    let sock = UdpSocket::bind((address, 53)).map_err(|e| format!("binding {address}:53: {e}"))?;
    let answers = sock
        .try_clone()
        .map_err(|e| format!("cloning the DNS socket: {e}"))?;
    std::thread::spawn(move || {
        // The host's answers; anything malformed is dropped.
        while let Ok(Some(f)) = read_frame(&mut reader) {
            if let Some(p) = DnsPacket::parse(&f) {
                let _ = answers.send_to(&p.message, p.client);
            }
        }
    });
    let mut buf = vec![0u8; MAX_DNS];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let SocketAddr::V4(client) = from else {
            continue;
        };
        if n == 0 {
            continue;
        }
        let query = DnsPacket {
            client,
            message: buf[..n].to_vec(),
        };
        if !send(&query.frame()) {
            return Ok(());
        }
    }
}
