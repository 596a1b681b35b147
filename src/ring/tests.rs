//! The ring's unit tests: claims, stamps, wrap-around, eviction and the gate.
use super::*;

#[test]
fn claims_until_full_then_reports_full() {
    let ring = Ring::<u32>::try_new(4).unwrap();
    for i in 0..4 {
        let seq = ring.claim(1, Intake::Outside).unwrap();
        assert_eq!(seq, i);
        // SAFETY: just claimed.
        unsafe { ring.write(seq, i as u32) };
    }
    assert_eq!(ring.claim(1, Intake::Outside), Err(ClaimError::Full));
    let mut out = Vec::with_capacity(4);
    assert_eq!(ring.take_batch(ring.tail(), 4, &mut out), Some((0, 4)));
    assert_eq!(out, [0, 1, 2, 3]);
    assert_eq!(ring.take_batch(ring.tail(), 4, &mut out), None);
}

#[test]
fn one_slot_ring_alternates() {
    let ring = Ring::<String>::try_new(1).unwrap();
    let mut out = Vec::with_capacity(1);
    for i in 0..5u64 {
        let seq = ring.claim(1, Intake::Outside).unwrap();
        assert_eq!(seq, i);
        // SAFETY: just claimed.
        unsafe { ring.write(seq, i.to_string()) };
        assert_eq!(ring.claim(1, Intake::Outside), Err(ClaimError::Full));
        assert_eq!(ring.take_batch(ring.tail(), 1, &mut out), Some((i, 1)));
    }
    assert_eq!(out, ["0", "1", "2", "3", "4"]);
}

#[test]
fn batch_claims_are_contiguous_and_respect_room() {
    let ring = Ring::<u8>::try_new(8).unwrap();
    assert_eq!(ring.claim(5, Intake::Outside), Ok(0));
    for s in 0..5 {
        // SAFETY: claimed above.
        unsafe { ring.write(s, s as u8) };
    }
    assert_eq!(ring.claim(4, Intake::Outside), Err(ClaimError::Full));
    assert_eq!(ring.claim(3, Intake::Outside), Ok(5));
    for s in 5..8 {
        // SAFETY: claimed above.
        unsafe { ring.write(s, s as u8) };
    }
    assert!(matches!(
        ring.evict_oldest(1, Intake::Outside),
        Eviction::Evicted(0, 0)
    ));
    assert_eq!(ring.claim(1, Intake::Outside), Ok(8));
    // SAFETY: claimed above.
    unsafe { ring.write(8, 8) };
    let mut out = Vec::with_capacity(8);
    assert_eq!(ring.take_batch(ring.tail(), 8, &mut out), Some((1, 8)));
    assert_eq!(out, [1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn evicts_only_a_written_event_from_a_full_ring() {
    let ring = Ring::<u8>::try_new(2).unwrap();
    assert_eq!(ring.claim(1, Intake::Outside), Ok(0));
    // SAFETY: claimed above.
    unsafe { ring.write(0, 0) };
    assert!(
        matches!(ring.evict_oldest(1, Intake::Outside), Eviction::NotNeeded),
        "room left"
    );
    assert!(
        matches!(
            ring.evict_oldest(2, Intake::Outside),
            Eviction::Evicted(0, 0)
        ),
        "room for 1 of 2"
    );
    assert_eq!(ring.claim(2, Intake::Outside), Ok(1));
    // Full, and its oldest event (1) is claimed but not written: never claimed by eviction.
    assert!(matches!(
        ring.evict_oldest(1, Intake::Outside),
        Eviction::Unwritten
    ));
    assert_eq!(ring.head(), 1);
    // SAFETY: claimed above.
    unsafe { ring.write(1, 1) };
    assert!(matches!(
        ring.evict_oldest(1, Intake::Outside),
        Eviction::Evicted(1, 1)
    ));
    ring.close();
    assert!(
        matches!(ring.evict_oldest(2, Intake::Outside), Eviction::NotNeeded),
        "closed"
    );
    // Every claimed sequence is written before the ring is dropped (its `Drop` checks).
    // SAFETY: sequence 2 was claimed above (with 1), never written.
    unsafe { ring.write(2, 2) };
}

#[test]
fn the_gate_holds_off_other_claims_until_its_batch_fits() {
    let ring = Ring::<u8>::try_new(4).unwrap();
    let mut batch = vec![0, 1, 2];
    assert_eq!(ring.claim(3, Intake::Outside), Ok(0));
    // SAFETY: claimed above.
    unsafe { ring.write_batch(0, &mut batch) };
    assert_eq!(ring.try_gate(Intake::Outside), Ok(true));
    assert_eq!(
        ring.try_gate(Intake::Outside),
        Ok(false),
        "one holder at a time"
    );
    assert_eq!(
        ring.claim(1, Intake::Outside),
        Err(ClaimError::Gated),
        "room for one, but gated"
    );
    assert_eq!(ring.claim_gated(2, Intake::Outside), Err(ClaimError::Full));
    assert!(ring.is_gated());
    assert_eq!(ring.take_one(ring.tail()), Some((0, 0)));
    assert_eq!(ring.claim_gated(2, Intake::Outside), Ok(3));
    assert!(!ring.is_gated());
    assert_eq!(ring.tail(), 5);
    batch.extend([3, 4]);
    // SAFETY: claimed above.
    unsafe { ring.write_batch(3, &mut batch) };
    assert_eq!(ring.try_gate(Intake::Outside), Ok(true));
    ring.close();
    assert_eq!(
        ring.claim_gated(1, Intake::Outside),
        Err(ClaimError::Closed)
    );
    assert!(!ring.is_gated());
    assert_eq!(ring.try_gate(Intake::Outside), Err(ClaimError::Closed));
}

#[test]
fn take_stops_at_limit() {
    let ring = Ring::<u8>::try_new(4).unwrap();
    for s in 0..3 {
        ring.claim(1, Intake::Outside).unwrap();
        // SAFETY: claimed above.
        unsafe { ring.write(s, s as u8) };
    }
    let mut out = Vec::with_capacity(4);
    assert_eq!(ring.take_batch(2, 4, &mut out), Some((0, 2)));
    assert_eq!(ring.take_batch(2, 4, &mut out), None);
    assert_eq!(ring.take_batch(3, 4, &mut out), Some((2, 1)));
}

#[test]
fn close_refuses_claims_and_reports_the_tail() {
    let ring = Ring::<u8>::try_new(4).unwrap();
    ring.claim(2, Intake::Outside).unwrap();
    // SAFETY: claimed above.
    unsafe {
        ring.write(0, 0);
        ring.write(1, 1);
    }
    assert_eq!(ring.seal(), 2);
    assert!(ring.is_closed());
    assert_eq!(ring.claim(1, Intake::Outside), Err(ClaimError::Closed));
    assert_eq!(ring.tail(), 2);
}

#[test]
fn drop_releases_pending_values_once() {
    use std::sync::Arc;
    let token = Arc::new(());
    {
        let ring = Ring::<Arc<()>>::try_new(4).unwrap();
        for s in 0..3 {
            ring.claim(1, Intake::Outside).unwrap();
            // SAFETY: claimed above.
            unsafe { ring.write(s, token.clone()) };
        }
        drop(ring.take_one(ring.tail()));
        assert_eq!(Arc::strong_count(&token), 3);
    }
    assert_eq!(Arc::strong_count(&token), 1);
}

/// Laps the ring many times with heap values, mixing batch claims, partial takes and
/// evictions, so that Miri sees every slot written, moved out and rewritten, and a leak or
/// double drop shows in the final count.
#[test]
fn many_laps_move_each_value_exactly_once() {
    use std::sync::Arc;
    let laps = if cfg!(miri) { 3 } else { 200 };
    let token = Arc::new(());
    for cap in [1u64, 2, 4] {
        let ring = Ring::<(u64, Arc<()>)>::try_new(cap as usize).unwrap();
        let mut out = Vec::with_capacity(cap as usize);
        let mut expect = 0;
        for lap in 0..laps * cap {
            let n = 1 + lap % cap;
            let first = ring.claim(n, Intake::Outside).unwrap();
            for s in first..first + n {
                // SAFETY: claimed above, written once.
                unsafe { ring.write(s, (s, token.clone())) };
            }
            if lap % 3 == 0 && n > 1 {
                let (seq, (v, _)) = ring.take_one(ring.tail()).unwrap();
                assert_eq!((seq, v), (expect, expect));
                expect += 1;
            }
            let (from, k) = ring.take_batch(ring.tail(), cap, &mut out).unwrap();
            assert_eq!(from, expect);
            for (i, (v, _)) in out.drain(..).enumerate() {
                assert_eq!(v, from + i as u64);
            }
            expect += k;
            assert_eq!(ring.head(), ring.tail());
        }
        assert_eq!(Arc::strong_count(&token), 1);
    }
}

/// A consumer reaching a slot whose producer has claimed but not yet written it, and a
/// producer waiting on a slot the previous lap's consumer has not handed back: two real
/// threads, no sleeps, so Miri checks the stamps' happens-before edges.
#[test]
fn stamps_order_producer_and_consumer_threads() {
    use std::sync::Arc;
    let n: u64 = if cfg!(miri) { 50 } else { 100_000 };
    let ring = Arc::new(Ring::<Box<u64>>::try_new(2).unwrap());
    let producer = {
        let ring = ring.clone();
        std::thread::spawn(move || {
            for i in 0..n {
                let seq = loop {
                    match ring.claim(1, Intake::Outside) {
                        Ok(seq) => break seq,
                        Err(ClaimError::Full) => std::thread::yield_now(),
                        Err(ClaimError::Closed | ClaimError::Gated) => unreachable!(),
                    }
                };
                assert_eq!(seq, i);
                // SAFETY: claimed just above, written once.
                unsafe { ring.write(seq, Box::new(i)) };
            }
        })
    };
    let mut out = Vec::with_capacity(2);
    let mut next = 0;
    while next < n {
        // Claiming up to the producer's tail may reach a slot it has not written yet:
        // `take_batch` must stop before it (checking the stamp), never read it early.
        if let Some((first, k)) = ring.take_batch(ring.tail(), 2, &mut out) {
            assert_eq!(first, next);
            for (i, v) in out.drain(..).enumerate() {
                assert_eq!(*v, first + i as u64);
            }
            next += k;
        } else {
            std::thread::yield_now();
        }
    }
    producer.join().unwrap();
}

#[test]
fn follow_ups_claim_after_close_until_the_seal() {
    let ring = Ring::<u32>::try_new(4).unwrap();
    ring.claim(1, Intake::Outside).unwrap();
    ring.close();
    assert!(ring.is_closed() && !ring.refuses(Intake::FollowUp));
    assert_eq!(ring.claim(1, Intake::Outside), Err(ClaimError::Closed));
    assert_eq!(ring.claim(2, Intake::FollowUp), Ok(1));
    assert_eq!(ring.tail(), 3);
    assert!(
        ring.is_closed(),
        "a follow-up's claim keeps the closed mark"
    );
    assert_eq!(ring.claim(1, Intake::Outside), Err(ClaimError::Closed));
    // A follow-up batch takes the gate and claims through it during close, too.
    assert_eq!(ring.try_gate(Intake::Outside), Err(ClaimError::Closed));
    assert_eq!(ring.try_gate(Intake::FollowUp), Ok(true));
    assert_eq!(ring.claim_gated(1, Intake::FollowUp), Ok(3));
    assert!(ring.is_closed() && !ring.is_gated());
    assert_eq!(ring.seal(), 4);
    assert!(ring.refuses(Intake::FollowUp));
    assert_eq!(ring.claim(1, Intake::FollowUp), Err(ClaimError::Closed));
    assert_eq!(ring.try_gate(Intake::FollowUp), Err(ClaimError::Closed));
    let mut out = Vec::new();
    // Claimed but never written: nothing to take (the test does not write them).
    assert_eq!(ring.take_batch(ring.tail(), 4, &mut out), None);
    for seq in 0..4 {
        // SAFETY: claimed above, written once here.
        unsafe { ring.write(seq, seq as u32) };
    }
    assert_eq!(ring.take_batch(ring.tail(), 4, &mut out), Some((0, 4)));
}
