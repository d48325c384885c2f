//! Channels whose receiver sleeps without spinning: crossbeam-channel's
//! queue, and a condition variable for a receiver that finds it empty.
//!
//! crossbeam's blocking receive tries the queue again and again before it
//! sleeps, and from its seventh try on yields the CPU (`sched_yield`), four
//! times. The daemon's loop, a link's writer and a robust link's sender
//! wait so for every message they are sent, and on two cores that a data
//! path's processes keep busy each yield hands the CPU to another thread
//! and back. Measured by hand, two daemons, 512 MiB through a tunnel into
//! `cat` over a `socat -b 65536 tcp` link, 6 runs each, interleaved: 482–684
//! MiB/s (median 584) with crossbeam's wait, 516–821 (648) with this one;
//! over a `socat udp` link with `rcvbuf=4194304`, 256 MiB, 4 runs: 266–304
//! against 291–347, the daemons' CPU 48–57 against 43–57 ticks.
//!
//! A receiver that finds the queue empty says that it waits, looks once
//! more, and sleeps; a sender wakes it only then, and otherwise costs one
//! fence and one load more than crossbeam's send. Each side's fence orders
//! its write before its read, so either the receiver's second look finds
//! the message or the sender sees the receiver waiting; a sender's wake-up
//! first takes the lock that the receiver holds until it sleeps, so none
//! is lost. A [`Poke`] wakes the receiver without a message.

pub use crossbeam_channel::{RecvError, RecvTimeoutError, SendError, TryRecvError};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What a sender and the receiver share, besides the queue.
#[derive(Default)]
struct Wake {
    /// The receiver sleeps, or is about to (set under `lock`).
    waiting: AtomicBool,
    /// A [`Poke`] the receiver has not seen.
    poked: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Wake {
    /// Wakes the receiver if it waits; call after the write it is to see.
    /// Taking the lock (and leaving it) is what makes sure that the
    /// receiver sleeps on the condition variable by now; it is notified
    /// after, so that it does not wake to a lock still held.
    fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) {
            drop(super::lock(&self.lock));
            self.cv.notify_one();
        }
    }
}

/// A channel of unlimited length.
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    wrap(crossbeam_channel::unbounded())
}

/// A channel that holds at most `cap` messages: a sender waits while it is
/// full (crossbeam's send, which the receiver's next take wakes).
pub fn bounded<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    wrap(crossbeam_channel::bounded(cap))
}

fn wrap<T>((tx, rx): (crossbeam_channel::Sender<T>, crossbeam_channel::Receiver<T>)) -> (Sender<T>, Receiver<T>) {
    let wake = Arc::new(Wake::default());
    (Sender { tx: Some(tx), wake: wake.clone() }, Receiver { rx, wake })
}

pub struct Sender<T> {
    /// None only while it is dropped.
    tx: Option<crossbeam_channel::Sender<T>>,
    wake: Arc<Wake>,
}

impl<T> Sender<T> {
    /// Queues `msg`, waking the receiver if it sleeps; the message comes
    /// back if the receiver is gone.
    pub fn send(&self, msg: T) -> Result<(), SendError<T>> {
        let Some(tx) = &self.tx else { return Err(SendError(msg)) };
        tx.send(msg)?;
        self.wake.wake();
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender { tx: self.tx.clone(), wake: self.wake.clone() }
    }
}

impl<T> Drop for Sender<T> {
    /// The last sender's end is the channel's end, which a sleeping
    /// receiver must see: any sender's drop wakes it to look.
    fn drop(&mut self) {
        self.tx = None;
        self.wake.wake();
    }
}

/// Wakes a channel's receiver without a message: a sleeping one at once,
/// else at its next wait. Wake-ups do not add up.
#[derive(Clone)]
pub struct Poke(Arc<Wake>);

impl Poke {
    pub fn poke(&self) {
        self.0.poked.store(true, Ordering::Relaxed);
        self.0.wake();
    }
}

/// What [`Receiver::wait_timeout`] ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited<T> {
    Message(T),
    Poked,
    TimedOut,
    /// Every sender is gone and the queue is empty.
    Disconnected,
}

/// The one receiving end (not `Clone`: one thread waits on it).
pub struct Receiver<T> {
    rx: crossbeam_channel::Receiver<T>,
    wake: Arc<Wake>,
}

impl<T> Receiver<T> {
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.rx.try_recv()
    }

    /// Waits for a message; an error once every sender is gone.
    pub fn recv(&self) -> Result<T, RecvError> {
        loop {
            match self.wait(None, true) {
                Waited::Message(m) => return Ok(m),
                Waited::Disconnected => return Err(RecvError),
                Waited::Poked | Waited::TimedOut => {}
            }
        }
    }

    /// Waits for a message until `deadline`.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<T, RecvTimeoutError> {
        loop {
            match self.wait(Some(deadline), true) {
                Waited::Message(m) => return Ok(m),
                Waited::Disconnected => return Err(RecvTimeoutError::Disconnected),
                Waited::TimedOut => return Err(RecvTimeoutError::Timeout),
                Waited::Poked => {}
            }
        }
    }

    /// Waits at most `timeout` for a message or a poke.
    pub fn wait_timeout(&self, timeout: Duration) -> Waited<T> {
        self.wait(Instant::now().checked_add(timeout), true)
    }

    /// Sleeps at most `timeout`, until a poke; messages wait.
    pub fn sleep(&self, timeout: Duration) {
        self.wait(Instant::now().checked_add(timeout), false);
    }

    /// A handle that wakes this receiver.
    pub fn poke(&self) -> Poke {
        Poke(self.wake.clone())
    }

    /// Waits for a poke or (if `take`) a message, until `deadline` (None:
    /// for ever).
    fn wait(&self, deadline: Option<Instant>, take: bool) -> Waited<T> {
        let look = || {
            // Loaded first: most channels are never poked, and a swap is
            // a locked instruction on every receive.
            if self.wake.poked.load(Ordering::Relaxed) && self.wake.poked.swap(false, Ordering::Relaxed) {
                return Some(Waited::Poked);
            }
            match take.then(|| self.rx.try_recv()) {
                Some(Ok(m)) => Some(Waited::Message(m)),
                Some(Err(TryRecvError::Disconnected)) => Some(Waited::Disconnected),
                Some(Err(TryRecvError::Empty)) | None => None,
            }
        };
        if let Some(w) = look() {
            return w;
        }
        let mut held = super::lock(&self.wake.lock);
        self.wake.waiting.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let waited = loop {
            if let Some(w) = look() {
                break w;
            }
            held = match deadline {
                None => self.wake.cv.wait(held).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break Waited::TimedOut;
                    }
                    match self.wake.cv.wait_timeout(held, d - now) {
                        Ok((g, _)) => g,
                        Err(e) => e.into_inner().0,
                    }
                }
            };
        };
        self.wake.waiting.store(false, Ordering::Relaxed);
        drop(held);
        waited
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    const BOUND: Duration = Duration::from_secs(20);

    #[test]
    fn messages_in_order_and_the_end() {
        let (tx, rx) = unbounded();
        for i in 0..3 {
            tx.send(i).unwrap();
        }
        assert_eq!(rx.try_recv(), Ok(0));
        assert_eq!(rx.recv(), Ok(1));
        assert_eq!(rx.recv_deadline(Instant::now() + BOUND), Ok(2));
        let t0 = Instant::now();
        assert_eq!(rx.recv_deadline(t0 + Duration::from_millis(30)), Err(RecvTimeoutError::Timeout));
        assert!(t0.elapsed() >= Duration::from_millis(30));
        let tx2 = tx.clone();
        drop(tx);
        tx2.send(9).unwrap();
        drop(tx2);
        assert_eq!(rx.recv(), Ok(9), "what was sent is received after the end");
        assert_eq!(rx.recv(), Err(RecvError));
        drop(rx);
        let (tx, rx) = unbounded::<u8>();
        drop(rx);
        assert_eq!(tx.send(1), Err(SendError(1)));
    }

    /// Waits until the receiver sleeps (or is about to).
    fn asleep(wake: &Wake) {
        let end = Instant::now() + BOUND;
        while !wake.waiting.load(Ordering::Relaxed) {
            assert!(Instant::now() < end, "the receiver never slept");
            thread::yield_now();
        }
    }

    /// A sleeping receiver wakes for a message, a poke and the last
    /// sender's end; a poke before the wait is not lost, nor are two kept.
    #[test]
    fn a_sleeping_receiver_wakes() {
        let (tx, rx) = unbounded::<u32>();
        let (wake, poke) = (rx.wake.clone(), rx.poke());
        let (done_tx, done) = std::sync::mpsc::channel();
        let t = thread::spawn(move || {
            done_tx.send(rx.wait_timeout(BOUND)).unwrap();
            done_tx.send(rx.wait_timeout(BOUND)).unwrap();
            rx.recv_deadline(Instant::now() + BOUND)
        });
        asleep(&wake);
        tx.send(7).unwrap();
        assert_eq!(done.recv().unwrap(), Waited::Message(7));
        asleep(&wake);
        poke.poke();
        assert_eq!(done.recv().unwrap(), Waited::Poked);
        asleep(&wake);
        drop(tx);
        assert_eq!(t.join().unwrap(), Err(RecvTimeoutError::Disconnected));

        let (tx, rx) = unbounded::<u32>();
        rx.poke().poke();
        rx.poke().poke();
        rx.sleep(BOUND);
        let t0 = Instant::now();
        tx.send(1).unwrap();
        rx.sleep(Duration::from_millis(30));
        assert!(t0.elapsed() >= Duration::from_millis(30), "a message does not end a sleep");
        assert_eq!(rx.wait_timeout(Duration::ZERO), Waited::Message(1));
        assert_eq!(rx.wait_timeout(Duration::ZERO), Waited::TimedOut);
    }

    /// Many senders, one receiver that sleeps between messages: none is
    /// lost, and none waits for a time-out to be seen.
    #[test]
    fn no_wake_up_is_lost() {
        let (tx, rx) = bounded::<(u32, u32)>(16);
        let senders: Vec<_> = (0..4)
            .map(|s| {
                let tx = tx.clone();
                thread::spawn(move || {
                    for i in 0..20_000 {
                        tx.send((s, i)).unwrap();
                        if i % 64 == 0 {
                            thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let mut next = [0u32; 4];
        let t0 = Instant::now();
        loop {
            match rx.recv_deadline(Instant::now() + BOUND) {
                Ok((s, i)) => {
                    assert_eq!(i, next[s as usize], "in order per sender");
                    next[s as usize] += 1;
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("a wake-up was lost"),
            }
        }
        assert_eq!(next, [20_000; 4]);
        for s in senders {
            s.join().unwrap();
        }
        assert!(t0.elapsed() < BOUND);
    }
}
