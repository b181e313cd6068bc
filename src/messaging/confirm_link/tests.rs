use super::frames::{put_body, Incoming, Reader};
use super::handshake::negotiate;
use super::*;

#[test]
fn a_window_settles_single_and_multiple_confirms() {
    let mut w = Window::new(11, 5);
    w.settle(12, false, false);
    assert!(!w.settled());
    // A multiple ack covers every tag up to it not settled yet: 11 and 13,
    // not the nacked 12.
    w.settle(13, true, true);
    assert!(!w.settled());
    w.settle(15, false, true);
    assert!(!w.settled());
    w.settle(14, false, true);
    assert!(w.settled());
    assert_eq!(w.into_outcomes(), vec![true, false, true, true, true]);
}

#[test]
fn a_window_ignores_tags_that_are_not_its_own() {
    let mut w = Window::new(11, 2);
    w.settle(10, true, false);
    w.settle(13, false, false);
    w.settle(2, false, false);
    assert!(!w.settled());
    w.settle(12, true, true);
    assert_eq!(w.into_outcomes(), vec![true, true]);
}

#[test]
fn a_multiple_nack_after_single_acks_keeps_them() {
    let mut w = Window::new(1, 4);
    w.settle(2, false, true);
    w.settle(4, true, false);
    assert!(w.settled());
    assert_eq!(w.into_outcomes(), vec![false, true, false, false]);
}

/// A frame split across reads is framed once whole; bodies are written the
/// way the broker expects them (type 3, channel, size, payload, 0xCE).
#[test]
fn frames_are_cut_at_their_boundaries() {
    let mut bytes = Vec::new();
    put_body(&mut bytes, 1, b"hello");
    assert_eq!(
        bytes,
        [3, 0, 1, 0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o', 0xCE]
    );
    let heartbeat = [8u8, 0, 0, 0, 0, 0, 0, 0xCE];
    let mut reader = Reader::default();
    reader.extend_for_test(&bytes[..4]);
    assert!(reader.frame().unwrap().is_none());
    reader.extend_for_test(&bytes[4..]);
    reader.extend_for_test(&heartbeat[..3]);
    assert!(matches!(reader.frame().unwrap(), Some(Incoming::Content)));
    assert!(reader.frame().unwrap().is_none());
    reader.extend_for_test(&heartbeat[3..]);
    assert!(matches!(reader.frame().unwrap(), Some(Incoming::Heartbeat)));
    assert!(reader.frame().unwrap().is_none());
}

#[test]
fn a_frame_without_its_end_octet_is_an_error() {
    let mut reader = Reader::default();
    reader.extend_for_test(&[8u8, 0, 0, 0, 0, 0, 0, 0xCD]);
    assert!(matches!(reader.frame(), Err(LinkError::Protocol(_))));
}

#[test]
fn limits_of_zero_mean_none() {
    assert_eq!(negotiate(0, 131072), 131072);
    assert_eq!(negotiate(4096, 131072), 4096);
    assert_eq!(negotiate(2047, 0), 2047);
}
