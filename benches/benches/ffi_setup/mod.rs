//! What `benches/ffi.rs` and `benches/ffi_ab.rs` share: the same tunnel SA (AES-128-GCM,
//! or AES-128-CBC + HMAC-SHA-256-128) built through the Rust API and through the C API,
//! and the C entry points' types.
#![allow(dead_code)] // each bench uses its own subset

use std::ptr::null_mut;

use ipsec::{
    ipsec_cipher, ipsec_direction, ipsec_gateway, ipsec_gateway_new, ipsec_integrity, ipsec_mode,
    ipsec_packet, ipsec_sa, ipsec_sa_config, ipsec_sa_config_init, ipsec_sa_new, ipsec_status,
};
use ipsec_core::{Cipher, Direction, Integrity, SecurityAssociation};

pub(crate) use crate::common::BURST;
use crate::common::{SPI, tunnel_sa};

pub(crate) const KEY: [u8; 20] = [0x42; 20];
/// The AES-128-CBC key and the HMAC-SHA-256 key of [`Suite::CbcHmacSha256`].
const CBC_KEY: [u8; 16] = [0x42; 16];
const MAC_KEY: [u8; 32] = [0x5a; 32];
/// The peer's keys (its outbound SA, the gateway's "in"): every SA has keys of its
/// own (the library refuses a key shared by two SAs).
const PEER_KEY: [u8; 20] = [0x43; 20];
const PEER_CBC_KEY: [u8; 16] = [0x44; 16];
const PEER_MAC_KEY: [u8; 32] = [0x45; 32];

/// The cipher suites the FFI benches compare.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Suite {
    /// AES-128-GCM (one packet at a time in the core's bursts, except with `ipsec-mb`'s
    /// encryption).
    Aes128Gcm,
    /// AES-128-CBC + HMAC-SHA-256-128, whose bursts work across packets.
    CbcHmacSha256,
}

impl Suite {
    /// The criterion group name.
    pub(crate) fn group(self) -> &'static str {
        match self {
            Suite::Aes128Gcm => "ffi-aes-128-gcm",
            Suite::CbcHmacSha256 => "ffi-aes-128-cbc-hmac-sha256",
        }
    }
}

pub(crate) type OneFn = unsafe extern "C" fn(
    *mut ipsec_sa,
    *mut u8,
    usize,
    *mut usize,
    *mut usize,
    u64,
) -> ipsec_status;
pub(crate) type BurstFn =
    unsafe extern "C" fn(*mut ipsec_sa, *mut ipsec_packet, usize, u64) -> usize;
pub(crate) type GatewayBurstFn =
    unsafe extern "C" fn(*mut ipsec_gateway, *mut ipsec_packet, usize, u64, *mut u32) -> usize;

/// A gateway made through the C API from a policy file's text.
pub(crate) struct CGateway(pub(crate) *mut ipsec_gateway);

impl CGateway {
    pub(crate) fn new(toml: &str) -> CGateway {
        let mut gw = null_mut();
        // SAFETY: `toml` is readable for its length; `gw` is writable.
        let st = unsafe { ipsec_gateway_new(toml.as_ptr().cast(), toml.len(), 0, &mut gw) };
        assert_eq!(st, ipsec_status::IPSEC_OK);
        CGateway(gw)
    }
}

impl Drop for CGateway {
    fn drop(&mut self) {
        // SAFETY: created by ipsec_gateway_new, freed once.
        unsafe { ipsec::ipsec_gateway_free(self.0) }
    }
}

impl Suite {
    /// A gateway's policy file with one tunnel of this suite (10.0.0.0/24 <->
    /// 10.1.0.0/24): SA "out" with the keys of [`rust_suite_sa`], SA "in" with the keys
    /// of [`Suite::peer_sa`] (replay window off, so one protected packet decrypts every
    /// time), a PROTECT policy for both directions.
    pub(crate) fn gateway_toml(self) -> String {
        let hex = |k: &[u8]| k.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let keys = |key: &[u8], mac: &[u8]| match self {
            Suite::Aes128Gcm => format!("cipher = \"aes-128-gcm\"\nkey = \"{}\"\n", hex(key)),
            Suite::CbcHmacSha256 => format!(
                "cipher = \"aes-128-cbc\"\nkey = \"{}\"\nintegrity = \"hmac-sha256-128\"\n\
                 integrity_key = \"{}\"\n",
                hex(key),
                hex(mac)
            ),
        };
        let (out_keys, in_keys) = match self {
            Suite::Aes128Gcm => (keys(&KEY, &[]), keys(&PEER_KEY, &[])),
            Suite::CbcHmacSha256 => (keys(&CBC_KEY, &MAC_KEY), keys(&PEER_CBC_KEY, &PEER_MAC_KEY)),
        };
        format!(
            "[[sa]]\nname = \"out\"\nspi = {SPI}\ndirection = \"outbound\"\nmode = \"tunnel\"\n\
             {out_keys}tunnel_src = \"192.0.2.1\"\ntunnel_dst = \"192.0.2.2\"\n\
             [[sa]]\nname = \"in\"\nspi = {SPI}\ndirection = \"inbound\"\nmode = \"tunnel\"\n\
             {in_keys}replay_window = 0\n\
             [[policy]]\nname = \"tunnel\"\ndirection = \"both\"\nlocal = \"10.0.0.0/24\"\n\
             remote = \"10.1.0.0/24\"\naction = \"protect\"\nsa = [\"out\", \"in\"]\n"
        )
    }
}

impl Suite {
    /// The peer's outbound SA of [`Suite::gateway_toml`]'s tunnel (its keys are the
    /// gateway's "in").
    pub(crate) fn peer_sa(self) -> SecurityAssociation {
        match self {
            Suite::Aes128Gcm => tunnel_sa(Cipher::Aes128Gcm, &PEER_KEY, None, Direction::Outbound),
            Suite::CbcHmacSha256 => tunnel_sa(
                Cipher::Aes128Cbc,
                &PEER_CBC_KEY,
                Some((Integrity::HmacSha256_128, &PEER_MAC_KEY)),
                Direction::Outbound,
            ),
        }
    }
}

/// The AES-128-GCM tunnel SA through the Rust API.
pub(crate) fn rust_sa(direction: Direction) -> SecurityAssociation {
    rust_suite_sa(Suite::Aes128Gcm, direction)
}

/// The tunnel SA of `suite` through the Rust API.
pub(crate) fn rust_suite_sa(suite: Suite, direction: Direction) -> SecurityAssociation {
    match suite {
        Suite::Aes128Gcm => tunnel_sa(Cipher::Aes128Gcm, &KEY, None, direction),
        Suite::CbcHmacSha256 => tunnel_sa(
            Cipher::Aes128Cbc,
            &CBC_KEY,
            Some((Integrity::HmacSha256_128, &MAC_KEY)),
            direction,
        ),
    }
}

/// The same SA through the C API.
pub(crate) struct CSa(pub(crate) *mut ipsec_sa);

impl CSa {
    /// The AES-128-GCM SA.
    pub(crate) fn new(direction: Direction) -> CSa {
        CSa::with_suite(Suite::Aes128Gcm, direction)
    }

    /// The SA of `suite`.
    pub(crate) fn with_suite(suite: Suite, direction: Direction) -> CSa {
        let mut cfg = std::mem::MaybeUninit::<ipsec_sa_config>::uninit();
        // SAFETY: `cfg` is writable; init fills every field.
        let st = unsafe { ipsec_sa_config_init(cfg.as_mut_ptr()) };
        assert_eq!(st, ipsec_status::IPSEC_OK);
        // SAFETY: initialised just above.
        let mut cfg = unsafe { cfg.assume_init() };
        cfg.spi = SPI;
        cfg.mode = ipsec_mode::IPSEC_MODE_TUNNEL as u32;
        match suite {
            Suite::Aes128Gcm => {
                cfg.cipher = ipsec_cipher::IPSEC_CIPHER_AES_128_GCM as u32;
                cfg.key = KEY.as_ptr();
                cfg.key_len = KEY.len();
            }
            Suite::CbcHmacSha256 => {
                cfg.cipher = ipsec_cipher::IPSEC_CIPHER_AES_128_CBC as u32;
                cfg.key = CBC_KEY.as_ptr();
                cfg.key_len = CBC_KEY.len();
                cfg.integrity = ipsec_integrity::IPSEC_INTEGRITY_HMAC_SHA256_128 as u32;
                cfg.integrity_key = MAC_KEY.as_ptr();
                cfg.integrity_key_len = MAC_KEY.len();
            }
        }
        match direction {
            Direction::Outbound => {
                cfg.direction = ipsec_direction::IPSEC_DIRECTION_OUTBOUND as u32;
                cfg.tunnel_src = c"192.0.2.1".as_ptr();
                cfg.tunnel_dst = c"192.0.2.2".as_ptr();
            }
            _ => {
                cfg.direction = ipsec_direction::IPSEC_DIRECTION_INBOUND as u32;
                cfg.replay_window = 0;
            }
        }
        let mut sa = null_mut();
        // SAFETY: `cfg` holds valid pointers; `sa` is writable.
        let st = unsafe { ipsec_sa_new(&cfg, 0, &mut sa) };
        assert_eq!(st, ipsec_status::IPSEC_OK);
        CSa(sa)
    }
}

impl Drop for CSa {
    fn drop(&mut self) {
        // SAFETY: created by ipsec_sa_new, freed once.
        unsafe { ipsec::ipsec_sa_free(self.0) }
    }
}
