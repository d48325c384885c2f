//! Names for nodes: hosts files of `NODEID NAME [NAME...]` lines, local to
//! this machine (names never go on the wire). A NAME is usable wherever a
//! NODE is; `r2 ls`, `r2 ping` and errors show names where known.

use super::{Error, Result};
use crate::key::unfit;
use crate::wire::id::{NodeId, MAX_HOPS};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The longest name.
const MAX_NAME: usize = 64;

/// The names of one or more hosts files, in the order they were read
/// (a list, not a map: hosts files are short, and maps cost the static
/// binary several KiB each).
#[derive(Debug, Default)]
pub struct Hosts {
    /// Each name once, with its id; an id's first name is the one shown.
    names: Vec<(String, NodeId)>,
    /// The files looked in (read or not), for messages.
    files: Vec<PathBuf>,
}

/// Why a word cannot be a name.
fn bad_name(w: &str) -> Option<&'static str> {
    if w.len() > MAX_NAME {
        Some("longer than 64 bytes")
    } else if w.starts_with('-') || w.starts_with('.') {
        Some("starts with - or .")
    } else if !w.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        Some("has a character other than letters, digits, '.', '_' and '-'")
    } else if NodeId::parse(w).is_ok() {
        Some("is a node id")
    } else {
        None
    }
}

impl Hosts {
    /// Adds the lines of one file (`file` names it in warnings); a name
    /// already known keeps its first id. Returns the warnings.
    pub fn add(&mut self, file: &Path, text: &str) -> Vec<String> {
        let mut warnings = Vec::new();
        let mut warn = |n: usize, what: String| warnings.push(format!("{}:{n}: {what}", file.display()));
        // The names this file gave, and to which id.
        let mut here: Vec<(&str, NodeId)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(first) = words.next() else { continue };
            let id = match NodeId::parse(first) {
                Ok(id) => match unfit(&id) {
                    Some(why) => {
                        warn(n, format!("{first} {why}; line ignored"));
                        continue;
                    }
                    None => id,
                },
                Err(e) => {
                    warn(n, format!("{first:?} is not a node id ({e}); line ignored"));
                    continue;
                }
            };
            let mut named = false;
            for name in words {
                named = true;
                if let Some(why) = bad_name(name) {
                    warn(n, format!("{name:?} {why}: not a name; ignored"));
                    continue;
                }
                match here.iter().find(|(h, _)| *h == name) {
                    Some((_, other)) if *other != id => {
                        warn(n, format!("{name} names {other} on an earlier line; this line's {id} is ignored for it"));
                        continue;
                    }
                    Some(_) => continue,
                    None => here.push((name, id)),
                }
                // An earlier file (the user's before the system's) wins.
                if self.lookup(name).is_none() {
                    self.names.push((name.to_string(), id));
                }
            }
            if !named {
                warn(n, format!("{first} has no name; line ignored"));
            }
        }
        warnings
    }

    /// The id a name stands for.
    pub fn lookup(&self, name: &str) -> Option<NodeId> {
        self.names.iter().find(|(n, _)| n == name).map(|(_, id)| *id)
    }

    /// The name shown for an id, if it has one.
    pub fn name(&self, id: &NodeId) -> Option<&str> {
        self.names.iter().find(|(_, i)| i == id).map(|(n, _)| n.as_str())
    }

    /// The name of an id if it has one, else the id.
    pub fn show(&self, id: &NodeId) -> String {
        self.name(id).map_or_else(|| id.to_string(), str::to_string)
    }

    /// `text` with every id that has a name replaced by the name (for
    /// messages, the daemon's included).
    pub fn rename(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find(|c: char| c.is_ascii_alphanumeric()) {
            out.push_str(&rest[..start]);
            let word = &rest[start..];
            let end = word.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(word.len());
            let (word, after) = word.split_at(end);
            match NodeId::parse(word).ok().and_then(|id| self.name(&id)) {
                Some(name) => out.push_str(name),
                None => out.push_str(word),
            }
            rest = after;
        }
        out.push_str(rest);
        out
    }

    /// The files looked in, for a message: "a or b", or "no hosts file".
    fn looked_in(&self) -> String {
        match self.files.len() {
            0 => "no hosts file".to_string(),
            _ => self.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" or "),
        }
    }

    /// A NODE argument: an id, or a name; reserved ids are refused.
    pub fn node(&self, word: &str) -> std::result::Result<NodeId, String> {
        let id = match NodeId::parse(word) {
            Ok(id) => id,
            Err(e) => match self.lookup(word) {
                Some(id) => id,
                None if bad_name(word).is_none() => {
                    return Err(format!("{word:?} is neither a node id nor a name in {}", self.looked_in()))
                }
                None => return Err(format!("{word:?} is not a node id: {e}")),
            },
        };
        match unfit(&id) {
            Some(why) => Err(format!("{word} {why}")),
            None => Ok(id),
        }
    }

    /// A PATH argument: NODE[/NODE...].
    pub fn path(&self, s: &str) -> std::result::Result<Vec<NodeId>, String> {
        if s.is_empty() {
            return Err("empty path".into());
        }
        let hops: Vec<&str> = s.split('/').collect();
        if hops.len() > MAX_HOPS {
            return Err(format!("path has {} hops, at most {MAX_HOPS} allowed", hops.len()));
        }
        hops.iter().enumerate().map(|(i, h)| self.node(h).map_err(|e| format!("hop {}: {e}", i + 1))).collect()
    }
}

/// The NAME column of a line, with the tab before it: the id's name, or
/// `-`; nothing without `names` (`-N`).
pub fn column(names: Option<&Hosts>, id: &NodeId) -> String {
    names.map_or_else(String::new, |h| format!("\t{}", h.name(id).unwrap_or("-")))
}

/// Where the hosts files are: `$R2_HOSTS` alone if set, else the user's
/// (`$XDG_CONFIG_HOME/r2/hosts`, or `~/.config/r2/hosts`) then the system's.
pub fn files() -> Vec<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(f) = var("R2_HOSTS") {
        return vec![f];
    }
    let mut v = Vec::new();
    if let Some(d) = var("XDG_CONFIG_HOME").or_else(|| var("HOME").map(|h| h.join(".config"))) {
        v.push(d.join("r2/hosts"));
    }
    v.push(PathBuf::from("/etc/r2/hosts"));
    v
}

/// Reads the hosts files; a missing one is skipped, an unreadable one and a
/// malformed line are warnings on stderr.
pub fn load(files: Vec<PathBuf>) -> Hosts {
    let mut h = Hosts::default();
    for f in &files {
        match std::fs::read_to_string(f) {
            Ok(text) => {
                for w in h.add(f, &text) {
                    eprintln!("r2: warning: {w}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("r2: warning: cannot read {}: {e}", f.display()),
        }
    }
    h.files = files;
    h
}

/// This process's names, read once.
pub fn hosts() -> &'static Hosts {
    static HOSTS: OnceLock<Hosts> = OnceLock::new();
    HOSTS.get_or_init(|| load(files()))
}

/// A NODE on the command line; a bad one is a usage error.
pub fn node_arg(word: &str) -> Result<NodeId> {
    hosts().node(word).map_err(|e| Error::Usage(format!("bad node {e}")))
}

/// A PATH on the command line; a bad one is a usage error, before any
/// daemon is contacted.
pub fn path_arg(s: &str) -> Result<Vec<NodeId>> {
    hosts().path(s).map_err(|e| Error::Usage(format!("bad PATH {s:?}: {e}")))
}

/// The fuzz target for the hosts file's reader (fuzz/fuzz_targets/hosts.rs,
/// replayed by tests/fuzz_corpus.rs): it panics when a property fails.
pub fn fuzz(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut h = Hosts::default();
    let warnings = h.add(Path::new("hosts"), text);
    assert!(warnings.len() <= text.lines().count() * 2 + text.split_whitespace().count());
    for (name, id) in &h.names {
        assert!(bad_name(name).is_none(), "a bad name was kept: {name:?}");
        assert!(!id.is_reserved());
        assert_eq!(h.node(name), Ok(*id));
        let shown = h.name(id).unwrap_or_default();
        assert_eq!(h.lookup(shown), Some(*id));
        assert_eq!(h.rename(&format!("<{id}>")), format!("<{shown}>"));
    }
    let _ = h.path(text);
    let _ = h.rename(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    fn hosts(text: &str) -> (Hosts, Vec<String>) {
        let mut h = Hosts::default();
        let w = h.add(Path::new("hosts"), text);
        (h, w)
    }

    #[test]
    fn lines_names_and_comments() {
        let text = format!("# relays\n{} relay r1  # the roof\n\n   {}\thome\n", id(1), id(2));
        let (h, w) = hosts(&text);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!((h.lookup("relay"), h.lookup("r1"), h.lookup("home")), (Some(id(1)), Some(id(1)), Some(id(2))));
        assert_eq!(h.name(&id(1)), Some("relay"));
        assert_eq!(h.show(&id(3)), id(3).to_string());
        assert_eq!(h.path("relay/home"), Ok(vec![id(1), id(2)]));
        assert_eq!(h.path(&format!("relay/{}", id(3))), Ok(vec![id(1), id(3)]));
        let msg = format!("no route to {} at {}: {}.", id(2), id(1), id(3));
        assert_eq!(h.rename(&msg), format!("no route to home at relay: {}.", id(3)));
    }

    #[test]
    fn malformed_lines_are_warnings_with_their_line() {
        let text = format!(
            "nonsense here\n{} lonely\n{}\n{} a/b -x ok\n{} relay\n{} relay\n{} twice twice\n",
            NodeId::LIST,
            id(1),
            id(2),
            id(3),
            id(4),
            id(5)
        );
        let (h, w) = hosts(&text);
        assert!(w[0].starts_with("hosts:1: \"nonsense\" is not a node id"), "{w:?}");
        assert!(w[1].starts_with("hosts:2:") && w[1].contains("reserved"), "{w:?}");
        assert!(w[2].starts_with("hosts:3:") && w[2].contains("no name"), "{w:?}");
        assert!(w[3].starts_with("hosts:4: \"a/b\""), "{w:?}");
        assert!(w[4].starts_with("hosts:4: \"-x\""), "{w:?}");
        assert!(w[5].starts_with("hosts:6: relay names"), "{w:?}");
        assert_eq!(w.len(), 6, "{w:?}");
        assert_eq!((h.lookup("ok"), h.lookup("relay"), h.lookup("twice")), (Some(id(2)), Some(id(3)), Some(id(5))));
        assert_eq!(h.lookup("lonely"), None);
    }

    #[test]
    fn an_earlier_file_wins_quietly() {
        let mut h = Hosts::default();
        assert!(h.add(Path::new("user"), &format!("{} relay\n", id(1))).is_empty());
        assert!(h.add(Path::new("system"), &format!("{} relay gw\n", id(2))).is_empty());
        assert_eq!((h.lookup("relay"), h.lookup("gw")), (Some(id(1)), Some(id(2))));
        assert_eq!(h.name(&id(2)), Some("gw"));
    }

    #[test]
    fn bad_words_say_where_names_were_looked_for() {
        let mut h = Hosts { files: vec!["/u/hosts".into(), "/etc/r2/hosts".into()], ..Hosts::default() };
        h.add(Path::new("x"), &format!("{} relay\n", id(1)));
        let e = h.node("home").unwrap_err();
        assert_eq!(e, "\"home\" is neither a node id nor a name in /u/hosts or /etc/r2/hosts");
        assert!(h.node("0OIl!").unwrap_err().contains("not a node id"));
        assert!(h.node(&NodeId::TUNNEL.to_string()).unwrap_err().contains("reserved"));
        assert!(h.path("").is_err());
        assert!(h.path("relay/").unwrap_err().starts_with("hop 2"));
        assert!(h.path(&vec!["relay"; MAX_HOPS + 1].join("/")).is_err());
        assert_eq!(h.path(&vec!["relay"; MAX_HOPS].join("/")).map(|p| p.len()), Ok(MAX_HOPS));
    }
}
