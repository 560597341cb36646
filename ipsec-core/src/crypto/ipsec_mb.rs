//! AES-GCM (and AES-GMAC, which is AES-GCM with no data) and, where the library runs
//! AVX-512 code, ChaCha20-Poly1305 for larger packets, from intel-ipsec-mb: the
//! optional `ipsec-mb` backend.
//!
//! intel-ipsec-mb's API is C macros over function pointers in a manager (`IMB_MGR`),
//! so `native/ipsec_mb_shim.c` (built by `build.rs` only with the feature) expands
//! them into plain functions, and this module calls those. One manager serves the
//! whole process: allocated and initialised once (`init_mb_mgr_auto`, which picks
//! the SSE, AVX, AVX2 or AVX-512 code for the CPU) on the first key, then only read.
//! Each seal or open is one call of the library's single-call GCM function (nonce,
//! AAD, data, tag) with the key's precomputed `gcm_key_data` (round keys and powers
//! of the hash key), made straight from Rust through the manager's function pointer
//! (fetched once per key); its per-call `gcm_context_data` lives on the caller's stack
//! and is wiped after the call, so keys and calls share nothing mutable and any
//! number of threads may seal and open at once.
//!
//! The `gcm_key_data` is boxed (64-byte aligned, so it never moves) and overwritten
//! with zeros on drop. Tags are compared in Rust in constant time ([`super::ct_eq16`]);
//! the library only computes them.
//!
//! This module holds `unsafe` code: the FFI calls, each with its justification.
#![allow(unsafe_code)]

use super::Nonce;
use super::one_store::Block16;
use crate::error::ConfigError;
use core::ffi::{CStr, c_char, c_int, c_void};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU8, Ordering};
use zeroize::Zeroize;

/// Bytes reserved for one `struct gcm_key_data`: its size in intel-ipsec-mb 1.3 (240
/// bytes of round keys, 768 of hash-key powers for the AVX-512 code); the shim refuses
/// to compile (`_Static_assert`) if the library's is larger. Must equal
/// `SHIM_KEY_DATA_BYTES` in the shim. With the two function pointers, a key's heap
/// block is 1024 bytes.
const KEY_DATA_BYTES: usize = 1008;

/// The library's largest GCM message (NIST SP 800-38D: 2^39 - 256 bits), which also
/// bounds the AAD here. ESP packets are far below it; checked before every call.
const MAX_GCM_BYTES: usize = (1 << 36) - 32;

/// `struct gcm_context_data`: 88 bytes, 8-byte aligned (the shim asserts both), as
/// 64-bit words.
const CONTEXT_WORDS: usize = 11;

/// One call's `struct gcm_context_data`, on the caller's stack.
#[repr(C, align(8))]
struct GcmContext([u64; CONTEXT_WORDS]);

/// Whether the tag the library computed (`expect`) equals the received `tag`, compared
/// in constant time; on a mismatch the decrypted `data` is overwritten with zeros, so
/// no unauthenticated plaintext is left.
#[inline(always)]
fn tag_verified(expect: &[u8; 16], tag: &[u8; 16], data: &mut [u8]) -> bool {
    let ok = super::ct_eq16(expect, tag);
    if !ok {
        data.fill(0);
    }
    ok
}

/// The public seal and open of a one-call AEAD key (`GcmKey`, `ChaChaKey`), over its
/// `run(encrypt, nonce, aad, data, tag)`: one definition of the tag handling for both.
macro_rules! one_call_aead {
    ($key:ty, $limit:literal) => {
        impl $key {
            /// Encrypts `in_out` in place under the 12-byte nonce, authenticating
            /// `aad`; returns the 16-byte tag. Panics only past
            #[doc = $limit]
            #[inline]
            pub fn seal(&self, nonce: [u8; 12], aad: &[u8], in_out: &mut [u8]) -> [u8; 16] {
                self.seal_nonce(nonce.into(), aad, in_out)
            }

            /// [`Self::seal`] with the nonce in its parts (what ESP uses: see
            /// [`Nonce`]).
            #[inline]
            pub(crate) fn seal_nonce(
                &self,
                nonce: Nonce,
                aad: &[u8],
                in_out: &mut [u8],
            ) -> [u8; 16] {
                let mut tag = [0u8; 16];
                self.run(true, nonce, aad, in_out, &mut tag);
                tag
            }

            /// Decrypts `in_out` in place and checks `tag` in constant time. On a
            /// mismatch `in_out` is overwritten with zeros (no unauthenticated
            /// plaintext is left) and the answer is `false`.
            #[inline]
            pub fn open(
                &self,
                nonce: [u8; 12],
                aad: &[u8],
                in_out: &mut [u8],
                tag: &[u8; 16],
            ) -> bool {
                self.open_nonce(nonce.into(), aad, in_out, tag)
            }

            /// [`Self::open`] with the nonce in its parts (what ESP uses: see
            /// [`Nonce`]).
            #[inline]
            pub(crate) fn open_nonce(
                &self,
                nonce: Nonce,
                aad: &[u8],
                in_out: &mut [u8],
                tag: &[u8; 16],
            ) -> bool {
                let mut expect = [0u8; 16];
                self.run(false, nonce, aad, in_out, &mut expect);
                tag_verified(&expect, tag, in_out)
            }
        }
    };
}

/// intel-ipsec-mb's `aes_gcm_enc_dec_t`: key data, context, out, in, length, 12-byte
/// IV, AAD, AAD length, tag out, tag length.
type GcmFn = unsafe extern "C" fn(
    key_data: *const c_void,
    ctx: *mut GcmContext,
    out: *mut u8,
    input: *const u8,
    len: u64,
    iv: *const u8,
    aad: *const u8,
    aad_len: u64,
    tag: *mut u8,
    tag_len: u64,
);

/// A `struct gcm_key_data` with the 64-byte alignment the library's examples give
/// it (`SHIM_KEY_DATA_ALIGN`), and the manager's encrypt and decrypt functions for its
/// key length (1,024 bytes in all).
#[repr(C, align(64))]
struct KeyData {
    bytes: [u8; KEY_DATA_BYTES],
    enc: GcmFn,
    dec: GcmFn,
}

unsafe extern "C" {
    fn ipsec_mb_shim_init() -> c_int;
    fn ipsec_mb_shim_strerror(err: c_int) -> *const c_char;
    fn ipsec_mb_shim_arch() -> *const c_char;
    fn ipsec_mb_shim_version() -> *const c_char;
    fn ipsec_mb_shim_gcm_pre(key: *const u8, key_len: usize, key_data: *mut c_void) -> c_int;
    fn ipsec_mb_shim_gcm_fns(
        key_len: usize,
        enc: *mut Option<GcmFn>,
        dec: *mut Option<GcmFn>,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn ipsec_mb_shim_chacha(
        encrypt: c_int,
        key: *const u8,
        ctx: *mut ChaChaContext,
        iv: *const u8,
        aad: *const u8,
        aad_len: u64,
        data: *mut u8,
        len: u64,
        tag: *mut u8,
    ) -> c_int;
}

/// Initialises the process's manager if that has not happened yet (thread-safe; the
/// same answer every time).
fn init() -> Result<(), ConfigError> {
    // SAFETY: takes no arguments; the shim serialises the one-time initialisation
    // with pthread_once and publishes the manager with a release store.
    let err = unsafe { ipsec_mb_shim_init() };
    if err == 0 {
        return Ok(());
    }
    // SAFETY: the shim returns a pointer to a static NUL-terminated string (the
    // library's message table or a literal), valid for the whole process.
    let msg = unsafe { CStr::from_ptr(ipsec_mb_shim_strerror(err)) };
    Err(ConfigError::new(
        "cipher",
        format!(
            "intel-ipsec-mb could not set up its manager: {}",
            msg.to_string_lossy()
        ),
    ))
}

/// Static text from the shim.
fn static_str(p: *const c_char) -> &'static str {
    // SAFETY: every caller passes a pointer the shim took from a string literal or
    // from the library's static version string: NUL-terminated, never freed.
    unsafe { CStr::from_ptr(p) }.to_str().unwrap_or("?")
}

/// The intel-ipsec-mb version linked, and the architecture its manager chose (after
/// initialising the manager if needed): `("1.3.0", "avx512")`, or an error if the
/// manager cannot be set up.
pub(crate) fn library_info() -> Result<(&'static str, &'static str), ConfigError> {
    init()?;
    // SAFETY: no arguments; both return static strings (see `static_str`). The
    // manager was published by `init`, and is only read.
    let (version, arch) = unsafe { (ipsec_mb_shim_version(), ipsec_mb_shim_arch()) };
    Ok((static_str(version), static_str(arch)))
}

/// An AES-128-GCM or AES-256-GCM key expanded by intel-ipsec-mb (feature `ipsec-mb`):
/// the raw one-call seal and open that ESP uses for AES-GCM and AES-GMAC SAs, public
/// for differential tests, fuzzing and benchmarks. `Send + Sync`: calls only read the
/// key.
///
/// ```
/// let key = ipsec_core::crypto::IpsecMbGcmKey::new(&[7; 16]).unwrap();
/// let mut data = *b"sixteen bytes!!!";
/// let tag = key.seal([1; 12], b"aad", &mut data);
/// assert!(key.open([1; 12], b"aad", &mut data, &tag));
/// assert_eq!(&data, b"sixteen bytes!!!");
/// ```
pub struct GcmKey {
    data: Box<KeyData>,
}

impl GcmKey {
    /// Expands a 16-byte (AES-128) or 32-byte (AES-256) key, without the ESP salt.
    /// Errors: another length, or a manager the library could not set up.
    pub fn new(key: &[u8]) -> Result<GcmKey, ConfigError> {
        if key.len() != 16 && key.len() != 32 {
            return Err(ConfigError::new(
                "key",
                format!(
                    "AES-GCM takes a 16- or 32-byte key, got {} bytes",
                    key.len()
                ),
            ));
        }
        init()?;
        let (mut enc, mut dec): (Option<GcmFn>, Option<GcmFn>) = (None, None);
        // SAFETY: `enc` and `dec` are writable `Option<fn>`s, which have the layout of
        // a nullable C function pointer (`aes_gcm_enc_dec_t`, the type the shim
        // writes); `init` succeeded, so the shim has its manager.
        let rc = unsafe { ipsec_mb_shim_gcm_fns(key.len(), &mut enc, &mut dec) };
        let (Some(enc), Some(dec)) = (enc, dec) else {
            panic!("ipsec_mb_shim_gcm_fns: {rc}; key length and manager checked");
        };
        let mut data = Box::new(KeyData {
            bytes: [0; KEY_DATA_BYTES],
            enc,
            dec,
        });
        // SAFETY: `key` is readable for `key.len()` (16 or 32) bytes, the length the
        // shim reads for that `key_len`; `data.bytes` is a live, exclusively
        // borrowed, 64-byte aligned buffer of KEY_DATA_BYTES, at least
        // sizeof(struct gcm_key_data) (the shim's static assertion); `init`
        // succeeded, so the shim has its manager.
        let rc = unsafe {
            ipsec_mb_shim_gcm_pre(key.as_ptr(), key.len(), data.bytes.as_mut_ptr().cast())
        };
        assert_eq!(
            rc, 0,
            "ipsec_mb_shim_gcm_pre: key length and manager checked"
        );
        Ok(GcmKey { data })
    }

    /// Encrypts (`encrypt`) or decrypts `data` in place and writes the tag computed
    /// over `aad` and the ciphertext to `tag`.
    #[inline(always)]
    fn run(&self, encrypt: bool, nonce: Nonce, aad: &[u8], data: &mut [u8], tag: &mut [u8; 16]) {
        assert!(
            data.len() <= MAX_GCM_BYTES && aad.len() <= MAX_GCM_BYTES,
            "ESP packets are far below the AES-GCM length limits"
        );
        let f = if encrypt {
            self.data.enc
        } else {
            self.data.dec
        };
        let mut ctx = GcmContext([0; CONTEXT_WORDS]);
        // One store, for the library's wide loads (see `one_store`).
        let iv = Block16::new(nonce.salt, nonce.iv);
        // In place: one pointer for both input and output.
        let io = data.as_mut_ptr();
        // SAFETY: `f` is the manager's one-call GCM function for this key's length
        // (from `ipsec_mb_shim_gcm_fns`; the manager lives for the whole process and
        // is only read), and `self.data.bytes` holds the key expanded for it, only
        // read here. `ctx` is a live, exclusively borrowed `gcm_context_data` (size
        // and alignment asserted by the shim). `iv` holds the 12 nonce bytes, the IV
        // length of the one-call API; `aad` is readable and `data` readable and
        // writable for their lengths (checked above against the library's limit, so
        // its parameter checks pass; in place, out == in, as the API allows), and the
        // library reads and writes no further (an empty slice's dangling pointer is
        // not dereferenced); `tag` is 16 writable bytes, the tag length passed. No
        // pointer is kept after the call.
        unsafe {
            f(
                self.data.bytes.as_ptr().cast(),
                &mut ctx,
                io,
                io.cast_const(),
                data.len() as u64,
                iv.bytes12().as_ptr(),
                aad.as_ptr(),
                aad.len() as u64,
                tag.as_mut_ptr(),
                16,
            );
        }
        // The context held the GHASH state (a function of the hash key) and keystream:
        // volatile writes of zeros, then a fence.
        ctx.0.zeroize();
    }
}

one_call_aead!(GcmKey, "GCM's length limit (64 GiB).");

/// `struct chacha20_poly1305_context_data`: 192 bytes, 8-byte aligned (the shim
/// asserts both, as `SHIM_CHACHA_CONTEXT_BYTES`), as 64-bit words.
const CHACHA_CONTEXT_WORDS: usize = 24;

/// One ChaCha20-Poly1305 call's state (Poly1305 key, keystream bytes), on the caller's
/// stack and wiped after the call.
#[repr(C, align(8))]
struct ChaChaContext([u64; CHACHA_CONTEXT_WORDS]);

/// The largest ChaCha20-Poly1305 message (RFC 8439 §2.8: 2^38 - 64 bytes, the 32-bit
/// block counter's reach), which also bounds the AAD here. Checked before every call.
const MAX_CHACHA_BYTES: u64 = (1 << 38) - 64;

/// Whether ESP should hand ChaCha20-Poly1305 packets to intel-ipsec-mb rather than
/// ring or RustCrypto: only where the manager runs its AVX-512 code, and only for
/// payloads of [`super::CHACHA_IPSEC_MB_MIN`] bytes and more. Measured on an Ice
/// Lake-class Xeon (one packet in place, 12-byte nonce, 8-byte AAD, ns): the AVX-512
/// code takes 343 at 768 bytes and 497 at 1,424 where ring takes 440 and 710; the
/// AVX2 code (543 and 898) and the SSE code (727 and 1,324) are slower than ring at
/// every size from 256 bytes to 1,424.
/// False if the manager cannot be set up (the portable backend then carries ChaCha).
pub(crate) fn chacha_preferred() -> bool {
    matches!(library_info(), Ok((_, "avx512")))
}

/// Whether ESP should hand AES-GCM payloads of [`super::GCM_RING_MIN`] bytes and more
/// to ring rather than to the library: where the manager is not the AVX-512 one (the
/// library's SSE, AVX and AVX2 GCM code encrypts with 128-bit AES-NI) and the CPU has
/// VAES and VPCLMULQDQ with AVX2, so that ring runs its 256-bit VAES code (see
/// [`super::GCM_RING_MIN`] for the measurements). False if the manager cannot be set
/// up (no AES-GCM key can be made then).
#[cfg(feature = "ring")]
pub(crate) fn gcm_large_to_ring() -> bool {
    #[cfg(target_arch = "x86_64")]
    let vaes = std::arch::is_x86_feature_detected!("vaes")
        && std::arch::is_x86_feature_detected!("vpclmulqdq")
        && std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    let vaes = false;
    vaes && matches!(library_info(), Ok((_, arch)) if arch != "avx512")
}

/// A ChaCha20-Poly1305 key for intel-ipsec-mb (feature `ipsec-mb`): what ESP uses for
/// ChaCha20-Poly1305 packets of [`super::CHACHA_IPSEC_MB_MIN`] bytes and more where
/// the library runs AVX-512 code ([`super::aead_backend`]); public for differential
/// tests, fuzzing and benchmarks. The raw 32-byte key (the library expands nothing)
/// in a boxed 64-byte block (the key, then zeros: the library reads past 32 bytes),
/// wiped on drop. `Send + Sync`: calls only read the key.
///
/// ```
/// let key = ipsec_core::crypto::IpsecMbChaChaKey::new(&[7; 32]).unwrap();
/// let mut data = *b"sixteen bytes!!!";
/// let tag = key.seal([1; 12], b"aad", &mut data);
/// assert!(key.open([1; 12], b"aad", &mut data, &tag));
/// assert_eq!(&data, b"sixteen bytes!!!");
/// ```
pub struct ChaChaKey {
    key: Box<ChaChaKeyBlock>,
}

/// Bytes the library may read from a ChaCha20-Poly1305 key pointer. The key is 32
/// bytes, but intel-ipsec-mb 1.3's AVX2 ChaCha20 code reads 48 from it (a 32-byte key
/// allocation ending a page faults on every other length from 1 byte up; 16 bytes
/// beyond it never do: measured with each manager, key, AAD and data placed before
/// an unmapped page). The fuzzer found it (`aead_ipsec_mb` under ASan, on a CPU whose
/// manager is AVX2); `tests::library_reads_only_what_it_is_given` keeps the bound.
const CHACHA_KEY_BLOCK: usize = 64;

/// A ChaCha20-Poly1305 key as the library reads it: the 32 key bytes, then zeros to
/// [`CHACHA_KEY_BLOCK`]. 64-byte aligned, so no read within the block crosses a page
/// or a cache line.
#[repr(C, align(64))]
struct ChaChaKeyBlock([u8; CHACHA_KEY_BLOCK]);

impl ChaChaKey {
    /// Keys ChaCha20-Poly1305 with a 32-byte key (without the ESP salt). Errors:
    /// another length, or a manager the library could not set up.
    pub fn new(key: &[u8]) -> Result<ChaChaKey, ConfigError> {
        if key.len() != 32 {
            return Err(ConfigError::new(
                "key",
                format!(
                    "ChaCha20-Poly1305 takes a 32-byte key, got {} bytes",
                    key.len()
                ),
            ));
        }
        init()?;
        // Copied straight into its box: no copy of the key is left on the stack.
        let mut boxed = Box::new(ChaChaKeyBlock([0; CHACHA_KEY_BLOCK]));
        boxed.0[..32].copy_from_slice(key);
        Ok(ChaChaKey { key: boxed })
    }

    /// Encrypts (`encrypt`) or decrypts `data` in place and writes the tag computed
    /// over `aad` and the ciphertext to `tag`.
    #[inline]
    fn run(&self, encrypt: bool, nonce: Nonce, aad: &[u8], data: &mut [u8], tag: &mut [u8; 16]) {
        chacha_call(&self.key.0, encrypt, nonce, aad, data, tag);
    }
}

/// One ChaCha20-Poly1305 call of the library under the key block `key` (the key, then
/// zeros; see [`CHACHA_KEY_BLOCK`]): `data` encrypted (`encrypt`) or decrypted in
/// place, the tag over `aad` and the ciphertext written to `tag`.
fn chacha_call(
    key: &[u8; CHACHA_KEY_BLOCK],
    encrypt: bool,
    nonce: Nonce,
    aad: &[u8],
    data: &mut [u8],
    tag: &mut [u8; 16],
) {
    assert!(
        data.len() as u64 <= MAX_CHACHA_BYTES && aad.len() as u64 <= MAX_CHACHA_BYTES,
        "ESP packets are far below the ChaCha20-Poly1305 length limits"
    );
    let mut ctx = ChaChaContext([0; CHACHA_CONTEXT_WORDS]);
    // One store, for the library's wide loads (see `one_store`).
    let iv = Block16::new(nonce.salt, nonce.iv);
    // SAFETY: `key` is CHACHA_KEY_BLOCK readable bytes, the 32-byte key of
    // the library's ChaCha20-Poly1305 and the zeros its wide loads may reach
    // (`CHACHA_KEY_BLOCK`); `ctx` is a live, exclusively borrowed
    // `chacha20_poly1305_context_data` (size and alignment asserted by the shim);
    // `iv` holds the 12 nonce bytes (the IV length of the API); `aad` is readable
    // and `data` readable and writable for their lengths (checked above against
    // the algorithm's limits; in place, as the API allows; an empty slice's
    // dangling pointer is not dereferenced); `tag` is 16 writable bytes, the tag
    // length the shim passes. Callers hold a key made after `init` succeeded (or
    // called `init`), so the shim has its manager (only read). No pointer is kept
    // after the call.
    let rc = unsafe {
        ipsec_mb_shim_chacha(
            c_int::from(encrypt),
            key.as_ptr(),
            &mut ctx,
            iv.bytes12().as_ptr(),
            aad.as_ptr(),
            aad.len() as u64,
            data.as_mut_ptr(),
            data.len() as u64,
            tag.as_mut_ptr(),
        )
    };
    // The context held the one-time Poly1305 key and keystream bytes: volatile
    // writes of zeros, then a fence.
    ctx.0.zeroize();
    assert_eq!(
        rc, 0,
        "ipsec_mb_shim_chacha: the manager was set up with the key"
    );
}

one_call_aead!(ChaChaKey, "ChaCha20-Poly1305's length limit (256 GiB).");

impl ChaChaKey {
    /// Volatile writes of zeros over the key block.
    fn wipe(&mut self) {
        self.key.0.zeroize();
    }
}

impl Drop for ChaChaKey {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl core::fmt::Debug for ChaChaKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("IpsecMbChaChaKey { .. }")
    }
}

impl GcmKey {
    /// Volatile writes of zeros over the round keys and hash-key powers.
    fn wipe(&mut self) {
        self.data.bytes.zeroize();
    }
}

impl core::fmt::Debug for GcmKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("IpsecMbGcmKey { .. }")
    }
}

impl Drop for GcmKey {
    fn drop(&mut self) {
        self.wipe();
    }
}

/// Bytes reserved for the shim's `struct shim_cbc_keys` (AES round keys of both
/// directions, 240 bytes each, of which an SA fills one; the HMAC inner and outer pad
/// states, 64 bytes each): must equal `SHIM_CBC_KEY_BYTES`; the shim asserts the
/// struct fits.
const CBC_KEY_BYTES: usize = 640;

/// What the shim's CBC calls return when the calling thread has no manager (nothing
/// done): must equal `SHIM_NO_MANAGER` in the shim.
const NO_MANAGER: c_int = -2;

/// Whether this thread has its intel-ipsec-mb manager for CBC + HMAC bursts (made on
/// the thread's first burst). `false` only when the library cannot allocate or
/// initialise one (out of memory): the callers then run their portable code.
#[inline]
pub(crate) fn thread_ready() -> bool {
    // SAFETY: no arguments; the shim only reads and sets its own thread-local state.
    unsafe { ipsec_mb_shim_thread_ready() != 0 }
}

/// For tests: this thread behaves as if its manager could not be allocated
/// (`refuse`), or as before.
#[cfg(test)]
pub(crate) fn refuse_thread_manager(refuse: bool) {
    // SAFETY: sets a thread-local flag in the shim; nothing else.
    unsafe { ipsec_mb_shim_refuse_thread_manager(c_int::from(refuse)) }
}

/// Which of this thread's managers hashes a CBC + HMAC burst.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HashManager {
    /// The process's measured choice per hash and length (the shim's docs).
    Measured = 0,
    /// The manager `init_mb_mgr_auto` picked (AVX-512 code on such CPUs).
    Auto = 1,
    /// The SSE manager (SHA-NI where the CPU has it).
    Sse = 2,
}

/// For tests: from now on this thread hashes CBC + HMAC bursts on `which` manager.
#[cfg(test)]
pub(crate) fn force_hash_manager(which: HashManager) {
    // SAFETY: sets a thread-local value in the shim; nothing else.
    unsafe { ipsec_mb_shim_force_hash_manager(which as c_int) }
}

/// The longest CBC ciphertext (bytes) a seal burst may have to be encrypted by the
/// `aes` crate rather than by the library's cipher burst ([`cipher_in_crate`]).
pub(crate) const CRATE_CIPHER_MAX: usize = 224;

/// The length classes of a seal burst's longest ciphertext, by their longest (bytes);
/// each is measured with its longest.
const CRATE_CIPHER_CLASSES: [usize; 3] = [96, 160, CRATE_CIPHER_MAX];

/// Per class of [`CRATE_CIPHER_CLASSES`]: [`NOT_MEASURED`], [`CRATE_ENCRYPTS`] or
/// [`LIBRARY_ENCRYPTS`].
static CRATE_CIPHER: [AtomicU8; CRATE_CIPHER_CLASSES.len()] =
    [const { AtomicU8::new(NOT_MEASURED) }; CRATE_CIPHER_CLASSES.len()];
const NOT_MEASURED: u8 = 0;
const CRATE_ENCRYPTS: u8 = 1;
const LIBRARY_ENCRYPTS: u8 = 2;

/// The index in [`CRATE_CIPHER`] of a burst whose longest ciphertext is `len` bytes.
fn crate_cipher_class(len: usize) -> Option<usize> {
    CRATE_CIPHER_CLASSES
        .iter()
        .position(|&longest| len <= longest)
}

/// Whether a CBC + HMAC seal burst whose longest ciphertext is `longest` bytes should be
/// encrypted by the `aes` crate (the 32 packets' CBC chains side by side, AES-NI rounds
/// of all in flight) and only hashed by the library. Decided by measurement, once per
/// length class and process: the first burst of a class runs `measure(class's longest
/// ciphertext)`, which times both ways (the answer is kept for every thread; two
/// threads measuring at once both store an answer, either is good). Longer
/// ciphertexts stay on the library. On the AMD Zen 4 guest (`esp_profile encb-cbc`,
/// medians of 5 interleaved runs, ns a packet, library cipher burst against the
/// crate): 151 / 136 at 80 bytes of ciphertext, 182 / 158 at 144, 190 / 184 at 192,
/// 220 / 212 at 224, 218 / 230 at 272, 640 / 720 at 1,424. The longest ciphertext
/// decides: the crate's chains advance together, one block a step.
#[inline]
pub(crate) fn cipher_in_crate(longest: usize, measure: impl FnOnce(usize) -> bool) -> bool {
    #[cfg(test)]
    if let Some(forced) = FORCE_CRATE_CIPHER.get() {
        return forced;
    }
    let Some(class) = crate_cipher_class(longest) else {
        return false;
    };
    match CRATE_CIPHER[class].load(Ordering::Relaxed) {
        CRATE_ENCRYPTS => true,
        LIBRARY_ENCRYPTS => false,
        _ => {
            let crate_wins = measure(CRATE_CIPHER_CLASSES[class]);
            let choice = if crate_wins {
                CRATE_ENCRYPTS
            } else {
                LIBRARY_ENCRYPTS
            };
            CRATE_CIPHER[class].store(choice, Ordering::Relaxed);
            crate_wins
        }
    }
}

/// What [`cipher_in_crate`] decided for seal bursts whose longest ciphertext is `len`
/// bytes: `"aes crate"`, `"ipsec-mb"`, or `"not measured"` (no such burst yet in this
/// process). For reports.
pub(super) fn crate_cipher_choice(len: usize) -> &'static str {
    let Some(class) = crate_cipher_class(len) else {
        return "ipsec-mb";
    };
    match CRATE_CIPHER[class].load(Ordering::Relaxed) {
        CRATE_ENCRYPTS => "aes crate",
        LIBRARY_ENCRYPTS => "ipsec-mb",
        _ => "not measured",
    }
}

#[cfg(test)]
std::thread_local! {
    static FORCE_CRATE_CIPHER: core::cell::Cell<Option<bool>> =
        const { core::cell::Cell::new(None) };
}

/// For tests: this thread's CBC seal bursts are encrypted by the `aes` crate
/// (`Some(true)`), by the library (`Some(false)`), or as measured best (`None`).
#[cfg(test)]
pub(crate) fn force_crate_cipher(forced: Option<bool>) {
    FORCE_CRATE_CIPHER.set(forced);
}

/// The manager that hashes CBC + HMAC bursts of `integrity` whose messages (ESP
/// header to the end of the ciphertext) are about `len` bytes: `"sse"` (SHA-NI
/// where the CPU has it) or the architecture of the manager `init_mb_mgr_auto`
/// picked (`"avx512"`, ...), `"none"` if this thread cannot have a manager. The
/// process measures both the first time a burst of that hash and length class comes
/// (here, if none has yet): see the shim's "which manager hashes". For reports.
pub(super) fn hmac_burst_manager(integrity: super::Integrity, len: usize) -> &'static str {
    // SAFETY: plain values; the shim returns a static string (a literal or the
    // manager's architecture name from `ipsec_mb_shim_arch`).
    static_str(unsafe { ipsec_mb_shim_hash_manager(shim_hash(integrity), len as u64) })
}

/// The shim's name for an HMAC: its hash's bits (1 for SHA-1).
fn shim_hash(integrity: super::Integrity) -> u32 {
    use super::Integrity as I;
    match integrity {
        I::HmacSha1_96 => 1,
        I::HmacSha256_128 => 256,
        I::HmacSha384_192 => 384,
        I::HmacSha512_256 => 512,
    }
}

/// Most packets per shim call: must equal `SHIM_MAX_BURST` in the shim. Longer
/// bursts are cut into calls of this many.
pub(crate) const MAX_BURST: usize = 64;

/// One CBC + HMAC SA's precomputed data for intel-ipsec-mb, 64-byte aligned.
#[repr(C, align(64))]
struct CbcKeyData {
    bytes: [u8; CBC_KEY_BYTES],
}

/// The shim's `struct shim_lane`: one job.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawLane {
    esp: *const u8,
    body: *mut u8,
    tag: *mut u8,
    cipher_len: u64,
    hash_len: u64,
}

/// Up to [`MAX_BURST`] lanes for one shim call, on the stack, pushed in order; the
/// slots not pushed stay uninitialised (zeroing all 64 cost a 2.5 KiB memset per call).
struct RawLanes {
    lanes: [MaybeUninit<RawLane>; MAX_BURST],
    len: usize,
}

impl RawLanes {
    #[inline(always)]
    fn new() -> RawLanes {
        RawLanes {
            lanes: [const { MaybeUninit::uninit() }; MAX_BURST],
            len: 0,
        }
    }

    /// Appends `lane`; panics past [`MAX_BURST`] (callers push one group).
    #[inline(always)]
    fn push(&mut self, lane: RawLane) {
        self.lanes[self.len].write(lane);
        self.len += 1;
    }

    /// The lanes pushed.
    #[inline(always)]
    fn as_slice(&self) -> &[RawLane] {
        // SAFETY: the first `len` slots were written by `push` (`len` only grows
        // there, one slot at a time), and `MaybeUninit<RawLane>` has `RawLane`'s
        // layout.
        unsafe { core::slice::from_raw_parts(self.lanes.as_ptr().cast::<RawLane>(), self.len) }
    }
}

unsafe extern "C" {
    fn ipsec_mb_shim_cbc_keys(
        aes_key: *const u8,
        aes_len: usize,
        mac_key: *const u8,
        mac_len: usize,
        hash: u32,
        encrypt: c_int,
        keys_out: *mut c_void,
    ) -> c_int;
    fn ipsec_mb_shim_cbc_decrypt(
        keys: *const c_void,
        key_len: u32,
        iv: *const u8,
        data: *mut u8,
        len: u64,
    ) -> c_int;
    fn ipsec_mb_shim_thread_ready() -> c_int;
    #[cfg(test)]
    fn ipsec_mb_shim_refuse_thread_manager(refuse: c_int);
    #[cfg(test)]
    fn ipsec_mb_shim_force_hash_manager(which: c_int);
    fn ipsec_mb_shim_hash_manager(hash: u32, len: u64) -> *const c_char;
    fn ipsec_mb_shim_cbc_hmac_burst(
        keys: *const c_void,
        key_len: u32,
        hash: u32,
        tag_len: u32,
        lanes: *const RawLane,
        n: u32,
    ) -> c_int;
}

/// One packet of [`CbcHmacKeys::seal`]: `buf[esp..esp + 8]` is its ESP header, the IV
/// follows (written), then the plaintext up to `icv` (whole 16-byte blocks), CBC
/// encrypted in place; then the HMAC of `buf[esp..hash_end]` is written, truncated, at
/// `buf[icv..]`. `hash_end` is `icv`, or `icv + 4` with ESN, whose high sequence bits
/// the caller has put where the ICV goes: the library reads all of a job's message
/// before it writes its tag (DPDK's `rte_ipsec` relies on the same for ESN).
pub(crate) struct SealLane<'a> {
    pub(crate) buf: &'a mut [u8],
    pub(crate) esp: usize,
    pub(crate) icv: usize,
    pub(crate) hash_end: usize,
}

/// One packet of [`CbcHmacKeys::icvs`]: the HMAC of `buf[esp..end]`, truncated to
/// the ICV length, into `tag[..icv_len]`. The default lane is empty (a placeholder in
/// a burst's array).
#[derive(Default)]
pub(crate) struct HashLane<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) esp: usize,
    pub(crate) end: usize,
    pub(crate) tag: &'a mut [u8],
}

/// The intel-ipsec-mb data of an AES-CBC + HMAC SA (feature `ipsec-mb`): AES round
/// keys of the SA's direction (expanded by `IMB_AES_KEYEXP_128/256`) and the HMAC
/// inner and outer pad states (`IMB_SHA*_ONE_BLOCK`), computed once when the SA is
/// made, boxed (64-byte aligned, never moved) and overwritten with zeros on drop.
///
/// Bursts go through a manager per thread, made on the thread's first burst and freed
/// when it exits (see the shim): submitting jobs changes the manager (its multi-buffer
/// lanes), so threads cannot share one; each call completes all its jobs, so a manager
/// keeps nothing of one call for the next. The keys are only read, so an SA (or
/// several SAs) may be used from any thread.
pub(crate) struct CbcHmacKeys {
    data: Box<CbcKeyData>,
    key_len: u32,
    hash: u32,
    tag_len: u32,
}

impl CbcHmacKeys {
    /// Precomputes an SA's data: `aes_key` of 16 or 32 bytes (checked by the caller),
    /// `mac_key` of `integrity`'s length, `encrypt` for an outbound SA. Errors: a
    /// manager the library could not set up.
    pub(crate) fn new(
        aes_key: &[u8],
        integrity: super::Integrity,
        mac_key: &[u8],
        encrypt: bool,
    ) -> Result<CbcHmacKeys, ConfigError> {
        assert!(
            aes_key.len() == 16 || aes_key.len() == 32,
            "key length checked"
        );
        assert_eq!(mac_key.len(), integrity.key_len(), "key length checked");
        init()?;
        let hash = shim_hash(integrity);
        let mut data = Box::new(CbcKeyData {
            bytes: [0; CBC_KEY_BYTES],
        });
        // SAFETY: `aes_key` and `mac_key` are readable for the lengths passed (16 or
        // 32, and at most one hash block: RFC 2404/4868 keys are the digest length,
        // which the shim checks against the block); `data.bytes` is a live, exclusively
        // borrowed, 64-byte aligned buffer of CBC_KEY_BYTES, at least
        // sizeof(struct shim_cbc_keys) (the shim's static assertion); `init` succeeded,
        // so the shim has its process manager, whose key functions it only calls.
        let rc = unsafe {
            ipsec_mb_shim_cbc_keys(
                aes_key.as_ptr(),
                aes_key.len(),
                mac_key.as_ptr(),
                mac_key.len(),
                hash,
                c_int::from(encrypt),
                data.bytes.as_mut_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "ipsec_mb_shim_cbc_keys: lengths and manager checked");
        Ok(CbcHmacKeys {
            data,
            key_len: aes_key.len() as u32,
            hash,
            tag_len: integrity.icv_len() as u32,
        })
    }

    /// Runs up to [`MAX_BURST`] jobs through this thread's manager, which the caller
    /// has checked exists ([`thread_ready`]).
    fn run(&self, lanes: &[RawLane]) {
        debug_assert!(lanes.len() <= MAX_BURST);
        // SAFETY: `self.data` holds the data the shim computed for this key length
        // and hash (only read); every lane was built by `seal` or `icvs` from a live
        // borrow that outlives this call, with the bounds checked there: `esp` readable
        // for `hash_len` bytes, `body` (if not null) readable and writable for
        // `cipher_len` bytes (a non-zero multiple of 16, the IV's 16 bytes in front of
        // it), `tag` writable for `tag_len` bytes. The shim completes (flushes) every
        // job before it returns, so no pointer outlives the call; the manager it uses
        // belongs to this thread alone.
        let rc = unsafe {
            ipsec_mb_shim_cbc_hmac_burst(
                self.data.bytes.as_ptr().cast(),
                self.key_len,
                self.hash,
                self.tag_len,
                lanes.as_ptr(),
                lanes.len() as u32,
            )
        };
        assert_eq!(
            rc, 0,
            "intel-ipsec-mb refused a CBC + HMAC burst (a job the caller checked, or no manager on a thread that had one)"
        );
    }

    /// CBC-encrypts and authenticates every lane (see [`SealLane`]), [`MAX_BURST`]
    /// per call, on this thread's manager (the caller checked [`thread_ready`]).
    /// Panics on a lane whose offsets are out of bounds or not block aligned (the
    /// ESP code never makes one).
    pub(crate) fn seal(&self, lanes: &mut [SealLane<'_>]) {
        let tag_len = self.tag_len as usize;
        for group in lanes.chunks_mut(MAX_BURST) {
            let mut raw = RawLanes::new();
            for l in group.iter_mut() {
                let SealLane {
                    buf,
                    esp,
                    icv,
                    hash_end,
                } = l;
                let (esp, icv, hash_end) = (*esp, *icv, *hash_end);
                let body = esp + 24;
                assert!(
                    body < icv
                        && (icv - body).is_multiple_of(16)
                        && icv <= hash_end
                        && hash_end <= icv + tag_len
                        && icv + tag_len <= buf.len(),
                    "CBC + HMAC lane out of bounds"
                );
                // All three pointers from one raw pointer of the exclusive borrow.
                let p = buf.as_mut_ptr();
                // SAFETY: esp < body < icv < buf.len(), checked above.
                raw.push(unsafe {
                    RawLane {
                        esp: p.add(esp).cast_const(),
                        body: p.add(body),
                        tag: p.add(icv),
                        cipher_len: (icv - body) as u64,
                        hash_len: (hash_end - esp) as u64,
                    }
                });
            }
            self.run(raw.as_slice());
        }
    }

    /// Computes the truncated HMAC of every lane (see [`HashLane`]), [`MAX_BURST`]
    /// per call, on this thread's manager (the caller checked [`thread_ready`]).
    /// Panics on a lane out of bounds or a tag buffer shorter than the ICV.
    pub(crate) fn icvs(&self, lanes: &mut [HashLane<'_>]) {
        let tag_len = self.tag_len as usize;
        for group in lanes.chunks_mut(MAX_BURST) {
            let mut raw = RawLanes::new();
            for l in group.iter_mut() {
                assert!(
                    l.esp <= l.end && l.end <= l.buf.len() && l.tag.len() >= tag_len,
                    "HMAC lane out of bounds"
                );
                raw.push(RawLane {
                    esp: l.buf[l.esp..].as_ptr(),
                    body: core::ptr::null_mut(),
                    tag: l.tag.as_mut_ptr(),
                    cipher_len: 0,
                    hash_len: (l.end - l.esp) as u64,
                });
            }
            self.run(raw.as_slice());
        }
    }

    /// CBC-decrypts `data` (whole blocks, not empty) in place under `iv`, with the
    /// decryption round keys of an inbound SA's data, on this thread's manager;
    /// `false` (nothing done) if this thread cannot have one. Panics on a length that
    /// is not a non-zero multiple of 16.
    #[must_use]
    pub(crate) fn decrypt(&self, iv: &[u8; 16], data: &mut [u8]) -> bool {
        assert!(
            !data.is_empty() && data.len().is_multiple_of(16),
            "CBC input is whole blocks"
        );
        // SAFETY: `self.data` holds the decryption round keys for `key_len` (only
        // read); `iv` is 16 readable bytes and `data` readable and writable for its
        // length, a non-zero multiple of 16 (checked), in place (out == in, which the
        // library allows). The shim completes the job before it returns, on a manager
        // of this thread alone (or does nothing if the thread has none).
        let rc = unsafe {
            ipsec_mb_shim_cbc_decrypt(
                self.data.bytes.as_ptr().cast(),
                self.key_len,
                iv.as_ptr(),
                data.as_mut_ptr(),
                data.len() as u64,
            )
        };
        if rc == NO_MANAGER {
            return false;
        }
        assert_eq!(
            rc, 0,
            "intel-ipsec-mb refused a CBC decryption the caller checked"
        );
        true
    }

    /// Volatile writes of zeros over the round keys and pads.
    fn wipe(&mut self) {
        self.data.bytes.zeroize();
    }
}

impl core::fmt::Debug for CbcHmacKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("IpsecMbCbcHmacKeys { .. }")
    }
}

impl Drop for CbcHmacKeys {
    fn drop(&mut self) {
        self.wipe();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The manager comes up and reports the linked library and its choice.
    #[test]
    fn manager_initialises_and_reports() {
        let (version, arch) = library_info().expect("manager");
        assert!(version.starts_with('1'), "{version}");
        assert_ne!(arch, "none");
    }

    /// Dropping a key wipes its expanded key data.
    #[test]
    fn key_data_is_wiped_on_drop() {
        let mut k = GcmKey::new(&[0x42; 16]).expect("key");
        assert!(k.data.bytes.iter().any(|&b| b != 0));
        // Run the wipe Drop runs on the live box, then look at it.
        k.wipe();
        assert!(k.data.bytes.iter().all(|&b| b == 0));
    }

    /// IVs from a counter, so that two SAs draw the same ones.
    struct CountingIv(u128);

    impl super::super::IvSource for CountingIv {
        fn fill_iv(&mut self, iv: &mut [u8; 16]) {
            self.0 = self
                .0
                .wrapping_add(0x0101_0101_0101_0101_0101_0101_0101_0103);
            *iv = self.0.to_be_bytes();
        }
    }

    /// An IPv4 packet of `n` bytes (10.0.0.5 -> 10.1.2.3, protocol 253).
    fn inner(n: usize) -> Vec<u8> {
        let mut p = vec![0x5a; n];
        p[..20].copy_from_slice(&[
            0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 253, 0, 0, 10, 0, 0, 5, 10, 1, 2, 3,
        ]);
        p[2..4].copy_from_slice(&(n as u16).to_be_bytes());
        let c = crate::packet::internet_checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    const ROOM: usize = 96;

    /// Runs `f` on PacketBufs over `bufs`, each holding `lens[i]` bytes at ROOM.
    fn with_packets(
        bufs: &mut [Vec<u8>],
        spans: &mut [(usize, usize)],
        f: impl FnOnce(&mut [crate::PacketBuf<'_>]) -> usize,
    ) -> usize {
        let mut pkts: Vec<crate::PacketBuf<'_>> = bufs
            .iter_mut()
            .zip(spans.iter())
            .map(|(b, &(off, len))| crate::PacketBuf::new(b, off, len).expect("buf"))
            .collect();
        let ok = f(&mut pkts);
        for (p, span) in pkts.iter().zip(spans.iter_mut()) {
            *span = (p.offset(), p.len());
        }
        ok
    }

    /// How a test thread runs CBC + HMAC bursts.
    #[derive(Clone, Copy, Debug)]
    enum BurstCode {
        /// As if no manager could be allocated: the portable code.
        Portable,
        /// The library, hashing on the given manager; seals encrypted by the
        /// library's cipher bursts (`Some(false)`), the `aes` crate's chains
        /// (`Some(true)`) or as chosen for the length (`None`).
        Library(HashManager, Option<bool>),
    }

    const BURST_CODES: [BurstCode; 6] = [
        BurstCode::Portable,
        BurstCode::Library(HashManager::Measured, None),
        BurstCode::Library(HashManager::Auto, Some(false)),
        BurstCode::Library(HashManager::Sse, Some(false)),
        BurstCode::Library(HashManager::Auto, Some(true)),
        BurstCode::Library(HashManager::Sse, Some(true)),
    ];

    /// Runs `f` on this thread with bursts on `code`, then puts the thread back.
    fn with_burst_code<R>(code: BurstCode, f: impl FnOnce() -> R) -> R {
        match code {
            BurstCode::Portable => refuse_thread_manager(true),
            BurstCode::Library(m, c) => {
                force_hash_manager(m);
                force_crate_cipher(c);
            }
        }
        let r = f();
        refuse_thread_manager(false);
        force_hash_manager(HashManager::Measured);
        force_crate_cipher(None);
        r
    }

    /// CBC + HMAC bursts give the same bytes whichever code runs them: the portable
    /// code (on a thread whose manager cannot be allocated, which must not panic), and
    /// the library hashing on its auto manager, on its SSE manager (SHA-NI), or on the
    /// one measured faster; each opens what the others sealed, a tampered packet
    /// refused. Every HMAC, packets from 40 bytes to 3 KiB (every length class of the
    /// hash-manager choice).
    #[test]
    fn cbc_bursts_agree_on_every_code_path() {
        use crate::{Cipher, Direction, Error, Integrity, Mode, SaConfig, SecurityAssociation};
        use core::time::Duration;
        let t0 = Duration::ZERO;
        for integrity in [
            Integrity::HmacSha1_96,
            Integrity::HmacSha256_128,
            Integrity::HmacSha384_192,
            Integrity::HmacSha512_256,
        ] {
            let make = |dir| {
                let mut c =
                    SaConfig::new(0x4242, dir, Mode::Tunnel, Cipher::Aes256Cbc, &[0x21; 32]);
                c.integrity(integrity, &vec![0x43; integrity.key_len()]);
                if dir == Direction::Outbound {
                    c.tunnel(
                        "192.0.2.1".parse().expect("ip"),
                        "192.0.2.2".parse().expect("ip"),
                    );
                    c.iv_source(Box::new(CountingIv(7)));
                }
                SecurityAssociation::new(c, t0).expect("SA")
            };
            let plains: Vec<Vec<u8>> = (0..40).map(|i| inner(40 + i * 77)).collect();
            let fresh = || -> (Vec<Vec<u8>>, Vec<(usize, usize)>) {
                let bufs = plains
                    .iter()
                    .map(|p| {
                        let mut b = vec![0u8; ROOM + p.len() + 96];
                        b[ROOM..ROOM + p.len()].copy_from_slice(p);
                        b
                    })
                    .collect();
                (bufs, plains.iter().map(|p| (ROOM, p.len())).collect())
            };
            let wire = |(bufs, spans): &(Vec<Vec<u8>>, Vec<(usize, usize)>)| -> Vec<Vec<u8>> {
                bufs.iter()
                    .zip(spans)
                    .map(|(b, &(o, l))| b[o..o + l].to_vec())
                    .collect()
            };
            // Seal the same packets on every code path.
            let mut sealed = Vec::new();
            for code in BURST_CODES {
                let mut out = make(Direction::Outbound);
                let (mut bufs, mut spans) = fresh();
                let mut res = vec![Ok(()); plains.len()];
                let ok = with_burst_code(code, || {
                    with_packets(&mut bufs, &mut spans, |p| {
                        out.encrypt_burst(p, &mut res, t0)
                    })
                });
                assert_eq!(ok, plains.len(), "{integrity:?} {code:?}");
                sealed.push(wire(&(bufs, spans)));
            }
            for (code, s) in BURST_CODES.iter().zip(&sealed) {
                assert!(
                    *s == sealed[0],
                    "{integrity:?} {code:?}: not the same bytes"
                );
            }
            // Open on every code path what the next one sealed; one packet tampered.
            for (k, code) in BURST_CODES.into_iter().enumerate() {
                let mut inb = make(Direction::Inbound);
                let mut bufs = sealed[(k + 1) % sealed.len()].clone();
                bufs[3][30] ^= 1;
                let mut spans: Vec<(usize, usize)> = bufs.iter().map(|b| (0, b.len())).collect();
                let mut res = vec![Ok(()); bufs.len()];
                let (ok, singles) = with_burst_code(code, || {
                    let ok = with_packets(&mut bufs[..20], &mut spans[..20], |p| {
                        inb.decrypt_burst(p, &mut res[..20], t0)
                    });
                    // The rest one at a time (from 256 bytes the library's decryption).
                    let mut singles = 0;
                    for (b, span) in bufs[20..].iter_mut().zip(&mut spans[20..]) {
                        let n = b.len();
                        let mut p = crate::PacketBuf::new(b, 0, n).expect("buf");
                        singles += usize::from(inb.decrypt(&mut p, t0).is_ok());
                        *span = (p.offset(), p.len());
                    }
                    (ok, singles)
                });
                assert_eq!((ok, singles), (19, 20), "{integrity:?} {code:?}");
                assert_eq!(res[3], Err(Error::AuthenticationFailed));
                for (i, ((b, &(o, l)), plain)) in bufs.iter().zip(&spans).zip(&plains).enumerate() {
                    if i != 3 {
                        assert!(
                            b[o..o + l] == plain[..],
                            "{integrity:?} {code:?} packet {i}"
                        );
                    }
                }
            }
        }
    }

    /// The manager chosen for each hash and length class is one of the two measured,
    /// and asking again gives the same answer (measured once per process).
    #[test]
    fn hash_manager_choice_is_measured_once() {
        use super::super::Integrity;
        let (_, arch) = library_info().expect("manager");
        for integrity in [Integrity::HmacSha1_96, Integrity::HmacSha512_256] {
            for len in [64, 200, 400, 900, 1500, 4000] {
                let first = hmac_burst_manager(integrity, len);
                assert!(
                    first == "sse" || first == arch,
                    "{integrity:?} {len}: {first}"
                );
                assert_eq!(hmac_burst_manager(integrity, len), first);
            }
        }
        // A forced manager is the one that hashes (the test of every code path
        // relies on it).
        if arch != "sse" {
            for (which, name) in [(HashManager::Sse, "sse"), (HashManager::Auto, arch)] {
                let got = with_burst_code(BurstCode::Library(which, None), || {
                    hmac_burst_manager(Integrity::HmacSha256_128, 100)
                });
                assert_eq!(got, name);
            }
        }
    }

    /// The CBC seal cipher of each length class is measured on the first burst of
    /// the class (with the SA's keys) and kept: the report names one of the two ways
    /// after a burst, the same again; beyond the crate's limit it is the library's.
    #[test]
    fn seal_cipher_choice_is_measured_once() {
        use crate::{Cipher, Direction, Integrity, Mode, SaConfig, SecurityAssociation};
        use core::time::Duration;
        let t0 = Duration::ZERO;
        let mut c = SaConfig::new(
            0x7700,
            Direction::Outbound,
            Mode::Tunnel,
            Cipher::Aes128Cbc,
            &[3; 16],
        );
        c.integrity(Integrity::HmacSha256_128, &[5; 32]);
        c.tunnel(
            "192.0.2.1".parse().expect("ip"),
            "192.0.2.2".parse().expect("ip"),
        );
        let mut out = SecurityAssociation::new(c, t0).expect("SA");
        for (size, ciphertext) in [(64, 80), (120, 144), (200, 208)] {
            let plain = inner(size);
            let mut bufs: Vec<Vec<u8>> = (0..32)
                .map(|_| {
                    let mut b = vec![0u8; ROOM + size + 96];
                    b[ROOM..ROOM + size].copy_from_slice(&plain);
                    b
                })
                .collect();
            let mut spans = vec![(ROOM, size); 32];
            let mut res = vec![Ok(()); 32];
            let ok = with_packets(&mut bufs, &mut spans, |p| {
                out.encrypt_burst(p, &mut res, t0)
            });
            assert_eq!(ok, 32);
            let first = crate_cipher_choice(ciphertext);
            assert!(
                first == "aes crate" || first == "ipsec-mb",
                "{size}: {first}"
            );
            assert_eq!(crate_cipher_choice(ciphertext), first);
        }
        assert_eq!(crate_cipher_choice(CRATE_CIPHER_MAX + 16), "ipsec-mb");
    }

    /// Memory that ends where an unmapped page begins: a read or write past a slice
    /// taken from its end faults (the test process dies), so a test passes only if the
    /// library touches no byte beyond what it was given.
    struct GuardedPage {
        base: *mut u8,
        page: usize,
    }

    impl GuardedPage {
        fn new() -> GuardedPage {
            // SAFETY: sysconf takes a constant and has no other effect.
            let page =
                usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("page size");
            // SAFETY: an anonymous private mapping of two fresh pages, checked below;
            // then the second page made inaccessible.
            let base = unsafe {
                let base = libc::mmap(
                    core::ptr::null_mut(),
                    2 * page,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert_ne!(base, libc::MAP_FAILED, "mmap");
                let guard = base.cast::<u8>().add(page).cast();
                assert_eq!(libc::mprotect(guard, page, libc::PROT_NONE), 0, "mprotect");
                base.cast::<u8>()
            };
            GuardedPage { base, page }
        }

        /// The last `n` bytes before the unmapped page, filled with `fill`.
        fn tail(&mut self, n: usize, fill: u8) -> &mut [u8] {
            assert!(n <= self.page);
            // SAFETY: the first page is mapped readable and writable and owned by
            // `self`, borrowed exclusively for the slice's life; `n` fits in it.
            let tail = unsafe { core::slice::from_raw_parts_mut(self.base.add(self.page - n), n) };
            tail.fill(fill);
            tail
        }
    }

    impl Drop for GuardedPage {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`, unmapped once; no slice of it lives on
            // (each borrowed `self`).
            unsafe { libc::munmap(self.base.cast(), 2 * self.page) };
        }
    }

    /// Lengths of data that cover every way the library's code splits a message
    /// (blocks of 16 to 512 bytes, their remainders) and ESP's sizes.
    fn probe_lengths() -> impl Iterator<Item = usize> {
        (0..=520).chain(1400..=1440)
    }

    /// intel-ipsec-mb reads no byte of a ChaCha20-Poly1305 key block, AAD or data
    /// beyond them, nor of AES-GCM AAD or data, whichever manager the CPU gets (each
    /// placed right before an unmapped page in turn; a stray read kills the test).
    /// The key block's size is what 1.3's AVX2 code needs (it reads 48 bytes of a
    /// 32-byte key); the answers are checked against a reference as well, so the
    /// placement changed nothing else.
    #[test]
    fn library_reads_only_what_it_is_given() {
        use aes_gcm::aead::KeyInit;
        init().expect("manager");
        let mut guard = GuardedPage::new();
        let nonce = Nonce::from([9; 12]);
        let mut block = [0u8; CHACHA_KEY_BLOCK];
        block[..32].fill(0x61);
        let reference =
            chacha20poly1305::ChaCha20Poly1305::new_from_slice(&block[..32]).expect("key");
        for aad_len in [0, 8, 12, 13] {
            let aad = vec![0xaa; aad_len];
            for len in probe_lengths() {
                let mut expect = vec![0x55; len];
                let expect_tag = super::super::rc_seal(&reference, [9; 12], &aad, &mut expect);
                // The key block against the guard.
                let k: &[u8; CHACHA_KEY_BLOCK] = {
                    let k = guard.tail(CHACHA_KEY_BLOCK, 0);
                    k.copy_from_slice(&block);
                    (&*k).try_into().expect("block")
                };
                let (mut data, mut tag) = (vec![0x55; len], [0u8; 16]);
                chacha_call(k, true, nonce, &aad, &mut data, &mut tag);
                assert!(data == expect && tag == expect_tag, "key {aad_len} {len}");
                chacha_call(k, false, nonce, &aad, &mut data, &mut tag);
                assert!(data.iter().all(|&b| b == 0x55) && tag == expect_tag);
                // The AAD against the guard.
                let a = guard.tail(aad_len, 0xaa);
                let (mut data, mut tag) = (vec![0x55; len], [0u8; 16]);
                chacha_call(&block, true, nonce, a, &mut data, &mut tag);
                assert!(data == expect && tag == expect_tag, "AAD {aad_len} {len}");
                // The data against the guard.
                let d = guard.tail(len, 0x55);
                chacha_call(&block, true, nonce, &aad, d, &mut tag);
                assert!(d == expect && tag == expect_tag, "data {aad_len} {len}");
                chacha_call(&block, false, nonce, &aad, d, &mut tag);
                assert!(d.iter().all(|&b| b == 0x55) && tag == expect_tag);
            }
        }
        for key_len in [16, 32] {
            let key = GcmKey::new(&vec![0x3c; key_len]).expect("key");
            let rc128 = aes_gcm::Aes128Gcm::new_from_slice(&[0x3c; 16]).expect("key");
            let rc256 = aes_gcm::Aes256Gcm::new_from_slice(&[0x3c; 32]).expect("key");
            let reference = |aad: &[u8], data: &mut [u8]| {
                if key_len == 16 {
                    super::super::rc_seal(&rc128, [9; 12], aad, data)
                } else {
                    super::super::rc_seal(&rc256, [9; 12], aad, data)
                }
            };
            for aad_len in [0, 8, 12, 13] {
                for len in probe_lengths() {
                    let mut expect = vec![0x55; len];
                    let aad = vec![0xaa; aad_len];
                    let expect_tag = reference(&aad, &mut expect);
                    let mut data = vec![0x55; len];
                    let tag = key.seal([9; 12], guard.tail(aad_len, 0xaa), &mut data);
                    assert!(data == expect && tag == expect_tag, "GCM aad {len}");
                    let d = guard.tail(len, 0x55);
                    let tag = key.seal([9; 12], &aad, d);
                    assert!(d == expect && tag == expect_tag, "GCM data {len}");
                    assert!(key.open([9; 12], &aad, d, &tag), "GCM open {len}");
                    assert!(d.iter().all(|&b| b == 0x55), "GCM opened {len}");
                }
            }
        }
    }

    /// ESP packets whose buffers end right before an unmapped page: sealed (the
    /// buffer exactly as long as the ESP packet) and opened (the buffer exactly the
    /// packet), in bursts of 40 and one at a time, on every code path of the CBC +
    /// HMAC bursts, AES-GCM and ChaCha20-Poly1305 too. A read or write past a packet
    /// kills the test; each sealed packet must open on an SA in ordinary memory and
    /// each packet sealed there must open here, to the same plaintext.
    #[test]
    fn esp_packets_ending_a_page_are_touched_no_further() {
        use crate::{Cipher, Direction, Integrity, Mode, SaConfig, SecurityAssociation};
        use core::time::Duration;
        let t0 = Duration::ZERO;
        let suites = [
            (Cipher::Aes128Gcm, None),
            (Cipher::Aes256Gcm, None),
            (Cipher::ChaCha20Poly1305, None),
            (Cipher::Aes128Cbc, Some(Integrity::HmacSha256_128)),
            (Cipher::Aes256Cbc, Some(Integrity::HmacSha1_96)),
            (Cipher::Aes256Cbc, Some(Integrity::HmacSha512_256)),
        ];
        let plains: Vec<Vec<u8>> = (0..40).map(|i| inner(40 + i * 37)).collect();
        for (cipher, integrity) in suites {
            let make = |dir| {
                let key = vec![0x21; cipher.key_len()];
                let mut c = SaConfig::new(0x4343, dir, Mode::Tunnel, cipher, &key);
                if let Some(integrity) = integrity {
                    c.integrity(integrity, &vec![0x43; integrity.key_len()]);
                }
                if dir == Direction::Outbound {
                    c.tunnel(
                        "192.0.2.1".parse().expect("ip"),
                        "192.0.2.2".parse().expect("ip"),
                    );
                }
                SecurityAssociation::new(c, t0).expect("SA")
            };
            let codes: &[BurstCode] = if integrity.is_some() {
                &BURST_CODES
            } else {
                &BURST_CODES[..1]
            };
            for &code in codes {
                with_burst_code(code, || {
                    // Sealed in ordinary memory, to learn each ESP packet's place.
                    let mut out = make(Direction::Outbound);
                    let mut bufs: Vec<Vec<u8>> = plains
                        .iter()
                        .map(|p| {
                            let mut b = vec![0u8; ROOM + p.len() + 96];
                            b[ROOM..ROOM + p.len()].copy_from_slice(p);
                            b
                        })
                        .collect();
                    let mut spans: Vec<(usize, usize)> =
                        plains.iter().map(|p| (ROOM, p.len())).collect();
                    let mut res = vec![Ok(()); plains.len()];
                    let ok = with_packets(&mut bufs, &mut spans, |p| {
                        out.encrypt_burst(p, &mut res, t0)
                    });
                    assert_eq!(ok, plains.len(), "{cipher:?} {code:?}");
                    let wire: Vec<Vec<u8>> = bufs
                        .iter()
                        .zip(&spans)
                        .map(|(b, &(o, l))| b[o..o + l].to_vec())
                        .collect();
                    // Sealed again, each buffer ending where its ESP packet ends.
                    let mut pages: Vec<GuardedPage> =
                        plains.iter().map(|_| GuardedPage::new()).collect();
                    let mut pkts: Vec<crate::PacketBuf<'_>> = pages
                        .iter_mut()
                        .zip(&plains)
                        .zip(&spans)
                        .map(|((g, p), &(o, l))| {
                            let b = g.tail(o + l, 0);
                            b[ROOM..ROOM + p.len()].copy_from_slice(p);
                            crate::PacketBuf::new(b, ROOM, p.len()).expect("buf")
                        })
                        .collect();
                    let mut out = make(Direction::Outbound);
                    let (burst, single) = pkts.split_at_mut(20);
                    assert_eq!(out.encrypt_burst(burst, &mut res[..20], t0), 20);
                    for p in single.iter_mut() {
                        out.encrypt(p, t0).expect("seal at a page's end");
                    }
                    let mut inb = make(Direction::Inbound);
                    for (p, plain) in pkts.iter().zip(&plains) {
                        let mut b = p.data().to_vec();
                        let n = b.len();
                        let mut q = crate::PacketBuf::new(&mut b, 0, n).expect("buf");
                        inb.decrypt(&mut q, t0).expect("opens in ordinary memory");
                        assert!(q.data() == &plain[..], "{cipher:?} {code:?}");
                    }
                    drop(pkts);
                    // Opened with each ESP packet filling its buffer to a page's end.
                    let mut inb = make(Direction::Inbound);
                    let mut pkts: Vec<crate::PacketBuf<'_>> = pages
                        .iter_mut()
                        .zip(&wire)
                        .map(|(g, w)| {
                            let b = g.tail(w.len(), 0);
                            b.copy_from_slice(w);
                            crate::PacketBuf::new(b, 0, w.len()).expect("buf")
                        })
                        .collect();
                    let (burst, single) = pkts.split_at_mut(20);
                    assert_eq!(inb.decrypt_burst(burst, &mut res[..20], t0), 20);
                    for p in single.iter_mut() {
                        inb.decrypt(p, t0).expect("open at a page's end");
                    }
                    for (p, plain) in pkts.iter().zip(&plains) {
                        assert!(p.data() == &plain[..], "{cipher:?} {code:?}");
                    }
                });
            }
        }
    }

    /// Dropping CBC + HMAC data wipes its round keys and pads.
    #[test]
    fn cbc_key_data_is_wiped_on_drop() {
        let mut k = CbcHmacKeys::new(
            &[0x42; 32],
            super::super::Integrity::HmacSha384_192,
            &[7; 48],
            true,
        )
        .expect("keys");
        assert!(k.data.bytes.iter().any(|&b| b != 0));
        k.wipe();
        assert!(k.data.bytes.iter().all(|&b| b == 0));
    }
}
