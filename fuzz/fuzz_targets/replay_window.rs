//! Drives a `ReplayWindow` with arbitrary operations and compares every answer with the
//! naive reference model (`ipsec_core::replay::reference::NaiveWindow`: a set of
//! accepted 64-bit sequence numbers, and RFC 4303 Appendix A inference written
//! independently). Any disagreement panics.
#![no_main]

use arbitrary::Arbitrary;
use ipsec_core::replay::reference::NaiveWindow;
use ipsec_core::{Error, ReplayWindow};
use libfuzzer_sys::fuzz_target;

/// Window sizes: off, the minimum, odd ones, the RFC default, larger ones. The maximum,
/// 2^24 (a 4 MiB ring), is used only for `size_selector == 255`, so that it does not
/// slow the other runs down.
const SIZES: [u32; 7] = [0, 32, 33, 64, 77, 1024, 4096];
const MAX_SIZE: u32 = 1 << 24;

#[derive(Arbitrary, Debug)]
enum Op {
    /// `accept` of the wire value `highest + delta` (mod 2^32).
    AcceptNear(i16),
    /// `accept` of any wire value.
    AcceptAbs(u32),
    /// `check` only, `highest + delta` on the wire.
    Check(i32),
    /// `check`, then `update` with its answer if fresh, else `note_too_old` if too old.
    CheckUpdate(i16),
    /// `update` with the 64-bit value `highest + delta`.
    Update(i32),
    /// `update` far ahead of the top.
    Jump(u32),
}

#[derive(Arbitrary, Debug)]
struct Input {
    size_selector: u8,
    esn: bool,
    start: u64,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let size = match input.size_selector {
        255 => MAX_SIZE,
        s => SIZES[usize::from(s) % SIZES.len()],
    };
    let esn = input.esn;
    let start = if esn {
        input.start
    } else {
        input.start & u64::from(u32::MAX)
    };
    let mut w = ReplayWindow::with_highest(size, esn, start).expect("valid size");
    let mut m = NaiveWindow::with_highest(size, esn, start);
    let max_seq = if esn { u64::MAX } else { u64::from(u32::MAX) };
    for op in input.ops.iter().take(2000) {
        let top_wire = m.highest() as u32;
        match *op {
            Op::AcceptNear(d) | Op::CheckUpdate(d) => {
                let wire = top_wire.wrapping_add_signed(i32::from(d));
                let seq = m.infer(wire);
                assert_eq!(w.infer(wire), seq, "infer({wire:#x}) at {:#x}", m.highest());
                let expect = m.check(seq).map(|()| seq);
                if matches!(op, Op::AcceptNear(_)) {
                    let fresh = m.update(seq).is_ok();
                    if !fresh {
                        m.note_too_old(seq);
                    }
                    assert_eq!(w.accept(wire), fresh, "accept({seq:#x})");
                } else {
                    assert_eq!(w.check(wire), expect, "check({seq:#x})");
                    match expect {
                        Ok(s) => {
                            assert_eq!(w.update(s), Ok(()));
                            m.update(s).expect("model agrees");
                        }
                        Err(Error::TooOld { seq: s, .. }) => {
                            w.note_too_old(s);
                            m.note_too_old(s);
                        }
                        Err(_) => {}
                    }
                }
            }
            Op::AcceptAbs(wire) => {
                let seq = m.infer(wire);
                assert_eq!(w.infer(wire), seq);
                let fresh = m.update(seq).is_ok();
                if !fresh {
                    m.note_too_old(seq);
                }
                assert_eq!(w.accept(wire), fresh, "accept({seq:#x})");
            }
            Op::Check(d) => {
                let wire = top_wire.wrapping_add_signed(d);
                let seq = m.infer(wire);
                assert_eq!(w.check(wire), m.check(seq).map(|()| seq));
            }
            Op::Update(d) => {
                let seq = m.highest().checked_add_signed(i64::from(d));
                if let Some(seq) = seq.filter(|&s| s <= max_seq) {
                    assert_eq!(w.update(seq), m.update(seq), "update({seq:#x})");
                }
            }
            Op::Jump(d) => {
                let seq = m.highest().checked_add(u64::from(d) + 1);
                if let Some(seq) = seq.filter(|&s| s <= max_seq) {
                    assert_eq!(w.update(seq), m.update(seq), "update({seq:#x})");
                }
            }
        }
        assert_eq!(w.highest(), m.highest());
    }
    assert_eq!(w.late_histogram(), m.late_histogram());
    // Around the top and around the window's bottom, every verdict agrees.
    let bottom = m.highest().saturating_sub(u64::from(size));
    for s in (m.highest().saturating_sub(100)..=m.highest().saturating_add(100))
        .chain(bottom.saturating_sub(100)..=bottom.saturating_add(100))
    {
        assert_eq!(w.check_seq(s), m.check(s), "check_seq({s:#x})");
    }
});
