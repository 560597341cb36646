//! Checks of a set of SAs that are loaded together: the `[[sa]]` tables of one file,
//! the SAs of one [`Gateway`](crate::Gateway).
//!
//! * [`check_key_reuse`]: no key may serve two SAs, or two purposes in one SA. Every
//!   loader runs it ([`parse_sa_file`](crate::sa_file::parse_sa_file),
//!   [`parse_sa_tables`](crate::sa_file::parse_sa_tables), so [`Spd::from_toml`](crate::Spd::from_toml),
//!   and through them the Python and C loaders and the command line tools).
//! * [`check_sas`]: every check [`SecurityAssociation::new`](crate::SecurityAssociation::new)
//!   makes of each SA ([`SaConfig::check`](crate::SaConfig::check)), and unique lookup
//!   keys among the inbound SAs (they are found by SPI, and by destination where their
//!   [`SaLookup`](crate::SaLookup) says so). [`Spd::from_toml`](crate::Spd::from_toml)
//!   and [`Gateway::new`](crate::Gateway::new) run it, and the policy lint reports what
//!   it finds as `invalid` findings, so that `lint` passes no file a loader refuses.
//!
//! # Why keys are never shared
//!
//! A key must serve one SA and one purpose, as IKEv2 derives them (RFC 7296 §2.17:
//! separate encryption and integrity keys for each direction of each Child SA).
//!
//! * AES-GCM, ChaCha20-Poly1305 and AES-GMAC build their nonce from the salt and the
//!   64-bit sequence number, and every SA counts from 1. Two SAs with one key therefore
//!   use the same nonces (RFC 4106 §3.1: for a given key, the IV MUST NOT repeat): the
//!   XOR of two ciphertexts is the XOR of the plaintexts, and the GHASH/Poly1305 key
//!   can be recovered, so packets can be forged. This holds for two outbound SAs, and
//!   for an outbound and an inbound SA of one gateway as well: the peer encrypts with
//!   the inbound SA's key. The salt does not help (GHASH's key depends on the cipher
//!   key alone), so the salt is left out of the comparison: two SAs whose keys differ
//!   only in the salt share a key.
//! * An outbound and an inbound SA with the same keys and SPI accept each other's
//!   packets: packets reflected back to the gateway decrypt and verify.
//! * `integrity_key` reuse is refused too (between SAs, and as the same SA's cipher
//!   key): HMAC keys shared between SAs let one SA's packets verify on the other, and
//!   using one key for two algorithms has no security argument at all.
//!
//! A file that describes both ends of one SA (the sender's outbound SA and the
//! receiver's inbound SA, same SPI, same key) is refused for the same reason: it is
//! two gateways' configurations in one. Keep one file per gateway.
//!
//! # How keys are compared
//!
//! Without putting key bytes in any message, `Debug` output or log: each key is
//! reduced to an HMAC-SHA-256 tag under a random key drawn for this one check (a keyed
//! hash: the tags tell nothing about the keys and are dropped with the check), tags
//! are grouped in a map (linear in the number of SAs), and equal tags are confirmed
//! with a constant-time comparison of the keys themselves. Errors name the two SAs
//! and their fields (`key`, `integrity_key`), never the key.

use crate::crypto::{Cipher, ct_eq};
use crate::error::ConfigError;
use crate::sa::{Direction, SaConfig};
use crate::sa_file::NamedSa;
use crate::sad::SadKey;
use hmac::{Hmac, KeyInit, Mac};
use std::collections::HashMap;
use zeroize::Zeroizing;

/// One key of one SA: (SA index, field name, key bytes as compared).
type Slot<'a> = (usize, &'static str, &'a [u8]);

/// The keys of `sa` that take part in the reuse check: the cipher key (without the
/// 4-byte salt of the combined modes, see the [module docs](self)) and the integrity
/// key; empty ones (NULL encryption, combined modes) are left out.
fn slots(index: usize, sa: &NamedSa) -> impl Iterator<Item = Slot<'_>> {
    config_keys(sa.config.keys()).map(move |(field, key)| (index, field, key))
}

/// What the key reuse check looks at in an SA or its configuration: the cipher, the
/// direction and the two keys.
#[derive(Clone, Copy)]
pub(crate) struct SaKeys<'a> {
    pub(crate) cipher: Cipher,
    pub(crate) direction: Direction,
    pub(crate) key: &'a [u8],
    pub(crate) integrity_key: &'a [u8],
}

impl SaConfig {
    /// The part of this configuration the key reuse check looks at.
    pub(crate) fn keys(&self) -> SaKeys<'_> {
        SaKeys {
            cipher: self.cipher,
            direction: self.direction,
            key: &self.key,
            integrity_key: &self.integrity_key,
        }
    }
}

/// The keys of `cfg` that take part in the reuse check, with their field names.
fn config_keys(cfg: SaKeys<'_>) -> impl Iterator<Item = (&'static str, &[u8])> {
    let key: &[u8] = if cfg.cipher.is_combined() && cfg.key.len() > 4 {
        &cfg.key[..cfg.key.len() - 4]
    } else {
        cfg.key
    };
    [("key", key), ("integrity_key", cfg.integrity_key)]
        .into_iter()
        .filter(|(_, k)| !k.is_empty())
}

/// Every key (cipher key or integrity key) of `sas` that an earlier SA, or the same
/// SA in its other role, already uses: one error per repeated key, on the later SA
/// (`sa "NAME": key` or `sa "NAME": integrity_key`), naming the SA and field that use
/// it first. The message never contains key bytes. See the [module docs](self) for why
/// and how.
pub fn check_key_reuse(sas: &[NamedSa]) -> Vec<ConfigError> {
    let mut hash_key = Zeroizing::new([0u8; 32]);
    // Without OS randomness the tags are an unkeyed HMAC: still one-way, and they
    // never leave this function; equality is confirmed on the keys either way.
    if getrandom::fill(&mut hash_key[..]).is_err() {
        hash_key.fill(0x5c);
    }
    let tag = |k: &[u8]| -> [u8; 32] {
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&hash_key[..])
            .expect("HMAC takes any key length");
        mac.update(k);
        mac.finalize().into_bytes().into()
    };
    let mut seen: HashMap<[u8; 32], Vec<Slot<'_>>> = HashMap::new();
    let mut errors = Vec::new();
    for (i, sa) in sas.iter().enumerate() {
        for slot in slots(i, sa) {
            let earlier = seen.entry(tag(slot.2)).or_default();
            if let Some(first) = earlier.iter().find(|e| ct_eq(e.2, slot.2)) {
                errors.push(reuse_error(sas, *first, slot));
            } else {
                earlier.push(slot);
            }
        }
    }
    errors
}

fn reuse_error(sas: &[NamedSa], first: Slot<'_>, again: Slot<'_>) -> ConfigError {
    let (sa, first_sa) = (&sas[again.0], &sas[first.0]);
    key_reuse_error(
        (&sa.name, sa.config.keys(), again.1),
        (&first_sa.name, first_sa.config.keys(), first.1),
        first.0 == again.0,
    )
}

/// The error for the key `again` = (SA name, its configuration, field) that the SA
/// `first` already uses (`same_sa`: in its other role).
pub(crate) fn key_reuse_error(
    again: (&str, SaKeys<'_>, &'static str),
    first: (&str, SaKeys<'_>, &'static str),
    same_sa: bool,
) -> ConfigError {
    let (name, cfg, field) = again;
    let (first_name, first_cfg, first_field) = first;
    let whose = if same_sa {
        format!("this SA's own {first_field}")
    } else {
        format!("the {first_field} of sa {first_name:?}")
    };
    let both_ciphers = first_field == "key" && field == "key";
    let counter_mode = both_ciphers && (cfg.cipher.is_combined() || first_cfg.cipher.is_combined());
    let why = if counter_mode {
        let peer = if cfg.direction == first_cfg.direction {
            ""
        } else {
            " (an inbound SA's key is the peer's outbound key)"
        };
        format!(
            "both SAs count sequence numbers from 1, so {} nonces repeat under one key{peer}, \
             which exposes the XOR of their plaintexts and lets packets be forged",
            if cfg.cipher.is_combined() {
                cfg.cipher.name()
            } else {
                first_cfg.cipher.name()
            }
        )
    } else {
        "a key must serve one SA and one purpose (key separation)".to_owned()
    };
    ConfigError::new(
        field,
        format!(
            "the same key as {whose}: {why}; give every SA fresh random keys of its own \
             (IKE derives new ones for each SA and direction)"
        ),
    )
    .in_context(&format!("sa {name:?}"))
}

/// The keys of a live gateway's SAs, for refusing an SA added later whose key one of
/// them already uses ([`check_key_reuse`]'s rule, one SA at a time): each key is held
/// only as a 16-byte HMAC-SHA-256 tag under a key drawn for this registry, and equal
/// tags are confirmed on the keys themselves in constant time. Adding and removing an
/// SA is O(1).
pub(crate) struct KeyRegistry {
    hash_key: Zeroizing<[u8; 32]>,
    tags: HashMap<[u8; 16], Vec<(usize, &'static str)>>,
}

impl KeyRegistry {
    pub(crate) fn new() -> KeyRegistry {
        let mut hash_key = Zeroizing::new([0u8; 32]);
        if getrandom::fill(&mut hash_key[..]).is_err() {
            hash_key.fill(0x5c);
        }
        KeyRegistry {
            hash_key,
            tags: HashMap::new(),
        }
    }

    fn tag(&self, key: &[u8]) -> [u8; 16] {
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.hash_key[..])
            .expect("HMAC takes any key length");
        mac.update(key);
        let full: [u8; 32] = mac.finalize().into_bytes().into();
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&full[..16]);
        tag
    }

    /// The first key of `cfg` already in use: `(its field, the SA index holding it,
    /// that SA's field)`, or `(field, None, other field)` when `cfg` uses one key for
    /// both purposes. `config_of` gives the configuration of a registered SA.
    pub(crate) fn find_reuse<'c>(
        &self,
        cfg: SaKeys<'_>,
        config_of: impl Fn(usize) -> SaKeys<'c>,
    ) -> Option<(&'static str, Option<usize>, &'static str)> {
        let own: Vec<(&'static str, &[u8])> = config_keys(cfg).collect();
        if let [(f1, k1), (f2, k2)] = own[..]
            && ct_eq(k1, k2)
        {
            return Some((f2, None, f1));
        }
        for (field, key) in own {
            for &(index, other_field) in self.tags.get(&self.tag(key)).into_iter().flatten() {
                let other = config_of(index);
                if config_keys(other).any(|(f, k)| f == other_field && ct_eq(k, key)) {
                    return Some((field, Some(index), other_field));
                }
            }
        }
        None
    }

    /// Registers the keys of the SA `index`.
    pub(crate) fn insert(&mut self, index: usize, cfg: SaKeys<'_>) {
        for (field, key) in config_keys(cfg) {
            let tag = self.tag(key);
            self.tags.entry(tag).or_default().push((index, field));
        }
    }

    /// Forgets the keys of the SA `index`.
    pub(crate) fn remove(&mut self, index: usize, cfg: SaKeys<'_>) {
        for (_, key) in config_keys(cfg) {
            let tag = self.tag(key);
            if let Some(v) = self.tags.get_mut(&tag) {
                v.retain(|&(i, _)| i != index);
                if v.is_empty() {
                    self.tags.remove(&tag);
                }
            }
        }
    }
}

/// Every check that creating `sas` as a gateway's SAs makes, without creating them:
/// [`SaConfig::check`](crate::SaConfig::check) of each SA (errors in the context
/// `sa "NAME"`), and lookup keys unique among the inbound SAs (their SPI, with the
/// destination and source their [`crate::SaLookup`] compares; a repeated key is an
/// error on the later SA that names the earlier one). Key reuse is [`check_key_reuse`], which
/// the file parsers already run.
pub fn check_sas(sas: &[NamedSa]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut inbound_keys: HashMap<SadKey, &str> = HashMap::new();
    for sa in sas {
        let label = format!("sa {:?}", sa.name);
        if let Err(e) = sa.config.check() {
            errors.push(e.in_context(&label));
        }
        let c = &sa.config;
        if c.direction == Direction::Inbound
            && let key = SadKey::new(c.spi, c.lookup, c.tunnel)
            && let Some(first) = inbound_keys.insert(key, &sa.name)
        {
            // Keep the first SA as the one later duplicates are reported against.
            inbound_keys.insert(key, first);
            errors.push(ConfigError::new(
                format!("{label}: spi"),
                format!(
                    "inbound sa {first:?} already has SPI {:#010x}: inbound SAs are found by \
                     their SPI, so it must be unique among them (unless their lookups tell \
                     them apart by destination address, RFC 4301 §4.1)",
                    sa.config.spi
                ),
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sa_file::parse_sa_tables;

    fn sas(text: &str) -> Vec<NamedSa> {
        #[derive(serde::Deserialize)]
        struct F {
            sa: Vec<toml::Table>,
        }
        let f: F = toml::from_str(text).unwrap();
        let (sas, errors) = parse_sa_tables(f.sa);
        assert!(
            errors
                .iter()
                .all(|e| e.message().starts_with("the same key")),
            "{errors:?}"
        );
        sas
    }

    fn sa(name: &str, spi: u32, dir: &str, cipher: &str, key: &str, extra: &str) -> String {
        format!(
            "[[sa]]\nname = \"{name}\"\nspi = {spi}\ndirection = \"{dir}\"\nmode = \
             \"transport\"\ncipher = \"{cipher}\"\nkey = \"{key}\"\n{extra}\n"
        )
    }

    const K1: &str = "000102030405060708090a0b0c0d0e0f10111213";
    const K2: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3";

    #[test]
    fn distinct_keys_pass_and_the_salt_does_not_make_a_key_distinct() {
        let text = sa("a", 0x1000, "outbound", "aes-128-gcm", K1, "")
            + &sa("b", 0x1001, "inbound", "aes-128-gcm", K2, "");
        assert!(check_key_reuse(&sas(&text)).is_empty());
        let salted = K1.replace("10111213", "ffffffff");
        let text = sa("a", 0x1000, "outbound", "aes-128-gcm", K1, "")
            + &sa("b", 0x1001, "outbound", "aes-128-gcm", &salted, "");
        let e = check_key_reuse(&sas(&text));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].field(), "sa \"b\": key");
        assert!(e[0].message().contains("sa \"a\""), "{}", e[0]);
        assert!(e[0].message().contains("nonces repeat"), "{}", e[0]);
    }

    #[test]
    fn a_gcm_key_reused_as_a_cbc_key_and_integrity_keys_are_found() {
        let hmac = "11".repeat(32);
        let text = sa("gcm", 0x1000, "outbound", "aes-128-gcm", K1, "")
            + &sa(
                "cbc",
                0x1001,
                "inbound",
                "aes-128-cbc",
                &K1[..32],
                &format!("integrity = \"hmac-sha256-128\"\nintegrity_key = \"{hmac}\""),
            )
            + &sa(
                "null",
                0x1002,
                "inbound",
                "null",
                "",
                &format!("integrity = \"hmac-sha256-128\"\nintegrity_key = \"{hmac}\""),
            )
            + &sa(
                "self",
                0x1003,
                "inbound",
                "aes-256-cbc",
                &hmac,
                &format!(
                    "integrity = \"hmac-sha256-128\"\nintegrity_key = \"{}\"",
                    "22".repeat(32)
                ),
            );
        let e: Vec<String> = check_key_reuse(&sas(&text))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(e[0].starts_with("sa \"cbc\": key: the same key as the key of sa \"gcm\""));
        assert!(e[0].contains("peer's outbound key"), "{}", e[0]);
        assert!(e[1].starts_with(
            "sa \"null\": integrity_key: the same key as the integrity_key of sa \"cbc\""
        ));
        assert!(e[1].contains("key separation"), "{}", e[1]);
        assert!(e[2].starts_with("sa \"self\": key: the same key as the integrity_key"));
        for m in &e {
            assert!(!m.contains(&K1[..8]) && !m.contains("1111"), "{m}");
        }
        let text = sa(
            "own",
            0x1000,
            "inbound",
            "aes-256-cbc",
            &hmac,
            &format!("integrity = \"hmac-sha256-128\"\nintegrity_key = \"{hmac}\""),
        );
        let e = check_key_reuse(&sas(&text));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].field(), "sa \"own\": integrity_key");
        assert!(e[0].message().contains("this SA's own key"), "{}", e[0]);
    }

    #[test]
    fn check_sas_reports_every_bad_sa_and_repeated_inbound_spis() {
        let text = sa("short", 0x1000, "outbound", "aes-128-gcm", &K1[..38], "")
            + &sa("cbc", 0x1001, "inbound", "aes-128-cbc", &K2[..32], "")
            + &sa("in1", 0x2000, "inbound", "aes-128-gcm", K1, "")
            + &sa("in2", 0x2000, "inbound", "aes-128-gcm", K2, "")
            + &sa(
                "out",
                0x2000,
                "outbound",
                "aes-128-gcm",
                &"33".repeat(20),
                "",
            );
        let e: Vec<String> = check_sas(&sas(&text))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(e[0].starts_with("sa \"short\": key: aes-128-gcm needs a 20-byte key"));
        assert!(e[1].starts_with("sa \"cbc\": integrity: "), "{}", e[1]);
        assert!(
            e[2].starts_with("sa \"in2\": spi: inbound sa \"in1\" already has SPI 0x00002000"),
            "{}",
            e[2]
        );
    }
}
