/*
 * The C gateway's packet path: times ipsec_gateway_outbound (one call per packet)
 * against ipsec_gateway_outbound_burst (one call per 32 packets) on the same gateway
 * (a PROTECT policy for 10.1.0.0/16 through one tunnel-mode SA, IKE bypassed, the rest
 * discarded), tunnel-mode IPv4/UDP packets to 32 hosts of 10.1.0.0/16, and likewise
 * ipsec_gateway_inbound against ipsec_gateway_inbound_burst on a receiving gateway
 * (the peer's inbound SA, replay window off so that the same 32 packets can be
 * received again and again); every iteration first restores the packets with memcpy
 * (included: the outbound side its cleartext, the inbound side the ESP packets whole).
 * Thread CPU time, ns per packet. Before timing it checks that the burst and the single
 * calls give every packet the same status, verdict, length and ESP header (outbound),
 * and the same status, verdict and inner packet (inbound).
 *
 *   cargo build --release -p ipsec-ffi
 *   cc -O2 -Wall -Wextra -Iinclude benches/ffi/c_gateway_burst.c -Ltarget/release \
 *      -lipsec -o target/c_gateway_burst
 *   LD_LIBRARY_PATH=target/release target/c_gateway_burst cbc 64   # or gcm, any size
 *
 * The machines are shared and noisy: compare medians of several runs, never one.
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

/* An IPv4/UDP packet of `len` bytes from 10.0.0.1 to 10.1.0.`host`, port 5001, with
 * its header checksum. */
static void ipv4_packet(uint8_t *p, size_t len, uint8_t host) {
    const uint8_t h[28] = {0x45, 0, (uint8_t)(len >> 8), (uint8_t)len, 0, 0, 0, 0, 64, 17,
                           0, 0, 10, 0, 0, 1, 10, 1, 0, host,
                           0x13, 0x88, 0x13, 0x89, (uint8_t)((len - 20) >> 8),
                           (uint8_t)(len - 20), 0, 0};
    memset(p, 0x5a, len);
    memcpy(p, h, sizeof h);
    uint32_t sum = 0;
    for (int i = 0; i < 20; i += 2)
        sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    p[10] = (uint8_t)(~sum >> 8);
    p[11] = (uint8_t)~sum;
}

static const char POLICY_GCM[] =
    "[[policy]]\nname = \"ike\"\nprotocol = \"udp\"\nremote_port = 500\naction = \"bypass\"\n"
    "[[policy]]\nname = \"branch\"\ndirection = \"outbound\"\nremote = \"10.1.0.0/16\"\n"
    "action = \"protect\"\nsa = \"out\"\n"
    "[[policy]]\nname = \"rest\"\naction = \"discard\"\n"
    "[[sa]]\nname = \"out\"\nspi = 4097\ndirection = \"outbound\"\nmode = \"tunnel\"\n"
    "cipher = \"aes-128-gcm\"\nkey = \"0707070707070707070707070707070707070707\"\n"
    "tunnel_src = \"192.0.2.1\"\ntunnel_dst = \"198.51.100.2\"\n";

static const char POLICY_CBC[] =
    "[[policy]]\nname = \"ike\"\nprotocol = \"udp\"\nremote_port = 500\naction = \"bypass\"\n"
    "[[policy]]\nname = \"branch\"\ndirection = \"outbound\"\nremote = \"10.1.0.0/16\"\n"
    "action = \"protect\"\nsa = \"out\"\n"
    "[[policy]]\nname = \"rest\"\naction = \"discard\"\n"
    "[[sa]]\nname = \"out\"\nspi = 4097\ndirection = \"outbound\"\nmode = \"tunnel\"\n"
    "cipher = \"aes-128-cbc\"\nkey = \"09090909090909090909090909090909\"\n"
    "integrity = \"hmac-sha256-128\"\n"
    "integrity_key = \"0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a\"\n"
    "tunnel_src = \"192.0.2.1\"\ntunnel_dst = \"198.51.100.2\"\n";

/* The receiving gateway of each policy above: the same SA inbound, serving the same
 * networks seen from the other side. */
static const char RECEIVER_GCM[] =
    "[[policy]]\nname = \"branch\"\ndirection = \"inbound\"\nlocal = \"10.1.0.0/16\"\n"
    "action = \"protect\"\nsa = \"in\"\n"
    "[[policy]]\nname = \"rest\"\naction = \"discard\"\n"
    "[[sa]]\nname = \"in\"\nspi = 4097\ndirection = \"inbound\"\nmode = \"tunnel\"\n"
    "cipher = \"aes-128-gcm\"\nkey = \"0707070707070707070707070707070707070707\"\n"
    "replay_window = 0\n";

static const char RECEIVER_CBC[] =
    "[[policy]]\nname = \"branch\"\ndirection = \"inbound\"\nlocal = \"10.1.0.0/16\"\n"
    "action = \"protect\"\nsa = \"in\"\n"
    "[[policy]]\nname = \"rest\"\naction = \"discard\"\n"
    "[[sa]]\nname = \"in\"\nspi = 4097\ndirection = \"inbound\"\nmode = \"tunnel\"\n"
    "cipher = \"aes-128-cbc\"\nkey = \"09090909090909090909090909090909\"\n"
    "integrity = \"hmac-sha256-128\"\n"
    "integrity_key = \"0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a\"\n"
    "replay_window = 0\n";

/* Restores the 32 cleartext packets and their descriptors. */
static void refill(uint8_t *bufs, struct ipsec_packet *p, uint8_t (*plain)[STRIDE],
                   size_t len) {
    for (int i = 0; i < BURST; i++) {
        memcpy(bufs + i * STRIDE + ROOM, plain[i], len);
        p[i] = (struct ipsec_packet){bufs + i * STRIDE, STRIDE, ROOM, len, 0, 0};
    }
}

/* One packet at a time, outbound or inbound; fills the statuses and verdicts like the
 * burst does. */
static size_t one_by_one(struct ipsec_gateway *gw, struct ipsec_packet *p, uint32_t *verdicts,
                         int inbound) {
    size_t ok = 0;
    for (int i = 0; i < BURST; i++) {
        struct ipsec_gateway_result r;
        ipsec_status st =
            inbound ? ipsec_gateway_inbound(gw, p[i].buf, p[i].capacity, &p[i].offset,
                                            &p[i].length, 0, &r)
                    : ipsec_gateway_outbound(gw, p[i].buf, p[i].capacity, &p[i].offset,
                                             &p[i].length, 0, &r);
        p[i].status = (uint32_t)st;
        verdicts[i] = st == IPSEC_OK ? r.verdict : 0;
        ok += st == IPSEC_OK;
    }
    return ok;
}

int main(int argc, char **argv) {
    int cbc = argc > 1 && strcmp(argv[1], "cbc") == 0;
    size_t len = argc > 2 ? (size_t)atoi(argv[2]) : 64;
    long iters = argc > 3 ? atol(argv[3]) : 30000;
    if (len < 28 || len > STRIDE - ROOM - 128 || iters <= 0) {
        fprintf(stderr, "usage: c_gateway_burst gcm|cbc [SIZE 28..%d] [ITERATIONS]\n",
                STRIDE - ROOM - 128);
        return 2;
    }
    const char *policy = cbc ? POLICY_CBC : POLICY_GCM;
    struct ipsec_gateway *gw[2];
    for (int g = 0; g < 2; g++) {
        if (ipsec_gateway_new(policy, strlen(policy), 0, &gw[g]) != IPSEC_OK) {
            fprintf(stderr, "ipsec_gateway_new: %s\n", last_error());
            return 1;
        }
    }
    uint8_t *bufs = aligned_alloc(64, BURST * STRIDE);
    static uint8_t plain[BURST][STRIDE];
    struct ipsec_packet p[BURST], q[BURST];
    uint32_t v[BURST], w[BURST];
    if (bufs == NULL)
        return 1;
    for (int i = 0; i < BURST; i++)
        ipv4_packet(plain[i], len, (uint8_t)(i + 1));

    /* The same answers both ways (gateway 0 per packet, gateway 1 in a burst; each
     * starts at sequence number 1, so the ESP headers match too). */
    refill(bufs, p, plain, len);
    size_t ok1 = one_by_one(gw[0], p, v, 0);
    uint8_t esp[BURST][8];
    for (int i = 0; i < BURST; i++)
        memcpy(esp[i], p[i].buf + p[i].offset + 20, 8);
    refill(bufs, q, plain, len);
    size_t ok2 = ipsec_gateway_outbound_burst(gw[1], q, BURST, 0, w);
    if (ok1 != BURST || ok2 != BURST) {
        fprintf(stderr, "%zu / %zu packets protected: %s\n", ok1, ok2, last_error());
        return 1;
    }
    for (int i = 0; i < BURST; i++) {
        if (p[i].status != q[i].status || v[i] != w[i] || v[i] != IPSEC_VERDICT_PROTECTED ||
            p[i].offset != q[i].offset || p[i].length != q[i].length ||
            memcmp(esp[i], q[i].buf + q[i].offset + 20, 8) != 0) {
            fprintf(stderr, "packet %d: the burst and the single calls disagree\n", i);
            return 1;
        }
    }

    double t0 = thread_ns();
    for (long it = 0; it < iters; it++) {
        refill(bufs, p, plain, len);
        if (one_by_one(gw[0], p, v, 0) != BURST)
            return 1;
    }
    double t1 = thread_ns();
    for (long it = 0; it < iters; it++) {
        refill(bufs, q, plain, len);
        if (ipsec_gateway_outbound_burst(gw[1], q, BURST, 0, w) != BURST)
            return 1;
    }
    double t2 = thread_ns();

    /* Inbound: what the burst just sealed, received by two gateways. */
    static uint8_t sealed[BURST][STRIDE];
    size_t sealed_off[BURST], sealed_len[BURST];
    for (int i = 0; i < BURST; i++) {
        sealed_off[i] = q[i].offset;
        sealed_len[i] = q[i].length;
        memcpy(sealed[i], q[i].buf + q[i].offset, q[i].length);
    }
    const char *receiver = cbc ? RECEIVER_CBC : RECEIVER_GCM;
    struct ipsec_gateway *rx[2];
    for (int g = 0; g < 2; g++) {
        if (ipsec_gateway_new(receiver, strlen(receiver), 0, &rx[g]) != IPSEC_OK) {
            fprintf(stderr, "ipsec_gateway_new (receiver): %s\n", last_error());
            return 1;
        }
    }
    for (int i = 0; i < BURST; i++) {
        memcpy(bufs + i * STRIDE + sealed_off[i], sealed[i], sealed_len[i]);
        p[i] = (struct ipsec_packet){bufs + i * STRIDE, STRIDE, sealed_off[i], sealed_len[i], 0, 0};
    }
    ok1 = one_by_one(rx[0], p, v, 1);
    static uint8_t inner[BURST][STRIDE];
    for (int i = 0; i < BURST; i++)
        memcpy(inner[i], p[i].buf + p[i].offset, len); /* (checked below: len bytes) */
    for (int i = 0; i < BURST; i++) {
        memcpy(bufs + i * STRIDE + sealed_off[i], sealed[i], sealed_len[i]);
        q[i] = (struct ipsec_packet){bufs + i * STRIDE, STRIDE, sealed_off[i], sealed_len[i], 0, 0};
    }
    ok2 = ipsec_gateway_inbound_burst(rx[1], q, BURST, 0, w);
    if (ok1 != BURST || ok2 != BURST) {
        fprintf(stderr, "%zu / %zu packets received: %s\n", ok1, ok2, last_error());
        return 1;
    }
    for (int i = 0; i < BURST; i++) {
        if (p[i].status != q[i].status || v[i] != w[i] || v[i] != IPSEC_VERDICT_DECRYPTED ||
            p[i].length != len || q[i].length != len ||
            memcmp(inner[i], q[i].buf + q[i].offset, len) != 0 ||
            memcmp(inner[i], plain[i], len) != 0) {
            fprintf(stderr, "packet %d: the inbound burst and the single calls disagree\n", i);
            return 1;
        }
    }
    double t3 = thread_ns();
    for (long it = 0; it < iters; it++) {
        for (int i = 0; i < BURST; i++) {
            memcpy(bufs + i * STRIDE + sealed_off[i], sealed[i], sealed_len[i]);
            p[i] = (struct ipsec_packet){bufs + i * STRIDE, STRIDE, sealed_off[i], sealed_len[i], 0, 0};
        }
        if (one_by_one(rx[0], p, v, 1) != BURST)
            return 1;
    }
    double t4 = thread_ns();
    for (long it = 0; it < iters; it++) {
        for (int i = 0; i < BURST; i++) {
            memcpy(bufs + i * STRIDE + sealed_off[i], sealed[i], sealed_len[i]);
            q[i] = (struct ipsec_packet){bufs + i * STRIDE, STRIDE, sealed_off[i], sealed_len[i], 0, 0};
        }
        if (ipsec_gateway_inbound_burst(rx[1], q, BURST, 0, w) != BURST)
            return 1;
    }
    double t5 = thread_ns();
    printf("%s %zu B, gateway one call per packet / bursts of %d: outbound %.1f / %.1f, "
           "inbound %.1f / %.1f ns/packet\n",
           cbc ? "aes-128-cbc+hmac-sha256-128" : "aes-128-gcm", len, BURST,
           (t1 - t0) / (double)iters / BURST, (t2 - t1) / (double)iters / BURST,
           (t4 - t3) / (double)iters / BURST, (t5 - t4) / (double)iters / BURST);
    for (int g = 0; g < 2; g++) {
        ipsec_gateway_free(gw[g]);
        ipsec_gateway_free(rx[g]);
    }
    free(bufs);
    return 0;
}
