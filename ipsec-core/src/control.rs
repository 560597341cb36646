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
//!   [`crate::fragment_policy`]), never one made by a policy or SA that is gone.
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
//! now carries it (the newest in its rekey chain). [`crate::gateway::Outbound`] and
//! [`crate::gateway::Inbound`] report the SA that really processed each packet.
//!
//! # Cost and threads
//!
//! Adding, rekeying and deleting an SA are O(1) (hash maps; an SA's creation expands
//! its key schedule). Policy changes compile a new classifier for the whole SPD
//! (O(n log n) in the number of policies, off no lock of the caller's: the gateway is
//! `&mut`) and swap it in; `benches/benches/scale.rs` measures both. Like every
//! `&mut self` method, a control call runs on the thread that owns the gateway (or
//! under the caller's lock around it), between packets: a packet is processed under
//! the state before or after a change, never half of one.

use crate::error::ConfigError;
use crate::gateway::{Gateway, SaEntry};
use crate::sa::{Direction, SaConfig, SaStats, SecurityAssociation};
use crate::spd::parse::{parse_one_policy, policy_name_and_sas};
use crate::spd::{Policy, Spd};
use core::fmt;
use core::time::Duration;
use std::collections::HashMap;

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
    /// An inbound SA with this SPI is installed (inbound SAs are found by SPI).
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
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::DuplicateName { name } => {
                write!(f, "an SA called {name:?} is installed (names are unique)")
            }
            ControlError::DuplicateSpi { spi, sa } => write!(
                f,
                "inbound sa {sa:?} already has SPI {spi:#010x}: inbound SAs are found by \
                 their SPI, so it must be unique among them"
            ),
            ControlError::UnknownSa { name } => write!(f, "no SA called {name:?} is installed"),
            ControlError::SaInUse { sa, policy } => write!(
                f,
                "sa {sa:?} is in use: policy {policy:?} sends or receives through it \
                 (remove or replace the policy, or rekey the SA, first)"
            ),
            ControlError::MissingSa { policy, sa } => write!(
                f,
                "policy {policy:?} names sa {sa:?}, which is not installed in that direction"
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
        }
    }
}

impl std::error::Error for ControlError {}

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
    /// SPI, `config` is invalid, or one of its keys serves an installed SA.
    pub fn add_sa(
        &mut self,
        name: &str,
        config: SaConfig,
        now: Duration,
    ) -> Result<(), ControlError> {
        let sa = self.check_new_sa(name, config, now)?;
        self.insert_entry(SaEntry {
            name: name.to_owned(),
            sa,
            serves: vec![name.to_owned()],
            routes: vec![name.to_owned()],
            retire_at: None,
        });
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
        let &old = self
            .by_name
            .get(replaces)
            .ok_or_else(|| ControlError::UnknownSa {
                name: replaces.to_owned(),
            })?;
        if config.direction != self.entry(old).sa.direction() {
            return Err(ControlError::DirectionMismatch {
                sa: name.to_owned(),
                replaces: replaces.to_owned(),
            });
        }
        let sa = self.check_new_sa(name, config, now)?;
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
                }
            }
            Direction::Outbound => {
                let old_entry = self.entries[old].as_mut().expect("by_name names live SAs");
                let moved = core::mem::take(&mut old_entry.routes);
                for r in &moved {
                    self.routes.remove(r);
                }
                let routes = core::iter::once(own.clone()).chain(moved).collect();
                SaEntry {
                    name: own.clone(),
                    sa,
                    serves: vec![own],
                    routes,
                    retire_at: None,
                }
            }
        };
        self.insert_entry(entry);
        // Fragments remembered as decided through the old SA must not pick the
        // route up again.
        self.fragments.forget_all();
        Ok(())
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
        Ok(*entry.sa.stats())
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
        Ok(())
    }

    /// The index of the SA `name` if no policy would be left without an SA by its
    /// deletion.
    fn deletable(&self, name: &str) -> Result<usize, ControlError> {
        let &index = self
            .by_name
            .get(name)
            .ok_or_else(|| ControlError::UnknownSa {
                name: name.to_owned(),
            })?;
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
                    // Retiring SAs do not count: they will be gone.
                    let alone = self.served_by.get(n).is_none_or(|v| {
                        v.iter()
                            .all(|&i| i == index || self.entry(i).retire_at.is_some())
                    });
                    if alone && let Some(p) = self.spd.first_policy_naming(n, Direction::Inbound) {
                        return Err(in_use(p));
                    }
                }
            }
        }
        Ok(index)
    }

    /// Creates the SA of `config` after checking that `name` is free, its SPI unique
    /// among inbound SAs and its keys unused.
    fn check_new_sa(
        &self,
        name: &str,
        config: SaConfig,
        now: Duration,
    ) -> Result<SecurityAssociation, ControlError> {
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
        if config.direction == Direction::Inbound
            && let Some(&i) = self.inbound_by_spi.get(&config.spi)
        {
            return Err(ControlError::DuplicateSpi {
                spi: config.spi,
                sa: self.entry(i).name.clone(),
            });
        }
        if let Some((field, other, other_field)) =
            self.keys.find_reuse(&config, |i| &self.entry(i).sa.origin)
        {
            let (first_name, first_cfg) = match other {
                Some(i) => (self.entry(i).name.as_str(), &*self.entry(i).sa.origin),
                None => (name, &config),
            };
            return Err(crate::sa_set::key_reuse_error(
                (name, &config, field),
                (first_name, first_cfg, other_field),
                other.is_none(),
            )
            .into());
        }
        let label = format!("sa {name:?}");
        SecurityAssociation::new(config, now).map_err(|e| e.in_context(&label).into())
    }

    /// Installs the policy `text` (one `[[policy]]` table, see the [module
    /// docs](self)) before the installed policy `before`, or last when `before` is
    /// `None` (after a final deny-all it would never match: name the deny-all).
    ///
    /// Refused (nothing changed) when the text is not a valid policy, its name is
    /// taken, it names an SA that is not installed (in the direction it is named for)
    /// or only retiring ones ([`Gateway::retire_sa`]), or `before` names no policy.
    pub fn install_policy(&mut self, text: &str, before: Option<&str>) -> Result<(), ControlError> {
        let policy = self.parse_policy(text)?;
        if self.policy_position(policy.name()).is_some() {
            return Err(ControlError::DuplicatePolicy {
                name: policy.name().to_owned(),
            });
        }
        let at = match before {
            None => self.spd.policies().len(),
            Some(b) => self
                .policy_position(b)
                .ok_or_else(|| ControlError::UnknownPolicy { name: b.to_owned() })?,
        };
        let mut policies = self.spd.policies().to_vec();
        policies.insert(at, policy);
        self.swap_policies(policies);
        Ok(())
    }

    /// Replaces the installed policy of the same name as `text` with it, in the same
    /// place in the order (to narrow or widen a policy's selectors, or move it to
    /// other SAs, in one step). Refused (nothing changed) when the text is not a valid
    /// policy, no policy has its name, or it names an SA that is not installed.
    pub fn replace_policy(&mut self, text: &str) -> Result<(), ControlError> {
        let policy = self.parse_policy(text)?;
        let at =
            self.policy_position(policy.name())
                .ok_or_else(|| ControlError::UnknownPolicy {
                    name: policy.name().to_owned(),
                })?;
        let mut policies = self.spd.policies().to_vec();
        policies[at] = policy;
        self.swap_policies(policies);
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
        let mut policies = self.spd.policies().to_vec();
        policies.remove(at);
        self.swap_policies(policies);
        Ok(())
    }

    fn policy_position(&self, name: &str) -> Option<usize> {
        self.spd.policies().iter().position(|p| p.name() == name)
    }

    /// Parses `text` as one policy whose SA names must be installed: outbound names
    /// are those the outbound SAs carry, inbound names those the inbound SAs serve
    /// (SAs that are retiring do not count: they will be gone).
    fn parse_policy(&self, text: &str) -> Result<Policy, ControlError> {
        let staying = |i: usize| self.entry(i).retire_at.is_none();
        let mut sa_dirs: HashMap<&str, Direction> = HashMap::new();
        sa_dirs.extend(
            self.routes
                .iter()
                .filter(|&(_, &i)| staying(i))
                .map(|(n, _)| (n.as_str(), Direction::Outbound)),
        );
        sa_dirs.extend(
            self.served_by
                .iter()
                .filter(|(_, v)| v.iter().any(|&i| staying(i)))
                .map(|(n, _)| (n.as_str(), Direction::Inbound)),
        );
        let (policy, named) = policy_name_and_sas(text);
        if let Some(sa) = named
            .into_iter()
            .find(|n| !sa_dirs.contains_key(n.as_str()))
        {
            return Err(ControlError::MissingSa { policy, sa });
        }
        Ok(parse_one_policy(text, &sa_dirs)?)
    }

    /// Compiles `policies` into a new SPD and swaps it in; remembered fragment
    /// decisions (positions in the old SPD) are forgotten.
    fn swap_policies(&mut self, policies: Vec<Policy>) {
        self.spd = Spd::with_policies(policies);
        self.fragments.forget_all();
    }
}
