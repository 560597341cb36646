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
/* clock_gettime and CLOCK_MONOTONIC under -std=c11. */
#define _POSIX_C_SOURCE 199309L
#include <intel-ipsec-mb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

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

/* ------------------------------------------------------------------ CBC + HMAC
 *
 * AES-CBC + HMAC-SHA-1/SHA-2 bursts through the synchronous burst API
 * (IMB_SUBMIT_CIPHER_BURST, IMB_SUBMIT_HASH_BURST), so that the library's multi-buffer
 * code runs the CBC chains and hashes of a burst's packets side by side.
 *
 * Threading. Job submission changes the manager (the out-of-order lanes of every
 * algorithm), so these managers are per thread: one per thread that submits a
 * burst, allocated and initialised on that thread's first burst and freed by a
 * pthread key destructor when the thread exits (and a second, SSE one, made and
 * freed the same way, where it hashes faster: "which manager hashes" below). Every call completes all its jobs
 * before it returns (the burst API flushes its lanes), so between calls a manager
 * holds no pointer into the caller's buffers and nothing of one call carries into
 * the next. (The job queue, IMB_SUBMIT_JOB / IMB_SUBMIT_BURST, is not used.) The key
 * expansion and HMAC pad set-up below use the process manager (ipsec_mb_shim_init)
 * for its stateless function pointers only.
 *
 * The per-SA data (struct shim_cbc_keys) is owned by Rust: boxed, 64-byte aligned,
 * zeroed on drop. */

/* Must match CBC_KEY_BYTES in src/crypto/ipsec_mb.rs. */
#define SHIM_CBC_KEY_BYTES 640
/* What the CBC calls return when this thread has no manager (nothing was done): must
 * match NO_MANAGER in src/crypto/ipsec_mb.rs. */
#define SHIM_NO_MANAGER (-2)

/* Most jobs per call: must match MAX_BURST in src/crypto/ipsec_mb.rs. */
#define SHIM_MAX_BURST 64
_Static_assert(SHIM_MAX_BURST <= IMB_MAX_BURST_SIZE, "burst larger than the library's");

struct shim_cbc_keys {
    DECLARE_ALIGNED(uint32_t enc[60], 16); /* AES-128/256 encryption round keys */
    DECLARE_ALIGNED(uint32_t dec[60], 16); /* decryption round keys */
    DECLARE_ALIGNED(uint8_t ipad[64], 16); /* hash state after key ^ ipad */
    DECLARE_ALIGNED(uint8_t opad[64], 16); /* hash state after key ^ opad */
};
_Static_assert(sizeof(struct shim_cbc_keys) <= SHIM_CBC_KEY_BYTES,
               "struct shim_cbc_keys grew: raise CBC_KEY_BYTES on both sides");

/* One packet of a burst: `esp` is its ESP header, where the hash starts; the IV is at
 * esp + 8 and the body at esp + 24. Must match `Lane` in src/crypto/ipsec_mb.rs. */
struct shim_lane {
    const uint8_t *esp;
    uint8_t *body;       /* esp + 24, CBC-encrypted in place; NULL: hash only */
    uint8_t *tag;        /* where the (truncated) ICV is written */
    uint64_t cipher_len; /* bytes CBC-encrypted at body (0 for hash only) */
    uint64_t hash_len;   /* bytes hashed from esp */
};

static void wipe(void *p, size_t n) {
    volatile uint8_t *v = p;
    while (n--)
        *v++ = 0;
}

static int hash_alg(uint32_t hash) {
    switch (hash) {
    case 1: return IMB_AUTH_HMAC_SHA_1;
    case 256: return IMB_AUTH_HMAC_SHA_256;
    case 384: return IMB_AUTH_HMAC_SHA_384;
    case 512: return IMB_AUTH_HMAC_SHA_512;
    default: return -1;
    }
}

/* Fills `keys_out` (SHIM_CBC_KEY_BYTES, 64-byte aligned) for an SA: the round keys of
 * one direction (encrypt: the encryption ones; else the decryption ones; the other
 * set is left zero) of an AES key of 16 or 32 bytes, and the HMAC pads of a MAC key
 * of at most one hash block (`hash`: 1, 256, 384 or 512). Requires a successful
 * ipsec_mb_shim_init(). 0 on success, -1 on bad arguments. */
int ipsec_mb_shim_cbc_keys(const uint8_t *aes_key, size_t aes_len, const uint8_t *mac_key,
                           size_t mac_len, uint32_t hash, int encrypt, void *keys_out) {
    IMB_MGR *m = atomic_load_explicit(&manager, memory_order_acquire);
    size_t block = hash == 384 || hash == 512 ? 128 : 64;
    if (m == NULL || hash_alg(hash) < 0 || mac_len > block || (aes_len != 16 && aes_len != 32))
        return -1;
    struct shim_cbc_keys *k = keys_out;
    DECLARE_ALIGNED(uint32_t unused[60], 16);
    if (aes_len == 16)
        IMB_AES_KEYEXP_128(m, aes_key, encrypt ? k->enc : unused, encrypt ? unused : k->dec);
    else
        IMB_AES_KEYEXP_256(m, aes_key, encrypt ? k->enc : unused, encrypt ? unused : k->dec);
    wipe(unused, sizeof unused);
    uint8_t pad[128];
    for (int which = 0; which < 2; which++) {
        uint8_t x = which == 0 ? 0x36 : 0x5c;
        uint8_t *out = which == 0 ? k->ipad : k->opad;
        for (size_t i = 0; i < block; i++)
            pad[i] = (uint8_t)((i < mac_len ? mac_key[i] : 0) ^ x);
        switch (hash) {
        case 1: IMB_SHA1_ONE_BLOCK(m, pad, out); break;
        case 256: IMB_SHA256_ONE_BLOCK(m, pad, out); break;
        case 384: IMB_SHA384_ONE_BLOCK(m, pad, out); break;
        default: IMB_SHA512_ONE_BLOCK(m, pad, out); break;
        }
    }
    wipe(pad, sizeof pad);
    return 0;
}

static pthread_once_t thread_key_once = PTHREAD_ONCE_INIT;
static pthread_key_t thread_key, sse_key;
static int thread_key_error;
static _Thread_local IMB_MGR *thread_manager;
static _Thread_local IMB_MGR *sse_manager;

static void thread_manager_free(void *m) {
    thread_manager = NULL;
    free_mb_mgr(m);
}

static void sse_manager_free(void *m) {
    sse_manager = NULL;
    free_mb_mgr(m);
}

static void thread_key_init(void) {
    thread_key_error = pthread_key_create(&thread_key, thread_manager_free);
    if (thread_key_error == 0)
        thread_key_error = pthread_key_create(&sse_key, sse_manager_free);
}

/* Set by ipsec_mb_shim_refuse_thread_manager (tests only). */
static _Thread_local int thread_manager_refused;

/* A new manager for this thread, initialised by `init` and registered under `key`
 * (freed when the thread exits); NULL if any of that fails. */
static IMB_MGR *new_thread_mgr(int sse, pthread_key_t key) {
    IMB_MGR *m = alloc_mb_mgr(0);
    if (m == NULL)
        return NULL;
    if (sse) {
        init_mb_mgr_sse(m);
    } else {
        IMB_ARCH arch;
        init_mb_mgr_auto(m, &arch);
    }
    if (imb_get_errno(m) != 0 || pthread_setspecific(key, m) != 0) {
        free_mb_mgr(m);
        return NULL;
    }
    return m;
}

/* This thread's manager (init_mb_mgr_auto's choice), allocated and initialised on
 * first use; NULL if that fails. */
static IMB_MGR *thread_mgr(void) {
    if (thread_manager_refused)
        return NULL;
    if (thread_manager != NULL)
        return thread_manager;
    if (pthread_once(&thread_key_once, thread_key_init) != 0 || thread_key_error != 0)
        return NULL;
    thread_manager = new_thread_mgr(0, thread_key);
    return thread_manager;
}

/* This thread's SSE manager (made on first use, after thread_mgr succeeded); NULL
 * if it cannot be had. */
static IMB_MGR *thread_sse_mgr(void) {
    if (sse_manager == NULL)
        sse_manager = new_thread_mgr(1, sse_key);
    return sse_manager;
}

/* 1 if this thread has its manager (allocating it on first use), 0 if it cannot have
 * one: then the CBC + HMAC calls below refuse with SHIM_NO_MANAGER, having done
 * nothing, and the caller uses its own code. */
int ipsec_mb_shim_thread_ready(void) {
    return thread_mgr() != NULL;
}

/* For tests: from now on this thread behaves as if its manager could not be
 * allocated (`refuse` non-zero), or as before (0). */
void ipsec_mb_shim_refuse_thread_manager(int refuse) {
    thread_manager_refused = refuse;
}

/* A burst's jobs, owned by the caller (the synchronous burst API's contract): one
 * array per thread, so that a 64-job burst does not put 16 KiB on the caller's stack.
 * Every field the library reads is written before each submission. */
static _Thread_local IMB_JOB cbc_jobs[SHIM_MAX_BURST];

static IMB_KEY_SIZE_BYTES key_size(uint32_t key_len) {
    return key_len == 16 ? IMB_KEY_128_BYTES : IMB_KEY_256_BYTES;
}

/* 0 if all `n` jobs report completion, else -1. */
static int all_completed(const IMB_JOB *jobs, uint32_t n, uint32_t done) {
    int bad = done != n;
    for (uint32_t i = 0; i < n; i++)
        bad |= jobs[i].status != IMB_STATUS_COMPLETED;
    return bad ? -1 : 0;
}

/* ------------------------------------------------------------------ which manager hashes
 *
 * The manager init_mb_mgr_auto picks is not the fastest at every HMAC: its AVX-512
 * code hashes SHA-1 and SHA-256 sixteen messages side by side, the SSE manager's uses
 * the CPU's SHA extensions (SHA-NI) on a few at a time, and which wins depends on the
 * CPU and the message length. Measured with benches/ipsec-mb/mb_esp.c on an AMD EPYC
 * (Zen 4: AVX-512, SHA-NI), 32-job CBC + HMAC-SHA-256 bursts, ns a packet: open 123
 * under the AVX-512 manager and 95 under the SSE one at 64 bytes, 269 / 267 at 512,
 * 554 / 607 at 1,420; on an Intel Xeon (Ice Lake) the AVX-512 manager was the faster
 * at 64 bytes. So the hash manager is chosen by measurement, as Linux chooses its
 * RAID-6 and XOR code at boot: per hash and class of message length (below 128
 * bytes, then each doubling up to 2,048 and more), the first burst of a pair the
 * process has not measured yet first times both managers of its thread on 32
 * messages of that class's length (a warm-up each, then CAL_ROUNDS rounds in
 * alternating order; the minimum of each), and the SSE manager hashes that pair
 * from then on, on every thread, if it was at least 1/16 faster. Both compute the
 * same HMAC; only the time differs. The cipher always runs on the auto manager. */

#define HASH_CLASSES 6
#define CAL_ROUNDS 7
#define CAL_JOBS 32
#define CAL_MAX_LEN (96u << (HASH_CLASSES - 1))

enum { CHOICE_UNMEASURED = 0, CHOICE_AUTO = 1, CHOICE_SSE = 2 };

/* The process's choice per (hash, length class): CHOICE_*. */
static _Atomic int hash_choice[4][HASH_CLASSES];

/* Set by ipsec_mb_shim_force_hash_manager (tests only): CHOICE_* for this thread, or
 * CHOICE_UNMEASURED for the measured choice. */
static _Thread_local int hash_forced;

static int hash_index(uint32_t hash) {
    return hash == 1 ? 0 : hash == 256 ? 1 : hash == 384 ? 2 : 3;
}

/* 0 below 128 bytes, 1 below 256, ..., HASH_CLASSES - 1 from 2,048. */
static int length_class(uint64_t len) {
    int c = 0;
    for (uint64_t limit = 128; c < HASH_CLASSES - 1 && len >= limit; limit <<= 1)
        c++;
    return c;
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Fills `n` hash-only jobs over `msg` (`len` bytes each) with tags into `tags`. */
static void fill_hash_jobs(IMB_JOB *jobs, uint32_t n, int alg, const uint8_t *msg,
                           uint64_t len, const uint8_t *pad, uint8_t (*tags)[64],
                           uint32_t tag_len) {
    for (uint32_t i = 0; i < n; i++) {
        IMB_JOB *j = &jobs[i];
        memset(j, 0, sizeof *j);
        j->cipher_mode = IMB_CIPHER_NULL;
        j->cipher_direction = IMB_DIR_ENCRYPT;
        j->chain_order = IMB_ORDER_CIPHER_HASH;
        j->src = msg;
        j->hash_alg = alg;
        j->hash_start_src_offset_in_bytes = 0;
        j->msg_len_to_hash_in_bytes = len;
        j->u.HMAC._hashed_auth_key_xor_ipad = pad;
        j->u.HMAC._hashed_auth_key_xor_opad = pad;
        j->auth_tag_output = tags[i];
        j->auth_tag_output_len_in_bytes = tag_len;
    }
}

/* Nanoseconds `m` takes to hash the `n` jobs (UINT64_MAX if a job failed). */
static uint64_t time_hash_burst(IMB_MGR *m, IMB_JOB *jobs, uint32_t n, int alg) {
    for (uint32_t i = 0; i < n; i++)
        jobs[i].status = IMB_STATUS_BEING_PROCESSED;
    uint64_t t0 = now_ns();
    uint32_t done = IMB_SUBMIT_HASH_BURST_NOCHECK(m, jobs, n, (IMB_HASH_ALG)alg);
    uint64_t t = now_ns() - t0;
    return all_completed(jobs, n, done) == 0 ? t : UINT64_MAX;
}

/* Times the auto manager `a` against the SSE manager `sse` on CAL_JOBS HMACs of a
 * class's length; CHOICE_SSE if the SSE one was at least 1/16 faster. Uses this
 * thread's cbc_jobs (the caller fills them afterwards). */
static int measure_hash_choice(IMB_MGR *a, IMB_MGR *sse, int alg, int cls,
                               uint32_t tag_len) {
    static const uint8_t msg[CAL_MAX_LEN];
    DECLARE_ALIGNED(static const uint8_t pad[64], 16);
    uint8_t tags[CAL_JOBS][64];
    uint64_t len = 96u << cls;
    fill_hash_jobs(cbc_jobs, CAL_JOBS, alg, msg, len, pad, tags, tag_len);
    uint64_t best[2] = {UINT64_MAX, UINT64_MAX};
    IMB_MGR *mgrs[2] = {a, sse};
    for (int r = -1; r < CAL_ROUNDS; r++) {
        for (int k = 0; k < 2; k++) {
            int which = (r & 1) ? 1 - k : k;
            uint64_t t = time_hash_burst(mgrs[which], cbc_jobs, CAL_JOBS, alg);
            if (r >= 0 && t < best[which])
                best[which] = t;
        }
    }
    return best[1] != UINT64_MAX && best[1] < best[0] - best[0] / 16 ? CHOICE_SSE
                                                                      : CHOICE_AUTO;
}

/* The manager that hashes bursts of `hash` whose messages average `len` bytes, on a
 * thread whose auto manager is `a` (measuring first if the process has not). */
static IMB_MGR *hash_mgr(IMB_MGR *a, int alg, uint32_t hash, uint64_t len, uint32_t tag_len) {
    if (a->used_arch == IMB_ARCH_SSE)
        return a;
    int choice = hash_forced;
    if (choice == CHOICE_UNMEASURED) {
        _Atomic int *slot = &hash_choice[hash_index(hash)][length_class(len)];
        choice = atomic_load_explicit(slot, memory_order_relaxed);
        if (choice == CHOICE_UNMEASURED) {
            IMB_MGR *sse = thread_sse_mgr();
            choice = sse == NULL ? CHOICE_AUTO
                                 : measure_hash_choice(a, sse, alg, length_class(len), tag_len);
            atomic_store_explicit(slot, choice, memory_order_relaxed);
        }
    }
    if (choice == CHOICE_SSE) {
        IMB_MGR *sse = thread_sse_mgr();
        if (sse != NULL)
            return sse;
    }
    return a;
}

/* For tests: this thread hashes every CBC + HMAC burst on its auto manager
 * (`which` 1), on its SSE manager (2), or as measured (0). */
void ipsec_mb_shim_force_hash_manager(int which) {
    hash_forced = which == CHOICE_AUTO || which == CHOICE_SSE ? which : CHOICE_UNMEASURED;
}

/* For reports: the manager that hashes bursts of `hash` (1, 256, 384, 512) whose
 * messages are about `len` bytes, measuring it now if the process has not: "sse",
 * or the auto manager's architecture ("avx512", ...); "none" if this thread has no
 * manager or `hash` is unknown. */
const char *ipsec_mb_shim_hash_manager(uint32_t hash, uint64_t len) {
    int alg = hash_alg(hash);
    IMB_MGR *a = thread_mgr();
    if (a == NULL || alg < 0)
        return "none";
    uint32_t tag_len = hash == 1 ? 12 : hash == 256 ? 16 : hash == 384 ? 24 : 32;
    IMB_MGR *h = hash_mgr(a, alg, hash, len, tag_len);
    if (h != a)
        return "sse";
    const char *arch = ipsec_mb_shim_arch();
    return arch;
}

/* Runs `n` (at most SHIM_MAX_BURST) packets under `keys` (from ipsec_mb_shim_cbc_keys
 * with the same `hash` and `key_len`): either every lane has a body, and each body is
 * CBC-encrypted in place (IV at esp + 8), then the HMAC over ESP header, IV and
 * ciphertext is computed (encrypt then MAC); or no lane has one, and the HMACs alone
 * are computed (decrypt: the caller compares the ICVs, then decrypts).
 *
 * Through the synchronous burst API (IMB_SUBMIT_CIPHER_BURST / IMB_SUBMIT_HASH_BURST,
 * what DPDK's aesni_mb driver uses for one-algorithm sessions): one call runs all CBC
 * chains on the multi-buffer lanes, another all hashes, each flushing its lanes before
 * it returns; measured faster than the job queue with chained jobs (about 6 ns a
 * packet encrypting, 14 hashing, on an AVX-512 manager). Every job is complete when
 * this returns. 0 on success; SHIM_NO_MANAGER (nothing done) if this thread has no
 * manager; -1 on bad arguments or if a job failed. */
int ipsec_mb_shim_cbc_hmac_burst(const void *keys, uint32_t key_len, uint32_t hash,
                                 uint32_t tag_len, const struct shim_lane *lanes, uint32_t n) {
    int alg = hash_alg(hash);
    if (n == 0)
        return 0;
    if (n > SHIM_MAX_BURST || alg < 0 || (key_len != 16 && key_len != 32))
        return -1;
    /* Validated here, so that the unchecked submissions below (the library's per-job
     * checks cost several ns a packet) never see a job the library would refuse. */
    uint32_t full = hash == 1 ? 20 : hash == 256 ? 32 : hash == 384 ? 48 : 64;
    if (tag_len == 0 || tag_len > full)
        return -1;
    int encrypt = lanes[0].body != NULL;
    uint64_t hashed = 0;
    for (uint32_t i = 0; i < n; i++) {
        const struct shim_lane *l = &lanes[i];
        if (l->esp == NULL || l->tag == NULL || (l->body != NULL) != encrypt ||
            (encrypt && (l->cipher_len == 0 || l->cipher_len % 16 != 0)))
            return -1;
        hashed += l->hash_len;
    }
    IMB_MGR *m = thread_mgr();
    if (m == NULL)
        return SHIM_NO_MANAGER;
    /* Before the jobs are filled: a first measurement uses them. */
    IMB_MGR *h = hash_mgr(m, alg, hash, hashed / n, tag_len);
    const struct shim_cbc_keys *k = keys;
    IMB_JOB *jobs = cbc_jobs;
    for (uint32_t i = 0; i < n; i++) {
        IMB_JOB *j = &jobs[i];
        const struct shim_lane *l = &lanes[i];
        j->cipher_mode = IMB_CIPHER_CBC;
        j->cipher_direction = IMB_DIR_ENCRYPT;
        j->chain_order = IMB_ORDER_CIPHER_HASH;
        j->key_len_in_bytes = key_len;
        j->enc_keys = k->enc;
        j->dec_keys = k->dec;
        j->iv = l->esp + 8;
        j->iv_len_in_bytes = 16;
        j->src = l->esp;
        j->dst = l->body;
        j->cipher_start_src_offset_in_bytes = 24;
        j->msg_len_to_cipher_in_bytes = l->cipher_len;
        j->hash_alg = alg;
        j->hash_start_src_offset_in_bytes = 0;
        j->msg_len_to_hash_in_bytes = l->hash_len;
        j->u.HMAC._hashed_auth_key_xor_ipad = k->ipad;
        j->u.HMAC._hashed_auth_key_xor_opad = k->opad;
        j->auth_tag_output = l->tag;
        j->auth_tag_output_len_in_bytes = tag_len;
        j->status = IMB_STATUS_BEING_PROCESSED;
    }
    if (encrypt) {
        uint32_t done = IMB_SUBMIT_CIPHER_BURST_NOCHECK(m, jobs, n, IMB_CIPHER_CBC,
                                                        IMB_DIR_ENCRYPT, key_size(key_len));
        if (all_completed(jobs, n, done) != 0)
            return -1;
        for (uint32_t i = 0; i < n; i++)
            jobs[i].status = IMB_STATUS_BEING_PROCESSED;
    }
    uint32_t done = IMB_SUBMIT_HASH_BURST_NOCHECK(h, jobs, n, (IMB_HASH_ALG)alg);
    return all_completed(jobs, n, done);
}

/* CBC-decrypts `len` bytes (a non-zero multiple of 16) at `data` in place, under the
 * decryption round keys in `keys` (from ipsec_mb_shim_cbc_keys for an inbound SA) and
 * the 16-byte `iv`, as a one-job cipher burst (synchronous; the library runs its
 * single-buffer CBC decryption, parallel inside the packet, with VAES where the CPU
 * has it; about 10 ns less a packet than a job through the queue). Complete when this
 * returns. 0 on success, SHIM_NO_MANAGER (nothing done) if this thread has no manager,
 * -1 on bad arguments or if the job failed. */
int ipsec_mb_shim_cbc_decrypt(const void *keys, uint32_t key_len, const uint8_t *iv,
                              uint8_t *data, uint64_t len) {
    if ((key_len != 16 && key_len != 32) || len == 0 || len % 16 != 0)
        return -1;
    IMB_MGR *m = thread_mgr();
    if (m == NULL)
        return SHIM_NO_MANAGER;
    const struct shim_cbc_keys *k = keys;
    IMB_JOB j;
    j.cipher_mode = IMB_CIPHER_CBC;
    j.cipher_direction = IMB_DIR_DECRYPT;
    j.chain_order = IMB_ORDER_HASH_CIPHER;
    j.hash_alg = IMB_AUTH_NULL;
    j.key_len_in_bytes = key_len;
    j.enc_keys = k->enc;
    j.dec_keys = k->dec;
    j.iv = iv;
    j.iv_len_in_bytes = 16;
    j.src = data;
    j.dst = data;
    j.cipher_start_src_offset_in_bytes = 0;
    j.msg_len_to_cipher_in_bytes = len;
    j.status = IMB_STATUS_BEING_PROCESSED;
    uint32_t done = IMB_SUBMIT_CIPHER_BURST_NOCHECK(m, &j, 1, IMB_CIPHER_CBC, IMB_DIR_DECRYPT,
                                                    key_size(key_len));
    return all_completed(&j, 1, done);
}
