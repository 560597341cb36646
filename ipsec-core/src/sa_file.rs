//! SA files: `[[sa]]` tables in TOML whose keys are the Python constructor's keyword
//! arguments (DESIGN.md "Policy file"), keys as hex strings.
//!
//! ```toml
//! [[sa]]
//! name = "branch1-out"
//! spi = 0x1000
//! direction = "outbound"
//! mode = "tunnel"
//! cipher = "aes-128-gcm"
//! key = "00112233445566778899aabbccddeeff01020304"
//! tunnel_src = "192.0.2.1"
//! tunnel_dst = "192.0.2.2"
//! # optional: integrity, integrity_key, esn, replay_window, udp_encap = [4500, 4500],
//! # seq, outer_ttl, tfc_pad_to, padding = "blocks" | "minimal",
//! # soft_lifetime / hard_lifetime = { bytes, packets, seconds },
//! # soft_lifetime_jitter = 10 (percent, 0..=100: see `SaConfig::soft_lifetime_jitter`),
//! # df = "copy" | "set" | "clear", nat_keepalive_interval = 20 (seconds; 0: off),
//! # nat_original_addresses = ["198.51.100.7", "10.0.0.5"] (inbound transport mode),
//! # path_mtu (outbound: the largest outer packet the path carries, see `path_mtu`),
//! # lookup = "spi" | "spi+protocol" | "spi+destination" | "spi+destination+source"
//! #   (inbound: how packets find the SA, RFC 4301 §4.1, see `SaLookup`; the
//! #   addresses are tunnel_dst and tunnel_src)
//! ```
//!
//! Unknown keys are errors; every error names the SA and the key (nested keys with a
//! dot: `sa "branch1-out": hard_lifetime.bytes`).
//!
//! The 64-bit fields (`seq`, the lifetime limits, `nat_keepalive_interval`) take a TOML
//! integer or a string holding a decimal or `0x` hexadecimal number: TOML integers stop
//! at 2^63-1, and an ESN sequence number may use all 64 bits
//! (`seq = "0x8765432100000006"`).
//!
//! Secrets ([`crate::secret::SECRET_FIELDS`]: `key`, `integrity_key`) are taken out of each
//! table before the rest is deserialized: they are held, decoded and dropped in memory
//! that is wiped, and no error ever quotes their value (see [`crate::secret`]).

use crate::crypto::{Cipher, Integrity};
use crate::error::ConfigError;
use crate::sa::{DfPolicy, Direction, EspPadding, Lifetime, Mode, SaConfig, SaLookup, TfcPadding};
use crate::secret;
use core::time::Duration;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::IpAddr;
use zeroize::Zeroizing;

/// One `[[sa]]` table, parsed and checked, ready to become a
/// [`SecurityAssociation`](crate::SecurityAssociation).
#[derive(Debug)]
#[non_exhaustive]
pub struct NamedSa {
    /// The SA's unique name.
    pub name: String,
    /// Its configuration.
    pub config: SaConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SaFile {
    #[serde(default)]
    sa: Vec<toml::Table>,
    /// A policy file's `[[policy]]` tables: allowed, so that one file can serve as
    /// both, and left to `Spd` to check.
    #[serde(default, rename = "policy")]
    _policies: Vec<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSa {
    name: String,
    spi: u32,
    direction: String,
    mode: String,
    cipher: String,
    /// Always absent from the table deserialized (see [`take_secrets`]); declared so that
    /// serde's "unknown field" messages list it.
    #[serde(default)]
    key: Zeroizing<String>,
    integrity: Option<String>,
    /// As `key`.
    #[serde(default)]
    integrity_key: Zeroizing<String>,
    #[serde(default)]
    esn: bool,
    replay_window: Option<u32>,
    tunnel_src: Option<String>,
    tunnel_dst: Option<String>,
    udp_encap: Option<(u16, u16)>,
    #[serde(default)]
    seq: U64,
    outer_ttl: Option<u8>,
    path_mtu: Option<u16>,
    tfc_pad_to: Option<u16>,
    padding: Option<String>,
    soft_lifetime: Option<RawLifetime>,
    soft_lifetime_jitter: Option<u32>,
    hard_lifetime: Option<RawLifetime>,
    df: Option<String>,
    nat_keepalive_interval: Option<U64>,
    nat_original_addresses: Option<(String, String)>,
    lookup: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLifetime {
    bytes: Option<U64>,
    packets: Option<U64>,
    seconds: Option<U64>,
}

impl From<RawLifetime> for Lifetime {
    fn from(r: RawLifetime) -> Lifetime {
        Lifetime {
            bytes: r.bytes.map(|v| v.0),
            packets: r.packets.map(|v| v.0),
            time: r.seconds.map(|v| Duration::from_secs(v.0)),
        }
    }
}

/// A 64-bit unsigned field: a TOML integer (which stops at 2^63-1) or a string holding
/// a decimal or `0x` hexadecimal number up to 2^64-1 (`_` allowed between digits).
#[derive(Clone, Copy, Debug, Default)]
struct U64(u64);

impl<'de> Deserialize<'de> for U64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<U64, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = U64;

            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(
                    "a non-negative integer, or a string holding a decimal or 0x-hexadecimal \
                     one up to 2^64-1",
                )
            }

            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<U64, E> {
                Ok(U64(v))
            }

            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<U64, E> {
                u64::try_from(v)
                    .map(U64)
                    .map_err(|_| E::custom(format!("{v} is negative")))
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<U64, E> {
                parse_u64(v).map(U64).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Parses `text` as a decimal or `0x`-prefixed hexadecimal `u64`; `_` may separate
/// digits, as in TOML integers.
fn parse_u64(text: &str) -> Result<u64, String> {
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (text, 10),
    };
    let bad = || {
        format!(
            "{text:?} is not a decimal or 0x-hexadecimal number (a string holds numbers above \
             2^63-1, which TOML integers cannot)"
        )
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return Err(bad());
    }
    let clean: String = digits.chars().filter(|&c| c != '_').collect();
    if !clean.chars().all(|c| c.is_digit(radix)) {
        return Err(bad());
    }
    u64::from_str_radix(&clean, radix).map_err(|_| format!("{text:?} does not fit 64 bits"))
}

/// Decodes a hex string (spaces, colons and a `0x` prefix allowed) into bytes.
pub fn decode_hex(field: &str, text: &str) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
    let text = text.strip_prefix("0x").unwrap_or(text);
    // Room for every byte up front: a vector that grew would leave copies of the key's
    // first digits in the blocks it outgrew, freed without being wiped.
    let mut digits: Zeroizing<Vec<u8>> = Zeroizing::new(Vec::with_capacity(text.len()));
    digits.extend(text.bytes().filter(|b| !matches!(b, b' ' | b':' | b'_')));
    if !digits.len().is_multiple_of(2) {
        return Err(ConfigError::new(
            field,
            "hex string has an odd number of digits",
        ));
    }
    let nibble = |c: u8| -> Result<u8, ConfigError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(ConfigError::new(
                field,
                format!("{:?} is not a hex digit", char::from(c)),
            )),
        }
    };
    let mut out = Zeroizing::new(Vec::with_capacity(digits.len() / 2));
    for pair in digits.chunks_exact(2) {
        out.push(nibble(pair[0])? << 4 | nibble(pair[1])?);
    }
    Ok(out)
}

fn parse_addr(field: &str, text: &str) -> Result<IpAddr, ConfigError> {
    text.parse()
        .map_err(|_| ConfigError::new(field, format!("{text:?} is not an IPv4 or IPv6 address")))
}

impl RawSa {
    fn into_config(self) -> Result<SaConfig, ConfigError> {
        let cipher = Cipher::from_name(&self.cipher)?;
        let key = decode_hex("key", &self.key)?;
        let mut cfg = SaConfig::new(
            self.spi,
            Direction::from_name(&self.direction)?,
            Mode::from_name(&self.mode)?,
            cipher,
            &key,
        );
        if let Some(name) = &self.integrity {
            let alg = Integrity::from_name(name)?;
            cfg.integrity(alg, &decode_hex("integrity_key", &self.integrity_key)?);
        } else if !self.integrity_key.is_empty() {
            return Err(ConfigError::new(
                "integrity_key",
                "given without an integrity algorithm",
            ));
        }
        cfg.esn(self.esn).seq(self.seq.0);
        if let Some(w) = self.replay_window {
            cfg.replay_window(w);
        }
        match (&self.tunnel_src, &self.tunnel_dst) {
            (Some(s), Some(d)) => {
                cfg.tunnel(parse_addr("tunnel_src", s)?, parse_addr("tunnel_dst", d)?);
            }
            (None, None) => {}
            (Some(_), None) => return Err(ConfigError::new("tunnel_dst", "missing")),
            (None, Some(_)) => return Err(ConfigError::new("tunnel_src", "missing")),
        }
        if let Some((s, d)) = self.udp_encap {
            cfg.udp_encap(s, d);
        }
        if let Some(ttl) = self.outer_ttl {
            cfg.outer_ttl(ttl);
        }
        cfg.path_mtu(self.path_mtu);
        if let Some(n) = self.tfc_pad_to {
            cfg.tfc_padding(TfcPadding::PadTo(n));
        }
        if let Some(p) = &self.padding {
            cfg.padding(EspPadding::from_name(p)?);
        }
        if let Some(l) = self.soft_lifetime {
            cfg.soft_lifetime(l.into());
        }
        if let Some(percent) = self.soft_lifetime_jitter {
            cfg.soft_lifetime_jitter(percent);
        }
        if let Some(l) = self.hard_lifetime {
            cfg.hard_lifetime(l.into());
        }
        if let Some(df) = &self.df {
            cfg.df(DfPolicy::from_name(df)?);
        }
        if let Some(seconds) = self.nat_keepalive_interval {
            cfg.nat_keepalive_interval(Some(Duration::from_secs(seconds.0)));
        }
        if let Some((src, dst)) = &self.nat_original_addresses {
            cfg.nat_original_addresses(
                parse_addr("nat_original_addresses", src)?,
                parse_addr("nat_original_addresses", dst)?,
            );
        }
        if let Some(l) = &self.lookup {
            cfg.lookup(SaLookup::from_name(l)?);
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A table that does not deserialize as an `[[sa]]` table, as an error naming the key:
/// the dotted path toml reports for a bad value (`hard_lifetime.bytes`), and the key
/// itself for an unknown or missing one (`hard_lifetime.minutes`). `label` (the SA) when
/// there is no key.
fn table_error(e: &toml::de::Error, label: &str) -> ConfigError {
    let message = e.message();
    // toml keeps the path of a bad value private, but writes it as the last line of
    // its Display ("in `hard_lifetime.bytes`") when the error has no source text.
    let text = e.to_string();
    let path = text
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("in `"))
        .and_then(|l| l.strip_suffix('`'));
    let quoted = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once('`'))
            .map(|(key, _)| key)
    };
    let (key, what) = if let Some(key) = quoted("unknown field `") {
        let what = match message.split_once(", expected ") {
            Some((_, expected)) => format!("unknown key; expected {expected}"),
            None => "unknown key".to_owned(),
        };
        (Some(key), what)
    } else if let Some(key) = quoted("missing field `") {
        (Some(key), "missing".to_owned())
    } else {
        (None, message.to_owned())
    };
    let field = match (path, key) {
        (Some(p), Some(k)) => format!("{p}.{k}"),
        (Some(p), None) => p.to_owned(),
        (None, Some(k)) => k.to_owned(),
        (None, None) => return ConfigError::new(label, what),
    };
    ConfigError::new(field, what).in_context(label)
}

/// Parses every `[[sa]]` table of `text` (a policy file's `[[policy]]` tables are
/// allowed and ignored here). Names must be unique, and so must keys: a key used by
/// two SAs (or as one SA's cipher and integrity key) is an error naming both
/// ([`crate::sa_set::check_key_reuse`]). Each configuration's fields are checked as
/// they are parsed; the key lengths and the algorithm combination are left to SA
/// creation ([`SaConfig::check`] runs every check without creating anything).
pub fn parse_sa_file(text: &str) -> Result<Vec<NamedSa>, ConfigError> {
    let mut file: SaFile = toml::from_str(text).map_err(|e| secret::toml_error(e, text))?;
    // Policy tables are ignored here; a secret written into one is wiped.
    file._policies
        .iter_mut()
        .for_each(secret::wipe_secret_fields);
    let (sas, errors) = parse_sa_tables(file.sa);
    match errors.into_iter().next() {
        Some(first) => Err(secret::Scrubber::new(text).error(first)),
        None => Ok(sas),
    }
}

/// The secret fields of one `[[sa]]` table, taken out of it.
struct Secrets {
    key: Zeroizing<String>,
    integrity_key: Zeroizing<String>,
}

/// Takes every [`secret::SECRET_FIELDS`] entry out of `table` (see the module docs).
fn take_secrets(table: &mut toml::Table) -> Result<Secrets, ConfigError> {
    let mut key = None;
    let mut integrity_key = None;
    let mut first_error = None;
    for name in secret::SECRET_FIELDS {
        let slot = match name {
            "key" => &mut key,
            "integrity_key" => &mut integrity_key,
            _ => unreachable!("every secret field of an [[sa]] table has a slot here"),
        };
        match secret::take_secret(table, name) {
            Ok(v) => *slot = v,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    // What is left named like a secret (`Key`, `integrity-key`, nested) is an unknown
    // field: wiped before serde reports it by name.
    secret::wipe_secret_fields(table);
    match first_error {
        Some(e) => Err(e),
        None => Ok(Secrets {
            key: key.unwrap_or_default(),
            integrity_key: integrity_key.unwrap_or_default(),
        }),
    }
}

/// Parses already-read `[[sa]]` tables (for files that hold other tables too, such as
/// policy files), continuing past bad entries: returns every SA that parsed and one
/// error per bad entry (each naming the SA and the key). Names must be unique, and keys
/// too ([`crate::sa_set::check_key_reuse`]: one more error per repeated key).
pub fn parse_sa_tables(tables: Vec<toml::Table>) -> (Vec<NamedSa>, Vec<ConfigError>) {
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(tables.len());
    let mut errors = Vec::new();
    for (i, mut table) in tables.into_iter().enumerate() {
        let label = match table.get("name").and_then(|v| v.as_str()) {
            Some(n) => format!("sa {n:?}"),
            None => format!("sa #{}", i + 1),
        };
        let secrets = match take_secrets(&mut table) {
            Ok(s) => s,
            Err(e) => {
                errors.push(e.in_context(&label));
                continue;
            }
        };
        let mut raw: RawSa = match table.try_into() {
            Ok(r) => r,
            Err(e) => {
                errors.push(table_error(&e, &label));
                continue;
            }
        };
        raw.key = secrets.key;
        raw.integrity_key = secrets.integrity_key;
        if !names.insert(raw.name.clone()) {
            errors.push(ConfigError::new(label, "duplicate SA name"));
            continue;
        }
        let name = raw.name.clone();
        match raw.into_config() {
            Ok(config) => out.push(NamedSa { name, config }),
            Err(e) => errors.push(e.in_context(&label)),
        }
    }
    errors.extend(crate::sa_set::check_key_reuse(&out));
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecurityAssociation;

    const GOOD: &str = r#"
        [[sa]]
        name = "b1-out"
        spi = 0x1000
        direction = "outbound"
        mode = "tunnel"
        cipher = "aes-128-gcm"
        key = "00112233445566778899aabbccddeeff01020304"
        tunnel_src = "192.0.2.1"
        tunnel_dst = "192.0.2.2"
        udp_encap = [4500, 4500]
        hard_lifetime = { packets = 1000, seconds = 3600 }

        [[sa]]
        name = "b1-in"
        spi = 0x1001
        direction = "inbound"
        mode = "transport"
        cipher = "aes-256-cbc"
        key = "0x0001020304050607080910111213141516171819202122232425262728293031"
        integrity = "hmac-sha256-128"
        integrity_key = "a0:a1:a2:a3:04:05:06:07:08:09:10:11:12:13:14:15:16:17:18:19:20:21:22:23:24:25:26:27:28:29:30:31"
        esn = true
        replay_window = 4096
    "#;

    #[test]
    fn parses_and_builds_sas() {
        let sas = parse_sa_file(GOOD).unwrap();
        assert_eq!(sas.len(), 2);
        assert_eq!(sas[0].name, "b1-out");
        for s in sas {
            let sa = SecurityAssociation::new(s.config, Duration::ZERO).unwrap();
            assert!(sa.spi() >= 0x1000);
        }
    }

    #[test]
    fn errors_name_the_sa_and_the_key() {
        let bad_key = GOOD.replace("01020304\"", "010203\"");
        let sas = parse_sa_file(&bad_key).unwrap();
        let err = SecurityAssociation::new(sas.into_iter().next().unwrap().config, Duration::ZERO)
            .unwrap_err();
        assert_eq!(err.field(), "key");

        let unknown = GOOD.replace("esn = true", "esn = true\nkye = 1");
        let err = parse_sa_file(&unknown).unwrap_err();
        assert_eq!(err.field(), "sa \"b1-in\": kye", "{err}");
        assert!(err.message().starts_with("unknown key"), "{err}");

        let bad_hex = GOOD.replace("0x0001", "0xzz01");
        let err = parse_sa_file(&bad_hex).unwrap_err();
        assert!(
            err.to_string().contains("b1-in") && err.to_string().contains("key"),
            "{err}"
        );

        let dup = GOOD.replace("b1-in", "b1-out");
        assert!(
            parse_sa_file(&dup)
                .unwrap_err()
                .message()
                .contains("duplicate")
        );

        let bad_addr = GOOD.replace("192.0.2.2", "192.0.2.300");
        let err = parse_sa_file(&bad_addr).unwrap_err();
        assert!(err.field().contains("tunnel_dst"), "{err}");
    }
}
