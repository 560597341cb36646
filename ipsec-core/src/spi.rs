//! SPI allocation for a key manager: `get_spi` as IKE daemons need it.
//!
//! The receiver of an SA chooses its SPI (RFC 4301 §4.1; in IKEv2 each side proposes
//! the SPI it wants to receive on, RFC 7296 §2.9). An [`SpiAllocator`] hands out SPIs
//! that are random (RFC 4303 §2.1 leaves the choice to the receiver; random SPIs do not
//! tell an observer how many SAs exist or when they were made), never below 256 (0..=255
//! are reserved by IANA) and never in use or reserved.
//!
//! An allocated SPI is *reserved* until the caller installs the SA that uses it
//! ([`SpiAllocator::install`]) or the reservation runs out by the caller's clock, as the
//! larval SA that Linux's `XFRM_MSG_ALLOCSPI` creates does: a negotiation that fails or
//! is abandoned gives its SPI back by itself. SPIs chosen elsewhere (SAs configured from
//! a file, or installed without asking) are recorded with [`SpiAllocator::mark_in_use`].
//!
//! The allocator reads no clock: every call that depends on time takes `now`.

use crate::error::ConfigError;
use core::fmt;
use core::time::Duration;
use std::collections::{HashMap, HashSet};

/// Why an SPI could not be allocated or recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpiError {
    /// Every SPI of the allocator's range is in use or reserved.
    Exhausted {
        /// The smallest SPI of the range.
        min: u32,
        /// The largest SPI of the range.
        max: u32,
    },
    /// The SPI is reserved by IANA (0..=255, RFC 4303 §2.1) and never used for an SA.
    ReservedByIana(u32),
    /// [`SpiAllocator::install`] of an SPI that is not (or no longer) reserved.
    NotReserved(u32),
    /// The OS random generator failed.
    RandomnessUnavailable,
}

impl fmt::Display for SpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SpiError::Exhausted { min, max } => write!(
                f,
                "no free SPI: every SPI from {min:#010x} to {max:#010x} is in use or reserved"
            ),
            SpiError::ReservedByIana(spi) => write!(
                f,
                "SPI {spi} is reserved: values 0..=255 are reserved by IANA (RFC 4303 §2.1)"
            ),
            SpiError::NotReserved(spi) => write!(
                f,
                "SPI {spi:#010x} is not reserved (never allocated, already installed, \
                 released, or its reservation ran out)"
            ),
            SpiError::RandomnessUnavailable => {
                f.write_str("the OS random generator failed: no SPI can be drawn")
            }
        }
    }
}

impl std::error::Error for SpiError {}

/// Hands out random SPIs that are never below 256 and never in use; see the
/// [module documentation](self).
///
/// Random draws find a free SPI at once while the range is sparsely used; when a few
/// draws in a row hit used SPIs, the range is scanned from a random point, so an SPI is
/// found whenever one is free and [`SpiError::Exhausted`] means the range is full.
#[derive(Clone, Debug)]
pub struct SpiAllocator {
    min: u32,
    max: u32,
    /// How long an allocated SPI stays reserved without being installed.
    reservation: Duration,
    in_use: HashSet<u32>,
    /// Reserved SPIs and when their reservations run out.
    reserved: HashMap<u32, Duration>,
}

impl Default for SpiAllocator {
    fn default() -> Self {
        SpiAllocator::new()
    }
}

impl SpiAllocator {
    /// The smallest SPI an SA may have (0..=255 are reserved by IANA, RFC 4303 §2.1).
    pub const MIN_SPI: u32 = 256;

    /// How long an allocated SPI stays reserved by default: 165 seconds, the time
    /// strongSwan's default retransmission schedule (4 s, times 1.8 per retry, 5
    /// retries) takes to give up on an exchange: long enough for a negotiation that
    /// retransmits, short enough that abandoned negotiations do not hold SPIs for long.
    pub const DEFAULT_RESERVATION: Duration = Duration::from_secs(165);

    /// An allocator over every valid SPI, 256..=2^32-1, with the default reservation
    /// time ([`Self::DEFAULT_RESERVATION`]).
    pub fn new() -> SpiAllocator {
        SpiAllocator {
            min: Self::MIN_SPI,
            max: u32::MAX,
            reservation: Self::DEFAULT_RESERVATION,
            in_use: HashSet::new(),
            reserved: HashMap::new(),
        }
    }

    /// An allocator that hands out SPIs in `min..=max` only (as strongSwan's
    /// `spi_min`/`spi_max` settings, for example to leave a range to another key
    /// manager). Refused when `min` is below 256 or above `max`.
    pub fn with_range(min: u32, max: u32) -> Result<SpiAllocator, ConfigError> {
        let mut allocator = SpiAllocator::new();
        allocator.set_range(min, max)?;
        Ok(allocator)
    }

    /// Makes later allocations draw from `min..=max` only, keeping what is in use and
    /// reserved. Refused (nothing changed) when `min` is below 256 or above `max`.
    pub fn set_range(&mut self, min: u32, max: u32) -> Result<(), ConfigError> {
        if min < Self::MIN_SPI {
            return Err(ConfigError::new(
                "spi_min",
                format!("{min} is reserved: values 0..=255 are reserved by IANA (RFC 4303 §2.1)"),
            ));
        }
        if min > max {
            return Err(ConfigError::new(
                "spi_max",
                format!("{max:#010x} is below spi_min ({min:#010x})"),
            ));
        }
        self.min = min;
        self.max = max;
        Ok(())
    }

    /// The same allocator with reservations lasting `reservation` (a zero time is
    /// taken as the smallest one, a nanosecond: an SPI is always reserved when handed
    /// out).
    pub fn with_reservation(mut self, reservation: Duration) -> SpiAllocator {
        self.reservation = reservation.max(Duration::from_nanos(1));
        self
    }

    /// The range SPIs are drawn from, `(min, max)`, both included.
    pub fn range(&self) -> (u32, u32) {
        (self.min, self.max)
    }

    /// How long an allocated SPI stays reserved.
    pub fn reservation(&self) -> Duration {
        self.reservation
    }

    /// Draws a random SPI of the range that is neither in use nor reserved at `now`,
    /// and reserves it until `now` + [`Self::reservation`]. Fails with
    /// [`SpiError::Exhausted`] when there is none, or
    /// [`SpiError::RandomnessUnavailable`].
    pub fn allocate(&mut self, now: Duration) -> Result<u32, SpiError> {
        self.expire(now);
        let span = u64::from(self.max - self.min) + 1;
        const DRAWS: usize = 16;
        let mut random = [0u8; 8 * DRAWS];
        getrandom::fill(&mut random).map_err(|_| SpiError::RandomnessUnavailable)?;
        let mut draws = random
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
        // Modulo bias: at most span / 2^64, below 2^-32.
        let pick = |r: u64| self.min + (r % span) as u32;
        let mut chosen = None;
        for r in draws.by_ref().take(DRAWS - 1) {
            let spi = pick(r);
            if self.is_free(spi) {
                chosen = Some(spi);
                break;
            }
        }
        let spi = match chosen {
            Some(spi) => spi,
            // Crowded: scan the whole range from a random point.
            None => {
                let start = pick(draws.next().unwrap_or(0)) - self.min;
                (0..span)
                    .map(|k| self.min + ((u64::from(start) + k) % span) as u32)
                    .find(|&spi| self.is_free(spi))
                    .ok_or(SpiError::Exhausted {
                        min: self.min,
                        max: self.max,
                    })?
            }
        };
        self.reserved
            .insert(spi, now.saturating_add(self.reservation));
        Ok(spi)
    }

    /// Turns the reservation of `spi` (from [`Self::allocate`], still running at `now`)
    /// into "in use": the SA that uses it was installed. Fails with
    /// [`SpiError::NotReserved`] otherwise.
    pub fn install(&mut self, spi: u32, now: Duration) -> Result<(), SpiError> {
        match self.reserved.remove(&spi) {
            Some(until) if now < until => {
                self.in_use.insert(spi);
                Ok(())
            }
            _ => Err(SpiError::NotReserved(spi)),
        }
    }

    /// Records `spi` as in use (an SA whose SPI was chosen without this allocator: from
    /// a file, or by another node); a reservation of it becomes "in use" too. An SPI
    /// outside the allocator's range is recorded as well (it is never drawn anyway).
    /// Fails with [`SpiError::ReservedByIana`] for 0..=255.
    pub fn mark_in_use(&mut self, spi: u32) -> Result<(), SpiError> {
        if spi < Self::MIN_SPI {
            return Err(SpiError::ReservedByIana(spi));
        }
        self.reserved.remove(&spi);
        self.in_use.insert(spi);
        Ok(())
    }

    /// Frees `spi`, in use or reserved (its SA was deleted, or the negotiation failed),
    /// so that it may be drawn again. Returns whether it was in use or reserved.
    pub fn release(&mut self, spi: u32) -> bool {
        let was_used = self.in_use.remove(&spi);
        self.reserved.remove(&spi).is_some() || was_used
    }

    /// Whether `spi` is in use.
    pub fn is_in_use(&self, spi: u32) -> bool {
        self.in_use.contains(&spi)
    }

    /// Whether `spi` is reserved at `now` (allocated, not installed, not run out).
    pub fn is_reserved(&self, spi: u32, now: Duration) -> bool {
        self.reserved.get(&spi).is_some_and(|&until| now < until)
    }

    /// How many SPIs are in use.
    pub fn in_use_count(&self) -> usize {
        self.in_use.len()
    }

    /// How many reservations are held (some may have run out since the last call that
    /// took `now`; [`Self::expire`] drops those).
    pub fn reserved_count(&self) -> usize {
        self.reserved.len()
    }

    /// Drops the reservations that ran out at `now` and returns how many.
    /// [`Self::allocate`] does this itself.
    pub fn expire(&mut self, now: Duration) -> usize {
        let before = self.reserved.len();
        self.reserved.retain(|_, &mut until| now < until);
        before - self.reserved.len()
    }

    /// Neither in use nor reserved (reservations that ran out were dropped first).
    fn is_free(&self, spi: u32) -> bool {
        !self.in_use.contains(&spi) && !self.reserved.contains_key(&spi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1000);

    #[test]
    fn spis_are_random_valid_and_distinct() {
        let mut a = SpiAllocator::new();
        let spis: Vec<u32> = (0..1000).map(|_| a.allocate(T0).unwrap()).collect();
        assert!(spis.iter().all(|&s| s >= 256));
        let distinct: HashSet<u32> = spis.iter().copied().collect();
        assert_eq!(distinct.len(), spis.len());
        // Random, not counting: the SPIs are spread over the range and not in order.
        assert!(spis.windows(2).any(|w| w[0] > w[1]));
        assert!(spis.iter().any(|&s| s > u32::MAX / 2));
        assert!(spis.iter().any(|&s| s < u32::MAX / 2));
        assert_eq!(a.reserved_count(), 1000);
    }

    #[test]
    fn a_small_range_is_filled_exactly_then_exhausted() {
        let mut a = SpiAllocator::with_range(256, 263).unwrap();
        a.mark_in_use(260).unwrap();
        let mut got: Vec<u32> = (0..7).map(|_| a.allocate(T0).unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, [256, 257, 258, 259, 261, 262, 263]);
        assert_eq!(
            a.allocate(T0),
            Err(SpiError::Exhausted { min: 256, max: 263 })
        );
        // Releasing one makes exactly that one available again.
        assert!(a.release(258));
        assert_eq!(a.allocate(T0), Ok(258));
        assert!(a.allocate(T0).is_err());
    }

    #[test]
    fn reservations_run_out_by_the_callers_clock_and_install_keeps_the_spi() {
        let mut a = SpiAllocator::with_range(1000, 1001)
            .unwrap()
            .with_reservation(Duration::from_secs(30));
        let first = a.allocate(T0).unwrap();
        let second = a.allocate(T0).unwrap();
        assert!(a.is_reserved(first, T0 + Duration::from_secs(29)));
        a.install(first, T0 + Duration::from_secs(29)).unwrap();
        assert!(a.is_in_use(first));
        assert!(a.allocate(T0 + Duration::from_secs(29)).is_err());
        // The other reservation runs out at T0 + 30 s: its SPI is drawn again, and a
        // late install of it fails.
        let later = T0 + Duration::from_secs(30);
        assert!(!a.is_reserved(second, later));
        assert_eq!(a.install(second, later), Err(SpiError::NotReserved(second)));
        assert_eq!(a.allocate(later), Ok(second));
        // The installed one never comes back until released.
        assert!(a.allocate(later).is_err());
        assert!(a.release(first));
        assert_eq!(a.allocate(later), Ok(first));
    }

    #[test]
    fn bad_ranges_and_iana_spis_are_refused() {
        assert_eq!(
            SpiAllocator::with_range(255, 300).unwrap_err().field(),
            "spi_min"
        );
        assert_eq!(
            SpiAllocator::with_range(400, 300).unwrap_err().field(),
            "spi_max"
        );
        let mut a = SpiAllocator::new();
        assert_eq!(a.mark_in_use(255), Err(SpiError::ReservedByIana(255)));
        assert_eq!(a.install(12345, T0), Err(SpiError::NotReserved(12345)));
        assert!(!a.release(12345));
        assert!(SpiAllocator::with_range(u32::MAX, u32::MAX).is_ok());
    }

    #[test]
    fn the_whole_range_up_to_the_largest_spi_is_usable() {
        let mut a = SpiAllocator::with_range(u32::MAX - 1, u32::MAX).unwrap();
        let mut got = [a.allocate(T0).unwrap(), a.allocate(T0).unwrap()];
        got.sort_unstable();
        assert_eq!(got, [u32::MAX - 1, u32::MAX]);
        assert!(matches!(a.allocate(T0), Err(SpiError::Exhausted { .. })));
    }
}
