//! The control plane of a live [`Gateway`]: what a key manager (an IKE daemon) calls
//! while packets flow.
//!
//! * SAs: [`Gateway::add_sa`], [`Gateway::rekey_sa`] (make-before-break),
//!   [`Gateway::retire_sa`] (delete when a grace time of the caller's clock runs out)
//!   and [`Gateway::delete_sa`]. SPIs for inbound SAs come from
//!   [`Gateway::allocate_spi`]; installing the SA turns its reservation into "in use",
//!   deleting it frees the SPI.
//! * Policies: [`Gateway::install_policy`] (anywhere in the order, e.g. before the
//!   final deny-all), [`Gateway::replace_policy`] (narrow or widen one in place) and
//!   [`Gateway::remove_policy`]. A policy is given as the text of one `[[policy]]`
//!   table, the policy file's own format (DESIGN.md "Policy file (TOML)").
//!
//! # Guarantees
//!
//! * **All or nothing.** A call that fails returns a [`ControlError`] that says why and
//!   changes nothing: the gateway is as it was.
//! * **No packet decided by removed state.** A deleted SA's SPI is unknown to the very
//!   next packet (`unknown_spi`); policies never name an SA that is not installed (a
//!   call that would leave one so is refused with [`ControlError::SaInUse`] or
//!   [`ControlError::MissingSa`]; an SA given to [`Gateway::retire_sa`] counts as gone
//!   already, so that its deletion at the retirement time cannot leave one so either);
//!   the decisions remembered for fragments are forgotten whenever SAs or policies
//!   change, so a later fragment gets the stateless answer (see
//!   [`crate::fragment_policy`]), never one made by a policy or SA that is gone;
//!   the SPD cache ([`Gateway::set_spd_cache`]) is emptied with every policy change.
//! * **Keys are never shared.** An SA whose cipher or integrity key another installed
//!   SA uses is refused, as loading a policy file refuses it ([`crate::sa_set`]).
//!
//! # Make-before-break rekeying (RFC 7296 §2.8, RFC 4301 §4.1)
//!
//! 1. `allocate_spi`, then negotiate; [`Gateway::rekey_sa`] of the **inbound** SA
//!    installs the new one next to the old: both accept, and the new SA serves the old
//!    one's policies.
//! 2. [`Gateway::rekey_sa`] of the **outbound** SA installs the new one and, in the
//!    same call, moves every policy that sent through the old SA to it: the next packet
//!    goes out under the new key; the old outbound SA sends no more and can be deleted.
//! 3. The old inbound SA keeps accepting what the peer sent before it switched, until
//!    [`Gateway::delete_sa`], or the time given to [`Gateway::retire_sa`] comes.
//!
//! Policies keep the SA names they were written with: a name stands for the SA that
//! now carries it (the newest in its rekey chain). A successor takes over the names
//! policies use; a predecessor's name that no policy uses goes with the predecessor
//! (free again once it is deleted), so a new policy names the SA as it is called now. [`crate::gateway::Outbound`] and
//! [`crate::gateway::Inbound`] report the SA that really processed each packet.
//!
//! # Cost and threads
//!
//! Adding, rekeying and deleting an SA are O(1) (hash maps; an SA's creation expands
//! its key schedule; a successor takes over only the names of its predecessor that
//! policies use, so a long chain of rekeys costs no more).
//! Policy changes compile nothing: the compiled classifier stays, and the change joins
//! a short list of changes pending beside it (a removed policy is masked out, an added
//! one is checked in its place; see "Live changes" in the [`crate::spd`] docs), a few
//! microseconds whatever the number of policies. When 32 changes are pending,
//! [`Gateway::policy_rebuild_due`] says to compile again, off the packet thread (the
//! batch path below, with no change in it) or here ([`Gateway::rebuild_policies`]);
//! past 128, the next policy call compiles on the spot (O(n log n)).
//! `benches/benches/control.rs` measures both SA and policy calls. Like every
//! `&mut self` method, a control call runs on the thread that owns the gateway (or
//! under the caller's lock around it), between packets: a packet is processed under
//! the state before or after a change, never half of one.
//!
//! To keep the compile off that thread or lock, batch policy changes in a
//! [`PolicyEdit`] ([`Gateway::edit_policies`]), [`PolicyEdit::compile`] it anywhere,
//! and [`Gateway::commit_policies`] the result: the gateway is needed only to take the
//! edit (O(changes pending): the edit shares the compiled policy list and a persistent
//! map of the SA names, copying neither) and to commit it (an O(1) swap, which hands
//! the old policies back as [`RetiredPolicies`] for the caller to drop on another
//! thread or after its lock: freeing an SPD is O(policies)), and a commit over
//! policies that changed meanwhile is refused ([`ControlError::StalePolicies`]),
//! never half-applied.
//!
//! ```
//! # use ipsec_core::{Gateway, Spd};
//! # use std::time::Duration;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let deny = "[[policy]]\nname = \"deny-all\"\naction = \"discard\"\n";
//! # let mut gw = Gateway::new(Spd::from_toml(deny)?, Duration::ZERO)?;
//! let edit = gw.edit_policies(); // on the gateway's thread: O(changes pending)
//! let compiled = std::thread::spawn(move || edit.compile()).join().expect("compiled");
//! let retired = gw.commit_policies(compiled)?; // on the gateway's thread: O(1)
//! std::thread::spawn(move || drop(retired)); // the old SPD is freed elsewhere
//! # Ok(())
//! # }
//! ```
//!
//! # Many worker threads: one gateway each
//!
//! A gateway is one thread's: its packet path takes no lock at all. A data plane with
//! several worker threads gives each worker its own gateway (as VPP and DPDK give each
//! worker its own state) and makes every control call on each of them, each under
//! that worker's lock for the few microseconds of the call (VPP's worker barrier,
//! per worker): a worker sees the state before or after a change, never half of one,
//! and waits for no other worker. SAs are then either
//!
//! * one SA per worker (RFC 9611 per-resource Child SAs): [`Gateway::add_sa`] on each
//!   worker's gateway, each with its own SA; or
//! * one SA on all workers: a [`SharedSa`](crate::SharedSa) with one lane per worker,
//!   lane `i` installed in worker `i`'s gateway ([`Gateway::add_sa_lane`],
//!   [`Gateway::rekey_sa_lane`]): the outbound lanes take sequence numbers in blocks
//!   from one atomic counter (never one used twice under the key), the inbound lanes
//!   share one replay window (a packet is accepted by one worker at most), counters
//!   are summed by [`SharedSa::stats`](crate::SharedSa::stats).
//!
//! Policies are installed on each worker's gateway (each compiles its own classifier:
//! the control thread does the work once per worker). `ipsec-core/tests/worker_gateways.rs`
//! shows the model; `benches/benches/cores.rs` measures it.
//!
//! # Example: a key manager's calls, from bring-up to teardown
//!
//! One gateway's side of a CHILD_SA's life (the peer makes the mirror-image calls; the
//! keys would come from IKE's KEYMAT, here they are fixed bytes). `ipsec demo` runs the
//! rekey on two gateways under traffic.
//!
//! ```
//! use ipsec_core::sa::{Direction, Mode};
//! use ipsec_core::{Cipher, ControlError, Gateway, Lifetime, LifetimeLimit, SaConfig, SaEvent, Spd};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! fn sa(spi: u32, direction: Direction, key: u8) -> SaConfig {
//!     let mut cfg = SaConfig::new(spi, direction, Mode::Tunnel, Cipher::Aes128Gcm, &[key; 20]);
//!     if direction == Direction::Outbound {
//!         cfg.tunnel([192, 0, 2, 1].into(), [198, 51, 100, 2].into());
//!     }
//!     cfg
//! }
//! let t0 = Duration::from_secs(1_000);
//! let deny = "[[policy]]\nname = \"deny-all\"\naction = \"discard\"\n";
//! let mut gw = Gateway::new(Spd::from_toml(deny)?, t0)?;
//!
//! // Bring-up: our inbound SPI from get_spi, the peer's outbound SPI from the exchange.
//! let spi_in = gw.allocate_spi(t0)?;
//! gw.add_sa("b1-in", sa(spi_in, Direction::Inbound, 1), t0)?;
//! let mut out = sa(0x1001, Direction::Outbound, 2);
//! out.soft_lifetime(Lifetime::NONE.with_time(Duration::from_secs(3_000)));
//! gw.add_sa("b1-out", out, t0)?;
//! let rdp = "name = \"b1-rdp\"\nlocal = \"10.0.0.10\"\nremote = \"10.1.0.0/24\"\n\
//!            protocol = \"tcp\"\nlocal_port = 3389\naction = \"protect\"\n\
//!            sa = [\"b1-out\", \"b1-in\"]\n";
//! gw.install_policy(rdp, Some("deny-all"))?; // before the deny-all, or it never matches
//!
//! // The soft lifetime runs out: rekey, make-before-break.
//! let now = t0 + Duration::from_secs(3_000);
//! let (name, event) = gw.poll_event(now).expect("a rekey is due");
//! assert_eq!((name, event), ("b1-out", SaEvent::Rekey(LifetimeLimit::Time)));
//! let spi_new = gw.allocate_spi(now)?;
//! gw.rekey_sa("b1-in", "b1-in-2", sa(spi_new, Direction::Inbound, 3), now)?; // 1. both accept
//! gw.rekey_sa("b1-out", "b1-out-2", sa(0x1002, Direction::Outbound, 4), now)?; // 2. switch
//! let last = gw.delete_sa("b1-out")?; // 3. sends no more: its final counters
//! assert_eq!(last.packets, 0);
//! gw.retire_sa("b1-in", now + Duration::from_secs(5))?; // late packets: 5 s more
//!
//! // The grace time ends (checked by poll_event and by packets of that SA).
//! assert!(gw.poll_event(now + Duration::from_secs(5)).is_none());
//! assert!(gw.sa("b1-in").is_none());
//!
//! // Refused calls say why and change nothing: "b1-in-2" now serves the policy alone.
//! assert!(matches!(
//!     gw.delete_sa("b1-in-2"),
//!     Err(ControlError::SaInUse { policy, .. }) if policy == "b1-rdp"
//! ));
//! assert!(matches!(
//!     gw.add_sa("b1-in-3", sa(spi_new, Direction::Inbound, 5), now),
//!     Err(ControlError::DuplicateSpi { sa, .. }) if sa == "b1-in-2"
//! ));
//!
//! // Narrow the policy in place; at teardown, the policy goes first, then its SAs.
//! gw.replace_policy(&rdp.replace("10.1.0.0/24", "10.1.0.0/25"))?;
//! gw.remove_policy("b1-rdp")?;
//! gw.delete_sa("b1-out-2")?;
//! gw.delete_sa("b1-in-2")?;
//! assert_eq!(gw.sas().count(), 0);
//! # Ok(())
//! # }
//! ```

use crate::error::ConfigError;
use crate::gateway::{Gateway, SaEntry};
use crate::sa::{Direction, SaConfig, SaStats, SecurityAssociation};
use crate::sa_set::SaKeys;
use crate::sad::SadKey;
use crate::shared::{LaneLink, SaLane};
use crate::spd::parse::sa_direction_error;
use crate::spd::{Policy, PolicySnapshot, Spd};
use core::fmt;
use core::time::Duration;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Why a control call was refused. The gateway is unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlError {
    /// The name is taken: by an installed SA, or by a policy's name for an SA (an SA
    /// that was rekeyed lends its name to its successor).
    DuplicateName {
        /// The name.
        name: String,
    },
    /// An inbound SA with this SPI and the same lookup key is installed: inbound SAs are
    /// found by their SPI, with the destination (and source) address when their
    /// [`crate::SaLookup`] says so (RFC 4301 §4.1), so two may share an SPI only when
    /// their lookups, or the addresses these compare, differ.
    DuplicateSpi {
        /// The SPI.
        spi: u32,
        /// The inbound SA that has it.
        sa: String,
    },
    /// No SA of this name is installed.
    UnknownSa {
        /// The name.
        name: String,
    },
    /// Deleting the SA would leave this policy without the SA it names: remove or
    /// replace the policy first, or install a successor with [`Gateway::rekey_sa`].
    SaInUse {
        /// The SA.
        sa: String,
        /// The first policy that needs it.
        policy: String,
    },
    /// The policy names an SA that is not installed (or only retiring, see
    /// [`Gateway::retire_sa`]), or one of the other direction.
    MissingSa {
        /// The policy.
        policy: String,
        /// The SA name.
        sa: String,
    },
    /// A successor must have the direction of the SA it replaces.
    DirectionMismatch {
        /// The new SA.
        sa: String,
        /// The SA it was to replace.
        replaces: String,
    },
    /// A policy of this name is installed (to change it, [`Gateway::replace_policy`]).
    DuplicatePolicy {
        /// The name.
        name: String,
    },
    /// No policy of this name is installed.
    UnknownPolicy {
        /// The name.
        name: String,
    },
    /// The SA's configuration or the policy's text is invalid, or the SA would share a
    /// key with an installed SA. Says which field and why; never quotes a key.
    Config(ConfigError),
    /// [`Gateway::commit_policies`]: the gateway's policies changed after the edit was
    /// taken; take a new one ([`Gateway::edit_policies`]) and make the changes again.
    StalePolicies,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::DuplicateName { name } => write!(
                f,
                "the name {name:?} is taken by an installed SA, or by policies for the SA \
                 that succeeded one (SA names are unique)"
            ),
            ControlError::DuplicateSpi { spi, sa } => write!(
                f,
                "inbound sa {sa:?} already has SPI {spi:#010x}: inbound SAs are found by \
                 their SPI, so it must be unique among them (unless their lookups tell them \
                 apart by destination address, RFC 4301 §4.1)"
            ),
            ControlError::UnknownSa { name } => write!(f, "no SA called {name:?} is installed"),
            ControlError::SaInUse { sa, policy } => write!(
                f,
                "sa {sa:?} is in use: policy {policy:?} sends or receives through it \
                 (remove or replace the policy, or rekey the SA, first)"
            ),
            ControlError::MissingSa { policy, sa } => write!(
                f,
                "policy {policy:?} names sa {sa:?}, which is not installed (or only SAs being retired serve it)"
            ),
            ControlError::DirectionMismatch { sa, replaces } => write!(
                f,
                "sa {sa:?} cannot replace sa {replaces:?}: a successor must have the \
                 direction of the SA it replaces"
            ),
            ControlError::DuplicatePolicy { name } => write!(
                f,
                "a policy called {name:?} is installed (replace_policy changes it)"
            ),
            ControlError::UnknownPolicy { name } => {
                write!(f, "no policy called {name:?} is installed")
            }
            ControlError::Config(e) => e.fmt(f),
            ControlError::StalePolicies => f.write_str(
                "the policies changed after this edit was taken, or it was taken from \
                 another gateway: edit them again from this gateway's current policies",
            ),
        }
    }
}

impl std::error::Error for ControlError {}

/// A refused [`Gateway::add_sa_lane`] or [`Gateway::rekey_sa_lane`]: why, and the lane,
/// given back unchanged.
#[non_exhaustive]
pub struct LaneRefused {
    /// Why the lane was refused.
    pub error: ControlError,
    /// The lane, as it was given.
    pub lane: Box<SaLane>,
}

impl LaneRefused {
    fn new(error: ControlError, lane: SaLane) -> LaneRefused {
        LaneRefused {
            error,
            lane: Box::new(lane),
        }
    }
}

impl core::fmt::Debug for LaneRefused {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LaneRefused")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl core::fmt::Display for LaneRefused {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for LaneRefused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl From<LaneRefused> for ControlError {
    fn from(r: LaneRefused) -> ControlError {
        r.error
    }
}

/// The name the policy text `text` gives (one `[[policy]]` table, as
/// [`Gateway::install_policy`] takes it), read without checking the rest; `None` when
/// the text is not TOML or has no name. For callers that keep their own index of the
/// installed policies by name (the C ABI's name strings).
pub fn policy_name(text: &str) -> Option<String> {
    Some(crate::spd::parse::policy_name(text)).filter(|n| !n.is_empty())
}

/// The key an inbound SA of `config` is found by.
fn sad_key(config: &SaConfig) -> SadKey {
    SadKey::new(config.spi, config.lookup, config.tunnel)
}

/// The key the inbound SA of `lane` is found by.
fn lane_key(lane: &SaLane) -> SadKey {
    let sa = lane.sa();
    SadKey::new(sa.spi(), sa.lookup(), sa.tunnel())
}

/// Creates the SA `name` of a checked configuration.
fn create(
    name: &str,
    config: SaConfig,
    now: Duration,
) -> Result<SecurityAssociation, ControlError> {
    let label = format!("sa {name:?}");
    SecurityAssociation::new(config, now).map_err(|e| e.in_context(&label).into())
}

impl From<ConfigError> for ControlError {
    fn from(e: ConfigError) -> ControlError {
        ControlError::Config(e)
    }
}

impl Gateway {
    /// Installs a new SA called `name`, created from `config` at `now`. Policies may
    /// name it from now on ([`Gateway::install_policy`]); an inbound SA accepts its
    /// packets at once.
    ///
    /// Refused (nothing changed) when the name is taken, an inbound SA already has the
    /// SPI and the same lookup key ([`crate::SaLookup`]: two SAs may share an SPI when
    /// one is found by its destination address and the other not, or by another
    /// destination), `config` is invalid, or one of its keys serves an installed SA.
    pub fn add_sa(
        &mut self,
        name: &str,
        config: SaConfig,
        now: Duration,
    ) -> Result<(), ControlError> {
        self.check_new_sa(name, sad_key(&config), config.keys())?;
        let sa = create(name, config, now)?;
        self.insert_entry(SaEntry::new(name, sa, None));
        Ok(())
    }

    /// Installs a lane of a [`SharedSa`](crate::SharedSa) as the SA `name`, as
    /// [`Gateway::add_sa`] installs an SA: the model for one SA on several worker
    /// threads, each with its own gateway (see the [module docs](self#cost-and-threads)).
    /// An outbound lane takes its sequence numbers in blocks from the shared counter;
    /// an inbound lane checks them against the one replay window of the SA.
    ///
    /// Refused as [`Gateway::add_sa`] (the lane's configuration is checked as a
    /// configuration would be); the lane is then given back in the error.
    pub fn add_sa_lane(&mut self, name: &str, lane: SaLane) -> Result<(), LaneRefused> {
        if let Err(error) = self.check_new_sa(name, lane_key(&lane), lane.sa().keys()) {
            return Err(LaneRefused::new(error, lane));
        }
        let (sa, link) = lane.into_parts();
        self.insert_entry(SaEntry::new(name, sa, Some(link)));
        Ok(())
    }

    /// Installs the SA `name` as the successor of the installed SA `replaces`
    /// (make-before-break, see the [module docs](self)), both of one direction:
    ///
    /// * inbound: the new SA accepts next to the old one and serves the policies the
    ///   old one serves; the old one accepts until deleted or retired;
    /// * outbound: every policy that sent through `replaces` sends through `name` from
    ///   the next packet on; `replaces` sends no more (delete it when convenient).
    ///
    /// Refused (nothing changed) as [`Gateway::add_sa`], and when `replaces` is not
    /// installed or has the other direction.
    pub fn rekey_sa(
        &mut self,
        replaces: &str,
        name: &str,
        config: SaConfig,
        now: Duration,
    ) -> Result<(), ControlError> {
        self.check_rekey(replaces, name, sad_key(&config), config.keys())?;
        let sa = create(name, config, now)?;
        self.rekey_entry(replaces, name, sa, None);
        Ok(())
    }

    /// [`Gateway::rekey_sa`] with a lane of a [`SharedSa`](crate::SharedSa) as the
    /// successor (see [`Gateway::add_sa_lane`]). Refused as [`Gateway::rekey_sa`]; the
    /// lane is then given back in the error.
    pub fn rekey_sa_lane(
        &mut self,
        replaces: &str,
        name: &str,
        lane: SaLane,
    ) -> Result<(), LaneRefused> {
        if let Err(error) = self.check_rekey(replaces, name, lane_key(&lane), lane.sa().keys()) {
            return Err(LaneRefused::new(error, lane));
        }
        let (sa, link) = lane.into_parts();
        self.rekey_entry(replaces, name, sa, Some(link));
        Ok(())
    }

    /// The checks of [`Gateway::rekey_sa`].
    fn check_rekey(
        &self,
        replaces: &str,
        name: &str,
        key: SadKey,
        keys: SaKeys<'_>,
    ) -> Result<(), ControlError> {
        let old = self.index_of(replaces)?;
        if keys.direction != self.entry(old).sa.direction() {
            return Err(ControlError::DirectionMismatch {
                sa: name.to_owned(),
                replaces: replaces.to_owned(),
            });
        }
        self.check_new_sa(name, key, keys)
    }

    /// Installs the checked SA `sa` as the successor of `replaces`.
    fn rekey_entry(
        &mut self,
        replaces: &str,
        name: &str,
        sa: SecurityAssociation,
        lane: Option<LaneLink>,
    ) {
        let old = self.by_name[replaces];
        let own = name.to_owned();
        let entry = match sa.direction() {
            Direction::Inbound => {
                // Its own name, and those of the old SA's that policies still use.
                let inherited = self.entry(old).serves.iter().filter(|n| {
                    self.spd
                        .first_policy_naming(n, Direction::Inbound)
                        .is_some()
                });
                let serves = core::iter::once(own.clone())
                    .chain(inherited.cloned())
                    .collect();
                SaEntry {
                    name: own.clone(),
                    sa,
                    serves,
                    routes: vec![own],
                    retire_at: None,
                    lane,
                    first_served: None,
                }
            }
            Direction::Outbound => {
                let old_entry = self.entries[old].as_mut().expect("by_name names live SAs");
                let moved = core::mem::take(&mut old_entry.routes);
                for r in &moved {
                    self.routes.remove(r);
                }
                // Its own name, and those of the old SA's that policies still use (as
                // inbound): a chain of rekeys carries the names of its policies, not
                // one name per rekey, so a rekey stays O(1) however long the chain.
                let spd = &self.spd;
                let (kept, dropped): (Vec<String>, Vec<String>) = moved
                    .into_iter()
                    .partition(|n| spd.first_policy_naming(n, Direction::Outbound).is_some());
                for n in &dropped {
                    self.sync_sa_dir(n);
                }
                let routes = core::iter::once(own.clone()).chain(kept).collect();
                SaEntry {
                    name: own.clone(),
                    sa,
                    serves: vec![own],
                    routes,
                    retire_at: None,
                    lane,
                    first_served: None,
                }
            }
        };
        self.insert_entry(entry);
        // Fragments remembered as decided through the old SA must not pick the
        // route up again.
        self.fragments.forget_all();
        // Names no policy used are gone: a policy edit taken before must check its
        // SA names again at commit.
        self.sa_removals += 1;
    }

    /// Deletes the SA `name` at once and returns its final counters: its SPI is
    /// unknown to the next packet (counted as `unknown_spi`) and free for
    /// [`Gateway::allocate_spi`] again; its keys are wiped.
    ///
    /// Refused (nothing changed) when no SA has the name, or a policy still needs it
    /// ([`ControlError::SaInUse`]: an outbound SA that carries a policy's traffic, an
    /// inbound SA that is the last to serve a policy).
    pub fn delete_sa(&mut self, name: &str) -> Result<SaStats, ControlError> {
        let index = self.deletable(name)?;
        let entry = self.remove_entry(index);
        Ok(entry.sa.stats())
    }

    /// Moves the SA `name` to other tunnel endpoints (`tunnel`: outer source and
    /// destination) and UDP encapsulation (`udp_encap`: source and destination port, or
    /// `None` for plain ESP), keeping everything else: keys, sequence number, replay
    /// window, lifetimes and their usage, counters, its name and the policies that use
    /// it. What an IKE daemon's `update_sa` does when NAT-T finds a new mapping or
    /// MOBIKE moves the peer (RFC 4555): the SA goes on where it was, no rekey. A path
    /// MTU learned from ICMP is forgotten (it was the old path's).
    ///
    /// For an outbound SA the next packet carries the new outer header; an inbound SA
    /// found by its addresses ([`crate::SaLookup`]) is found by the new ones from the
    /// next packet. Refused (nothing changed) when no SA has the name
    /// ([`ControlError::UnknownSa`]), the endpoints are not valid for the SA (a
    /// [`ConfigError`] naming the field, as [`Gateway::add_sa`] would), another inbound
    /// SA already has the new lookup key ([`ControlError::DuplicateSpi`]), or the SA is
    /// a lane of a shared SA (its lanes share one sequence counter or replay window:
    /// rekey it instead).
    ///
    /// ```
    /// use std::time::Duration;
    /// use ipsec_core::{Cipher, Direction, Gateway, Mode, SaConfig, Spd};
    ///
    /// let mut gw = Gateway::new(Spd::from_toml("[[policy]]\nname = \"deny\"\naction = \"discard\"\n")?,
    ///     Duration::ZERO)?;
    /// let mut out = SaConfig::new(0x1000, Direction::Outbound, Mode::Tunnel, Cipher::Aes128Gcm, &[7; 20]);
    /// out.tunnel("192.0.2.1".parse()?, "198.51.100.2".parse()?).udp_encap(4500, 4500);
    /// gw.add_sa("out", out, Duration::ZERO)?;
    /// // The peer's NAT mapping changed: same SA, new outer destination and port.
    /// gw.update_sa("out", Some(("192.0.2.1".parse()?, "198.51.100.7".parse()?)),
    ///     Some((4500, 31000)), Duration::from_secs(60))?;
    /// let sa = gw.sa("out").expect("installed");
    /// assert_eq!(sa.tunnel(), Some(("192.0.2.1".parse()?, "198.51.100.7".parse()?)));
    /// assert_eq!(sa.udp_encap(), Some((4500, 31000)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn update_sa(
        &mut self,
        name: &str,
        tunnel: Option<(IpAddr, IpAddr)>,
        udp_encap: Option<(u16, u16)>,
        now: Duration,
    ) -> Result<(), ControlError> {
        let index = self.index_of(name)?;
        let entry = self.entry(index);
        if entry.lane.is_some() {
            return Err(ConfigError::new(
                format!("sa {name:?}"),
                "a lane of a shared SA cannot move on its own (its lanes share one \
                 sequence counter or replay window): rekey it to the new endpoints",
            )
            .into());
        }
        let moved = entry
            .sa
            .moved(tunnel, udp_encap, now)
            .map_err(|e| e.in_context(&format!("sa {name:?}")))?;
        if moved.direction() == Direction::Inbound
            && let Some(other) = self.inbound.get(&crate::gateway::sa_key(&moved))
            && other != index
        {
            return Err(ControlError::DuplicateSpi {
                spi: moved.spi(),
                sa: self.entry(other).name.clone(),
            });
        }
        let mut entry = self.remove_entry(index);
        // The old SA (and its keys) is dropped here: wiped.
        entry.sa = moved;
        self.insert_entry(entry);
        Ok(())
    }

    /// Deletes the SA `name` when the caller's clock reaches `at` (checked on every
    /// packet for that SA and by [`Gateway::poll_event`]): the old inbound SA of a
    /// rekey, kept for the packets still on their way. Calling it again moves the
    /// time. Refused (nothing changed) as [`Gateway::delete_sa`] is, on the state of
    /// now. From now on it counts as gone for the checks of other calls: no policy
    /// may be installed naming only it ([`ControlError::MissingSa`]), and an SA that
    /// would be the last besides it to serve a policy cannot be deleted or retired
    /// ([`ControlError::SaInUse`]); so at `at` no policy needs it.
    pub fn retire_sa(&mut self, name: &str, at: Duration) -> Result<(), ControlError> {
        let index = self.deletable(name)?;
        let entry = self.entries[index].as_mut().expect("a live SA index");
        if entry.retire_at.replace(at).is_none() {
            self.retiring += 1;
        }
        let names: Vec<String> = entry.serves.iter().chain(&entry.routes).cloned().collect();
        for n in &names {
            self.sync_sa_dir(n);
        }
        self.sa_removals += 1;
        Ok(())
    }

    /// The index of the installed SA `name`, or [`ControlError::UnknownSa`].
    fn index_of(&self, name: &str) -> Result<usize, ControlError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| ControlError::UnknownSa {
                name: name.to_owned(),
            })
    }

    /// The index of the SA `name` if no policy would be left without an SA by its
    /// deletion.
    fn deletable(&self, name: &str) -> Result<usize, ControlError> {
        let index = self.index_of(name)?;
        let entry = self.entry(index);
        let in_use = |policy: &Policy| ControlError::SaInUse {
            sa: name.to_owned(),
            policy: policy.name().to_owned(),
        };
        match entry.sa.direction() {
            Direction::Outbound => {
                for r in &entry.routes {
                    if let Some(p) = self.spd.first_policy_naming(r, Direction::Outbound) {
                        return Err(in_use(p));
                    }
                }
            }
            Direction::Inbound => {
                for n in &entry.serves {
                    // SAs on their way out (retiring) do not count as serving.
                    let alone = !self.is_served_by_another(n, index);
                    if alone && let Some(p) = self.spd.first_policy_naming(n, Direction::Inbound) {
                        return Err(in_use(p));
                    }
                }
            }
        }
        Ok(index)
    }

    /// Whether an inbound SA other than `index` that is not retiring serves the
    /// policies naming `name`.
    fn is_served_by_another(&self, name: &str, index: usize) -> bool {
        self.served_by.get(name).is_some_and(|v| {
            v.iter()
                .any(|&i| i != index && self.entry(i).retire_at.is_none())
        })
    }

    /// Checks that `name` is free, the lookup key (SPI, and the addresses its lookup
    /// compares) unique among inbound SAs and the keys unused, for a new SA (of a
    /// configuration, or a lane's).
    fn check_new_sa(&self, name: &str, key: SadKey, keys: SaKeys<'_>) -> Result<(), ControlError> {
        if name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty").into());
        }
        if self.by_name.contains_key(name)
            || self.routes.contains_key(name)
            || self.served_by.contains_key(name)
        {
            return Err(ControlError::DuplicateName {
                name: name.to_owned(),
            });
        }
        if keys.direction == Direction::Inbound
            && let Some(i) = self.inbound.get(&key)
        {
            return Err(ControlError::DuplicateSpi {
                spi: key.spi,
                sa: self.entry(i).name.clone(),
            });
        }
        if let Some((field, other, other_field)) =
            self.keys.find_reuse(keys, |i| self.entry(i).sa.keys())
        {
            let (first_name, first_cfg) = match other {
                Some(i) => (self.entry(i).name.as_str(), self.entry(i).sa.keys()),
                None => (name, keys),
            };
            return Err(crate::sa_set::key_reuse_error(
                (name, keys, field),
                (first_name, first_cfg, other_field),
                other.is_none(),
            )
            .into());
        }
        Ok(())
    }

    /// Installs the policy `text` (one `[[policy]]` table, see the [module
    /// docs](self)) before the installed policy `before`, or last when `before` is
    /// `None` (after a final deny-all it would never match: name the deny-all).
    ///
    /// Refused (nothing changed) when the text is not a valid policy, its name is
    /// taken, it names an SA that is not installed (in the direction it is named for)
    /// or only retiring ones ([`Gateway::retire_sa`]), or `before` names no policy.
    ///
    /// The parse is most of the call's cost (and, on a thread whose caches went to
    /// packets since its last control call, most of that cost is cache misses): a
    /// gateway thread that should not pay it takes a [`Policy::from_toml`] parsed
    /// elsewhere, with [`Gateway::install_parsed_policy`].
    pub fn install_policy(&mut self, text: &str, before: Option<&str>) -> Result<(), ControlError> {
        self.install_parsed_policy(Policy::from_toml(text)?, before)
    }

    /// [`Gateway::install_policy`] of a policy parsed beforehand, on any thread
    /// ([`Policy::from_toml`]): the same checks and the same result, without the parse.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ipsec_core::{Gateway, Policy, Spd};
    ///
    /// let mut gw = Gateway::new(Spd::from_toml(r#"
    ///     [[policy]]
    ///     name = "deny"
    ///     action = "discard"
    /// "#)?, Duration::ZERO)?;
    /// // On the key manager's thread:
    /// let dns = Policy::from_toml(r#"
    ///     name = "dns"
    ///     protocol = "udp"
    ///     remote_port = 53
    ///     action = "bypass"
    /// "#)?;
    /// // On the gateway's: no parse, only the checks against what is installed.
    /// gw.install_parsed_policy(dns, Some("deny"))?;
    /// assert_eq!(gw.spd().policies()[0].name(), "dns");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn install_parsed_policy(
        &mut self,
        policy: Policy,
        before: Option<&str>,
    ) -> Result<(), ControlError> {
        check_policy_sas(&policy, |n| self.sa_direction(n))?;
        if self.policy_position(policy.name()).is_some() {
            return Err(ControlError::DuplicatePolicy {
                name: policy.name().to_owned(),
            });
        }
        let before = match before {
            None => None,
            Some(b) => Some(
                self.policy_position(b)
                    .ok_or_else(|| ControlError::UnknownPolicy { name: b.to_owned() })?,
            ),
        };
        self.spd.insert_policy(before, policy);
        self.policies_changed();
        Ok(())
    }

    /// Replaces the installed policy of the same name as `text` with it, in the same
    /// place in the order (to narrow or widen a policy's selectors, or move it to
    /// other SAs, in one step). Refused (nothing changed) when the text is not a valid
    /// policy, no policy has its name, or it names an SA that is not installed.
    pub fn replace_policy(&mut self, text: &str) -> Result<(), ControlError> {
        self.replace_parsed_policy(Policy::from_toml(text)?)
    }

    /// [`Gateway::replace_policy`] of a policy parsed beforehand
    /// ([`Policy::from_toml`]).
    pub fn replace_parsed_policy(&mut self, policy: Policy) -> Result<(), ControlError> {
        check_policy_sas(&policy, |n| self.sa_direction(n))?;
        let at =
            self.policy_position(policy.name())
                .ok_or_else(|| ControlError::UnknownPolicy {
                    name: policy.name().to_owned(),
                })?;
        self.spd.replace_policy(at, policy);
        self.policies_changed();
        Ok(())
    }

    /// Removes the policy `name`: its traffic is decided by the policies after it
    /// (DISCARD when none matches). The SAs it named stay installed. Refused (nothing
    /// changed) when no policy has the name.
    pub fn remove_policy(&mut self, name: &str) -> Result<(), ControlError> {
        let at = self
            .policy_position(name)
            .ok_or_else(|| ControlError::UnknownPolicy {
                name: name.to_owned(),
            })?;
        self.spd.remove_policy(at);
        self.policies_changed();
        Ok(())
    }

    /// The SPD's reference of the policy `name` (O(1)).
    fn policy_position(&self, name: &str) -> Option<usize> {
        self.spd.ref_of_name(name)
    }

    /// Brings `sa_dirs` up to date for the SA name `n` after a change to the SAs that
    /// carry or serve it (O(log n)).
    pub(crate) fn sync_sa_dir(&mut self, n: &str) {
        match self.sa_direction(n) {
            Some(d) => {
                if self.sa_dirs.get(n) != Some(&d) {
                    self.sa_dirs.insert(n.into(), d);
                }
            }
            None => {
                self.sa_dirs.remove(n);
            }
        }
    }

    /// Whether `sa_dirs` holds the direction of every SA name policies may use now,
    /// and no other name: outbound names are those the outbound SAs carry, inbound
    /// names those served by an inbound SA that is not being retired (O(n): checked
    /// in debug builds by [`Gateway::edit_policies`]).
    fn sa_dirs_consistent(&self) -> bool {
        let fresh: HashMap<&str, Direction> = self
            .routes
            .keys()
            .chain(self.served_by.keys())
            .filter_map(|n| Some((n.as_str(), self.sa_direction(n)?)))
            .collect();
        fresh.len() == self.sa_dirs.len()
            && fresh.iter().all(|(n, d)| self.sa_dirs.get(*n) == Some(d))
    }

    /// The direction of the SA name `n` as policies may use it now (see
    /// [`Gateway::sa_dirs_consistent`]).
    fn sa_direction(&self, n: &str) -> Option<Direction> {
        if self
            .routes
            .get(n)
            .is_some_and(|&i| self.entry(i).retire_at.is_none())
        {
            Some(Direction::Outbound)
        } else if self.is_served_by_another(n, usize::MAX) {
            Some(Direction::Inbound)
        } else {
            None
        }
    }

    /// Starts a batch of policy changes that is compiled away from the gateway: take
    /// it, make the changes and [`PolicyEdit::compile`] on any thread, without the
    /// gateway (the expensive step: a new classifier for the whole SPD), then
    /// [`Gateway::commit_policies`] swaps the result in, O(1) unless SAs were deleted
    /// meanwhile, and hands back the old policies to be dropped on that other thread
    /// too. A C or Python gateway whose packet threads share one lock holds it only
    /// for this call and the commit, never for the compile or the drop.
    ///
    /// Taking an edit copies no policy and no SA name: it shares the compiled policy
    /// list (an `Arc`) and the persistent map of SA names with the gateway, and copies
    /// only the changes pending beside the compiled classifier (at most 128), so it
    /// costs O(changes pending) whatever the number of policies and SAs. The edit
    /// copies the policies into order when it is first changed or read, on its own
    /// thread.
    pub fn edit_policies(&self) -> PolicyEdit {
        debug_assert!(self.sa_dirs_consistent(), "sa_dirs out of date");
        PolicyEdit {
            snapshot: self.spd.snapshot(),
            edited: std::sync::OnceLock::new(),
            sa_dirs: self.sa_dirs.clone(),
            gateway: self.id,
            base: self.policy_generation,
            sa_removals: self.sa_removals,
        }
    }

    /// Swaps in the policies `compiled` from an edit taken by
    /// [`Gateway::edit_policies`] on this gateway, and returns the policies they
    /// replace. Refused (nothing changed) with
    /// [`ControlError::StalePolicies`] when the policies changed since the edit was
    /// taken (take a new one) or it was taken from another gateway, or
    /// [`ControlError::MissingSa`] when an SA a policy names was deleted (or is being
    /// retired) since.
    ///
    /// O(1) when no SA was deleted since the edit was taken (else O(policies), to
    /// check their SA names). The old SPD is not freed here: dropping the returned
    /// [`RetiredPolicies`] is the expensive part (a third of a second at 100,000
    /// policies), so drop it on another thread, or after the gateway's lock is released.
    /// A refused commit drops `compiled` here.
    pub fn commit_policies(
        &mut self,
        compiled: CompiledPolicies,
    ) -> Result<RetiredPolicies, ControlError> {
        if compiled.gateway != self.id || compiled.base != self.policy_generation {
            return Err(ControlError::StalePolicies);
        }
        if compiled.sa_removals != self.sa_removals {
            for p in compiled.spd.policies() {
                for (name, want) in [
                    (p.sa(Direction::Outbound), Direction::Outbound),
                    (p.sa(Direction::Inbound), Direction::Inbound),
                ] {
                    if let Some(n) = name
                        && self.sa_direction(n) != Some(want)
                    {
                        return Err(ControlError::MissingSa {
                            policy: p.name().to_owned(),
                            sa: n.to_owned(),
                        });
                    }
                }
            }
        }
        let old = core::mem::replace(&mut self.spd, compiled.spd);
        self.policy_generation += 1;
        self.epoch += 1;
        self.fragments.forget_all();
        self.flow_cache.clear();
        Ok(RetiredPolicies { _spd: old })
    }

    /// After a (checked) change to the policies: remembered fragment decisions and
    /// cached flows (policy positions and references in the SPD before the change)
    /// are forgotten, and an edit taken before is stale.
    fn policies_changed(&mut self) {
        self.policy_generation += 1;
        self.epoch += 1;
        self.fragments.forget_all();
        self.flow_cache.clear();
    }

    /// True when enough policy changes are pending beside the compiled classifier
    /// (32 or more) that it should be compiled again, off the packet thread: take
    /// [`Gateway::edit_policies`], [`PolicyEdit::compile`] it on another thread, and
    /// [`Gateway::commit_policies`] the result (if a policy changed in between, the
    /// commit is refused as stale: take a new edit). Each pending change costs
    /// lookups that reach it a check of that policy; see "Live changes" in the
    /// [`crate::spd`] docs. Past 128 pending changes, the next policy call compiles on
    /// the spot.
    pub fn policy_rebuild_due(&self) -> bool {
        self.spd.rebuild_due()
    }

    /// Policy changes pending beside the compiled classifier (see
    /// [`Gateway::policy_rebuild_due`]).
    pub fn pending_policy_changes(&self) -> usize {
        self.spd.pending_changes()
    }

    /// Compiles the policy classifier again here and now, O(n log n) (see
    /// [`Gateway::policy_rebuild_due`] for doing it off this thread). The policies do
    /// not change: an edit taken before stays valid.
    pub fn rebuild_policies(&mut self) {
        if self.spd.pending_changes() > 0 {
            self.spd.rebuild();
            // Policy references change (positions do not).
            self.epoch += 1;
            self.fragments.forget_all();
            self.flow_cache.clear();
        }
    }
}

/// Checks the SA names `policy` gives against `dir_of` (each name policies may use,
/// and its direction): a name it does not know is [`ControlError::MissingSa`] (checked
/// first, for both names), a name of the other direction a [`ConfigError`] on the key
/// `sa`. Only the names the policy uses are looked up, so the cost does not grow with
/// the number of SAs.
fn check_policy_sas(
    policy: &Policy,
    dir_of: impl Fn(&str) -> Option<Direction>,
) -> Result<(), ControlError> {
    let named = [
        (policy.sa(Direction::Outbound), Direction::Outbound),
        (policy.sa(Direction::Inbound), Direction::Inbound),
    ];
    let mut found = [None; 2];
    for (k, (name, _)) in named.iter().enumerate() {
        if let Some(n) = name {
            found[k] = Some(dir_of(n).ok_or_else(|| ControlError::MissingSa {
                policy: policy.name().to_owned(),
                sa: (*n).to_owned(),
            })?);
        }
    }
    for ((name, want), is) in named.iter().zip(found) {
        if let (Some(n), Some(is)) = (name, is)
            && is != *want
        {
            let label = format!("policy {:?}", policy.name());
            return Err(sa_direction_error(n, is, *want).in_context(&label).into());
        }
    }
    Ok(())
}

/// A batch of policy changes made away from the gateway ([`Gateway::edit_policies`]):
/// each change is checked as [`Gateway::install_policy`] and the others check it
/// (against the gateway's SAs as they were when the edit was taken) and refused
/// changes change nothing; [`PolicyEdit::compile`] builds the classifier.
#[derive(Clone)]
pub struct PolicyEdit {
    /// The gateway's policies when the edit was taken (shared, not copied).
    snapshot: PolicySnapshot,
    /// The policies in order, copied from the snapshot on the edit's first change or
    /// read (on the edit's thread), and edited.
    edited: std::sync::OnceLock<Vec<Policy>>,
    /// The direction of every SA name policies could use when the edit was taken.
    sa_dirs: imbl::HashMap<Arc<str>, Direction>,
    gateway: u64,
    base: u64,
    sa_removals: u64,
}

impl fmt::Debug for PolicyEdit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEdit")
            .field("changed", &self.edited.get().is_some())
            .field("sa_names", &self.sa_dirs.len())
            .finish_non_exhaustive()
    }
}

impl PolicyEdit {
    /// The policies as edited so far, in order. The first call (or change) copies
    /// them into order, O(n).
    pub fn policies(&self) -> &[Policy] {
        self.edited.get_or_init(|| self.snapshot.to_vec())
    }

    /// The policies, to change.
    fn list(&mut self) -> &mut Vec<Policy> {
        if self.edited.get().is_none() {
            let _ = self.edited.set(self.snapshot.to_vec());
        }
        self.edited.get_mut().expect("set above")
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.policies().iter().position(|p| p.name() == name)
    }

    /// [`Gateway::install_policy`] on the edit.
    pub fn install(&mut self, text: &str, before: Option<&str>) -> Result<(), ControlError> {
        let policy = Policy::from_toml(text)?;
        check_policy_sas(&policy, |n| self.sa_dirs.get(n).copied())?;
        if self.position(policy.name()).is_some() {
            return Err(ControlError::DuplicatePolicy {
                name: policy.name().to_owned(),
            });
        }
        let at = match before {
            None => self.policies().len(),
            Some(b) => self
                .position(b)
                .ok_or_else(|| ControlError::UnknownPolicy { name: b.to_owned() })?,
        };
        self.list().insert(at, policy);
        Ok(())
    }

    /// [`Gateway::replace_policy`] on the edit.
    pub fn replace(&mut self, text: &str) -> Result<(), ControlError> {
        let policy = Policy::from_toml(text)?;
        check_policy_sas(&policy, |n| self.sa_dirs.get(n).copied())?;
        let at = self
            .position(policy.name())
            .ok_or_else(|| ControlError::UnknownPolicy {
                name: policy.name().to_owned(),
            })?;
        self.list()[at] = policy;
        Ok(())
    }

    /// [`Gateway::remove_policy`] on the edit.
    pub fn remove(&mut self, name: &str) -> Result<(), ControlError> {
        let at = self
            .position(name)
            .ok_or_else(|| ControlError::UnknownPolicy {
                name: name.to_owned(),
            })?;
        self.list().remove(at);
        Ok(())
    }

    /// Compiles the edited policies (the expensive step; needs no gateway, so it can
    /// run on any thread while the gateway goes on processing packets). An edit with
    /// no change (a rebuild that compiles the pending changes in) shares the gateway's
    /// compiled policy list when no change was pending either.
    pub fn compile(self) -> CompiledPolicies {
        let spd = match self.edited.into_inner() {
            Some(policies) => Spd::with_policies(policies),
            None => self.snapshot.into_spd(),
        };
        CompiledPolicies {
            spd,
            gateway: self.gateway,
            base: self.base,
            sa_removals: self.sa_removals,
        }
    }
}

/// Policies compiled by [`PolicyEdit::compile`], for [`Gateway::commit_policies`].
#[derive(Debug)]
pub struct CompiledPolicies {
    spd: Spd,
    gateway: u64,
    base: u64,
    sa_removals: u64,
}

/// The policies a [`Gateway::commit_policies`] replaced: the old SPD, compiled
/// classifiers and all, handed back so that the caller frees it where it costs the
/// packets nothing. Dropping it is the expensive part of a commit (O(policies): about
/// a third of a second at 100,000 policies, freeing millions of blocks): drop it on
/// another thread, or after releasing the lock the packet threads wait on. Nothing
/// else can be done with it.
#[must_use = "dropping the retired policies is expensive: drop them off the gateway's thread"]
pub struct RetiredPolicies {
    _spd: Spd,
}

impl fmt::Debug for RetiredPolicies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetiredPolicies").finish_non_exhaustive()
    }
}
