//! Who is on the other end of a TCP connection on this host: the owner uid
//! of the caller's socket, from the kernel's socket table of this network
//! namespace (`/proc/net/tcp`, `/proc/net/tcp6`).
//!
//! Each row of the table is one socket: its local and remote address, its
//! state and the uid of the process that created it. The caller's socket is
//! the row whose *local* address is the peer address of our connection and
//! whose *remote* address is our local one. Only an established socket with
//! an inode counts: a closed socket that lingers in the table (`TIME_WAIT`,
//! an orphaned `FIN_WAIT2`) shows uid 0 whoever owned it, so a caller that
//! sends its request and closes at once could otherwise pass as root.
//!
//! Nothing is cached: the table is read for each question, so a uid is
//! never one of a socket that has since closed. No row found is an answer
//! too ([`OwnerError::NotFound`]), and the callers refuse on it. A
//! connection from another network namespace (on a private network, the
//! host's connections arriving through the gateway) has no row here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The socket tables of this network namespace, IPv4 then IPv6.
pub const TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];

/// `TCP_ESTABLISHED` in the table's `st` column.
pub const ESTABLISHED: u8 = 0x01;

/// One row of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// The socket's own address.
    pub local: SocketAddr,
    /// The address it is connected to (`0.0.0.0:0` for a listener).
    pub remote: SocketAddr,
    /// The TCP state (`st`): [`ESTABLISHED`] is 1.
    pub state: u8,
    /// The uid of the socket's creator, as this process's user namespace sees it.
    pub uid: u32,
    /// The socket's inode; 0 for a socket no process holds any more.
    pub inode: u64,
}

/// Why no owner was found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OwnerError {
    /// The table could not be read.
    #[error("reading {path}: {reason}")]
    Read { path: &'static str, reason: String },
    /// No established socket of this network namespace is the caller's end.
    #[error("no established socket from {peer} to {local} in this network namespace's socket table")]
    NotFound { peer: SocketAddr, local: SocketAddr },
}

/// The uid that owns the caller's end of the connection `peer` → `local`
/// (`local` being ours): read from the socket tables now.
pub fn owner(peer: SocketAddr, local: SocketAddr) -> Result<u32, OwnerError> {
    for path in TABLES {
        let table = match read(path) {
            Ok(table) => table,
            // A kernel without IPv6 has no tcp6.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.ends_with('6') => continue,
            Err(e) => {
                return Err(OwnerError::Read {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        if let Some(uid) = find(&table, peer, local) {
            return Ok(uid);
        }
    }
    Err(OwnerError::NotFound { peer, local })
}

/// The table at `path`, read in large pieces: the kernel walks its socket
/// hash from where the last read stopped, and small reads make many walks.
fn read(path: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::with_capacity(1 << 20);
    std::fs::File::open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// The owner in `table` (the text of a socket table) of the established
/// socket whose local address is `peer` and remote address `local`. An
/// IPv4 address and its IPv6-mapped form (`::ffff:127.0.0.1`) are one.
pub fn find(table: &str, peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    let (peer, local) = (canonical(peer), canonical(local));
    // Only rows whose own port is the peer's are parsed.
    let port = format!(":{:04X}", peer.port());
    table
        .lines()
        .skip(1)
        .filter(|line| line.split_whitespace().nth(1).is_some_and(|l| l.ends_with(&port)))
        .filter_map(parse_row)
        .find(|row| {
            row.state == ESTABLISHED && row.inode != 0 && canonical(row.local) == peer && canonical(row.remote) == local
        })
        .map(|row| row.uid)
}

/// One line of the table, or `None` for the header and anything else that
/// is no row.
pub fn parse_row(line: &str) -> Option<Row> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
    if fields.len() < 10 || !fields[0].ends_with(':') {
        return None;
    }
    Some(Row {
        local: endpoint(fields[1])?,
        remote: endpoint(fields[2])?,
        state: u8::from_str_radix(fields[3], 16).ok()?,
        uid: fields[7].parse().ok()?,
        inode: fields[9].parse().ok()?,
    })
}

/// `0100007F:1F40` (IPv4) or 32 hex digits and a port (IPv6). The kernel
/// prints each 32-bit word of the address as it lies in memory, read as a
/// number in the host's byte order (`%08X`), and the port as a number.
fn endpoint(field: &str) -> Option<SocketAddr> {
    let (address, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = address.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match address.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// An IPv6-mapped IPv4 address as the IPv4 one; anything else as it is.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    // The literal lines are what a little-endian kernel (x86, arm64) prints.
    #[cfg(target_endian = "little")]
    #[test]
    fn ipv4_rows_are_read_with_each_word_in_host_byte_order() {
        let row = parse_row(
            "   3: 0100007F:A0F2 0100007F:16A8 01 00000000:00000000 00:00000000 00000000 65534        0 1234567 1 0000000000000000 20 4 30 10 -1",
        )
        .unwrap();
        assert_eq!(
            row,
            Row {
                local: addr("127.0.0.1:41202"),
                remote: addr("127.0.0.1:5800"),
                state: ESTABLISHED,
                uid: 65534,
                inode: 1234567,
            }
        );
        // 10.1.2.3: the bytes 0A 01 02 03 in memory, printed as the number 0x0302010A.
        let row = parse_row(
            "   0: 0302010A:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0",
        )
        .unwrap();
        assert_eq!(row.local, addr("10.1.2.3:80"));
        assert_eq!((row.state, row.uid), (0x0A, 0));
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn ipv6_rows_are_read_word_by_word() {
        let row = parse_row(
            "   1: 00000000000000000000000001000000:D431 00000000000000000000000001000000:16A8 01 00000000:00000000 00:00000000 00000000  1000        0 42 1 0000000000000000 20 4 30 10 -1",
        )
        .unwrap();
        assert_eq!(row.local, addr("[::1]:54321"));
        assert_eq!(row.remote, addr("[::1]:5800"));
        assert_eq!(row.uid, 1000);
        // 2001:db8::ff00:42:8329, and an IPv4 address mapped into IPv6.
        let row = parse_row(
            "   2: B80D01200000000000FF000029834200:0016 0000000000000000FFFF00000100007F:16A8 01 00000000:00000000 00:00000000 00000000     7        0 43 1 0000000000000000 20 4 30 10 -1",
        )
        .unwrap();
        assert_eq!(row.local, addr("[2001:db8::ff00:42:8329]:22"));
        assert_eq!(row.remote, addr("[::ffff:127.0.0.1]:5800"));
    }

    #[test]
    fn what_is_no_row_is_none() {
        for line in [
            HEADER,
            "",
            "   0: 0100007F:1F40 0100007F",
            "   0: 0100007:1F40 0100007F:16A8 01 00000000:00000000 00:00000000 00000000 0 0 1 1",
            "   0: 0100007F:1F40 0100007F:16A8 01 00000000:00000000 00:00000000 00000000 root 0 1 1",
            "   0: 0100007F:XYZW 0100007F:16A8 01 00000000:00000000 00:00000000 00000000 0 0 1 1",
            "   0: 0100007G:1F40 0100007F:16A8 01 00000000:00000000 00:00000000 00000000 0 0 1 1",
        ] {
            assert_eq!(parse_row(line), None, "{line:?}");
        }
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn the_callers_end_is_the_established_row_from_the_peer_to_us() {
        let table = [
            HEADER,
            // Our listener and our own end of the connection: root's, never the caller's.
            "   0: 0100007F:16A8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 10 1 0000000000000000 100 0 0 10 0",
            "   1: 0100007F:16A8 0100007F:A0F2 01 00000000:00000000 00:00000000 00000000     0        0 11 1 0000000000000000 20 4 30 10 -1",
            // The caller's end.
            "   2: 0100007F:A0F2 0100007F:16A8 01 00000000:00000000 00:00000000 00000000 65534        0 12 1 0000000000000000 20 4 30 10 -1",
            // A closed socket from another port lingers with uid 0 and no inode.
            "   3: 0100007F:A0F4 0100007F:16A8 06 00000000:00000000 03:00000D1A 00000000     0        0 0 3 0000000000000000",
            // Half closed by its owner.
            "   4: 0100007F:A0F6 0100007F:16A8 05 00000000:00000000 00:00000000 00000000  1000        0 13 1 0000000000000000 20 4 30 10 -1",
        ]
        .join("\n");
        let us = addr("127.0.0.1:5800");
        assert_eq!(find(&table, addr("127.0.0.1:41202"), us), Some(65534));
        // As the server sees a v4 peer on a dual-stack listener.
        assert_eq!(
            find(
                &table,
                addr("[::ffff:127.0.0.1]:41202"),
                addr("[::ffff:127.0.0.1]:5800")
            ),
            Some(65534)
        );
        // The lingering socket is nobody's; the half-closed one is not established.
        assert_eq!(find(&table, addr("127.0.0.1:41204"), us), None);
        assert_eq!(find(&table, addr("127.0.0.1:41206"), us), None);
        // Unknown callers: another port, another address (the gateway).
        assert_eq!(find(&table, addr("127.0.0.1:41208"), us), None);
        assert_eq!(find(&table, addr("172.20.0.1:41202"), us), None);
        assert_eq!(find(&table, addr("127.0.0.1:41202"), addr("127.0.0.1:5801")), None);
    }

    /// What a lookup costs here: `cargo test --release --lib
    /// peer_uid::tests::what_a_lookup_costs -- --ignored --nocapture`
    /// (docs/measurements.md).
    #[test]
    #[ignore = "a measurement: prints the time of a lookup"]
    fn what_a_lookup_costs() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let local = server.local_addr().unwrap();
        let rows: usize = TABLES
            .iter()
            .map(|t| std::fs::read_to_string(t).map_or(0, |t| t.lines().count() - 1))
            .sum();
        let runs = 1000;
        let start = std::time::Instant::now();
        for _ in 0..runs {
            owner(peer, local).unwrap();
        }
        let each = start.elapsed() / runs;
        println!("owner(): {each:?} a lookup, {rows} sockets in the tables");
    }

    #[test]
    fn a_real_connection_on_loopback_is_owned_by_this_process() {
        use std::os::unix::fs::MetadataExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let me = std::fs::metadata("/proc/self").unwrap().uid();
        assert_eq!(owner(peer, server.local_addr().unwrap()), Ok(me));
        assert_eq!(peer, client.local_addr().unwrap());
        // Asked the wrong way round: our side is not the caller's.
        let wrong = owner(server.local_addr().unwrap(), addr("127.0.0.1:1"));
        assert!(matches!(wrong, Err(OwnerError::NotFound { .. })), "{wrong:?}");
        drop(client);
    }
}
