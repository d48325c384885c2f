//! One control-socket client: checked by peer credentials, its request read
//! (with any fds passed along), then handed to the event loop.

use super::input::Input;
use crate::sys::channel::Sender;
use crate::sys::fdpass::recv_with_fds;
use crate::wire::control::{frame_len, Reply, Request};
use crate::wire::NodeId;
use log::{debug, warn};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::geteuid;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts clients forever, one short-lived thread each.
pub fn accept_loop(listener: UnixListener, own: NodeId, events: Sender<Input>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let events = events.clone();
                let spawned = std::thread::Builder::new()
                    .name("control".into())
                    .stack_size(128 * 1024)
                    .spawn(move || serve(stream, own, events));
                if let Err(e) = spawned {
                    warn!("cannot start a control thread: {e}");
                }
            }
            Err(e) => {
                warn!("accept on the control socket: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn serve(mut stream: UnixStream, own: NodeId, events: Sender<Input>) {
    if let Err(text) = check_peer(&stream) {
        warn!("control client refused: {text}");
        let _ = stream.write_all(&Reply::Error(text).encode());
        return;
    }
    let (req, fds) = match read_request(&stream) {
        Ok(r) => r,
        Err(e) => {
            debug!("control client: {e}");
            let _ = stream.write_all(&Reply::Error(e).encode());
            return;
        }
    };
    let _ = stream.set_read_timeout(None);
    let input = match req {
        Request::Id => {
            let _ = stream.write_all(&Reply::Id(own).encode());
            return;
        }
        Request::List => Input::List { stream },
        Request::Stats => Input::Stats { stream },
        Request::Endpoint => Input::Endpoint { stream },
        Request::Connect { expect, label, layer, why, returns, plaintext } => {
            let Some(layer) = crate::link::Layer::decode(&layer) else {
                let _ = stream.write_all(&Reply::Error(format!("unknown link layer {layer:?}")).encode());
                return;
            };
            let mut fds = fds.into_iter();
            let (Some(rfd), Some(wfd)) = (fds.next(), fds.next()) else {
                let text = "connect needs two file descriptors".to_string();
                let _ = stream.write_all(&Reply::Error(text).encode());
                return;
            };
            Input::Connect { stream, rfd, wfd, expect, label, layer, why, returns, plaintext }
        }
        Request::Tunnel { path, packet } => {
            let mut fds = fds.into_iter();
            let (Some(rfd), Some(wfd)) = (fds.next(), fds.next()) else {
                let text = "tunnel needs two file descriptors".to_string();
                let _ = stream.write_all(&Reply::Error(text).encode());
                return;
            };
            if path.is_empty() || path.len() > crate::wire::id::MAX_HOPS || path.iter().any(|h| h.is_reserved()) {
                let _ = stream.write_all(&Reply::Error("bad path".into()).encode());
                return;
            }
            Input::Tunnel { stream, rfd, wfd, path, packet }
        }
    };
    let _ = events.send(input);
}

/// Allows the daemon's own user and root.
fn check_peer(stream: &UnixStream) -> Result<(), String> {
    let cred = getsockopt(stream, PeerCredentials).map_err(|e| format!("no peer credentials: {e}"))?;
    let (uid, me) = (cred.uid(), geteuid().as_raw());
    if uid == me || uid == 0 {
        Ok(())
    } else {
        Err(format!("permission denied: uid {uid} is neither this daemon's user (uid {me}) nor root"))
    }
}

/// Reads one request frame and the fds that came with it.
fn read_request(stream: &UnixStream) -> Result<(Request, Vec<OwnedFd>), String> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let mut have = 0;
    let mut fds = Vec::new();
    let mut want: Option<usize> = None;
    loop {
        if let Some(n) = want {
            if have >= 4 + n {
                break;
            }
        }
        let (n, mut got) = recv_with_fds(stream, &mut buf[have..]).map_err(|e| format!("reading request: {e}"))?;
        fds.append(&mut got);
        if n == 0 {
            return Err("client closed before its request was complete".into());
        }
        have += n;
        if want.is_none() && have >= 4 {
            let n = frame_len([buf[0], buf[1], buf[2], buf[3]]).map_err(|e| e.to_string())?;
            buf.resize(4 + n, 0);
            want = Some(n);
        }
        if have > buf.len() - 1 && want.is_none() {
            return Err("request too long".into());
        }
    }
    let n = want.unwrap_or(0);
    let req = Request::decode(&buf[4..4 + n]).map_err(|e| e.to_string())?;
    Ok((req, fds))
}
