/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * Plain C functions over intel-ipsec-mb's AES-GCM direct API, for ipsec-core's
 * optional `ipsec-mb` backend (src/crypto/ipsec_mb.rs). Compiled by build.rs only
 * when that feature is on; linked with -lIPSec_MB.
 *
 * intel-ipsec-mb's API is macros over function pointers in an IMB_MGR, which Rust
 * cannot call directly; these functions expand the macros, and hand Rust the
 * manager's single-call GCM function pointers, which it calls per packet.
 *
 * Threading. One manager per process, allocated and initialised once
 * (pthread_once) by ipsec_mb_shim_init(). After that it is only read: the one-call
 * GCM functions (IMB_AES*_GCM_PRE / _ENC / _DEC) take the manager for its function
 * pointers alone and keep all per-call state in the gcm_context_data they are given,
 * which the Rust caller keeps on its stack, one per call. Their key data is only read
 * by ENC/DEC. (With the library's parameter checks compiled in, they also store to
 * a process-wide `volatile int imb_errno` - only when its value changes, which
 * never happens for valid arguments, which the Rust side guarantees.)
 *
 * The context holds the GHASH state and keystream bytes of the call; the Rust side
 * wipes it after every call.
 */
#include <intel-ipsec-mb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#if !defined(IMB_VERSION_NUM) || IMB_VERSION_NUM < 0x10000
#error "ipsec-core's ipsec-mb backend needs intel-ipsec-mb 1.0 or newer"
#endif

/* Must match KEY_DATA_BYTES / KEY_DATA_ALIGN / CONTEXT_WORDS in src/crypto/ipsec_mb.rs. */
#define SHIM_KEY_DATA_BYTES 1008
#define SHIM_KEY_DATA_ALIGN 64
#define SHIM_CONTEXT_BYTES 88
_Static_assert(sizeof(struct gcm_context_data) == SHIM_CONTEXT_BYTES &&
                   _Alignof(struct gcm_context_data) <= 8,
               "struct gcm_context_data changed: update CONTEXT_WORDS on the Rust side");
_Static_assert(sizeof(struct gcm_key_data) <= SHIM_KEY_DATA_BYTES,
               "struct gcm_key_data grew: raise KEY_DATA_BYTES on both sides");
_Static_assert(_Alignof(struct gcm_key_data) <= SHIM_KEY_DATA_ALIGN,
               "struct gcm_key_data needs more alignment");

static pthread_once_t once = PTHREAD_ONCE_INIT;
static _Atomic(IMB_MGR *) manager;
static int init_error;

static void init_once(void) {
    IMB_MGR *m = alloc_mb_mgr(0);
    if (m == NULL) {
        init_error = imb_get_errno(NULL);
        if (init_error == 0)
            init_error = -1;
        return;
    }
    IMB_ARCH arch;
    init_mb_mgr_auto(m, &arch);
    int err = imb_get_errno(m);
    if (err != 0) {
        free_mb_mgr(m);
        init_error = err;
        return;
    }
    atomic_store_explicit(&manager, m, memory_order_release);
}

/* Initialises the process's manager once. 0 on success, else the library's error
 * number (or -1); the same answer on every call. */
int ipsec_mb_shim_init(void) {
    if (pthread_once(&once, init_once) != 0)
        return -1;
    return atomic_load_explicit(&manager, memory_order_acquire) != NULL ? 0 : init_error;
}

/* The library's text for an error number from ipsec_mb_shim_init. */
const char *ipsec_mb_shim_strerror(int err) {
    return err > 0 ? imb_get_strerror(err) : "alloc_mb_mgr failed";
}

/* The manager's architecture name ("sse", "avx2", "avx512", ...), or "none". */
const char *ipsec_mb_shim_arch(void) {
    IMB_MGR *m = atomic_load_explicit(&manager, memory_order_acquire);
    if (m == NULL)
        return "none";
    switch (m->used_arch) {
    case IMB_ARCH_NOAESNI: return "noaesni";
    case IMB_ARCH_SSE: return "sse";
    case IMB_ARCH_AVX: return "avx";
    case IMB_ARCH_AVX2: return "avx2";
    case IMB_ARCH_AVX512: return "avx512";
    default: return "unknown";
    }
}

/* The library's version string. */
const char *ipsec_mb_shim_version(void) { return imb_get_version_str(); }

/* Expands an AES-128 (key_len 16) or AES-256 (key_len 32) key into `key_data`
 * (SHIM_KEY_DATA_BYTES bytes, SHIM_KEY_DATA_ALIGN-aligned). Requires a successful
 * ipsec_mb_shim_init(). 0 on success, -1 on a bad length or no manager. */
int ipsec_mb_shim_gcm_pre(const uint8_t *key, size_t key_len, void *key_data) {
    IMB_MGR *m = atomic_load_explicit(&manager, memory_order_acquire);
    if (m == NULL)
        return -1;
    struct gcm_key_data *k = key_data;
    switch (key_len) {
    case 16: IMB_AES128_GCM_PRE(m, key, k); return 0;
    case 32: IMB_AES256_GCM_PRE(m, key, k); return 0;
    default: return -1;
    }
}

/* The manager's one-call AES-GCM encrypt and decrypt functions for a key of `key_len`
 * bytes (16 or 32), for Rust to call directly: the library function itself, with no
 * shim frame per packet. Requires a successful ipsec_mb_shim_init(). 0 on success, -1
 * on a bad length or no manager. */
int ipsec_mb_shim_gcm_fns(size_t key_len, aes_gcm_enc_dec_t *enc, aes_gcm_enc_dec_t *dec) {
    IMB_MGR *m = atomic_load_explicit(&manager, memory_order_acquire);
    if (m == NULL)
        return -1;
    switch (key_len) {
    case 16: *enc = m->gcm128_enc; *dec = m->gcm128_dec; return 0;
    case 32: *enc = m->gcm256_enc; *dec = m->gcm256_dec; return 0;
    default: return -1;
    }
}

/* ChaCha20-Poly1305 (RFC 8439) through the library's direct API, which 1.3 offers as
 * init / update / finalize only (no single call): one packet, in place. `encrypt`
 * non-zero encrypts, else decrypts; either way the 16-byte tag computed over `aad` and
 * the ciphertext goes to `tag` (the caller compares it when decrypting). `key` is the
 * raw 32-byte key (the library expands nothing for ChaCha20). `ctx` is the caller's
 * SHIM_CHACHA_CONTEXT_BYTES of scratch for the call's state (Poly1305 key, keystream
 * bytes), which the caller wipes afterwards. Like the GCM functions these only read
 * the manager. Requires a successful ipsec_mb_shim_init(). 0 on success, -1 with no
 * manager. */
#define SHIM_CHACHA_CONTEXT_BYTES 192
_Static_assert(sizeof(struct chacha20_poly1305_context_data) == SHIM_CHACHA_CONTEXT_BYTES &&
                   _Alignof(struct chacha20_poly1305_context_data) <= 8,
               "struct chacha20_poly1305_context_data changed: update CHACHA_CONTEXT_WORDS "
               "on the Rust side");

int ipsec_mb_shim_chacha(int encrypt, const uint8_t *key, void *ctx, const uint8_t *iv,
                         const uint8_t *aad, uint64_t aad_len, uint8_t *data, uint64_t len,
                         uint8_t *tag) {
    IMB_MGR *m = atomic_load_explicit(&manager, memory_order_acquire);
    if (m == NULL)
        return -1;
    struct chacha20_poly1305_context_data *c = ctx;
    IMB_CHACHA20_POLY1305_INIT(m, key, c, iv, aad, aad_len);
    if (encrypt) {
        IMB_CHACHA20_POLY1305_ENC_UPDATE(m, key, c, data, data, len);
        IMB_CHACHA20_POLY1305_ENC_FINALIZE(m, c, tag, 16);
    } else {
        IMB_CHACHA20_POLY1305_DEC_UPDATE(m, key, c, data, data, len);
        IMB_CHACHA20_POLY1305_DEC_FINALIZE(m, c, tag, 16);
    }
    return 0;
}
