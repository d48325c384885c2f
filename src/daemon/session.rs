//! A tunnel end's state, with no I/O: flow control, half-close and exit.
//!
//! Both ends of a tunnel are one machine (r2.7, "Tunnels"): data from the
//! peer is counted against the credit granted it ([`Flow`]) and given to
//! the program, whose writes grant credit back; the peer's Eof closes the
//! program's input; the program's end of output is sent as Eof. The far
//! side reports its process's exit status with Exit once its output has
//! ended; the caller's side is done once it has the status, the peer's
//! Eof, and all of the data written out. [`Session`] keeps those facts
//! and says what follows from each event; `tunnels` does the I/O.

use crate::router::PortId;
use crate::wire::tunnel::TunnelMsg;
use crate::wire::NodeId;

/// Names a tunnel end: the caller's by its endpoint's port, the far side's
/// by the caller's endpoint id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    Caller(PortId),
    Instance(NodeId),
}

/// The receiving half of flow control: how much the peer may still send,
/// and when to grant more.
#[derive(Debug)]
pub struct Flow {
    window: u64,
    peer_credit: u64,
    unacked: u64,
}

/// The peer sent more than it was granted: the tunnel is over.
#[derive(Debug, PartialEq, Eq)]
pub struct OverCredit;

impl Flow {
    /// The peer starts with `window` bytes of credit.
    pub fn new(window: u32) -> Flow {
        Flow { window: window as u64, peer_credit: window as u64, unacked: 0 }
    }

    /// `n` bytes of data arrived.
    pub fn received(&mut self, n: usize) -> Result<(), OverCredit> {
        self.received_u64(n as u64)
    }

    /// `n` bytes of data arrived or were lost on the way.
    pub fn received_u64(&mut self, n: u64) -> Result<(), OverCredit> {
        self.peer_credit = self.peer_credit.checked_sub(n).ok_or(OverCredit)?;
        Ok(())
    }

    /// `n` bytes were written out (or discarded): returns a grant to send
    /// once half a window has drained.
    pub fn written(&mut self, n: usize) -> Option<u32> {
        self.unacked += n as u64;
        if self.unacked < self.window / 2 {
            return None;
        }
        let g = self.unacked.min(u32::MAX as u64);
        self.unacked -= g;
        self.peer_credit += g;
        Some(g as u32)
    }
}

/// What a message from the peer asks of the tunnel end.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Give the `n` bytes of data to the program.
    Deliver(usize),
    /// Give the `n` bytes of a datagram to the program; `lost` bytes sent
    /// before it never came, and are granted back at once; a datagram that
    /// comes after those counted lost is not `counted` again.
    DeliverDatagram { n: usize, lost: u64, counted: bool },
    /// Close the program's input once what is queued is written.
    CloseInput,
    /// The peer may be sent `n` more bytes.
    AddCredit(u32),
    /// Nothing to do now (an Exit noted, an Open after the start).
    Nothing,
}

/// One tunnel end's state.
#[derive(Debug)]
pub struct Session {
    caller: bool,
    flow: Flow,
    /// The peer's direction has ended.
    got_eof: bool,
    /// The program's output has ended, and Eof is sent.
    sent_eof: bool,
    /// The tunnel process's exit status (on the caller's side: as reported).
    exit: Option<u8>,
    exit_sent: bool,
    /// The program's input is closed, or its writer gone.
    input_closed: bool,
    /// The program's input failed: later data is discarded.
    input_failed: bool,
    /// Datagram bytes queued for the program's writer that were not
    /// counted against the peer's credit.
    datagrams_queued: usize,
    /// Where the peer's next datagram starts.
    datagram_next: u64,
}

impl Session {
    /// The caller's end (`caller`) or an instance, granting `window`.
    pub fn new(caller: bool, window: u32) -> Session {
        Session {
            caller,
            flow: Flow::new(window),
            got_eof: false,
            sent_eof: false,
            exit: None,
            exit_sent: false,
            input_closed: false,
            input_failed: false,
            datagrams_queued: 0,
            datagram_next: 0,
        }
    }

    /// A message from the peer. Err: data beyond its credit.
    pub fn on_message(&mut self, m: &TunnelMsg<'_>) -> Result<Step, OverCredit> {
        Ok(match *m {
            TunnelMsg::Data(d) => {
                self.flow.received(d.len())?;
                Step::Deliver(d.len())
            }
            TunnelMsg::Eof => {
                self.got_eof = true;
                Step::CloseInput
            }
            TunnelMsg::Credit(n) => Step::AddCredit(n),
            TunnelMsg::Datagram { offset, data } => {
                let n = data.len();
                if offset < self.datagram_next {
                    return Ok(Step::DeliverDatagram { n, lost: 0, counted: false });
                }
                let lost = offset - self.datagram_next;
                self.flow.received_u64(lost.saturating_add(n as u64))?;
                self.datagram_next = offset.checked_add(n as u64).ok_or(OverCredit)?;
                Step::DeliverDatagram { n, lost, counted: true }
            }
            TunnelMsg::Exit(s) if self.caller => {
                self.exit = Some(s);
                Step::Nothing
            }
            TunnelMsg::Exit(_) | TunnelMsg::Open { .. } => Step::Nothing,
        })
    }

    /// `n` bytes of data reached the program by way of a link's reader:
    /// they count against the peer's credit as if they had come here.
    pub fn delivered(&mut self, n: usize) -> Result<(), OverCredit> {
        self.flow.received(n)
    }

    /// `n` bytes were written to the program, or discarded: a grant to
    /// send, if one is due. Datagram bytes left to the writer are not
    /// granted back: they were never counted.
    pub fn written(&mut self, n: usize) -> Option<u32> {
        let uncounted = n.min(self.datagrams_queued);
        self.datagrams_queued -= uncounted;
        self.flow.written(n - uncounted)
    }

    /// A datagram of `n` bytes that was not counted was left to the
    /// program's writer, which will report it written.
    pub fn datagram_queued(&mut self, n: usize) {
        self.datagrams_queued += n;
    }

    /// Whether data for the program is discarded (its input failed).
    pub fn input_failed(&self) -> bool {
        self.input_failed
    }

    /// The program's input is closed; `failed`: by an error.
    pub fn input_closed(&mut self, failed: bool) {
        self.input_closed = true;
        self.input_failed |= failed;
    }

    /// The program's output has ended: Eof is sent.
    pub fn output_ended(&mut self) {
        self.sent_eof = true;
    }

    /// The instance's process exited with `status`.
    pub fn exited(&mut self, status: u8) {
        self.exit = Some(status);
    }

    /// The exit status as known, on either side.
    pub fn exit(&self) -> Option<u8> {
        self.exit
    }

    /// For an instance: the Exit to send now, once (its process has exited
    /// and its output has ended).
    pub fn exit_due(&mut self) -> Option<u8> {
        match (self.caller, self.sent_eof, self.exit, self.exit_sent) {
            (false, true, Some(s), false) => {
                self.exit_sent = true;
                Some(s)
            }
            _ => None,
        }
    }

    /// For the caller: all is over, with the exit status reported, the
    /// peer's Eof in and the program's input written out and closed.
    pub fn caller_done(&self) -> bool {
        self.caller && self.exit.is_some() && self.got_eof && self.input_closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Datagrams lost on the way are granted back by their offsets, so a
    /// lossy path never leaks credit; a late one is delivered but not
    /// counted twice; past the credit is past it, lost or not.
    #[test]
    fn datagrams_lost_on_the_way_are_granted_back() {
        let mut s = Session::new(false, 16);
        let dg = |offset, data: &'static [u8]| TunnelMsg::Datagram { offset, data };
        assert_eq!(s.on_message(&dg(0, b"abcd")), Ok(Step::DeliverDatagram { n: 4, lost: 0, counted: true }));
        assert_eq!(s.on_message(&dg(10, b"xy")), Ok(Step::DeliverDatagram { n: 2, lost: 6, counted: true }));
        assert_eq!(s.on_message(&dg(4, b"late")), Ok(Step::DeliverDatagram { n: 4, lost: 0, counted: false }));
        s.datagram_queued(4);
        // 4 + 6 + 2 counted; the late 4 written are not granted again.
        assert_eq!(s.written(4 + 2 + 4), None);
        assert_eq!(s.written(6), Some(12));
        assert_eq!(s.on_message(&dg(2000, b"z")), Err(OverCredit));
    }

    #[test]
    fn flow_grants_at_half_a_window() {
        let mut f = Flow::new(1000);
        assert_eq!(f.received(600), Ok(()));
        assert_eq!(f.written(400), None);
        assert_eq!(f.written(200), Some(600));
        assert_eq!(f.received(1000), Ok(()));
        assert_eq!(f.received(1), Err(OverCredit));
    }

    #[test]
    fn flow_never_lets_the_peer_exceed_a_window_in_flight() {
        let mut f = Flow::new(256);
        let mut granted_total = 256u64;
        let mut sent_total = 0u64;
        for step in 0..10_000u64 {
            let n = (step * 7919 % 97 + 1) as usize;
            if sent_total + n as u64 <= granted_total {
                f.received(n).unwrap();
                sent_total += n as u64;
                if let Some(g) = f.written(n) {
                    granted_total += g as u64;
                }
            }
            assert!(granted_total - sent_total <= 256);
        }
    }

    /// The caller's life: data in and credit back, Eof, Exit; done only
    /// once the input is written out too.
    #[test]
    fn a_caller_is_done_with_status_eof_and_input_closed() {
        let mut s = Session::new(true, 100);
        assert_eq!(s.on_message(&TunnelMsg::Data(&[1; 60])), Ok(Step::Deliver(60)));
        assert_eq!(s.written(60), Some(60));
        assert_eq!(s.on_message(&TunnelMsg::Credit(7)), Ok(Step::AddCredit(7)));
        assert_eq!(s.on_message(&TunnelMsg::Exit(3)), Ok(Step::Nothing));
        assert!(!s.caller_done());
        assert_eq!(s.on_message(&TunnelMsg::Eof), Ok(Step::CloseInput));
        assert!(!s.caller_done(), "the input is not written out yet");
        s.input_closed(false);
        assert!(s.caller_done());
        assert_eq!((s.exit(), s.exit_due()), (Some(3), None), "a caller sends no Exit");
    }

    /// An instance sends Exit once, after its output has ended and its
    /// process has exited, in either order; a peer's Exit means nothing.
    #[test]
    fn an_instance_sends_exit_once_after_eof() {
        for output_first in [true, false] {
            let mut s = Session::new(false, 100);
            assert_eq!(s.on_message(&TunnelMsg::Exit(9)), Ok(Step::Nothing));
            assert_eq!(s.exit(), None);
            if output_first {
                s.output_ended();
                assert_eq!(s.exit_due(), None);
                s.exited(0);
            } else {
                s.exited(0);
                assert_eq!(s.exit_due(), None, "output still flowing");
                s.output_ended();
            }
            assert_eq!(s.exit_due(), Some(0));
            assert_eq!(s.exit_due(), None);
            assert!(!s.caller_done());
        }
    }

    /// Data beyond the credit is refused, whether it comes through the
    /// loop or by a link's reader.
    #[test]
    fn data_beyond_credit_is_refused() {
        let mut s = Session::new(false, 10);
        assert_eq!(s.on_message(&TunnelMsg::Data(&[0; 8])), Ok(Step::Deliver(8)));
        assert_eq!(s.delivered(3), Err(OverCredit));
        let mut s = Session::new(true, 10);
        assert_eq!(s.delivered(10), Ok(()));
        assert_eq!(s.on_message(&TunnelMsg::Data(&[0])), Err(OverCredit));
        s.input_closed(true);
        assert!(s.input_failed());
    }
}
