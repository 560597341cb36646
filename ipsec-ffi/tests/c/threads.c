/*
 * The calls made for several threads, with POSIX threads:
 *  - one outbound SA on two threads (ipsec_shared_sa_new, a lane per thread): every
 *    sequence number used once, exactly 1 .. 2N; the main thread reads the shared part
 *    while the lanes run; an ordinary inbound SA (ipsec_sa_new) decrypts every packet,
 *    delivered sorted by sequence number; two threads on two inbound lanes, each given
 *    every packet: each packet accepted exactly once, and the summed counters say so;
 *    the same with AES-CBC + HMAC through the lanes' burst calls
 *    (ipsec_sa_lane_encrypt_burst / ipsec_sa_lane_decrypt_burst);
 *  - a policy batch edited and compiled on another thread while the main thread passes
 *    packets through the gateway, then committed: the verdicts change; a stale commit
 *    is IPSEC_ERR_STALE_POLICIES with its message and changes nothing; the name strings
 *    stay coherent;
 *  - the SPD cache's counters;
 *  - NULL arguments refused by every new call, never a crash.
 * Run by scripts/test-ffi.sh (static and shared library, valgrind, ASan/UBSan).
 */
#define _POSIX_C_SOURCE 200809L
#include <ipsec.h>

#include <pthread.h>
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

/* This thread's last-error message (empty when there is none). */
static const char *last_error(void)
{
    static char msg[1024];
    size_t n = 0;
    if (ipsec_last_error(msg, sizeof msg, &n) != IPSEC_OK || n != strlen(msg)) {
        return "";
    }
    return msg;
}

/* A call returned `want`; for an error, the message contains `word` (when not NULL). */
static void check_status(int line, const char *what, ipsec_status got, ipsec_status want,
                         const char *word)
{
    const char *msg;
    checks++;
    if (got != want) {
        failed++;
        printf("FAIL line %d: %s: got %s, want %s (%s)\n", line, what, ipsec_status_str(got),
               ipsec_status_str(want), got == IPSEC_OK ? "" : last_error());
        return;
    }
    if (want == IPSEC_OK) {
        printf("ok   %s\n", what);
        return;
    }
    msg = last_error();
    if (msg[0] == '\0' || (word != NULL && strstr(msg, word) == NULL)) {
        failed++;
        printf("FAIL line %d: %s: message \"%s\", want one with \"%s\"\n", line, what, msg,
               word != NULL ? word : "(anything)");
        return;
    }
    printf("ok   %-50s %s: %s\n", what, ipsec_status_str(got), msg);
}

#define OK(what, call) check_status(__LINE__, what, (call), IPSEC_OK, NULL)
#define REFUSED(what, call, want, word) check_status(__LINE__, what, (call), (want), (word))
#define NULL_ARG(what, call) check_status(__LINE__, what, (call), IPSEC_ERR_INVALID_ARGUMENT, NULL)

static const uint64_t T0 = UINT64_C(1000000000);

#define HEAD 128
#define SIZE 256
#define PLEN 40
#define N 256 /* packets per thread: a whole number of blocks of 8 */
#define BLOCK 8

static const uint8_t KEY[20] = {0x4c, 0x80, 0xcd, 0xef, 0xbb, 0x5d, 0x10, 0xda, 0x90, 0x6a,
                                0xc7, 0x3c, 0x36, 0x13, 0xa6, 0x34, 0x2e, 0x44, 0x3b, 0x68};

static void make_config(ipsec_sa_config *c, uint32_t direction)
{
    ipsec_sa_config_init(c);
    c->spi = 0x4242;
    c->direction = direction;
    c->mode = IPSEC_MODE_TUNNEL;
    c->cipher = IPSEC_CIPHER_AES_128_GCM;
    c->key = KEY;
    c->key_len = sizeof KEY;
    if (direction == IPSEC_DIRECTION_OUTBOUND) {
        c->tunnel_src = "192.0.2.1";
        c->tunnel_dst = "198.51.100.2";
    } else {
        c->replay_window = 1024;
    }
}

/* A TCP packet 10.0.0.5:<sport> -> 10.1.0.9:50000 carrying `tag`, at buf + HEAD. */
static void put_packet(uint8_t *buf, uint16_t sport, uint32_t tag)
{
    uint8_t *p = buf + HEAD;
    memset(buf, 0, SIZE);
    p[0] = 0x45;
    p[3] = PLEN;
    p[8] = 64;
    p[9] = 6;
    p[12] = 10; p[15] = 5;
    p[16] = 10; p[17] = 1; p[19] = 9;
    p[20] = (uint8_t)(sport >> 8); p[21] = (uint8_t)sport;
    p[22] = 50000 >> 8; p[23] = 50000 & 0xff;
    p[24] = (uint8_t)(tag >> 24); p[25] = (uint8_t)(tag >> 16);
    p[26] = (uint8_t)(tag >> 8); p[27] = (uint8_t)tag;
    p[32] = 0x50;
}

static uint32_t tag_of(const uint8_t *inner)
{
    return (uint32_t)inner[24] << 24 | (uint32_t)inner[25] << 16 | (uint32_t)inner[26] << 8 |
           (uint32_t)inner[27];
}

/* A packet on the wire. */
typedef struct {
    uint8_t buf[SIZE];
    size_t off, len;
    ipsec_status st;
} wire;

static uint32_t seq_of(const wire *w)
{
    const uint8_t *esp = w->buf + w->off + 20; /* outer IPv4 header, then SPI, seq */
    return (uint32_t)esp[4] << 24 | (uint32_t)esp[5] << 16 | (uint32_t)esp[6] << 8 | (uint32_t)esp[7];
}

static wire sent[2][N];   /* what each outbound lane sent */
static wire *by_seq[2 * N + 1]; /* the same, by sequence number */

typedef struct {
    ipsec_sa_lane *lane;
    int index;
    int failures;
    int accepted[2 * N + 1]; /* inbound: which sequence numbers this lane accepted */
    int replayed;
} worker;

static void *encrypt_worker(void *arg)
{
    worker *w = arg;
    int i;
    for (i = 0; i < N; i++) {
        wire *p = &sent[w->index][i];
        put_packet(p->buf, 3389, (uint32_t)w->index << 16 | (uint32_t)i);
        p->off = HEAD;
        p->len = PLEN;
        p->st = ipsec_sa_lane_encrypt(w->lane, p->buf, SIZE, &p->off, &p->len, T0);
        if (p->st != IPSEC_OK) {
            w->failures++;
        }
    }
    return NULL;
}

/* Each inbound lane is given every packet, in sequence order. */
static void *decrypt_worker(void *arg)
{
    worker *w = arg;
    uint32_t s;
    for (s = 1; s <= 2 * N; s++) {
        wire copy = *by_seq[s];
        ipsec_status st = ipsec_sa_lane_decrypt(w->lane, copy.buf, SIZE, &copy.off, &copy.len, T0);
        if (st == IPSEC_OK) {
            w->accepted[s] = 1;
        } else if (st == IPSEC_ERR_REPLAY || st == IPSEC_ERR_TOO_OLD) {
            w->replayed++;
        } else {
            w->failures++;
        }
    }
    return NULL;
}

static worker workers[2];

/* Starts `fn` on two threads, thread t on workers[t] with lanes[t]. */
static void start_lane_workers(pthread_t threads[2], ipsec_sa_lane *lanes[2], void *(*fn)(void *))
{
    int t;
    for (t = 0; t < 2; t++) {
        workers[t].lane = lanes[t];
        workers[t].index = t;
        if (pthread_create(&threads[t], NULL, fn, &workers[t]) != 0) {
            printf("FAIL: pthread_create\n");
            exit(1);
        }
    }
}

/* Runs `fn` on two threads as start_lane_workers; returns when both have finished. */
static void run_lane_workers(ipsec_sa_lane *lanes[2], void *(*fn)(void *))
{
    pthread_t threads[2];
    int t;
    start_lane_workers(threads, lanes, fn);
    for (t = 0; t < 2; t++) {
        pthread_join(threads[t], NULL);
    }
}

/* Fills by_seq from what the two lanes (or workers) sent; 1 when their sequence numbers
 * are exactly 1 .. 2N, each used once. */
static int index_by_seq(void)
{
    int t, i, ok = 1;
    memset(by_seq, 0, sizeof by_seq);
    for (t = 0; t < 2; t++) {
        for (i = 0; i < N; i++) {
            uint32_t s = seq_of(&sent[t][i]);
            if (s < 1 || s > 2 * N || by_seq[s] != NULL) {
                ok = 0;
            } else {
                by_seq[s] = &sent[t][i];
            }
        }
    }
    return ok;
}

/* An ordinary inbound SA of `cfg` decrypts by_seq[1 .. 2N] (see index_by_seq), in
 * sequence order: `*decrypted` counts the packets it accepted, `*tags_ok` stays 1 when
 * each decrypts to the one its lane sent (tag lane << 16 | index). */
static void decrypt_sorted(const ipsec_sa_config *cfg, int *decrypted, int *tags_ok)
{
    ipsec_sa *inbound = NULL;
    int i;
    *decrypted = 0;
    *tags_ok = 1;
    OK("ipsec_sa_new (the ordinary inbound SA)", ipsec_sa_new(cfg, T0, &inbound));
    for (i = 1; i <= 2 * N; i++) {
        wire copy = *by_seq[i];
        const wire *orig = by_seq[i];
        int lane = orig >= &sent[1][0];
        int idx = (int)(orig - &sent[lane][0]);
        if (ipsec_sa_decrypt(inbound, copy.buf, SIZE, &copy.off, &copy.len, T0) == IPSEC_OK) {
            (*decrypted)++;
            if (copy.len != PLEN || tag_of(copy.buf + copy.off) != ((uint32_t)lane << 16 | (uint32_t)idx)) {
                *tags_ok = 0;
            }
        }
    }
    ipsec_sa_free(inbound);
}

static void shared_sa(void)
{
    ipsec_sa_config cfg;
    ipsec_shared_sa *tx = NULL, *rx = NULL;
    ipsec_sa_lane *lanes[2] = {NULL, NULL};
    ipsec_sa_stats st, lane0, lane1;
    pthread_t threads[2];
    uint64_t seen = 0, seq;
    int i, t, distinct = 1, in_range = 1, monotone = 1, decrypted = 0, tags_ok = 1, once = 1;

    printf("\n-- one outbound SA, two threads, a lane each\n");
    make_config(&cfg, IPSEC_DIRECTION_OUTBOUND);
    OK("ipsec_shared_sa_new: 2 lanes, blocks of 8",
       ipsec_shared_sa_new(&cfg, 2, BLOCK, T0, &tx, lanes));
    start_lane_workers(threads, lanes, encrypt_worker);
    /* The shared part may be read from any thread while the lanes run. */
    for (i = 0; i < 1000; i++) {
        seq = ipsec_shared_sa_seq(tx);
        if (seq < seen || seq > 2 * N) {
            monotone = 0;
        }
        seen = seq;
        if (ipsec_shared_sa_get_stats(tx, &st) != IPSEC_OK || st.packets > 2 * N) {
            monotone = 0;
        }
    }
    for (t = 0; t < 2; t++) {
        pthread_join(threads[t], NULL);
    }
    TRUE("the main thread read seq and stats while the lanes ran", monotone);
    TRUE("every packet encrypted", workers[0].failures == 0 && workers[1].failures == 0);
    memset(by_seq, 0, sizeof by_seq);
    for (t = 0; t < 2; t++) {
        for (i = 0; i < N; i++) {
            uint32_t s = seq_of(&sent[t][i]);
            if (s < 1 || s > 2 * N) {
                in_range = 0;
            } else if (by_seq[s] != NULL) {
                distinct = 0;
            } else {
                by_seq[s] = &sent[t][i];
            }
        }
    }
    TRUE("every sequence number in 1 .. 2N", in_range);
    TRUE("no sequence number used twice", distinct);
    for (i = 1; i <= 2 * N; i++) {
        if (by_seq[i] == NULL) {
            in_range = 0;
        }
    }
    TRUE("... and none skipped: exactly 1 .. 2N", in_range && distinct);
    TRUE("ipsec_shared_sa_seq is 2N", ipsec_shared_sa_seq(tx) == 2 * N);
    OK("lane 0 stats", ipsec_sa_lane_get_stats(lanes[0], &lane0));
    OK("lane 1 stats", ipsec_sa_lane_get_stats(lanes[1], &lane1));
    TRUE("each lane counted its N packets", lane0.packets == N && lane1.packets == N);
    OK("publish lane 0", ipsec_sa_lane_publish(lanes[0]));
    OK("publish lane 1", ipsec_sa_lane_publish(lanes[1]));
    OK("shared stats", ipsec_shared_sa_get_stats(tx, &st));
    TRUE("the shared stats sum the lanes: 2N packets",
         st.packets == 2 * N && st.bytes == lane0.bytes + lane1.bytes);
    /* Any order: the shared part first. */
    ipsec_shared_sa_free(tx);
    ipsec_sa_lane_free(lanes[0]);
    ipsec_sa_lane_free(lanes[1]);

    printf("\n-- an ordinary inbound SA decrypts them all, sorted by sequence number\n");
    make_config(&cfg, IPSEC_DIRECTION_INBOUND);
    if (in_range) {
        decrypt_sorted(&cfg, &decrypted, &tags_ok);
    }
    TRUE("all 2N decrypted", decrypted == 2 * N);
    TRUE("... each the packet its lane sent", tags_ok);

    printf("\n-- two threads on two inbound lanes, each given every packet\n");
    OK("ipsec_shared_sa_new: 2 inbound lanes, default block",
       ipsec_shared_sa_new(&cfg, 2, 0, T0, &rx, lanes));
    memset(workers, 0, sizeof workers);
    run_lane_workers(lanes, decrypt_worker);
    TRUE("no other failure", workers[0].failures == 0 && workers[1].failures == 0);
    for (i = 1; i <= 2 * N; i++) {
        if (workers[0].accepted[i] + workers[1].accepted[i] != 1) {
            once = 0;
        }
    }
    TRUE("each packet accepted exactly once in total", once);
    TRUE("... and dropped as a replay by the other lane",
         workers[0].replayed + workers[1].replayed == 2 * N);
    TRUE("ipsec_shared_sa_seq: the highest accepted", ipsec_shared_sa_seq(rx) == 2 * N);
    OK("lane 0 stats", ipsec_sa_lane_get_stats(lanes[0], &lane0));
    OK("lane 1 stats", ipsec_sa_lane_get_stats(lanes[1], &lane1));
    TRUE("the lanes' own counters add up", lane0.packets + lane1.packets == 2 * N &&
                                               lane0.replay + lane0.too_old + lane1.replay +
                                                       lane1.too_old ==
                                                   2 * N);
    /* The lanes first this time: freeing a lane publishes its counters. */
    ipsec_sa_lane_free(lanes[0]);
    ipsec_sa_lane_free(lanes[1]);
    OK("shared stats after the lanes are freed", ipsec_shared_sa_get_stats(rx, &st));
    TRUE("summed: 2N accepted, 2N replays", st.packets == 2 * N && st.replay + st.too_old == 2 * N &&
                                                st.bytes == lane0.bytes + lane1.bytes &&
                                                st.auth_failed == 0);
    ipsec_shared_sa_free(rx);
}

/* ---------------------------------------------------------------------------------- */

/* The same with AES-128-CBC + HMAC-SHA-256-128 through the lanes' burst calls. */

static const uint8_t CBC_KEY[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
static const uint8_t HMAC_KEY[32] = {0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
                                     0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
                                     0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
                                     0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a};

static void make_cbc_config(ipsec_sa_config *c, uint32_t direction)
{
    make_config(c, direction);
    c->cipher = IPSEC_CIPHER_AES_128_CBC;
    c->key = CBC_KEY;
    c->key_len = sizeof CBC_KEY;
    c->integrity = IPSEC_INTEGRITY_HMAC_SHA256_128;
    c->integrity_key = HMAC_KEY;
    c->integrity_key_len = sizeof HMAC_KEY;
}

#define BURST 32

/* Encrypts the lane's N packets in bursts of BURST. */
static void *encrypt_burst_worker(void *arg)
{
    worker *w = arg;
    ipsec_packet d[BURST];
    int i, k;
    for (i = 0; i < N; i += BURST) {
        for (k = 0; k < BURST; k++) {
            wire *p = &sent[w->index][i + k];
            put_packet(p->buf, 3389, (uint32_t)w->index << 16 | (uint32_t)(i + k));
            d[k].buf = p->buf;
            d[k].capacity = SIZE;
            d[k].offset = HEAD;
            d[k].length = PLEN;
        }
        if (ipsec_sa_lane_encrypt_burst(w->lane, d, BURST, T0) != BURST) {
            w->failures++;
        }
        for (k = 0; k < BURST; k++) {
            wire *p = &sent[w->index][i + k];
            p->off = d[k].offset;
            p->len = d[k].length;
            p->st = (ipsec_status)d[k].status;
            if (p->st != IPSEC_OK) {
                w->failures++;
            }
        }
    }
    return NULL;
}

/* Each inbound lane is given every packet, in sequence order, in bursts of BURST. */
static void *decrypt_burst_worker(void *arg)
{
    worker *w = arg;
    static wire copies[2][BURST];
    ipsec_packet d[BURST];
    uint32_t s;
    int k;
    for (s = 1; s <= 2 * N; s += BURST) {
        for (k = 0; k < BURST; k++) {
            wire *c = &copies[w->index][k];
            *c = *by_seq[s + (uint32_t)k];
            d[k].buf = c->buf;
            d[k].capacity = SIZE;
            d[k].offset = c->off;
            d[k].length = c->len;
        }
        ipsec_sa_lane_decrypt_burst(w->lane, d, BURST, T0);
        for (k = 0; k < BURST; k++) {
            if (d[k].status == IPSEC_OK) {
                w->accepted[s + (uint32_t)k] = 1;
            } else if (d[k].status == IPSEC_ERR_REPLAY || d[k].status == IPSEC_ERR_TOO_OLD) {
                w->replayed++;
            } else {
                w->failures++;
            }
        }
    }
    return NULL;
}

static void lane_bursts(void)
{
    ipsec_sa_config cfg;
    ipsec_shared_sa *tx = NULL, *rx = NULL;
    ipsec_sa_lane *lanes[2] = {NULL, NULL};
    ipsec_sa_stats st;
    ipsec_packet none = {NULL, 0, 0, 0, 0, 0};
    int i, unique, once = 1, decrypted = 0, tags_ok = 0;

    printf("\n-- one AES-CBC + HMAC outbound SA, two threads, a lane each, in bursts of 32\n");
    make_cbc_config(&cfg, IPSEC_DIRECTION_OUTBOUND);
    OK("ipsec_shared_sa_new: 2 lanes, blocks of 8",
       ipsec_shared_sa_new(&cfg, 2, BLOCK, T0, &tx, lanes));
    memset(workers, 0, sizeof workers);
    run_lane_workers(lanes, encrypt_burst_worker);
    TRUE("every packet encrypted", workers[0].failures == 0 && workers[1].failures == 0);
    unique = index_by_seq();
    TRUE("exactly 1 .. 2N, none twice (bursts lease blocks as single calls do)",
         unique && ipsec_shared_sa_seq(tx) == 2 * N);
    TRUE("a NULL lane: 0, every status INVALID_ARGUMENT",
         ipsec_sa_lane_encrypt_burst(NULL, &none, 1, T0) == 0 &&
             none.status == IPSEC_ERR_INVALID_ARGUMENT);
    ipsec_sa_lane_free(lanes[0]);
    ipsec_sa_lane_free(lanes[1]);
    OK("shared stats", ipsec_shared_sa_get_stats(tx, &st));
    TRUE("the lanes counted 2N packets", st.packets == 2 * N);
    ipsec_shared_sa_free(tx);

    printf("\n-- an ordinary inbound SA decrypts them all\n");
    make_cbc_config(&cfg, IPSEC_DIRECTION_INBOUND);
    if (unique) {
        decrypt_sorted(&cfg, &decrypted, &tags_ok);
    }
    TRUE("all 2N decrypted, each the packet its lane sent", decrypted == 2 * N && tags_ok);

    printf("\n-- two threads on two inbound lanes, each given every packet, in bursts\n");
    OK("ipsec_shared_sa_new: 2 inbound lanes",
       ipsec_shared_sa_new(&cfg, 2, 0, T0, &rx, lanes));
    memset(workers, 0, sizeof workers);
    if (unique) {
        run_lane_workers(lanes, decrypt_burst_worker);
    }
    TRUE("no other failure", workers[0].failures == 0 && workers[1].failures == 0);
    for (i = 1; i <= 2 * N; i++) {
        if (workers[0].accepted[i] + workers[1].accepted[i] != 1) {
            once = 0;
        }
    }
    TRUE("each packet accepted exactly once, the other copy a replay",
         once && workers[0].replayed + workers[1].replayed == 2 * N);
    ipsec_sa_lane_free(lanes[0]);
    ipsec_sa_lane_free(lanes[1]);
    OK("shared stats", ipsec_shared_sa_get_stats(rx, &st));
    TRUE("summed: 2N accepted, 2N replays",
         st.packets == 2 * N && st.replay + st.too_old == 2 * N && st.auth_failed == 0);
    ipsec_shared_sa_free(rx);
}

/* ---------------------------------------------------------------------------------- */

static const char POLICY[] =
    "[[policy]]\nname = \"rdp\"\ndirection = \"both\"\nlocal = \"10.0.0.0/24\"\n"
    "remote = \"10.1.0.0/24\"\nprotocol = \"tcp\"\nlocal_port = 3389\naction = \"protect\"\n"
    "sa = [\"out\", \"in\"]\n\n"
    "[[policy]]\nname = \"web\"\ndirection = \"both\"\nprotocol = \"tcp\"\nlocal_port = 80\n"
    "action = \"bypass\"\n\n"
    "[[policy]]\nname = \"deny\"\ndirection = \"both\"\naction = \"discard\"\n\n"
    "[[sa]]\nname = \"out\"\nspi = 4097\ndirection = \"outbound\"\nmode = \"tunnel\"\n"
    "cipher = \"aes-128-gcm\"\nkey = \"0707070707070707070707070707070707070707\"\n"
    "tunnel_src = \"192.0.2.1\"\ntunnel_dst = \"198.51.100.2\"\n\n"
    "[[sa]]\nname = \"in\"\nspi = 8193\ndirection = \"inbound\"\nmode = \"tunnel\"\n"
    "cipher = \"aes-128-gcm\"\nkey = \"0808080808080808080808080808080808080808\"\n";

static const char RDP_CLEAR[] = "name = \"rdp-clear\"\nlocal = \"10.0.0.5\"\nprotocol = \"tcp\"\n"
                                "local_port = 3389\naction = \"bypass\"\n";

static const char STALE_MESSAGE[] =
    "the policies changed after this edit was taken, or it was taken from another gateway: "
    "edit them again from this gateway's current policies";

/* The verdict of an outbound packet from local port `sport`; its policy in *policy. */
static ipsec_status outbound(ipsec_gateway *gw, uint16_t sport, uint32_t *verdict, const char **policy)
{
    uint8_t buf[SIZE];
    size_t off = HEAD, len = PLEN;
    ipsec_gateway_result r;
    ipsec_status st;
    put_packet(buf, sport, 1);
    st = ipsec_gateway_outbound(gw, buf, SIZE, &off, &len, T0, &r);
    *verdict = st == IPSEC_OK ? r.verdict : 0;
    *policy = st == IPSEC_OK ? r.policy : NULL;
    return st;
}

static int is(const char *s, const char *want)
{
    return s != NULL && strcmp(s, want) == 0;
}

typedef struct {
    ipsec_policy_edit *edit;
    ipsec_compiled_policies *compiled;
    ipsec_status install, remove, compile;
    pthread_mutex_t lock;
    int done;
} compiler;

/* Another thread edits the batch and compiles it: no gateway needed. */
static void *compile_worker(void *arg)
{
    compiler *c = arg;
    c->install = ipsec_policy_edit_install(c->edit, RDP_CLEAR, "rdp");
    c->remove = ipsec_policy_edit_remove(c->edit, "web");
    c->compile = ipsec_policy_edit_compile(c->edit, &c->compiled); /* consumes the edit */
    c->edit = NULL;
    pthread_mutex_lock(&c->lock);
    c->done = 1;
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

static void policy_batch(void)
{
    ipsec_gateway *gw = NULL;
    ipsec_policy_edit *stale = NULL;
    ipsec_compiled_policies *stale_compiled = NULL;
    compiler c;
    pthread_t thread;
    uint32_t verdict;
    const char *policy, *web_name;
    int during = 0, all_protected = 1, done = 0;
    size_t capacity = 0;
    uint64_t hits = 0, misses = 0;

    printf("\n-- a policy batch compiled on another thread while packets flow\n");
    OK("ipsec_gateway_new", ipsec_gateway_new(POLICY, sizeof POLICY - 1, T0, &gw));
    OK("SPD cache of 64 flows", ipsec_gateway_set_spd_cache(gw, 64));
    OK("rdp packet", outbound(gw, 3389, &verdict, &policy));
    TRUE("... protected by rdp", verdict == IPSEC_VERDICT_PROTECTED && is(policy, "rdp"));
    OK("web packet", outbound(gw, 80, &verdict, &web_name));
    TRUE("... bypassed by web", verdict == IPSEC_VERDICT_BYPASSED && is(web_name, "web"));

    memset(&c, 0, sizeof c);
    pthread_mutex_init(&c.lock, NULL);
    OK("ipsec_gateway_edit_policies", ipsec_gateway_edit_policies(gw, &c.edit));
    OK("a second edit, taken at the same time", ipsec_gateway_edit_policies(gw, &stale));
    TRUE("the edit holds the gateway's 3 policies", ipsec_policy_edit_count(c.edit) == 3);
    if (pthread_create(&thread, NULL, compile_worker, &c) != 0) {
        printf("FAIL: pthread_create\n");
        exit(1);
    }
    /* Packets go on while the other thread edits and compiles (at least 100, and until
     * it is done). */
    while (!done || during < 100) {
        if (outbound(gw, 3389, &verdict, &policy) != IPSEC_OK || verdict != IPSEC_VERDICT_PROTECTED ||
            !is(policy, "rdp")) {
            all_protected = 0;
        }
        during++;
        pthread_mutex_lock(&c.lock);
        done = c.done;
        pthread_mutex_unlock(&c.lock);
    }
    pthread_join(thread, NULL);
    pthread_mutex_destroy(&c.lock);
    printf("     (%d packets passed during the edit and compile)\n", during);
    TRUE("until the commit, the old policies decide", all_protected);
    check_status(__LINE__, "install rdp-clear on the other thread", c.install, IPSEC_OK, NULL);
    check_status(__LINE__, "remove web on the other thread", c.remove, IPSEC_OK, NULL);
    check_status(__LINE__, "compile on the other thread", c.compile, IPSEC_OK, NULL);
    ipsec_retired_policies *retired = NULL;
    OK("ipsec_gateway_commit_policies", ipsec_gateway_commit_policies(gw, c.compiled, &retired));
    TRUE("... hands back the replaced policies", retired != NULL);
    ipsec_retired_policies_free(retired); /* after the lock, in a gateway with one */
    OK("rdp packet after the commit", outbound(gw, 3389, &verdict, &policy));
    TRUE("... bypassed by rdp-clear", verdict == IPSEC_VERDICT_BYPASSED && is(policy, "rdp-clear"));
    REFUSED("web packet after the commit: web is gone", outbound(gw, 80, &verdict, &policy),
            IPSEC_ERR_POLICY_DISCARD, NULL);
    TRUE("the removed policy's name string is still valid until the next control call",
         is(web_name, "web"));

    printf("\n-- a stale batch\n");
    OK("the stale edit: remove rdp", ipsec_policy_edit_remove(stale, "rdp"));
    OK("... compiled", ipsec_policy_edit_compile(stale, &stale_compiled));
    REFUSED("commit over policies that changed", ipsec_gateway_commit_policies(gw, stale_compiled, NULL),
            IPSEC_ERR_STALE_POLICIES, STALE_MESSAGE);
    TRUE("ipsec_status_str names it",
         strncmp(ipsec_status_str(IPSEC_ERR_STALE_POLICIES), "IPSEC_ERR_STALE_POLICIES: ", 26) == 0 &&
             IPSEC_ERR_STALE_POLICIES == 238);
    OK("rdp packet after the stale commit", outbound(gw, 3389, &verdict, &policy));
    TRUE("... still bypassed by rdp-clear: nothing changed",
         verdict == IPSEC_VERDICT_BYPASSED && is(policy, "rdp-clear"));
    TRUE("... and web is still gone", outbound(gw, 80, &verdict, &policy) == IPSEC_ERR_POLICY_DISCARD);

    printf("\n-- the SPD cache\n");
    OK("ipsec_gateway_get_spd_cache_stats", ipsec_gateway_get_spd_cache_stats(gw, &capacity, &hits, &misses));
    printf("     capacity %zu, hits %llu, misses %llu\n", capacity, (unsigned long long)hits,
           (unsigned long long)misses);
    /* 2 + during + 2 + 2 lookups; misses: each flow once, and again after the commit. */
    TRUE("capacity 64", capacity == 64);
    TRUE("every lookup counted", hits + misses == (uint64_t)during + 6);
    TRUE("the repeated flow hit", hits >= (uint64_t)during);
    REFUSED("a cache too large", ipsec_gateway_set_spd_cache(gw, IPSEC_SPD_CACHE_MAX_FLOWS + 1),
            IPSEC_ERR_CONFIG, "capacity");
    OK("turned off", ipsec_gateway_set_spd_cache(gw, 0));
    OK("stats", ipsec_gateway_get_spd_cache_stats(gw, &capacity, &hits, &misses));
    TRUE("off: capacity 0, counters from 0", capacity == 0 && hits == 0 && misses == 0);
    ipsec_gateway_free(gw);
}

/* ---------------------------------------------------------------------------------- */

/* One SA on two worker threads, each thread with its own gateway holding its lane. */
static const char WORKER_POLICY[] = "[[policy]]\nname = \"deny\"\ndirection = \"both\"\naction = \"discard\"\n";
static const char RDP_OUT[] = "name = \"rdp\"\ndirection = \"outbound\"\nlocal = \"10.0.0.0/24\"\n"
                              "remote = \"10.1.0.0/24\"\naction = \"protect\"\nsa = \"out\"\n";

typedef struct {
    ipsec_gateway *gw;
    int index;
    int failures;
} gateway_worker;

static void *gateway_encrypt_worker(void *arg)
{
    gateway_worker *w = arg;
    ipsec_gateway_result r;
    int i;
    for (i = 0; i < N; i++) {
        wire *p = &sent[w->index][i];
        put_packet(p->buf, 3389, (uint32_t)w->index << 16 | (uint32_t)i);
        p->off = HEAD;
        p->len = PLEN;
        p->st = ipsec_gateway_outbound(w->gw, p->buf, SIZE, &p->off, &p->len, T0, &r);
        if (p->st != IPSEC_OK || r.verdict != IPSEC_VERDICT_PROTECTED || !is(r.sa, "out")) {
            w->failures++;
        }
    }
    return NULL;
}

static void worker_gateways(void)
{
    ipsec_sa_config cfg;
    ipsec_shared_sa *tx = NULL, *next = NULL;
    ipsec_sa_lane *lanes[2] = {NULL, NULL}, *next_lanes[2] = {NULL, NULL}, *null_lane = NULL;
    ipsec_gateway *gws[2] = {NULL, NULL};
    gateway_worker gw_workers[2];
    pthread_t threads[2];
    ipsec_sa *inbound = NULL;
    ipsec_sa_stats st;
    uint8_t buf[SIZE];
    size_t off, len;
    int w, unique = 1, decrypted = 1, tags_ok = 1;
    uint32_t s;

    printf("\n-- one SA on two worker gateways (ipsec_gateway_add_sa_lane)\n");
    make_config(&cfg, IPSEC_DIRECTION_OUTBOUND);
    OK("an outbound shared SA, 2 lanes", ipsec_shared_sa_new(&cfg, 2, BLOCK, T0, &tx, lanes));
    for (w = 0; w < 2; w++) {
        OK("a worker's gateway", ipsec_gateway_new(WORKER_POLICY, sizeof WORKER_POLICY - 1, T0, &gws[w]));
        OK("ipsec_gateway_add_sa_lane", ipsec_gateway_add_sa_lane(gws[w], "out", &lanes[w]));
        TRUE("... the gateway owns the lane: *lane is NULL", lanes[w] == NULL);
        OK("the policy that sends through it", ipsec_gateway_install_policy(gws[w], RDP_OUT, "deny"));
    }
    for (w = 0; w < 2; w++) {
        gw_workers[w].gw = gws[w];
        gw_workers[w].index = w;
        gw_workers[w].failures = 0;
        if (pthread_create(&threads[w], NULL, gateway_encrypt_worker, &gw_workers[w]) != 0) {
            printf("FAIL: pthread_create\n");
            exit(1);
        }
    }
    for (w = 0; w < 2; w++) {
        pthread_join(threads[w], NULL);
    }
    TRUE("every packet protected by its worker's gateway",
         gw_workers[0].failures == 0 && gw_workers[1].failures == 0);
    unique = index_by_seq();
    TRUE("sequence numbers 1..2N, each used once (blocks of 8 from one counter)", unique);
    make_config(&cfg, IPSEC_DIRECTION_INBOUND);
    OK("the peer's inbound SA", ipsec_sa_new(&cfg, T0, &inbound));
    for (s = 1; unique && s <= 2 * N; s++) {
        wire copy = *by_seq[s];
        if (ipsec_sa_decrypt(inbound, copy.buf, SIZE, &copy.off, &copy.len, T0) != IPSEC_OK) {
            decrypted = 0;
        } else {
            /* The inner packet: one of a worker's tags (worker << 16 | packet). */
            uint32_t tag = tag_of(copy.buf + copy.off);
            if (tag >> 16 > 1 || (tag & 0xffff) >= N) {
                tags_ok = 0;
            }
        }
    }
    TRUE("the peer decrypts every packet, in sequence order", decrypted && tags_ok);
    ipsec_sa_free(inbound);

    printf("\n-- lane ownership: refused calls give the lane back\n");
    make_config(&cfg, IPSEC_DIRECTION_OUTBOUND);
    cfg.spi = 0x4343;
    {
        uint8_t key2[20];
        memcpy(key2, KEY, sizeof key2);
        key2[0] ^= 0xff;
        cfg.key = key2;
        OK("an outbound successor SA, 2 lanes", ipsec_shared_sa_new(&cfg, 2, BLOCK, T0, &next, next_lanes));
    }
    REFUSED("add_sa_lane under a name in use", ipsec_gateway_add_sa_lane(gws[0], "out", &next_lanes[0]),
            IPSEC_ERR_DUPLICATE_NAME, "out");
    TRUE("... *lane is the caller's lane again", next_lanes[0] != NULL);
    put_packet(buf, 3389, 7);
    off = HEAD;
    len = PLEN;
    OK("... and it still encrypts", ipsec_sa_lane_encrypt(next_lanes[0], buf, SIZE, &off, &len, T0));
    REFUSED("rekey_sa_lane of an unknown SA", ipsec_gateway_rekey_sa_lane(gws[0], "nope", "out.2", &next_lanes[0]),
            IPSEC_ERR_UNKNOWN_SA, "nope");
    TRUE("... *lane given back", next_lanes[0] != NULL);
    NULL_ARG("add_sa_lane: lane", ipsec_gateway_add_sa_lane(gws[0], "x", NULL));
    NULL_ARG("add_sa_lane: *lane", ipsec_gateway_add_sa_lane(gws[0], "x", &null_lane));
    NULL_ARG("add_sa_lane: gateway", ipsec_gateway_add_sa_lane(NULL, "x", &next_lanes[0]));
    TRUE("... nothing taken", next_lanes[0] != NULL);
    NULL_ARG("rekey_sa_lane: name", ipsec_gateway_rekey_sa_lane(gws[0], "out", NULL, &next_lanes[0]));
    for (w = 0; w < 2; w++) {
        OK("rekey_sa_lane on each worker", ipsec_gateway_rekey_sa_lane(gws[w], "out", "out.2", &next_lanes[w]));
        TRUE("... *lane is NULL", next_lanes[w] == NULL);
        OK("... the old lane deleted", ipsec_gateway_delete_sa(gws[w], "out", NULL));
    }
    OK("the old SA's counters (published as its lanes were deleted)", ipsec_shared_sa_get_stats(tx, &st));
    TRUE("... 2N packets", st.packets == 2 * N);
    for (w = 0; w < 2; w++) {
        ipsec_gateway_result r;
        put_packet(buf, 3389, 9);
        off = HEAD;
        len = PLEN;
        OK("a packet after the rekey", ipsec_gateway_outbound(gws[w], buf, SIZE, &off, &len, T0, &r));
        TRUE("... through the successor's lane", is(r.sa, "out.2"));
        ipsec_gateway_free(gws[w]);
    }
    OK("the successor's counters (published when the gateways were freed)", ipsec_shared_sa_get_stats(next, &st));
    /* Two through the gateways, one by the lane refused (then installed) itself. */
    TRUE("... 3 packets", st.packets == 3);
    ipsec_shared_sa_free(next);
    ipsec_shared_sa_free(tx);
}

static void null_arguments(void)
{
    ipsec_sa_config cfg;
    ipsec_shared_sa *shared = NULL;
    ipsec_sa_lane *lanes[2] = {NULL, NULL};
    ipsec_gateway *gw = NULL;
    ipsec_policy_edit *edit = NULL;
    ipsec_compiled_policies *compiled = NULL;
    ipsec_sa_stats st;
    ipsec_sa_event ev;
    uint8_t buf[SIZE];
    size_t off = HEAD, len = PLEN, capacity;
    uint64_t hits, misses;

    printf("\n-- NULL arguments\n");
    make_config(&cfg, IPSEC_DIRECTION_OUTBOUND);
    NULL_ARG("shared_sa_new: config", ipsec_shared_sa_new(NULL, 2, 0, T0, &shared, lanes));
    NULL_ARG("shared_sa_new: shared_out", ipsec_shared_sa_new(&cfg, 2, 0, T0, NULL, lanes));
    NULL_ARG("shared_sa_new: lanes_out", ipsec_shared_sa_new(&cfg, 2, 0, T0, &shared, NULL));
    REFUSED("shared_sa_new: 0 lanes", ipsec_shared_sa_new(&cfg, 0, 0, T0, &shared, lanes),
            IPSEC_ERR_CONFIG, "lanes");
    REFUSED("shared_sa_new: 257 lanes", ipsec_shared_sa_new(&cfg, 257, 0, T0, &shared, lanes),
            IPSEC_ERR_CONFIG, "lanes");
    REFUSED("shared_sa_new: a block of 1025", ipsec_shared_sa_new(&cfg, 2, 1025, T0, &shared, lanes),
            IPSEC_ERR_CONFIG, "block");
    TRUE("nothing written by the refused calls", shared == NULL && lanes[0] == NULL && lanes[1] == NULL);
    NULL_ARG("shared_sa_get_stats: shared", ipsec_shared_sa_get_stats(NULL, &st));
    TRUE("shared_sa_seq(NULL) is 0", ipsec_shared_sa_seq(NULL) == 0);
    NULL_ARG("sa_lane_encrypt: lane", ipsec_sa_lane_encrypt(NULL, buf, SIZE, &off, &len, T0));
    NULL_ARG("sa_lane_decrypt: lane", ipsec_sa_lane_decrypt(NULL, buf, SIZE, &off, &len, T0));
    NULL_ARG("sa_lane_get_stats: lane", ipsec_sa_lane_get_stats(NULL, &st));
    NULL_ARG("sa_lane_publish: lane", ipsec_sa_lane_publish(NULL));
    NULL_ARG("sa_lane_poll_event: lane", ipsec_sa_lane_poll_event(NULL, T0, &ev));

    OK("a real shared SA", ipsec_shared_sa_new(&cfg, 2, 0, T0, &shared, lanes));
    NULL_ARG("shared_sa_get_stats: out", ipsec_shared_sa_get_stats(shared, NULL));
    NULL_ARG("sa_lane_encrypt: buf", ipsec_sa_lane_encrypt(lanes[0], NULL, SIZE, &off, &len, T0));
    NULL_ARG("sa_lane_encrypt: offset", ipsec_sa_lane_encrypt(lanes[0], buf, SIZE, NULL, &len, T0));
    NULL_ARG("sa_lane_encrypt: length", ipsec_sa_lane_encrypt(lanes[0], buf, SIZE, &off, NULL, T0));
    off = SIZE;
    NULL_ARG("sa_lane_encrypt: descriptor beyond the buffer",
             ipsec_sa_lane_encrypt(lanes[0], buf, SIZE, &off, &len, T0));
    off = HEAD;
    NULL_ARG("sa_lane_decrypt: buf", ipsec_sa_lane_decrypt(lanes[1], NULL, SIZE, &off, &len, T0));
    NULL_ARG("sa_lane_get_stats: out", ipsec_sa_lane_get_stats(lanes[0], NULL));
    NULL_ARG("sa_lane_poll_event: out", ipsec_sa_lane_poll_event(lanes[0], T0, NULL));
    put_packet(buf, 3389, 7);
    REFUSED("sa_lane_decrypt on an outbound lane", ipsec_sa_lane_decrypt(lanes[1], buf, SIZE, &off, &len, T0),
            IPSEC_ERR_WRONG_DIRECTION, NULL);
    OK("sa_lane_poll_event", ipsec_sa_lane_poll_event(lanes[0], T0, &ev));
    TRUE("... no event", ev.kind == IPSEC_EVENT_NONE);
    ipsec_sa_lane_free(lanes[1]);
    ipsec_sa_lane_free(lanes[0]);
    ipsec_shared_sa_free(shared);
    ipsec_shared_sa_free(NULL);
    ipsec_sa_lane_free(NULL);

    OK("a gateway", ipsec_gateway_new(POLICY, sizeof POLICY - 1, T0, &gw));
    NULL_ARG("edit_policies: gateway", ipsec_gateway_edit_policies(NULL, &edit));
    NULL_ARG("edit_policies: out", ipsec_gateway_edit_policies(gw, NULL));
    NULL_ARG("policy_edit_install: edit", ipsec_policy_edit_install(NULL, RDP_CLEAR, NULL));
    NULL_ARG("policy_edit_replace: edit", ipsec_policy_edit_replace(NULL, RDP_CLEAR));
    NULL_ARG("policy_edit_remove: edit", ipsec_policy_edit_remove(NULL, "rdp"));
    NULL_ARG("policy_edit_compile: edit", ipsec_policy_edit_compile(NULL, &compiled));
    TRUE("policy_edit_count(NULL) is 0", ipsec_policy_edit_count(NULL) == 0);
    OK("an edit", ipsec_gateway_edit_policies(gw, &edit));
    NULL_ARG("policy_edit_install: policy_toml", ipsec_policy_edit_install(edit, NULL, NULL));
    NULL_ARG("policy_edit_replace: policy_toml", ipsec_policy_edit_replace(edit, NULL));
    NULL_ARG("policy_edit_remove: name", ipsec_policy_edit_remove(edit, NULL));
    REFUSED("policy_edit_install: not a policy", ipsec_policy_edit_install(edit, "name = 1\n", NULL),
            IPSEC_ERR_CONFIG, NULL);
    REFUSED("policy_edit_install: before an unknown policy",
            ipsec_policy_edit_install(edit, RDP_CLEAR, "nope"), IPSEC_ERR_UNKNOWN_POLICY, "nope");
    REFUSED("policy_edit_replace: an unknown policy", ipsec_policy_edit_replace(edit, RDP_CLEAR),
            IPSEC_ERR_UNKNOWN_POLICY, "rdp-clear");
    REFUSED("policy_edit_remove: an unknown policy", ipsec_policy_edit_remove(edit, "nope"),
            IPSEC_ERR_UNKNOWN_POLICY, "nope");
    TRUE("refused edit calls changed nothing", ipsec_policy_edit_count(edit) == 3);
    NULL_ARG("policy_edit_compile: out (the edit is consumed)", ipsec_policy_edit_compile(edit, NULL));
    edit = NULL;
    NULL_ARG("commit_policies: compiled", ipsec_gateway_commit_policies(gw, NULL, NULL));
    OK("an edit", ipsec_gateway_edit_policies(gw, &edit));
    OK("compiled", ipsec_policy_edit_compile(edit, &compiled));
    NULL_ARG("commit_policies: gateway (compiled is consumed)", ipsec_gateway_commit_policies(NULL, compiled, NULL));
    OK("an edit, freed unused", ipsec_gateway_edit_policies(gw, &edit));
    ipsec_policy_edit_free(edit);
    OK("an edit", ipsec_gateway_edit_policies(gw, &edit));
    OK("compiled, freed uncommitted", ipsec_policy_edit_compile(edit, &compiled));
    ipsec_compiled_policies_free(compiled);
    ipsec_policy_edit_free(NULL);
    ipsec_retired_policies_free(NULL);
    ipsec_compiled_policies_free(NULL);
    NULL_ARG("set_spd_cache: gateway", ipsec_gateway_set_spd_cache(NULL, 64));
    NULL_ARG("get_spd_cache_stats: gateway", ipsec_gateway_get_spd_cache_stats(NULL, &capacity, &hits, &misses));
    NULL_ARG("get_spd_cache_stats: capacity", ipsec_gateway_get_spd_cache_stats(gw, NULL, &hits, &misses));
    NULL_ARG("get_spd_cache_stats: hits", ipsec_gateway_get_spd_cache_stats(gw, &capacity, NULL, &misses));
    NULL_ARG("get_spd_cache_stats: misses", ipsec_gateway_get_spd_cache_stats(gw, &capacity, &hits, NULL));
    ipsec_gateway_free(gw);
}

/* The lane calls besides packets: the SPI, buffer sizing as an ordinary SA of the same
 * configuration needs, and NAT-keepalives sent by lane 0 only. */
static void lane_sizing_and_keepalives(void)
{
    ipsec_sa_config cfg;
    ipsec_shared_sa *shared = NULL;
    ipsec_sa_lane *lanes[2] = {NULL, NULL};
    ipsec_sa *plain = NULL;
    ipsec_overhead want, got;
    uint8_t ka[IPSEC_NAT_KEEPALIVE_MAX_LEN], small[IPSEC_NAT_KEEPALIVE_MAX_LEN - 1];
    size_t ka_len = 99;
    uint64_t due = 0;
    const uint64_t interval_ns = UINT64_C(20) * 1000000000u;

    printf("\n-- lane sizing and NAT-keepalives\n");
    make_config(&cfg, IPSEC_DIRECTION_OUTBOUND);
    cfg.udp_encap = true;
    cfg.udp_src_port = 4500;
    cfg.udp_dst_port = 4500;
    cfg.nat_keepalive_interval = 20;
    OK("an outbound shared SA with NAT-T, 2 lanes", ipsec_shared_sa_new(&cfg, 2, 0, T0, &shared, lanes));
    TRUE("ipsec_shared_sa_spi is the configured SPI", ipsec_shared_sa_spi(shared) == 0x4242);
    TRUE("ipsec_shared_sa_spi(NULL) is 0", ipsec_shared_sa_spi(NULL) == 0);
    OK("an ordinary SA of the same configuration", ipsec_sa_new(&cfg, T0, &plain));
    for (size_t len = 0; len <= 1500; len += 37) {
        OK("ipsec_sa_overhead", ipsec_sa_overhead(plain, len, &want));
        OK("ipsec_sa_lane_overhead", ipsec_sa_lane_overhead(lanes[1], len, &got));
        TRUE("... the lane needs what the SA needs",
             got.headroom == want.headroom && got.tailroom == want.tailroom &&
                 got.max_overhead == want.max_overhead);
    }
    TRUE("... and room for UDP at least", want.headroom >= 20 + 8 + 8);

    OK("lane 0: next keepalive", ipsec_sa_lane_next_keepalive(lanes[0], &due));
    TRUE("... due one interval after creation", due == T0 + interval_ns);
    OK("lane 1: next keepalive", ipsec_sa_lane_next_keepalive(lanes[1], &due));
    TRUE("... never (lane 0 sends them)", due == UINT64_MAX);
    OK("lane 0: poll before it is due", ipsec_sa_lane_poll_keepalive(lanes[0], T0 + interval_ns - 1, ka, sizeof ka, &ka_len));
    TRUE("... none", ka_len == 0);
    REFUSED("lane 0: poll with a short buffer",
            ipsec_sa_lane_poll_keepalive(lanes[0], T0 + interval_ns, small, sizeof small, &ka_len),
            IPSEC_ERR_BUFFER_TOO_SMALL, NULL);
    OK("lane 0: poll when due", ipsec_sa_lane_poll_keepalive(lanes[0], T0 + interval_ns, ka, sizeof ka, &ka_len));
    /* IPv4 (20) + UDP (8) + one 0xFF byte, to port 4500. */
    TRUE("... one IPv4 NAT-keepalive", ka_len == 29 && ka[0] == 0x45 && ka[9] == 17 &&
                                             ka[22] == 0x11 && ka[23] == 0x94 && ka[28] == 0xFF);
    OK("lane 0: poll again at once", ipsec_sa_lane_poll_keepalive(lanes[0], T0 + interval_ns, ka, sizeof ka, &ka_len));
    TRUE("... none (it was just sent)", ka_len == 0);
    OK("lane 1: poll when due", ipsec_sa_lane_poll_keepalive(lanes[1], T0 + interval_ns, ka, sizeof ka, &ka_len));
    TRUE("... none on lane 1", ka_len == 0);

    NULL_ARG("sa_lane_overhead: lane", ipsec_sa_lane_overhead(NULL, 40, &got));
    NULL_ARG("sa_lane_overhead: out", ipsec_sa_lane_overhead(lanes[0], 40, NULL));
    NULL_ARG("sa_lane_poll_keepalive: lane", ipsec_sa_lane_poll_keepalive(NULL, T0, ka, sizeof ka, &ka_len));
    NULL_ARG("sa_lane_poll_keepalive: buf", ipsec_sa_lane_poll_keepalive(lanes[0], T0, NULL, sizeof ka, &ka_len));
    NULL_ARG("sa_lane_poll_keepalive: out_len", ipsec_sa_lane_poll_keepalive(lanes[0], T0, ka, sizeof ka, NULL));
    NULL_ARG("sa_lane_next_keepalive: lane", ipsec_sa_lane_next_keepalive(NULL, &due));
    NULL_ARG("sa_lane_next_keepalive: out_ns", ipsec_sa_lane_next_keepalive(lanes[0], NULL));
    ipsec_sa_free(plain);
    ipsec_sa_lane_free(lanes[1]);
    ipsec_sa_lane_free(lanes[0]);
    ipsec_shared_sa_free(shared);
}

int main(void)
{
    shared_sa();
    lane_bursts();
    lane_sizing_and_keepalives();
    worker_gateways();
    policy_batch();
    null_arguments();
    printf("\n%d checks, %d failed\n", checks, failed);
    return failed == 0 ? 0 : 1;
}
