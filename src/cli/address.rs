//! Where the live instance is asked: its control socket, or a port on
//! loopback. Both are plain HTTP, so one reqwest client serves either; only
//! how it connects differs.

use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a connection may take: an instance on this host accepts at once
/// or not at all.
const CONNECT: Duration = Duration::from_secs(3);

/// Where the live instance is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// The control socket.
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Tcp(addr) => write!(f, "http://{addr}"),
        }
    }
}

impl Address {
    /// `http://host:port`, `unix:/path` or `/path`.
    pub fn parse(url: &str) -> Result<Address, String> {
        if let Some(path) = url.strip_prefix("unix:") {
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if url.starts_with('/') {
            return Ok(Address::Unix(PathBuf::from(url)));
        }
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--url must be http://host:port or unix:/path, not {url:?}"))?;
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            return Err(format!("--url must be http://host:port or unix:/path, not {url:?}"));
        }
        let host = if host.contains(':') && !host.ends_with(']') {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        Ok(Address::Tcp(host))
    }

    /// A client that reaches this address. No proxy: the instance is on
    /// this host, and an `HTTP_PROXY` meant for the internet would not reach it.
    pub fn client(&self) -> reqwest::Result<reqwest::Client> {
        let builder = reqwest::Client::builder().connect_timeout(CONNECT).no_proxy();
        match self {
            Address::Unix(path) => builder.unix_socket(path.as_path()),
            Address::Tcp(_) => builder,
        }
        .build()
    }

    /// The URL of `path` here; over the socket the host is only a name.
    pub fn url(&self, path: &str) -> String {
        match self {
            Address::Unix(_) => format!("http://localhost{path}"),
            Address::Tcp(addr) => format!("http://{addr}{path}"),
        }
    }

    /// Whether something accepts connections there. A connection is
    /// enough to choose the address; it asks nothing, so it needs no client.
    pub fn answers(&self) -> bool {
        match self {
            Address::Unix(path) => UnixStream::connect(path).is_ok(),
            Address::Tcp(addr) => addr
                .to_socket_addrs()
                .ok()
                .and_then(|mut targets| targets.next())
                .is_some_and(|target| TcpStream::connect_timeout(&target, CONNECT).is_ok()),
        }
    }
}

/// The default address: the control socket if something answers there, else
/// the first of `ports` on loopback that answers, else the first port.
pub fn default_address(control_socket: &Path, ports: &[u16]) -> Address {
    let socket = Address::Unix(control_socket.to_path_buf());
    if control_socket.exists() && socket.answers() {
        return socket;
    }
    let tcp = |port: &u16| Address::Tcp(format!("127.0.0.1:{port}"));
    ports
        .iter()
        .map(tcp)
        .find(Address::answers)
        .unwrap_or_else(|| tcp(&ports[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_addresses() {
        assert_eq!(
            Address::parse("http://127.0.0.1:5801"),
            Ok(Address::Tcp("127.0.0.1:5801".into()))
        );
        assert_eq!(
            Address::parse("http://localhost/"),
            Ok(Address::Tcp("localhost:80".into()))
        );
        assert_eq!(
            Address::parse("unix:/run/selfup/control.sock"),
            Ok(Address::Unix("/run/selfup/control.sock".into()))
        );
        assert_eq!(Address::parse("/tmp/s.sock"), Ok(Address::Unix("/tmp/s.sock".into())));
        assert!(Address::parse("https://x").is_err());
        assert!(Address::parse("http://x/upgrade").is_err());
    }

    #[test]
    fn a_path_is_asked_at_the_address_whatever_its_kind() {
        assert_eq!(
            Address::Tcp("127.0.0.1:5801".into()).url("/status"),
            "http://127.0.0.1:5801/status"
        );
        assert_eq!(
            Address::Unix("/run/selfup/control.sock".into()).url("/upgrade/=1.4.0"),
            "http://localhost/upgrade/=1.4.0"
        );
    }
}
