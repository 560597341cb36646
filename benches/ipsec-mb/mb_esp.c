/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * intel-ipsec-mb (1.3, Debian 12's libipsec-mb-dev) driven on exactly the bytes ESP
 * seals, as the baseline of `ipsec bench`'s ESP rows: the C library DPDK's aesni_mb
 * and aesni_gcm drivers and VPP's ipsecmb engine call.
 *
 * The bytes: an IPv4 inner packet of 64, 512 or 1420 bytes in tunnel mode, padded as
 * ipsec-core pads by default (EspPadding::CipherBlocks: inner + 2-byte trailer rounded
 * up to 16), so the encrypted body is 80, 528 or 1424 bytes; the record's "size" is the
 * inner size (the key bench-report.py matches on) and "esp_body" the bytes sealed.
 *   - AEADs: AAD = SPI || 32-bit sequence number (8 bytes, no ESN), nonce = 4-byte salt
 *     || 8-byte IV (the sequence number), 16-byte tag written after the body.
 *   - AES-128-CBC + HMAC-SHA-256-128: ESP header (8) || IV (16) || ciphertext hashed,
 *     the HMAC truncated to 16 bytes; encrypt = cipher then hash, decrypt = hash (tag
 *     compared) then cipher, in place.
 *
 * Backends (records' "backend"):
 *   ipsec-mb              one packet per call through the direct API, manager chosen by
 *                         init_mb_mgr_auto: AES-GCM by IMB_AES{128,256}_GCM_{ENC,DEC}
 *                         (one call: nonce, AAD, data, tag; key data precomputed once),
 *                         ChaCha20-Poly1305 by IMB_CHACHA20_POLY1305_INIT / _UPDATE /
 *                         _FINALIZE (1.3 has no one-call ChaCha20-Poly1305 function).
 *   ipsec-mb-burst32      32 packets per burst through the job API's burst calls
 *                         (IMB_GET_NEXT_BURST, IMB_SUBMIT_BURST_NOCHECK, IMB_FLUSH_BURST),
 *                         same auto manager; ns are per packet. AES-GCM, ChaCha20-Poly1305
 *                         and AES-128-CBC + HMAC-SHA-256-128 chained jobs.
 *   ipsec-mb-sse-burst32  the same CBC+HMAC bursts under init_mb_mgr_sse: on CPUs with
 *                         SHA-NI the SSE manager hashes with it, the AVX2/AVX-512 ones with
 *                         multi-buffer SIMD SHA-256, so either may be faster.
 * Every record carries "mb_arch", the manager's architecture; stderr says what
 * init_mb_mgr_auto picked and the CPU features the library detected.
 * Decrypt ("aead-open") computes the tag into a separate buffer and compares it with
 * the packet's in constant time, inside the timed loop (ipsec-mb does not compare).
 *
 * Self-checks, run before each case is timed (and alone with --check): the published
 * vectors for AES-128-GCM and AES-256-GCM (test cases 4 and 16 of McGrew and Viega,
 * "The Galois/Counter Mode of Operation"), ChaCha20-Poly1305 (RFC 8439 §2.8.2) and
 * HMAC-SHA-256 (RFC 4231 test case 2, the HMAC key set-up of the CBC jobs) through
 * every path that runs the algorithm; then, on the ESP bytes of every size, a seal
 * that changes the data and opens back to it, and a flipped ciphertext bit refused.
 *
 * Timing matches `ipsec bench` and benches/openssl/evp_aead.c: the measuring thread's
 * CPU clock, a calibration run, then 7 rounds whose median is reported; every
 * iteration first restores each packet's body with memcpy (included). Output: one
 * JSON record per line in the format of `ipsec bench --json`.
 *
 * Build and run (scripts/bench-report.py does this; scripts/test.sh runs --check):
 *     cc -std=c11 -O2 -o target/mb_esp benches/ipsec-mb/mb_esp.c -lIPSec_MB
 *     target/mb_esp [MILLISECONDS_PER_CASE]     timed records on stdout
 *     target/mb_esp --check                     self-checks only; exit status 1 on failure
 */
#define _POSIX_C_SOURCE 199309L
#include <intel-ipsec-mb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ROUNDS 7
#define BURST 32
#define MAX_BODY 1440
#define TAG 16
/* ESP header (SPI, sequence number) and the largest IV (CBC's 16 bytes). */
#define HDR 8
#define MAX_IV 16

enum alg { GCM128, GCM256, CHACHA, CBC_SHA256 };
static const char *const LABELS[] = {"aes-128-gcm", "aes-256-gcm", "chacha20-poly1305",
                                     "aes-128-cbc+hmac-sha256-128"};
static const int SIZES[] = {64, 512, 1420};

/* The ESP body of an inner packet of `size` bytes: payload, padding and the 2-byte
 * trailer, padded to 16 bytes (ipsec-core's default, EspPadding::CipherBlocks). */
static size_t esp_body(int size) { return ((size_t)size + 2 + 15) / 16 * 16; }

static const char *arch_name(uint32_t a) {
    switch (a) {
    case IMB_ARCH_NOAESNI: return "noaesni";
    case IMB_ARCH_SSE: return "sse";
    case IMB_ARCH_AVX: return "avx";
    case IMB_ARCH_AVX2: return "avx2";
    case IMB_ARCH_AVX512: return "avx512";
    default: return "unknown";
    }
}

/* ------------------------------------------------------------------ vectors */

static const uint8_t GCM_KEY[32] = {
    0xfe, 0xff, 0xe9, 0x92, 0x86, 0x65, 0x73, 0x1c, 0x6d, 0x6a, 0x8f, 0x94, 0x67, 0x30, 0x83, 0x08,
    0xfe, 0xff, 0xe9, 0x92, 0x86, 0x65, 0x73, 0x1c, 0x6d, 0x6a, 0x8f, 0x94, 0x67, 0x30, 0x83, 0x08};
static const uint8_t GCM_IV[12] = {0xca, 0xfe, 0xba, 0xbe, 0xfa, 0xce,
                                   0xdb, 0xad, 0xde, 0xca, 0xf8, 0x88};
static const uint8_t GCM_AAD[20] = {0xfe, 0xed, 0xfa, 0xce, 0xde, 0xad, 0xbe, 0xef, 0xfe, 0xed,
                                    0xfa, 0xce, 0xde, 0xad, 0xbe, 0xef, 0xab, 0xad, 0xda, 0xd2};
static const uint8_t GCM_PT[60] = {
    0xd9, 0x31, 0x32, 0x25, 0xf8, 0x84, 0x06, 0xe5, 0xa5, 0x59, 0x09, 0xc5, 0xaf, 0xf5, 0x26,
    0x9a, 0x86, 0xa7, 0xa9, 0x53, 0x15, 0x34, 0xf7, 0xda, 0x2e, 0x4c, 0x30, 0x3d, 0x8a, 0x31,
    0x8a, 0x72, 0x1c, 0x3c, 0x0c, 0x95, 0x95, 0x68, 0x09, 0x53, 0x2f, 0xcf, 0x0e, 0x24, 0x49,
    0xa6, 0xb5, 0x25, 0xb1, 0x6a, 0xed, 0xf5, 0xaa, 0x0d, 0xe6, 0x57, 0xba, 0x63, 0x7b, 0x39};
/* Test case 4 (AES-128) ciphertext || tag. */
static const uint8_t GCM128_CT[76] = {
    0x42, 0x83, 0x1e, 0xc2, 0x21, 0x77, 0x74, 0x24, 0x4b, 0x72, 0x21, 0xb7, 0x84, 0xd0, 0xd4,
    0x9c, 0xe3, 0xaa, 0x21, 0x2f, 0x2c, 0x02, 0xa4, 0xe0, 0x35, 0xc1, 0x7e, 0x23, 0x29, 0xac,
    0xa1, 0x2e, 0x21, 0xd5, 0x14, 0xb2, 0x54, 0x66, 0x93, 0x1c, 0x7d, 0x8f, 0x6a, 0x5a, 0xac,
    0x84, 0xaa, 0x05, 0x1b, 0xa3, 0x0b, 0x39, 0x6a, 0x0a, 0xac, 0x97, 0x3d, 0x58, 0xe0, 0x91,
    0x5b, 0xc9, 0x4f, 0xbc, 0x32, 0x21, 0xa5, 0xdb, 0x94, 0xfa, 0xe9, 0x5a, 0xe7, 0x12, 0x1a,
    0x47};
/* Test case 16 (AES-256) ciphertext || tag. */
static const uint8_t GCM256_CT[76] = {
    0x52, 0x2d, 0xc1, 0xf0, 0x99, 0x56, 0x7d, 0x07, 0xf4, 0x7f, 0x37, 0xa3, 0x2a, 0x84, 0x42,
    0x7d, 0x64, 0x3a, 0x8c, 0xdc, 0xbf, 0xe5, 0xc0, 0xc9, 0x75, 0x98, 0xa2, 0xbd, 0x25, 0x55,
    0xd1, 0xaa, 0x8c, 0xb0, 0x8e, 0x48, 0x59, 0x0d, 0xbb, 0x3d, 0xa7, 0xb0, 0x8b, 0x10, 0x56,
    0x82, 0x88, 0x38, 0xc5, 0xf6, 0x1e, 0x63, 0x93, 0xba, 0x7a, 0x0a, 0xbc, 0xc9, 0xf6, 0x62,
    0x76, 0xfc, 0x6e, 0xce, 0x0f, 0x4e, 0x17, 0x68, 0xcd, 0xdf, 0x88, 0x53, 0xbb, 0x2d, 0x55,
    0x1b};

/* RFC 8439 §2.8.2. */
static const uint8_t CC_NONCE[12] = {0x07, 0x00, 0x00, 0x00, 0x40, 0x41,
                                     0x42, 0x43, 0x44, 0x45, 0x46, 0x47};
static const uint8_t CC_AAD[12] = {0x50, 0x51, 0x52, 0x53, 0xc0, 0xc1,
                                   0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7};
static const char CC_PT[] = "Ladies and Gentlemen of the class of '99: If I could offer you "
                            "only one tip for the future, sunscreen would be it.";
static const uint8_t CC_CT[114 + 16] = {
    0xd3, 0x1a, 0x8d, 0x34, 0x64, 0x8e, 0x60, 0xdb, 0x7b, 0x86, 0xaf, 0xbc, 0x53, 0xef, 0x7e,
    0xc2, 0xa4, 0xad, 0xed, 0x51, 0x29, 0x6e, 0x08, 0xfe, 0xa9, 0xe2, 0xb5, 0xa7, 0x36, 0xee,
    0x62, 0xd6, 0x3d, 0xbe, 0xa4, 0x5e, 0x8c, 0xa9, 0x67, 0x12, 0x82, 0xfa, 0xfb, 0x69, 0xda,
    0x92, 0x72, 0x8b, 0x1a, 0x71, 0xde, 0x0a, 0x9e, 0x06, 0x0b, 0x29, 0x05, 0xd6, 0xa5, 0xb6,
    0x7e, 0xcd, 0x3b, 0x36, 0x92, 0xdd, 0xbd, 0x7f, 0x2d, 0x77, 0x8b, 0x8c, 0x98, 0x03, 0xae,
    0xe3, 0x28, 0x09, 0x1b, 0x58, 0xfa, 0xb3, 0x24, 0xe4, 0xfa, 0xd6, 0x75, 0x94, 0x55, 0x85,
    0x80, 0x8b, 0x48, 0x31, 0xd7, 0xbc, 0x3f, 0xf4, 0xde, 0xf0, 0x8e, 0x4b, 0x7a, 0x9d, 0xe5,
    0x76, 0xd2, 0x65, 0x86, 0xce, 0xc6, 0x4b, 0x61, 0x16,
    /* tag */
    0x1a, 0xe1, 0x0b, 0x59, 0x4f, 0x09, 0xe2, 0x6a, 0x7e, 0x90, 0x2e, 0xcb, 0xd0, 0x60, 0x06,
    0x91};

/* RFC 4231 test case 2: HMAC-SHA-256 of "what do ya want for nothing?" under "Jefe". */
static const uint8_t HMAC_TC2[32] = {
    0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95, 0x75, 0xc7,
    0x5a, 0x00, 0x3f, 0x08, 0x9d, 0x27, 0x39, 0x83, 0x9d, 0xec, 0x58, 0xb9, 0x64, 0xec, 0x38, 0x43};

/* ------------------------------------------------------------------ state */

struct pkt {
    /* ESP header || IV || body || ICV; the body starts at HDR + iv_len. */
    DECLARE_ALIGNED(uint8_t buf[HDR + MAX_IV + MAX_BODY + TAG], 64);
};

struct bench {
    IMB_MGR *mgr;
    const char *mgr_label; /* "mb_arch" */
    enum alg alg;
    int burst;   /* 1: the direct single-packet API; BURST: the job API */
    int checked; /* 1: IMB_SUBMIT_BURST (validates jobs), 0: the _NOCHECK variant */
    DECLARE_ALIGNED(struct gcm_key_data gkey, 64);
    DECLARE_ALIGNED(struct gcm_context_data gctx, 64);
    DECLARE_ALIGNED(uint8_t cc_key[32], 16);
    DECLARE_ALIGNED(uint32_t enc_keys[60], 16);
    DECLARE_ALIGNED(uint32_t dec_keys[60], 16);
    DECLARE_ALIGNED(uint8_t ipad[32], 16);
    DECLARE_ALIGNED(uint8_t opad[32], 16);
    uint8_t salt[4];
    size_t iv_len, body_len;
    /* A published vector's AAD and nonce instead of ESP's, while it is checked. */
    const uint8_t *vec_aad, *vec_nonce;
    size_t vec_aad_len;
    uint64_t counter;
    int n; /* packets per iteration: 1 or BURST */
    uint8_t plain[MAX_BODY], sealed[HDR + MAX_IV + MAX_BODY + TAG];
    uint8_t sealed_nonce[12]; /* the nonce b->sealed was sealed under */
    uint8_t nonce[BURST][12];
    uint8_t tag_out[BURST][TAG];
    int ok[BURST]; /* per packet after an open: 1 if its tag verified */
    struct pkt pkts[BURST];
};

static int failures;

static void fail(const struct bench *b, const char *what) {
    fprintf(stderr, "mb_esp: %s %s burst %d (%s): %s\n", LABELS[b->alg],
            b->burst == 1 ? "single" : "job-burst", b->burst, b->mgr_label, what);
    failures++;
}

static void die(const char *what) {
    fprintf(stderr, "mb_esp: %s\n", what);
    exit(1);
}

static uint8_t *body(struct bench *b, int i) { return b->pkts[i].buf + HDR + b->iv_len; }
static uint8_t *icv(struct bench *b, int i) { return body(b, i) + b->body_len; }
static const uint8_t *aad(struct bench *b, int i) {
    return b->vec_aad ? b->vec_aad : b->pkts[i].buf;
}
static size_t aad_len(const struct bench *b) { return b->vec_aad ? b->vec_aad_len : HDR; }

static int tag_equal(const uint8_t *a, const uint8_t *c) {
    uint8_t d = 0;
    for (int i = 0; i < TAG; i++)
        d |= (uint8_t)(a[i] ^ c[i]);
    return d == 0;
}

/* HMAC-SHA-256 key set-up (keys of at most 64 bytes): the SHA-256 states after one
 * block of key ^ ipad and one of key ^ opad, as the HMAC jobs take them. */
static void hmac_pads(IMB_MGR *mgr, const uint8_t *key, size_t len, uint8_t ipad[32],
                      uint8_t opad[32]) {
    uint8_t ik[64], ok[64];
    for (size_t i = 0; i < 64; i++) {
        ik[i] = (uint8_t)((i < len ? key[i] : 0) ^ 0x36);
        ok[i] = (uint8_t)((i < len ? key[i] : 0) ^ 0x5c);
    }
    IMB_SHA256_ONE_BLOCK(mgr, ik, ipad);
    IMB_SHA256_ONE_BLOCK(mgr, ok, opad);
}

/* HMAC-SHA-256 of data as one hash-only job (no cipher); 0 on success. */
static int hmac_job(IMB_MGR *mgr, const uint8_t *ipad, const uint8_t *opad, const uint8_t *data,
                    size_t len, uint8_t *out, size_t out_len) {
    while (IMB_FLUSH_JOB(mgr) != NULL)
        ;
    IMB_JOB *j = IMB_GET_NEXT_JOB(mgr);
    memset(j, 0, sizeof *j);
    j->cipher_mode = IMB_CIPHER_NULL;
    j->cipher_direction = IMB_DIR_ENCRYPT;
    j->chain_order = IMB_ORDER_HASH_CIPHER;
    j->hash_alg = IMB_AUTH_HMAC_SHA_256;
    j->src = data;
    j->hash_start_src_offset_in_bytes = 0;
    j->msg_len_to_hash_in_bytes = len;
    j->auth_tag_output = out;
    j->auth_tag_output_len_in_bytes = out_len;
    j->u.HMAC._hashed_auth_key_xor_ipad = ipad;
    j->u.HMAC._hashed_auth_key_xor_opad = opad;
    j = IMB_SUBMIT_JOB(mgr);
    if (j == NULL)
        j = IMB_FLUSH_JOB(mgr);
    return j != NULL && j->status == IMB_STATUS_COMPLETED ? 0 : -1;
}

/* Key set-up, once per case (not timed). */
static void set_key(struct bench *b, const uint8_t *key) {
    switch (b->alg) {
    case GCM128: IMB_AES128_GCM_PRE(b->mgr, key, &b->gkey); break;
    case GCM256: IMB_AES256_GCM_PRE(b->mgr, key, &b->gkey); break;
    case CHACHA: memcpy(b->cc_key, key, 32); break;
    case CBC_SHA256: {
        IMB_AES_KEYEXP_128(b->mgr, key, b->enc_keys, b->dec_keys);
        /* The 32-byte integrity key follows the AES key. */
        hmac_pads(b->mgr, key + 16, 32, b->ipad, b->opad);
        break;
    }
    }
}

/* The nonce of packet i for a seal: salt || counter as ESP's IV; also written into
 * the packet's IV field (AEAD) or IV block (CBC), as ESP writes it. */
static void next_nonce(struct bench *b, int i) {
    if (b->vec_nonce) {
        memcpy(b->nonce[i], b->vec_nonce, 12);
        return;
    }
    uint64_t c = ++b->counter;
    uint8_t *n = b->nonce[i];
    memcpy(n, b->salt, 4);
    for (int k = 0; k < 8; k++)
        n[4 + k] = (uint8_t)(c >> (56 - 8 * k));
    uint8_t *iv = b->pkts[i].buf + HDR;
    memcpy(iv + b->iv_len - 8, n + 4, 8);
    /* ESP header: SPI 0x1001, sequence number = the counter's low 32 bits. */
    iv[-4] = (uint8_t)(c >> 24);
    iv[-3] = (uint8_t)(c >> 16);
    iv[-2] = (uint8_t)(c >> 8);
    iv[-1] = (uint8_t)c;
}

/* Fills job i of a burst; enc: seal (tag into the packet), else open (tag aside). */
static void fill_job(struct bench *b, IMB_JOB *j, int i, int enc) {
    uint8_t *bd = body(b, i);
    j->src = bd;
    j->dst = bd;
    j->cipher_start_src_offset_in_bytes = 0;
    j->msg_len_to_cipher_in_bytes = b->body_len;
    j->hash_start_src_offset_in_bytes = 0;
    j->msg_len_to_hash_in_bytes = b->body_len;
    j->iv = b->nonce[i];
    j->iv_len_in_bytes = 12;
    j->auth_tag_output = enc ? icv(b, i) : b->tag_out[i];
    j->auth_tag_output_len_in_bytes = TAG;
    j->cipher_direction = enc ? IMB_DIR_ENCRYPT : IMB_DIR_DECRYPT;
    j->chain_order = enc ? IMB_ORDER_CIPHER_HASH : IMB_ORDER_HASH_CIPHER;
    j->user_data = (void *)(uintptr_t)i;
    switch (b->alg) {
    case GCM128:
    case GCM256:
        j->cipher_mode = IMB_CIPHER_GCM;
        j->hash_alg = IMB_AUTH_AES_GMAC;
        j->enc_keys = &b->gkey;
        j->dec_keys = &b->gkey;
        j->key_len_in_bytes = b->alg == GCM128 ? IMB_KEY_128_BYTES : IMB_KEY_256_BYTES;
        j->u.GCM.aad = aad(b, i);
        j->u.GCM.aad_len_in_bytes = aad_len(b);
        break;
    case CHACHA:
        j->cipher_mode = IMB_CIPHER_CHACHA20_POLY1305;
        j->hash_alg = IMB_AUTH_CHACHA20_POLY1305;
        j->enc_keys = b->cc_key;
        j->dec_keys = b->cc_key;
        j->key_len_in_bytes = 32;
        j->u.CHACHA20_POLY1305.aad = aad(b, i);
        j->u.CHACHA20_POLY1305.aad_len_in_bytes = aad_len(b);
        break;
    case CBC_SHA256:
        /* Hash over ESP header || IV || ciphertext; cipher over the body, in place. */
        j->src = b->pkts[i].buf;
        j->cipher_start_src_offset_in_bytes = HDR + b->iv_len;
        j->msg_len_to_hash_in_bytes = HDR + b->iv_len + b->body_len;
        j->iv = b->pkts[i].buf + HDR;
        j->iv_len_in_bytes = 16;
        j->cipher_mode = IMB_CIPHER_CBC;
        j->hash_alg = IMB_AUTH_HMAC_SHA_256;
        j->enc_keys = b->enc_keys;
        j->dec_keys = b->dec_keys;
        j->key_len_in_bytes = IMB_KEY_128_BYTES;
        j->u.HMAC._hashed_auth_key_xor_ipad = b->ipad;
        j->u.HMAC._hashed_auth_key_xor_opad = b->opad;
        break;
    }
}

/* One burst of b->n jobs; returns 0 if every job completed. */
static int run_burst(struct bench *b, int enc) {
    IMB_JOB *jobs[BURST], *done[BURST];
    uint32_t n = (uint32_t)b->n;
    if (IMB_GET_NEXT_BURST(b->mgr, n, jobs) < n) {
        IMB_FLUSH_BURST(b->mgr, IMB_MAX_JOBS, done);
        if (IMB_GET_NEXT_BURST(b->mgr, n, jobs) < n)
            return -1;
    }
    for (uint32_t i = 0; i < n; i++)
        fill_job(b, jobs[i], (int)i, enc);
    uint32_t c = b->checked ? IMB_SUBMIT_BURST(b->mgr, n, jobs)
                            : IMB_SUBMIT_BURST_NOCHECK(b->mgr, n, jobs);
    int bad = 0;
    if (c == 0 && b->checked && imb_get_errno(b->mgr) != 0) {
        fprintf(stderr, "mb_esp: IMB_SUBMIT_BURST: %s\n",
                imb_get_strerror(imb_get_errno(b->mgr)));
        return -1;
    }
    for (uint32_t i = 0; i < c; i++)
        bad |= jobs[i]->status != IMB_STATUS_COMPLETED;
    if (c < n) {
        uint32_t f = IMB_FLUSH_BURST(b->mgr, n - c, done);
        for (uint32_t i = 0; i < f; i++)
            bad |= done[i]->status != IMB_STATUS_COMPLETED;
        bad |= c + f != n;
    }
    return bad ? -1 : 0;
}

/* Seals b->n packets (their bodies already in place) with fresh nonces. */
static int seal(struct bench *b) {
    for (int i = 0; i < b->n; i++)
        next_nonce(b, i);
    if (b->burst > 1)
        return run_burst(b, 1);
    uint8_t *bd = body(b, 0);
    switch (b->alg) {
    case GCM128:
        IMB_AES128_GCM_ENC(b->mgr, &b->gkey, &b->gctx, bd, bd,
                           b->body_len, b->nonce[0], aad(b, 0), aad_len(b), icv(b, 0), TAG);
        return 0;
    case GCM256:
        IMB_AES256_GCM_ENC(b->mgr, &b->gkey, &b->gctx, bd, bd,
                           b->body_len, b->nonce[0], aad(b, 0), aad_len(b), icv(b, 0), TAG);
        return 0;
    case CHACHA: {
        struct chacha20_poly1305_context_data ctx;
        IMB_CHACHA20_POLY1305_INIT(b->mgr, b->cc_key, &ctx, b->nonce[0], aad(b, 0), aad_len(b));
        IMB_CHACHA20_POLY1305_ENC_UPDATE(b->mgr, b->cc_key, &ctx, bd, bd, b->body_len);
        IMB_CHACHA20_POLY1305_ENC_FINALIZE(b->mgr, &ctx, icv(b, 0), TAG);
        return 0;
    }
    case CBC_SHA256: break;
    }
    return -1; /* CBC+HMAC is measured in bursts only */
}

/* Opens b->n packets in place under b->nonce; b->ok[i] says whose tag verified.
 * Returns the number that verified, or -1 if the library failed a job. */
static int open_all(struct bench *b) {
    if (b->burst > 1) {
        if (run_burst(b, 0) != 0)
            return -1;
    } else {
        uint8_t *bd = body(b, 0);
        switch (b->alg) {
        case GCM128:
            IMB_AES128_GCM_DEC(b->mgr, &b->gkey, &b->gctx, bd, bd,
                               b->body_len, b->nonce[0], aad(b, 0), aad_len(b), b->tag_out[0],
                               TAG);
            break;
        case GCM256:
            IMB_AES256_GCM_DEC(b->mgr, &b->gkey, &b->gctx, bd, bd,
                               b->body_len, b->nonce[0], aad(b, 0), aad_len(b), b->tag_out[0],
                               TAG);
            break;
        case CHACHA: {
            struct chacha20_poly1305_context_data ctx;
            IMB_CHACHA20_POLY1305_INIT(b->mgr, b->cc_key, &ctx, b->nonce[0], aad(b, 0),
                                       aad_len(b));
            IMB_CHACHA20_POLY1305_DEC_UPDATE(b->mgr, b->cc_key, &ctx, bd, bd, b->body_len);
            IMB_CHACHA20_POLY1305_DEC_FINALIZE(b->mgr, &ctx, b->tag_out[0], TAG);
            break;
        }
        case CBC_SHA256: return -1;
        }
    }
    int good = 0;
    for (int i = 0; i < b->n; i++) {
        b->ok[i] = tag_equal(b->tag_out[i], icv(b, i));
        good += b->ok[i];
    }
    return good;
}

/* ------------------------------------------------------------------ self-checks */

/* The published vector of the AEAD through this path: ciphertext and tag as published,
 * they open back, and a flipped bit is refused. */
static void check_vector(struct bench *b) {
    const uint8_t *key, *nonce, *a, *pt, *ct;
    size_t al, len;
    switch (b->alg) {
    case GCM128:
    case GCM256:
        key = GCM_KEY, nonce = GCM_IV, a = GCM_AAD, al = sizeof GCM_AAD, pt = GCM_PT;
        len = sizeof GCM_PT, ct = b->alg == GCM128 ? GCM128_CT : GCM256_CT;
        break;
    case CHACHA: {
        static uint8_t cc_key[32];
        for (int i = 0; i < 32; i++)
            cc_key[i] = (uint8_t)(0x80 + i);
        key = cc_key, nonce = CC_NONCE, a = CC_AAD, al = sizeof CC_AAD;
        pt = (const uint8_t *)CC_PT, len = sizeof CC_PT - 1, ct = CC_CT;
        break;
    }
    default: return;
    }
    size_t saved_len = b->body_len;
    set_key(b, key);
    b->vec_aad = a, b->vec_aad_len = al, b->vec_nonce = nonce, b->body_len = len;
    for (int i = 0; i < b->n; i++)
        memcpy(body(b, i), pt, len);
    if (seal(b) != 0)
        fail(b, "vector: a job failed");
    for (int i = 0; i < b->n; i++)
        if (memcmp(body(b, i), ct, len) != 0 || memcmp(icv(b, i), ct + len, TAG) != 0) {
            fail(b, "vector: ciphertext or tag differs from the published one");
            break;
        }
    for (int i = 0; i < b->n; i++) {
        memcpy(body(b, i), ct, len + TAG);
        if (i == b->n - 1)
            body(b, i)[len / 2] ^= 0x01;
    }
    int good = open_all(b);
    if (good != b->n - 1 || b->ok[b->n - 1])
        fail(b, "vector: the published ciphertext did not open, or a flipped bit did");
    for (int i = 0; i < b->n - 1; i++)
        if (memcmp(body(b, i), pt, len) != 0) {
            fail(b, "vector: opened to the wrong plaintext");
            break;
        }
    b->vec_aad = NULL, b->vec_nonce = NULL, b->body_len = saved_len;
}

/* RFC 4231 test case 2 through hmac_pads and a hash-only job: the key set-up the CBC
 * jobs use gives the published HMAC. */
static void check_hmac(IMB_MGR *mgr, const char *label) {
    static const char data[] = "what do ya want for nothing?";
    DECLARE_ALIGNED(uint8_t ipad[32], 16);
    DECLARE_ALIGNED(uint8_t opad[32], 16);
    uint8_t out[32];
    hmac_pads(mgr, (const uint8_t *)"Jefe", 4, ipad, opad);
    if (hmac_job(mgr, ipad, opad, (const uint8_t *)data, sizeof data - 1, out, 32) != 0 ||
        memcmp(out, HMAC_TC2, 32) != 0) {
        fprintf(stderr, "mb_esp: HMAC-SHA-256 (RFC 4231 test case 2) failed under %s\n", label);
        failures++;
    }
}

/* The ESP bytes of this size: a seal changes the body and opens back to it; a flipped
 * ciphertext bit in one packet of the burst is refused, the others open. Leaves in
 * b->sealed one sealed packet (header, IV, body, ICV), its nonce in b->sealed_nonce. */
static void check_esp(struct bench *b) {
    for (int i = 0; i < b->n; i++)
        memcpy(body(b, i), b->plain, b->body_len);
    if (seal(b) != 0)
        fail(b, "ESP seal: a job failed");
    for (int i = 0; i < b->n; i++)
        if (memcmp(body(b, i), b->plain, b->body_len) == 0) {
            fail(b, "ESP seal left the body unchanged");
            break;
        }
    size_t whole = HDR + b->iv_len + b->body_len + TAG;
    if (b->alg == CBC_SHA256) {
        /* Encrypt-then-MAC: the ICV is the HMAC of header || IV || ciphertext. */
        uint8_t mac[32];
        if (hmac_job(b->mgr, b->ipad, b->opad, b->pkts[0].buf, whole - TAG, mac, 32) != 0 ||
            memcmp(mac, icv(b, 0), TAG) != 0)
            fail(b, "ESP seal: the ICV is not the HMAC of header, IV and ciphertext");
    }
    memcpy(b->sealed, b->pkts[0].buf, whole);
    memcpy(b->sealed_nonce, b->nonce[0], 12);
    for (int i = 0; i < b->n; i++) {
        memcpy(b->pkts[i].buf, b->sealed, whole);
        memcpy(b->nonce[i], b->nonce[0], 12);
    }
    int bad = b->n / 2;
    body(b, bad)[b->body_len / 2] ^= 0x01;
    if (open_all(b) != b->n - 1 || b->ok[bad])
        fail(b, "ESP open: a good packet was refused or a tampered one verified");
    for (int i = 0; i < b->n; i++)
        if (i != bad && memcmp(body(b, i), b->plain, b->body_len) != 0) {
            fail(b, "ESP open: wrong plaintext");
            break;
        }
    for (int i = 0; i < b->n; i++)
        memcpy(b->pkts[i].buf, b->sealed, whole);
}

/* ------------------------------------------------------------------ timing */

static double thread_cpu_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *c) {
    double x = *(const double *)a, y = *(const double *)c;
    return (x > y) - (x < y);
}

static volatile uint8_t sink;

static void run_seal(struct bench *b, uint64_t iters) {
    for (uint64_t k = 0; k < iters; k++) {
        for (int i = 0; i < b->n; i++)
            memcpy(body(b, i), b->plain, b->body_len);
        if (seal(b) != 0)
            die("a seal job failed in the timed loop");
        sink ^= icv(b, 0)[0];
    }
}

static void run_open(struct bench *b, uint64_t iters) {
    const uint8_t *sealed_body = b->sealed + HDR + b->iv_len;
    for (uint64_t k = 0; k < iters; k++) {
        for (int i = 0; i < b->n; i++)
            memcpy(body(b, i), sealed_body, b->body_len);
        if (open_all(b) != b->n)
            die("an open failed in the timed loop");
    }
}

/* Calibrates, then returns the median ns per iteration of ROUNDS timed rounds. */
static double measure(struct bench *b, void (*f)(struct bench *, uint64_t), double budget_ns) {
    uint64_t n = 1;
    double per_iter;
    for (;;) {
        double t0 = thread_cpu_ns();
        f(b, n);
        double e = thread_cpu_ns() - t0;
        if (e >= budget_ns / 16 || n >= (1u << 30)) {
            per_iter = e / (double)n;
            break;
        }
        n *= 2;
    }
    if (per_iter < 0.01)
        per_iter = 0.01;
    uint64_t iters = (uint64_t)(budget_ns * 0.85 / ROUNDS / per_iter);
    if (iters == 0)
        iters = 1;
    double v[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        double t0 = thread_cpu_ns();
        f(b, iters);
        v[r] = (thread_cpu_ns() - t0) / (double)iters;
    }
    qsort(v, ROUNDS, sizeof v[0], cmp_double);
    return v[ROUNDS / 2];
}

static void emit(const char *op, const char *backend, const struct bench *b, int size,
                 double ns) {
    printf("{\"op\":\"%s\",\"cipher\":\"%s\",\"backend\":\"%s\",\"size\":%d,\"burst\":%d,"
           "\"ns_per_packet\":%.2f,\"gbps\":%.3f,\"copy_included\":true,\"per_packet\":true,"
           "\"clock\":\"thread-cpu\",\"esp_body\":%zu,\"mb_arch\":\"%s\"}\n",
           op, LABELS[b->alg], backend, size, b->burst, ns, size * 8.0 / ns, b->body_len,
           b->mgr_label);
    fflush(stdout);
}

/* ------------------------------------------------------------------ cases */

static struct bench B;

/* Checks (and, with budget_ns > 0, times) one algorithm through one path. */
static void run_case(IMB_MGR *mgr, const char *mgr_label, const char *backend, enum alg alg,
                     int burst, double budget_ns) {
    struct bench *b = &B;
    memset(b, 0, sizeof *b);
    b->mgr = mgr, b->mgr_label = mgr_label, b->alg = alg, b->burst = burst, b->n = burst;
    b->checked = 1;
    b->iv_len = alg == CBC_SHA256 ? 16 : 8;
    uint8_t key[48];
    for (int i = 0; i < 48; i++)
        key[i] = (uint8_t)(0x42 + i);
    memcpy(b->salt, "\x5a\x17\x00\x01", 4);
    check_vector(b);
    if (alg == CBC_SHA256)
        check_hmac(mgr, mgr_label);
    set_key(b, key);
    for (size_t s = 0; s < sizeof SIZES / sizeof SIZES[0]; s++) {
        b->body_len = esp_body(SIZES[s]);
        /* An IPv4/UDP packet of SIZES[s] bytes, then the RFC 4303 padding 1, 2, ...
         * and the trailer (pad length, next header 4 = IPv4), as ESP writes them. */
        for (size_t i = 0; i < b->body_len; i++)
            b->plain[i] = (uint8_t)(0xab ^ i);
        size_t pad = b->body_len - (size_t)SIZES[s] - 2;
        for (size_t i = 0; i < pad; i++)
            b->plain[SIZES[s] + i] = (uint8_t)(i + 1);
        b->plain[b->body_len - 2] = (uint8_t)pad;
        b->plain[b->body_len - 1] = 4;
        for (int i = 0; i < b->n; i++) {
            memset(b->pkts[i].buf, 0, sizeof b->pkts[i].buf);
            memcpy(b->pkts[i].buf, "\x00\x00\x10\x01", 4); /* SPI */
        }
        b->checked = 1;
        check_esp(b);
        if (budget_ns <= 0 || failures)
            continue;
        b->checked = 0; /* timed: IMB_SUBMIT_BURST_NOCHECK, as DPDK's aesni_mb does */
        emit("aead-seal", backend, b, SIZES[s], measure(b, run_seal, budget_ns) / b->n);
        /* Every packet back to the sealed template and its nonce before the opens. */
        size_t whole = HDR + b->iv_len + b->body_len + TAG;
        for (int i = 0; i < b->n; i++) {
            memcpy(b->pkts[i].buf, b->sealed, whole);
            memcpy(b->nonce[i], b->sealed_nonce, 12);
        }
        emit("aead-open", backend, b, SIZES[s], measure(b, run_open, budget_ns) / b->n);
    }
}

static const char *describe(IMB_MGR *m, char *out, size_t len) {
    uint64_t f = m->features;
    snprintf(out, len, "%s (SHA-NI %s, VAES %s, VPCLMULQDQ %s, AVX-512 %s)",
             arch_name(m->used_arch), f & IMB_FEATURE_SHANI ? "yes" : "no",
             f & IMB_FEATURE_VAES ? "yes" : "no", f & IMB_FEATURE_VPCLMULQDQ ? "yes" : "no",
             (f & IMB_FEATURE_AVX512_SKX) == IMB_FEATURE_AVX512_SKX ? "yes" : "no");
    return out;
}

int main(int argc, char **argv) {
    int check_only = argc > 1 && strcmp(argv[1], "--check") == 0;
    double budget_ns = check_only ? 0 : (argc > 1 ? atof(argv[1]) : 150.0) * 1e6;
    if (!check_only && budget_ns <= 0)
        budget_ns = 150e6;
    IMB_MGR *autom = alloc_mb_mgr(0), *ssem = alloc_mb_mgr(0);
    if (autom == NULL || ssem == NULL)
        die("alloc_mb_mgr failed");
    IMB_ARCH arch = IMB_ARCH_NONE;
    init_mb_mgr_auto(autom, &arch);
    init_mb_mgr_sse(ssem);
    if (imb_get_errno(autom) != 0 || imb_get_errno(ssem) != 0)
        die("manager initialisation failed");
    char da[160], ds[160];
    fprintf(stderr, "mb_esp: intel-ipsec-mb %s; init_mb_mgr_auto picked %s; SSE manager: %s\n",
            imb_get_version_str(), describe(autom, da, sizeof da), describe(ssem, ds, sizeof ds));
    const char *al = arch_name(autom->used_arch);
    for (int a = GCM128; a <= CHACHA; a++)
        run_case(autom, al, "ipsec-mb", (enum alg)a, 1, budget_ns);
    for (int a = GCM128; a <= CBC_SHA256; a++)
        run_case(autom, al, "ipsec-mb-burst32", (enum alg)a, BURST, budget_ns);
    run_case(ssem, "sse", "ipsec-mb-sse-burst32", CBC_SHA256, BURST, budget_ns);
    free_mb_mgr(autom);
    free_mb_mgr(ssem);
    if (failures) {
        fprintf(stderr, "mb_esp: %d self-check(s) failed\n", failures);
        return 1;
    }
    if (check_only)
        fprintf(stderr, "mb_esp: every self-check passed (vectors, round trips, tampering)\n");
    return 0;
}
