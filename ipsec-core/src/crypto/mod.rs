//! The ESP cryptographic transforms, behind one small internal interface.
//!
//! [`Cipher`] and [`Integrity`] name the algorithms of RFC 8221 (MUST/SHOULD) plus the
//! interop ones. Internally a `Transform` seals and opens one ESP packet in place:
//!
//! | cipher | backend | IV | ICV |
//! | --- | --- | --- | --- |
//! | AES-GCM-16 (RFC 4106) | intel-ipsec-mb with the `ipsec-mb` feature, else ring if compiled in, else RustCrypto | 8 bytes = sequence number | 16 |
//! | ChaCha20-Poly1305 (RFC 7634) | ring if compiled in, else RustCrypto; with the `ipsec-mb` feature, intel-ipsec-mb for packets of 512 bytes and more where it runs AVX-512 code | 8 bytes = sequence number | 16 |
//! | AES-GMAC (RFC 4543) | as AES-GCM (GMAC is GCM with all data as AAD) | 8 bytes = sequence number | 16 |
//! | AES-CBC (RFC 3602) + HMAC-SHA-1/SHA-2 (RFC 2404, RFC 4868) | RustCrypto; with the `ipsec-mb` feature, bursts (and decryption of 256 bytes or more) on intel-ipsec-mb's burst API | 16 random bytes | 12..32 |
//! | NULL (RFC 2410) + HMAC | RustCrypto | none | 12..32 |
//!
//! **Backend choice, by measurement.** On the 2-core AMD EPYC guest (AES-NI, VAES,
//! AVX-512) this was tuned on, the median raw per-packet AES-128-GCM seal of a
//! 64/512/1420-byte buffer (`scripts/bench-report.py`, 5 runs) took ring 0.17
//! 91/145/279 ns, aws-lc-rs 1.19 108/222/308 ns, RustCrypto aes-gcm 0.11 123/269/628 ns
//! and OpenSSL 3.0 EVP (one seal per packet with its nonce, AAD and tag:
//! `benches/openssl/evp_aead.c`) 208/316/521 ns; ChaCha20-Poly1305 at 1420 bytes: ring
//! 783, aws-lc-rs 789, OpenSSL EVP 949, RustCrypto 2851 ns. ring wins every AES-GCM
//! size and ties aws-lc-rs on ChaCha20-Poly1305, so it carries every AEAD when the
//! `ring` feature is on (the default); a per-size choice would pick ring everywhere.
//! (`openssl speed -evp` reports ChaCha20-Poly1305 at 669 ns for 1420 bytes, but it
//! times a stream of updates with no nonce, AAD or tag per buffer, not a packet's seal.)
//!
//! **Build flags.** RustCrypto's AES-GCM is fast only when compiled for the CPU: 36 ns
//! at 64 bytes with `-C target-cpu=native`, 45 ns with `+aes,+pclmulqdq,+avx2,+vaes,
//! +vpclmulqdq,+avx512f`, but 100-119 ns with `x86-64-v3` plus `+aes,+pclmulqdq` and
//! 125 ns in a default build; wrapping the calls in `#[target_feature]` functions
//! behind run-time detection does not help (the crates dispatch internally, so nothing
//! inlines). Those flags would make the shipped artifacts crash on CPUs without
//! AVX-512/VAES. ring and aws-lc-rs select AES-NI/VAES/AVX-512 code at run time, so the
//! shipped builds set no target features and run on any x86-64. Handing small AES-GCM
//! packets to RustCrypto in `x86-64-v3` builds was tried and measured slower inside the
//! ESP path (64 bytes: encrypt 109-115 against 103 ns, decrypt 131-135 against 109 ns).
//!
//! **Whole blocks.** Every backend seals a buffer that ends in a partial 16-byte block
//! much more slowly than one of whole blocks (ring: 68 bytes 113-117 ns, 80 bytes 87-94
//! ns), so [`crate::sa::EspPadding::CipherBlocks`] (the default) pads the encrypted part
//! of AEAD packets to 16 bytes, which RFC 4303 §2.4 allows.
//!
//! **CBC + HMAC bursts with `ipsec-mb`.** A packet's CBC encryption and HMAC are
//! serial chains, so the burst paths run many packets side by side: in Rust, 8 CBC
//! chains and (for SHA-256) 8 hashes interleaved; with the feature, the packets of a
//! burst go to intel-ipsec-mb, 32 per call of its synchronous burst API (one cipher
//! burst for the CBC chains, one hash burst for the HMACs), whose multi-buffer code
//! fills 16 SIMD lanes of SHA-256 (AVX-512), which Rust's SHA-NI calls cannot be
//! interleaved into without `unsafe`. Decryption checks every ICV first (a hash burst,
//! compared in Rust in constant time) and decrypts nothing before it passed, as one
//! packet at a time does. Per packet, against intel-ipsec-mb's own 32-job bursts of the
//! same bytes through its job queue (`scripts/bench-report.py 3`, AES-128-CBC +
//! HMAC-SHA-256-128, burst 32, 64/512/1420 bytes, on the shared 2-vCPU
//! AVX-512/VAES/SHA-NI guest): Rust 1.29/1.63/1.75x (encrypt) and 1.65/1.84/1.92x
//! (decrypt); with the feature 1.17/1.06/1.05x and 1.37/1.21/1.09x (through the job
//! queue, as the library's figure is, 1.25/1.05/1.05x and 1.46/1.25/1.11x). What remains
//! at 64 bytes is ESP's own per-packet work (headers, trailer, replay window, counters),
//! which the library's figure does not include.
//!
//! **AES-GCM bursts with `ipsec-mb`.** An encrypt burst encapsulates every packet
//! first, then seals them one after the other, one library call each
//! (`Transform::seal_lanes`): measured faster than sealing each packet as it is
//! encapsulated, and than the library's GCM jobs, which an earlier version used (with
//! ring, RustCrypto and ChaCha20-Poly1305 the second pass gained nothing, so their
//! bursts seal each packet as it is encapsulated). Decrypt bursts open one
//! packet at a time: decrypting the burst as GCM jobs first (then comparing tags in
//! order) measured 54.5 -> 61.9 ns a packet, the job saving about 2 ns and the second
//! pass over each packet costing more.
//!
//! **Store forwarding.** The backends read nonce, AAD and tag with wide loads right
//! at the start of a call. A value the caller has just written in pieces (a 4-byte
//! salt and an 8-byte IV) cannot be forwarded from the store buffer to such a load,
//! which then waits for the stores to reach the cache: about 15 ns a call on the
//! AVX-512 guest. So the nonce travels as its parts (`Nonce`) and is written by one
//! 16-byte store where the bytes are needed (`one_store`), the AAD without ESN is the
//! ESP header in the packet (written by one 8-byte store), the ESN AAD is written by
//! one 16-byte store too, and nothing is assembled in pieces on the stack just before
//! a call (AES-128-GCM 64 bytes, `ipsec-mb`: encrypt 53 -> 45 ns, decrypt
//! 50 -> 39).
//!
//! AEAD nonces are `salt || IV` with the IV equal to the 64-bit sequence number, which
//! never repeats under one key because outbound sequence numbers never wrap. CBC IVs
//! come from an [`IvSource`] (by default AES-128 in counter mode under a key drawn from
//! the OS once per SA: unpredictable, and no system call per packet).

#[cfg(feature = "ipsec-mb")]
mod ipsec_mb;
#[cfg(feature = "ipsec-mb")]
pub use ipsec_mb::ChaChaKey as IpsecMbChaChaKey;
#[cfg(feature = "ipsec-mb")]
pub use ipsec_mb::GcmKey as IpsecMbGcmKey;

/// With the `ipsec-mb` feature, where intel-ipsec-mb runs AVX-512 code: the smallest
/// ChaCha20-Poly1305 payload (ESP's encrypted body) sealed and opened by the library;
/// smaller ones stay on ring or RustCrypto. Measured on an Ice Lake-class Xeon, one
/// seal in place with its copy, ns: ring 150 / 340 / 380 / 440 / 710 at 64 / 528 / 592
/// / 768 / 1,424 bytes, the library 184-202 / 335 / 344 / 343 / 497 (its AVX-512 code
/// works in 256-byte steps, so it costs about the same from 512 to 768 bytes). They
/// cross near 550 bytes; ESP's 528-byte body of a 512-byte packet was 7 % slower on
/// the library in `ipsec bench`, so the switch is at 640, clear of the crossing.
#[cfg(feature = "ipsec-mb")]
pub const CHACHA_IPSEC_MB_MIN: usize = 640;

/// With the `ipsec-mb` and `ring` features, where the library's manager is not its
/// AVX-512 one and the CPU has VAES and VPCLMULQDQ (with AVX2): the smallest AES-GCM
/// payload (ESP's encrypted body) sealed and opened by ring rather than by the
/// library. intel-ipsec-mb 1.3 has VAES GCM code only in its AVX-512 manager; ring
/// runs 256-bit VAES code on such a CPU, and wins from a few hundred bytes. Measured on
/// an AMD EPYC Zen 3 guest (AVX2 manager), `esp_profile {enc,dec}-gcm128 SIZE`, each
/// build 5 runs pinned to one CPU, fastest run, ns a packet, library / ring: encrypt
/// 105 / 154, 141 / 176, 178 / 197, 217 / 220, 270 / 244 at inner 128 / 256 / 384 /
/// 512 / 768 bytes; decrypt 105 / 150, 148 / 172, 180 / 182, 216 / 207, 279 / 243; at
/// 1,420 bytes decrypt 454-474 / 340-373 (3 runs). They cross between the 400-byte
/// body of a 384-byte packet and the 528-byte body of a 512-byte one. AES-GMAC (no
/// payload, all of it AAD) stays on the library at every size: ring hashes long AAD
/// a block at a time (1,502 ns at 1,420 bytes where the library takes 571).
#[cfg(all(feature = "ipsec-mb", feature = "ring"))]
pub const GCM_RING_MIN: usize = 512;
mod one_store;
mod wipe;

use crate::error::ConfigError;
use crate::sa::Direction;
use aes::cipher::array::Array;
use aes::cipher::{BlockCipherEncrypt, BlockModeDecrypt, BlockModeEncrypt, InnerIvInit, KeyInit};
use aes_gcm::aead::AeadInOut;
use hmac::{Hmac, Mac};
use zeroize::{Zeroize, Zeroizing};

/// The ESP encryption (or combined-mode) algorithm of an SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cipher {
    /// AES-GCM with a 16-byte ICV and a 128-bit key (RFC 4106).
    Aes128Gcm,
    /// AES-GCM with a 16-byte ICV and a 256-bit key (RFC 4106).
    Aes256Gcm,
    /// ChaCha20-Poly1305 (RFC 7634).
    ChaCha20Poly1305,
    /// AES-GMAC, 128-bit key: integrity only, payload in clear (RFC 4543).
    Aes128Gmac,
    /// AES-GMAC, 256-bit key: integrity only, payload in clear (RFC 4543).
    Aes256Gmac,
    /// AES-CBC with a 128-bit key (RFC 3602); needs an [`Integrity`] algorithm.
    Aes128Cbc,
    /// AES-CBC with a 256-bit key (RFC 3602); needs an [`Integrity`] algorithm.
    Aes256Cbc,
    /// NULL encryption (RFC 2410); needs an [`Integrity`] algorithm.
    Null,
}

impl Cipher {
    /// Every cipher, in declaration order.
    pub const ALL: [Cipher; 8] = [
        Cipher::Aes128Gcm,
        Cipher::Aes256Gcm,
        Cipher::ChaCha20Poly1305,
        Cipher::Aes128Gmac,
        Cipher::Aes256Gmac,
        Cipher::Aes128Cbc,
        Cipher::Aes256Cbc,
        Cipher::Null,
    ];

    /// The name used in the Python API, the TOML files and the CLI (`"aes-128-gcm"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Cipher::Aes128Gcm => "aes-128-gcm",
            Cipher::Aes256Gcm => "aes-256-gcm",
            Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
            Cipher::Aes128Gmac => "aes-128-gmac",
            Cipher::Aes256Gmac => "aes-256-gmac",
            Cipher::Aes128Cbc => "aes-128-cbc",
            Cipher::Aes256Cbc => "aes-256-cbc",
            Cipher::Null => "null",
        }
    }

    /// Parses a name as written by [`Cipher::name`] (ASCII case-insensitive).
    pub fn from_name(name: &str) -> Result<Cipher, ConfigError> {
        Cipher::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                ConfigError::new(
                    "cipher",
                    format!(
                        "unknown cipher {name:?}; expected one of {}",
                        Cipher::ALL.map(Cipher::name).join(", ")
                    ),
                )
            })
    }

    /// Key length in bytes as the SA takes it; for GCM, GMAC and ChaCha20-Poly1305 this
    /// includes the 4-byte salt (RFC 4106 §8.1, RFC 4543 §3.2, RFC 7634 §4).
    pub const fn key_len(self) -> usize {
        match self {
            Cipher::Aes128Gcm | Cipher::Aes128Gmac => 16 + 4,
            Cipher::Aes256Gcm | Cipher::Aes256Gmac | Cipher::ChaCha20Poly1305 => 32 + 4,
            Cipher::Aes128Cbc => 16,
            Cipher::Aes256Cbc => 32,
            Cipher::Null => 0,
        }
    }

    /// True for the combined-mode algorithms that provide their own integrity (GCM,
    /// ChaCha20-Poly1305, GMAC); the others need an [`Integrity`] algorithm.
    pub const fn is_combined(self) -> bool {
        matches!(
            self,
            Cipher::Aes128Gcm
                | Cipher::Aes256Gcm
                | Cipher::ChaCha20Poly1305
                | Cipher::Aes128Gmac
                | Cipher::Aes256Gmac
        )
    }

    /// True when the payload is encrypted (false for GMAC and NULL).
    pub const fn is_confidential(self) -> bool {
        !matches!(self, Cipher::Aes128Gmac | Cipher::Aes256Gmac | Cipher::Null)
    }

    /// Bytes of IV carried in each packet.
    pub const fn iv_len(self) -> usize {
        match self {
            Cipher::Aes128Cbc | Cipher::Aes256Cbc => 16,
            Cipher::Null => 0,
            _ => 8,
        }
    }

    /// The smallest alignment the ESP padding may bring the encrypted part to (RFC 4303
    /// §2.4: the cipher's block size, at least 4). [`crate::sa::EspPadding`] chooses
    /// the alignment actually used.
    pub const fn pad_align(self) -> usize {
        match self {
            Cipher::Aes128Cbc | Cipher::Aes256Cbc => 16,
            _ => 4,
        }
    }
}

/// The integrity algorithm used with AES-CBC or NULL encryption.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Integrity {
    /// HMAC-SHA-1 truncated to 96 bits (RFC 2404); for interop with older peers.
    HmacSha1_96,
    /// HMAC-SHA-256 truncated to 128 bits (RFC 4868).
    HmacSha256_128,
    /// HMAC-SHA-384 truncated to 192 bits (RFC 4868).
    HmacSha384_192,
    /// HMAC-SHA-512 truncated to 256 bits (RFC 4868).
    HmacSha512_256,
}

impl Integrity {
    /// Every integrity algorithm.
    pub const ALL: [Integrity; 4] = [
        Integrity::HmacSha1_96,
        Integrity::HmacSha256_128,
        Integrity::HmacSha384_192,
        Integrity::HmacSha512_256,
    ];

    /// The name used in the Python API, the TOML files and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            Integrity::HmacSha1_96 => "hmac-sha1-96",
            Integrity::HmacSha256_128 => "hmac-sha256-128",
            Integrity::HmacSha384_192 => "hmac-sha384-192",
            Integrity::HmacSha512_256 => "hmac-sha512-256",
        }
    }

    /// Parses a name as written by [`Integrity::name`] (ASCII case-insensitive).
    pub fn from_name(name: &str) -> Result<Integrity, ConfigError> {
        Integrity::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                ConfigError::new(
                    "integrity",
                    format!(
                        "unknown integrity algorithm {name:?}; expected one of {}",
                        Integrity::ALL.map(Integrity::name).join(", ")
                    ),
                )
            })
    }

    /// Key length in bytes (RFC 2404 §3, RFC 4868 §2.1.1: the hash's output length).
    pub const fn key_len(self) -> usize {
        match self {
            Integrity::HmacSha1_96 => 20,
            Integrity::HmacSha256_128 => 32,
            Integrity::HmacSha384_192 => 48,
            Integrity::HmacSha512_256 => 64,
        }
    }

    /// Length of the truncated ICV in bytes.
    pub const fn icv_len(self) -> usize {
        match self {
            Integrity::HmacSha1_96 => 12,
            Integrity::HmacSha256_128 => 16,
            Integrity::HmacSha384_192 => 24,
            Integrity::HmacSha512_256 => 32,
        }
    }
}

/// Where CBC initialisation vectors come from. The default draws a key from the OS
/// once per SA and encrypts a counter with it; tests and simulations inject their own.
///
/// `Send + Sync` so that the types holding SA configurations ([`crate::SaConfig`],
/// [`crate::Spd`]) can be shared between threads; `fill_iv` takes `&mut self`, so an
/// implementation needs no locking of its own.
pub trait IvSource: Send + Sync {
    /// Fills `iv` with a fresh, unpredictable IV.
    fn fill_iv(&mut self, iv: &mut [u8; 16]);
}

/// The default [`IvSource`]: AES-128 in counter mode under a random key from the OS.
///
/// IVs are made 8 at a time (one pipelined AES call for the whole batch, about
/// the latency of two single blocks) and handed out one per packet, so that a packet
/// does not wait for an AES encryption before its CBC chain can start.
pub struct OsIvSource {
    cipher: aes::Aes128,
    counter: u128,
    /// `ready[next..]` are the IVs not handed out yet.
    ready: [Array<u8, aes::cipher::consts::U16>; IV_BATCH],
    next: usize,
}

/// How many IVs [`OsIvSource`] makes at a time (the AES-NI backend's parallel width).
const IV_BATCH: usize = 8;

impl OsIvSource {
    /// Draws a fresh key from the operating system.
    pub fn new() -> Result<Self, ConfigError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| {
            ConfigError::new("iv_source", format!("the OS random generator failed: {e}"))
        })?;
        let key: [u8; 16] = seed[..16].try_into().expect("16 bytes");
        let counter = u128::from_be_bytes(seed[16..].try_into().expect("16 bytes"));
        let cipher = aes::Aes128::new(&key.into());
        seed.zeroize();
        Ok(OsIvSource {
            cipher,
            counter,
            ready: Default::default(),
            next: IV_BATCH,
        })
    }

    /// Encrypts the next [`IV_BATCH`] counter values into `ready`.
    #[cold]
    fn refill(&mut self) {
        for block in &mut self.ready {
            self.counter = self.counter.wrapping_add(1);
            *block = Array::from(self.counter.to_be_bytes());
        }
        self.cipher.encrypt_blocks(&mut self.ready);
        self.next = 0;
    }
}

impl IvSource for OsIvSource {
    #[inline]
    fn fill_iv(&mut self, iv: &mut [u8; 16]) {
        if self.next == IV_BATCH {
            self.refill();
        }
        iv.copy_from_slice(&self.ready[self.next]);
        self.next += 1;
    }
}

impl core::fmt::Debug for OsIvSource {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("OsIvSource { .. }")
    }
}

/// The IV source of an inbound CBC SA, which never encrypts (see [`CbcKey`]).
struct NoIvs;

impl IvSource for NoIvs {
    fn fill_iv(&mut self, _iv: &mut [u8; 16]) {
        unreachable!("inbound SAs draw no IVs")
    }
}

/// A keyed AEAD (GCM or ChaCha20-Poly1305) from one of the backends.
enum AeadKey {
    /// AES-GCM / AES-GMAC through intel-ipsec-mb (feature `ipsec-mb`).
    #[cfg(feature = "ipsec-mb")]
    IpsecMb(ipsec_mb::GcmKey),
    /// AES-GCM / AES-GMAC through intel-ipsec-mb below [`GCM_RING_MIN`] bytes of
    /// payload, through `large` (ring, same key) from there (features `ipsec-mb` and
    /// `ring`, where ring's VAES code is the faster: [`ipsec_mb::gcm_large_to_ring`]).
    #[cfg(all(feature = "ipsec-mb", feature = "ring"))]
    IpsecMbGcmRing {
        small: ipsec_mb::GcmKey,
        large: Box<AeadKey>,
    },
    /// ChaCha20-Poly1305 through intel-ipsec-mb from [`CHACHA_IPSEC_MB_MIN`] bytes on,
    /// through `small` (ring or RustCrypto, same key) below (feature `ipsec-mb`, where
    /// the library runs AVX-512 code).
    #[cfg(feature = "ipsec-mb")]
    IpsecMbChaCha {
        large: ipsec_mb::ChaChaKey,
        small: Box<AeadKey>,
    },
    #[cfg(feature = "ring")]
    Ring(wipe::WipeOnDrop<ring::aead::LessSafeKey>),
    #[cfg_attr(feature = "ring", allow(dead_code))]
    RcAes128(Box<aes_gcm::Aes128Gcm>),
    #[cfg_attr(feature = "ring", allow(dead_code))]
    RcAes256(Box<aes_gcm::Aes256Gcm>),
    #[cfg_attr(feature = "ring", allow(dead_code))]
    RcChaCha(Box<chacha20poly1305::ChaCha20Poly1305>),
}

/// Which backends carry the AEADs in this build: `"ring"` or `"rustcrypto"`, or with
/// the `ipsec-mb` feature `"ipsec-mb+ring"` / `"ipsec-mb+rustcrypto"` (intel-ipsec-mb
/// for AES-GCM and AES-GMAC, and for ChaCha20-Poly1305 packets of
/// `CHACHA_IPSEC_MB_MIN` (640) bytes and more where it runs AVX-512 code; the other for
/// ChaCha20-Poly1305, and with ring for AES-GCM payloads of `GCM_RING_MIN` (512) bytes
/// and more where ring runs VAES code and the library does not). [`aead_backend`]
/// names the one of a given cipher on this CPU.
pub const AEAD_BACKEND: &str = match (cfg!(feature = "ipsec-mb"), cfg!(feature = "ring")) {
    (true, true) => "ipsec-mb+ring",
    (true, false) => "ipsec-mb+rustcrypto",
    (false, true) => "ring",
    (false, false) => "rustcrypto",
};

/// The backend that seals and opens `cipher`'s packets in this build on this CPU:
/// `"ipsec-mb"`, `"ring"` or `"rustcrypto"` (CBC, NULL and HMAC are RustCrypto's
/// one packet at a time; see [`burst_backend`] for bursts), or with the `ipsec-mb`
/// feature two of them:
/// - ChaCha20-Poly1305 where the library runs AVX-512 code: `"ipsec-mb+ring"` /
///   `"ipsec-mb+rustcrypto"` (the library from `CHACHA_IPSEC_MB_MIN` (640) bytes of
///   payload on, the other below);
/// - AES-GCM and AES-GMAC with ring, where the library's manager is not its AVX-512
///   one and the CPU has VAES and VPCLMULQDQ: `"ipsec-mb+ring"` (ring from
///   `GCM_RING_MIN` (512) bytes of payload on, the library below; GMAC has none).
///
/// With the feature, the first call may set up the library's manager.
pub fn aead_backend(cipher: Cipher) -> &'static str {
    let aes_gcm = matches!(
        cipher,
        Cipher::Aes128Gcm | Cipher::Aes256Gcm | Cipher::Aes128Gmac | Cipher::Aes256Gmac
    );
    #[cfg(feature = "ipsec-mb")]
    if cipher == Cipher::ChaCha20Poly1305 && ipsec_mb::chacha_preferred() {
        return if cfg!(feature = "ring") {
            "ipsec-mb+ring"
        } else {
            "ipsec-mb+rustcrypto"
        };
    }
    #[cfg(all(feature = "ipsec-mb", feature = "ring"))]
    if aes_gcm && ipsec_mb::gcm_large_to_ring() {
        return "ipsec-mb+ring";
    }
    if aes_gcm && cfg!(feature = "ipsec-mb") {
        "ipsec-mb"
    } else if cipher.is_combined() && cfg!(feature = "ring") {
        "ring"
    } else {
        "rustcrypto"
    }
}

/// With the `ipsec-mb` feature: the intel-ipsec-mb version linked and the code path
/// its manager chose for this CPU (`"sse"`, `"avx"`, `"avx2"`, `"avx512"`), setting
/// the manager up if no key has yet. `None` without the feature; an error if the
/// manager cannot be set up.
pub fn ipsec_mb_info() -> Option<Result<(&'static str, &'static str), ConfigError>> {
    #[cfg(feature = "ipsec-mb")]
    {
        Some(ipsec_mb::library_info())
    }
    #[cfg(not(feature = "ipsec-mb"))]
    {
        None
    }
}

/// With the `ipsec-mb` feature: which of intel-ipsec-mb's managers hashes the CBC +
/// HMAC bursts of `integrity` whose messages (ESP header to the end of the
/// ciphertext) are about `len` bytes: `"sse"` (its SHA-NI code where the CPU has
/// it) or the architecture of the manager `init_mb_mgr_auto` picked (`"avx512"`,
/// ...), `"none"` on a thread that cannot have a manager. Chosen per process by
/// timing both on the first burst of each hash and length class (measured here if
/// none came yet). `None` without the feature.
pub fn ipsec_mb_hmac_burst_manager(integrity: Integrity, len: usize) -> Option<&'static str> {
    #[cfg(feature = "ipsec-mb")]
    {
        Some(ipsec_mb::hmac_burst_manager(integrity, len))
    }
    #[cfg(not(feature = "ipsec-mb"))]
    {
        let _ = (integrity, len);
        None
    }
}

/// With the `ipsec-mb` feature: what encrypts AES-CBC seal bursts (`encrypt_burst`,
/// without ESN) whose longest ciphertext is `len` bytes: `"aes crate"` (the packets'
/// CBC chains side by side) or `"ipsec-mb"` (the library's cipher burst), as this
/// process measured on its first such burst (from 240 bytes always the library), or
/// `"not measured"` before one came. `None` without the feature.
pub fn ipsec_mb_cbc_seal_cipher(len: usize) -> Option<&'static str> {
    #[cfg(feature = "ipsec-mb")]
    {
        Some(ipsec_mb::crate_cipher_choice(len))
    }
    #[cfg(not(feature = "ipsec-mb"))]
    {
        let _ = len;
        None
    }
}

/// The backend that runs `cipher`'s packets in `encrypt_burst` and `decrypt_burst`:
/// [`aead_backend`]'s, except that with the `ipsec-mb` feature the AES-CBC + HMAC
/// bursts are intel-ipsec-mb's (`"ipsec-mb"`): sealed by its hash bursts and its
/// cipher bursts (bursts of ciphertexts of at most 224 bytes by the `aes` crate, 32
/// CBC chains side by side, where the process measured that faster: see
/// [`ipsec_mb_cbc_seal_cipher`]), their ICVs computed by its hash bursts (decryption
/// of 256 bytes or more is its too, one packet or a burst).
pub fn burst_backend(cipher: Cipher) -> &'static str {
    if cfg!(feature = "ipsec-mb") && matches!(cipher, Cipher::Aes128Cbc | Cipher::Aes256Cbc) {
        "ipsec-mb"
    } else {
        aead_backend(cipher)
    }
}

impl AeadKey {
    /// Keys `cipher` (GCM, GMAC or ChaCha20-Poly1305) with `key` (no salt), whose
    /// length was checked. Fails only if the `ipsec-mb` backend cannot set up the
    /// library's manager.
    fn new(cipher: Cipher, key: &[u8]) -> Result<AeadKey, ConfigError> {
        #[cfg(feature = "ipsec-mb")]
        match aead_backend(cipher) {
            "ipsec-mb" => return Ok(AeadKey::IpsecMb(ipsec_mb::GcmKey::new(key)?)),
            #[cfg(feature = "ring")]
            "ipsec-mb+ring" if cipher != Cipher::ChaCha20Poly1305 => {
                return Ok(AeadKey::IpsecMbGcmRing {
                    small: ipsec_mb::GcmKey::new(key)?,
                    large: Box::new(Self::new_portable(cipher, key)),
                });
            }
            "ipsec-mb+ring" | "ipsec-mb+rustcrypto" => {
                return Ok(AeadKey::IpsecMbChaCha {
                    large: ipsec_mb::ChaChaKey::new(key)?,
                    small: Box::new(Self::new_portable(cipher, key)),
                });
            }
            _ => {}
        }
        Ok(Self::new_portable(cipher, key))
    }

    /// [`AeadKey::new`] with ring or RustCrypto.
    fn new_portable(cipher: Cipher, key: &[u8]) -> AeadKey {
        #[cfg(feature = "ring")]
        {
            let alg = match cipher {
                Cipher::Aes128Gcm | Cipher::Aes128Gmac => &ring::aead::AES_128_GCM,
                Cipher::Aes256Gcm | Cipher::Aes256Gmac => &ring::aead::AES_256_GCM,
                _ => &ring::aead::CHACHA20_POLY1305,
            };
            let unbound = ring::aead::UnboundKey::new(alg, key).expect("key length checked");
            AeadKey::Ring(wipe::WipeOnDrop::new(ring::aead::LessSafeKey::new(unbound)))
        }
        #[cfg(not(feature = "ring"))]
        {
            match cipher {
                Cipher::Aes128Gcm | Cipher::Aes128Gmac => AeadKey::RcAes128(Box::new(
                    aes_gcm::Aes128Gcm::new_from_slice(key).expect("key length checked"),
                )),
                Cipher::Aes256Gcm | Cipher::Aes256Gmac => AeadKey::RcAes256(Box::new(
                    aes_gcm::Aes256Gcm::new_from_slice(key).expect("key length checked"),
                )),
                _ => AeadKey::RcChaCha(Box::new(
                    chacha20poly1305::ChaCha20Poly1305::new_from_slice(key)
                        .expect("key length checked"),
                )),
            }
        }
    }

    /// Whether this is an AES-GCM / AES-GMAC key of intel-ipsec-mb (alone, or for
    /// payloads below [`GCM_RING_MIN`]), whose burst seals go after every packet of
    /// the burst is encapsulated ([`Transform::seals_in_lanes`]).
    #[inline]
    fn is_ipsec_mb_gcm(&self) -> bool {
        match self {
            #[cfg(feature = "ipsec-mb")]
            AeadKey::IpsecMb(_) => true,
            #[cfg(all(feature = "ipsec-mb", feature = "ring"))]
            AeadKey::IpsecMbGcmRing { .. } => true,
            _ => false,
        }
    }

    #[inline(always)]
    fn seal(&self, nonce: Nonce, aad: &[u8], in_out: &mut [u8]) -> [u8; 16] {
        match self {
            #[cfg(feature = "ipsec-mb")]
            AeadKey::IpsecMb(k) => k.seal_nonce(nonce, aad, in_out),
            #[cfg(all(feature = "ipsec-mb", feature = "ring"))]
            AeadKey::IpsecMbGcmRing { small, large } => {
                if in_out.len() >= GCM_RING_MIN {
                    large.seal(nonce, aad, in_out)
                } else {
                    small.seal_nonce(nonce, aad, in_out)
                }
            }
            #[cfg(feature = "ipsec-mb")]
            AeadKey::IpsecMbChaCha { large, small } => {
                if in_out.len() >= CHACHA_IPSEC_MB_MIN {
                    large.seal_nonce(nonce, aad, in_out)
                } else {
                    small.seal(nonce, aad, in_out)
                }
            }
            #[cfg(feature = "ring")]
            AeadKey::Ring(k) => {
                let tag = k
                    .seal_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(nonce.bytes()),
                        ring::aead::Aad::from(aad),
                        in_out,
                    )
                    .expect("ESP packets are far below the AEAD length limits");
                let mut out = [0u8; 16];
                out.copy_from_slice(tag.as_ref());
                out
            }
            AeadKey::RcAes128(k) => rc_seal(k.as_ref(), nonce.bytes(), aad, in_out),
            AeadKey::RcAes256(k) => rc_seal(k.as_ref(), nonce.bytes(), aad, in_out),
            AeadKey::RcChaCha(k) => rc_seal(k.as_ref(), nonce.bytes(), aad, in_out),
        }
    }

    #[inline(always)]
    fn open(&self, nonce: Nonce, aad: &[u8], in_out: &mut [u8], tag: &[u8; 16]) -> bool {
        match self {
            #[cfg(feature = "ipsec-mb")]
            AeadKey::IpsecMb(k) => k.open_nonce(nonce, aad, in_out, tag),
            #[cfg(all(feature = "ipsec-mb", feature = "ring"))]
            AeadKey::IpsecMbGcmRing { small, large } => {
                if in_out.len() >= GCM_RING_MIN {
                    large.open(nonce, aad, in_out, tag)
                } else {
                    small.open_nonce(nonce, aad, in_out, tag)
                }
            }
            #[cfg(feature = "ipsec-mb")]
            AeadKey::IpsecMbChaCha { large, small } => {
                if in_out.len() >= CHACHA_IPSEC_MB_MIN {
                    large.open_nonce(nonce, aad, in_out, tag)
                } else {
                    small.open(nonce, aad, in_out, tag)
                }
            }
            #[cfg(feature = "ring")]
            AeadKey::Ring(k) => k
                .open_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce.bytes()),
                    ring::aead::Aad::from(aad),
                    ring::aead::Tag::from(*tag),
                    in_out,
                    0..,
                )
                .is_ok(),
            AeadKey::RcAes128(k) => rc_open(k.as_ref(), nonce.bytes(), aad, in_out, tag),
            AeadKey::RcAes256(k) => rc_open(k.as_ref(), nonce.bytes(), aad, in_out, tag),
            AeadKey::RcChaCha(k) => rc_open(k.as_ref(), nonce.bytes(), aad, in_out, tag),
        }
    }
}

#[inline]
fn rc_seal<A>(aead: &A, nonce: [u8; 12], aad: &[u8], in_out: &mut [u8]) -> [u8; 16]
where
    A: AeadInOut<NonceSize = aes_gcm::aead::consts::U12, TagSize = aes_gcm::aead::consts::U16>,
{
    let tag = aead
        .encrypt_inout_detached(&nonce.into(), aad, in_out.into())
        .expect("ESP packets are far below the AEAD length limits");
    tag.into()
}

#[inline]
fn rc_open<A>(aead: &A, nonce: [u8; 12], aad: &[u8], in_out: &mut [u8], tag: &[u8; 16]) -> bool
where
    A: AeadInOut<NonceSize = aes_gcm::aead::consts::U12, TagSize = aes_gcm::aead::consts::U16>,
{
    aead.decrypt_inout_detached(&nonce.into(), aad, in_out.into(), &(*tag).into())
        .is_ok()
}

/// A keyed HMAC, truncated to the ESP ICV length.
#[derive(Clone)]
enum HmacKey {
    Sha1(Hmac<sha1::Sha1>),
    Sha256(Hmac<sha2::Sha256>),
    Sha384(Hmac<sha2::Sha384>),
    Sha512(Hmac<sha2::Sha512>),
}

impl HmacKey {
    fn new(alg: Integrity, key: &[u8]) -> HmacKey {
        let err = "HMAC takes keys of any length";
        match alg {
            Integrity::HmacSha1_96 => HmacKey::Sha1(Hmac::new_from_slice(key).expect(err)),
            Integrity::HmacSha256_128 => HmacKey::Sha256(Hmac::new_from_slice(key).expect(err)),
            Integrity::HmacSha384_192 => HmacKey::Sha384(Hmac::new_from_slice(key).expect(err)),
            Integrity::HmacSha512_256 => HmacKey::Sha512(Hmac::new_from_slice(key).expect(err)),
        }
    }

    /// Computes the HMAC of `data || tail` and writes its first `out.len()` bytes.
    #[inline]
    fn compute(&self, data: &[u8], tail: &[u8], out: &mut [u8]) {
        fn run<M: Mac + Clone>(m: &M, data: &[u8], tail: &[u8], out: &mut [u8]) {
            let mut m = m.clone();
            m.update(data);
            m.update(tail);
            let full = m.finalize().into_bytes();
            out.copy_from_slice(&full[..out.len()]);
        }
        match self {
            HmacKey::Sha1(m) => run(m, data, tail, out),
            HmacKey::Sha256(m) => run(m, data, tail, out),
            HmacKey::Sha384(m) => run(m, data, tail, out),
            HmacKey::Sha512(m) => run(m, data, tail, out),
        }
    }

    /// CBC-encrypts `buf[body..icv]` with `enc` and writes the ICV over `buf[esp..icv]`
    /// followed by `tail` into `buf[icv..icv + icv_len]`, interleaved: each 64-byte
    /// piece of the MAC input is hashed as soon as it is encrypted, while the next
    /// blocks are being encrypted. CBC encryption and the hash are both serial chains
    /// (AES rounds, SHA rounds) on different execution units, so the processor runs
    /// them side by side instead of one after the other.
    #[inline]
    fn encrypt_then_mac<E: BlockModeEncrypt<BlockSize = aes::cipher::consts::U16>>(
        &self,
        enc: E,
        buf: &mut [u8],
        (esp, body, icv): (usize, usize, usize),
        tail: &[u8],
        icv_len: usize,
    ) {
        fn run<M: Mac + Clone, E: BlockModeEncrypt<BlockSize = aes::cipher::consts::U16>>(
            m: &M,
            mut enc: E,
            buf: &mut [u8],
            (esp, body, icv): (usize, usize, usize),
            tail: &[u8],
            out_len: usize,
        ) {
            /// Bytes encrypted per step: one SHA-1/SHA-256 block, four AES blocks.
            const STEP: usize = 64;
            let mut m = m.clone();
            let (mut encrypted, mut hashed) = (body, esp);
            while encrypted < icv {
                let end = (encrypted + STEP).min(icv);
                let (blocks, _) = Array::slice_as_chunks_mut(&mut buf[encrypted..end]);
                enc.encrypt_blocks(blocks);
                encrypted = end;
                // Hash the whole hash blocks that are ready (the hash would buffer a
                // partial one anyway); the rest waits for the next step.
                let ready = hashed + (encrypted - hashed) / STEP * STEP;
                if ready > hashed {
                    m.update(&buf[hashed..ready]);
                    hashed = ready;
                }
            }
            m.update(&buf[hashed..icv]);
            m.update(tail);
            let full = m.finalize().into_bytes();
            buf[icv..icv + out_len].copy_from_slice(&full[..out_len]);
        }
        let at = (esp, body, icv);
        match self {
            HmacKey::Sha1(m) => run(m, enc, buf, at, tail, icv_len),
            HmacKey::Sha256(m) => run(m, enc, buf, at, tail, icv_len),
            HmacKey::Sha384(m) => run(m, enc, buf, at, tail, icv_len),
            HmacKey::Sha512(m) => run(m, enc, buf, at, tail, icv_len),
        }
    }
}

/// The AES key schedule of a CBC SA, of its direction only: an outbound SA encrypts
/// and an inbound SA decrypts, so each keeps one set of round keys (`aes::Aes128`
/// would keep both). Inside [`CbcHmac`], on the heap; the `aes` crate wipes it on drop.
enum CbcKey {
    Enc128(aes::Aes128Enc),
    Dec128(aes::Aes128Dec),
    Enc256(aes::Aes256Enc),
    Dec256(aes::Aes256Dec),
}

/// The keys of an AES-CBC + HMAC SA, boxed in [`Engine::CbcHmac`] so that the engine
/// (and so every SA, whatever its cipher) stays a few words wide.
struct CbcHmac {
    cbc: CbcKey,
    mac: HmacKey,
    ivs: Box<dyn IvSource>,
    /// HMAC-SHA-256 only (all zeros, unused, for the other algorithms): the hash
    /// states after the inner and outer key pads, for the burst path
    /// ([`Transform::seal_lanes`]), which drives the SHA-256 compression function
    /// itself so that the hashes of several packets are in flight at once. Not an
    /// `Option`: its tag would leave 12 bytes of padding at the end of the struct,
    /// which `Box::new` fills with whatever the stack held (the key hygiene test
    /// found a key's bytes there).
    pads: Sha256Pads,
    /// With the `ipsec-mb` feature: the SA's round keys and HMAC pads for
    /// intel-ipsec-mb, which seals the packets of a burst and computes the ICVs of a
    /// decrypt burst ([`Transform::seal_lanes`], [`Transform::icvs_ahead`]).
    #[cfg(feature = "ipsec-mb")]
    mb: ipsec_mb::CbcHmacKeys,
}

/// An ICV computed ahead for one packet of a decrypt burst ([`Transform::icvs_ahead`]):
/// the HMAC of `buf[esp..icv]`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct IcvAhead {
    pub(crate) esp: usize,
    pub(crate) icv: usize,
    pub(crate) tag: [u8; AHEAD_TAG],
}

/// Bytes of an [`IcvAhead`] tag: the longest ICV computed ahead (HMAC-SHA-256-128's
/// 16 bytes in the portable build; with `ipsec-mb`, which computes them for every
/// integrity algorithm, HMAC-SHA-512-256's 32).
pub(crate) const AHEAD_TAG: usize = if cfg!(feature = "ipsec-mb") { 32 } else { 16 };

/// With `ipsec-mb`: the shortest ciphertext intel-ipsec-mb decrypts (its AES-CBC
/// decryption uses VAES where the CPU has it); shorter ones stay on the `aes` crate,
/// which beats the job set-up there.
#[cfg(feature = "ipsec-mb")]
const MB_DECRYPT_MIN: usize = 256;

/// How many packets a burst hands to [`Transform::seal_lanes`] and
/// [`Transform::icvs_ahead`] at once: [`LANES`] in the portable build; with
/// `ipsec-mb`, 32 (the library's SIMD code has up to 16 lanes per algorithm, and
/// fills them best with a long queue).
pub(crate) const BURST_CHUNK: usize = if cfg!(feature = "ipsec-mb") {
    32
} else {
    LANES
};

/// How many packets [`Transform::seal_lanes`] encrypts side by side.
pub(crate) const LANES: usize = 8;

/// A CBC + HMAC packet (with `ipsec-mb`, or an AES-GCM one) whose IV is written but
/// whose payload is not encrypted yet and whose ICV is not written: [`Transform::seal_begin`] leaves it for
/// [`Transform::seal_lanes`], which finishes up to [`LANES`] of them together.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingSeal {
    at: EspLayout,
    seq: u64,
    esn: bool,
}

/// One packet of a [`Transform::seal_lanes`] call: its buffer and what is left to do.
pub(crate) type Lane<'a> = (&'a mut [u8], PendingSeal);

type Block16 = Array<u8, aes::cipher::consts::U16>;

/// CBC-encrypts the payload of each of the (at most `N`) packets in `group` whose IV
/// is written ([`Transform::seal_begin`]), their chains side by side ([`CbcLanes`]);
/// returns how many.
#[inline(always)]
fn encrypt_chains<const N: usize>(cbc: &CbcKey, group: &mut [Option<Lane<'_>>]) -> usize {
    let mut chains: [(&mut [Block16], Block16); N] =
        core::array::from_fn(|_| (&mut [][..], Block16::default()));
    let mut width = 0;
    for ((buf, p), chain) in group.iter_mut().flatten().zip(chains.iter_mut()) {
        let (head, body) = buf[..p.at.icv].split_at_mut(p.at.esp + 24);
        let (blocks, rest) = Array::slice_as_chunks_mut(body);
        debug_assert!(rest.is_empty(), "padding aligns CBC input to blocks");
        let iv: [u8; 16] = head[p.at.esp + 8..].try_into().expect("16-byte IV");
        *chain = (blocks, iv.into());
        width += 1;
    }
    let chains = CbcLanes {
        chains: &mut chains[..width],
    };
    match cbc {
        CbcKey::Enc128(c) => c.encrypt_with_backend(chains),
        CbcKey::Enc256(c) => c.encrypt_with_backend(chains),
        CbcKey::Dec128(_) | CbcKey::Dec256(_) => {
            unreachable!("only outbound SAs seal; they hold encryption keys")
        }
    }
    width
}

/// The CBC chains of several packets, encrypted side by side: block `i` of every
/// packet, then block `i + 1` of every packet, and so on. The chains are independent,
/// so the processor keeps one AES encryption of each in flight; a chain that ends
/// drops out. Run through `encrypt_with_backend`, so that the `aes` crate's backend
/// (AES-NI, or VAES) is chosen once for the whole burst and its code is inlined here.
struct CbcLanes<'a, 'b> {
    /// Each chain: its blocks (plaintext in, ciphertext out) and its IV.
    chains: &'a mut [(&'b mut [Block16], Block16)],
}

impl aes::cipher::BlockSizeUser for CbcLanes<'_, '_> {
    type BlockSize = aes::cipher::consts::U16;
}

impl aes::cipher::BlockCipherEncClosure for CbcLanes<'_, '_> {
    #[inline(always)]
    fn call<B: aes::cipher::BlockCipherEncBackend<BlockSize = Self::BlockSize>>(self, backend: &B) {
        let steps = self.chains.iter().map(|c| c.0.len()).max().unwrap_or(0);
        for i in 0..steps {
            for (blocks, prev) in self.chains.iter_mut() {
                if let Some(b) = blocks.get_mut(i) {
                    // One 128-bit XOR: a byte-wise one (which the compiler produced in
                    // a variant of this loop) followed by the AES load of the same 16
                    // bytes stalls on store forwarding in every step of the chain.
                    let x = u128::from_ne_bytes(b.0) ^ u128::from_ne_bytes(prev.0);
                    b.0 = x.to_ne_bytes();
                    backend.encrypt_block(b.into());
                    *prev = *b;
                }
            }
        }
    }
}

/// The SHA-256 states of an HMAC key after its inner and outer pad blocks (RFC 2104):
/// what every HMAC-SHA-256 computation under that key starts from. Wiped on drop.
#[derive(Clone, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
struct Sha256Pads {
    inner: [u32; 8],
    outer: [u32; 8],
}

/// The SHA-256 initial hash value (FIPS 180-4 §5.3.3).
const SHA256_H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

impl Sha256Pads {
    /// The pads of `key` (at most one 64-byte block long: RFC 4868 keys are 32 bytes).
    fn new(key: &[u8]) -> Sha256Pads {
        assert!(key.len() <= 64, "HMAC-SHA-256 keys of ESP are 32 bytes");
        let mut pads = Sha256Pads {
            inner: SHA256_H0,
            outer: SHA256_H0,
        };
        let mut block = Zeroizing::new([0u8; 64]);
        for (state, byte) in [(&mut pads.inner, 0x36u8), (&mut pads.outer, 0x5c)] {
            block.fill(byte);
            for (b, k) in block.iter_mut().zip(key) {
                *b ^= k;
            }
            sha2::block_api::compress256(state, &[*block]);
        }
        pads
    }
}

/// The HMAC-SHA-256 of `lanes[l].0 || lanes[l].1` for every lane, written (truncated)
/// to `lanes[l].2`. The compression function is called one 64-byte block at a time,
/// lane after lane: one packet's SHA-256 is a serial chain (with SHA-NI, bound by the
/// latency of its round instructions), and the chains of different packets are
/// independent, so the processor overlaps the blocks of neighbouring lanes.
fn hmac_sha256_lanes(pads: &Sha256Pads, lanes: &mut [(&[u8], &[u8], &mut [u8])]) {
    let mut states = [pads.inner; LANES];
    let n = lanes.len().min(LANES);
    let lanes = &mut lanes[..n];
    let steps = lanes.iter().map(|l| l.0.len() / 64).max().unwrap_or(0);
    for i in 0..steps {
        for (lane, state) in lanes.iter().zip(states.iter_mut()) {
            if let Some(block) = lane.0.get(i * 64..i * 64 + 64) {
                let block: &[u8; 64] = block.try_into().expect("64 bytes");
                sha2::block_api::compress256(state, core::slice::from_ref(block));
            }
        }
    }
    // The last partial block, the tail and the padding (one or two blocks); then the
    // outer hash, one block: the inner digest and its padding.
    let mut last = [[[0u8; 64]; 2]; LANES];
    let mut outer = [[0u8; 64]; LANES];
    for (l, (lane, state)) in lanes.iter().zip(states.iter_mut()).enumerate() {
        let (data, tail) = (lane.0, lane.1);
        let rest = &data[data.len() / 64 * 64..];
        let flat = last[l].as_flattened_mut();
        flat[..rest.len()].copy_from_slice(rest);
        flat[rest.len()..rest.len() + tail.len()].copy_from_slice(tail);
        let n = rest.len() + tail.len();
        flat[n] = 0x80;
        let blocks = if n + 9 <= 64 { 1 } else { 2 };
        let bits = ((64 + data.len() + tail.len()) as u64) * 8;
        flat[blocks * 64 - 8..blocks * 64].copy_from_slice(&bits.to_be_bytes());
        sha2::block_api::compress256(state, &last[l][..blocks]);
        let o = &mut outer[l];
        for (chunk, word) in o[..32].chunks_exact_mut(4).zip(state.iter()) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        o[32] = 0x80;
        o[56..].copy_from_slice(&((64u64 + 32) * 8).to_be_bytes());
        *state = pads.outer;
    }
    for (o, state) in outer.iter().zip(states.iter_mut()).take(lanes.len()) {
        sha2::block_api::compress256(state, core::slice::from_ref(o));
    }
    for (lane, state) in lanes.iter_mut().zip(states.iter()) {
        let mut full = [0u8; 32];
        for (chunk, word) in full.chunks_exact_mut(4).zip(state.iter()) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        let n = lane.2.len();
        lane.2.copy_from_slice(&full[..n]);
    }
    // Wiped as `Hmac`'s own states are when dropped (the blocks hold only the
    // public ciphertext and the inner digests, which the ICVs do not reveal the key
    // through).
    states.zeroize();
}

/// The 4-byte salt of an AEAD key (the nonce's first bytes), boxed and wiped on drop.
type Salt = Box<Zeroizing<[u8; 4]>>;

enum Engine {
    /// GCM or ChaCha20-Poly1305: payload encrypted, SPI and sequence number as AAD.
    /// The salt is key material (RFC 4106 §8.1): on the heap like the key schedule, so
    /// that moving the SA leaves no copy behind, and wiped when dropped.
    Aead { key: AeadKey, salt: Salt },
    /// GMAC: everything from the ESP header to the trailer is AAD, nothing encrypted.
    Gmac { key: AeadKey, salt: Salt },
    /// AES-CBC then HMAC over header, IV and ciphertext (encrypt-then-MAC). Boxed: the
    /// HMAC states are up to a few hundred bytes. Wiped whole on drop, padding
    /// included: [`HmacKey`]'s smaller variants leave padding that may hold stack bytes.
    CbcHmac(wipe::WipeOnDrop<CbcHmac>),
    /// NULL encryption with HMAC, boxed and wiped for the same reasons.
    NullHmac(wipe::WipeOnDrop<HmacKey>),
}

/// Byte offsets of one ESP packet inside a buffer, as the transform sees it:
/// `buf[esp..esp + 8]` is the ESP header, then the IV, then the payload and trailer up
/// to `icv`, then the ICV. At least 4 bytes of `buf` lie before `esp` (the IP header).
#[derive(Clone, Copy, Debug)]
pub(crate) struct EspLayout {
    pub(crate) esp: usize,
    pub(crate) icv: usize,
}

/// The keyed transform of one SA.
pub(crate) struct Transform {
    engine: Engine,
    /// The sizes below, in bytes (all at most 32), as `u8`s so that the transform stays
    /// small; read through the accessors of the same names.
    iv_len: u8,
    icv_len: u8,
    pad_align: u8,
    cipher_block: u8,
}

impl Transform {
    /// Bytes of IV in each packet.
    #[inline(always)]
    pub(crate) fn iv_len(&self) -> usize {
        usize::from(self.iv_len)
    }

    /// Bytes of ICV in each packet.
    #[inline(always)]
    pub(crate) fn icv_len(&self) -> usize {
        usize::from(self.icv_len)
    }

    /// The alignment ESP padding brings the encrypted part to (a power of two).
    #[inline(always)]
    pub(crate) fn pad_align(&self) -> usize {
        usize::from(self.pad_align)
    }

    /// The block size the ciphertext must be a whole multiple of (16 for CBC; 1 for
    /// the counter-mode AEADs and NULL, which take any length). Always a power of two.
    #[inline(always)]
    pub(crate) fn cipher_block(&self) -> usize {
        usize::from(self.cipher_block)
    }
}

impl Transform {
    /// Checks what [`Transform::new`] checks, without building anything: the key
    /// length of `cipher`, and that `integrity` (with an `integrity_key` of its length)
    /// is given exactly when the cipher is not a combined mode. Errors name the field
    /// (`key`, `integrity`, `integrity_key`) and lengths, never key bytes.
    pub(crate) fn check(
        cipher: Cipher,
        key: &[u8],
        integrity: Option<Integrity>,
        integrity_key: &[u8],
    ) -> Result<(), ConfigError> {
        if key.len() != cipher.key_len() {
            return Err(ConfigError::new(
                "key",
                format!(
                    "{} needs a {}-byte key{}, got {} bytes",
                    cipher.name(),
                    cipher.key_len(),
                    if cipher.is_combined() {
                        " (the cipher key followed by the 4-byte salt)"
                    } else {
                        ""
                    },
                    key.len()
                ),
            ));
        }
        match (cipher.is_combined(), integrity) {
            (true, Some(i)) => Err(ConfigError::new(
                "integrity",
                format!(
                    "{} provides its own integrity; {} must not be set",
                    cipher.name(),
                    i.name()
                ),
            )),
            (true, None) if !integrity_key.is_empty() => Err(ConfigError::new(
                "integrity_key",
                format!("{} takes no integrity key", cipher.name()),
            )),
            (true, None) => Ok(()),
            (false, None) => Err(ConfigError::new(
                "integrity",
                format!(
                    "{} needs an integrity algorithm (confidentiality-only ESP is not offered)",
                    cipher.name()
                ),
            )),
            (false, Some(i)) if integrity_key.len() != i.key_len() => Err(ConfigError::new(
                "integrity_key",
                format!(
                    "{} needs a {}-byte key, got {} bytes",
                    i.name(),
                    i.key_len(),
                    integrity_key.len()
                ),
            )),
            (false, Some(_)) => Ok(()),
        }
    }

    /// Checks key lengths ([`Transform::check`]) and builds the keyed transform.
    pub(crate) fn new(
        cipher: Cipher,
        key: &[u8],
        integrity: Option<Integrity>,
        integrity_key: &[u8],
        pad_align: usize,
        iv_source: Option<Box<dyn IvSource>>,
        direction: Direction,
    ) -> Result<Transform, ConfigError> {
        Transform::check(cipher, key, integrity, integrity_key)?;
        let mac = match integrity {
            Some(i) if !cipher.is_combined() => Some((i, HmacKey::new(i, integrity_key))),
            _ => None,
        };
        // Copied straight into its box: a copy on the stack would stay there after
        // this returns, and could end up in the padding of a later heap block.
        let salt = |key: &[u8]| -> Salt {
            let mut salt = Salt::default();
            salt.copy_from_slice(&key[key.len() - 4..]);
            salt
        };
        let (engine, icv_len) = match (cipher, mac) {
            (Cipher::Aes128Gcm | Cipher::Aes256Gcm | Cipher::ChaCha20Poly1305, _) => (
                Engine::Aead {
                    key: AeadKey::new(cipher, &key[..key.len() - 4])?,
                    salt: salt(key),
                },
                16,
            ),
            (Cipher::Aes128Gmac | Cipher::Aes256Gmac, _) => (
                Engine::Gmac {
                    key: AeadKey::new(cipher, &key[..key.len() - 4])?,
                    salt: salt(key),
                },
                16,
            ),
            (Cipher::Aes128Cbc | Cipher::Aes256Cbc, Some((i, mac))) => {
                let e = "key length checked";
                let cbc = match (cipher == Cipher::Aes128Cbc, direction) {
                    (true, Direction::Outbound) => {
                        CbcKey::Enc128(aes::Aes128Enc::new_from_slice(key).expect(e))
                    }
                    (true, Direction::Inbound) => {
                        CbcKey::Dec128(aes::Aes128Dec::new_from_slice(key).expect(e))
                    }
                    (false, Direction::Outbound) => {
                        CbcKey::Enc256(aes::Aes256Enc::new_from_slice(key).expect(e))
                    }
                    (false, Direction::Inbound) => {
                        CbcKey::Dec256(aes::Aes256Dec::new_from_slice(key).expect(e))
                    }
                };
                // Only outbound SAs draw IVs: an inbound one never builds the default
                // source (no OS call); a given source is kept either way.
                let ivs: Box<dyn IvSource> = match (iv_source, direction) {
                    (Some(s), _) => s,
                    (None, Direction::Outbound) => Box::new(OsIvSource::new()?),
                    (None, Direction::Inbound) => Box::new(NoIvs),
                };
                let pads = match i {
                    Integrity::HmacSha256_128 => Sha256Pads::new(integrity_key),
                    _ => Sha256Pads {
                        inner: [0; 8],
                        outer: [0; 8],
                    },
                };
                #[cfg(feature = "ipsec-mb")]
                let mb = ipsec_mb::CbcHmacKeys::new(
                    key,
                    i,
                    integrity_key,
                    direction == Direction::Outbound,
                )?;
                (
                    Engine::CbcHmac(wipe::WipeOnDrop::new(CbcHmac {
                        cbc,
                        mac,
                        ivs,
                        pads,
                        #[cfg(feature = "ipsec-mb")]
                        mb,
                    })),
                    i.icv_len(),
                )
            }
            (_, Some((i, mac))) => (Engine::NullHmac(wipe::WipeOnDrop::new(mac)), i.icv_len()),
            (_, None) => {
                unreachable!("Transform::check: non-combined ciphers have an integrity algorithm")
            }
        };
        let small = |n: usize| u8::try_from(n).expect("ESP sizes are below 256");
        Ok(Transform {
            engine,
            iv_len: small(cipher.iv_len()),
            icv_len: small(icv_len),
            pad_align: small(pad_align),
            cipher_block: if cipher.pad_align() == 16 { 16 } else { 1 },
        })
    }

    /// Writes the IV, encrypts the payload and trailer, and writes the ICV, for the ESP
    /// packet at `at` inside `buf` whose header (SPI, low sequence bits) is in place.
    #[inline]
    pub(crate) fn seal(&mut self, buf: &mut [u8], at: EspLayout, seq: u64, esn: bool) {
        match &mut self.engine {
            Engine::Aead { key, salt } => {
                // The IV is the sequence number (RFC 4106 §3.1, RFC 7634 §2).
                buf[at.esp + 8..at.esp + 16].copy_from_slice(&seq.to_be_bytes());
                aead_seal(key, salt, buf, at, seq, esn);
            }
            _ => self.seal_slow(buf, at, seq, esn),
        }
    }

    /// The non-AEAD transforms, kept out of line so that the AEAD path stays small.
    #[inline(never)]
    fn seal_slow(&mut self, buf: &mut [u8], at: EspLayout, seq: u64, esn: bool) {
        let EspLayout { esp, icv } = at;
        let iv_end = esp + 8 + self.iv_len();
        let icv_len = self.icv_len();
        match &mut self.engine {
            Engine::Aead { .. } => unreachable!("handled by seal"),
            Engine::Gmac { key, salt } => {
                buf[esp + 8..iv_end].copy_from_slice(&seq.to_be_bytes());
                let tag = with_gmac_aad(buf, esp, icv, seq, esn, |aad| {
                    key.seal(nonce(salt, seq), aad, &mut [])
                });
                buf[icv..icv + icv_len].copy_from_slice(&tag);
            }
            Engine::CbcHmac(keys) => {
                let CbcHmac { cbc, mac, ivs, .. } = &mut **keys;
                let mut iv = [0u8; 16];
                ivs.fill_iv(&mut iv);
                buf[esp + 8..iv_end].copy_from_slice(&iv);
                debug_assert!(
                    (icv - iv_end).is_multiple_of(16),
                    "padding aligns CBC input to blocks"
                );
                let (hi, n) = esn_tail(seq, esn);
                match cbc {
                    CbcKey::Enc128(c) => {
                        let enc = cbc::Encryptor::inner_iv_init(&*c, &iv.into());
                        mac.encrypt_then_mac(enc, buf, (esp, iv_end, icv), &hi[..n], icv_len);
                    }
                    CbcKey::Enc256(c) => {
                        let enc = cbc::Encryptor::inner_iv_init(&*c, &iv.into());
                        mac.encrypt_then_mac(enc, buf, (esp, iv_end, icv), &hi[..n], icv_len);
                    }
                    CbcKey::Dec128(_) | CbcKey::Dec256(_) => {
                        unreachable!("only outbound SAs seal; they hold encryption keys")
                    }
                }
            }
            Engine::NullHmac(mac) => {
                let (covered, icv_out) = buf[esp..icv + icv_len].split_at_mut(icv - esp);
                let (hi, n) = esn_tail(seq, esn);
                mac.compute(covered, &hi[..n], icv_out);
            }
        }
    }

    /// True when a burst should hand this transform's seals to [`Self::seal_begin`] and
    /// [`Self::seal_lanes`]: AES-CBC + HMAC, whose CBC chains are serial inside a
    /// packet and are run side by side across the packets of a burst; and with
    /// `ipsec-mb` AES-GCM, sealed one after the other once every packet of the burst
    /// is encapsulated (see [`Self::seal_lanes`]; with ring, RustCrypto and the
    /// library's ChaCha20-Poly1305 that measured no faster, 0-3 % slower).
    #[inline]
    pub(crate) fn seals_in_lanes(&self) -> bool {
        match &self.engine {
            Engine::CbcHmac(_) => true,
            Engine::Aead { key, .. } => key.is_ipsec_mb_gcm(),
            _ => false,
        }
    }

    /// The first half of [`Self::seal`] for the burst path: for AES-CBC + HMAC, draws
    /// the IV and writes it (so IVs are drawn in packet order, as one packet at a
    /// time would) and returns what is left for [`Self::seal_lanes`]; every other
    /// transform seals the packet at once and returns `None`.
    #[inline]
    pub(crate) fn seal_begin(
        &mut self,
        buf: &mut [u8],
        at: EspLayout,
        seq: u64,
        esn: bool,
    ) -> Option<PendingSeal> {
        if let Engine::Aead { key, .. } = &self.engine
            && key.is_ipsec_mb_gcm()
        {
            // The IV is the sequence number, as in `seal`; the seal is `seal_lanes`'.
            buf[at.esp + 8..at.esp + 16].copy_from_slice(&seq.to_be_bytes());
            return Some(PendingSeal { at, seq, esn });
        }
        let Engine::CbcHmac(keys) = &mut self.engine else {
            self.seal(buf, at, seq, esn);
            return None;
        };
        let mut iv = [0u8; 16];
        keys.ivs.fill_iv(&mut iv);
        buf[at.esp + 8..at.esp + 24].copy_from_slice(&iv);
        Some(PendingSeal { at, seq, esn })
    }

    /// Finishes the seals [`Self::seal_begin`] left. AES-CBC + HMAC, [`LANES`] packets
    /// at a time: their CBC chains encrypted side by side ([`CbcLanes`]), then their
    /// ICVs (for HMAC-SHA-256, the packets' hashes side by side too). AES-GCM (with
    /// `ipsec-mb`): one packet after the other, each by one call of the library. That is the same work
    /// as sealing each packet as it is encapsulated, but measured faster: with nothing
    /// between the calls, the processor overlaps one call's tail with the next one's
    /// start, and no call waits on the stores of the encapsulation that just wrote its
    /// packet (intel-ipsec-mb, AES-128-GCM, 32-packet bursts, `esp_profile encb`: 52
    /// -> 42 ns a packet at 64 bytes, 80 -> 67 at 512, 136 -> 130 at 1,420; faster
    /// than the library's own GCM jobs, which this replaced). The result is byte for
    /// byte what [`Self::seal`] gives with the same IVs.
    /// `None` entries are skipped (a burst passes its pending packets first).
    pub(crate) fn seal_lanes(&self, lanes: &mut [Option<Lane<'_>>]) {
        let keys = match &self.engine {
            Engine::Aead { key, salt } => {
                for (buf, p) in lanes.iter_mut().flatten() {
                    aead_seal(key, salt, buf, p.at, p.seq, p.esn);
                }
                return;
            }
            Engine::CbcHmac(keys) => keys,
            _ => unreachable!("only CBC and AEAD seals are left pending"),
        };
        // With `ipsec-mb`, the library's bursts (for short packets, where measured
        // faster, its hash bursts alone) unless this thread cannot have its manager
        // (out of memory): then the portable lanes, which give the same bytes.
        #[cfg(feature = "ipsec-mb")]
        if ipsec_mb::thread_ready() {
            let longest = lanes
                .iter()
                .flatten()
                .map(|(_, p)| p.at.icv - p.at.esp - 24)
                .max()
                .unwrap_or(0);
            if lanes.iter().flatten().all(|(_, p)| !p.esn)
                && ipsec_mb::cipher_in_crate(longest, |len| self.crate_cipher_faster(keys, len))
            {
                self.seal_lanes_split(keys, lanes);
            } else {
                Self::seal_lanes_mb(&keys.mb, lanes);
            }
            return;
        }
        self.seal_lanes_portable(keys, lanes);
    }

    /// [`Self::seal_lanes`] with `ipsec-mb` for short packets: the CBC chains of up to
    /// [`BURST_CHUNK`] packets side by side in the `aes` crate ([`CbcLanes`]), then
    /// their ICVs as one intel-ipsec-mb hash burst (on the manager measured faster for
    /// their length). The library's own CBC bursts spend about 30 ns a packet on five
    /// blocks (AMD Zen 4, AVX-512 manager); 32 chains of AES-NI rounds side by side,
    /// about 10 (see [`ipsec_mb::cipher_in_crate`]). Not with ESN (whose high
    /// sequence bits are hashed from where the ICV goes: the library's seal handles
    /// that).
    #[cfg(feature = "ipsec-mb")]
    fn seal_lanes_split(&self, keys: &CbcHmac, lanes: &mut [Option<Lane<'_>>]) {
        let icv_len = self.icv_len();
        for group in lanes.chunks_mut(BURST_CHUNK) {
            let width = encrypt_chains::<BURST_CHUNK>(&keys.cbc, group);
            let mut jobs: [ipsec_mb::HashLane<'_>; BURST_CHUNK] = Default::default();
            for ((buf, p), job) in group.iter_mut().flatten().zip(jobs.iter_mut()) {
                let EspLayout { esp, icv } = p.at;
                // The ICV goes right after what it covers (no ESN here).
                let (covered, out) = buf.split_at_mut(icv);
                *job = ipsec_mb::HashLane {
                    buf: covered,
                    esp,
                    end: icv,
                    tag: &mut out[..icv_len],
                };
            }
            keys.mb.icvs(&mut jobs[..width]);
        }
    }

    /// Times both ways of sealing a burst of 32 packets with `len` bytes of ciphertext
    /// ([`Self::seal_lanes_split`], [`Self::seal_lanes_mb`]) with this SA's keys, on
    /// zeros in stack buffers (wiped after): a warm-up, then 7 alternating rounds;
    /// `true` if the `aes` crate's way took at least 1/16 less (the minimum of each).
    /// Run once per length class and process ([`ipsec_mb::cipher_in_crate`]), as the
    /// shim picks the manager that hashes.
    #[cfg(feature = "ipsec-mb")]
    #[cold]
    fn crate_cipher_faster(&self, keys: &CbcHmac, len: usize) -> bool {
        const ROOM: usize = 24 + ipsec_mb::CRATE_CIPHER_MAX + 64;
        // Whole blocks, at least one, within the buffers.
        let len = len.clamp(16, ipsec_mb::CRATE_CIPHER_MAX) / 16 * 16;
        let mut bufs = [[0u8; ROOM]; BURST_CHUNK];
        let mut time = |split: bool| {
            let mut lanes: [Option<Lane<'_>>; BURST_CHUNK] = [const { None }; BURST_CHUNK];
            for (lane, buf) in lanes.iter_mut().zip(bufs.iter_mut()) {
                let at = EspLayout {
                    esp: 0,
                    icv: 24 + len,
                };
                *lane = Some((
                    &mut buf[..],
                    PendingSeal {
                        at,
                        seq: 1,
                        esn: false,
                    },
                ));
            }
            let start = std::time::Instant::now();
            if split {
                self.seal_lanes_split(keys, &mut lanes);
            } else {
                Self::seal_lanes_mb(&keys.mb, &mut lanes);
            }
            start.elapsed()
        };
        time(true);
        time(false);
        let (mut split, mut library) = (core::time::Duration::MAX, core::time::Duration::MAX);
        for _ in 0..7 {
            split = split.min(time(true));
            library = library.min(time(false));
        }
        bufs.zeroize();
        split * 16 <= library * 15
    }

    /// [`Self::seal_lanes`] by intel-ipsec-mb: each packet one job (CBC, then HMAC),
    /// [`BURST_CHUNK`] jobs per submission. With ESN, the high sequence bits are
    /// written where the ICV goes and hashed from there, then overwritten by the ICV.
    #[cfg(feature = "ipsec-mb")]
    fn seal_lanes_mb(mb: &ipsec_mb::CbcHmacKeys, lanes: &mut [Option<Lane<'_>>]) {
        for group in lanes.chunks_mut(BURST_CHUNK) {
            let mut jobs: [ipsec_mb::SealLane<'_>; BURST_CHUNK] =
                core::array::from_fn(|_| ipsec_mb::SealLane {
                    buf: &mut [],
                    esp: 0,
                    icv: 0,
                    hash_end: 0,
                });
            let mut n = 0;
            for ((buf, p), job) in group.iter_mut().flatten().zip(jobs.iter_mut()) {
                let EspLayout { esp, icv } = p.at;
                let (hi, tail) = esn_tail(p.seq, p.esn);
                buf[icv..icv + tail].copy_from_slice(&hi[..tail]);
                *job = ipsec_mb::SealLane {
                    buf,
                    esp,
                    icv,
                    hash_end: icv + tail,
                };
                n += 1;
            }
            mb.seal(&mut jobs[..n]);
        }
    }

    /// [`Self::seal_lanes`] in Rust: [`LANES`] CBC chains side by side, then the
    /// HMACs (SHA-256's side by side too).
    fn seal_lanes_portable(&self, keys: &CbcHmac, lanes: &mut [Option<Lane<'_>>]) {
        let CbcHmac { cbc, mac, pads, .. } = keys;
        let icv_len = self.icv_len();
        for group in lanes.chunks_mut(LANES) {
            let width = encrypt_chains::<LANES>(cbc, group);
            let mut tails = [([0u8; 4], 0usize); LANES];
            for ((_, p), t) in group.iter().flatten().zip(tails.iter_mut()) {
                *t = esn_tail(p.seq, p.esn);
            }
            match mac {
                HmacKey::Sha256(_) => {
                    let mut macs: [(&[u8], &[u8], &mut [u8]); LANES] =
                        core::array::from_fn(|_| (&[][..], &[][..], &mut [][..]));
                    for (((buf, p), (hi, n)), m) in group
                        .iter_mut()
                        .flatten()
                        .zip(tails.iter())
                        .zip(macs.iter_mut())
                    {
                        let EspLayout { esp, icv } = p.at;
                        let (covered, out) = buf[esp..icv + icv_len].split_at_mut(icv - esp);
                        *m = (covered, &hi[..*n], out);
                    }
                    hmac_sha256_lanes(pads, &mut macs[..width]);
                }
                _ => {
                    for ((buf, p), (hi, n)) in group.iter_mut().flatten().zip(tails.iter()) {
                        let EspLayout { esp, icv } = p.at;
                        let (covered, out) = buf[esp..icv + icv_len].split_at_mut(icv - esp);
                        mac.compute(covered, &hi[..*n], out);
                    }
                }
            }
        }
    }

    /// True when a decrypt burst should compute ICVs ahead with [`Self::icvs_ahead`]:
    /// AES-CBC + HMAC-SHA-256-128 (whose hashes run side by side across packets), or
    /// with `ipsec-mb` AES-CBC with any HMAC.
    #[inline]
    pub(crate) fn icvs_ahead_pay(&self) -> bool {
        if cfg!(feature = "ipsec-mb") {
            matches!(&self.engine, Engine::CbcHmac(_))
        } else {
            matches!(&self.engine, Engine::CbcHmac(k) if matches!(k.mac, HmacKey::Sha256(_)))
        }
    }

    /// For a decrypt burst: the truncated HMAC of `bufs[l][ahead[l].esp..ahead[l].icv]`
    /// (no ESN tail) into `ahead[l].tag`: HMAC-SHA-256-128, up to [`LANES`] packets'
    /// hashes side by side; with `ipsec-mb`, any integrity algorithm, as hash bursts
    /// of intel-ipsec-mb, [`BURST_CHUNK`] per call (hash only: nothing is
    /// decrypted before its ICV is compared). [`Self::open`] then compares the
    /// packet's ICV with it (in constant time, before decrypting) instead of
    /// computing it. Only for [`Self::icvs_ahead_pay`].
    pub(crate) fn icvs_ahead(&self, bufs: &[&[u8]], ahead: &mut [IcvAhead]) {
        let Engine::CbcHmac(keys) = &self.engine else {
            return;
        };
        #[cfg(feature = "ipsec-mb")]
        if !ipsec_mb::thread_ready() {
            // No manager for this thread (out of memory): one HMAC at a time.
            let icv_len = self.icv_len();
            for (buf, a) in bufs.iter().zip(ahead.iter_mut()) {
                keys.mac
                    .compute(&buf[a.esp..a.icv], &[], &mut a.tag[..icv_len]);
            }
            return;
        }
        #[cfg(feature = "ipsec-mb")]
        for (bufs, ahead) in bufs.chunks(BURST_CHUNK).zip(ahead.chunks_mut(BURST_CHUNK)) {
            let mut jobs: [ipsec_mb::HashLane<'_>; BURST_CHUNK] = Default::default();
            let n = bufs.len().min(ahead.len());
            for ((buf, a), job) in bufs.iter().zip(ahead.iter_mut()).zip(jobs.iter_mut()) {
                *job = ipsec_mb::HashLane {
                    buf,
                    esp: a.esp,
                    end: a.icv,
                    tag: &mut a.tag[..],
                };
            }
            keys.mb.icvs(&mut jobs[..n]);
        }
        #[cfg(not(feature = "ipsec-mb"))]
        for (bufs, ahead) in bufs.chunks(LANES).zip(ahead.chunks_mut(LANES)) {
            let width = bufs.len().min(ahead.len());
            let mut macs: [(&[u8], &[u8], &mut [u8]); LANES] =
                core::array::from_fn(|_| (&[][..], &[][..], &mut [][..]));
            for ((buf, a), m) in bufs.iter().zip(ahead.iter_mut()).zip(macs.iter_mut()) {
                *m = (&buf[a.esp..a.icv], &[][..], &mut a.tag[..]);
            }
            hmac_sha256_lanes(&keys.pads, &mut macs[..width]);
        }
    }

    /// Verifies the ICV and decrypts in place. `false` means the ICV did not verify; the
    /// buffer is then unchanged for CBC/NULL/GMAC and unspecified for GCM/ChaCha (ring
    /// and RustCrypto both leave the ciphertext unusable).
    ///
    /// `hint`: the ICV [`Self::icvs_ahead`] computed for this packet in a burst; used
    /// only when it was computed for the same layout (and without ESN), so it changes
    /// nothing but where the HMAC is computed.
    #[inline(always)]
    pub(crate) fn open(
        &mut self,
        buf: &mut [u8],
        at: EspLayout,
        seq: u64,
        esn: bool,
        hint: Option<&IcvAhead>,
    ) -> bool {
        let EspLayout { esp, icv } = at;
        let iv_end = esp + 8 + self.iv_len();
        match &mut self.engine {
            Engine::Aead { key, salt } => {
                let iv: [u8; 8] = buf[esp + 8..iv_end].try_into().expect("8-byte IV");
                let tag: [u8; 16] = buf[icv..icv + 16].try_into().expect("16-byte ICV");
                let (head, body) = buf[esp..icv].split_at_mut(iv_end - esp);
                let aad = AeadAad::new(head, seq, esn);
                key.open(nonce_iv(salt, iv), aad.bytes(), body, &tag)
            }
            _ => self.open_slow(buf, at, seq, esn, hint),
        }
    }

    /// The non-AEAD transforms, kept out of line so that the AEAD path stays small.
    #[inline(never)]
    fn open_slow(
        &mut self,
        buf: &mut [u8],
        at: EspLayout,
        seq: u64,
        esn: bool,
        hint: Option<&IcvAhead>,
    ) -> bool {
        let EspLayout { esp, icv } = at;
        let iv_end = esp + 8 + self.iv_len();
        let icv_len = self.icv_len();
        match &mut self.engine {
            Engine::Aead { .. } => unreachable!("handled by open"),
            Engine::Gmac { key, salt } => {
                let iv: [u8; 8] = buf[esp + 8..iv_end].try_into().expect("8-byte IV");
                let tag: [u8; 16] = buf[icv..icv + 16].try_into().expect("16-byte ICV");
                with_gmac_aad(buf, esp, icv, seq, esn, |aad| {
                    key.open(nonce_iv(salt, iv), aad, &mut [], &tag)
                })
            }
            Engine::CbcHmac(keys) => {
                let CbcHmac { cbc, mac, .. } = &**keys;
                let mut expect = [0u8; 32];
                match hint {
                    Some(h) if h.esp == esp && h.icv == icv && !esn && icv_len <= AHEAD_TAG => {
                        expect[..icv_len].copy_from_slice(&h.tag[..icv_len]);
                    }
                    _ => {
                        let (hi, n) = esn_tail(seq, esn);
                        mac.compute(&buf[esp..icv], &hi[..n], &mut expect[..icv_len]);
                    }
                }
                if !ct_eq(&expect[..icv_len], &buf[icv..icv + icv_len]) {
                    return false;
                }
                let iv: [u8; 16] = buf[esp + 8..iv_end].try_into().expect("16-byte IV");
                // (On a thread that cannot have its manager, the `aes` crate.)
                #[cfg(feature = "ipsec-mb")]
                if icv - iv_end >= MB_DECRYPT_MIN && keys.mb.decrypt(&iv, &mut buf[iv_end..icv]) {
                    return true;
                }
                let (blocks, _) = Array::slice_as_chunks_mut(&mut buf[iv_end..icv]);
                match cbc {
                    CbcKey::Dec128(c) => {
                        cbc::Decryptor::inner_iv_init(c, &iv.into()).decrypt_blocks(blocks);
                    }
                    CbcKey::Dec256(c) => {
                        cbc::Decryptor::inner_iv_init(c, &iv.into()).decrypt_blocks(blocks);
                    }
                    CbcKey::Enc128(_) | CbcKey::Enc256(_) => {
                        unreachable!("only inbound SAs open; they hold decryption keys")
                    }
                }
                true
            }
            Engine::NullHmac(mac) => {
                let mut expect = [0u8; 32];
                let (hi, n) = esn_tail(seq, esn);
                mac.compute(&buf[esp..icv], &hi[..n], &mut expect[..icv_len]);
                ct_eq(&expect[..icv_len], &buf[icv..icv + icv_len])
            }
        }
    }
}

/// Seals the AEAD packet at `at` in `buf`, whose ESP header and IV (the sequence
/// number, 8 bytes) are in place: encrypts the payload and trailer and writes the tag.
#[inline(always)]
fn aead_seal(key: &AeadKey, salt: &Salt, buf: &mut [u8], at: EspLayout, seq: u64, esn: bool) {
    let EspLayout { esp, icv } = at;
    let (head, rest) = buf[esp..icv + 16].split_at_mut(16);
    let (body, tag_out) = rest.split_at_mut(icv - esp - 16);
    let aad = AeadAad::new(head, seq, esn);
    let tag = key.seal(nonce(salt, seq), aad.bytes(), body);
    tag_out.copy_from_slice(&tag);
}

/// Constant-time equality of two ICVs: every byte is looked at whatever the
/// differences, and only the accumulated difference (hidden from the optimiser) is
/// tested.
/// Eight bytes at a time (ICVs are 12 to 32 bytes), then the rest one by one.
#[inline]
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let (a8, a1) = a.as_chunks::<8>();
    let (b8, b1) = b.as_chunks::<8>();
    let mut diff = u64::from(a.len() != b.len());
    for (x, y) in a8.iter().zip(b8) {
        diff |= u64::from_ne_bytes(*x) ^ u64::from_ne_bytes(*y);
    }
    for (x, y) in a1.iter().zip(b1) {
        diff |= u64::from(x ^ y);
    }
    core::hint::black_box(diff) == 0
}

/// [`ct_eq`] of two 16-byte tags, as two 64-bit words: the difference is three
/// instructions from the loads, where the bytewise fold took a chain of eight
/// vector reductions, all waiting for the tag the backend has just computed.
#[cfg(any(feature = "ipsec-mb", test))]
#[inline]
pub(crate) fn ct_eq16(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let x = u128::from_ne_bytes(*a) ^ u128::from_ne_bytes(*b);
    let diff = (x as u64) | ((x >> 64) as u64);
    core::hint::black_box(diff) == 0
}

/// RFC 4303 §2.4 padding: the fewest bytes that bring `payload` plus the 2-byte
/// trailer to a multiple of `align` (a power of two: 4, or 16 for CBC). A mask, not a
/// division: this runs for every packet.
#[inline]
pub(crate) const fn pad_len(payload: usize, align: usize) -> usize {
    debug_assert!(align.is_power_of_two());
    (payload + 2).wrapping_neg() & (align - 1)
}

/// An AEAD nonce: salt || 64-bit IV (RFC 4106 §4, RFC 7634 §2), kept as its two parts
/// so that the compiler holds them in registers: a backend that needs the 12 bytes
/// in memory writes them itself, in the way its loads want (see `one_store`).
/// Assembling `[u8; 12]` on the stack here, a 4-byte and an
/// 8-byte store, made the wide load that followed wait for both to reach the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Nonce {
    pub(crate) salt: [u8; 4],
    pub(crate) iv: [u8; 8],
}

impl Nonce {
    /// The 12 bytes.
    #[inline]
    pub(crate) fn bytes(self) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.salt);
        n[4..].copy_from_slice(&self.iv);
        n
    }
}

impl From<[u8; 12]> for Nonce {
    fn from(n: [u8; 12]) -> Nonce {
        Nonce {
            salt: n[..4].try_into().expect("4 bytes"),
            iv: n[4..].try_into().expect("8 bytes"),
        }
    }
}

/// The AEAD nonce of sequence number `seq` (the IV ESP sends is the sequence number).
#[inline]
fn nonce(salt: &[u8; 4], seq: u64) -> Nonce {
    nonce_iv(salt, seq.to_be_bytes())
}

#[inline]
fn nonce_iv(salt: &[u8; 4], iv: [u8; 8]) -> Nonce {
    Nonce { salt: *salt, iv }
}

/// The AEAD AAD (RFC 4106 §5, RFC 7634 §2.1) of the packet whose ESP header starts
/// `esp_header`. Without ESN, SPI || 32-bit sequence number is the ESP header itself
/// (written by one store: see `write_esp_header` in the esp module); with ESN, SPI ||
/// 64-bit sequence number, written by one store ([`one_store`]).
enum AeadAad<'a> {
    Header(&'a [u8]),
    Esn(one_store::Block16),
}

impl<'a> AeadAad<'a> {
    #[inline(always)]
    fn new(esp_header: &'a [u8], seq: u64, esn: bool) -> AeadAad<'a> {
        if esn {
            let spi: [u8; 4] = esp_header[..4].try_into().expect("4-byte SPI");
            AeadAad::Esn(one_store::Block16::new(spi, seq.to_be_bytes()))
        } else {
            AeadAad::Header(&esp_header[..8])
        }
    }

    #[inline(always)]
    fn bytes(&self) -> &[u8] {
        match self {
            AeadAad::Header(h) => h,
            AeadAad::Esn(b) => &b.bytes12()[..],
        }
    }
}

/// With ESN the high 32 bits of the sequence number follow the covered data in the
/// ICV computation of HMAC-based ESP (RFC 4303 §2.2.1, §3.3.2.1); without, nothing.
#[inline]
fn esn_tail(seq: u64, esn: bool) -> ([u8; 4], usize) {
    (((seq >> 32) as u32).to_be_bytes(), if esn { 4 } else { 0 })
}

/// Runs `f` with the GMAC AAD (RFC 4543 §3.3): the ESP header, IV, payload, padding,
/// pad length and next header; with ESN the 64-bit sequence number replaces the 32-bit
/// one. That AAD is not contiguous on the wire, so the 4 bytes in front of the ESP
/// header are borrowed to build it in place and then restored.
#[inline]
fn with_gmac_aad<R>(
    buf: &mut [u8],
    esp: usize,
    icv: usize,
    seq: u64,
    esn: bool,
    f: impl FnOnce(&[u8]) -> R,
) -> R {
    if !esn {
        return f(&buf[esp..icv]);
    }
    let saved: [u8; 8] = buf[esp - 4..esp + 4].try_into().expect("8 bytes");
    buf[esp - 4..esp].copy_from_slice(&saved[4..8]);
    buf[esp..esp + 4].copy_from_slice(&((seq >> 32) as u32).to_be_bytes());
    let r = f(&buf[esp - 4..icv]);
    buf[esp - 4..esp + 4].copy_from_slice(&saved);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constant-time comparisons answer as `==` does: equal slices of every length
    /// from 0 to 40 (every ICV length, whole words and a tail), each with any one bit
    /// flipped, and slices of different lengths.
    #[test]
    fn constant_time_comparisons_answer_as_equality() {
        let a: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
        for len in 0..=a.len() {
            let x = &a[..len];
            let mut y = x.to_vec();
            assert!(ct_eq(x, &y), "{len}");
            for bit in 0..len * 8 {
                y[bit / 8] ^= 1 << (bit % 8);
                assert!(!ct_eq(x, &y), "{len} bit {bit}");
                if len == 16 {
                    let (x16, y16): ([u8; 16], [u8; 16]) =
                        (x.try_into().unwrap(), y[..].try_into().unwrap());
                    assert!(!ct_eq16(&x16, &y16), "bit {bit}");
                }
                y[bit / 8] ^= 1 << (bit % 8);
            }
            if len == 16 {
                assert!(ct_eq16(x.try_into().unwrap(), y[..].try_into().unwrap()));
            }
            if len > 0 {
                assert!(
                    !ct_eq(x, &y[..len - 1]) && !ct_eq(&x[..len - 1], &y),
                    "{len}"
                );
            }
        }
    }

    /// An AES-GCM key that hands payloads of `GCM_RING_MIN` bytes and more to ring and
    /// smaller ones to intel-ipsec-mb, whatever this CPU would get (features `ipsec-mb`
    /// and `ring`; `None` otherwise, and for ChaCha20-Poly1305).
    fn split_gcm_key(cipher: Cipher, key: &[u8]) -> Option<AeadKey> {
        #[cfg(all(feature = "ipsec-mb", feature = "ring"))]
        if cipher != Cipher::ChaCha20Poly1305 {
            return Some(AeadKey::IpsecMbGcmRing {
                small: ipsec_mb::GcmKey::new(key).expect("key"),
                large: Box::new(AeadKey::new_portable(cipher, key)),
            });
        }
        let _ = (cipher, key);
        None
    }

    /// Every AEAD key (ring's in the default build; intel-ipsec-mb's for AES-GCM with
    /// the `ipsec-mb` feature, and the split key that hands large payloads to ring)
    /// seals exactly as the RustCrypto crates do, opens what it sealed and refuses a
    /// flipped bit of tag or ciphertext, at every length from 0 to 300 bytes (whole
    /// and partial blocks) and around each backend switch up to 9,000, with both ESP
    /// AAD lengths (8, and 12 with ESN).
    #[test]
    fn aead_keys_agree_with_rustcrypto_at_every_small_length() {
        for cipher in [
            Cipher::Aes128Gcm,
            Cipher::Aes256Gcm,
            Cipher::ChaCha20Poly1305,
        ] {
            let key: Vec<u8> = (0..cipher.key_len() - 4)
                .map(|i| (i as u8).wrapping_mul(7) ^ 0x5c)
                .collect();
            // The key this CPU gets, and the split AES-GCM key (the library below
            // GCM_RING_MIN, ring from it) whichever that is.
            let keys: Vec<AeadKey> = [
                Some(AeadKey::new(cipher, &key).expect("key")),
                split_gcm_key(cipher, &key),
            ]
            .into_iter()
            .flatten()
            .collect();
            let reference_seal = |nonce: [u8; 12], aad: &[u8], buf: &mut [u8]| match cipher {
                Cipher::Aes128Gcm => {
                    let k = aes_gcm::Aes128Gcm::new_from_slice(&key).expect("key");
                    rc_seal(&k, nonce, aad, buf)
                }
                Cipher::Aes256Gcm => {
                    let k = aes_gcm::Aes256Gcm::new_from_slice(&key).expect("key");
                    rc_seal(&k, nonce, aad, buf)
                }
                _ => {
                    let k = chacha20poly1305::ChaCha20Poly1305::new_from_slice(&key).expect("key");
                    rc_seal(&k, nonce, aad, buf)
                }
            };
            // Around CHACHA_IPSEC_MB_MIN and GCM_RING_MIN too: with the `ipsec-mb`
            // feature, ChaCha20-Poly1305 (on an AVX-512 machine) and AES-GCM (on a VAES
            // machine without AVX-512, and the split key above) change backend there.
            for (ours, len) in keys.iter().flat_map(|k| {
                (0..=300)
                    .chain([511, 512, 513, 639, 640, 641, 1024, 1424, 1500, 9000])
                    .map(move |len| (k, len))
            }) {
                for aad_len in [8, 12] {
                    let aad: Vec<u8> = (0..aad_len as u8).collect();
                    let nonce = [len as u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, aad_len as u8];
                    let plain: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
                    let mut sealed = plain.clone();
                    let tag = ours.seal(nonce.into(), &aad, &mut sealed);
                    let mut expected = plain.clone();
                    let expected_tag = reference_seal(nonce, &aad, &mut expected);
                    assert_eq!(
                        (&sealed, tag),
                        (&expected, expected_tag),
                        "{cipher:?} {len}"
                    );
                    let mut opened = sealed.clone();
                    assert!(
                        ours.open(nonce.into(), &aad, &mut opened, &tag),
                        "{cipher:?} {len}"
                    );
                    assert_eq!(opened, plain, "{cipher:?} {len}");
                    let mut bad_tag = tag;
                    bad_tag[len % 16] ^= 0x01;
                    let mut opened = sealed.clone();
                    assert!(
                        !ours.open(nonce.into(), &aad, &mut opened, &bad_tag),
                        "{cipher:?} {len}"
                    );
                    if len > 0 {
                        let mut tampered = sealed.clone();
                        tampered[len / 2] ^= 0x80;
                        assert!(
                            !ours.open(nonce.into(), &aad, &mut tampered, &tag),
                            "{cipher:?} {len}"
                        );
                    }
                }
            }
        }
    }

    /// The AEAD keys carrying AES-GMAC (all of the ESP packet as AAD, no data) compute
    /// RustCrypto's tags at every AAD length from 0 to 300 bytes and at 1424, and
    /// refuse a flipped bit of tag or AAD.
    #[test]
    fn gmac_keys_agree_with_rustcrypto_at_every_aad_length() {
        for cipher in [Cipher::Aes128Gmac, Cipher::Aes256Gmac] {
            let key: Vec<u8> = (0..cipher.key_len() - 4)
                .map(|i| (i as u8).wrapping_mul(13) ^ 0xa3)
                .collect();
            let ours = AeadKey::new(cipher, &key).expect("key");
            for len in (0..=300).chain([1424]) {
                let nonce = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, len as u8, (len >> 8) as u8];
                let mut aad: Vec<u8> = (0..len).map(|i| (i * 17 + 3) as u8).collect();
                let tag = ours.seal(nonce.into(), &aad, &mut []);
                let expected = if cipher == Cipher::Aes128Gmac {
                    let k = aes_gcm::Aes128Gcm::new_from_slice(&key).expect("key");
                    rc_seal(&k, nonce, &aad, &mut [])
                } else {
                    let k = aes_gcm::Aes256Gcm::new_from_slice(&key).expect("key");
                    rc_seal(&k, nonce, &aad, &mut [])
                };
                assert_eq!(tag, expected, "{cipher:?} {len}");
                assert!(
                    ours.open(nonce.into(), &aad, &mut [], &tag),
                    "{cipher:?} {len}"
                );
                let mut bad_tag = tag;
                bad_tag[len % 16] ^= 0x40;
                assert!(
                    !ours.open(nonce.into(), &aad, &mut [], &bad_tag),
                    "{cipher:?} {len}"
                );
                if len > 0 {
                    aad[len / 3] ^= 0x02;
                    assert!(
                        !ours.open(nonce.into(), &aad, &mut [], &tag),
                        "{cipher:?} {len}"
                    );
                }
            }
        }
    }

    /// With the `ipsec-mb` feature, AES-GCM and AES-GMAC keys are intel-ipsec-mb's (so
    /// the tests above compare it with RustCrypto; with ring's for large payloads
    /// where ring runs VAES code and the library does not), and ChaCha20-Poly1305 keys
    /// are the library's for large packets where it runs AVX-512 code, else the
    /// portable backend's: each key is the kind its backend's name says.
    #[test]
    fn each_cipher_gets_the_backend_it_names() {
        for cipher in [
            Cipher::Aes128Gcm,
            Cipher::Aes256Gcm,
            Cipher::Aes128Gmac,
            Cipher::Aes256Gmac,
            Cipher::ChaCha20Poly1305,
        ] {
            let key = vec![0x33; cipher.key_len() - 4];
            let got = match AeadKey::new(cipher, &key).expect("key") {
                #[cfg(feature = "ipsec-mb")]
                AeadKey::IpsecMb(_) => "ipsec-mb",
                #[cfg(all(feature = "ipsec-mb", feature = "ring"))]
                AeadKey::IpsecMbGcmRing { large, .. } => match *large {
                    AeadKey::Ring(_) => "ipsec-mb+ring",
                    _ => "unexpected large key",
                },
                #[cfg(feature = "ipsec-mb")]
                AeadKey::IpsecMbChaCha { small, .. } => match *small {
                    #[cfg(feature = "ring")]
                    AeadKey::Ring(_) => "ipsec-mb+ring",
                    AeadKey::RcChaCha(_) => "ipsec-mb+rustcrypto",
                    _ => "unexpected small key",
                },
                #[cfg(feature = "ring")]
                AeadKey::Ring(_) => "ring",
                AeadKey::RcAes128(_) | AeadKey::RcAes256(_) | AeadKey::RcChaCha(_) => "rustcrypto",
            };
            assert_eq!(got, aead_backend(cipher), "{cipher:?}");
        }
        assert_eq!(
            aead_backend(Cipher::Aes128Gcm).starts_with("ipsec-mb"),
            cfg!(feature = "ipsec-mb")
        );
        // AES-GMAC has no payload: whatever the split, the library carries it.
        #[cfg(feature = "ipsec-mb")]
        assert!(aead_backend(Cipher::Aes128Gmac).starts_with("ipsec-mb"));
        assert_eq!(aead_backend(Cipher::Aes128Cbc), "rustcrypto");
    }

    /// The interleaved CBC + HMAC of `seal` produces exactly CBC first, then the HMAC
    /// over header, IV and ciphertext (and the ESN tail), for every integrity
    /// algorithm and ciphertext lengths from 16 bytes to past a jumbo frame.
    #[test]
    fn interleaved_encrypt_then_mac_equals_encrypt_then_mac() {
        struct FixedIv(u8);
        impl IvSource for FixedIv {
            fn fill_iv(&mut self, iv: &mut [u8; 16]) {
                self.0 = self.0.wrapping_add(1);
                iv.fill(self.0);
            }
        }
        for cipher in [Cipher::Aes128Cbc, Cipher::Aes256Cbc] {
            for alg in Integrity::ALL {
                let key: Vec<u8> = (0..cipher.key_len() as u8).collect();
                let ikey = vec![0x5a; alg.key_len()];
                let ivs: Box<dyn IvSource> = Box::new(FixedIv(0));
                let mut t = Transform::new(
                    cipher,
                    &key,
                    Some(alg),
                    &ikey,
                    16,
                    Some(ivs),
                    Direction::Outbound,
                )
                .expect("transform");
                let mac = HmacKey::new(alg, &ikey);
                let icv_len = alg.icv_len();
                for blocks in (1..=20).chain([63, 64, 65, 95, 200]) {
                    for (seq, esn) in [(7u64, false), ((5u64 << 32) | 9, true)] {
                        let esp = 20;
                        let body = esp + 8 + 16;
                        let icv = body + 16 * blocks;
                        let mut buf: Vec<u8> = (0..icv + icv_len).map(|i| (i * 7) as u8).collect();
                        let plain = buf.clone();
                        t.seal(&mut buf, EspLayout { esp, icv }, seq, esn);
                        // Reference: CBC over the plaintext with the IV now in the
                        // packet, then the HMAC of header || IV || ciphertext || tail.
                        let iv: [u8; 16] = buf[esp + 8..body].try_into().expect("IV");
                        let mut expect = plain.clone();
                        expect[esp + 8..body].copy_from_slice(&iv);
                        let (b, _) = Array::slice_as_chunks_mut(&mut expect[body..icv]);
                        if cipher == Cipher::Aes128Cbc {
                            let k = aes::Aes128::new_from_slice(&key).expect("key");
                            cbc::Encryptor::inner_iv_init(k, &iv.into()).encrypt_blocks(b);
                        } else {
                            let k = aes::Aes256::new_from_slice(&key).expect("key");
                            cbc::Encryptor::inner_iv_init(k, &iv.into()).encrypt_blocks(b);
                        }
                        let (hi, n) = esn_tail(seq, esn);
                        let (covered, out) = expect[esp..].split_at_mut(icv - esp);
                        mac.compute(covered, &hi[..n], &mut out[..icv_len]);
                        assert_eq!(buf, expect, "{cipher:?} {alg:?} {blocks} blocks esn {esn}");
                    }
                }
            }
        }
    }

    /// The batched IVs of the default source are all different and change with every
    /// call, across batch boundaries.
    #[test]
    fn os_iv_source_hands_out_distinct_ivs() {
        let mut s = OsIvSource::new().expect("OS random");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..5 * IV_BATCH + 3 {
            let mut iv = [0u8; 16];
            s.fill_iv(&mut iv);
            assert!(seen.insert(iv), "an IV repeated");
        }
    }
}
