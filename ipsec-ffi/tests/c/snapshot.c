/*
 * High availability through the C API: an outbound and an inbound SA are snapshotted
 * (size query, too-small buffer), traffic goes on, and a standby restores both from the
 * now stale snapshots on a clock of its own. The restored outbound SA continues after
 * the margin (no sequence number, so no AES-GCM nonce, is sent twice), a restore below
 * `not_below` or past the sequence space is refused, the restored inbound SA refuses the
 * packets its snapshot had recorded, and bad snapshot bytes give typed statuses.
 * Run by scripts/test-ffi.sh (static and shared library, valgrind, ASan/UBSan).
 */
#include <ipsec.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int checks = 0, failed = 0;

#define TRUE(what, cond)                                                                   \
    do {                                                                                   \
        checks++;                                                                          \
        if (!(cond)) {                                                                     \
            failed++;                                                                      \
            printf("FAIL line %d: %s\n", __LINE__, what);                                 \
        } else {                                                                           \
            printf("ok   %s\n", what);                                                    \
        }                                                                                  \
    } while (0)

static const uint64_t T0 = UINT64_C(5000000000000);
/* The standby's clock: another epoch, far behind the primary's. */
static const uint64_t STANDBY = UINT64_C(3000000000);
static const uint8_t KEY[20] = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20};

#define HEAD 128
#define SIZE 512
#define PACKETS 12

static ipsec_sa *make_sa(uint32_t direction, uint64_t seq)
{
    ipsec_sa_config c;
    ipsec_sa *sa = NULL;
    ipsec_sa_config_init(&c);
    c.spi = 0x6000;
    c.direction = direction;
    c.mode = IPSEC_MODE_TUNNEL;
    c.cipher = IPSEC_CIPHER_AES_128_GCM;
    c.key = KEY;
    c.key_len = sizeof KEY;
    c.seq = seq;
    if (direction == IPSEC_DIRECTION_OUTBOUND) {
        c.tunnel_src = "192.0.2.1";
        c.tunnel_dst = "198.51.100.2";
    }
    c.soft_lifetime.packets = 10;
    if (ipsec_sa_new(&c, T0, &sa) != IPSEC_OK) {
        printf("FAIL: cannot create the test SA\n");
        exit(1);
    }
    return sa;
}

/* A 60-byte IPv4/UDP packet at buf + HEAD. */
static void put_packet(uint8_t *buf)
{
    uint8_t *p = buf + HEAD;
    memset(buf, 0, SIZE);
    p[0] = 0x45;
    p[3] = 60;
    p[8] = 64;
    p[9] = 17;
    p[12] = 10; p[15] = 1;
    p[16] = 10; p[17] = 1; p[19] = 1;
    p[20] = 0x13; p[21] = 0x88; p[22] = 0x13; p[23] = 0x89;
    p[25] = 40;
}

/* The wire sequence number of a tunnel-mode IPv4 ESP packet. */
static uint32_t wire_seq(const uint8_t *pkt)
{
    return (uint32_t)pkt[24] << 24 | (uint32_t)pkt[25] << 16 | (uint32_t)pkt[26] << 8 | pkt[27];
}

static uint8_t sent[PACKETS][SIZE];
static size_t sent_off[PACKETS], sent_len[PACKETS];

/* Encrypts packet i with `sa` into sent[i]. */
static int send_one(ipsec_sa *sa, int i, uint64_t now)
{
    put_packet(sent[i]);
    sent_off[i] = HEAD;
    sent_len[i] = 60;
    return ipsec_sa_encrypt(sa, sent[i], SIZE, &sent_off[i], &sent_len[i], now) == IPSEC_OK;
}

/* Decrypts a copy of packet i with `sa`; returns the status. */
static ipsec_status receive(ipsec_sa *sa, int i, uint64_t now)
{
    uint8_t copy[SIZE];
    size_t off = sent_off[i], len = sent_len[i];
    memcpy(copy, sent[i], SIZE);
    return ipsec_sa_decrypt(sa, copy, SIZE, &off, &len, now);
}

/* A fresh snapshot of `sa` in malloc'd memory (the caller wipes and frees it). */
static uint8_t *take(const ipsec_sa *sa, uint64_t now, size_t *len)
{
    size_t need = 0;
    uint8_t *buf;
    if (ipsec_sa_snapshot_size(sa, now, &need) != IPSEC_OK || need == 0) {
        return NULL;
    }
    buf = malloc(need);
    if (buf == NULL || ipsec_sa_snapshot(sa, now, buf, need, len) != IPSEC_OK || *len != need) {
        free(buf);
        return NULL;
    }
    return buf;
}

static void wipe_free(uint8_t *p, size_t n)
{
    volatile uint8_t *v = p;
    size_t i;
    for (i = 0; i < n; i++) {
        v[i] = 0;
    }
    free(p);
}

static void failover(void)
{
    ipsec_sa *out = make_sa(IPSEC_DIRECTION_OUTBOUND, 0);
    ipsec_sa *in = make_sa(IPSEC_DIRECTION_INBOUND, 0);
    ipsec_sa *out2 = NULL, *in2 = NULL, *refused = NULL;
    uint8_t *snap_out, *snap_in, small[8];
    size_t out_len = 0, in_len = 0, n = 77;
    ipsec_restore_options opts;
    ipsec_sa_info info;
    ipsec_sa_stats st;
    ipsec_sa_event ev;
    int i, ok = 1;
    uint32_t seen[PACKETS + 4];

    printf("\n-- snapshot, stale failover, restore\n");
    for (i = 0; i < 4; i++) {
        ok &= send_one(out, i, T0);
        ok &= receive(in, i, T0) == IPSEC_OK;
        seen[i] = wire_seq(sent[i] + sent_off[i]);
    }
    TRUE("4 packets through the primary pair", ok);
    snap_out = take(out, T0, &out_len);
    snap_in = take(in, T0, &in_len);
    TRUE("snapshots of both SAs", snap_out != NULL && snap_in != NULL);
    TRUE("a too small buffer is refused, nothing written",
         ipsec_sa_snapshot(out, T0, small, sizeof small, &n) == IPSEC_ERR_BUFFER_TOO_SMALL && n == 77);
    TRUE("NULL out_len", ipsec_sa_snapshot(out, T0, small, sizeof small, NULL) == IPSEC_ERR_INVALID_ARGUMENT);
    TRUE("the snapshot starts with its magic", memcmp(snap_out, "IPSEC-SA", 8) == 0);

    /* The primary goes on after the snapshot: these sequence numbers are unknown to it. */
    ok = 1;
    for (i = 4; i < 8; i++) {
        ok &= send_one(out, i, T0);
        seen[i] = wire_seq(sent[i] + sent_off[i]);
    }
    TRUE("4 more packets after the snapshot", ok);

    ipsec_restore_options_init(&opts);
    TRUE("the default margin is 2^20", opts.seq_margin == IPSEC_DEFAULT_SEQ_MARGIN && opts.seq_margin == (UINT64_C(1) << 20));
    opts.seq_margin = 2;
    opts.not_below = 8;
    TRUE("a margin that does not reach not_below is refused",
         ipsec_sa_restore(snap_out, out_len, &opts, STANDBY, &refused) == IPSEC_ERR_SNAPSHOT_REFUSED && refused == NULL);
    opts.seq_margin = 100;
    TRUE("restore the outbound SA on the standby's clock",
         ipsec_sa_restore(snap_out, out_len, &opts, STANDBY, &out2) == IPSEC_OK);
    TRUE("it continues after snapshot + margin",
         ipsec_sa_get_info(out2, &info) == IPSEC_OK && info.seq == 104);
    TRUE("counters came back", ipsec_sa_get_stats(out2, &st) == IPSEC_OK && st.packets == 4);
    TRUE("restore the inbound SA with the defaults (NULL options)",
         ipsec_sa_restore(snap_in, in_len, NULL, STANDBY, &in2) == IPSEC_OK);

    ok = 1;
    for (i = 8; i < PACKETS; i++) {
        int j;
        ok &= send_one(out2, i, STANDBY);
        seen[i] = wire_seq(sent[i] + sent_off[i]);
        for (j = 0; j < i; j++) {
            ok &= seen[j] != seen[i];
        }
    }
    TRUE("the standby never repeats a sequence number (nonce) of the primary", ok);
    TRUE("the standby's first packet carries 105", seen[8] == 105);

    ok = 1;
    for (i = 0; i < 4; i++) {
        ok &= receive(in2, i, STANDBY) == IPSEC_ERR_REPLAY;
    }
    TRUE("packets recorded before the snapshot are refused as replays", ok);
    TRUE("a packet in flight at failover is accepted", receive(in2, 5, STANDBY) == IPSEC_OK);
    TRUE("... once", receive(in2, 5, STANDBY) == IPSEC_ERR_REPLAY);
    TRUE("the standby's packets are accepted", receive(in2, 8, STANDBY) == IPSEC_OK && receive(in2, 9, STANDBY) == IPSEC_OK);
    TRUE("inbound counters carried over",
         ipsec_sa_get_stats(in2, &st) == IPSEC_OK && st.packets == 7 && st.replay == 5);

    /* The soft packet lifetime (10) counts the primary's 4 packets too. */
    ok = 1;
    for (i = 0; i < 6; i++) {
        ok &= send_one(out2, 10, STANDBY);
    }
    TRUE("the soft lifetime counts usage from before the failover",
         ok && ipsec_sa_poll_event(out2, STANDBY, &ev) == IPSEC_OK && ev.kind == IPSEC_EVENT_REKEY && ev.limit == IPSEC_LIMIT_PACKETS);

    wipe_free(snap_out, out_len);
    wipe_free(snap_in, in_len);
    ipsec_sa_free(out);
    ipsec_sa_free(in);
    ipsec_sa_free(out2);
    ipsec_sa_free(in2);
}

static void bad_bytes(void)
{
    ipsec_sa *out = make_sa(IPSEC_DIRECTION_OUTBOUND, UINT64_C(4294967290));
    ipsec_sa *sa = NULL;
    uint8_t *snap, *bad;
    size_t len = 0, i;
    ipsec_restore_options opts;
    int ok = 1;

    printf("\n-- bad snapshot bytes and refused margins\n");
    snap = take(out, T0, &len);
    TRUE("snapshot near the end of the 32-bit space", snap != NULL);
    TRUE("the default margin would exhaust it",
         ipsec_sa_restore(snap, len, NULL, T0, &sa) == IPSEC_ERR_SNAPSHOT_REFUSED && sa == NULL);
    ipsec_restore_options_init(&opts);
    opts.seq_margin = 4;
    TRUE("a margin that leaves room is fine", ipsec_sa_restore(snap, len, &opts, T0, &sa) == IPSEC_OK);
    ipsec_sa_free(sa);
    sa = NULL;
    opts.reserved[2] = 1;
    TRUE("reserved options must be zero", ipsec_sa_restore(snap, len, &opts, T0, &sa) == IPSEC_ERR_INVALID_ARGUMENT);
    TRUE("NULL bytes", ipsec_sa_restore(NULL, 10, NULL, T0, &sa) == IPSEC_ERR_INVALID_ARGUMENT);
    TRUE("NULL out", ipsec_sa_restore(snap, len, NULL, T0, NULL) == IPSEC_ERR_INVALID_ARGUMENT);
    TRUE("no bytes", ipsec_sa_restore(NULL, 0, NULL, T0, &sa) == IPSEC_ERR_BAD_SNAPSHOT);

    for (i = 0; i < len; i++) {
        ok &= ipsec_sa_restore(snap, i, NULL, T0, &sa) == IPSEC_ERR_BAD_SNAPSHOT && sa == NULL;
    }
    TRUE("every truncation: IPSEC_ERR_BAD_SNAPSHOT", ok);

    bad = malloc(len);
    if (bad != NULL) {
        char msg[256];
        size_t n = 0;
        memcpy(bad, snap, len);
        bad[0] = 'X';
        TRUE("bad magic", ipsec_sa_restore(bad, len, NULL, T0, &sa) == IPSEC_ERR_BAD_SNAPSHOT);
        TRUE("... explained", ipsec_last_error(msg, sizeof msg, &n) == IPSEC_OK && strstr(msg, "magic") != NULL);
        memcpy(bad, snap, len);
        bad[9] = 9;
        TRUE("unsupported version", ipsec_sa_restore(bad, len, NULL, T0, &sa) == IPSEC_ERR_BAD_SNAPSHOT);
        TRUE("... explained", ipsec_last_error(msg, sizeof msg, &n) == IPSEC_OK && strstr(msg, "version 9") != NULL);
        wipe_free(bad, len);
    }
    TRUE("status text", strstr(ipsec_status_str(IPSEC_ERR_BAD_SNAPSHOT), "snapshot") != NULL);
    wipe_free(snap, len);
    ipsec_sa_free(out);
}

int main(void)
{
    failover();
    bad_bytes();
    printf("\n%d checks, %d failed\n", checks, failed);
    return failed == 0 ? 0 : 1;
}
