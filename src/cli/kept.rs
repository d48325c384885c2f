//! `r2 connect -r`: a kept link. Whenever the link ends, the transport runs
//! again after a backoff (1 s doubling to 60 s, with jitter; back to 1 s
//! after a link that stayed up a minute), until a signal ends it (exit 0)
//! or the daemon goes away (exit 1).

use super::connect::{start, Args};
use super::transport::hand_over;
use super::units::secs1;
use super::{Error, Global, Result};
use crate::client::Control;
use crate::wire::control::Request;
use log::{info, warn};
use nix::sys::signal::{SigSet, Signal};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The first wait, and the wait after a link that was steady.
const FIRST: Duration = Duration::from_secs(1);
/// The longest wait.
const MOST: Duration = Duration::from_secs(60);
/// A link up this long was steady: the backoff starts again.
const STEADY: Duration = Duration::from_secs(60);

/// The waits between attempts: exponential, with ±25 % jitter so that
/// many clients of one daemon do not come back in step.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(seed: u64) -> Backoff {
        Backoff { base: FIRST, rng: seed | 1 }
    }

    /// The wait before the next attempt, after one whose link stayed up
    /// for `up` (None: it never came up).
    pub fn next(&mut self, up: Option<Duration>) -> Duration {
        if up.is_some_and(|u| u >= STEADY) {
            self.base = FIRST;
        }
        // xorshift64: jitter needs no more.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let permille = 750 + self.rng % 501;
        let wait = (self.base * permille as u32 / 1000).clamp(FIRST, MOST);
        self.base = (self.base * 2).min(MOST);
        wait
    }
}

/// What a signal stops: the current attempt's control connection (shut
/// down, which ends the link), and the wait between attempts.
struct Stop {
    state: Mutex<Stopping>,
    wake: Condvar,
}

#[derive(Default)]
struct Stopping {
    stopped: bool,
    current: Option<UnixStream>,
}

impl Stop {
    /// Blocks SIGTERM, SIGINT and SIGHUP in this process (the programs it
    /// runs start with none blocked) and takes them on a thread of their own.
    fn install() -> Result<Arc<Stop>> {
        let mut set = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            set.add(s);
        }
        set.thread_block().map_err(|e| Error::Failed(format!("cannot block signals: {e}")))?;
        let stop = Arc::new(Stop { state: Mutex::default(), wake: Condvar::new() });
        let s = stop.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                while set.wait().is_ok() {
                    let mut st = s.lock();
                    st.stopped = true;
                    if let Some(c) = st.current.take() {
                        let _ = c.shutdown(Shutdown::Both);
                    }
                    s.wake.notify_all();
                }
            })
            .map_err(|e| Error::Failed(format!("cannot start the signal thread: {e}")))?;
        Ok(stop)
    }

    fn lock(&self) -> MutexGuard<'_, Stopping> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopped(&self) -> bool {
        self.lock().stopped
    }

    /// Lets a signal end this connection; false if one came already.
    fn watch(&self, c: &Control) -> bool {
        let mut st = self.lock();
        st.current = c.handle().ok();
        !st.stopped
    }

    fn unwatch(&self) {
        self.lock().current = None;
    }

    /// Waits `d`, or less if a signal comes: false then.
    fn sleep(&self, d: Duration) -> bool {
        let st = self.lock();
        let (st, _) = self.wake.wait_timeout_while(st, d, |st| !st.stopped).unwrap_or_else(|e| e.into_inner());
        !st.stopped
    }
}

/// A seed for the jitter that differs between processes.
fn seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32)
}

/// Keeps the link up until a signal or the daemon's end.
pub fn run(g: &Global, a: Args) -> Result<i32> {
    let stop = Stop::install()?;
    let mut backoff = Backoff::new(seed());
    let (mut attempt, mut returns) = (0u64, 0u64);
    let socket = g.socket();
    loop {
        attempt += 1;
        let mut control = Control::connect(&socket)
            .map_err(|e| Error::Failed(format!("{e}: the daemon is gone; the link is not kept")))?;
        if !stop.watch(&control) {
            break;
        }
        info!("attempt {attempt}: {}", a.transport);
        let t0 = Instant::now();
        let (handed, mut t) = match start(&a) {
            Ok((mut t, layer, why)) => {
                let label = a.transport.clone();
                let req = Request::Connect {
                    expect: a.expect,
                    label,
                    layer: layer.encode(),
                    why,
                    returns: Some(returns),
                    plaintext: a.plaintext,
                };
                (hand_over(&mut control, &req, &mut t), Some(t))
            }
            Err(e) => (super::transport::Handed { outcome: Err(e), linked: None, daemon_gone: false }, None),
        };
        stop.unwatch();
        drop(control);
        if stop.stopped() {
            if let Some(t) = &mut t {
                t.end();
            }
            break;
        }
        if let Some(t) = &mut t {
            t.reap();
        }
        let up = handed.linked.map(|at| at.elapsed());
        if up.is_some() {
            returns += 1;
        }
        let how = match (&handed.outcome, up) {
            (Ok(_), Some(u)) => format!("the link ended at end-of-file after {} s", secs1(u)),
            (Ok(_), None) => "the transport ended before the link was up".to_string(),
            (Err(Error::Failed(m) | Error::Usage(m)), Some(u)) => {
                format!("the link ended after {} s: {m}", secs1(u))
            }
            (Err(Error::Failed(m) | Error::Usage(m)), None) => {
                format!("no link after {} s: {m}", secs1(t0.elapsed()))
            }
        };
        if handed.daemon_gone && Control::connect(&socket).is_err() {
            return Err(Error::Failed(format!("{how}; the daemon is gone; the link is not kept")));
        }
        let wait = backoff.next(up);
        warn!("attempt {attempt}: {how}; next attempt in {} s", secs1(wait));
        if !stop.sleep(wait) {
            break;
        }
    }
    info!("stopped by a signal: the link is ended");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn backs_off_from_one_second_to_a_minute_with_jitter() {
        let mut b = Backoff::new(42);
        let waits: Vec<f64> = (0..10).map(|_| secs(b.next(None))).collect();
        let bases = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0];
        for (w, base) in waits.iter().zip(bases) {
            assert!(*w >= (base * 0.75f64).max(1.0) - 1e-9 && *w <= (base * 1.25f64).min(60.0) + 1e-9, "{waits:?}");
        }
        // Links that came up but did not last do not reset it.
        assert!(secs(b.next(Some(Duration::from_secs(59)))) >= 45.0);
        // One that stayed up a minute does.
        assert!(secs(b.next(Some(STEADY))) <= 1.25);
        assert!(secs(b.next(None)) >= 1.5);
    }

    #[test]
    fn jitter_differs_between_seeds_and_is_spread() {
        let waits: Vec<Duration> = (1..50u64).map(|s| Backoff::new(s * 7919).next(None)).collect();
        let (lo, hi) =
            (waits.iter().min().copied().unwrap_or_default(), waits.iter().max().copied().unwrap_or_default());
        assert!(
            lo >= FIRST && hi <= Duration::from_millis(1250) && hi - lo >= Duration::from_millis(100),
            "{lo:?} {hi:?}"
        );
    }
}
