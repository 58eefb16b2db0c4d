//! The hold: while no instance listens on the live socket (the live one
//! crashed and its restart policy has not brought it back yet, a `docker
//! restart`, a reboot's start order, the first start), nginx's connections
//! wait here instead of being refused.
//!
//! `selfup hold` runs as its own small container (no network, no Docker
//! socket) beside selfup and outlives every instance. It publishes
//! `hold.sock` beside `live.sock`, which nginx's upstream names as a
//! `backup`: nginx goes there only when the live socket refused or dropped a
//! connection, so while an instance is live the hold costs nothing. Each
//! connection it takes tries the live socket every [`RETRY`] until an
//! instance accepts, then is relayed to it; after `hold_secs` it gets 503
//! with `Retry-After`. A GET that was in flight on an instance that died is
//! tried again by nginx here too (`proxy_next_upstream error`); a POST is
//! not (nginx replays no non-idempotent request).
//!
//! Its own upgrade: the live instance, once its handover is final, replaces
//! the hold container with one of its own image (see
//! `handover::hold`); a new hold renames its socket over the old one's, so
//! nginx always finds one.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::Instant;

use crate::config::Settings;
use crate::control::{Access, ControlSocket};

/// How often a held connection tries the live socket again.
pub const RETRY: Duration = Duration::from_millis(10);

/// The label that marks the hold container, for the live instance to find
/// and replace it.
pub const HOLD_LABEL: &str = "selfup.hold";

/// The hold's socket: `hold.sock` beside the live socket.
pub fn hold_socket(live: &Path) -> PathBuf {
    live.with_file_name("hold.sock")
}

/// Serves the hold until SIGTERM or SIGINT; connections it holds then
/// finish (a relayed one runs to its end, a waiting one to its deadline).
pub async fn serve(settings: &Settings) -> io::Result<()> {
    let live = settings.live_socket.clone();
    if live.as_os_str().is_empty() {
        return Err(io::Error::other("live_socket is empty: there is nothing to hold for"));
    }
    // Each hold names its staged socket for itself: a new one starts
    // while the old one still serves.
    let me = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.subsec_nanos() % 60_000) as u16)
        .unwrap_or(0);
    let (socket, listener) = ControlSocket::bind(&hold_socket(&live), me, Access::Anyone)?;
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    socket.publish()?;
    let hold = settings.hold();
    tracing::info!(socket = %socket.public().display(), live = %live.display(), ?hold, "holding connections while no instance is live");
    let open = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_HELD));
    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = open.clone().try_acquire_owned() else {
                        tokio::spawn(unavailable(stream, "too many connections are held"));
                        continue;
                    };
                    let live = live.clone();
                    tokio::spawn(async move {
                        pass_on(stream, &live, hold).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(RETRY).await;
                }
            },
            () = &mut stop => break,
        }
    }
    // A newer hold may hold the name already; this one's goes with it.
    let _ = socket.withdraw(socket.public());
    let _ = std::fs::remove_file(socket.staged());
    drop(listener);
    let bound = hold + Duration::from_secs(5);
    let _ = tokio::time::timeout(bound, open.acquire_many(MAX_HELD as u32)).await;
    tracing::info!("the hold ends");
    Ok(())
}

/// The most connections held at once; more get 503 at once.
const MAX_HELD: usize = 4096;

/// Waits for an instance on `live`, at most `hold`, and relays `down` to it;
/// else answers 503.
pub async fn pass_on(mut down: UnixStream, live: &Path, hold: Duration) {
    let until = Instant::now() + hold;
    let mut up = loop {
        match UnixStream::connect(live).await {
            Ok(up) => break up,
            Err(_) if Instant::now() < until => tokio::time::sleep(RETRY).await,
            Err(_) => {
                let why = format!("no instance was live within {hold:?}");
                return unavailable(down, &why).await;
            }
        }
    };
    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
}

/// Answers a client nothing could take with 503 and `Retry-After`, once
/// its request has arrived (a socket closed on an unread request is reset,
/// and the client might not read the answer).
pub async fn unavailable<S: AsyncRead + AsyncWrite + Unpin>(mut client: S, why: &str) {
    let mut sent = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(100), client.read(&mut sent)).await;
    let body = serde_json::json!({ "error": why }).to_string() + "\n";
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(answer.as_bytes()).await;
    let _ = client.shutdown().await;
    // What else the client sends is read and dropped until it closes.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(client.read(&mut sent).await, Ok(n) if n > 0) {}
    })
    .await;
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("selfup-hold-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    async fn ask(mut s: UnixStream) -> String {
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text
    }

    #[tokio::test]
    async fn a_held_connection_reaches_the_instance_that_comes_later() {
        let d = dir("later");
        let live = d.join("live.sock");
        let (ours, theirs) = UnixStream::pair().unwrap();
        let holding = tokio::spawn({
            let live = live.clone();
            async move { pass_on(theirs, &live, Duration::from_secs(5)).await }
        });
        let asking = tokio::spawn(ask(ours));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!asking.is_finished(), "the request waits while nothing is live");
        let listener = UnixListener::bind(&live).unwrap();
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 64];
        let n = conn.read(&mut head).await.unwrap();
        assert!(head[..n].starts_with(b"GET / "));
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        drop(conn);
        let text = asking.await.unwrap();
        assert!(text.ends_with("\r\n\r\nok"), "{text}");
        holding.await.unwrap();
        std::fs::remove_dir_all(d).unwrap();
    }

    #[tokio::test]
    async fn a_connection_held_past_its_time_gets_503_with_retry_after() {
        let d = dir("late");
        let live = d.join("live.sock");
        let (ours, theirs) = UnixStream::pair().unwrap();
        let started = Instant::now();
        let holding = tokio::spawn(async move { pass_on(theirs, &live, Duration::from_millis(300)).await });
        let text = ask(ours).await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        assert!(text.contains("retry-after: 1\r\n"), "{text}");
        assert!(text.contains("no instance was live within 300ms"), "{text}");
        holding.await.unwrap();
        std::fs::remove_dir_all(d).unwrap();
    }
}
