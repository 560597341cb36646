//! `ReplayWindow` against a naive model: a set of the accepted 64-bit sequence numbers
//! and the highest one. A sequence number is fresh iff it is not 0, lies less than
//! `size` below the highest (or above it) and is not in the set; with size 0 every
//! sequence number but 0 is fresh. ESN inference is compared with an independent
//! formulation of RFC 4303 Appendix A: the one value with the wire's low 32 bits in
//! `[highest - W + 1, highest - W + 2^32]`.

use ipsec_core::replay::reference::NaiveWindow;
use ipsec_core::{Error, ReplayWindow};
use proptest::prelude::*;

const TWO32: u64 = 1 << 32;
/// The window sizes under test: off, the minimum, the RFC default, two that are not a
/// multiple of 64, and two larger ones.
const SIZES: [u32; 7] = [0, 32, 64, 77, 100, 1024, 4096];

/// One step of traffic, relative to the highest sequence number sent so far.
#[derive(Clone, Debug)]
enum Step {
    /// The next packet in order, `1..=4` ahead.
    Forward(u64),
    /// A late packet `d` behind the highest sent (within or beyond the window).
    Late(u64),
    /// A duplicate of the packet sent `i` (mod history length) steps ago.
    Duplicate(usize),
    /// A jump ahead.
    Jump(u64),
    /// Sequence number 0.
    Zero,
}

/// How a packet is delivered to the window.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// `accept(wire)`.
    Accept,
    /// `check(wire)` then, if fresh, `update(seq)` (the SA's path).
    CheckUpdate,
    /// `check(wire)` only (an ICV failure: nothing recorded).
    CheckOnly,
    /// `update(seq)` with the 64-bit value directly.
    Update64,
}

fn step(max_late: u64) -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (1u64..=4).prop_map(Step::Forward),
        4 => (0..=max_late).prop_map(Step::Late),
        2 => any::<usize>().prop_map(Step::Duplicate),
        1 => prop_oneof![1u64..=300, 1u64..=(1 << 20)].prop_map(Step::Jump),
        1 => Just(Step::Zero),
    ]
}

fn via() -> impl Strategy<Value = Via> {
    prop_oneof![
        Just(Via::Accept),
        Just(Via::CheckUpdate),
        Just(Via::CheckOnly),
        Just(Via::Update64)
    ]
}

/// Drives a window and the model with the same traffic and compares every answer.
/// Both start restored with `start` as the highest sequence number received (0: new).
fn run(size: u32, esn: bool, start: u64, steps: &[(Step, Via)]) -> Result<(), TestCaseError> {
    let mut w = ReplayWindow::with_highest(size, esn, start).unwrap();
    let mut m = NaiveWindow::with_highest(size, esn, start);
    let mut cursor = start;
    let mut history: Vec<u64> = Vec::new();
    for (st, via) in steps {
        let seq = match *st {
            Step::Forward(d) => {
                cursor += d;
                cursor
            }
            Step::Late(d) => cursor.saturating_sub(d),
            Step::Duplicate(i) if !history.is_empty() => {
                history[history.len() - 1 - i % history.len()]
            }
            Step::Duplicate(_) | Step::Zero => 0,
            Step::Jump(d) => {
                cursor += d;
                cursor
            }
        };
        if !esn && seq > u64::from(u32::MAX) {
            // Without ESN the sender stops at 2^32 - 1.
            break;
        }
        history.push(seq);
        let wire = seq as u32;
        let before = m.highest();
        match via {
            Via::Update64 => {
                prop_assert_eq!(
                    w.update(seq),
                    m.update(seq),
                    "update({}) size {}",
                    seq,
                    size
                );
            }
            Via::Accept | Via::CheckUpdate | Via::CheckOnly => {
                let inferred = m.infer(wire);
                prop_assert_eq!(
                    w.infer(wire),
                    inferred,
                    "infer({:#x}) highest {:#x}",
                    wire,
                    before
                );
                // The true value is recovered whenever it is inside the window or ahead.
                if seq > 0
                    && u128::from(seq) + u128::from(m.inference_window()) > u128::from(before)
                {
                    prop_assert_eq!(inferred, seq, "inference lost seq {:#x}", seq);
                }
                // A wrongly inferred value would fail the ICV: the SA never updates it.
                let authentic = inferred == seq;
                let expect = m.check(inferred).map(|()| inferred);
                match via {
                    Via::Accept => {
                        if authentic {
                            let fresh = m.update(inferred).is_ok();
                            if !fresh {
                                m.note_too_old(inferred);
                            }
                            prop_assert_eq!(w.accept(wire), fresh, "accept({:#x})", seq);
                        } else {
                            prop_assert_eq!(w.check(wire), expect);
                        }
                    }
                    Via::CheckUpdate => {
                        let got = w.check(wire);
                        prop_assert_eq!(got, expect, "check({:#x})", seq);
                        if authentic {
                            match got {
                                Ok(s) => {
                                    prop_assert_eq!(w.update(s), Ok(()));
                                    m.update(s).unwrap();
                                }
                                Err(Error::TooOld { seq: s, .. }) => {
                                    w.note_too_old(s);
                                    m.note_too_old(s);
                                }
                                Err(_) => {}
                            }
                        }
                    }
                    _ => prop_assert_eq!(w.check(wire), expect, "check({:#x})", seq),
                }
            }
        }
        prop_assert_eq!(w.highest(), m.highest());
        cursor = cursor.max(m.highest());
    }
    prop_assert_eq!(w.late_histogram(), m.late_histogram());
    // Finally the whole window and a margin around it agree.
    let lo = m.highest().saturating_sub(u64::from(size) + 70);
    for s in lo..=m.highest() + 70 {
        prop_assert_eq!(w.check_seq(s), m.check(s), "final check_seq({})", s);
    }
    Ok(())
}

fn size() -> impl Strategy<Value = u32> {
    prop::sample::select(&SIZES[..])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Without ESN: in-order runs, reordering within and beyond the window, duplicates,
    /// jumps, sequence number 0, through every entry point.
    #[test]
    fn replay_matches_model_without_esn(
        size in size(),
        start in prop_oneof![Just(0u64), 0u64..3000],
        steps in prop::collection::vec((step(9000), via()), 1..400),
    ) {
        run(size, false, start, &steps)?;
    }

    /// Without ESN, close to the end of the 32-bit space.
    #[test]
    fn replay_matches_model_near_2_32_without_esn(
        size in size(),
        back in 0u64..5000,
        steps in prop::collection::vec((step(9000), via()), 1..200),
    ) {
        run(size, false, u64::from(u32::MAX) - back, &steps)?;
    }

    /// With ESN: 64-bit sequence numbers starting near 2^32 and moving forward; the
    /// window sees only the low 32 bits and must infer the high half. Late packets also
    /// go beyond the window, where the inference differs from the sent value (and the
    /// packet would fail its ICV).
    #[test]
    fn replay_matches_model_with_esn(
        size in size(),
        start in (TWO32 - 2000)..(TWO32 + 100),
        steps in prop::collection::vec((step(9000), via()), 1..400),
    ) {
        run(size, true, start, &steps)?;
    }

    /// With ESN, through many 2^32 boundaries (big jumps) and high in the 64-bit space.
    #[test]
    fn replay_matches_model_with_esn_far(
        size in size(),
        start in prop_oneof![any::<u32>().prop_map(u64::from), (5 * TWO32 - 3000)..(5 * TWO32 + 3000)],
        steps in prop::collection::vec((step(9000), via()), 1..400),
    ) {
        run(size, true, start, &steps)?;
    }

    /// The inference alone, for arbitrary states, against the reference formulation.
    #[test]
    fn replay_inference_matches_reference(
        size in size(),
        highest in prop_oneof![
            any::<u64>(),
            (0u64..(1 << 13)),
            any::<u32>().prop_map(|h| (u64::from(h) << 32) | 0xFFFF_FF00),
            any::<u32>().prop_map(|l| (u64::MAX << 32) | u64::from(l)),
        ],
        wire in prop_oneof![any::<u32>(), 0u32..5000, (u32::MAX - 5000)..=u32::MAX],
    ) {
        let w = ReplayWindow::with_highest(size, true, highest).unwrap();
        let m = NaiveWindow::with_highest(size, true, highest);
        prop_assert_eq!(w.infer(wire), m.infer(wire));
        let w = ReplayWindow::with_highest(size, false, u64::from(highest as u32)).unwrap();
        prop_assert_eq!(w.infer(wire), u64::from(wire));
    }

    /// A restored window treats the whole window below its top as received.
    #[test]
    fn replay_restored_window_matches_model(
        size in size(),
        esn in any::<bool>(),
        highest in prop_oneof![0u64..200, 1000u64..100_000, (TWO32 - 100)..(TWO32 + 100)],
        steps in prop::collection::vec((1u64..=4, any::<bool>()), 0..100),
        probe in -5000i64..200,
    ) {
        let highest = if esn { highest } else { highest.min(u64::from(u32::MAX)) };
        let mut w = ReplayWindow::with_highest(size, esn, highest).unwrap();
        let mut m = NaiveWindow::with_highest(size, esn, highest);
        let probe_seq = |h: u64| h.checked_add_signed(probe).unwrap_or(0);
        prop_assert_eq!(w.check_seq(probe_seq(highest)), m.check(probe_seq(highest)));
        let mut cursor = highest;
        for (d, ahead) in steps {
            let seq = if ahead { cursor + d } else { cursor.saturating_sub(d * 17) };
            if !esn && seq > u64::from(u32::MAX) {
                break;
            }
            cursor = cursor.max(seq);
            prop_assert_eq!(w.update(seq), m.update(seq));
        }
        let lo = m.highest().saturating_sub(u64::from(size) + 70);
        for s in lo..=m.highest() + 70 {
            prop_assert_eq!(w.check_seq(s), m.check(s), "check_seq({})", s);
        }
    }

    /// `check` leaves the window as it was, and `update` with the value a successful
    /// `check` returned always succeeds.
    #[test]
    fn replay_check_is_pure_and_update_follows(
        size in size(),
        esn in any::<bool>(),
        start in 1u64..100_000,
        warmup in prop::collection::vec(0u64..3000, 0..100),
        wires in prop::collection::vec(any::<u16>(), 1..50),
    ) {
        let mut w = ReplayWindow::new(size, esn).unwrap();
        prop_assert!(w.update(start).is_ok());
        for d in warmup {
            let _ = w.update(start.saturating_sub(d).max(1));
        }
        let snapshot = |w: &ReplayWindow| {
            let lo = w.highest().saturating_sub(u64::from(w.size()) + 70);
            let verdicts: Vec<_> = (lo..=w.highest() + 70).map(|s| w.check_seq(s)).collect();
            (w.highest(), w.late_histogram().clone(), format!("{w:?}"), verdicts)
        };
        for wire in wires {
            // Wire values around the top, in and out of the window.
            let wire = (w.highest() as u32).wrapping_add(u32::from(wire)).wrapping_sub(40_000);
            let before = snapshot(&w);
            let first = w.check(wire);
            prop_assert_eq!(w.check(wire), first);
            prop_assert_eq!(&snapshot(&w), &before);
            if let Ok(seq) = first {
                prop_assert_eq!(w.update(seq), Ok(()));
                // With replay protection off, nothing is ever replayed.
                let again = if size == 0 { Ok(seq) } else { Err(Error::Replayed { seq }) };
                prop_assert_eq!(w.check(wire), again);
            }
        }
    }
}

/// The ESN scenario with plain numbers: a sender starting just below 2^32 whose packets
/// arrive with jitter smaller than the window is accepted packet for packet, and every
/// duplicate is refused.
#[test]
fn replay_esn_stream_with_jitter_across_2_32() {
    for size in SIZES {
        let mut w = ReplayWindow::new(size, true).unwrap();
        let mut m = NaiveWindow::new(size, true);
        let jitter = u64::from(size.clamp(1, 64)) - 1;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = TWO32 - 2000;
        let mut pending = Vec::new();
        for _ in 0..20_000 {
            // Send the next few in a shuffled order, never more than `jitter` apart.
            pending.push(next);
            next += 1;
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // The oldest must go once it is `jitter` behind; otherwise a random one, or
            // none for now.
            let pick = if next - pending[0] > jitter {
                Some(0)
            } else if state.is_multiple_of(3) {
                Some((state >> 8) as usize % pending.len())
            } else {
                None
            };
            if let Some(i) = pick {
                let seq = pending.remove(i);
                let got = w.check(seq as u32);
                assert_eq!(got, Ok(seq), "size {size}");
                assert_eq!(w.update(seq), m.update(seq));
                assert_eq!(w.check(seq as u32), m.check(seq).map(|()| seq));
            }
        }
        assert!(w.highest() > TWO32 + 15_000);
        assert_eq!(w.late_histogram(), m.late_histogram());
    }
}
