/*
 * OpenSSL's AEADs as a packet path uses them: one EVP seal or open per packet, each with
 * its own nonce, 8 bytes of AAD (ESP's SPI and sequence number) and a 16-byte tag, the
 * key schedule made once. This is the OpenSSL figure that compares with the per-packet
 * seals of ring, aws-lc-rs and RustCrypto in `ipsec bench`.
 *
 * `openssl speed -evp CIPHER` measures something else: a stream of EVP_EncryptUpdate
 * calls on one context, with no nonce, no AAD and no tag per buffer (and for
 * ChaCha20-Poly1305 `-aead` does not change that in OpenSSL 3.0). Its figures are the
 * cost of the bulk cipher and MAC alone, not of sealing a packet.
 *
 * Timing matches `ipsec bench`: the measuring thread's CPU clock, a calibration run,
 * then 7 rounds whose median is reported; every iteration first restores its input with
 * memcpy (included, as in the Rust rows). Output: one JSON record per line, in the
 * format of `ipsec bench --json`, backend "openssl-evp".
 *
 * Build and run (scripts/bench-report.py does this):
 *     cc -O2 -o target/evp_aead benches/openssl/evp_aead.c -lcrypto
 *     target/evp_aead [MILLISECONDS_PER_CASE]
 */
#define _POSIX_C_SOURCE 199309L
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ROUNDS 7
#define MAX_SIZE 2048

struct aead_case {
    const char *evp_name; /* OpenSSL's name */
    const char *label;    /* ipsec's cipher name */
    int key_len;
};

static const struct aead_case CASES[] = {
    {"AES-128-GCM", "aes-128-gcm", 16},
    {"AES-256-GCM", "aes-256-gcm", 32},
    {"ChaCha20-Poly1305", "chacha20-poly1305", 32},
};
static const int SIZES[] = {64, 512, 1420};

static double thread_cpu_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void die(const char *what) {
    fprintf(stderr, "evp_aead: %s failed\n", what);
    exit(1);
}

struct bench {
    EVP_CIPHER_CTX *seal_ctx, *open_ctx;
    unsigned char plain[MAX_SIZE], sealed[MAX_SIZE], buf[MAX_SIZE];
    unsigned char tag[16], aad[8], nonce[12], open_nonce[12];
    int size;
    uint64_t counter;
};

/* One ESP-style seal of b->buf[0..size] in place; the nonce changes every packet. */
static void seal_once(struct bench *b, unsigned char tag[16]) {
    int outl = 0;
    b->counter++;
    for (int i = 0; i < 8; i++)
        b->nonce[4 + i] = (unsigned char)(b->counter >> (56 - 8 * i));
    if (EVP_EncryptInit_ex2(b->seal_ctx, NULL, NULL, b->nonce, NULL) != 1 ||
        EVP_EncryptUpdate(b->seal_ctx, NULL, &outl, b->aad, sizeof b->aad) != 1 ||
        EVP_EncryptUpdate(b->seal_ctx, b->buf, &outl, b->buf, b->size) != 1 ||
        EVP_EncryptFinal_ex(b->seal_ctx, b->buf + outl, &outl) != 1 ||
        EVP_CIPHER_CTX_ctrl(b->seal_ctx, EVP_CTRL_AEAD_GET_TAG, 16, tag) != 1)
        die("seal");
}

/* One open of b->buf in place against b->tag under b->open_nonce; 1 if the tag verified. */
static int open_once(struct bench *b) {
    int outl = 0;
    if (EVP_DecryptInit_ex2(b->open_ctx, NULL, NULL, b->open_nonce, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(b->open_ctx, EVP_CTRL_AEAD_SET_TAG, 16, b->tag) != 1 ||
        EVP_DecryptUpdate(b->open_ctx, NULL, &outl, b->aad, sizeof b->aad) != 1 ||
        EVP_DecryptUpdate(b->open_ctx, b->buf, &outl, b->buf, b->size) != 1)
        die("open");
    return EVP_DecryptFinal_ex(b->open_ctx, b->buf + outl, &outl) == 1;
}

static volatile unsigned char sink;

static void run_seal(struct bench *b, uint64_t n) {
    unsigned char tag[16];
    for (uint64_t i = 0; i < n; i++) {
        memcpy(b->buf, b->plain, (size_t)b->size);
        seal_once(b, tag);
        sink ^= tag[0];
    }
}

static void run_open(struct bench *b, uint64_t n) {
    for (uint64_t i = 0; i < n; i++) {
        memcpy(b->buf, b->sealed, (size_t)b->size);
        if (!open_once(b))
            die("open (the tag did not verify)");
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

static void emit(const char *op, const char *cipher, int size, double ns) {
    printf("{\"op\":\"%s\",\"cipher\":\"%s\",\"backend\":\"openssl-evp\",\"size\":%d,"
           "\"burst\":1,\"ns_per_packet\":%.2f,\"gbps\":%.3f,\"copy_included\":true,"
           "\"per_packet\":true,\"clock\":\"thread-cpu\"}\n",
           op, cipher, size, ns, size * 8.0 / ns);
}

int main(int argc, char **argv) {
    double budget_ns = (argc > 1 ? atof(argv[1]) : 150.0) * 1e6;
    if (budget_ns <= 0)
        budget_ns = 150e6;
    static struct bench b;
    for (size_t c = 0; c < sizeof CASES / sizeof CASES[0]; c++) {
        EVP_CIPHER *cipher = EVP_CIPHER_fetch(NULL, CASES[c].evp_name, NULL);
        if (cipher == NULL)
            die(CASES[c].evp_name);
        unsigned char key[32];
        for (int i = 0; i < 32; i++)
            key[i] = 0x42;
        memset(b.nonce, 0, sizeof b.nonce);
        b.seal_ctx = EVP_CIPHER_CTX_new();
        b.open_ctx = EVP_CIPHER_CTX_new();
        if (b.seal_ctx == NULL || b.open_ctx == NULL ||
            EVP_EncryptInit_ex2(b.seal_ctx, cipher, key, b.nonce, NULL) != 1 ||
            EVP_DecryptInit_ex2(b.open_ctx, cipher, key, b.nonce, NULL) != 1)
            die("key set-up");
        const unsigned char aad[8] = {0x00, 0x00, 0x10, 0x01, 0, 0, 0, 1};
        memcpy(b.aad, aad, sizeof aad);
        for (size_t s = 0; s < sizeof SIZES / sizeof SIZES[0]; s++) {
            b.size = SIZES[s];
            for (int i = 0; i < b.size; i++)
                b.plain[i] = (unsigned char)i;
            /* Self-check: what was sealed opens to the plaintext, and a flipped
             * ciphertext bit is refused. */
            memcpy(b.buf, b.plain, (size_t)b.size);
            seal_once(&b, b.tag);
            memcpy(b.open_nonce, b.nonce, sizeof b.nonce);
            memcpy(b.sealed, b.buf, (size_t)b.size);
            if (memcmp(b.sealed, b.plain, (size_t)b.size) == 0 || !open_once(&b) ||
                memcmp(b.buf, b.plain, (size_t)b.size) != 0)
                die("self-check (round trip)");
            memcpy(b.buf, b.sealed, (size_t)b.size);
            b.buf[b.size / 2] ^= 1;
            if (open_once(&b))
                die("self-check (a tampered packet verified)");
            emit("aead-seal", CASES[c].label, b.size, measure(&b, run_seal, budget_ns));
            emit("aead-open", CASES[c].label, b.size, measure(&b, run_open, budget_ns));
        }
        EVP_CIPHER_CTX_free(b.seal_ctx);
        EVP_CIPHER_CTX_free(b.open_ctx);
        EVP_CIPHER_free(cipher);
    }
    return 0;
}
