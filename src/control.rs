//! The stable control address: a unix socket in a directory only root can
//! enter, held by whichever instance is live.
//!
//! Ports 5800 and 5801 take turns: every handover frees one, and any local
//! user can bind a freed port. A client that holds a secret (the upgrade
//! token, the companion's key) and sends it to a port would hand it to them.
//! The socket's path never changes and nobody but root can reach it:
//! `curl --unix-socket /run/selfup/control.sock http://localhost/upgrade`.
//!
//! Each instance binds its own socket beside the public path at start-up
//! and, once it is the live instance, renames a link to it over the public
//! path: an atomic swap, so a client always reaches one instance, and the
//! elder keeps answering the connections it already has while it drains.
//!
//! The live socket, which nginx's upstream names, is the third: public
//! traffic follows the live instance by the same rename, and nginx never
//! reloads. Companion mode adds the update socket,
//! for nginx to pass a CI runner's `/update` to: its directory only root can
//! write, so nobody else can put a name there, but anyone may connect,
//! nginx's unprivileged workers included; connections on it are served the
//! companion's endpoints and the public ones, never the control endpoints
//! (see `routes::guard::Loopback`).

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A connection counted in `count` while it is open: counted when made,
/// uncounted when dropped.
pub struct Open(Arc<AtomicUsize>);

impl Open {
    pub fn of(count: &Arc<AtomicUsize>) -> Open {
        count.fetch_add(1, Ordering::SeqCst);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Who may connect to a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Root only: directory 0700, socket 0600. The control socket.
    Root,
    /// Any local process: directory 0755 (only root can make or replace a
    /// name in it), socket 0666. The live and the update socket, which
    /// nginx's workers reach: the live one serves the public endpoints only,
    /// the companion's key guards the update one's.
    Anyone,
}

impl Access {
    /// The modes of the directory and of the socket.
    fn modes(self) -> (u32, u32) {
        match self {
            Access::Root => (0o700, 0o600),
            Access::Anyone => (0o755, 0o666),
        }
    }
}

/// Sockets of a role that the live instance publishes beside its own: the
/// blue-green apps' fronts in companion mode. The self-upgrade publishes
/// them when this instance becomes the live one, without knowing the role.
pub trait Publish: std::fmt::Debug + Send + Sync {
    /// Makes these sockets the ones clients reach.
    fn publish(&self);
}

/// This instance's control (or update) socket, bound and perhaps not yet
/// published.
#[derive(Debug)]
pub struct ControlSocket {
    /// Where this instance's socket is bound until it is published.
    staged: PathBuf,
    /// The path clients use.
    public: PathBuf,
}

impl ControlSocket {
    /// Gives `public`'s directory the modes of `access` and binds this
    /// instance's socket beside it (named for `port`, so that elder and
    /// successor never share a path), replacing a stale one an earlier
    /// instance on that port left.
    pub fn bind(public: &Path, port: u16, access: Access) -> io::Result<(ControlSocket, UnixListener)> {
        let (dir_mode, socket_mode) = access.modes();
        let dir = public
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .ok_or_else(|| io::Error::other(format!("{} has no directory", public.display())))?;
        let name = public
            .file_name()
            .ok_or_else(|| io::Error::other(format!("{} names no file", public.display())))?;
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode))?;
        let staged = dir.join(format!(".{}.{port}", name.to_string_lossy()));
        match std::fs::remove_file(&staged) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(socket_mode))?;
        Ok((
            ControlSocket {
                staged,
                public: public.to_path_buf(),
            },
            listener,
        ))
    }

    /// Puts this instance's socket at the public path, in one rename of a
    /// hard link, so that its own path stays: an elder that takes the
    /// traffic back from a failed successor publishes again. Idempotent.
    pub fn publish(&self) -> io::Result<()> {
        let link = PathBuf::from(format!("{}.publishing", self.staged.display()));
        match std::fs::remove_file(&link) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::hard_link(&self.staged, &link)?;
        std::fs::rename(&link, &self.public)
    }

    /// Puts this instance's socket at `path` too, beside the public one (a
    /// baking elder's standby socket), in the same rename. Idempotent.
    pub fn publish_as(&self, path: &Path) -> io::Result<()> {
        let link = PathBuf::from(format!("{}.standby", self.staged.display()));
        match std::fs::remove_file(&link) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::hard_link(&self.staged, &link)?;
        std::fs::rename(&link, path)
    }

    /// Removes `path` if it names this instance's socket; another's stays.
    pub fn withdraw(&self, path: &Path) -> io::Result<()> {
        match self.names_mine(path) {
            true => std::fs::remove_file(path),
            false => Ok(()),
        }
    }

    /// Whether `path` names this instance's socket (the same file).
    fn names_mine(&self, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(path), std::fs::metadata(&self.staged)) {
            (Ok(there), Ok(mine)) => (there.dev(), there.ino()) == (mine.dev(), mine.ino()),
            _ => false,
        }
    }

    /// Whether the public path names another socket than this instance's:
    /// another instance published its own over it. A missing public path is
    /// nobody's.
    pub fn held_by_another(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(&self.public), std::fs::metadata(&self.staged)) {
            (Ok(public), Ok(mine)) => (public.dev(), public.ino()) != (mine.dev(), mine.ino()),
            (Ok(_), Err(_)) => true,
            (Err(_), _) => false,
        }
    }

    /// Whether the public path names this instance's socket.
    pub fn is_published(&self) -> bool {
        self.names_mine(&self.public)
    }

    /// The path clients use.
    pub fn public(&self) -> &Path {
        &self.public
    }

    /// Where this instance's socket is bound: the local address of every
    /// connection it accepts, whichever name the client used.
    pub fn staged(&self) -> &Path {
        &self.staged
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use super::*;

    fn answer(listener: &UnixListener, text: &'static [u8]) -> std::thread::JoinHandle<()> {
        let listener = listener.try_clone().unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(text).unwrap();
        })
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn read(path: &Path) -> String {
        let mut conn = UnixStream::connect(path).unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        text
    }

    #[test]
    fn the_public_path_moves_from_the_elder_to_its_successor_in_a_root_only_directory() {
        let dir = std::env::temp_dir().join(format!("selfup-control-{}", std::process::id()));
        let public = dir.join("run/control.sock");
        let (elder, elder_listener) = ControlSocket::bind(&public, 5800, Access::Root).unwrap();
        assert!(!public.exists(), "not published before the instance is live");
        assert!(!elder.held_by_another(), "an unpublished path is nobody's");
        elder.publish().unwrap();
        elder.publish().unwrap();
        assert_eq!(mode(public.parent().unwrap()), 0o700);
        assert_eq!(mode(&public), 0o600);

        let served = answer(&elder_listener, b"elder");
        assert_eq!(read(&public), "elder");
        served.join().unwrap();

        let (successor, successor_listener) = ControlSocket::bind(&public, 5801, Access::Root).unwrap();
        assert!(!elder.held_by_another() && successor.held_by_another());
        let served = answer(&elder_listener, b"elder");
        assert_eq!(
            read(&public),
            "elder",
            "the elder keeps the path until the successor is live"
        );
        served.join().unwrap();
        successor.publish().unwrap();
        assert!(elder.held_by_another() && !successor.held_by_another());
        let served = answer(&successor_listener, b"successor");
        assert_eq!(read(&public), "successor");
        served.join().unwrap();

        // The elder takes the traffic back from a failed successor.
        elder.publish().unwrap();
        let served = answer(&elder_listener, b"elder");
        assert_eq!(read(&public), "elder");
        served.join().unwrap();
        drop((elder, elder_listener));

        // A later instance on the elder's port replaces its stale path only.
        let (_, _listener) = ControlSocket::bind(&public, 5800, Access::Root).unwrap();
        successor.publish().unwrap();
        let served = answer(&successor_listener, b"successor");
        assert_eq!(read(&public), "successor");
        served.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_standby_name_reaches_the_same_socket_and_is_withdrawn_only_by_its_owner() {
        let dir = std::env::temp_dir().join(format!("selfup-standby-{}", std::process::id()));
        let public = dir.join("run/live.sock");
        let standby = dir.join("run/standby.sock");
        let (elder, elder_listener) = ControlSocket::bind(&public, 5800, Access::Anyone).unwrap();
        let (successor, _successor_listener) = ControlSocket::bind(&public, 5801, Access::Anyone).unwrap();
        elder.publish_as(&standby).unwrap();
        elder.publish_as(&standby).unwrap();
        assert_eq!(mode(&standby), 0o666);
        let served = answer(&elder_listener, b"elder");
        assert_eq!(read(&standby), "elder");
        served.join().unwrap();
        successor.withdraw(&standby).unwrap();
        assert!(standby.exists(), "the successor removed the elder's standby name");
        elder.withdraw(&standby).unwrap();
        assert!(!standby.exists());
        elder.withdraw(&standby).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_update_socket_is_open_to_anyone_in_a_directory_only_root_can_write() {
        let dir = std::env::temp_dir().join(format!("selfup-update-{}", std::process::id()));
        let public = dir.join("run/update.sock");
        let (socket, listener) = ControlSocket::bind(&public, 5800, Access::Anyone).unwrap();
        socket.publish().unwrap();
        assert_eq!(mode(public.parent().unwrap()), 0o755);
        assert_eq!(mode(&public), 0o666);
        assert_eq!(socket.staged(), public.parent().unwrap().join(".update.sock.5800"));
        let served = answer(&listener, b"update");
        assert_eq!(read(&public), "update");
        served.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
