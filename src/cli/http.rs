//! A small blocking HTTP/1.1 client for the CLI, over the control socket (a
//! unix socket, which reqwest cannot use) or TCP on loopback: one request a
//! connection, bodies by length, chunked or until close.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

    fn connect(&self, timeout: Option<Duration>) -> std::io::Result<Box<dyn Stream>> {
        match self {
            Address::Unix(path) => {
                let s = UnixStream::connect(path)?;
                s.set_read_timeout(timeout)?;
                Ok(Box::new(s))
            }
            Address::Tcp(addr) => {
                use std::net::ToSocketAddrs;
                let target = addr
                    .to_socket_addrs()?
                    .next()
                    .ok_or_else(|| std::io::Error::other(format!("{addr} resolves to nothing")))?;
                let s = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
                s.set_read_timeout(timeout)?;
                Ok(Box::new(s))
            }
        }
    }

    /// Whether something accepts connections there.
    pub fn answers(&self) -> bool {
        self.connect(Some(Duration::from_secs(1))).is_ok()
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A response whose body is read as it comes.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The whole body as text.
    pub fn text(mut self) -> std::io::Result<String> {
        let mut text = String::new();
        self.body.read_to_string(&mut text)?;
        Ok(text)
    }
}

/// Sends `method path` with `headers`; `timeout` bounds each read (none for a stream).
pub fn request(
    address: &Address,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    timeout: Option<Duration>,
) -> std::io::Result<Response> {
    let mut stream = address.connect(timeout)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader)?;
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mode = if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        Mode::Chunked { left: 0, done: false }
    } else if let Some(len) = find("content-length") {
        Mode::Length(
            len.trim()
                .parse()
                .map_err(|_| std::io::Error::other(format!("bad Content-Length {len:?}")))?,
        )
    } else {
        Mode::Close
    };
    Ok(Response {
        status,
        headers,
        body: Body { reader, mode },
    })
}

type Head = (u16, Vec<(String, String)>);

fn read_head(reader: &mut impl BufRead) -> std::io::Result<Head> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| line.starts_with("HTTP/1."))
        .ok_or_else(|| bad(format!("not an HTTP answer: {:?}", line.trim_end())))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(bad("the answer ended inside its head".into()));
        }
        let l = line.trim_end();
        if l.is_empty() {
            return Ok((status, headers));
        }
        let (name, value) = l.split_once(':').ok_or_else(|| bad(format!("bad header line {l:?}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
}

enum Mode {
    Length(u64),
    Chunked { left: u64, done: bool },
    Close,
}

/// A response body, decoded as it is read.
pub struct Body {
    reader: BufReader<Box<dyn Stream>>,
    mode: Mode,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match &mut self.mode {
            Mode::Length(0) => Ok(0),
            Mode::Length(left) => {
                let max = (*left).min(buf.len() as u64) as usize;
                let n = self.reader.read(&mut buf[..max])?;
                *left -= n as u64;
                Ok(n)
            }
            Mode::Close => self.reader.read(buf),
            Mode::Chunked { done: true, .. } => Ok(0),
            Mode::Chunked { left, done } => {
                if *left == 0 {
                    let mut line = String::new();
                    self.reader.read_line(&mut line)?;
                    if line.trim().is_empty() {
                        // The CRLF after the previous chunk.
                        line.clear();
                        self.reader.read_line(&mut line)?;
                    }
                    let size = line.trim().split(';').next().unwrap_or_default();
                    let size = u64::from_str_radix(size, 16).map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad chunk size {line:?}"))
                    })?;
                    if size == 0 {
                        *done = true;
                        return Ok(0);
                    }
                    *left = size;
                }
                let max = (*left).min(buf.len() as u64) as usize;
                let n = self.reader.read(&mut buf[..max])?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                *left -= n as u64;
                Ok(n)
            }
        }
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// Reads Server-Sent Events one by one; comments and `retry:` are skipped.
pub struct SseReader<R: BufRead> {
    lines: R,
}

impl<R: BufRead> SseReader<R> {
    pub fn new(lines: R) -> Self {
        SseReader { lines }
    }
}

impl<R: BufRead> Iterator for SseReader<R> {
    type Item = std::io::Result<SseEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut event = SseEvent {
            id: None,
            event: "message".into(),
            data: String::new(),
        };
        let mut any = false;
        loop {
            let mut line = String::new();
            match self.lines.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if any {
                    return Some(Ok(event));
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => event.id = Some(value.to_string()),
                "event" => event.event = value.to_string(),
                "data" => {
                    if !event.data.is_empty() {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                }
                _ => continue,
            }
            any = true;
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

    /// A server on loopback that reads one request and writes `answer` to it,
    /// then waits for the client to close.
    fn serve_once(answer: impl FnOnce() -> String + Send + 'static) -> (Address, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = Address::Tcp(listener.local_addr().unwrap().to_string());
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = [0u8; 1024];
            let _ = s.read(&mut head).unwrap();
            s.write_all(answer().as_bytes()).unwrap();
            // The connection stays open until the client closes it: the
            // client must stop where the body ends, not wait for the close.
            let _ = s.read(&mut head);
        });
        (addr, server)
    }

    #[test]
    fn a_chunked_event_stream_is_read_event_by_event() {
        let (addr, server) = serve_once(|| {
            let body = [
                "retry: 1000\n\n",
                ": keep-alive\n\nid: 3\nevent: upgrade_step\ndata: {\"step\":",
                "\"pulling\"}\n\n",
                "event: result\ndata: {}\n\n",
            ];
            let mut out = String::from(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
            );
            for chunk in body {
                out.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
            }
            out.push_str("0\r\n\r\n");
            out
        });
        let response = request(&addr, "GET", "/events", &[], Some(Duration::from_secs(5))).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("Content-Type"), Some("text/event-stream"));
        let events: Vec<SseEvent> = SseReader::new(BufReader::new(response.body))
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            events,
            vec![
                SseEvent {
                    id: Some("3".into()),
                    event: "upgrade_step".into(),
                    data: "{\"step\":\"pulling\"}".into()
                },
                SseEvent {
                    id: None,
                    event: "result".into(),
                    data: "{}".into()
                },
            ]
        );
        server.join().unwrap();
    }

    #[test]
    fn a_body_by_length_is_read_whole_and_no_further() {
        let (addr, server) =
            serve_once(|| "HTTP/1.1 409 Conflict\r\ncontent-length: 13\r\n\r\n{\"error\":\"x\"}".to_string());
        let response = request(&addr, "GET", "/status", &[], Some(Duration::from_secs(5))).unwrap();
        assert_eq!(response.status, 409);
        assert_eq!(response.text().unwrap(), "{\"error\":\"x\"}");
        server.join().unwrap();
    }
}
