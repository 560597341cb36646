//! A gateway's IPsec data path: the SPD and the SAD together (RFC 4301 §5).
//!
//! [`Gateway::outbound`] classifies a packet with the SPD and then bypasses it,
//! discards it or encrypts it with the SA the PROTECT policy names.
//! [`Gateway::inbound`] finds the SA of an ESP packet by its SPI, decrypts it and checks
//! the inner packet against the selectors of the policies that SA serves (RFC 4301 §5.2:
//! `policy_mismatch` otherwise); cleartext is let in only when a BYPASS policy covers
//! it — cleartext that a PROTECT policy covers is dropped, never accepted.
//!
//! Fragments are decided with state (RFC 4301 §7.3, §7.4; [`crate::fragment_policy`]):
//! the gateway remembers the decision of each first fragment for a bounded time and
//! number of datagrams ([`FragmentLimits`], [`Gateway::set_fragment_limits`]) and gives
//! the datagram's later fragments the same one (PROTECT with the same SA, BYPASS,
//! DISCARD); tiny first fragments and overlapping fragments are dropped
//! (`fragment_too_short`, `fragment_overlap`), and a later fragment whose first
//! fragment was not seen gets [`Spd::lookup_non_first_fragment`]'s answer or is
//! dropped as `fragment_unresolved`. Unfragmented packets never touch that state.
//!
//! Drops that belong to an SA are counted on that SA; the others (unknown SPI, policy
//! discard, unprotected cleartext, fragment drops of cleartext, unparseable packets)
//! on the gateway's own [`SaStats`]. Like an SA, a gateway is owned by one thread at a
//! time.

use crate::buffer::PacketBuf;
use crate::error::{ConfigError, DropReason, Error, Malformed};
pub use crate::fragment_policy::FragmentLimits;
use crate::fragment_policy::{self, FragmentTable};
use crate::packet::{self, NAT_T_PORT};
use crate::sa::{Direction, SaEvent, SaStats, SecurityAssociation};
use crate::spd::{Action, Spd};
use core::time::Duration;
use std::collections::HashMap;

/// What happened to an outbound packet that was not dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outbound<'a> {
    /// Encrypted with the named SA; send it to the SA's peer.
    Protected {
        /// The SA that encrypted it.
        sa: &'a str,
        /// The PROTECT policy that matched.
        policy: &'a str,
    },
    /// A BYPASS policy lets it through in the clear, unchanged.
    Bypassed {
        /// The BYPASS policy that matched.
        policy: &'a str,
    },
}

/// What happened to an inbound packet that was not dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inbound<'a> {
    /// Decrypted by the named SA and checked against its policy; the inner packet is in
    /// the buffer.
    Decrypted {
        /// The SA that decrypted it.
        sa: &'a str,
        /// The first of that SA's policies whose selectors the inner packet matches
        /// (RFC 4301 §5.2).
        policy: &'a str,
    },
    /// Cleartext that a BYPASS policy lets in, unchanged.
    Bypassed {
        /// The BYPASS policy that matched.
        policy: &'a str,
    },
}

/// The SPD and the SAs it names, ready to process packets.
pub struct Gateway {
    spd: Spd,
    names: Vec<String>,
    sas: Vec<SecurityAssociation>,
    by_name: HashMap<String, usize>,
    inbound_by_spi: HashMap<u32, usize>,
    stats: SaStats,
    /// The largest headroom any SA needs (the SAs never change).
    max_headroom: usize,
    /// First fragments' decisions, for the datagrams' later fragments.
    fragments: FragmentTable,
}

impl core::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Gateway")
            .field("sas", &self.names)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Creates the SAs of the SPD's `[[sa]]` tables at time `now`. Fails when an SA's
    /// configuration is invalid or two inbound SAs share an SPI.
    pub fn new(mut spd: Spd, now: Duration) -> Result<Gateway, ConfigError> {
        let configs = spd.take_sas();
        let mut names = Vec::with_capacity(configs.len());
        let mut sas = Vec::with_capacity(configs.len());
        let mut by_name = HashMap::new();
        let mut inbound_by_spi = HashMap::new();
        for named in configs {
            let label = format!("sa {:?}", named.name);
            let sa =
                SecurityAssociation::new(named.config, now).map_err(|e| e.in_context(&label))?;
            if sa.direction() == Direction::Inbound
                && inbound_by_spi.insert(sa.spi(), sas.len()).is_some()
            {
                return Err(ConfigError::new(
                    label,
                    format!("another inbound SA already has SPI {:#010x}", sa.spi()),
                ));
            }
            by_name.insert(named.name.clone(), sas.len());
            names.push(named.name);
            sas.push(sa);
        }
        let max_headroom = sas
            .iter()
            .map(SecurityAssociation::max_headroom)
            .max()
            .unwrap_or(0);
        Ok(Gateway {
            max_headroom,
            spd,
            names,
            sas,
            by_name,
            inbound_by_spi,
            stats: SaStats::default(),
            fragments: FragmentTable::new(FragmentLimits::DEFAULT),
        })
    }

    /// The limits of the memory of first fragments (see [`crate::fragment_policy`]).
    pub fn fragment_limits(&self) -> FragmentLimits {
        self.fragments.limits()
    }

    /// Sets the limits of the memory of first fragments; what it held is forgotten
    /// (later fragments of those datagrams get the stateless answer). Its memory is
    /// allocated here, once.
    pub fn set_fragment_limits(&mut self, limits: FragmentLimits) {
        self.fragments = FragmentTable::new(limits);
    }

    /// How many datagrams' first fragments are remembered at `now` (for monitoring).
    pub fn remembered_datagrams(&self, now: Duration) -> usize {
        self.fragments.len(now)
    }

    /// The policies.
    pub fn spd(&self) -> &Spd {
        &self.spd
    }

    /// The SA called `name`.
    pub fn sa(&self, name: &str) -> Option<&SecurityAssociation> {
        self.by_name.get(name).map(|&i| &self.sas[i])
    }

    /// Every SA with its name, in file order (for monitoring).
    pub fn sas(&self) -> impl Iterator<Item = (&str, &SecurityAssociation)> {
        self.names.iter().map(String::as_str).zip(&self.sas)
    }

    /// The headroom to leave in front of an outbound packet so that any of the
    /// gateway's SAs can encrypt it ([`SecurityAssociation::max_headroom`]).
    pub fn max_headroom(&self) -> usize {
        self.max_headroom
    }

    /// The tailroom to leave behind an outbound packet of `len` bytes so that any of
    /// the gateway's SAs can encrypt it ([`SecurityAssociation::tailroom_for`]).
    pub fn tailroom_for(&self, len: usize) -> usize {
        self.sas
            .iter()
            .map(|sa| sa.tailroom_for(len))
            .max()
            .unwrap_or(0)
    }

    /// Drops that belong to no SA: unknown SPI, policy discard, unprotected cleartext,
    /// packets too malformed to classify.
    pub fn stats(&self) -> &SaStats {
        &self.stats
    }

    /// Checks every SA's lifetimes against `now` and returns the next event the caller
    /// must act on (a rekey or an expiry, as [`SecurityAssociation::poll_event`]) with
    /// the name of its SA, or `None` when nothing is due. Call it until it returns `None`.
    #[must_use]
    pub fn poll_event(&mut self, now: Duration) -> Option<(&str, SaEvent)> {
        self.names
            .iter()
            .zip(self.sas.iter_mut())
            .find_map(|(name, sa)| sa.poll_event(now).map(|e| (name.as_str(), e)))
    }

    fn drop(&mut self, err: Error) -> Error {
        self.stats.count_drop(err.drop_reason());
        err
    }

    /// Classifies the packet in `pkt` (direction outbound) and bypasses, discards or
    /// encrypts it in place with the SA the PROTECT policy names.
    pub fn outbound(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        now: Duration,
    ) -> Result<Outbound<'_>, Error> {
        let decision = match fragment_policy::cleartext_decision(
            &self.spd,
            &mut self.fragments,
            Direction::Outbound,
            pkt.data(),
            now,
        ) {
            Ok(d) => d,
            Err(e) => {
                // (`self.drop` would borrow all of `self`, and the decision borrows
                // the SPD until the verdict is returned.)
                self.stats.count_drop(e.drop_reason());
                return Err(e);
            }
        };
        let found = match (decision.action, decision.policy, decision.sa) {
            (Action::Bypass, Some(policy), _) => return Ok(Outbound::Bypassed { policy }),
            (Action::Protect, Some(policy), Some(name)) => {
                self.by_name.get(name).map(|&i| (i, policy))
            }
            _ => None,
        };
        let Some((i, policy)) = found else {
            self.stats.count_drop(DropReason::PolicyDiscard);
            return Err(Error::PolicyDiscard);
        };
        self.sas[i].encrypt(pkt, now)?;
        Ok(Outbound::Protected {
            sa: &self.names[i],
            policy,
        })
    }

    /// Processes an inbound packet: ESP (or ESP in UDP on the NAT-T port) is decrypted
    /// by the SA of its SPI and checked against that SA's policies; cleartext passes
    /// only under a BYPASS policy.
    pub fn inbound(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        now: Duration,
    ) -> Result<Inbound<'_>, Error> {
        let spi = match esp_spi(pkt.data()) {
            Ok(spi) => spi,
            Err(m) => return Err(self.drop(Error::Malformed(m))),
        };
        let Some(spi) = spi else {
            let decision = match fragment_policy::cleartext_decision(
                &self.spd,
                &mut self.fragments,
                Direction::Inbound,
                pkt.data(),
                now,
            ) {
                Ok(d) => d,
                Err(e) => {
                    self.stats.count_drop(e.drop_reason());
                    return Err(e);
                }
            };
            let err = match (decision.action, decision.policy) {
                (Action::Bypass, Some(policy)) => return Ok(Inbound::Bypassed { policy }),
                (Action::Protect, _) => Error::UnprotectedTraffic,
                _ => Error::PolicyDiscard,
            };
            self.stats.count_drop(err.drop_reason());
            return Err(err);
        };
        let Some(&i) = self.inbound_by_spi.get(&spi) else {
            return Err(self.drop(Error::UnknownSpi { spi }));
        };
        let (spd, fragments, name) = (&self.spd, &mut self.fragments, self.names[i].as_str());
        let mut serving = "";
        self.sas[i].decrypt_verified(pkt, now, |inner| {
            serving = fragment_policy::decrypted_policy(spd, fragments, i, name, inner, now)?;
            Ok(())
        })?;
        Ok(Inbound::Decrypted {
            sa: name,
            policy: serving,
        })
    }
}

/// The SPI of an ESP packet (IP protocol 50, or UDP to or from the NAT-T port that is
/// neither a keepalive nor IKE), or `None` for any other packet.
fn esp_spi(pkt: &[u8]) -> Result<Option<u32>, Malformed> {
    match packet::locate_esp(pkt, Some(&[NAT_T_PORT])) {
        Ok(pos) => match pkt[pos.esp..pos.ip.total_len].get(..4) {
            Some(b) => Ok(Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
            None => Err(Malformed::Truncated),
        },
        // A keepalive or IKE on the NAT-T port, or no ESP at all: policy decides.
        Err(Malformed::NotEsp | Malformed::NatKeepalive | Malformed::NonEspMarker) => Ok(None),
        Err(e) => Err(e),
    }
}
