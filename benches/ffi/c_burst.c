/*
 * C ABI bursts: times ipsec_sa_encrypt_burst / ipsec_sa_decrypt_burst on 32
 * tunnel-mode IPv4 packets per call, as a C gateway calls them (every iteration first
 * restores the packets with memcpy, included), thread CPU time, ns per packet.
 *
 *   cargo build --release -p ipsec-ffi
 *   cc -O2 -Wall -Wextra -Iinclude benches/ffi/c_burst.c -Ltarget/release -lipsec \
 *      -o target/c_burst
 *   LD_LIBRARY_PATH=target/release target/c_burst cbc 64     # or gcm, and any size
 *
 * Run it against two builds of libipsec (say, two commits) interleaved: the machines
 * are shared and noisy, so compare medians of several runs, never one.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */

#include "ipsec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BURST 32
#define STRIDE 2048
#define ROOM 128

/* This thread's last error, for a message. */
static const char *last_error(void) {
    static char msg[512];
    size_t n;
    if (ipsec_last_error(msg, sizeof msg, &n) != IPSEC_OK)
        return "(no message)";
    return msg;
}

static double thread_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

/* An IPv4 packet of `len` bytes, 10.0.0.1 -> 10.1.0.1, UDP (header checksum not
 * needed by the encrypting side). */
static void ipv4_packet(uint8_t *p, size_t len) {
    const uint8_t h[20] = {0x45, 0, (uint8_t)(len >> 8), (uint8_t)len, 0, 0, 0, 0, 64, 17,
                           0,    0, 10,                 0,            0, 1, 10, 1, 0, 1};
    memset(p, 0x5a, len);
    memcpy(p, h, sizeof h);
}

int main(int argc, char **argv) {
    int cbc = argc > 1 && strcmp(argv[1], "cbc") == 0;
    size_t len = argc > 2 ? (size_t)atoi(argv[2]) : 64;
    long iters = argc > 3 ? atol(argv[3]) : 30000;
    if (len < 20 || len > STRIDE - ROOM - 128 || iters <= 0) {
        fprintf(stderr, "usage: c_burst gcm|cbc [SIZE 20..%d] [ITERATIONS]\n", STRIDE - ROOM - 128);
        return 2;
    }
    static const uint8_t key[20] = {7}, auth_key[32] = {3};
    struct ipsec_sa *sa[2];
    for (int d = 0; d < 2; d++) {
        struct ipsec_sa_config c;
        ipsec_sa_config_init(&c);
        c.spi = 0x1234;
        c.direction = d ? IPSEC_DIRECTION_INBOUND : IPSEC_DIRECTION_OUTBOUND;
        c.mode = IPSEC_MODE_TUNNEL;
        c.cipher = cbc ? IPSEC_CIPHER_AES_128_CBC : IPSEC_CIPHER_AES_128_GCM;
        c.key = key;
        c.key_len = cbc ? 16 : 20;
        if (cbc) {
            c.integrity = IPSEC_INTEGRITY_HMAC_SHA256_128;
            c.integrity_key = auth_key;
            c.integrity_key_len = sizeof auth_key;
        }
        if (d == 0) {
            c.tunnel_src = "192.0.2.1";
            c.tunnel_dst = "192.0.2.2";
        } else {
            c.replay_window = 0; /* every iteration decrypts the same packets again */
        }
        if (ipsec_sa_new(&c, 0, &sa[d]) != IPSEC_OK) {
            fprintf(stderr, "ipsec_sa_new: %s\n", last_error());
            return 1;
        }
    }
    uint8_t *bufs = aligned_alloc(64, BURST * STRIDE);
    static uint8_t plain[STRIDE], sealed[STRIDE];
    struct ipsec_packet p[BURST];
    if (bufs == NULL)
        return 1;
    ipv4_packet(plain, len);
    for (int i = 0; i < BURST; i++) {
        memcpy(bufs + i * STRIDE + ROOM, plain, len);
        p[i] = (struct ipsec_packet){bufs + i * STRIDE, STRIDE, ROOM, len, 0, 0};
    }
    if (ipsec_sa_encrypt_burst(sa[0], p, BURST, 0) != BURST) {
        fprintf(stderr, "encrypt: %s\n", last_error());
        return 1;
    }
    size_t esp_off = p[0].offset, esp_len = p[0].length;
    memcpy(sealed, bufs + esp_off, esp_len);

    double t0 = thread_ns();
    for (long it = 0; it < iters; it++) {
        for (int i = 0; i < BURST; i++) {
            memcpy(bufs + i * STRIDE + ROOM, plain, len);
            p[i].offset = ROOM;
            p[i].length = len;
        }
        if (ipsec_sa_encrypt_burst(sa[0], p, BURST, 0) != BURST)
            return 1;
    }
    double t1 = thread_ns();
    for (long it = 0; it < iters; it++) {
        for (int i = 0; i < BURST; i++) {
            memcpy(bufs + i * STRIDE + esp_off, sealed, esp_len);
            p[i].offset = esp_off;
            p[i].length = esp_len;
        }
        if (ipsec_sa_decrypt_burst(sa[1], p, BURST, 0) != BURST)
            return 1;
    }
    double t2 = thread_ns();
    printf("%s %zu B, bursts of %d: encrypt %.1f ns/packet, decrypt %.1f ns/packet\n",
           cbc ? "aes-128-cbc+hmac-sha256-128" : "aes-128-gcm", len, BURST,
           (t1 - t0) / (double)iters / BURST, (t2 - t1) / (double)iters / BURST);
    ipsec_sa_free(sa[0]);
    ipsec_sa_free(sa[1]);
    free(bufs);
    return 0;
}
