//! The daemon's identity: a random 256-bit id kept in an id file.

use crate::wire::NodeId;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// A fresh random id that is not reserved.
pub fn random_id(src: &mut impl Read) -> std::io::Result<NodeId> {
    loop {
        let mut b = [0u8; 32];
        src.read_exact(&mut b)?;
        let id = NodeId(b);
        if !id.is_reserved() {
            return Ok(id);
        }
    }
}

/// The id in `path`, made and stored (mode 0600, atomically) on first use.
pub fn load_or_create(path: &Path) -> Result<NodeId, String> {
    match fs::read_to_string(path) {
        Ok(s) => {
            let id = NodeId::parse(s.trim()).map_err(|e| format!("id file {} is corrupt: {e}", path.display()))?;
            if id.is_reserved() {
                return Err(format!("id file {} holds a reserved id", path.display()));
            }
            return Ok(id);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read id file {}: {e}", path.display())),
    }
    let ctx = |e: std::io::Error| format!("cannot create id file {}: {e}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(ctx)?;
    }
    let id = random_id(&mut File::open("/dev/urandom").map_err(ctx)?).map_err(ctx)?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(ctx)?;
    let written = f.write_all(format!("{id}\n").as_bytes()).and_then(|_| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(ctx(e));
    }
    // hard_link fails if another daemon won the race: then use its id.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Some(dir) = path.parent().and_then(|d| File::open(d).ok()) {
                let _ = dir.sync_all();
            }
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create(path),
        Err(e) => Err(ctx(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_then_kept() {
        let dir = std::env::temp_dir().join(format!("r2-id-test-{}", std::process::id()));
        let path = dir.join("sub/a.id");
        let a = load_or_create(&path).unwrap();
        let b = load_or_create(&path).unwrap();
        assert_eq!(a, b);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(&path, "garbage").unwrap();
        assert!(load_or_create(&path).unwrap_err().contains("corrupt"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
