//! Default locations: the control socket and the daemon's key file.

use nix::unistd::{geteuid, Uid};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The control socket: `$R2_SOCKET`, else `/run/r2.sock` for root, else
/// `$XDG_RUNTIME_DIR/r2.sock`, else `/tmp/r2-UID/r2.sock`.
pub fn default_socket() -> PathBuf {
    if let Some(s) = std::env::var_os("R2_SOCKET").filter(|s| !s.is_empty()) {
        return PathBuf::from(s);
    }
    let uid = geteuid();
    if uid.is_root() {
        return PathBuf::from("/run/r2.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|s| !s.is_empty()) {
        Some(d) => Path::new(&d).join("r2.sock"),
        None => private_tmp_dir(uid).join("r2.sock"),
    }
}

/// `/tmp/r2-UID`, the fallback home of a user's socket.
pub fn private_tmp_dir(uid: Uid) -> PathBuf {
    PathBuf::from(format!("/tmp/r2-{uid}"))
}

/// Creates `dir` with mode 0700 if it is missing; refuses one that another
/// user owns or that others can enter.
pub fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let md = fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !md.is_dir() || md.uid() != geteuid().as_raw() || md.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is not a private directory of this user (want owner uid {}, mode 0700)",
            dir.display(),
            geteuid()
        ));
    }
    Ok(())
}

/// The default key file for a daemon on `socket`: `/var/lib/r2/NAME.key`
/// for root, else `$XDG_STATE_HOME/r2/NAME.key` or `~/.local/state/r2/NAME.key`,
/// where NAME is the socket's file name without `.sock`.
pub fn default_key_file(socket: &Path) -> PathBuf {
    let name = socket.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = name.strip_suffix(".sock").unwrap_or(&name);
    let stem = if stem.is_empty() { "r2" } else { stem };
    let dir = if geteuid().is_root() {
        PathBuf::from("/var/lib/r2")
    } else if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        Path::new(&d).join("r2")
    } else {
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
        Path::new(&home).join(".local/state/r2")
    };
    dir.join(format!("{stem}.key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_named_after_socket() {
        let a = default_key_file(Path::new("/tmp/x/a.sock"));
        let b = default_key_file(Path::new("/tmp/x/b.sock"));
        assert_eq!(a.file_name().unwrap(), "a.key");
        assert_ne!(a, b);
        assert_eq!(default_key_file(Path::new("/run/r2.sock")).file_name().unwrap(), "r2.key");
    }
}
