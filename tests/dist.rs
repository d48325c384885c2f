//! The service files in dist/: `make install-files` puts the systemd units
//! beside the binary, naming its installed path, and `systemd-analyze
//! verify` passes on them; the shells in their ExecStart= pass the options,
//! the tunnel process and a link's transport on as r2d and `r2 connect`
//! take them; the OpenWrt init script is shellcheck clean, and its
//! start_service, run against stubs of procd and UCI, builds the command
//! lines of the daemon and its links, which r2d runs.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// A node id that no daemon here has.
const GHOST: &str = "6Xb2RtEfug8nxD6A7Afvd3SPt4ePCibjFHLcyRqVqFgC";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `name`, a tool this test runs; fails, naming the Debian package to
/// install, if it is missing.
fn tool(name: &str, package: &str) -> Command {
    let found = Command::new(name).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(found.is_ok(), "this test needs `{name}`: apt-get install {package} (.ci/run installs it)");
    Command::new(name)
}

fn show(o: &Output) -> String {
    format!("status {}\nstdout:\n{}\nstderr:\n{}", o.status, stdout_of(o), stderr_of(o))
}

/// `make -C REPO ARGS…`, free of the make (if any) that runs this test.
fn make(args: &[&str]) -> Output {
    let mut c = tool("make", "make");
    c.arg("-C").arg(repo()).args(args);
    for v in ["MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"] {
        c.env_remove(v);
    }
    run_bounded(c, Duration::from_secs(60))
}

/// `make install-files DESTDIR=root PREFIX=prefix` with the binary under test.
fn install(root: &Path, prefix: &str) {
    let dest = format!("DESTDIR={}", root.display());
    let r2_bin = format!("R2_BIN={}", bin().display());
    let o = make(&["install-files", &dest, &format!("PREFIX={prefix}"), &r2_bin]);
    assert!(o.status.success(), "make install-files: {}", show(&o));
}

/// The one ExecStart= line of a unit, without its key.
fn exec_start(unit: &str) -> String {
    let lines: Vec<&str> = unit.lines().filter_map(|l| l.strip_prefix("ExecStart=")).collect();
    assert_eq!(lines.len(), 1, "one ExecStart= in\n{unit}");
    lines[0].to_string()
}

/// Each unit, what its ExecStart= runs (BIN: the installed bin directory),
/// and when it is started again.
const UNITS: [(&str, &str, &str); 2] = [
    ("r2d.service", "exec BIN/r2d ", "Restart=on-failure"),
    ("r2-link@.service", "exec BIN/r2 connect -r ", "Restart=always"),
];

#[test]
fn install_puts_units_that_verify_beside_the_binary() {
    let s = Scratch::new("inst");
    let root = s.path("root");
    install(&root, "/usr");
    let r2 = root.join("usr/bin/r2");
    assert!(fs::metadata(&r2).unwrap().permissions().mode() & 0o111 != 0, "{} is executable", r2.display());
    assert_eq!(fs::read_link(root.join("usr/bin/r2d")).unwrap(), Path::new("r2"));
    let units = root.join("usr/lib/systemd/system");
    let mut paths = Vec::new();
    for (name, exec, restart) in UNITS {
        let path = units.join(name);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!text.contains("@BINDIR@"), "{name} has @BINDIR@ left:\n{text}");
        let line = exec_start(&text);
        assert!(line.contains(&exec.replace("BIN", "/usr/bin")), "{name} runs the installed binary: {line}");
        assert!(text.lines().any(|l| l == restart), "{name} has {restart}");
        // Documentation= names man pages that make install installed.
        for doc in text.lines().filter_map(|l| l.strip_prefix("Documentation=")).flat_map(|l| l.split(' ')) {
            let page = doc.strip_prefix("man:").unwrap_or_else(|| panic!("{name}: {doc} is not a man page"));
            let (title, section) = page.trim_end_matches(')').split_once('(').unwrap();
            let file = root.join(format!("usr/share/man/man{section}/{title}.{section}"));
            assert!(file.exists(), "{name} names {doc}, which is not at {}", file.display());
        }
        paths.push(path);
    }
    let link = fs::read_to_string(&paths[1]).unwrap();
    for dep in ["Requires=r2d.service", "After=r2d.service", "EnvironmentFile=/etc/r2/links/%i"] {
        assert!(link.lines().any(|l| l.starts_with(dep)), "r2-link@.service has {dep}");
    }
    // verify exits 0 on an unknown key or a value it cannot parse, and only
    // says so: it passes when it says nothing. Its own check of
    // Documentation= runs man(1), which may be missing; the loop above
    // checks the same pages.
    let mut v = tool("systemd-analyze", "systemd");
    v.args(["verify", "--man=no"]).args(&paths);
    let o = run_bounded(v, Duration::from_secs(60));
    assert!(o.status.success() && o.stderr.is_empty() && o.stdout.is_empty(), "systemd-analyze verify: {}", show(&o));
    // Another prefix, another path in the units.
    let other = s.path("other");
    install(&other, "/opt/r2");
    for (name, exec, _) in UNITS {
        let line = exec_start(&fs::read_to_string(other.join("opt/r2/lib/systemd/system").join(name)).unwrap());
        assert!(line.contains(&exec.replace("BIN", "/opt/r2/bin")), "{name} under /opt/r2: {line}");
    }
    let o = make(&["uninstall", &format!("DESTDIR={}", root.display()), "PREFIX=/usr"]);
    assert!(o.status.success(), "make uninstall: {}", show(&o));
    let left: Vec<_> = walk(&root).into_iter().filter(|p| !p.is_dir()).collect();
    assert!(left.is_empty(), "make uninstall leaves {left:?}");
}

/// Every path under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// The shell script of a unit's `ExecStart=/bin/sh -c '…'`, as systemd
/// passes it to sh: `$$` is `$`, and nothing else is systemd's to expand.
fn exec_script(unit_in: &str, bindir: &Path) -> String {
    let line = exec_start(&unit_in.replace("@BINDIR@", &bindir.display().to_string()));
    let inner = line.strip_prefix("/bin/sh -c '").and_then(|l| l.strip_suffix('\'')).unwrap_or_else(|| {
        panic!("ExecStart= is /bin/sh -c '…': {line}");
    });
    assert!(!inner.contains(['\'', '\\', '%']), "nothing for systemd to unquote or expand: {inner}");
    assert!(!inner.replace("$$", "").contains('$'), "every $ is $$, left to the shell: {inner}");
    inner.replace("$$", "$")
}

/// Runs `script` with `env` (the rest of the unit's variables unset) and
/// returns the arguments that the fake binary it runs was given.
fn args_of(s: &Scratch, script: &str, env: &[(&str, &str)]) -> Vec<String> {
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg(script).current_dir(&s.dir);
    for v in ["R2D_OPTIONS", "R2D_TUNNEL", "TRANSPORT", "NODE", "OPTIONS"] {
        c.env_remove(v);
    }
    c.envs(env.iter().copied());
    let o = run_bounded(c, SOON);
    assert!(o.status.success(), "{script}: {}", show(&o));
    stdout_of(&o).lines().map(str::to_string).collect()
}

#[test]
fn exec_start_passes_options_tunnel_and_transport() {
    let s = Scratch::new("exec");
    let fake = s.path("fake");
    fs::create_dir(&fake).unwrap();
    for name in ["r2", "r2d"] {
        let p = fake.join(name);
        fs::write(&p, "#!/bin/sh\nprintf '%s\\n' \"${0##*/}\" \"$@\"\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    // A file for an unquoted * to match, were it globbed.
    fs::write(s.path("glob-bait"), "").unwrap();
    let unit = |name: &str| fs::read_to_string(repo().join("dist/systemd").join(format!("{name}.in"))).unwrap();
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let r2d = exec_script(&unit("r2d.service"), &fake);
    assert_eq!(args_of(&s, &r2d, &[]), v(&["r2d"]), "no options, no tunnel process");
    assert_eq!(args_of(&s, &r2d, &[("R2D_TUNNEL", "")]), v(&["r2d"]), "an empty tunnel process is none");
    let tun = "socat TUN:10.0.0.2/24,tun-type=tun,iff-no-pi,iff-up,tun-name=r20 -";
    let opts = format!("--allow {GHOST}  -p --no-transit *");
    assert_eq!(
        args_of(&s, &r2d, &[("R2D_OPTIONS", &opts), ("R2D_TUNNEL", tun)]),
        v(&["r2d", "--allow", GHOST, "-p", "--no-transit", "*", tun]),
        "options split at whitespace and not globbed, the tunnel process one argument"
    );

    let link = exec_script(&unit("r2-link@.service"), &fake);
    let transport = "socat tcp:example.com:47210 -";
    assert_eq!(args_of(&s, &link, &[("TRANSPORT", transport)]), v(&["r2", "connect", "-r", transport]));
    assert_eq!(
        args_of(&s, &link, &[("TRANSPORT", transport), ("NODE", ""), ("OPTIONS", "")]),
        v(&["r2", "connect", "-r", transport]),
        "an empty NODE is none"
    );
    assert_eq!(
        args_of(&s, &link, &[("TRANSPORT", transport), ("NODE", GHOST), ("OPTIONS", "--layer robust")]),
        v(&["r2", "connect", "-r", "-n", GHOST, "--layer", "robust", transport])
    );
}

#[test]
fn openwrt_init_is_shellcheck_clean() {
    let mut c = tool("shellcheck", "shellcheck");
    c.arg(repo().join("dist/openwrt/r2d.init"));
    let o = run_bounded(c, Duration::from_secs(60));
    assert!(o.status.success(), "shellcheck dist/openwrt/r2d.init: {}", show(&o));
}

/// Stubs of the OpenWrt functions that the init script calls. The UCI
/// config is kept as OpenWrt's functions.sh keeps it: CONFIG_SECTIONS,
/// CONFIG_<section>_TYPE, CONFIG_<section>_<option>, and a list as
/// CONFIG_<section>_<option>_ITEM<n> and _LENGTH. Each procd instance is
/// printed when it is closed, its command line and environment quoted for
/// sh.
const STUBS: &str = r#"
config_load() {
	[ "$1" = r2 ] || { echo "config_load $1, not r2" >&2; exit 1; }
}
config_get() {
	eval "$1=\${CONFIG_$2_$3:-\$4}"
}
config_get_bool() {
	config_get _stub_b "$2" "$3" "$4"
	case "$_stub_b" in
	1 | on | true | yes | enabled) _stub_b=1 ;;
	0 | off | false | no | disabled) _stub_b=0 ;;
	*) _stub_b="$4" ;;
	esac
	eval "$1=\$_stub_b"
}
config_list_foreach() {
	eval "_stub_n=\${CONFIG_$1_$2_LENGTH:-0}"
	_stub_i=1
	while [ "$_stub_i" -le "$_stub_n" ]; do
		eval "_stub_item=\$CONFIG_$1_$2_ITEM$_stub_i"
		"$3" "$_stub_item"
		_stub_i=$((_stub_i + 1))
	done
}
config_foreach() {
	for _stub_s in $CONFIG_SECTIONS; do
		eval "_stub_t=\$CONFIG_${_stub_s}_TYPE"
		if [ "$_stub_t" = "$2" ]; then "$1" "$_stub_s"; fi
	done
}
quote() {
	for _stub_a; do
		case "$_stub_a" in
		'' | *[!A-Za-z0-9_./:=@%+,-]*)
			printf " '%s'" "$(printf '%s' "$_stub_a" | sed "s/'/'\\\\''/g")" ;;
		*) printf ' %s' "$_stub_a" ;;
		esac
	done
}
procd_open_instance() {
	_stub_inst="$1" _stub_cmd= _stub_env= _stub_respawn= _stub_stderr=
}
procd_set_param() {
	_stub_p="$1"
	shift
	case "$_stub_p" in
	command) _stub_cmd="$(quote "$@")" ;;
	env) _stub_env="$(quote "$@")" ;;
	respawn) _stub_respawn="$*" ;;
	stderr) _stub_stderr="$1" ;;
	*) echo "unexpected procd_set_param $_stub_p" >&2; exit 1 ;;
	esac
}
procd_append_param() {
	_stub_p="$1"
	shift
	case "$_stub_p" in
	command) _stub_cmd="$_stub_cmd$(quote "$@")" ;;
	env) _stub_env="$_stub_env$(quote "$@")" ;;
	*) echo "unexpected procd_append_param $_stub_p" >&2; exit 1 ;;
	esac
}
procd_close_instance() {
	echo "instance $_stub_inst"
	echo "command$_stub_cmd"
	if [ -n "$_stub_env" ]; then echo "env$_stub_env"; fi
	echo "respawn $_stub_respawn"
	echo "stderr $_stub_stderr"
}
procd_add_reload_trigger() {
	echo "reload trigger $*"
}
"#;

/// Runs the init script's start_service and service_triggers with `config`
/// (shell assignments in the stubs' layout), then `after` (run once the
/// script has been sourced); returns what the stubs printed, and stderr.
fn start_service(s: &Scratch, config: &str, after: &str) -> (String, String) {
    let init = repo().join("dist/openwrt/r2d.init");
    let script = format!("{STUBS}\n{config}\n. '{}'\n{after}\nstart_service\nservice_triggers\n", init.display());
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg(script).current_dir(&s.dir);
    let o = run_bounded(c, SOON);
    assert!(o.status.success(), "start_service: {}", show(&o));
    (stdout_of(&o), stderr_of(&o))
}

const RESPAWN: &str = "respawn 3600 5 0\nstderr 1\n";

#[test]
fn openwrt_start_service_builds_command_lines() {
    let s = Scratch::new("procd");
    // The defaults: the socket in /var/run, the id on flash.
    let (out, err) = start_service(&s, "CONFIG_SECTIONS=main\nCONFIG_main_TYPE=daemon", "");
    assert_eq!(
        out,
        format!("instance r2d\ncommand /usr/bin/r2d -s /var/run/r2.sock -k /etc/r2/key\n{RESPAWN}reload trigger r2\n")
    );
    assert_eq!(err, "");

    // Everything, and links: one with a node, one disabled, one without a
    // transport (skipped with a message), and a section of another type.
    let tun = "socat TUN:10.0.0.2/24,tun-type=tun,iff-no-pi,iff-up,tun-name=r20 -";
    let other = "6MRyAjQq8ud7hVNYcfnVPJqcVpscN5So8BhtHuGYqET5";
    let config = format!(
        "CONFIG_SECTIONS='main home off bare misc'
CONFIG_main_TYPE=daemon
CONFIG_main_enabled=yes
CONFIG_main_tunnel='{tun}'
CONFIG_main_packet=1
CONFIG_main_no_transit=on
CONFIG_main_keepalive=0.5
CONFIG_main_key_file=/srv/r2/key
CONFIG_main_socket=/tmp/r2.sock
CONFIG_main_allow_ITEM1={GHOST}
CONFIG_main_allow_ITEM2={other}
CONFIG_main_allow_LENGTH=2
CONFIG_home_TYPE=link
CONFIG_home_transport=\"ssh -o 'ServerAliveInterval 5' home r2 connect -\"
CONFIG_home_node={GHOST}
CONFIG_home_layer=stream
CONFIG_off_TYPE=link
CONFIG_off_transport='socat tcp:example.com:47210 -'
CONFIG_off_enabled=0
CONFIG_bare_TYPE=link
CONFIG_misc_TYPE=other
CONFIG_misc_transport=cat"
    );
    let (out, err) = start_service(&s, &config, "");
    assert_eq!(
        out,
        format!(
            "instance r2d
command /usr/bin/r2d -s /tmp/r2.sock -k /srv/r2/key -p --no-transit --keepalive 0.5 --allow {GHOST} --allow {other} '{tun}'
{RESPAWN}instance link_home
command /usr/bin/r2 connect -r -n {GHOST} --layer stream 'ssh -o '\\''ServerAliveInterval 5'\\'' home r2 connect -'
env R2_SOCKET=/tmp/r2.sock
{RESPAWN}reload trigger r2
"
        )
    );
    assert_eq!(err, "r2d: link bare has no transport; not started\n");

    // A disabled daemon: nothing, not even its links.
    let (out, _) = start_service(&s, &format!("{config}\nCONFIG_main_enabled=0"), "");
    assert_eq!(out, "reload trigger r2\n");
}

/// The command line that start_service builds, run: r2d takes it, keeps its
/// key where key_file says, and refuses a tunnel from a neighbour that --allow
/// does not name.
#[test]
fn openwrt_command_line_runs_r2d() {
    let s = Scratch::new("owrt");
    let sock = s.path("o.sock");
    let key_file = s.path("state/key");
    let config = format!(
        "CONFIG_SECTIONS=main
CONFIG_main_TYPE=daemon
CONFIG_main_tunnel='cat'
CONFIG_main_no_transit=1
CONFIG_main_socket='{}'
CONFIG_main_key_file='{}'
CONFIG_main_allow_ITEM1={GHOST}
CONFIG_main_allow_LENGTH=1",
        sock.display(),
        key_file.display()
    );
    let (out, _) = start_service(&s, &config, &format!("PROG='{}'", s.path("bin/r2d").display()));
    let cmd = out.lines().find_map(|l| l.strip_prefix("command ")).unwrap();
    let mut c = Command::new("/bin/sh");
    c.arg("-c").arg(format!("exec {cmd}")).stdin(Stdio::null()).stdout(Stdio::null());
    let mut d = Proc::spawn(c, "r2d", &s.path("r2d.log"));
    let mut id = String::new();
    wait_for("r2d to answer", SOON, || {
        assert!(d.is_running(), "r2d {cmd}: {}", fs::read_to_string(s.path("r2d.log")).unwrap_or_default());
        let o = s.r2(&sock, &["id"]);
        id = stdout_of(&o).trim().to_string();
        o.status.success()
    });
    let key = fs::read_to_string(&key_file).unwrap();
    assert!(
        key.starts_with("r2 key 1\n") && key.ends_with(&format!("\nid {id}\n")),
        "the key is kept in key_file: {key}"
    );
    // A neighbour that --allow does not name.
    let a = Daemon::start(&s, "a", &[]);
    let _link = connect(&s, &a, &[], &format!("R2_SOCKET={} r2 connect -", sock.display()), "link");
    a.wait_neighbours(&s, &[&id], SOON);
    let o = s.r2(&a.sock, &["tunnel", &id, "-"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(stderr_of(&o).contains("not allowed"), "--allow is in force: {}", show(&o));
}

#[test]
fn install_openwrt_puts_init_script_and_keeps_config() {
    let s = Scratch::new("owi");
    let root = s.path("root");
    let dest = format!("DESTDIR={}", root.display());
    let o = make(&["install-openwrt", &dest]);
    assert!(o.status.success(), "make install-openwrt: {}", show(&o));
    let mode = |p: &str| fs::metadata(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}")).permissions().mode() & 0o777;
    assert_eq!(mode("etc/init.d/r2d"), 0o755);
    assert_eq!(mode("etc/config/r2"), 0o644);
    assert_eq!(mode("lib/upgrade/keep.d/r2"), 0o644);
    // A second install keeps the config that the user changed.
    fs::write(root.join("etc/config/r2"), "config daemon 'main'\n").unwrap();
    let o = make(&["install-openwrt", &dest]);
    assert!(o.status.success(), "make install-openwrt again: {}", show(&o));
    assert_eq!(fs::read_to_string(root.join("etc/config/r2")).unwrap(), "config daemon 'main'\n");
    let o = make(&["uninstall-openwrt", &dest]);
    assert!(o.status.success(), "make uninstall-openwrt: {}", show(&o));
    let left: Vec<_> = walk(&root).into_iter().filter(|p| !p.is_dir()).collect();
    assert_eq!(left, vec![root.join("etc/config/r2")], "uninstall-openwrt keeps only the config");
}

/// A UCI config file in the stubs' layout: `config TYPE 'NAME'`, `option
/// KEY 'VALUE'` and `list KEY 'VALUE'` lines (values quoted with ' or ", or
/// bare), # comments.
fn uci_to_stubs(text: &str) -> String {
    let (mut out, mut sections, mut section) = (String::new(), Vec::new(), String::new());
    let mut lists = std::collections::HashMap::<String, usize>::new();
    for line in text.lines() {
        let mut words = Vec::new();
        let mut rest = line.trim();
        while !rest.is_empty() && !rest.starts_with('#') {
            let (word, tail) = match rest.chars().next() {
                Some(q @ ('\'' | '"')) => {
                    let end = rest[1..].find(q).unwrap_or_else(|| panic!("unclosed quote: {line}")) + 1;
                    (&rest[1..end], &rest[end + 1..])
                }
                _ => rest.split_at(rest.find(char::is_whitespace).unwrap_or(rest.len())),
            };
            words.push(word.to_string());
            rest = tail.trim_start();
        }
        let sh = |v: &str| format!("'{}'", v.replace('\'', r"'\''"));
        match words.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            [] => {}
            ["config", kind, name] => {
                section = name.to_string();
                sections.push(section.clone());
                out += &format!("CONFIG_{section}_TYPE={kind}\n");
            }
            ["option", key, value] => out += &format!("CONFIG_{section}_{key}={}\n", sh(value)),
            ["list", key, value] => {
                let n = lists.entry(format!("{section}_{key}")).or_default();
                *n += 1;
                out += &format!("CONFIG_{section}_{key}_ITEM{n}={}\nCONFIG_{section}_{key}_LENGTH={n}\n", sh(value));
            }
            _ => panic!("not a UCI line this test reads: {line}"),
        }
    }
    format!("CONFIG_SECTIONS='{}'\n{out}", sections.join(" "))
}

/// The shipped /etc/config/r2 as it is, and with its commented examples
/// taken in.
#[test]
fn openwrt_sample_config_starts_the_daemon() {
    let s = Scratch::new("owc");
    let text = fs::read_to_string(repo().join("dist/openwrt/r2.config")).unwrap();
    let (out, err) = start_service(&s, &uci_to_stubs(&text), "");
    assert_eq!(
        out,
        format!("instance r2d\ncommand /usr/bin/r2d -s /var/run/r2.sock -k /etc/r2/key\n{RESPAWN}reload trigger r2\n")
    );
    assert_eq!(err, "");
    let examples: String = text
        .lines()
        .map(|l| {
            let t = l.trim_start().trim_start_matches('#').trim_start();
            if ["config ", "option ", "list "].iter().any(|k| t.starts_with(k)) {
                format!("{t}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let (out, err) = start_service(&s, &uci_to_stubs(&examples), "");
    let tun = "socat TUN:10.0.0.2/24,tun-type=tun,iff-no-pi,iff-up,tun-name=r20 -";
    assert_eq!(
        out,
        format!(
            "instance r2d
command /usr/bin/r2d -s /var/run/r2.sock -k /etc/r2/key -p --no-transit --keepalive 2 --allow {GHOST} '{tun}'
{RESPAWN}instance link_home
command /usr/bin/r2 connect -r -n {GHOST} --layer auto 'socat tcp:example.com:47210 -'
env R2_SOCKET=/var/run/r2.sock
{RESPAWN}reload trigger r2
"
        )
    );
    assert_eq!(err, "");
}
