//! r2's Noise against `snow`, an independent implementation: each pattern,
//! with r2 as either end, agrees on every message, the handshake hash and
//! the transport keys; and what is altered or out of turn fails.

use super::*;

fn key(b: u8) -> KeyPair {
    KeyPair::from_secret([b; 32])
}

fn snow_end(
    pattern: &Pattern,
    initiator: bool,
    prologue: &[u8],
    s: &KeyPair,
    rs: Option<&[u8; 32]>,
) -> snow::HandshakeState {
    let secret = s.secret_bytes();
    let mut b = snow::Builder::new(pattern.name.parse().unwrap()).local_private_key(&secret).unwrap();
    b = b.prologue(prologue).unwrap();
    if let Some(rs) = rs {
        b = b.remote_public_key(rs).unwrap();
    }
    match initiator {
        true => b.build_initiator().unwrap(),
        false => b.build_responder().unwrap(),
    }
}

/// Runs `pattern` with r2 as the initiator (`r2_initiates`) or the
/// responder and snow as the other end, with a payload in every message;
/// then checks that transport messages pass both ways.
fn against_snow(pattern: &'static Pattern, r2_initiates: bool) {
    let prologue = b"r2 test prologue";
    let (ri, rr) = (key(1), key(2));
    let (mine, theirs) = if r2_initiates { (&ri, &rr) } else { (&rr, &ri) };
    // Who knows whose key beforehand.
    let r2_knows = (pattern.responder_known && r2_initiates).then_some(theirs.id.0);
    let snow_knows = (pattern.responder_known && !r2_initiates).then_some(mine.id.0);
    let mut r2 = Handshake::new(pattern, r2_initiates, prologue, mine.clone(), [9; 32], r2_knows).unwrap();
    let mut sn = snow_end(pattern, !r2_initiates, prologue, theirs, snow_knows.as_ref());
    let mut buf = vec![0u8; 65535];
    for (i, _) in pattern.messages.iter().enumerate() {
        let payload = vec![i as u8 + 0x40; i * 7];
        if r2.my_turn() {
            let mut msg = Vec::new();
            r2.write_message(&payload, &mut msg).unwrap();
            let n =
                sn.read_message(&msg, &mut buf).unwrap_or_else(|e| panic!("{} message {i}: snow: {e}", pattern.name));
            assert_eq!(&buf[..n], &payload[..]);
        } else {
            let n = sn.write_message(&payload, &mut buf).unwrap();
            let mut got = Vec::new();
            r2.read_message(&buf[..n], &mut got).unwrap_or_else(|e| panic!("{} message {i}: r2: {e}", pattern.name));
            assert_eq!(got, payload);
        }
    }
    assert!(r2.is_finished() && sn.is_handshake_finished());
    assert_eq!(&r2.hash()[..], sn.get_handshake_hash());
    assert_eq!(r2.remote_static(), Some(theirs.id.0), "each end proved its key");
    let keys = r2.keys().unwrap();
    let mut sn = sn.into_transport_mode().unwrap();
    // snow to r2: its first transport message uses nonce 0.
    let n = sn.write_message(b"to r2", &mut buf).unwrap();
    let (body, tag) = buf[..n].split_at_mut(n - TAGLEN);
    let k = r2_aead::Key::new(&keys.recv);
    k.open(&nonce(0), &[], body, (&*tag).try_into().unwrap()).unwrap();
    assert_eq!(body, b"to r2");
    // r2 to snow.
    let mut m = b"to snow".to_vec();
    let k = r2_aead::Key::new(&keys.send);
    let tag = k.seal(&nonce(0), &[], &mut m).unwrap();
    m.extend_from_slice(&tag);
    let n = sn.read_message(&m, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"to snow");
}

#[test]
fn xx_agrees_with_snow_as_either_end() {
    against_snow(&XX, true);
    against_snow(&XX, false);
}

#[test]
fn ik_agrees_with_snow_as_either_end() {
    against_snow(&IK, true);
    against_snow(&IK, false);
}

#[test]
fn xk_agrees_with_snow_as_either_end() {
    against_snow(&XK, true);
    against_snow(&XK, false);
}

/// Two r2 ends of XX, to be altered between.
fn pair(prologue_b: &[u8]) -> (Handshake, Handshake) {
    let a = Handshake::new(&XX, true, b"p", key(1), [3; 32], None).unwrap();
    let b = Handshake::new(&XX, false, prologue_b, key(2), [4; 32], None).unwrap();
    (a, b)
}

/// XX's first message from `a` to `b`, and `b`'s answer, carrying `payload`.
fn second_message(a: &mut Handshake, b: &mut Handshake, payload: &[u8]) -> Vec<u8> {
    let (mut m1, mut m2, mut p) = (Vec::new(), Vec::new(), Vec::new());
    a.write_message(&[], &mut m1).unwrap();
    b.read_message(&m1, &mut p).unwrap();
    b.write_message(payload, &mut m2).unwrap();
    m2
}

#[test]
fn a_different_prologue_fails_the_handshake() {
    let (mut a, mut b) = pair(b"q");
    let m2 = second_message(&mut a, &mut b, &[]);
    assert_eq!(a.read_message(&m2, &mut Vec::new()), Err(NoiseError::Decrypt));
}

#[test]
fn every_flipped_bit_of_the_second_message_is_caught() {
    let (mut a, mut b) = pair(b"p");
    let m2 = second_message(&mut a, &mut b, &[1]);
    let mut p = Vec::new();
    for bit in 0..m2.len() * 8 {
        let mut a2 = Handshake::new(&XX, true, b"p", key(1), [3; 32], None).unwrap();
        let mut m1 = Vec::new();
        a2.write_message(&[], &mut m1).unwrap();
        let mut bad = m2.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let r = a2.read_message(&bad, &mut p);
        assert!(matches!(r, Err(NoiseError::Decrypt | NoiseError::WeakKey)), "bit {bit}: {r:?}");
    }
    a.read_message(&m2, &mut p).unwrap();
}

#[test]
fn short_and_out_of_turn_messages_are_refused() {
    let (mut a, mut b) = pair(b"p");
    let mut p = Vec::new();
    assert_eq!(b.write_message(&[], &mut Vec::new()), Err(NoiseError::OutOfTurn));
    assert_eq!(a.read_message(&[0; 40], &mut p), Err(NoiseError::OutOfTurn));
    assert_eq!(b.read_message(&[0; 31], &mut p), Err(NoiseError::Short { len: 31, need: 32 }));
    assert!(b.read_message(&vec![0; MAX_MESSAGE + 1], &mut p).is_err());
    assert!(a.keys().is_err(), "no keys before the end");
}

#[test]
fn a_weak_ephemeral_key_is_refused() {
    let (_, mut b) = pair(b"p");
    // The first message is the initiator's ephemeral key: zero is of small
    // order, and the responder's `ee` meets it.
    let mut p = Vec::new();
    b.read_message(&[0; 32], &mut p).unwrap();
    assert_eq!(b.write_message(&[], &mut Vec::new()), Err(NoiseError::WeakKey));
}
