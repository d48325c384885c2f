//! The control socket: bound 0600 under a lock file, replaced when stale,
//! removed on exit only while it is still this daemon's.

use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::{umask, Mode};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// The longest socket path `sun_path` holds.
pub const MAX_SOCKET_PATH: usize = 107;

/// A bound control socket; dropping it removes the socket file if it is
/// still the one this daemon bound.
pub struct ControlSocket {
    pub listener: UnixListener,
    path: PathBuf,
    inode: (u64, u64),
    _lock: Flock<File>,
}

impl ControlSocket {
    pub fn bind(path: &Path) -> Result<ControlSocket, String> {
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(format!(
                "socket path is {len} bytes, longer than the {MAX_SOCKET_PATH} a UNIX socket allows: {}",
                path.display()
            ));
        }
        let lock_path = {
            let mut p = path.as_os_str().to_owned();
            p.push(".lock");
            PathBuf::from(p)
        };
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| format!("cannot open lock file {}: {e}", lock_path.display()))?;
        let lock = Flock::lock(lock, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            if e == nix::errno::Errno::EWOULDBLOCK {
                format!("another r2d is already running on {}", path.display())
            } else {
                format!("cannot lock {}: {e}", lock_path.display())
            }
        })?;
        match fs::symlink_metadata(path) {
            Ok(md) if md.file_type().is_socket() => {
                log::info!("replacing stale socket {}", path.display());
                fs::remove_file(path).map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
            }
            Ok(_) => return Err(format!("{} exists and is not a socket", path.display())),
            Err(_) => {}
        }
        let old = umask(Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        umask(old);
        let listener = bound.map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
        let md = fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(ControlSocket { listener, path: path.to_owned(), inode: (md.dev(), md.ino()), _lock: lock })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if let Ok(md) = fs::symlink_metadata(&self.path) {
            if (md.dev(), md.ino()) == self.inode {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}
