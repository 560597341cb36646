//! The policy file (DESIGN.md "Policy file (TOML)"): `[[policy]]` and `[[sa]]` tables.
//!
//! Each policy table is read key by key so that every error names the policy (its
//! `name`, or `policy #N` counting from 1 when the name is missing) and the key.

use crate::error::ConfigError;
use crate::sa::Direction;
use crate::sa_file::{self, NamedSa};
use crate::secret;
use crate::spd::selector::{
    AddrSet, has_ports, is_icmp, parse_port_range, parse_protocol, protocol_name,
};
use crate::spd::{Action, Policy, PolicyDirection};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use toml::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    policy: Vec<toml::Table>,
    #[serde(default)]
    sa: Vec<toml::Table>,
}

/// The keys a `[[policy]]` table may hold.
const KEYS: [&str; 11] = [
    "name",
    "direction",
    "local",
    "remote",
    "protocol",
    "local_port",
    "remote_port",
    "icmp_type",
    "icmp_code",
    "action",
    "sa",
];

fn type_name(v: &Value) -> &'static str {
    v.type_str()
}

/// Parses `text` into policies and SAs; collects every problem it can find instead of
/// stopping at the first (a bad policy is skipped, the others are still checked).
pub(crate) fn parse(text: &str) -> (Vec<Policy>, Vec<NamedSa>, Vec<ConfigError>) {
    let mut file: PolicyFile = match toml::from_str(text) {
        Ok(f) => f,
        Err(e) => return (Vec::new(), Vec::new(), vec![secret::toml_error(e, text)]),
    };
    let (sas, mut errors) = sa_file::parse_sa_tables(file.sa);
    // The SAs must be able to exist: every check a gateway makes when it creates them.
    errors.extend(crate::sa_set::check_sas(&sas));
    let sa_dirs: HashMap<&str, Direction> = sas
        .iter()
        .map(|s| (s.name.as_str(), s.config.direction))
        .collect();
    let mut names = HashSet::new();
    let mut policies = Vec::with_capacity(file.policy.len());
    for (i, table) in file.policy.iter().enumerate() {
        let label = match table.get("name").and_then(Value::as_str) {
            Some(n) => format!("policy {n:?}"),
            None => format!("policy #{}", i + 1),
        };
        let mut errs = Vec::new();
        let p = parse_policy(table, Some(&sa_dirs), &mut errs);
        if let Some(n) = table.get("name").and_then(Value::as_str)
            && !names.insert(n.to_owned())
        {
            errs.push(ConfigError::new(
                "name",
                "duplicate policy name (names must be unique)",
            ));
        }
        if errs.is_empty()
            && let Some(p) = p
        {
            policies.push(p);
        }
        errors.extend(errs.into_iter().map(|e| e.in_context(&label)));
    }
    // A secret written into a policy table is an error (an unknown key): its value is
    // wiped before the table is dropped.
    file.policy.iter_mut().for_each(secret::wipe_secret_fields);
    if !errors.is_empty() {
        // Defence in depth: no piece of a secret value leaves in a message.
        let scrubber = secret::Scrubber::new(text);
        errors = errors.into_iter().map(|e| scrubber.error(e)).collect();
    }
    (policies, sas, errors)
}

/// Parses one policy on its own ([`Policy::from_toml`]): `text` is the body of one
/// `[[policy]]` table (its `key = value` lines), or a document holding exactly one
/// `[[policy]]` table. The SA names are taken by their place (`[outbound, inbound]`)
/// and not looked up: the gateway that installs the policy checks them. Errors are in
/// the context `policy "NAME"`, scrubbed like the file parser's.
pub(crate) fn parse_one_policy(text: &str) -> Result<Policy, ConfigError> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| secret::toml_error(e, text))?;
    let alone = table.len() == 1;
    if let Some(Value::Array(list)) = table.get_mut("policy") {
        let one = match list.as_mut_slice() {
            [Value::Table(t)] if alone => Some(core::mem::take(t)),
            _ => None,
        };
        // Whatever else the document held (an [[sa]] table with its key, say) is
        // wiped before it is dropped.
        secret::wipe_secret_fields(&mut table);
        match one {
            Some(one) => table = one,
            None => {
                return Err(ConfigError::new(
                    "policy",
                    "expected exactly one [[policy]] table and nothing else (or the keys \
                     of one policy)",
                ));
            }
        }
    }
    let label = match table.get("name").and_then(Value::as_str) {
        Some(n) => format!("policy {n:?}"),
        None => "policy".to_owned(),
    };
    let mut errs = Vec::new();
    let policy = parse_policy(&table, None, &mut errs);
    secret::wipe_secret_fields(&mut table);
    match (policy, errs.into_iter().next()) {
        (Some(p), None) => Ok(p),
        (_, Some(e)) => Err(secret::Scrubber::new(text).error(e.in_context(&label))),
        (None, None) => Err(ConfigError::new(label, "not a policy")),
    }
}

/// The `name` of a policy table, read without checking the rest (empty when the text
/// is not TOML or the name is missing or not a string).
pub(crate) fn policy_name(text: &str) -> String {
    let Ok(mut table) = toml::from_str::<toml::Table>(text) else {
        return String::new();
    };
    if let Some(Value::Array(list)) = table.get_mut("policy")
        && let [Value::Table(t)] = list.as_mut_slice()
    {
        table = core::mem::take(t);
    }
    let name = table
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    secret::wipe_secret_fields(&mut table);
    name
}

/// Why the SA `name`, of direction `is`, cannot be where a policy names it, which
/// needs an SA of direction `needs` (the key `sa` of the policy's table).
pub(crate) fn sa_direction_error(name: &str, is: Direction, needs: Direction) -> ConfigError {
    ConfigError::new(
        "sa",
        format!(
            "SA {name:?} is {} but this policy needs an {} SA there",
            is.name(),
            needs.name()
        ),
    )
}

fn get_str<'a>(t: &'a toml::Table, key: &str, errs: &mut Vec<ConfigError>) -> Option<&'a str> {
    match t.get(key)? {
        Value::String(s) => Some(s),
        v => {
            errs.push(ConfigError::new(
                key,
                format!("expected a string, got {}", type_name(v)),
            ));
            None
        }
    }
}

fn parse_addrs(t: &toml::Table, key: &str, errs: &mut Vec<ConfigError>) -> Option<AddrSet> {
    let r = match t.get(key) {
        None => Ok(AddrSet::any()),
        Some(Value::String(s)) => AddrSet::parse(s),
        Some(Value::Array(items)) => {
            let strs: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            match strs {
                Some(v) => AddrSet::parse_list(v),
                None => Err("expected a list of address strings".into()),
            }
        }
        Some(v) => Err(format!(
            "expected an address string or a list of them, got {}",
            type_name(v)
        )),
    };
    r.map_err(|m| errs.push(ConfigError::new(key, m))).ok()
}

fn parse_ports(
    t: &toml::Table,
    key: &str,
    errs: &mut Vec<ConfigError>,
) -> Option<Option<(u16, u16)>> {
    let r = match t.get(key) {
        None => Ok(None),
        Some(Value::Integer(n)) => u16::try_from(*n)
            .map(|p| Some((p, p)))
            .map_err(|_| format!("{n} is not a port number (0..=65535)")),
        Some(Value::String(s)) => parse_port_range(s),
        Some(v) => Err(format!(
            "expected a port number, \"a-b\" or \"any\", got {}",
            type_name(v)
        )),
    };
    r.map_err(|m| errs.push(ConfigError::new(key, m))).ok()
}

fn parse_icmp(t: &toml::Table, key: &str, errs: &mut Vec<ConfigError>) -> Option<Option<u8>> {
    let r = match t.get(key) {
        None => Ok(None),
        Some(Value::Integer(n)) => u8::try_from(*n)
            .map(Some)
            .map_err(|_| format!("{n} is not in 0..=255")),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("any") => Ok(None),
        Some(v) => Err(format!(
            "expected a number 0..=255 or \"any\", got {}",
            type_name(v)
        )),
    };
    r.map_err(|m| errs.push(ConfigError::new(key, m))).ok()
}

/// One policy table. `sa_dirs`, when given, is the direction of every SA name a
/// policy may use, and the names the policy gives are checked against it.
fn parse_policy(
    t: &toml::Table,
    sa_dirs: Option<&HashMap<&str, Direction>>,
    errs: &mut Vec<ConfigError>,
) -> Option<Policy> {
    for k in t.keys() {
        if !KEYS.contains(&k.as_str()) {
            errs.push(ConfigError::new(
                k.as_str(),
                format!("unknown key (expected one of: {})", KEYS.join(", ")),
            ));
        }
    }
    let name = get_str(t, "name", errs).map(str::to_owned);
    if name.is_none() && !t.contains_key("name") {
        errs.push(ConfigError::new(
            "name",
            "missing (every policy needs a unique name)",
        ));
    } else if name.as_deref() == Some("") {
        errs.push(ConfigError::new("name", "must not be empty"));
    }
    let direction = match get_str(t, "direction", errs) {
        Some(d) => PolicyDirection::from_name(d)
            .map_err(|m| errs.push(ConfigError::new("direction", m)))
            .ok(),
        // DESIGN.md: "both" (a mirrored pair) is the default.
        None if !t.contains_key("direction") => Some(PolicyDirection::Both),
        None => None,
    };
    let action = match get_str(t, "action", errs) {
        Some(a) => Action::from_name(a)
            .map_err(|m| errs.push(ConfigError::new("action", m)))
            .ok(),
        None if !t.contains_key("action") => {
            errs.push(ConfigError::new(
                "action",
                "missing (\"protect\", \"bypass\" or \"discard\")",
            ));
            None
        }
        None => None,
    };
    let local = parse_addrs(t, "local", errs);
    let remote = parse_addrs(t, "remote", errs);
    let protocol = match t.get("protocol") {
        None => Some(None),
        Some(Value::String(s)) => parse_protocol(s)
            .map_err(|m| errs.push(ConfigError::new("protocol", m)))
            .ok(),
        Some(Value::Integer(n)) => u8::try_from(*n)
            .map(Some)
            .map_err(|_| {
                errs.push(ConfigError::new(
                    "protocol",
                    format!("{n} is not a protocol number (0..=255)"),
                ))
            })
            .ok(),
        Some(v) => {
            errs.push(ConfigError::new(
                "protocol",
                format!("expected a protocol name or number, got {}", type_name(v)),
            ));
            None
        }
    };
    let local_port = parse_ports(t, "local_port", errs);
    let remote_port = parse_ports(t, "remote_port", errs);
    let icmp_type = parse_icmp(t, "icmp_type", errs);
    let icmp_code = parse_icmp(t, "icmp_code", errs);
    if let Some(proto) = protocol {
        let ports_ok = proto.is_some_and(has_ports);
        for (key, set) in [
            ("local_port", t.contains_key("local_port")),
            ("remote_port", t.contains_key("remote_port")),
        ] {
            if set && !ports_ok {
                errs.push(ConfigError::new(
                    key,
                    format!(
                        "ports need protocol tcp, udp or sctp (protocol is {})",
                        protocol_name(proto)
                    ),
                ));
            }
        }
        let icmp_ok = proto.is_some_and(is_icmp);
        for key in ["icmp_type", "icmp_code"] {
            if t.contains_key(key) && !icmp_ok {
                errs.push(ConfigError::new(
                    key,
                    format!(
                        "ICMP fields need protocol icmp or icmpv6 (protocol is {})",
                        protocol_name(proto)
                    ),
                ));
            }
        }
    }
    if icmp_type == Some(None) && icmp_code.is_some_and(|c| c.is_some()) {
        errs.push(ConfigError::new(
            "icmp_code",
            "a code selector needs an icmp_type (codes are per type)",
        ));
    }
    let (sa_out, sa_in) = parse_sa_ref(t, direction, action, sa_dirs, errs);
    if !errs.is_empty() {
        return None;
    }
    Some(Policy {
        name: name?,
        direction: direction?,
        local: local?,
        remote: remote?,
        protocol: protocol?,
        local_port: local_port?,
        remote_port: remote_port?,
        icmp_type: icmp_type?,
        icmp_code: icmp_code?,
        action: action?,
        sa_out,
        sa_in,
    })
}

fn parse_sa_ref(
    t: &toml::Table,
    direction: Option<PolicyDirection>,
    action: Option<Action>,
    sa_dirs: Option<&HashMap<&str, Direction>>,
    errs: &mut Vec<ConfigError>,
) -> (Option<String>, Option<String>) {
    let Some(value) = t.get("sa") else {
        if action == Some(Action::Protect) {
            errs.push(ConfigError::new(
                "sa",
                "missing: a protect policy names the SA(s) that carry it",
            ));
        }
        return (None, None);
    };
    if let Some(a) = action
        && a != Action::Protect
    {
        errs.push(ConfigError::new(
            "sa",
            format!("only protect policies name SAs (action is {})", a.name()),
        ));
        return (None, None);
    }
    let Some(direction) = direction else {
        return (None, None);
    };
    let names: Vec<&str> = match value {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => match a.iter().map(Value::as_str).collect::<Option<Vec<_>>>() {
            Some(v) => v,
            None => {
                errs.push(ConfigError::new("sa", "expected SA names (strings)"));
                return (None, None);
            }
        },
        v => {
            errs.push(ConfigError::new(
                "sa",
                format!("expected an SA name or a list of two, got {}", type_name(v)),
            ));
            return (None, None);
        }
    };
    let wanted: Vec<Direction> = match direction {
        PolicyDirection::Outbound => vec![Direction::Outbound],
        PolicyDirection::Inbound => vec![Direction::Inbound],
        PolicyDirection::Both => vec![Direction::Outbound, Direction::Inbound],
    };
    if names.len() != wanted.len() {
        let msg = if wanted.len() == 2 {
            "direction \"both\" needs two SAs: [outbound, inbound]".to_string()
        } else {
            format!(
                "direction \"{}\" needs exactly one SA name",
                direction.name()
            )
        };
        errs.push(ConfigError::new("sa", msg));
        return (None, None);
    }
    let mut ok = true;
    for (n, want) in names.iter().zip(&wanted) {
        let Some(sa_dirs) = sa_dirs else { break };
        match sa_dirs.get(n) {
            None => {
                errs.push(ConfigError::new(
                    "sa",
                    format!("unknown SA {n:?} (no [[sa]] table has this name)"),
                ));
                ok = false;
            }
            Some(d) if d != want => {
                errs.push(sa_direction_error(n, *d, *want));
                ok = false;
            }
            Some(_) => {}
        }
    }
    if !ok {
        return (None, None);
    }
    match direction {
        PolicyDirection::Outbound => (Some(names[0].to_owned()), None),
        PolicyDirection::Inbound => (None, Some(names[0].to_owned())),
        PolicyDirection::Both => (Some(names[0].to_owned()), Some(names[1].to_owned())),
    }
}
