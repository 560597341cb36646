//! The inbound anti-replay window (RFC 4303 §3.4.3) with extended sequence number
//! inference (RFC 4303 Appendix A), kept as an RFC 6479 ring of bitmap blocks.
//!
//! # Semantics
//!
//! A window of size `W` is exactly `W` packets wide: with `highest` the highest sequence
//! number received so far, a sequence number `seq` is
//!
//! - **fresh** when `seq > highest`, or when `seq + W > highest` and `seq` was not
//!   received yet;
//! - **too old** ([`Error::TooOld`]) when `seq + W <= highest`, and always when `seq`
//!   is 0 (the 64-bit value; sequence number 0 is never sent);
//! - **replayed** ([`Error::Replayed`]) when it lies inside the window and was already
//!   received.
//!
//! A window of size 0 turns replay protection off: every sequence number except 0 is
//! accepted, but `highest` is still tracked so that ESN high bits can be inferred (with
//! `W = 2^31` for the inference) and late packets still reach the [`LateHistogram`]
//! (when the window has one: see [`ReplayWindow::late_histogram`]).
//!
//! # Use on the receive path
//!
//! The SA calls [`ReplayWindow::check`] before decryption (it infers the 64-bit sequence
//! number the ICV covers and rejects duplicates cheaply, without changing the window),
//! and [`ReplayWindow::update`] only after the ICV verified, so a forged packet cannot
//! move the window. `update` checks again, so that of two packets with the same sequence
//! number in one burst (both passing `check` before either is recorded) only the first
//! is accepted. A packet that `check` rejected as too old can be reported to the
//! histogram with [`ReplayWindow::note_too_old`].
//!
//! # Representation (RFC 6479)
//!
//! The bitmap is a ring of `n` 64-bit blocks, `n` the smallest power of two that is at
//! least `ceil(W / 64) + 1`; sequence number `s` lives at bit `s mod 64n`. Nothing is
//! ever shifted: when the top advances into new blocks, only those blocks are cleared
//! (at most `n` of them, so even a jump of billions costs one pass over the ring).
//! The ring is allocated once, in the constructor; `check` and `update` never allocate.
//! Memory is `8 * n` bytes: 16 bytes for `W = 64`, 256 bytes for `W = 1024`, 4 MiB for
//! the largest window, `W = 2^24`.

use core::fmt;

use crate::error::{ConfigError, Error};

/// The smallest window size that enables replay protection (RFC 4303 §3.4.3 asks for
/// a default of 64 and at least 32).
const MIN_SIZE: u32 = 32;
/// The largest window size: 2^24 packets (a 4 MiB ring).
const MAX_SIZE: u32 = 1 << 24;
/// The window used for ESN inference when replay protection is off (size 0).
const INFER_WINDOW_WHEN_OFF: u32 = 1 << 31;

/// An anti-replay window for one inbound SA.
///
/// See the [module documentation](self) for the exact semantics. A window is used by
/// one thread at a time (`&mut self` to record); it is `Send` and `Sync`.
///
/// ```
/// use ipsec_core::{Error, ReplayWindow};
///
/// let mut w = ReplayWindow::new(64, false).unwrap();
/// assert!(w.accept(5));
/// assert!(w.accept(3)); // late, but inside the window
/// assert!(!w.accept(3)); // replayed
/// assert_eq!(w.check(3), Err(Error::Replayed { seq: 3 }));
/// assert!(w.accept(200));
/// assert_eq!(w.check(136), Err(Error::TooOld { seq: 136, highest: 200 }));
/// assert_eq!(w.check(137), Ok(137)); // 137 + 64 > 200: the window's bottom
/// ```
#[derive(Clone)]
pub struct ReplayWindow {
    /// Ring of bitmap blocks; empty when replay protection is off (size 0).
    blocks: Box<[u64]>,
    /// Highest sequence number recorded (the window's top), 0 before the first one.
    highest: u64,
    /// Window width in packets, 0 when replay protection is off.
    size: u32,
    /// Whether the SA uses 64-bit extended sequence numbers.
    esn: bool,
    /// Distances behind the top of the late packets seen, on the heap (512 bytes), or
    /// `None` for a window without one (read as an empty histogram; late packets are
    /// not recorded). [`ReplayWindow::new`] makes one; the windows of SAs have one only
    /// when their configuration asks for it ([`crate::SaConfig::late_histogram`]). It
    /// is made with the window, so recording a late packet never allocates.
    late: Option<Box<LateHistogram>>,
}

/// What [`ReplayWindow::late_histogram`] shows for a window without a histogram.
static NO_LATE_PACKETS: LateHistogram = LateHistogram::new();

impl ReplayWindow {
    /// The size check of [`ReplayWindow::new`], without allocating the window.
    pub(crate) fn check_size(size: u32) -> Result<(), ConfigError> {
        if size != 0 && !(MIN_SIZE..=MAX_SIZE).contains(&size) {
            return Err(ConfigError::new(
                "replay_window",
                format!(
                    "{size} is not a valid window size: use 0 (off) or {MIN_SIZE} to {MAX_SIZE}"
                ),
            ));
        }
        Ok(())
    }

    /// A window `size` packets wide, with nothing received yet (`highest` is 0), with a
    /// late-packet histogram ([`ReplayWindow::late_histogram`]).
    ///
    /// `size` is 0 (replay protection off) or in `32..=16_777_216` (2^24); any other
    /// value is a [`ConfigError`] naming the field `replay_window`. `esn` selects 64-bit
    /// extended sequence numbers, whose high half is inferred from the 32 bits on the wire.
    pub fn new(size: u32, esn: bool) -> Result<ReplayWindow, ConfigError> {
        let mut w = Self::without_histogram(size, esn)?;
        w.late = Some(Box::default());
        Ok(w)
    }

    /// [`ReplayWindow::new`] without a late-packet histogram (it reads as empty and
    /// records nothing): the window of an SA that did not ask for one
    /// ([`crate::SaConfig::late_histogram`]), and of an outbound SA, which only keeps
    /// the settings.
    pub(crate) fn without_histogram(size: u32, esn: bool) -> Result<ReplayWindow, ConfigError> {
        Self::check_size(size)?;
        let nblocks = if size == 0 {
            0
        } else {
            (size.div_ceil(64) as usize + 1).next_power_of_two()
        };
        Ok(ReplayWindow {
            blocks: vec![0u64; nblocks].into_boxed_slice(),
            highest: 0,
            size,
            esn,
            late: None,
        })
    }

    /// A window restored with `highest` as its top, as when an SA is re-installed with
    /// the state it had.
    ///
    /// Every sequence number inside the window at or below `highest` is taken as
    /// **already received**: the window does not know which of them arrived before, and
    /// taking them as fresh would let an attacker replay any of the last `size` packets
    /// to a restored SA. The cost is that genuinely late packets that were still in
    /// flight when the state was saved are refused.
    ///
    /// Errors as [`ReplayWindow::new`], and also when `highest` does not fit in 32 bits
    /// without ESN (a [`ConfigError`] naming the field `seq`, the SA constructor's name
    /// for it).
    pub fn with_highest(size: u32, esn: bool, highest: u64) -> Result<ReplayWindow, ConfigError> {
        Self::with_highest_and_histogram(size, esn, highest, true)
    }

    /// [`ReplayWindow::with_highest`], with a late-packet histogram only when
    /// `histogram` is true (the window of an SA: [`crate::SaConfig::late_histogram`]).
    pub(crate) fn with_highest_and_histogram(
        size: u32,
        esn: bool,
        highest: u64,
        histogram: bool,
    ) -> Result<ReplayWindow, ConfigError> {
        if !esn && highest > u64::from(u32::MAX) {
            return Err(ConfigError::new(
                "seq",
                format!("{highest} does not fit in 32 bits and the SA does not use ESN"),
            ));
        }
        let mut w = ReplayWindow::without_histogram(size, esn)?;
        if histogram {
            w.late = Some(Box::default());
        }
        w.highest = highest;
        if highest != 0 && !w.blocks.is_empty() {
            // All bits at or below `highest` count as received; bits above it in the top
            // block must stay clear, since advancing within a block clears nothing.
            w.blocks.fill(u64::MAX);
            let top = w.block_index(highest);
            w.blocks[top] = u64::MAX >> (63 - (highest & 63));
        }
        Ok(w)
    }

    /// Whether the sequence number `distance` below the top was recorded (for the
    /// snapshots of [`crate::snapshot`]): `false` outside the window, for sequence
    /// number 0, and always with replay protection off.
    pub(crate) fn recorded_below_top(&self, distance: u64) -> bool {
        if self.blocks.is_empty() || distance >= u64::from(self.size) || distance >= self.highest {
            return false;
        }
        let seq = self.highest - distance;
        self.blocks[self.block_index(seq)] & (1u64 << (seq & 63)) != 0
    }

    /// A window with `highest` as its top in which exactly the sequence numbers
    /// `highest - d` with `recorded(d)` (for `d` below the size and the top) are
    /// recorded, and `late` as its histogram: a window restored bit for bit from a
    /// snapshot. The window has a histogram when `late` counts a packet or `histogram`
    /// is true (an empty histogram and none read the same). Errors as
    /// [`ReplayWindow::with_highest`].
    pub(crate) fn restored(
        size: u32,
        esn: bool,
        highest: u64,
        recorded: impl Fn(u64) -> bool,
        late: LateHistogram,
        histogram: bool,
    ) -> Result<ReplayWindow, ConfigError> {
        let mut w = ReplayWindow::with_highest_and_histogram(0, esn, highest, false)?;
        if size != 0 {
            w = ReplayWindow::without_histogram(size, esn)?;
            w.highest = highest;
            for d in 0..u64::from(size).min(highest) {
                if recorded(d) {
                    let seq = highest - d;
                    let i = w.block_index(seq);
                    w.blocks[i] |= 1u64 << (seq & 63);
                }
            }
        }
        if histogram || late != LateHistogram::new() {
            w.late = Some(Box::new(late));
        }
        Ok(w)
    }

    /// The window width in packets (0: replay protection off).
    #[inline]
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Whether the window infers 64-bit extended sequence numbers.
    #[inline]
    pub fn esn(&self) -> bool {
        self.esn
    }

    /// The highest sequence number recorded so far (64-bit with ESN), the window's top;
    /// 0 before the first packet.
    #[inline]
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// How far behind the top the late packets were (accepted ones, and the too-old ones
    /// reported by [`accept`](Self::accept) or [`note_too_old`](Self::note_too_old)).
    ///
    /// A window made by [`ReplayWindow::new`] or [`ReplayWindow::with_highest`] has a
    /// histogram. The window of an SA has one only when its configuration asked for it
    /// ([`crate::SaConfig::late_histogram`], off by default: it costs 512 bytes per
    /// SA); without one this reads as empty and late packets are not counted.
    #[inline]
    pub fn late_histogram(&self) -> &LateHistogram {
        self.late.as_deref().unwrap_or(&NO_LATE_PACKETS)
    }

    /// Gives up the histogram of a window that records nothing (an inbound lane of a
    /// [`crate::SharedSa`]: the shared window records); it reads as empty.
    /// Whether the window keeps a late-packet histogram.
    pub(crate) fn has_histogram(&self) -> bool {
        self.late.is_some()
    }

    pub(crate) fn drop_histogram(&mut self) {
        debug_assert!(
            self.late
                .as_deref()
                .is_none_or(|l| *l == LateHistogram::new()),
            "only an empty histogram is dropped"
        );
        self.late = None;
    }

    /// Counts a late packet `distance` behind the top in the histogram, if the window
    /// has one (a window without one records nothing: the packet path never
    /// allocates).
    #[inline]
    fn record_late(&mut self, distance: u64) {
        if let Some(late) = &mut self.late {
            late.record(distance);
        }
    }

    /// The full sequence number a packet carrying `seq_wire` has, as RFC 4303 Appendix A
    /// infers it: without ESN the wire value itself; with ESN the high half that puts it
    /// inside the window or ahead of it (less than 2^32 - W ahead).
    ///
    /// Two edges the RFC leaves open are closed so that the result is the only value the
    /// sender could have used: while the high half is still 0 a value that would belong
    /// to the (non-existent) subspace below is taken as ahead of the window, and once the
    /// high half is 2^32 - 1 nothing is taken as belonging to the subspace above (the
    /// value is then below the window and [`check`](Self::check) answers too old).
    #[inline]
    pub fn infer(&self, seq_wire: u32) -> u64 {
        if !self.esn {
            return u64::from(seq_wire);
        }
        let th = (self.highest >> 32) as u32;
        let tl = self.highest as u32;
        let w1 = self.infer_window() - 1;
        let bottom = tl.wrapping_sub(w1);
        let seqh = if tl >= w1 {
            // Case A: the window lies within one 2^32 subspace.
            if seq_wire >= bottom {
                th
            } else {
                th.saturating_add(1)
            }
        } else if seq_wire >= bottom {
            // Case B: the window spans two subspaces; this is the lower one.
            th.saturating_sub(1)
        } else {
            th
        };
        (u64::from(seqh) << 32) | u64::from(seq_wire)
    }

    /// Checks a received packet's wire sequence number without recording it.
    ///
    /// Returns the inferred 64-bit sequence number if it is fresh, [`Error::Replayed`] if
    /// it was already recorded and [`Error::TooOld`] if it lies below the window (or is
    /// 0). Call it before decryption, and [`update`](Self::update) with the returned
    /// value once the ICV verified.
    #[inline]
    pub fn check(&self, seq_wire: u32) -> Result<u64, Error> {
        let seq = self.infer(seq_wire);
        self.check_seq(seq)?;
        Ok(seq)
    }

    /// Checks a 64-bit sequence number without recording it (the part of
    /// [`check`](Self::check) after the inference).
    #[inline]
    pub fn check_seq(&self, seq: u64) -> Result<(), Error> {
        if seq > self.highest {
            return Ok(());
        }
        self.check_late(seq)
    }

    /// Records a sequence number whose packet was authenticated.
    ///
    /// The same checks as [`check_seq`](Self::check_seq) run first: a sequence number
    /// that is not fresh is not recorded and its error is returned (this is what stops a
    /// second packet with the same number in one burst). A number above the top moves
    /// the window up; one below it goes to the [`LateHistogram`]. Pass the value `check`
    /// returned (without ESN it is below 2^32; a larger value is not refused, but would
    /// put the window's top where no 32-bit wire value can follow).
    #[inline]
    pub fn update(&mut self, seq: u64) -> Result<(), Error> {
        if seq > self.highest {
            self.advance(seq);
            return Ok(());
        }
        self.check_late(seq)?;
        if !self.blocks.is_empty() {
            let i = self.block_index(seq);
            self.blocks[i] |= 1u64 << (seq & 63);
        }
        if seq < self.highest {
            self.record_late(self.highest - seq);
        }
        Ok(())
    }

    /// [`update`](Self::update) without its checks, for a `seq` that
    /// [`check`](Self::check) (or [`check_seq`](Self::check_seq)) just accepted with no
    /// change to the window in between (the SA's check, decrypt, record).
    #[inline(always)]
    pub(crate) fn record_checked(&mut self, seq: u64) {
        debug_assert!(
            self.check_seq(seq).is_ok(),
            "record_checked needs a checked seq"
        );
        if seq > self.highest {
            self.advance(seq);
            return;
        }
        if !self.blocks.is_empty() {
            let i = self.block_index(seq);
            self.blocks[i] |= 1u64 << (seq & 63);
        }
        if seq < self.highest {
            self.record_late(self.highest - seq);
        }
    }

    /// Checks and records a wire sequence number in one step: `true` if it was fresh
    /// (and is now recorded), `false` if it was replayed or too old. A too-old packet's
    /// distance goes to the [`LateHistogram`].
    ///
    /// This is for callers that have no ICV to verify in between (the Python
    /// `ReplayWindow.accept`, tests, simulations); an SA uses `check` and `update`.
    #[inline]
    pub fn accept(&mut self, seq_wire: u32) -> bool {
        let seq = self.infer(seq_wire);
        match self.update(seq) {
            Ok(()) => true,
            Err(_) => {
                self.note_too_old(seq);
                false
            }
        }
    }

    /// Adds a too-old packet to the [`LateHistogram`]: its distance `highest - seq`
    /// behind the top, so that the histogram also shows the late packets the window was
    /// too small for. Pass the `seq` of an [`Error::TooOld`] from `check` or `update`.
    ///
    /// Does nothing for a sequence number that is not too old (a replayed or fresh one),
    /// and nothing for 0, which is invalid rather than late.
    pub fn note_too_old(&mut self, seq: u64) {
        let bottom_gap = self.highest.checked_sub(u64::from(self.size));
        if seq != 0 && self.size != 0 && bottom_gap.is_some_and(|gap| seq <= gap) {
            self.record_late(self.highest - seq);
        }
    }

    /// Index of the ring block holding `seq`'s bit (`blocks` must not be empty; its
    /// length is a power of two, so `len - 1` is the mask; derived rather than kept,
    /// as the window of every inbound SA is 8 bytes smaller for it).
    #[inline]
    fn block_index(&self, seq: u64) -> usize {
        (seq >> 6) as usize & (self.blocks.len() - 1)
    }

    /// The `W` of RFC 4303 Appendix A: `size`, or 2^31 when `size` is 0.
    #[inline]
    fn infer_window(&self) -> u32 {
        if self.size == 0 {
            INFER_WINDOW_WHEN_OFF
        } else {
            self.size
        }
    }

    /// The verdict for `seq <= highest`.
    #[inline]
    fn check_late(&self, seq: u64) -> Result<(), Error> {
        // `highest - seq` cannot underflow here; `seq + size` could overflow.
        if seq == 0 || (self.size != 0 && self.highest - seq >= u64::from(self.size)) {
            return Err(Error::TooOld {
                seq,
                highest: self.highest,
            });
        }
        if !self.blocks.is_empty() && self.blocks[self.block_index(seq)] & (1u64 << (seq & 63)) != 0
        {
            return Err(Error::Replayed { seq });
        }
        Ok(())
    }

    /// Moves the top up to `seq > highest` and records `seq`.
    #[inline]
    fn advance(&mut self, seq: u64) {
        if !self.blocks.is_empty() {
            let old_block = self.highest >> 6;
            let new_block = seq >> 6;
            if new_block != old_block {
                self.clear_blocks(old_block, new_block);
            }
            let i = self.block_index(seq);
            self.blocks[i] |= 1u64 << (seq & 63);
        }
        self.highest = seq;
    }

    /// Clears the ring blocks the top moves into, `old_block + 1 ..= new_block` (at most
    /// the whole ring once).
    #[cold]
    fn clear_blocks(&mut self, old_block: u64, new_block: u64) {
        let n = (new_block - old_block).min(self.blocks.len() as u64);
        for k in 1..=n {
            let i = self.block_index((old_block + k) << 6);
            self.blocks[i] = 0;
        }
    }
}

impl fmt::Debug for ReplayWindow {
    /// Shows the settings and the top, not the bitmap (up to 4 MiB).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("size", &self.size)
            .field("esn", &self.esn)
            .field("highest", &self.highest)
            .field("blocks", &self.blocks.len())
            .field("late", self.late_histogram())
            .finish()
    }
}

/// Counts of late packets by how far behind the window's top they arrived.
///
/// Bucket 0 counts distance 1 (the packet just below the top), bucket `k` distances in
/// `[2^k, 2^(k+1))`, for `k` up to 63. A window of size `W` accepts a late packet exactly
/// when its distance is below `W`, so for a power-of-two `W = 2^m` the packets it would
/// have accepted are exactly those of buckets `0..m`: this is what
/// [`window_for_fraction`](Self::window_for_fraction) uses to suggest a window size.
/// A fixed array, never allocates.
#[derive(Clone, PartialEq, Eq)]
pub struct LateHistogram {
    buckets: [u64; 64],
}

impl LateHistogram {
    /// An empty histogram.
    pub const fn new() -> LateHistogram {
        LateHistogram { buckets: [0; 64] }
    }

    /// A histogram with these counters (a restored snapshot's).
    pub(crate) const fn from_buckets(buckets: [u64; 64]) -> LateHistogram {
        LateHistogram { buckets }
    }

    /// Counts one late packet `distance` (at least 1) behind the top; 0 is ignored.
    #[inline]
    pub fn record(&mut self, distance: u64) {
        if distance != 0 {
            let k = 63 - distance.leading_zeros() as usize;
            self.buckets[k] = self.buckets[k].saturating_add(1);
        }
    }

    /// The 64 counters; index `k` covers the distances of
    /// [`bucket_range(k)`](Self::bucket_range).
    pub fn buckets(&self) -> &[u64; 64] {
        &self.buckets
    }

    /// The number of late packets counted (saturating).
    pub fn total(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, &b| a.saturating_add(b))
    }

    /// The distances bucket `k` counts: `(2^k, 2^(k+1))` as inclusive lower and exclusive
    /// upper bound. For `k = 63` the upper bound saturates to `u64::MAX`, which is still
    /// exact: no distance reaches it, since sequence number 0 is never valid.
    ///
    /// # Panics
    ///
    /// If `k >= 64`.
    pub fn bucket_range(k: usize) -> (u64, u64) {
        assert!(k < 64, "LateHistogram has 64 buckets, asked for bucket {k}");
        let lower = 1u64 << k;
        (lower, lower.saturating_mul(2))
    }

    /// The smallest power-of-two window that would have accepted at least `fraction` (0
    /// to 1) of the late packets counted: `2^m` for the smallest `m` whose buckets
    /// `0..m` hold that many.
    ///
    /// Returns 1 when no late packet is needed (an empty histogram or `fraction <= 0`),
    /// and `u64::MAX` for 2^64 (packets in bucket 63 needed). A `fraction` above 1 or
    /// NaN is taken as 1. The result is not clamped to the sizes
    /// [`ReplayWindow::new`] accepts (32 to 2^24): clamp it before use.
    pub fn window_for_fraction(&self, fraction: f64) -> u64 {
        let fraction = if fraction.is_nan() {
            1.0
        } else {
            fraction.min(1.0)
        };
        let total = self.total();
        // Float rounding must not make "all" unreachable: cap at the total.
        let needed = ((fraction * total as f64).ceil().max(0.0) as u64).min(total);
        let mut covered = 0u64;
        for m in 0..=64 {
            if covered >= needed {
                return 1u64.checked_shl(m).unwrap_or(u64::MAX);
            }
            if let Some(&count) = self.buckets.get(m as usize) {
                covered = covered.saturating_add(count);
            }
        }
        u64::MAX
    }
}

impl Default for LateHistogram {
    fn default() -> Self {
        LateHistogram::new()
    }
}

impl fmt::Debug for LateHistogram {
    /// Shows the total and the non-empty buckets, keyed by their lower bound.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct NonEmpty<'a>(&'a [u64; 64]);
        impl fmt::Debug for NonEmpty<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_map()
                    .entries(
                        self.0
                            .iter()
                            .enumerate()
                            .filter(|&(_, &c)| c != 0)
                            .map(|(k, c)| (1u64 << k, c)),
                    )
                    .finish()
            }
        }
        f.debug_struct("LateHistogram")
            .field("total", &self.total())
            .field("buckets", &NonEmpty(&self.buckets))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO32: u64 = 1 << 32;

    fn esn_window(size: u32, highest: u64) -> ReplayWindow {
        ReplayWindow::with_highest(size, true, highest).unwrap()
    }

    #[test]
    fn size_validation() {
        for bad in [1, 31, MAX_SIZE + 1, u32::MAX] {
            let err = ReplayWindow::new(bad, false).unwrap_err();
            assert_eq!(err.field(), "replay_window");
        }
        for good in [0, 32, 33, 64, 100, 1024, MAX_SIZE] {
            let w = ReplayWindow::new(good, true).unwrap();
            assert_eq!(w.size(), good);
            assert!(w.esn());
            assert_eq!(w.highest(), 0);
        }
        assert!(ReplayWindow::with_highest(64, false, TWO32).is_err());
        assert_eq!(
            ReplayWindow::with_highest(64, false, TWO32)
                .unwrap_err()
                .field(),
            "seq"
        );
        assert!(ReplayWindow::with_highest(64, false, TWO32 - 1).is_ok());
        assert!(ReplayWindow::with_highest(64, true, u64::MAX).is_ok());
    }

    #[test]
    fn ring_sizes() {
        let blocks = |size| ReplayWindow::new(size, false).unwrap().blocks.len();
        assert_eq!(blocks(0), 0);
        assert_eq!(blocks(32), 2);
        assert_eq!(blocks(64), 2);
        assert_eq!(blocks(65), 4);
        assert_eq!(blocks(1024), 32);
        assert_eq!(blocks(MAX_SIZE), 1 << 19);
    }

    #[test]
    fn esn_case_a_same_subspace() {
        // Tl >= W - 1: below the window's bottom means the next subspace.
        let w = esn_window(64, 5 * TWO32 + 1000);
        assert_eq!(w.infer(1000), 5 * TWO32 + 1000);
        assert_eq!(w.infer(937), 5 * TWO32 + 937); // bottom: 1000 - 63
        assert_eq!(w.infer(936), 6 * TWO32 + 936);
        assert_eq!(w.infer(u32::MAX), 5 * TWO32 + u64::from(u32::MAX));
        assert_eq!(w.infer(0), 6 * TWO32);
        assert_eq!(w.check(0), Ok(6 * TWO32));
        assert_eq!(
            w.check(937),
            Err(Error::Replayed {
                seq: 5 * TWO32 + 937
            })
        );
    }

    #[test]
    fn esn_case_b_two_subspaces() {
        // Tl < W - 1: at or above the (wrapped) bottom means the previous subspace.
        let w = esn_window(64, 5 * TWO32 + 10);
        let bottom = 10u32.wrapping_sub(63);
        assert_eq!(w.infer(bottom), 4 * TWO32 + u64::from(bottom));
        assert_eq!(w.infer(u32::MAX), 4 * TWO32 + u64::from(u32::MAX));
        assert_eq!(w.infer(bottom - 1), 5 * TWO32 + u64::from(bottom - 1));
        assert_eq!(w.infer(11), 5 * TWO32 + 11);
        assert_eq!(w.infer(0), 5 * TWO32);
    }

    #[test]
    fn esn_across_the_2_32_boundary() {
        let mut w = ReplayWindow::new(64, true).unwrap();
        assert!(w.accept(u32::MAX - 4));
        assert_eq!(w.highest(), TWO32 - 5);
        assert_eq!(w.check(3), Ok(TWO32 + 3));
        assert!(w.accept(3));
        assert_eq!(w.highest(), TWO32 + 3);
        // Inside the window, in the lower subspace.
        assert_eq!(w.check(u32::MAX - 9), Ok(TWO32 - 10));
        assert!(w.accept(u32::MAX - 9));
        assert_eq!(w.highest(), TWO32 + 3);
        assert!(!w.accept(u32::MAX - 9));
        // Wire 0 with high half 1 is a valid sequence number.
        assert_eq!(w.check(0), Ok(TWO32));
        // The window's bottom is (2^32 + 3) - 63 = 2^32 - 60; a wire value below it
        // reads as the next subspace (RFC 4303 Appendix A), so with ESN only the 64-bit
        // check can answer "too old".
        assert_eq!(w.check(u32::MAX - 59), Ok(TWO32 - 60));
        assert_eq!(w.check(u32::MAX - 60), Ok(2 * TWO32 - 61));
        assert_eq!(
            w.check_seq(TWO32 - 61),
            Err(Error::TooOld {
                seq: TWO32 - 61,
                highest: TWO32 + 3
            })
        );
    }

    #[test]
    fn esn_edges_of_the_64_bit_space() {
        // High half 0: nothing below, so the "previous subspace" reads as ahead.
        let w = ReplayWindow::new(64, true).unwrap();
        assert_eq!(w.check(u32::MAX), Ok(u64::from(u32::MAX)));
        assert_eq!(w.check(1), Ok(1));
        assert_eq!(w.check(0), Err(Error::TooOld { seq: 0, highest: 0 }));
        // High half 2^32 - 1: nothing above, so a value below the bottom is too old.
        let top = u64::MAX - 100;
        let w = esn_window(64, top);
        assert_eq!(
            w.check(5),
            Err(Error::TooOld {
                seq: (u64::MAX << 32) | 5,
                highest: top
            })
        );
        assert_eq!(w.check(u32::MAX), Ok(u64::MAX));
        let mut w = esn_window(64, u64::MAX - 1);
        assert!(w.accept(u32::MAX));
        assert_eq!(w.highest(), u64::MAX);
        assert!(!w.accept(u32::MAX));
        assert!(!w.accept(u32::MAX - 10)); // restored: the window counts as received
    }

    #[test]
    fn esn_off_window_infers_with_2_31() {
        let mut w = ReplayWindow::new(0, true).unwrap();
        assert!(w.accept(u32::MAX - 5));
        assert_eq!(w.highest(), TWO32 - 6);
        assert!(w.accept(7));
        assert_eq!(w.highest(), TWO32 + 7);
        // 2^31 - 1 behind the top is still the same subspace pair.
        assert_eq!(
            w.check(8u32.wrapping_sub(1 << 31)),
            Ok(TWO32 + 8 - (1 << 31))
        );
        assert_eq!(
            w.check(7u32.wrapping_sub(1 << 31)),
            Ok(2 * TWO32 + 7 - (1 << 31))
        );
    }

    #[test]
    fn no_esn_is_the_wire_value() {
        let mut w = ReplayWindow::new(64, false).unwrap();
        assert!(w.accept(u32::MAX));
        assert_eq!(
            w.check(3),
            Err(Error::TooOld {
                seq: 3,
                highest: u64::from(u32::MAX)
            })
        );
    }

    #[test]
    fn exact_width() {
        for size in [32u32, 33, 64, 100, 1024, 4095] {
            let mut w = ReplayWindow::new(size, false).unwrap();
            let top = 10_000u32;
            assert!(w.accept(top));
            let bottom = top + 1 - size; // seq + size == highest + 1
            assert_eq!(
                w.check(bottom - 1),
                Err(Error::TooOld {
                    seq: u64::from(bottom - 1),
                    highest: u64::from(top)
                }),
                "size {size}"
            );
            assert_eq!(w.check(bottom), Ok(u64::from(bottom)), "size {size}");
            assert!(w.accept(bottom));
            assert!(!w.accept(bottom));
            for s in bottom + 1..top {
                assert!(w.accept(s), "size {size} seq {s}");
            }
            assert!(!w.accept(top));
        }
    }

    #[test]
    fn sequence_number_zero() {
        for size in [0, 32, 64] {
            for esn in [false, true] {
                let mut w = ReplayWindow::new(size, esn).unwrap();
                assert_eq!(w.check(0), Err(Error::TooOld { seq: 0, highest: 0 }));
                assert_eq!(w.update(0), Err(Error::TooOld { seq: 0, highest: 0 }));
                assert!(!w.accept(0));
                assert!(w.accept(1));
                assert_eq!(w.update(0), Err(Error::TooOld { seq: 0, highest: 1 }));
                assert_eq!(w.late_histogram().total(), 0);
            }
        }
    }

    #[test]
    fn off_window_accepts_everything_but_zero() {
        let mut w = ReplayWindow::new(0, false).unwrap();
        assert!(w.accept(1000));
        assert!(w.accept(1000));
        assert!(w.accept(1));
        assert!(w.accept(1));
        assert_eq!(w.highest(), 1000);
        assert_eq!(w.late_histogram().total(), 2);
        w.note_too_old(1);
        assert_eq!(w.late_histogram().total(), 2);
    }

    #[test]
    fn update_rechecks() {
        let mut w = ReplayWindow::new(64, false).unwrap();
        let a = w.check(10).unwrap();
        let b = w.check(10).unwrap();
        assert_eq!(w.update(a), Ok(()));
        assert_eq!(w.update(b), Err(Error::Replayed { seq: 10 }));
        let c = w.check(9).unwrap();
        assert!(w.accept(200));
        assert_eq!(
            w.update(c),
            Err(Error::TooOld {
                seq: 9,
                highest: 200
            })
        );
    }

    #[test]
    fn largest_window() {
        let mut w = ReplayWindow::new(MAX_SIZE, false).unwrap();
        let top = 3 * MAX_SIZE + 12_345;
        assert!(w.accept(top));
        let bottom = top - MAX_SIZE + 1;
        assert!(!w.accept(bottom - 1));
        for s in (bottom..top).step_by(997) {
            assert!(w.accept(s));
            assert!(!w.accept(s));
        }
        assert!(!w.accept(bottom));
        // Walk the top forward over a full window, in order.
        for s in top + 1..=top + MAX_SIZE {
            assert!(w.accept(s));
        }
        assert!(!w.accept(top)); // too old now
        assert!(!w.accept(top + 1)); // the bottom, already received
        assert!(w.accept(top + MAX_SIZE + 1));
    }

    #[test]
    fn huge_jump_then_old_packet() {
        let mut w = ReplayWindow::new(1024, true).unwrap();
        for s in 1..=2000u32 {
            assert!(w.accept(s));
        }
        let jump = 2000 + 1_000_000_000u64;
        assert_eq!(w.update(jump), Ok(()));
        assert_eq!(w.highest(), jump);
        // Stale bits from before the jump must not be read as received.
        for s in (jump - 1023)..jump {
            assert_eq!(w.check_seq(s), Ok(()), "seq {s}");
        }
        assert_eq!(
            w.check_seq(1500),
            Err(Error::TooOld {
                seq: 1500,
                highest: jump
            })
        );
        // On the wire, 1500 now reads as the next subspace (RFC 4303 Appendix A).
        assert_eq!(w.check(1500), Ok(TWO32 + 1500));
        // A jump across the 2^32 boundary with ESN, then the pre-jump range is too old.
        assert!(w.accept(5));
        assert_eq!(w.highest(), TWO32 + 5);
        assert!(w.accept(u32::MAX));
        assert!(!w.accept(u32::MAX));
        // Below the window's bottom, a wire value reads as the next subspace (ahead).
        assert_eq!(w.check(2000), Ok(TWO32 + 2000));
        assert_eq!(w.check(u32::MAX - 1100), Ok(2 * TWO32 - 1101));
        assert_eq!(w.check(u32::MAX - 1017), Ok(TWO32 - 1018)); // the bottom
    }

    #[test]
    fn jump_within_ring_clears_only_passed_blocks() {
        let mut w = ReplayWindow::new(64, false).unwrap(); // 2 blocks, 128-bit ring
        for s in 1..=64u32 {
            assert!(w.accept(s));
        }
        // Move the top by one block: seqs 65..=127 must be fresh, 1 too old.
        assert!(w.accept(128));
        for s in 65..128u32 {
            assert_eq!(w.check(s), Ok(u64::from(s)));
        }
        assert!(!w.accept(64));
        // 65 is the bottom (65 + 64 == 129 > 128).
        assert!(w.accept(65));
    }

    #[test]
    fn restored_window_refuses_old_packets() {
        let mut w = ReplayWindow::with_highest(64, false, 1000).unwrap();
        assert_eq!(w.highest(), 1000);
        for s in 937..=1000u32 {
            assert_eq!(w.check(s), Err(Error::Replayed { seq: u64::from(s) }));
        }
        assert_eq!(
            w.check(936),
            Err(Error::TooOld {
                seq: 936,
                highest: 1000
            })
        );
        // Above the top in the same block is fresh, and the rest stays consistent.
        assert!(w.accept(1001));
        assert!(w.accept(1023));
        assert!(w.accept(1010));
        assert!(!w.accept(1010));
        assert!(w.accept(1100));
        assert!(w.accept(1099));
        assert!(!w.accept(1000));
        // Restoring at a block edge.
        let mut w = ReplayWindow::with_highest(32, true, 63).unwrap();
        assert!(!w.accept(63));
        assert!(w.accept(64));
        let mut w = ReplayWindow::with_highest(32, true, 64).unwrap();
        assert!(!w.accept(64));
        assert!(w.accept(65));
        let w = ReplayWindow::with_highest(64, true, 0).unwrap();
        assert_eq!(w.check(1), Ok(1));
    }

    #[test]
    fn histogram_buckets() {
        assert_eq!(LateHistogram::bucket_range(0), (1, 2));
        assert_eq!(LateHistogram::bucket_range(1), (2, 4));
        assert_eq!(LateHistogram::bucket_range(10), (1024, 2048));
        assert_eq!(LateHistogram::bucket_range(63), (1 << 63, u64::MAX));

        let mut h = LateHistogram::default();
        for d in [1, 2, 3, 4, 7, 8, 1023, 1024, u64::MAX - 1] {
            h.record(d);
        }
        h.record(0);
        let b = h.buckets();
        assert_eq!(
            (b[0], b[1], b[2], b[3], b[9], b[10], b[63]),
            (1, 2, 2, 1, 1, 1, 1)
        );
        assert_eq!(h.total(), 9);
        for (k, &count) in b.iter().enumerate() {
            let (lo, hi) = LateHistogram::bucket_range(k);
            let expect = [1, 2, 3, 4, 7, 8, 1023, 1024, u64::MAX - 1]
                .iter()
                .filter(|&&d| d >= lo && d < hi)
                .count() as u64;
            assert_eq!(count, expect, "bucket {k}");
        }
        assert!(format!("{h:?}").contains("total: 9"));
    }

    #[test]
    fn histogram_from_window() {
        let mut w = ReplayWindow::new(64, false).unwrap();
        assert!(w.accept(100));
        assert!(w.accept(99)); // distance 1
        assert!(w.accept(90)); // distance 10: bucket 3
        assert!(w.accept(37)); // distance 63: bucket 5
        assert!(!w.accept(36)); // too old, distance 64: bucket 6
        assert!(!w.accept(37)); // replayed: not counted again
        assert!(w.accept(101)); // in order: not late
        let b = *w.late_histogram().buckets();
        assert_eq!((b[0], b[3], b[5], b[6]), (1, 1, 1, 1));
        assert_eq!(w.late_histogram().total(), 4);
        // note_too_old counts only too-old sequence numbers.
        w.note_too_old(30); // distance 71: bucket 6
        w.note_too_old(90); // inside the window: ignored
        w.note_too_old(500); // ahead: ignored
        w.note_too_old(0); // invalid: ignored
        assert_eq!(w.late_histogram().buckets()[6], 2);
        assert_eq!(w.late_histogram().total(), 5);
    }

    #[test]
    fn window_suggestion() {
        let mut h = LateHistogram::new();
        assert_eq!(h.window_for_fraction(1.0), 1);
        for _ in 0..90 {
            h.record(3); // bucket 1: a window of 4 accepts them
        }
        for _ in 0..9 {
            h.record(100); // bucket 6: a window of 128
        }
        h.record(5000); // bucket 12: a window of 8192
        assert_eq!(h.window_for_fraction(0.0), 1);
        assert_eq!(h.window_for_fraction(0.5), 4);
        assert_eq!(h.window_for_fraction(0.9), 4);
        assert_eq!(h.window_for_fraction(0.91), 128);
        assert_eq!(h.window_for_fraction(0.99), 128);
        assert_eq!(h.window_for_fraction(0.999), 8192);
        assert_eq!(h.window_for_fraction(1.0), 8192);
        assert_eq!(h.window_for_fraction(2.0), 8192);
        assert_eq!(h.window_for_fraction(f64::NAN), 8192);
        // Check the claim: a window of the suggested size accepts those packets.
        let mut w = ReplayWindow::new(128, false).unwrap();
        assert!(w.accept(10_000));
        assert!(w.accept(10_000 - 127));
        assert!(!w.accept(10_000 - 128));
        h.record(u64::MAX - 1);
        assert_eq!(h.window_for_fraction(1.0), u64::MAX);
    }

    #[test]
    fn debug_is_short() {
        let w = ReplayWindow::new(MAX_SIZE, true).unwrap();
        let s = format!("{w:?}");
        assert!(s.len() < 200, "{s}");
        assert!(s.contains("highest: 0"));
    }
}

pub mod reference {
    //! The naive replay window that [`ReplayWindow`](super::ReplayWindow) is tested
    //! against (property tests and the `replay_window` fuzz target): a set of the
    //! accepted 64-bit sequence numbers plus the highest one, and RFC 4303 Appendix A
    //! inference written independently as "the one value with the wire's low 32 bits in
    //! `[highest - W + 1, highest - W + 2^32]`". Obviously right and slow; it allocates
    //! per packet. Not for the data path.

    use super::LateHistogram;
    use crate::error::Error;
    use std::collections::BTreeSet;

    /// The reference window.
    #[derive(Clone, Debug)]
    pub struct NaiveWindow {
        size: u32,
        esn: bool,
        highest: u64,
        /// Sequence numbers up to here count as received (a restored window).
        restored: u64,
        seen: BTreeSet<u64>,
        late: LateHistogram,
    }

    impl NaiveWindow {
        /// An empty window of `size` packets (0: replay protection off).
        pub fn new(size: u32, esn: bool) -> NaiveWindow {
            NaiveWindow::with_highest(size, esn, 0)
        }

        /// A window restored at `highest`: as `ReplayWindow::with_highest`, everything
        /// up to `highest` counts as received.
        pub fn with_highest(size: u32, esn: bool, highest: u64) -> NaiveWindow {
            NaiveWindow {
                size,
                esn,
                highest,
                restored: highest,
                seen: BTreeSet::new(),
                late: LateHistogram::new(),
            }
        }

        /// The highest sequence number recorded.
        pub fn highest(&self) -> u64 {
            self.highest
        }

        /// The late-packet histogram, as the real window keeps it.
        pub fn late_histogram(&self) -> &LateHistogram {
            &self.late
        }

        /// The window `W` of RFC 4303 Appendix A inference (2^31 when the window is off).
        pub fn inference_window(&self) -> u64 {
            if self.size == 0 {
                1 << 31
            } else {
                u64::from(self.size)
            }
        }

        /// The 64-bit sequence number of a wire value.
        pub fn infer(&self, wire: u32) -> u64 {
            if !self.esn {
                return u64::from(wire);
            }
            let span = 1i128 << 32;
            let bottom = i128::from(self.highest) - i128::from(self.inference_window()) + 1;
            let mut c = bottom + (i128::from(wire) - bottom).rem_euclid(span);
            if c < 0 {
                // No subspace below 0: the only candidate is ahead.
                c += span;
            }
            if c > i128::from(u64::MAX) {
                // No subspace above 2^64 - 1: the only candidate is below the window.
                c -= span;
            }
            u64::try_from(c).unwrap_or(u64::MAX)
        }

        /// Fresh (`Ok`), replayed or too old, without recording anything.
        pub fn check(&self, seq: u64) -> Result<(), Error> {
            let too_old = seq == 0
                || (self.size != 0
                    && u128::from(seq) + u128::from(self.size) <= u128::from(self.highest));
            if too_old {
                Err(Error::TooOld {
                    seq,
                    highest: self.highest,
                })
            } else if self.size != 0 && (seq <= self.restored || self.seen.contains(&seq)) {
                Err(Error::Replayed { seq })
            } else {
                Ok(())
            }
        }

        /// Records a fresh `seq`; refuses it as [`NaiveWindow::check`] does otherwise.
        pub fn update(&mut self, seq: u64) -> Result<(), Error> {
            self.check(seq)?;
            if seq < self.highest {
                self.late.record(self.highest - seq);
            }
            self.seen.insert(seq);
            self.highest = self.highest.max(seq);
            Ok(())
        }

        /// Adds a too-old `seq` to the late histogram (ignores anything else).
        pub fn note_too_old(&mut self, seq: u64) {
            if seq != 0 && matches!(self.check(seq), Err(Error::TooOld { .. })) {
                self.late.record(self.highest - seq);
            }
        }
    }
}
