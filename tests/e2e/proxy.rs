//! The nginx image the project builds for itself behaves as the handover
//! needs it to.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Suite, docker, eventually};

/// Reads from `conn` until `buf` holds `needle`, within `timeout`.
async fn read_until(conn: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !buf.windows(needle.len()).any(|w| w == needle) {
        let mut chunk = [0u8; 1024];
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, conn.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no {:?} within {timeout:?}", String::from_utf8_lossy(needle)))
            .expect("reading from nginx");
        assert!(
            n > 0,
            "nginx closed the connection before {:?}; got {:?}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub async fn stopping_nginx_lets_a_request_in_flight_finish(suite: Arc<Suite>) {
    let env = suite.live_env(&[], "1.0.0").await;
    let mut conn = TcpStream::connect(("127.0.0.1", env.public_port)).await.unwrap();
    conn.write_all(
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\
          Expect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    // nginx answers 100 Continue when it starts reading the body: from then on
    // the request is in flight in a worker.
    let mut head = Vec::new();
    read_until(&mut conn, &mut head, b"100 Continue\r\n\r\n", Duration::from_secs(5)).await;
    conn.write_all(b"hello").await.unwrap();

    let nginx = env.nginx.clone();
    let stopped = Instant::now();
    let stop = tokio::task::spawn_blocking(move || {
        Command::new("docker")
            .args(["stop", "-t", "20", &nginx])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
    });
    // The stop signal has arrived once nginx no longer accepts connections.
    let public = ("127.0.0.1", env.public_port);
    eventually(
        "nginx to stop accepting connections",
        Duration::from_secs(10),
        || async { TcpStream::connect(public).await.is_err().then_some(()) },
    )
    .await;
    conn.write_all(b"world").await.unwrap();
    let mut answer = Vec::new();
    read_until(&mut conn, &mut answer, b"helloworld", Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    assert!(stop.await.unwrap().unwrap(), "docker stop failed");
    // nginx exited by itself once the request was done (a graceful stop
    // exits 0), not by SIGKILL at the stop timeout (137).
    let state = docker(&["inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", &env.nginx]);
    assert_eq!(state.trim(), "false 0");
    eprintln!(
        "    the in-flight POST finished; nginx stopped in {} ms",
        stopped.elapsed().as_millis()
    );
}
