//! Body of the `gateway_control` fuzz target: the control plane of two live
//! [`Gateway`]s ([`ipsec_core::control`]) driven by a random sequence of calls,
//! interleaved with packets between them, against a model of what is installed.
//!
//! # Input
//!
//! Byte-coded [`Op`]s ([`decode`]; at most [`MAX_OPS`] are run, a truncated one
//! reads zeros), each on gateway 0 or 1: add, rekey, delete and retire SAs (names from [`SA_NAMES`], `""` included;
//! SPIs 256..=261 or the invalid 7; an inbound SA found by its SPI, its SPI and
//! protocol, or its SPI and a destination, the one packets have or another (RFC 4301
//! §4.1); keys from eight fresh ones or one of a wrong length); install (before any policy or last), replace and remove policies made from
//! eight templates ([`PolicySpec`], two of them invalid) with names from
//! [`POLICY_NAMES`]; `allocate_spi` (from 256..=263); packets: encrypt a UDP, TCP or
//! ICMP packet (or a burst of them, of which only the last is kept) at one gateway and
//! keep the wire packet, deliver any kept packet to the other gateway (again and again:
//! replays; later: late packets, too old for the window after a burst), hand cleartext
//! to a gateway; move the logical clock; `poll_event` (which deletes retired SAs).
//!
//! Both gateways start with the policy `deny` (both directions, discard) only.
//!
//! # The model
//!
//! For each gateway: its SAs (name, direction, SPI, key, the policy names an inbound SA
//! serves and an outbound SA carries, as the module docs of `ipsec_core::control` say,
//! retirement time, packet count, replay window as a set of seen numbers) and its
//! policies in order (name, direction, action, protocol, SA names). Each call's
//! expected result is computed from the model first, with the documented order of the
//! checks: for SAs the name (empty, or taken by an SA or by a name an SA serves or
//! carries), the lookup key (SPI, and destination) among inbound SAs, key reuse, then
//! the configuration; for
//! policies the SA names the text gives (`MissingSa`; a name only retiring SAs carry or
//! serve counts as missing), the text, the policy's name, the `before` policy; for
//! deleting or retiring an inbound SA, whether it is the last SA that is not retiring
//! to serve a name some policy gives.
//!
//! # Checks
//!
//! * No panic.
//! * Every control call's `Ok`/`Err` agrees with the model, errors exactly (a
//!   `ControlError::Config` only by its variant); a refused call leaves the gateway's SA
//!   names, SPIs and policy list as they were.
//! * After every operation, both gateways' SAs (name, direction, SPI, packet count) and
//!   policies (name and SA names, in order) equal the model's.
//! * Outbound: the verdict (protected by which SA under which policy, bypassed, or
//!   dropped as a policy discard) is the model's; the wire packet carries the SPI of
//!   that SA and the next sequence number.
//! * Inbound: a packet is decrypted only when the model has an inbound SA with its SPI
//!   that is not past its retirement time (the longest match: SPI and the packet's
//!   destination, then the SPI alone; a retired one found is deleted and the search goes
//!   on); the verdict names that SA and the policy
//!   the model finds for it, and the inner packet is the one sent. Otherwise the error
//!   is the model's: unknown SPI (no SA, or retired), too old or replayed (a window of
//!   64), authentication failure (another key), policy mismatch. Cleartext gets the
//!   model's verdict (bypass, unprotected traffic, policy discard).
//! * `allocate_spi` never returns the SPI of an installed inbound SA; `poll_event`
//!   reports nothing (no lifetimes are set); `delete_sa` returns the model's packet
//!   count.

use core::time::Duration;
use ipsec_core::gateway::{Inbound, Outbound};
use ipsec_core::packet;
use ipsec_core::spd::Spd;
use ipsec_core::{
    Cipher, ConfigError, ControlError, Direction, Error, Gateway, Mode, PacketBuf, Policy,
    SaConfig, SaLane, SaLookup, SharedSa, SharedSaOptions,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// SA names the input picks from (`""` is refused as a name).
pub const SA_NAMES: [&str; 5] = ["a", "b", "c", "d", ""];
/// Policy names the input picks from.
pub const POLICY_NAMES: [&str; 4] = ["p", "q", "r", "deny"];
/// At most this many operations of an input are run.
pub const MAX_OPS: usize = 256;
/// At most this many wire packets are kept (the oldest go).
const MAX_WIRE: usize = 64;
/// The replay window of every inbound SA (the default).
const WINDOW: u64 = 64;
const ROOM: usize = 128;

/// One operation. Its bytes: a byte `b` whose `b % 15` is the kind (the order of the
/// variants below, `UpdateSa` sharing `DeleteSa`'s: bit 1 of `b / 15` set) and
/// `(b / 15) & 1` the gateway (`from` for `AddPair`, unused by `Deliver` and
/// `Advance`), then the fields in order: one byte each (`u8`, `bool` as
/// bit 0, `before` as `% 5`, 4 meaning none) or four for an [`SaSpec`] or
/// [`PolicySpec`].
#[derive(Clone, Debug)]
#[allow(missing_docs)]
pub enum Op {
    /// `add_sa` on gateway `gw`.
    AddSa { gw: bool, sa: SaSpec },
    /// `rekey_sa` of `replaces` on gateway `gw`.
    RekeySa { gw: bool, replaces: u8, sa: SaSpec },
    /// `delete_sa`.
    DeleteSa { gw: bool, name: u8 },
    /// `update_sa` of `name` (the kind of `DeleteSa` with bit 1 of `b / 15` set): an
    /// inbound SA found by its destination moves to the other destination, any other
    /// SA "moves" to the endpoints it has (everything must stay as it was).
    UpdateSa { gw: bool, name: u8 },
    /// `retire_sa` at now + `after_ms`.
    RetireSa { gw: bool, name: u8, after_ms: u8 },
    /// `install_policy`, before the policy `before` names (or last).
    InstallPolicy {
        gw: bool,
        policy: PolicySpec,
        before: Option<u8>,
    },
    /// `replace_policy`.
    ReplacePolicy { gw: bool, policy: PolicySpec },
    /// `remove_policy`.
    RemovePolicy { gw: bool, name: u8 },
    /// An outbound SA on `from` and the matching inbound SA (same SPI and key) on the
    /// other gateway, both called `sa.name` (two `add_sa` calls, each checked).
    AddPair { from: bool, sa: SaSpec },
    /// Encrypts packet `flow` at `gw`; a protected packet is kept.
    Send { gw: bool, flow: u8 },
    /// Delivers kept packet `wire` (modulo their number) to the other gateway.
    Deliver { wire: u8 },
    /// Hands packet `flow` in the clear to `gw` (inbound).
    Cleartext { gw: bool, flow: u8 },
    /// Moves the clock.
    Advance { ms: u8 },
    /// `poll_event`.
    Poll { gw: bool },
    /// `allocate_spi`.
    AllocateSpi { gw: bool },
    /// Encrypts `2 + count % 100` packets `flow` at `gw` and keeps the last protected
    /// one (the others are lost on the way): later packets of the same SA then arrive
    /// beyond the replay window of the earlier ones.
    Burst { gw: bool, flow: u8, count: u8 },
}

/// An SA to create (four bytes: `name`, `outbound` (bit 0), `spi`, `key`).
#[derive(Clone, Copy, Debug)]
pub struct SaSpec {
    /// Index into [`SA_NAMES`].
    pub name: u8,
    /// Outbound or inbound.
    pub outbound: bool,
    /// `% 16`: below 14, SPI 256 + `spi % 6`; otherwise the invalid SPI 7. Bits 4 and
    /// 5, for an inbound SA: how packets find it (RFC 4301 §4.1): 0 by SPI, 1 by SPI
    /// and protocol (the same key), 2 by SPI and destination, the address the outbound
    /// SAs send to (`198.51.100.2`), 3 by SPI and another destination (`198.51.100.99`,
    /// which no packet has). Bit 6: installed as the one lane of a `SharedSa`
    /// (`add_sa_lane` / `rekey_sa_lane`; the model sees an ordinary SA).
    pub spi: u8,
    /// `% 9`: key number 0..=7, or 8 for a key of a wrong length.
    pub key: u8,
}

/// A policy made from a template (four bytes, in field order).
#[derive(Clone, Copy, Debug)]
pub struct PolicySpec {
    /// `% 8`: 0 protect UDP both ways through `[sa_out, sa_in]`; 1 protect everything
    /// outbound through `sa_out`; 2 protect everything inbound through `sa_in`; 3
    /// protect TCP both ways; 4 bypass ICMP both ways; 5 discard TCP outbound; 6 an
    /// invalid action (with `[sa_out, sa_in]`); 7 protect both ways with one SA only
    /// (`sa_out`), invalid. Bit 3 (`& 8`): parsed first (`Policy::from_toml`) and
    /// given to `install_parsed_policy` / `replace_parsed_policy` instead of the text
    /// calls, which must decide the same.
    pub template: u8,
    /// Index into [`POLICY_NAMES`].
    pub name: u8,
    /// Index into [`SA_NAMES`].
    pub sa_out: u8,
    /// Index into [`SA_NAMES`].
    pub sa_in: u8,
}

/// Reads the input front to back; missing bytes read as zeros.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
}

/// Kinds of operation: the low part of an operation's first byte.
const KINDS: u8 = 15;

impl SaSpec {
    fn decode(r: &mut Reader<'_>) -> SaSpec {
        SaSpec {
            name: r.u8(),
            outbound: r.bool(),
            spi: r.u8(),
            key: r.u8(),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.name, u8::from(self.outbound), self.spi, self.key]);
    }
}

impl PolicySpec {
    fn decode(r: &mut Reader<'_>) -> PolicySpec {
        PolicySpec {
            template: r.u8(),
            name: r.u8(),
            sa_out: r.u8(),
            sa_in: r.u8(),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.template, self.name, self.sa_out, self.sa_in]);
    }
}

impl Op {
    /// Reads one operation (see [`Op`]).
    fn decode(r: &mut Reader<'_>) -> Op {
        let b = r.u8();
        let gw = (b / KINDS) & 1 == 1;
        match b % KINDS {
            0 => Op::AddSa {
                gw,
                sa: SaSpec::decode(r),
            },
            1 => Op::RekeySa {
                gw,
                replaces: r.u8(),
                sa: SaSpec::decode(r),
            },
            2 if (b / KINDS) & 2 != 0 => Op::UpdateSa { gw, name: r.u8() },
            2 => Op::DeleteSa { gw, name: r.u8() },
            3 => Op::RetireSa {
                gw,
                name: r.u8(),
                after_ms: r.u8(),
            },
            4 => Op::InstallPolicy {
                gw,
                policy: PolicySpec::decode(r),
                before: Some(r.u8() % 5).filter(|&b| b < 4),
            },
            5 => Op::ReplacePolicy {
                gw,
                policy: PolicySpec::decode(r),
            },
            6 => Op::RemovePolicy { gw, name: r.u8() },
            7 => Op::AddPair {
                from: gw,
                sa: SaSpec::decode(r),
            },
            8 => Op::Send { gw, flow: r.u8() },
            9 => Op::Deliver { wire: r.u8() },
            10 => Op::Cleartext { gw, flow: r.u8() },
            11 => Op::Advance { ms: r.u8() },
            12 => Op::Poll { gw },
            13 => Op::AllocateSpi { gw },
            _ => Op::Burst {
                gw,
                flow: r.u8(),
                count: r.u8(),
            },
        }
    }

    /// Writes the operation as [`Op::decode`] reads it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let head = |kind: u8, gw: bool| kind + KINDS * u8::from(gw);
        match *self {
            Op::AddSa { gw, sa } => {
                out.push(head(0, gw));
                sa.encode(out);
            }
            Op::RekeySa { gw, replaces, sa } => {
                out.extend_from_slice(&[head(1, gw), replaces]);
                sa.encode(out);
            }
            Op::DeleteSa { gw, name } => out.extend_from_slice(&[head(2, gw), name]),
            Op::UpdateSa { gw, name } => out.extend_from_slice(&[head(2, gw) + 2 * KINDS, name]),
            Op::RetireSa { gw, name, after_ms } => {
                out.extend_from_slice(&[head(3, gw), name, after_ms]);
            }
            Op::InstallPolicy { gw, policy, before } => {
                out.push(head(4, gw));
                policy.encode(out);
                out.push(before.map_or(4, |b| b % 4));
            }
            Op::ReplacePolicy { gw, policy } => {
                out.push(head(5, gw));
                policy.encode(out);
            }
            Op::RemovePolicy { gw, name } => out.extend_from_slice(&[head(6, gw), name]),
            Op::AddPair { from, sa } => {
                out.push(head(7, from));
                sa.encode(out);
            }
            Op::Send { gw, flow } => out.extend_from_slice(&[head(8, gw), flow]),
            Op::Deliver { wire } => out.extend_from_slice(&[head(9, false), wire]),
            Op::Cleartext { gw, flow } => out.extend_from_slice(&[head(10, gw), flow]),
            Op::Advance { ms } => out.extend_from_slice(&[head(11, false), ms]),
            Op::Poll { gw } => out.push(head(12, gw)),
            Op::AllocateSpi { gw } => out.push(head(13, gw)),
            Op::Burst { gw, flow, count } => out.extend_from_slice(&[head(14, gw), flow, count]),
        }
    }
}

/// The operations of an input (at most [`MAX_OPS`]).
pub fn decode(data: &[u8]) -> Vec<Op> {
    let mut r = Reader(data);
    let mut ops = Vec::new();
    while !r.0.is_empty() && ops.len() < MAX_OPS {
        ops.push(Op::decode(&mut r));
    }
    ops
}

/// The input that [`decode`]s to `ops`.
pub fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        op.encode(&mut out);
    }
    out
}

fn sa_name(i: u8) -> &'static str {
    SA_NAMES[usize::from(i) % SA_NAMES.len()]
}

/// The policy parsed on its own when `spec` asks for the parsed calls (see
/// [`PolicySpec::template`]); `None` for the text calls.
fn parsed_first(spec: &PolicySpec, text: &str) -> Option<Result<Policy, ControlError>> {
    (spec.template & 8 != 0).then(|| Policy::from_toml(text).map_err(ControlError::from))
}

fn policy_name(i: u8) -> &'static str {
    POLICY_NAMES[usize::from(i) % POLICY_NAMES.len()]
}

impl SaSpec {
    fn spi(&self) -> u32 {
        if self.spi % 16 < 14 {
            256 + u32::from(self.spi % 6)
        } else {
            7
        }
    }

    /// Whether the SA is installed as a lane of a one-lane `SharedSa`.
    fn as_lane(&self) -> bool {
        self.spi & 0x40 != 0
    }

    /// An inbound SA's lookup, and the destination it compares (0: the one packets
    /// have, 1: another), `None` for the SPI alone.
    fn lookup(&self) -> (SaLookup, Option<u8>) {
        match (self.spi >> 4) & 3 {
            0 => (SaLookup::Spi, None),
            1 => (SaLookup::SpiProtocol, None),
            2 => (SaLookup::SpiDestination, Some(0)),
            _ => (SaLookup::SpiDestination, Some(1)),
        }
    }

    /// The key number, `None` for the key of a wrong length.
    fn key(&self) -> Option<u8> {
        Some(self.key % 9).filter(|&k| k < 8)
    }

    fn config(&self, outbound: bool) -> SaConfig {
        let key = match self.key() {
            Some(k) => (0..20u8)
                .map(|i| k.wrapping_mul(37) ^ i.wrapping_mul(11) ^ 0xa5)
                .collect(),
            None => vec![1u8; 5],
        };
        let dir = if outbound {
            Direction::Outbound
        } else {
            Direction::Inbound
        };
        let mut cfg = SaConfig::new(self.spi(), dir, Mode::Tunnel, Cipher::Aes128Gcm, &key);
        if outbound {
            cfg.tunnel(
                "192.0.2.1".parse().expect("address"),
                "198.51.100.2".parse().expect("address"),
            );
        } else {
            let (lookup, dst) = self.lookup();
            if let Some(d) = dst {
                let dst = if d == 0 {
                    "198.51.100.2"
                } else {
                    "198.51.100.99"
                };
                cfg.tunnel(
                    "192.0.2.1".parse().expect("address"),
                    dst.parse().expect("address"),
                );
            }
            cfg.lookup(lookup);
        }
        cfg
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    Protect,
    Bypass,
    Discard,
}

/// What the model knows of a policy.
#[derive(Clone, Debug)]
struct MPolicy {
    name: String,
    outbound: bool,
    inbound: bool,
    action: Act,
    protocol: Option<u8>,
    sa_out: Option<String>,
    sa_in: Option<String>,
}

impl MPolicy {
    fn covers(&self, protocol: u8) -> bool {
        self.protocol.is_none_or(|p| p == protocol)
    }
}

/// A policy's text and what the model expects of it: the SA names the text gives (in
/// order) and the policy, `None` when the text is invalid whatever is installed.
fn policy_text(spec: &PolicySpec) -> (String, Vec<String>, Option<MPolicy>) {
    let name = policy_name(spec.name);
    let (o, i) = (sa_name(spec.sa_out), sa_name(spec.sa_in));
    let policy =
        |outbound, inbound, action, protocol, sa_out: Option<&str>, sa_in: Option<&str>| {
            Some(MPolicy {
                name: name.to_owned(),
                outbound,
                inbound,
                action,
                protocol,
                sa_out: sa_out.map(str::to_owned),
                sa_in: sa_in.map(str::to_owned),
            })
        };
    let pair = vec![o.to_owned(), i.to_owned()];
    let (body, named, model) = match spec.template % 8 {
        0 => (
            format!("protocol = \"udp\"\naction = \"protect\"\nsa = [\"{o}\", \"{i}\"]\n"),
            pair,
            policy(true, true, Act::Protect, Some(17), Some(o), Some(i)),
        ),
        1 => (
            format!("direction = \"outbound\"\naction = \"protect\"\nsa = \"{o}\"\n"),
            vec![o.to_owned()],
            policy(true, false, Act::Protect, None, Some(o), None),
        ),
        2 => (
            format!("direction = \"inbound\"\naction = \"protect\"\nsa = \"{i}\"\n"),
            vec![i.to_owned()],
            policy(false, true, Act::Protect, None, None, Some(i)),
        ),
        3 => (
            format!("protocol = \"tcp\"\naction = \"protect\"\nsa = [\"{o}\", \"{i}\"]\n"),
            pair,
            policy(true, true, Act::Protect, Some(6), Some(o), Some(i)),
        ),
        4 => (
            "protocol = \"icmp\"\naction = \"bypass\"\n".to_owned(),
            vec![],
            policy(true, true, Act::Bypass, Some(1), None, None),
        ),
        5 => (
            "direction = \"outbound\"\nprotocol = \"tcp\"\naction = \"discard\"\n".to_owned(),
            vec![],
            policy(true, false, Act::Discard, Some(6), None, None),
        ),
        6 => (
            format!("action = \"encrypt\"\nsa = [\"{o}\", \"{i}\"]\n"),
            pair,
            None,
        ),
        _ => (
            format!("action = \"protect\"\nsa = \"{o}\"\n"),
            vec![o.to_owned()],
            None,
        ),
    };
    (format!("name = \"{name}\"\n{body}"), named, model)
}

/// What the model knows of an SA.
#[derive(Debug)]
struct MSa {
    name: String,
    outbound: bool,
    spi: u32,
    /// Inbound: the destination its lookup compares (see [`SaSpec::lookup`]), `None`
    /// for the SPI alone.
    dst: Option<u8>,
    key: u8,
    /// Inbound: the names whose policies it serves.
    serves: Vec<String>,
    /// Outbound: the names whose traffic it carries.
    routes: Vec<String>,
    retire_at: Option<Duration>,
    /// Installed as a lane of a `SharedSa` (`update_sa` refuses it).
    lane: bool,
    packets: u64,
    /// Inbound: the highest sequence number accepted and those seen.
    highest: u64,
    seen: BTreeSet<u64>,
}

/// The model of one gateway.
#[derive(Debug, Default)]
struct Model {
    sas: Vec<MSa>,
    policies: Vec<MPolicy>,
}

/// A one-lane `SharedSa` of `config` (`None` for a configuration it refuses: the
/// caller then takes the ordinary path, which refuses it as the model expects).
fn lane(config: &SaConfig, now: Duration) -> Option<SaLane> {
    let (_, mut lanes) = SharedSa::new(config.try_clone()?, SharedSaOptions::lanes(1), now).ok()?;
    lanes.pop()
}

/// `add_sa`, or `add_sa_lane` when the spec asks for a lane.
fn add_sa(
    g: &mut Gateway,
    name: &str,
    spec: &SaSpec,
    outbound: bool,
    now: Duration,
) -> Result<(), ControlError> {
    let config = spec.config(outbound);
    match spec.as_lane().then(|| lane(&config, now)).flatten() {
        Some(l) => g.add_sa_lane(name, l).map_err(|r| r.error),
        None => g.add_sa(name, config, now),
    }
}

/// `rekey_sa`, or `rekey_sa_lane` when the spec asks for a lane.
fn rekey_sa(
    g: &mut Gateway,
    replaces: &str,
    name: &str,
    spec: &SaSpec,
    now: Duration,
) -> Result<(), ControlError> {
    let config = spec.config(spec.outbound);
    match spec.as_lane().then(|| lane(&config, now)).flatten() {
        Some(l) => g.rekey_sa_lane(replaces, name, l).map_err(|r| r.error),
        None => g.rekey_sa(replaces, name, config, now),
    }
}

fn config_error(what: &str) -> ControlError {
    ControlError::Config(ConfigError::new("model", what))
}

impl Model {
    fn new() -> Model {
        Model {
            sas: Vec::new(),
            policies: vec![MPolicy {
                name: "deny".into(),
                outbound: true,
                inbound: true,
                action: Act::Discard,
                protocol: None,
                sa_out: None,
                sa_in: None,
            }],
        }
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.sas.iter().position(|s| s.name == name)
    }

    /// The outbound SA that carries the traffic of `name`.
    fn route(&self, name: &str) -> Option<usize> {
        self.sas
            .iter()
            .position(|s| s.outbound && s.routes.iter().any(|r| r == name))
    }

    /// Does an inbound SA serve `name`?
    fn served(&self, name: &str) -> bool {
        self.sas
            .iter()
            .any(|s| !s.outbound && s.serves.iter().any(|r| r == name))
    }

    fn first_policy_naming(&self, name: &str, outbound: bool) -> Option<&MPolicy> {
        self.policies.iter().find(|p| {
            let sa = if outbound { &p.sa_out } else { &p.sa_in };
            sa.as_deref() == Some(name)
        })
    }

    fn check_new_sa(&self, spec: &SaSpec, outbound: bool) -> Result<(), ControlError> {
        let name = sa_name(spec.name);
        if name.is_empty() {
            return Err(config_error("empty name"));
        }
        if self.find(name).is_some() || self.route(name).is_some() || self.served(name) {
            return Err(ControlError::DuplicateName { name: name.into() });
        }
        let spi = spec.spi();
        let dst = spec.lookup().1;
        if !outbound
            && let Some(holder) = self
                .sas
                .iter()
                .find(|s| !s.outbound && s.spi == spi && s.dst == dst)
        {
            return Err(ControlError::DuplicateSpi {
                spi,
                sa: holder.name.clone(),
            });
        }
        if let Some(k) = spec.key()
            && self.sas.iter().any(|s| s.key == k)
        {
            return Err(config_error("key reuse"));
        }
        if spi < 256 || spec.key().is_none() {
            return Err(config_error("invalid SA"));
        }
        Ok(())
    }

    fn new_sa(spec: &SaSpec, outbound: bool, serves: Vec<String>, routes: Vec<String>) -> MSa {
        MSa {
            name: sa_name(spec.name).into(),
            outbound,
            spi: spec.spi(),
            dst: if outbound { None } else { spec.lookup().1 },
            key: spec.key().expect("checked"),
            serves,
            routes,
            retire_at: None,
            lane: spec.as_lane(),
            packets: 0,
            highest: 0,
            seen: BTreeSet::new(),
        }
    }

    /// `update_sa` of `name` as [`Op::UpdateSa`] moves it.
    fn update_sa(&mut self, name: &str) -> Result<(), ControlError> {
        let i = self
            .find(name)
            .ok_or_else(|| ControlError::UnknownSa { name: name.into() })?;
        if self.sas[i].lane {
            return Err(config_error("a lane cannot move"));
        }
        let (spi, dst) = (self.sas[i].spi, self.sas[i].dst.map(|d| 1 - d));
        if dst.is_some()
            && let Some(holder) = self
                .sas
                .iter()
                .enumerate()
                .find(|&(k, s)| k != i && !s.outbound && s.spi == spi && s.dst == dst)
        {
            return Err(ControlError::DuplicateSpi {
                spi,
                sa: holder.1.name.clone(),
            });
        }
        self.sas[i].dst = dst;
        Ok(())
    }

    fn add_sa(&mut self, spec: &SaSpec, outbound: bool) -> Result<(), ControlError> {
        self.check_new_sa(spec, outbound)?;
        let own = vec![sa_name(spec.name).to_owned()];
        self.sas
            .push(Model::new_sa(spec, outbound, own.clone(), own));
        Ok(())
    }

    fn rekey_sa(&mut self, replaces: &str, spec: &SaSpec) -> Result<(), ControlError> {
        let name = sa_name(spec.name);
        let old = self.find(replaces).ok_or_else(|| ControlError::UnknownSa {
            name: replaces.into(),
        })?;
        if self.sas[old].outbound != spec.outbound {
            return Err(ControlError::DirectionMismatch {
                sa: name.into(),
                replaces: replaces.into(),
            });
        }
        self.check_new_sa(spec, spec.outbound)?;
        let own = name.to_owned();
        let sa = if spec.outbound {
            // The names of the old SA's that policies use move; the others go.
            let moved = core::mem::take(&mut self.sas[old].routes);
            let kept: Vec<String> = moved
                .into_iter()
                .filter(|n| self.first_policy_naming(n, true).is_some())
                .collect();
            let routes = core::iter::once(own.clone()).chain(kept).collect();
            Model::new_sa(spec, true, vec![own], routes)
        } else {
            let inherited: Vec<String> = self.sas[old]
                .serves
                .iter()
                .filter(|n| self.first_policy_naming(n, false).is_some())
                .cloned()
                .collect();
            let serves = core::iter::once(own.clone()).chain(inherited).collect();
            Model::new_sa(spec, false, serves, vec![own])
        };
        self.sas.push(sa);
        Ok(())
    }

    /// The SA `name` if deleting it leaves every policy its SA.
    fn deletable(&self, name: &str) -> Result<usize, ControlError> {
        let i = self
            .find(name)
            .ok_or_else(|| ControlError::UnknownSa { name: name.into() })?;
        let sa = &self.sas[i];
        let in_use = |p: &MPolicy| ControlError::SaInUse {
            sa: name.into(),
            policy: p.name.clone(),
        };
        if sa.outbound {
            for r in &sa.routes {
                if let Some(p) = self.first_policy_naming(r, true) {
                    return Err(in_use(p));
                }
            }
        } else {
            for n in &sa.serves {
                // Retiring SAs do not count: they will be gone.
                let alone = !self.sas.iter().enumerate().any(|(j, s)| {
                    j != i
                        && !s.outbound
                        && s.retire_at.is_none()
                        && s.serves.iter().any(|x| x == n)
                });
                if alone && let Some(p) = self.first_policy_naming(n, false) {
                    return Err(in_use(p));
                }
            }
        }
        Ok(i)
    }

    /// The policy of `spec`, checked as `parse_policy` checks it: the names it gives
    /// must be served or carried by SAs that are not retiring.
    fn parse_policy(&self, spec: &PolicySpec) -> Result<MPolicy, ControlError> {
        let (_, named, policy) = policy_text(spec);
        let dir = |n: &str| {
            let staying = |s: &MSa| s.retire_at.is_none();
            if self
                .sas
                .iter()
                .any(|s| !s.outbound && staying(s) && s.serves.iter().any(|x| x == n))
            {
                Some(false)
            } else if self.route(n).is_some_and(|i| staying(&self.sas[i])) {
                Some(true)
            } else {
                None
            }
        };
        // What the text alone shows first (it is parsed before the gateway looks),
        // then the SA names it gives: missing ones, then ones of the other direction.
        let policy = policy.ok_or_else(|| config_error("invalid policy"))?;
        if let Some(missing) = named.iter().find(|n| dir(n).is_none()) {
            return Err(ControlError::MissingSa {
                policy: policy_name(spec.name).into(),
                sa: missing.clone(),
            });
        }
        let wrong = |n: &Option<String>, outbound: bool| {
            n.as_deref().is_some_and(|n| dir(n) != Some(outbound))
        };
        if wrong(&policy.sa_out, true) || wrong(&policy.sa_in, false) {
            return Err(config_error("SA of the other direction"));
        }
        Ok(policy)
    }

    fn position(&self, policy: &str) -> Option<usize> {
        self.policies.iter().position(|p| p.name == policy)
    }

    fn install_policy(
        &mut self,
        spec: &PolicySpec,
        before: Option<&str>,
    ) -> Result<(), ControlError> {
        let policy = self.parse_policy(spec)?;
        if self.position(&policy.name).is_some() {
            return Err(ControlError::DuplicatePolicy { name: policy.name });
        }
        let at = match before {
            None => self.policies.len(),
            Some(b) => self
                .position(b)
                .ok_or_else(|| ControlError::UnknownPolicy { name: b.into() })?,
        };
        self.policies.insert(at, policy);
        Ok(())
    }

    fn replace_policy(&mut self, spec: &PolicySpec) -> Result<(), ControlError> {
        let policy = self.parse_policy(spec)?;
        let at = self
            .position(&policy.name)
            .ok_or_else(|| ControlError::UnknownPolicy {
                name: policy.name.clone(),
            })?;
        self.policies[at] = policy;
        Ok(())
    }

    fn remove_policy(&mut self, name: &str) -> Result<(), ControlError> {
        let at = self
            .position(name)
            .ok_or_else(|| ControlError::UnknownPolicy { name: name.into() })?;
        self.policies.remove(at);
        Ok(())
    }

    fn reap(&mut self, now: Duration) {
        self.sas.retain(|s| s.retire_at.is_none_or(|t| now < t));
    }
}

/// The control-call results agree: equal, or both a configuration error.
fn agree<T: core::fmt::Debug>(
    what: &str,
    got: &Result<T, ControlError>,
    want: &Result<(), ControlError>,
) {
    let same = match (got, want) {
        (Ok(_), Ok(())) => true,
        (Err(ControlError::Config(_)), Err(ControlError::Config(_))) => true,
        (Err(g), Err(w)) => g == w,
        _ => false,
    };
    assert!(same, "{what}: the gateway says {got:?}, the model {want:?}");
}

/// What an observer sees of a gateway: its SAs (name, outbound, SPI, packets), sorted,
/// and its policies (name, outbound SA, inbound SA) in order.
type Shape = (
    Vec<(String, bool, u32, u64)>,
    Vec<(String, Option<String>, Option<String>)>,
);

fn shape(gw: &Gateway) -> Shape {
    let mut sas: Vec<_> = gw
        .sas()
        .map(|(n, sa)| {
            (
                n.to_owned(),
                sa.direction() == Direction::Outbound,
                sa.spi(),
                sa.stats().packets,
            )
        })
        .collect();
    sas.sort();
    let policies = gw
        .spd()
        .policies()
        .iter()
        .map(|p| {
            (
                p.name().to_owned(),
                p.sa(Direction::Outbound).map(str::to_owned),
                p.sa(Direction::Inbound).map(str::to_owned),
            )
        })
        .collect();
    (sas, policies)
}

fn model_shape(m: &Model) -> Shape {
    let mut sas: Vec<_> = m
        .sas
        .iter()
        .map(|s| (s.name.clone(), s.outbound, s.spi, s.packets))
        .collect();
    sas.sort();
    let policies = m
        .policies
        .iter()
        .map(|p| (p.name.clone(), p.sa_out.clone(), p.sa_in.clone()))
        .collect();
    (sas, policies)
}

/// Runs a control call on `gw` and its model `m`: the results must agree, a refusal
/// must change nothing.
fn control<T: core::fmt::Debug>(
    what: &str,
    tally: &mut Tally,
    gw: &mut Gateway,
    m: &mut Model,
    call: impl FnOnce(&mut Gateway) -> Result<T, ControlError>,
    model: impl FnOnce(&mut Model) -> Result<(), ControlError>,
) -> Option<T> {
    let before = shape(gw);
    let got = call(gw);
    let want = model(m);
    agree(what, &got, &want);
    let call_name = what
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .trim_end_matches(|c: char| !c.is_alphanumeric());
    let outcome = match &got {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("{e:?}")
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or_default()
            .to_owned(),
    };
    *tally.entry(format!("{call_name} {outcome}")).or_default() += 1;
    if got.is_err() {
        assert_eq!(
            shape(gw),
            before,
            "{what}: refused, but the gateway changed"
        );
    }
    got.ok()
}

/// Inner packet of `flow % 3` (UDP, TCP, ICMP echo) from 10.0.0.5 to 10.0.0.9, tagged.
fn inner_packet(flow: u8, tag: u32) -> (u8, Vec<u8>) {
    let (protocol, l4): (u8, Vec<u8>) = match flow % 3 {
        0 => (17, vec![0x0f, 0xa0, 0x13, 0x88, 0, 16, 0, 0]),
        1 => (
            6,
            vec![
                0x0f, 0xa0, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0,
            ],
        ),
        _ => (1, vec![8, 0, 0, 0, 0, 1, 0, 1]),
    };
    let total = 20 + l4.len() + 8;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 1, 0, 0, 64, protocol, 0, 0, 10, 0, 0, 5, 10, 0, 0, 9]);
    packet::set_ipv4_checksum(&mut p[..20]);
    p.extend_from_slice(&l4);
    p.extend_from_slice(&u64::from(tag).to_be_bytes());
    (protocol, p)
}

/// A packet on the wire.
struct Wire {
    /// The gateway that sent it.
    from: usize,
    spi: u32,
    seq: u64,
    key: u8,
    protocol: u8,
    inner: Vec<u8>,
    bytes: Vec<u8>,
}

fn fresh_gateway() -> Gateway {
    let spd =
        Spd::from_toml("[[policy]]\nname = \"deny\"\ndirection = \"both\"\naction = \"discard\"\n")
            .expect("the deny-all parses");
    let mut gw = Gateway::new(spd, Duration::ZERO).expect("a gateway");
    gw.set_spi_range(256, 263).expect("a valid range");
    gw
}

/// How often each outcome happened (`"add_sa ok"`, `"delete_sa SaInUse"`, `"inbound
/// decrypted"`, `"inbound Replay"`, ...): for tests that a scenario reaches what it is
/// meant to.
pub type Tally = BTreeMap<String, u64>;

/// Fuzz target `gateway_control` (see the [module docs](self)): the operations of
/// `data` ([`decode`]); returns the tally of outcomes.
pub fn gateway_control(data: &[u8]) -> Tally {
    run(&decode(data))
}

/// Runs `ops` (see the [module docs](self)); returns the tally of outcomes.
pub fn run(ops: &[Op]) -> Tally {
    let mut tally = Tally::new();
    let mut gws = [fresh_gateway(), fresh_gateway()];
    let mut models = [Model::new(), Model::new()];
    let mut wire: Vec<Wire> = Vec::new();
    let mut now = Duration::ZERO;
    let mut tag = 0u32;
    for (step, op) in ops.iter().enumerate() {
        let what = format!("op {step} {op:?}");
        match *op {
            Op::AddSa { gw, sa } => {
                let (g, m) = (&mut gws[usize::from(gw)], &mut models[usize::from(gw)]);
                control(
                    &what,
                    &mut tally,
                    g,
                    m,
                    |g| add_sa(g, sa_name(sa.name), &sa, sa.outbound, now),
                    |m| m.add_sa(&sa, sa.outbound),
                );
            }
            Op::AddPair { from, sa } => {
                for (side, outbound) in [(usize::from(from), true), (usize::from(!from), false)] {
                    control(
                        &what,
                        &mut tally,
                        &mut gws[side],
                        &mut models[side],
                        |g| add_sa(g, sa_name(sa.name), &sa, outbound, now),
                        |m| m.add_sa(&sa, outbound),
                    );
                }
            }
            Op::RekeySa { gw, replaces, sa } => {
                let (g, m) = (&mut gws[usize::from(gw)], &mut models[usize::from(gw)]);
                let old = sa_name(replaces);
                control(
                    &what,
                    &mut tally,
                    g,
                    m,
                    |g| rekey_sa(g, old, sa_name(sa.name), &sa, now),
                    |m| m.rekey_sa(old, &sa),
                );
            }
            Op::DeleteSa { gw, name } => {
                let (g, m) = (&mut gws[usize::from(gw)], &mut models[usize::from(gw)]);
                let name = sa_name(name);
                let packets = m.find(name).map(|i| m.sas[i].packets);
                let stats = control(
                    &what,
                    &mut tally,
                    g,
                    m,
                    |g| g.delete_sa(name),
                    |m| {
                        let i = m.deletable(name)?;
                        m.sas.remove(i);
                        Ok(())
                    },
                );
                if let Some(stats) = stats {
                    assert_eq!(Some(stats.packets), packets, "{what}: final packet count");
                }
            }
            Op::UpdateSa { gw, name } => {
                let (g, m) = (&mut gws[usize::from(gw)], &mut models[usize::from(gw)]);
                let name = sa_name(name);
                // The endpoints it has, with an address-found inbound SA's destination
                // swapped (198.51.100.2 <-> 198.51.100.99).
                let moved = g.sa(name).map(|sa| {
                    let swap = |d: IpAddr| {
                        let other = if d == IpAddr::from([198, 51, 100, 2]) {
                            99
                        } else {
                            2
                        };
                        IpAddr::from([198, 51, 100, other])
                    };
                    match (sa.direction(), sa.lookup(), sa.tunnel()) {
                        (Direction::Inbound, SaLookup::SpiDestination, Some((s, d))) => {
                            Some((s, swap(d)))
                        }
                        (_, _, tunnel) => tunnel,
                    }
                });
                let tunnel = moved.flatten();
                control(
                    &what,
                    &mut tally,
                    g,
                    m,
                    |g| g.update_sa(name, tunnel, None, now),
                    |m| m.update_sa(name),
                );
            }
            Op::RetireSa { gw, name, after_ms } => {
                let (g, m) = (&mut gws[usize::from(gw)], &mut models[usize::from(gw)]);
                let name = sa_name(name);
                let at = now + Duration::from_millis(u64::from(after_ms));
                control(
                    &what,
                    &mut tally,
                    g,
                    m,
                    |g| g.retire_sa(name, at),
                    |m| {
                        let i = m.deletable(name)?;
                        m.sas[i].retire_at = Some(at);
                        Ok(())
                    },
                );
            }
            Op::InstallPolicy { gw, policy, before } => {
                let (g, m) = (&mut gws[usize::from(gw)], &mut models[usize::from(gw)]);
                let (text, _, _) = policy_text(&policy);
                let before = before.map(policy_name);
                control(
                    &what,
                    &mut tally,
                    g,
                    m,
                    |g| match parsed_first(&policy, &text) {
                        Some(p) => g.install_parsed_policy(p?, before),
                        None => g.install_policy(&text, before),
                    },
                    |m| m.install_policy(&policy, before),
                );
            }
            Op::ReplacePolicy { gw, policy } => {
                let (g, m) = (&mut gws[usize::from(gw)], &mut models[usize::from(gw)]);
                let (text, _, _) = policy_text(&policy);
                control(
                    &what,
                    &mut tally,
                    g,
                    m,
                    |g| match parsed_first(&policy, &text) {
                        Some(p) => g.replace_parsed_policy(p?),
                        None => g.replace_policy(&text),
                    },
                    |m| m.replace_policy(&policy),
                );
            }
            Op::RemovePolicy { gw, name } => {
                let (g, m) = (&mut gws[usize::from(gw)], &mut models[usize::from(gw)]);
                let name = policy_name(name);
                control(
                    &what,
                    &mut tally,
                    g,
                    m,
                    |g| g.remove_policy(name),
                    |m| m.remove_policy(name),
                );
            }
            Op::Send { gw, flow } | Op::Burst { gw, flow, .. } => {
                let side = usize::from(gw);
                let n = match *op {
                    Op::Burst { count, .. } => 2 + count % 100,
                    _ => 1,
                };
                let mut last = None;
                for _ in 0..n {
                    tag += 1;
                    let w = send(
                        &what,
                        &mut gws[side],
                        &mut models[side],
                        side,
                        flow,
                        tag,
                        now,
                    );
                    let outcome = if w.is_some() {
                        "protected"
                    } else {
                        "not protected"
                    };
                    *tally.entry(format!("outbound {outcome}")).or_default() += 1;
                    last = w.or(last);
                }
                if let Some(w) = last {
                    if wire.len() == MAX_WIRE {
                        wire.remove(0);
                    }
                    wire.push(w);
                }
            }
            Op::Deliver { wire: k } => {
                if !wire.is_empty() {
                    let w = &wire[usize::from(k) % wire.len()];
                    let to = 1 - w.from;
                    let outcome = deliver(&what, &mut gws[to], &mut models[to], w, now);
                    *tally.entry(format!("inbound {outcome}")).or_default() += 1;
                }
            }
            Op::Cleartext { gw, flow } => {
                let side = usize::from(gw);
                tag += 1;
                let outcome = cleartext(&what, &mut gws[side], &models[side], flow, tag, now);
                *tally.entry(format!("cleartext {outcome}")).or_default() += 1;
            }
            Op::Advance { ms } => now += Duration::from_millis(u64::from(ms)),
            Op::Poll { gw } => {
                let side = usize::from(gw);
                assert!(
                    gws[side].poll_event(now).is_none(),
                    "{what}: an event, and no SA has lifetimes"
                );
                models[side].reap(now);
            }
            Op::AllocateSpi { gw } => {
                let side = usize::from(gw);
                if let Ok(spi) = gws[side].allocate_spi(now) {
                    assert!((256..=263).contains(&spi), "{what}: {spi} out of range");
                    assert!(
                        !models[side].sas.iter().any(|s| !s.outbound && s.spi == spi),
                        "{what}: allocated {spi}, the SPI of an installed inbound SA"
                    );
                }
            }
        }
        for (g, m) in gws.iter().zip(&models) {
            assert_eq!(shape(g), model_shape(m), "after {what}");
        }
    }
    tally
}

/// Encrypts packet `flow` at `gw` and checks the verdict against the model.
fn send(
    what: &str,
    gw: &mut Gateway,
    m: &mut Model,
    side: usize,
    flow: u8,
    tag: u32,
    now: Duration,
) -> Option<Wire> {
    let (protocol, inner) = inner_packet(flow, tag);
    let decision = m.policies.iter().find(|p| p.outbound && p.covers(protocol));
    // The model's verdict: Ok(Some((sa index, policy))) protected, Ok(None) bypassed by
    // `policy`, Err a policy discard.
    let want: Result<(Option<usize>, String), ()> = match decision {
        Some(p) if p.action == Act::Bypass => Ok((None, p.name.clone())),
        Some(p) if p.action == Act::Protect => {
            let sa = p.sa_out.as_deref().and_then(|n| m.route(n));
            sa.map(|i| (Some(i), p.name.clone())).ok_or(())
        }
        _ => Err(()),
    };
    let mut buf = vec![0u8; ROOM + inner.len() + ROOM];
    buf[ROOM..ROOM + inner.len()].copy_from_slice(&inner);
    let mut pkt = PacketBuf::new(&mut buf, ROOM, inner.len()).expect("in bounds");
    let got = gw.outbound(&mut pkt, now);
    match (got, want) {
        (Err(Error::PolicyDiscard), Err(())) => None,
        (Ok(Outbound::Bypassed { policy }), Ok((None, want))) if policy == want => {
            assert_eq!(pkt.data(), &inner[..], "{what}: bypassed, but changed");
            None
        }
        (Ok(Outbound::Protected { sa, policy }), Ok((Some(i), want_policy)))
            if sa == m.sas[i].name && policy == want_policy =>
        {
            let s = &mut m.sas[i];
            s.packets += 1;
            let bytes = pkt.data().to_vec();
            let spi = u32::from_be_bytes(bytes[20..24].try_into().expect("4 bytes"));
            let seq = u64::from(u32::from_be_bytes(
                bytes[24..28].try_into().expect("4 bytes"),
            ));
            assert_eq!(spi, s.spi, "{what}: SPI on the wire");
            assert_eq!(seq, s.packets, "{what}: sequence number on the wire");
            Some(Wire {
                from: side,
                spi,
                seq,
                key: s.key,
                protocol,
                inner,
                bytes,
            })
        }
        (got, want) => {
            let want = want.map(|(i, p)| (i.map(|i| m.sas[i].name.clone()), p));
            panic!("{what}: outbound gave {got:?}, the model says {want:?}")
        }
    }
}

/// Delivers `w` to `gw` and checks the verdict against the model.
/// Returns `"decrypted"` or the drop reason.
fn deliver(what: &str, gw: &mut Gateway, m: &mut Model, w: &Wire, now: Duration) -> String {
    // The model's verdict: Ok((sa index, policy)) or the error.
    let want: Result<(usize, String), Error> = 'want: {
        let unknown = Error::UnknownSpi { spi: w.spi };
        // The longest match (RFC 4301 §4.1): SPI and the packets' destination, then
        // the SPI alone; a retired SA found is deleted and the search goes on.
        let i = loop {
            let find = |dst: Option<u8>| {
                m.sas
                    .iter()
                    .position(|s| !s.outbound && s.spi == w.spi && s.dst == dst)
            };
            let Some(i) = find(Some(0)).or_else(|| find(None)) else {
                break 'want Err(unknown);
            };
            if m.sas[i].retire_at.is_some_and(|t| now >= t) {
                m.sas.remove(i);
                continue;
            }
            break i;
        };
        let s = &m.sas[i];
        if w.seq + WINDOW <= s.highest {
            break 'want Err(Error::TooOld {
                seq: w.seq,
                highest: s.highest,
            });
        }
        if s.seen.contains(&w.seq) {
            break 'want Err(Error::Replayed { seq: w.seq });
        }
        if s.key != w.key {
            break 'want Err(Error::AuthenticationFailed);
        }
        // Authenticated: recorded in the window, whatever the policy check says.
        let s = &mut m.sas[i];
        s.seen.insert(w.seq);
        s.highest = s.highest.max(w.seq);
        let floor = s.highest.saturating_sub(WINDOW);
        s.seen.retain(|&x| x > floor);
        let s = &m.sas[i];
        let policy = m.policies.iter().find(|p| {
            p.sa_in.as_ref().is_some_and(|n| s.serves.contains(n)) && p.covers(w.protocol)
        });
        match policy {
            Some(p) => Ok((i, p.name.clone())),
            None => Err(Error::PolicyMismatch),
        }
    };
    let mut buf = w.bytes.clone();
    let len = buf.len();
    let mut pkt = PacketBuf::new(&mut buf, 0, len).expect("in bounds");
    let got = gw.inbound(&mut pkt, now);
    match (got, &want) {
        (Ok(Inbound::Decrypted { sa, policy }), Ok((i, want_policy))) => {
            assert_eq!(sa, m.sas[*i].name, "{what}: decrypted by another SA");
            assert_eq!(policy, want_policy, "{what}: under another policy");
            assert_eq!(pkt.data(), &w.inner[..], "{what}: not the packet sent");
            m.sas[*i].packets += 1;
            "decrypted".to_owned()
        }
        (Err(e), Err(want_e)) if e.drop_reason() == want_e.drop_reason() => {
            format!("{:?}", e.drop_reason())
        }
        (got, want) => panic!(
            "{what}: inbound gave {got:?}, the model says {:?}",
            want.as_ref().map(|(i, p)| (&m.sas[*i].name, p))
        ),
    }
}

/// Hands packet `flow` in the clear to `gw` (inbound) and checks the verdict.
fn cleartext(
    what: &str,
    gw: &mut Gateway,
    m: &Model,
    flow: u8,
    tag: u32,
    now: Duration,
) -> &'static str {
    let (protocol, inner) = inner_packet(flow, tag);
    let decision = m.policies.iter().find(|p| p.inbound && p.covers(protocol));
    let mut buf = inner.clone();
    let mut pkt = PacketBuf::new(&mut buf, 0, inner.len()).expect("in bounds");
    let got = gw.inbound(&mut pkt, now);
    match (got, decision.map(|p| (p.action, p.name.as_str()))) {
        (Ok(Inbound::Bypassed { policy }), Some((Act::Bypass, want))) if policy == want => {
            "bypassed"
        }
        (Err(Error::UnprotectedTraffic), Some((Act::Protect, _))) => "unprotected",
        (Err(Error::PolicyDiscard), Some((Act::Discard, _)) | None) => "discarded",
        (got, want) => panic!("{what}: cleartext gave {got:?}, the model says {want:?}"),
    }
}

/// Hand-made inputs: a rekey under traffic with a late packet, a retired SA, a
/// replay, a packet too old for the window, and refusals of every kind; every policy
/// template and a retired SA refused to a new policy; inbound SAs sharing an SPI,
/// found by destination or SPI alone (the corpus test runs them).
pub fn scenarios() -> Vec<Vec<Op>> {
    let sa = |name: u8, outbound: bool, spi: u8, key: u8| SaSpec {
        name,
        outbound,
        spi,
        key,
    };
    let both = |name: u8, sa_out: u8, sa_in: u8| PolicySpec {
        template: 0,
        name,
        sa_out,
        sa_in,
    };
    let pair = |from: bool, name: u8, spi: u8, key: u8| Op::AddPair {
        from,
        sa: sa(name, true, spi, key),
    };
    let rekey = vec![
        // "a" from 0 to 1 (SPI 256, key 0), and "b" back from 1 to 0 (SPI 257, key 1).
        pair(false, 0, 0, 0),
        pair(true, 1, 1, 1),
        Op::InstallPolicy {
            gw: false,
            policy: both(0, 0, 1),
            before: Some(3),
        },
        Op::InstallPolicy {
            gw: true,
            policy: both(0, 1, 0),
            before: Some(3),
        },
        Op::Send { gw: false, flow: 0 },
        Op::Deliver { wire: 0 },
        Op::Deliver { wire: 0 },         // replayed
        Op::Send { gw: false, flow: 0 }, // held: delivered after the rekey
        // Make-before-break: inbound "c" at 1, outbound "c" at 0 (SPI 258, key 2).
        Op::RekeySa {
            gw: true,
            replaces: 0,
            sa: sa(2, false, 2, 2),
        },
        Op::RekeySa {
            gw: false,
            replaces: 0,
            sa: sa(2, true, 2, 2),
        },
        Op::DeleteSa { gw: false, name: 0 },
        Op::Send { gw: false, flow: 0 },
        Op::Deliver { wire: 2 },
        Op::Deliver { wire: 1 }, // late, by the old inbound SA
        Op::RetireSa {
            gw: true,
            name: 0,
            after_ms: 10,
        },
        Op::Deliver { wire: 1 }, // replayed
        Op::Advance { ms: 10 },
        Op::Deliver { wire: 0 }, // after the retirement time: unknown SPI
        Op::Send { gw: true, flow: 0 },
        Op::Deliver { wire: 3 },
        // Refusals: a name and a key in use, the SA a policy needs, a missing SA, an
        // invalid policy, an unknown policy.
        Op::AddSa {
            gw: false,
            sa: sa(2, true, 3, 5),
        },
        Op::AddSa {
            gw: false,
            sa: sa(3, true, 3, 2),
        },
        Op::DeleteSa { gw: false, name: 2 },
        Op::InstallPolicy {
            gw: false,
            policy: both(1, 3, 1),
            before: None,
        },
        Op::InstallPolicy {
            gw: false,
            policy: PolicySpec {
                template: 6,
                name: 1,
                sa_out: 2,
                sa_in: 1,
            },
            before: None,
        },
        Op::RemovePolicy { gw: false, name: 2 },
        Op::Cleartext { gw: true, flow: 0 },
        Op::Cleartext { gw: true, flow: 2 },
        Op::Poll { gw: true },
        Op::AllocateSpi { gw: true },
        // A packet, then a burst of 72 of which only the last arrives: the first is
        // then beyond the window.
        Op::Send { gw: false, flow: 0 },
        Op::Burst {
            gw: false,
            flow: 0,
            count: 70,
        },
        Op::Deliver { wire: 5 },
        Op::Deliver { wire: 4 }, // too old
    ];
    let tpl = |template: u8, name: u8, sa_out: u8, sa_in: u8| PolicySpec {
        template,
        name,
        sa_out,
        sa_in,
    };
    let install =
        |gw: bool, policy: PolicySpec, before: Option<u8>| Op::InstallPolicy { gw, policy, before };
    let send = |gw: bool, flow: u8| Op::Send { gw, flow };
    // Policies of every template: one-way protect, bypass, discard, narrowed by
    // replace_policy, removed; an outbound SA retired, refused to a new policy (it
    // counts as gone), reaped by poll_event, and added again for the policy.
    let policies = vec![
        pair(false, 0, 0, 0),
        install(false, tpl(1, 0, 0, 0), Some(3)), // p: all outbound through a
        install(true, tpl(2, 0, 0, 0), Some(3)),  // p: all inbound through a
        install(false, tpl(4, 1, 0, 0), Some(0)), // q: ICMP bypassed, before p
        install(false, tpl(5, 2, 0, 0), Some(0)), // r: TCP discarded, before p
        send(false, 0),                           // protected by a under p
        send(false, 1),                           // discarded by r
        send(false, 2),                           // bypassed by q
        Op::Deliver { wire: 0 },
        Op::Cleartext { gw: true, flow: 0 }, // unprotected traffic
        Op::ReplacePolicy {
            gw: true,
            policy: tpl(0, 0, 1, 0), // needs outbound b at 1: missing
        },
        Op::AddSa {
            gw: true,
            sa: sa(1, true, 1, 1),
        },
        Op::ReplacePolicy {
            gw: true,
            policy: tpl(3, 0, 1, 0), // p: TCP only, both ways, [b, a]
        },
        Op::Deliver { wire: 0 }, // replayed
        send(false, 0),
        Op::Deliver { wire: 1 }, // UDP: policy mismatch now
        Op::RemovePolicy { gw: false, name: 2 },
        send(false, 1),
        Op::Deliver { wire: 2 }, // TCP: decrypted under p
        Op::RetireSa {
            gw: true,
            name: 1,
            after_ms: 5,
        }, // b carries p: in use
        Op::AddSa {
            gw: false,
            sa: sa(2, true, 2, 2),
        },
        Op::RetireSa {
            gw: false,
            name: 2,
            after_ms: 5,
        },
        install(false, tpl(1, 2, 2, 0), Some(0)), // r through c: c is retiring
        send(false, 0),                           // protected by a under p
        Op::Advance { ms: 5 },
        Op::Poll { gw: false },                   // c reaped
        install(false, tpl(1, 2, 2, 0), Some(0)), // r through c: c is gone
        Op::AddSa {
            gw: false,
            sa: sa(2, true, 2, 3),
        },
        install(false, tpl(1, 2, 2, 0), Some(0)), // r: all outbound through c
        send(false, 0),                           // protected by c under r
        Op::RemovePolicy { gw: true, name: 3 },
        Op::Cleartext { gw: true, flow: 0 }, // no policy at all: discard
        Op::AllocateSpi { gw: true },
        Op::AllocateSpi { gw: true },
    ];
    // RFC 4301 §4.1 lookups at gateway 1, all SPI 257 (`spi % 6 == 1`; bits 4-5 the
    // lookup, see `SaSpec::spi`): "a" by SPI and the packets' destination, "b" by SPI
    // and another destination, "c" by the SPI alone; SPI + protocol and a second "a"
    // collide.
    let by_dst = 37;
    let lookups = vec![
        pair(false, 0, by_dst, 1),
        Op::AddSa {
            gw: true,
            sa: sa(1, false, 49, 2),
        },
        Op::AddSa {
            gw: true,
            sa: sa(2, false, 1, 3),
        },
        Op::AddSa {
            gw: true,
            sa: sa(3, false, 19, 4), // SPI + protocol: the key of "c"
        },
        Op::AddSa {
            gw: true,
            sa: sa(3, false, by_dst, 5), // the key of "a"
        },
        install(false, tpl(1, 0, 0, 0), Some(3)), // p: all outbound through a
        install(true, tpl(2, 0, 0, 0), Some(3)),  // p: all inbound through a
        send(false, 0),
        Op::Deliver { wire: 0 }, // the longest match: a
        Op::RemovePolicy { gw: true, name: 0 },
        Op::DeleteSa { gw: true, name: 0 },
        send(false, 0),
        Op::Deliver { wire: 1 }, // to c, whose key does not open it
        Op::DeleteSa { gw: true, name: 2 },
        send(false, 0),
        Op::Deliver { wire: 2 }, // b wants another destination: unknown SPI
        Op::AllocateSpi { gw: true },
    ];
    vec![rekey, policies, lookups]
}
