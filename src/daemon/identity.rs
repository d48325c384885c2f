//! The daemon's identity: an X25519 key pair kept in a key file, whose
//! public key is the node's id; and random ids for endpoints.
//!
//! ```text
//! r2 key 1
//! secret BASE58        the 32-byte X25519 secret
//! id BASE58            its public key, the node's id (checked on load)
//! ```

use crate::key::KeyPair;
use crate::wire::NodeId;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// The first line of a key file.
const MAGIC: &str = "r2 key 1";

/// A fresh random id that is not reserved (endpoints, link tags).
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

/// A fresh key pair whose id is neither reserved nor weak.
fn random_key(src: &mut impl Read) -> std::io::Result<KeyPair> {
    loop {
        let mut b = [0u8; 32];
        src.read_exact(&mut b)?;
        let k = KeyPair::from_secret(b);
        if crate::key::unfit(&k.id).is_none() {
            return Ok(k);
        }
    }
}

/// The text of a key file.
fn encode(k: &KeyPair) -> String {
    format!("{MAGIC}\nsecret {}\nid {}\n", bs58::encode(k.secret_bytes()).into_string(), k.id)
}

/// The key pair in a key file's text, or why there is none.
fn decode(text: &str, path: &Path) -> Result<KeyPair, String> {
    let corrupt = |why: &str| format!("key file {} is corrupt: {why}", path.display());
    let mut lines = text.lines();
    match lines.next().map(str::trim) {
        Some(MAGIC) => {}
        Some(l) if NodeId::parse(l).is_ok() && text.trim() == l => {
            return Err(format!(
                "{} is the id file of an earlier r2, whose ids were random: an id is now the node's public key, \
                 so this node's id changes once. Move the file away (its id was {l}) and start r2d again to \
                 make a key",
                path.display()
            ))
        }
        _ => return Err(corrupt(&format!("it does not start with {MAGIC:?}"))),
    }
    let field = |line: Option<&str>, name: &str| -> Result<[u8; 32], String> {
        let v = line.and_then(|l| l.strip_prefix(name)).and_then(|l| l.strip_prefix(' '));
        let v = v.ok_or_else(|| corrupt(&format!("no {name} line")))?;
        let mut b = [0u8; 32];
        match bs58::decode(v.trim()).onto(&mut b[..]) {
            Ok(32) => Ok(b),
            _ => Err(corrupt(&format!("its {name} is not 32 bytes of base58"))),
        }
    };
    let k = KeyPair::from_secret(field(lines.next(), "secret")?);
    if field(lines.next(), "id")? != k.id.0 {
        return Err(corrupt("its id is not the public key of its secret"));
    }
    if crate::key::unfit(&k.id).is_some() {
        return Err(corrupt("its key is not one a node may have"));
    }
    Ok(k)
}

/// The key pair in `path`, made and stored (mode 0600, atomically) on first
/// use.
pub fn load_or_create(path: &Path) -> Result<KeyPair, String> {
    match fs::read_to_string(path) {
        Ok(s) => return decode(&s, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read key file {}: {e}", path.display())),
    }
    let ctx = |e: std::io::Error| format!("cannot create key file {}: {e}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(ctx)?;
    }
    let key = random_key(&mut File::open("/dev/urandom").map_err(ctx)?).map_err(ctx)?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(ctx)?;
    let written = f.write_all(encode(&key).as_bytes()).and_then(|_| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(ctx(e));
    }
    // hard_link fails if another daemon won the race: then use its key.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Some(dir) = path.parent().and_then(|d| File::open(d).ok()) {
                let _ = dir.sync_all();
            }
            Ok(key)
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
        let dir = std::env::temp_dir().join(format!("r2-key-test-{}", std::process::id()));
        let path = dir.join("sub/a.key");
        let a = load_or_create(&path).unwrap();
        let b = load_or_create(&path).unwrap();
        assert_eq!((a.id, a.secret_bytes()), (b.id, b.secret_bytes()));
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("r2 key 1\nsecret ") && text.ends_with(&format!("\nid {}\n", a.id)), "{text}");
        fs::write(&path, "garbage").unwrap();
        assert!(load_or_create(&path).err().unwrap().contains("corrupt"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_old_id_files_and_mismatched_keys() {
        let p = Path::new("k");
        let old = decode(&format!("{}\n", NodeId([5; 32])), p).err().unwrap();
        assert!(old.contains("id file of an earlier r2") && old.contains("changes once"), "{old}");
        let k = KeyPair::from_secret([3; 32]);
        assert_eq!(decode(&encode(&k), p).map(|d| d.id).ok(), Some(k.id));
        let other = KeyPair::from_secret([4; 32]);
        let swapped = encode(&k).replace(&k.id.to_string(), &other.id.to_string());
        assert!(decode(&swapped, p).err().unwrap().contains("not the public key of its secret"));
        assert!(decode("r2 key 1\nsecret x\nid y\n", p).err().unwrap().contains("not 32 bytes"));
        assert!(decode("r2 key 1\n", p).err().unwrap().contains("no secret line"));
    }
}
