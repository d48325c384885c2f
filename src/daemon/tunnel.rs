//! A tunnel end's I/O: the threads around its program's pipes.
//!
//! On either side of a tunnel (the caller's `r2 tunnel`, or an instance of
//! the far daemon's tunnel process), a reader thread turns each read of
//! the program's output into one Data message, as far as the peer's
//! credit allows, and sends it on itself once the router has taught it the
//! way (`shortcuts::Outbound`); while the data comes in bulk and that way
//! is a pipe, it splices the data instead of reading it (`sys::splice`).
//! Each Data message goes to the program with one write on its input (a
//! `link::Output` in the raw framing), made by its sender while the pipe
//! takes it at once, else by a writer thread that reports it; credit is
//! granted back as data is written out (r2.7, "Flow control"). What the
//! end's state is lives in `session`.

use super::input::Input;
use super::session::{Key, Session};
use super::shortcuts::Outbound;
use crate::link::output::{output, Pending, Writer};
use crate::link::raw::Raw;
use crate::link::{lock, Sent, SharedOutput};
use crate::sys::buffers;
use crate::sys::channel::Sender;
use crate::sys::fd::{read_append, wait_ready, WakeFd, Waker};
use crate::sys::splice::Pipes;
use crate::wire::control::Traffic;
use crate::wire::message::MAX_DATA;
use crate::wire::tunnel::{data_head, DATA, DATAGRAM};
use crate::wire::Packet;
use nix::poll::PollFlags;
use std::io::ErrorKind;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;

/// The size of one packet in packet mode (pipe(7): PIPE_BUF).
pub const PACKET: usize = 4096;

/// One tunnel end: its state and the threads around its program's pipes.
pub struct TunnelEnd {
    pub session: Session,
    /// The program's input, which a link's reader may write to as well
    /// (`shortcuts::LinkRoutes::deliver`); dropped at Eof.
    to_program: Option<SharedOutput>,
    _stop_reader: Waker,
    credit: Arc<Credit>,
    since: std::time::Instant,
    /// Data given to the program.
    input: Traffic,
    /// The reader's way out, and its count of the data the program produced.
    outbound: Arc<Outbound>,
}

impl TunnelEnd {
    /// Starts the threads for a program that is read through `rfd` and
    /// written through `wfd`. `headroom`: room for the headers that the
    /// reader's packets will get. `packet`: the pipes are packet pipes.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        key: Key,
        session: Session,
        rfd: OwnedFd,
        wfd: OwnedFd,
        headroom: usize,
        packet: bool,
        outbound: Arc<Outbound>,
        events: &Sender<Input>,
    ) -> std::io::Result<TunnelEnd> {
        let (stop, wake) = crate::sys::fd::wake_pair()?;
        let credit = Arc::new(Credit::default());
        let (out, writer) = output(wfd, Arc::new(Raw { packets: packet }));
        start_writer(key, writer, events.clone())?;
        let reader =
            Reader { key, fd: rfd, stop: wake, credit: credit.clone(), headroom, packet, outbound: outbound.clone() };
        reader.start(events.clone())?;
        Ok(TunnelEnd {
            session,
            to_program: Some(Arc::new(Mutex::new(out))),
            _stop_reader: stop,
            credit,
            since: std::time::Instant::now(),
            input: Traffic::default(),
            outbound,
        })
    }

    /// `n` bytes of data went to the program (or were discarded).
    pub fn count_input(&mut self, n: usize) {
        self.input.add(n);
    }

    /// The loop has acted on the reader's last message: it may send by its
    /// shortcut again.
    pub fn handled(&self) {
        self.outbound.pending.handled();
    }

    /// The reader's way out.
    pub fn outbound(&self) -> &Arc<Outbound> {
        &self.outbound
    }

    /// How long the end has been up (ms), the data given to the program,
    /// and the data its program produced.
    pub fn traffic(&self) -> (u64, Traffic, Traffic) {
        (self.since.elapsed().as_millis() as u64, self.input, self.outbound.read())
    }

    /// The peer granted `n` more bytes.
    pub fn add_credit(&self, n: u32) {
        self.credit.add(n);
    }

    /// The program's input, while it takes data.
    pub fn program_input(&self) -> Option<&SharedOutput> {
        self.to_program.as_ref().filter(|_| !self.session.input_failed())
    }

    /// Gives data to the program: written now, left to its writer
    /// thread (which reports it), or discarded (its input has ended).
    pub fn write(&mut self, data: Packet) -> Sent {
        match self.program_input() {
            Some(out) => lock(out).send(data),
            None => Sent::Discarded,
        }
    }

    /// The peer's direction has ended: close the program's input once what
    /// was queued is written.
    pub fn close_input(&mut self) {
        self.to_program = None;
    }
}

impl Drop for TunnelEnd {
    fn drop(&mut self) {
        self.credit.close();
    }
}

/// The bytes the peer lets a tunnel's reader send, and the end's closing,
/// each of which wakes the reader. It sleeps by `thread::park`, which does
/// not spin: a channel's blocking receive spins and yields the CPU before
/// it sleeps, which a hundred readers waiting for credit at once turn into
/// thousands of context switches (see `sys::splice`).
#[derive(Default)]
struct Credit {
    bytes: AtomicI64,
    closed: AtomicBool,
    reader: OnceLock<Thread>,
}

impl Credit {
    fn add(&self, n: u32) {
        self.bytes.fetch_add(n as i64, Ordering::AcqRel);
        self.wake();
    }

    /// `n` bytes were read, to be sent.
    fn take(&self, n: usize) {
        self.bytes.fetch_sub(n as i64, Ordering::AcqRel);
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake();
    }

    fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn wake(&self) {
        if let Some(t) = self.reader.get() {
            t.unpark();
        }
    }

    /// The credit once it is at least `need` bytes, waiting for it on the
    /// calling thread (the reader's, always); None once the end is closed.
    fn wait(&self, need: i64) -> Option<usize> {
        let _ = self.reader.set(std::thread::current());
        loop {
            let c = self.bytes.load(Ordering::Acquire);
            if c >= need {
                return Some(c as usize);
            }
            if self.closed() {
                return None;
            }
            std::thread::park();
        }
    }
}

/// The reader of a program's output.
struct Reader {
    key: Key,
    fd: OwnedFd,
    stop: WakeFd,
    credit: Arc<Credit>,
    headroom: usize,
    packet: bool,
    outbound: Arc<Outbound>,
}

impl Reader {
    fn start(self, events: Sender<Input>) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("tunnel-rd".into())
            .stack_size(128 * 1024)
            .spawn(move || self.run(events))
            .map(|_| ())
    }

    /// The size of the tag (and offset) in front of the data read.
    fn head_len(&self) -> usize {
        data_head(if self.packet { DATAGRAM } else { DATA })
    }

    /// The Data message (a Datagram at `offset` in packet mode) of the
    /// `n` bytes read into `buf`: the buffer itself if they are many, else
    /// a copy, and the buffer goes back to the pool (an idle tunnel holds
    /// none).
    fn packet_of(&self, buf: &mut Vec<u8>, n: usize, offset: u64) -> Packet {
        let start = self.headroom + self.head_len();
        let mut head = vec![DATA];
        if self.packet {
            head = [&[DATAGRAM][..], &offset.to_be_bytes()].concat();
        }
        if n >= buffers::SMALL {
            buf.truncate(start + n);
            buf[self.headroom..start].copy_from_slice(&head);
            return Packet::from_parts(std::mem::take(buf), self.headroom);
        }
        let mut small = Vec::with_capacity(start + n);
        small.resize(self.headroom, 0);
        small.extend_from_slice(&head);
        small.extend_from_slice(&buf[start..start + n]);
        buffers::give(std::mem::take(buf));
        Packet::from_parts(small, self.headroom)
    }

    /// A Data message with no data yet, for data that follows in a body.
    fn header(&self) -> Packet {
        let mut b = Vec::with_capacity(self.headroom + 1);
        b.resize(self.headroom, 0);
        b.push(DATA);
        Packet::from_parts(b, self.headroom)
    }

    /// Moves at most `max` bytes of the program's output into this
    /// reader's pipe, once that is back from the last message, and sends
    /// them on as the data of one Data message.
    fn splice_once(&self, pipes: &Pipes, max: usize) -> Spliced {
        // The pipe is back once the last message's data is written out; a
        // stalled link keeps it, so look now and then whether the tunnel
        // end is gone.
        let got = loop {
            match pipes.wait_free(STALLED) {
                Some(p) => break p,
                None if self.credit.closed() => return Spliced::Stop,
                None => {}
            }
        };
        let Some(mut body) = pipes.body(got) else { return Spliced::NoPipe };
        let n = match body.fill(self.fd.as_fd(), max) {
            Ok(0) => return Spliced::Eof,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Spliced::Again,
            Err(e) if e.kind() == ErrorKind::Unsupported => return Spliced::Unsupported,
            Err(e) => return Spliced::Failed(e),
        };
        self.credit.take(n);
        match self.outbound.send_with(self.header(), Some(body)) {
            Ok(()) => Spliced::Sent(n),
            // The way out changed meanwhile: the loop gets the data itself.
            Err((p, body)) => {
                let whole = match body {
                    Some(body) => body.complete(p),
                    None => Ok(p),
                };
                match whole {
                    Ok(p) => Spliced::Back(p, n),
                    Err(e) => Spliced::Failed(e),
                }
            }
        }
    }

    fn run(self, events: Sender<Input>) {
        // A packet-mode program's packets go as datagrams.
        let need = if self.packet { PACKET as i64 } else { 1 };
        let mut offset = 0u64;
        let mut buf = Vec::new();
        // The reader's pipes for the data it splices: two, so that while
        // the link's writer thread still holds one message's (a link
        // shared by many tunnels is mostly busy), the reader fills the
        // other instead of sleeping until the first comes back. With one,
        // 100 tunnels through one link cost the daemons 1.16 s of CPU per
        // GiB; with two, 0.96 (one tunnel's, 0.77 and 0.80).
        let pipes = Pipes::new(2);
        // Whether the program's output can be spliced from (not in packet
        // mode: a splice may join packets), and whether the last read was
        // large: the reader splices while data comes in bulk and the way
        // out takes it, and reads small data, which is quicker to copy.
        let mut can_splice = !self.packet;
        let mut bulk = false;
        loop {
            let Some(avail) = self.credit.wait(need) else { return };
            let max = if self.packet { MAX_DATA } else { avail.min(MAX_DATA) };
            // Wait for data before holding a buffer: an idle tunnel holds none.
            match wait_ready(self.fd.as_fd(), PollFlags::POLLIN, Some(&self.stop)) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => log::debug!("tunnel {:?}: {e}", self.key),
            }
            let packet = if can_splice && bulk && self.outbound.splices() {
                match self.splice_once(&pipes, max) {
                    Spliced::Sent(n) => {
                        bulk = n >= buffers::SMALL;
                        continue;
                    }
                    Spliced::Again => continue,
                    Spliced::Unsupported => {
                        can_splice = false;
                        continue;
                    }
                    Spliced::NoPipe => {
                        bulk = false;
                        continue;
                    }
                    Spliced::Stop => return,
                    Spliced::Back(p, n) => {
                        bulk = n >= buffers::SMALL;
                        Some(p)
                    }
                    Spliced::Eof => None,
                    Spliced::Failed(e) => {
                        log::debug!("tunnel {:?}: {e}", self.key);
                        None
                    }
                }
            } else {
                if buf.capacity() < buffers::SIZE {
                    buf = buffers::take();
                }
                buf.resize(self.headroom + self.head_len(), 0);
                match read_append(self.fd.as_fd(), &mut buf, max) {
                    Ok(None) => continue,
                    Ok(Some(0)) => None,
                    Ok(Some(n)) if self.packet => {
                        self.credit.take(n);
                        offset += n as u64;
                        match self.outbound.send(self.packet_of(&mut buf, n, offset - n as u64)) {
                            Ok(()) => continue,
                            Err(p) => Some(p),
                        }
                    }
                    Ok(Some(n)) => {
                        self.credit.take(n);
                        bulk = n >= buffers::SMALL;
                        match self.outbound.send(self.packet_of(&mut buf, n, 0)) {
                            Ok(()) => continue,
                            Err(p) => Some(p),
                        }
                    }
                    Err(e) => {
                        log::debug!("tunnel {:?}: {e}", self.key);
                        None
                    }
                }
            };
            let eof = packet.is_none();
            self.outbound.pending.handing_over();
            if events.send(Input::TunnelRead { key: self.key, packet }).is_err() || eof {
                return;
            }
        }
    }
}

/// How often a reader waiting for its pipe looks whether its end is gone.
const STALLED: std::time::Duration = std::time::Duration::from_millis(250);

/// What became of one splice of a program's output.
enum Spliced {
    /// Its data, this many bytes, went on by the reader's shortcut.
    Sent(usize),
    /// Nothing to read after all: start again.
    Again,
    /// The output cannot be spliced from: read it.
    Unsupported,
    /// No pipe could be made: read this time.
    NoPipe,
    /// The tunnel end is gone.
    Stop,
    /// A Data message, of this many bytes of data, for the loop.
    Back(Packet, usize),
    Eof,
    Failed(std::io::Error),
}

/// Writes what the loop queued for the program, each message with one
/// write, and reports it; closes the program's input once the loop's side
/// is dropped.
fn start_writer(key: Key, writer: Writer, events: Sender<Input>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("tunnel-wr".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let mut error = None;
            let mut batch = Vec::with_capacity(1);
            while writer.next(&mut batch, 1) {
                let n = batch.iter().map(Pending::message_len).sum();
                if let Err(e) = writer.write(&mut batch) {
                    error = Some(e.to_string());
                    break;
                }
                Writer::recycle(&mut batch);
                if events.send(Input::TunnelWritten { key, n }).is_err() {
                    return;
                }
            }
            writer.finish();
            let _ = events.send(Input::TunnelWriterDone { key, error });
        })
        .map(|_| ())
}
