/*
 * Every error path of the C API: each call must return the documented status and leave
 * a useful last-error message (one that names what was wrong), and nothing may crash.
 * Run by scripts/test-ffi.sh against the static and the shared library, under valgrind
 * and with ASan/UBSan. Exit status 0 when every check held.
 */
#include <ipsec.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int checks = 0, failed = 0;

/* Checks `got == want`; for an error also that the last-error message contains `word`. */
static void check_status(int line, const char *what, ipsec_status got, ipsec_status want,
                         const char *word)
{
    char msg[1024];
    size_t n = 0;
    ipsec_status st;
    checks++;
    if (got != want) {
        failed++;
        printf("FAIL line %d: %s: got %s, want %s\n", line, what, ipsec_status_str(got),
               ipsec_status_str(want));
        return;
    }
    if (want == IPSEC_OK) {
        return;
    }
    st = ipsec_last_error(msg, sizeof msg, &n);
    if (st != IPSEC_OK || n == 0 || n != strlen(msg)) {
        failed++;
        printf("FAIL line %d: %s: no last-error message\n", line, what);
        return;
    }
    if (word != NULL && strstr(msg, word) == NULL) {
        failed++;
        printf("FAIL line %d: %s: message \"%s\" does not mention \"%s\"\n", line, what, msg,
               word);
        return;
    }
    printf("ok   %-52s %s: %s\n", what, ipsec_status_str(got), msg);
}

#define CHECK(what, call, want, word) check_status(__LINE__, what, (call), (want), (word))
#define TRUE(what, cond)                                                                   \
    do {                                                                                   \
        checks++;                                                                          \
        if (!(cond)) {                                                                     \
            failed++;                                                                      \
            printf("FAIL line %d: %s\n", __LINE__, what);                                 \
        }                                                                                  \
    } while (0)

#define UNKNOWN_KEY "[[policy]]\nname = \"p\"\nacton = \"bypass\"\n"
#define BAD_NAME "[[policy]]\nname = 1\n"

static const uint64_t T0 = UINT64_C(1000000000000);
static const uint64_t SECOND = UINT64_C(1000000000);
static const uint8_t KEY[20] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20};

static void base_config(ipsec_sa_config *c, uint32_t spi, uint32_t direction)
{
    ipsec_sa_config_init(c);
    c->spi = spi;
    c->direction = direction;
    c->mode = IPSEC_MODE_TUNNEL;
    c->cipher = IPSEC_CIPHER_AES_128_GCM;
    c->key = KEY;
    c->key_len = sizeof KEY;
    if (direction == IPSEC_DIRECTION_OUTBOUND) {
        c->tunnel_src = "192.0.2.1";
        c->tunnel_dst = "192.0.2.2";
    }
}

static ipsec_sa *make_sa(uint32_t spi, uint32_t direction)
{
    ipsec_sa_config c;
    ipsec_sa *sa = NULL;
    base_config(&c, spi, direction);
    if (ipsec_sa_new(&c, T0, &sa) != IPSEC_OK) {
        printf("FAIL: cannot create the test SA\n");
        exit(1);
    }
    return sa;
}

/* An IPv4/UDP packet of `len` bytes at buf + off. */
static void put_packet(uint8_t *buf, size_t off, size_t len)
{
    uint8_t *p = buf + off;
    memset(p, 0xab, len);
    memset(p, 0, 28);
    p[0] = 0x45;
    p[2] = (uint8_t)(len >> 8);
    p[3] = (uint8_t)len;
    p[8] = 64;
    p[9] = 17;
    p[12] = 10; p[15] = 1;
    p[16] = 10; p[17] = 1; p[19] = 1;
    p[20] = 0x13; p[21] = 0x88; p[22] = 0x13; p[23] = 0x89;
    p[24] = (uint8_t)((len - 20) >> 8);
    p[25] = (uint8_t)(len - 20);
}

/* Encrypts a fresh 100-byte packet into buf; returns its length and offset. */
static size_t protect(ipsec_sa *out, uint8_t *buf, size_t cap, size_t *off)
{
    size_t len = 100;
    *off = 128;
    put_packet(buf, *off, len);
    if (ipsec_sa_encrypt(out, buf, cap, off, &len, T0) != IPSEC_OK) {
        printf("FAIL: cannot encrypt the test packet\n");
        exit(1);
    }
    return len;
}

static void null_handles_and_pointers(void)
{
    uint8_t buf[512];
    size_t off = 128, len = 100;
    ipsec_sa *sa = make_sa(0x1000, IPSEC_DIRECTION_OUTBOUND);
    ipsec_sa *out = NULL;
    ipsec_sa_config c;
    ipsec_sa_stats stats;
    ipsec_sa_info info;
    ipsec_overhead oh;
    ipsec_sa_event ev;
    ipsec_decision d;
    ipsec_spd *spd = NULL;
    ipsec_lint *lint = NULL;
    uint64_t highest;
    char msg[8];
    size_t n;

    printf("\n-- NULL handles and pointers\n");
    put_packet(buf, off, len);
    CHECK("encrypt with a NULL sa", ipsec_sa_encrypt(NULL, buf, sizeof buf, &off, &len, T0),
          IPSEC_ERR_INVALID_ARGUMENT, "`sa`");
    CHECK("decrypt with a NULL sa", ipsec_sa_decrypt(NULL, buf, sizeof buf, &off, &len, T0),
          IPSEC_ERR_INVALID_ARGUMENT, "`sa`");
    CHECK("encrypt a NULL buffer", ipsec_sa_encrypt(sa, NULL, sizeof buf, &off, &len, T0),
          IPSEC_ERR_INVALID_ARGUMENT, "`buf`");
    CHECK("encrypt with a NULL offset", ipsec_sa_encrypt(sa, buf, sizeof buf, NULL, &len, T0),
          IPSEC_ERR_INVALID_ARGUMENT, "`offset`");
    CHECK("encrypt with a NULL length", ipsec_sa_encrypt(sa, buf, sizeof buf, &off, NULL, T0),
          IPSEC_ERR_INVALID_ARGUMENT, "`length`");
    TRUE("offset and length unchanged after refused calls", off == 128 && len == 100);
    CHECK("sa_new with a NULL config", ipsec_sa_new(NULL, T0, &out), IPSEC_ERR_INVALID_ARGUMENT, "`config`");
    base_config(&c, 0x1000, IPSEC_DIRECTION_OUTBOUND);
    CHECK("sa_new with a NULL out", ipsec_sa_new(&c, T0, NULL), IPSEC_ERR_INVALID_ARGUMENT, "`out`");
    CHECK("config_init(NULL)", ipsec_sa_config_init(NULL), IPSEC_ERR_INVALID_ARGUMENT, "`config`");
    c.key = NULL;
    CHECK("config with key NULL but key_len 20", ipsec_sa_new(&c, T0, &out), IPSEC_ERR_INVALID_ARGUMENT, "key");
    TRUE("no SA written on failure", out == NULL);
    CHECK("stats of a NULL sa", ipsec_sa_get_stats(NULL, &stats), IPSEC_ERR_INVALID_ARGUMENT, "`sa`");
    CHECK("stats into NULL", ipsec_sa_get_stats(sa, NULL), IPSEC_ERR_INVALID_ARGUMENT, "`out`");
    CHECK("info of a NULL sa", ipsec_sa_get_info(NULL, &info), IPSEC_ERR_INVALID_ARGUMENT, "`sa`");
    CHECK("overhead of a NULL sa", ipsec_sa_overhead(NULL, 100, &oh), IPSEC_ERR_INVALID_ARGUMENT, "`sa`");
    CHECK("poll_event of a NULL sa", ipsec_sa_poll_event(NULL, T0, &ev), IPSEC_ERR_INVALID_ARGUMENT, "`sa`");
    CHECK("poll_event into NULL", ipsec_sa_poll_event(sa, T0, NULL), IPSEC_ERR_INVALID_ARGUMENT, "`out`");
    CHECK("sa_from_toml with NULL text", ipsec_sa_from_toml(NULL, 10, "x", T0, &out), IPSEC_ERR_INVALID_ARGUMENT, "`toml`");
    CHECK("sa_from_toml with a NULL name", ipsec_sa_from_toml("", 0, NULL, T0, &out), IPSEC_ERR_INVALID_ARGUMENT, "`name`");
    CHECK("spd_from_toml NULL text", ipsec_spd_from_toml(NULL, 5, &spd), IPSEC_ERR_INVALID_ARGUMENT, "`toml`");
    CHECK("spd_load NULL path", ipsec_spd_load(NULL, &spd), IPSEC_ERR_INVALID_ARGUMENT, "`path`");
    CHECK("lookup with a NULL spd", ipsec_spd_lookup(NULL, NULL, &d), IPSEC_ERR_INVALID_ARGUMENT, "`spd`");
    CHECK("lookup_packet with a NULL spd", ipsec_spd_lookup_packet(NULL, IPSEC_DIRECTION_OUTBOUND, buf, 20, &d), IPSEC_ERR_INVALID_ARGUMENT, "`spd`");
    CHECK("lint of a NULL spd", ipsec_spd_lint(NULL, &lint), IPSEC_ERR_INVALID_ARGUMENT, "`spd`");
    CHECK("lint_get of a NULL result", ipsec_lint_get(NULL, 0, NULL), IPSEC_ERR_INVALID_ARGUMENT, "`out`");
    TRUE("lint_count(NULL) is 0", ipsec_lint_count(NULL) == 0);
    TRUE("firewall_count(NULL) is 0", ipsec_firewall_count(NULL) == 0);
    TRUE("gateway_sa_count(NULL) is 0", ipsec_gateway_sa_count(NULL) == 0);
    CHECK("gateway_new NULL text", ipsec_gateway_new(NULL, 3, T0, NULL), IPSEC_ERR_INVALID_ARGUMENT, "`out`");
    CHECK("gateway outbound with a NULL gateway", ipsec_gateway_outbound(NULL, buf, sizeof buf, &off, &len, T0, (ipsec_gateway_result *)&d), IPSEC_ERR_INVALID_ARGUMENT, "`gateway`");
    {
        ipsec_gateway_event gev;
        CHECK("gateway poll_event with a NULL gateway", ipsec_gateway_poll_event(NULL, T0, &gev), IPSEC_ERR_INVALID_ARGUMENT, "`gateway`");
    }
    CHECK("gateway set_fragment_limits with a NULL gateway", ipsec_gateway_set_fragment_limits(NULL, 16, T0), IPSEC_ERR_INVALID_ARGUMENT, "`gateway`");
    CHECK("replay check of a NULL window", ipsec_replay_window_check(NULL, 1), IPSEC_ERR_INVALID_ARGUMENT, "`window`");
    CHECK("replay accept of a NULL window", ipsec_replay_window_accept(NULL, 1), IPSEC_ERR_INVALID_ARGUMENT, "`window`");
    CHECK("replay highest of a NULL window", ipsec_replay_window_highest(NULL, &highest), IPSEC_ERR_INVALID_ARGUMENT, "`window`");

    /* The last-error API itself. */
    CHECK("last_error into a NULL buffer", ipsec_last_error(NULL, 10, &n), IPSEC_ERR_INVALID_ARGUMENT, "`window`");
    CHECK("last_error into 8 bytes", ipsec_last_error(msg, sizeof msg, &n), IPSEC_ERR_BUFFER_TOO_SMALL, "`window`");
    TRUE("last_error_length counts the NUL", ipsec_last_error_length() > sizeof msg);
    TRUE("status_str of an unknown number", strstr(ipsec_status_str(12345), "unknown") != NULL);
    TRUE("status_str names the status", strstr(ipsec_status_str(IPSEC_ERR_REPLAY), "IPSEC_ERR_REPLAY") != NULL);
    TRUE("status_str of IPSEC_ERR_POISONED", strstr(ipsec_status_str(IPSEC_ERR_POISONED), "panic") != NULL);

    /* Every _free accepts NULL. */
    ipsec_sa_free(NULL);
    ipsec_spd_free(NULL);
    ipsec_gateway_free(NULL);
    ipsec_lint_free(NULL);
    ipsec_firewall_free(NULL);
    ipsec_replay_window_free(NULL);
    ipsec_reassembler_free(NULL);
    ipsec_sa_free(sa);
}

static void lengths_and_room(void)
{
    uint8_t buf[512];
    size_t off, len;
    ipsec_sa *sa = make_sa(0x1000, IPSEC_DIRECTION_OUTBOUND);
    ipsec_sa *in = make_sa(0x1000, IPSEC_DIRECTION_INBOUND);
    ipsec_overhead oh;
    ipsec_sa_stats s;

    printf("\n-- zero and huge lengths, headroom and tailroom\n");
    off = 128; len = 0;
    CHECK("encrypt an empty packet", ipsec_sa_encrypt(sa, buf, sizeof buf, &off, &len, T0), IPSEC_ERR_MALFORMED, "malformed");
    CHECK("decrypt an empty packet", ipsec_sa_decrypt(in, buf, sizeof buf, &off, &len, T0), IPSEC_ERR_MALFORMED, "malformed");
    off = 128; len = 1000;
    CHECK("offset + length beyond capacity", ipsec_sa_encrypt(sa, buf, sizeof buf, &off, &len, T0), IPSEC_ERR_INVALID_ARGUMENT, "capacity 512");
    off = SIZE_MAX; len = 2;
    CHECK("offset + length overflows", ipsec_sa_encrypt(sa, buf, sizeof buf, &off, &len, T0), IPSEC_ERR_INVALID_ARGUMENT, "out of bounds");
    off = 0; len = SIZE_MAX;
    CHECK("length SIZE_MAX", ipsec_sa_decrypt(in, buf, sizeof buf, &off, &len, T0), IPSEC_ERR_INVALID_ARGUMENT, "out of bounds");
    off = 0; len = 10;
    CHECK("capacity SIZE_MAX", ipsec_sa_encrypt(sa, buf, SIZE_MAX, &off, &len, T0), IPSEC_ERR_INVALID_ARGUMENT, "largest object");
    TRUE("offset and length unchanged", off == 0 && len == 10);

    CHECK("overhead query", ipsec_sa_overhead(sa, 100, &oh), IPSEC_OK, NULL);
    TRUE("headroom and tailroom are sensible", oh.headroom == 36 && oh.tailroom >= 18 && oh.max_overhead >= oh.headroom + oh.tailroom);
    off = oh.headroom - 1; len = 100;
    put_packet(buf, off, len);
    CHECK("one byte too little headroom", ipsec_sa_encrypt(sa, buf, sizeof buf, &off, &len, T0), IPSEC_ERR_NO_BUFFER_SPACE, "headroom");
    off = oh.headroom; len = 100;
    put_packet(buf, off, len);
    CHECK("one byte too little tailroom", ipsec_sa_encrypt(sa, buf, off + len + oh.tailroom - 1, &off, &len, T0), IPSEC_ERR_NO_BUFFER_SPACE, "tailroom");
    TRUE("descriptor unchanged after NO_BUFFER_SPACE", off == oh.headroom && len == 100);
    CHECK("exactly enough room", ipsec_sa_encrypt(sa, buf, oh.headroom + 100 + oh.tailroom, &off, &len, T0), IPSEC_OK, NULL);
    TRUE("the ESP packet fills the buffer", off == 0 && len == oh.headroom + 100 + oh.tailroom);
    CHECK("stats", ipsec_sa_get_stats(sa, &s), IPSEC_OK, NULL);
    TRUE("drops counted under their reasons", s.no_buffer_space == 2 && s.malformed == 1 && s.packets == 1);

    off = 128; len = 100;
    put_packet(buf, off, len);
    CHECK("encrypt on an inbound SA", ipsec_sa_encrypt(in, buf, sizeof buf, &off, &len, T0), IPSEC_ERR_WRONG_DIRECTION, "direction");
    CHECK("decrypt on an outbound SA", ipsec_sa_decrypt(sa, buf, sizeof buf, &off, &len, T0), IPSEC_ERR_WRONG_DIRECTION, "direction");
    CHECK("stats", ipsec_sa_get_stats(sa, &s), IPSEC_OK, NULL);
    TRUE("wrong direction counted under its own reason, not malformed", s.wrong_direction == 1 && s.malformed == 1);
    CHECK("stats", ipsec_sa_get_stats(in, &s), IPSEC_OK, NULL);
    /* malformed: the empty packet decrypted above. */
    TRUE("wrong direction counted on the inbound SA", s.wrong_direction == 1 && s.malformed == 1);
    ipsec_sa_free(sa);
    ipsec_sa_free(in);
}

static void bad_packets(void)
{
    uint8_t buf[512], copy[512];
    size_t off, len, off2, len2;
    ipsec_sa *out = make_sa(0x1000, IPSEC_DIRECTION_OUTBOUND);
    ipsec_sa *in = make_sa(0x1000, IPSEC_DIRECTION_INBOUND);
    ipsec_sa *other = make_sa(0x2000, IPSEC_DIRECTION_INBOUND);
    ipsec_sa_stats s;

    printf("\n-- wrong SPI, tampered ICV, replay\n");
    len = protect(out, buf, sizeof buf, &off);
    memcpy(copy, buf, sizeof buf);
    off2 = off; len2 = len;
    CHECK("decrypt with the wrong SPI", ipsec_sa_decrypt(other, buf, sizeof buf, &off2, &len2, T0), IPSEC_ERR_UNKNOWN_SPI, "0x00001000");
    buf[off + len - 1] ^= 0x80;
    CHECK("tampered ICV", ipsec_sa_decrypt(in, buf, sizeof buf, &off2, &len2, T0), IPSEC_ERR_AUTH_FAILED, "ICV");
    memcpy(buf, copy, sizeof buf);
    CHECK("the genuine packet", ipsec_sa_decrypt(in, buf, sizeof buf, &off2, &len2, T0), IPSEC_OK, NULL);
    TRUE("decrypted to the inner packet", off2 == 128 && len2 == 100);
    memcpy(buf, copy, sizeof buf);
    off2 = off; len2 = len;
    CHECK("replayed packet", ipsec_sa_decrypt(in, buf, sizeof buf, &off2, &len2, T0), IPSEC_ERR_REPLAY, "sequence number 1");
    off2 = 0; len2 = 30;
    memset(buf, 0, 30);
    buf[0] = 0x45;
    CHECK("garbage", ipsec_sa_decrypt(in, buf, sizeof buf, &off2, &len2, T0), IPSEC_ERR_MALFORMED, "malformed");
    CHECK("stats", ipsec_sa_get_stats(in, &s), IPSEC_OK, NULL);
    TRUE("inbound counters", s.packets == 1 && s.auth_failed == 1 && s.replay == 1 && s.malformed == 1);
    ipsec_sa_free(out);
    ipsec_sa_free(in);
    ipsec_sa_free(other);
}

static void lifetimes_and_sequence(void)
{
    uint8_t buf[512];
    size_t off, len;
    ipsec_sa_config c;
    ipsec_sa *sa = NULL;
    ipsec_sa_event ev;
    ipsec_sa_info info;

    printf("\n-- expired SA, sequence overflow\n");
    base_config(&c, 0x1000, IPSEC_DIRECTION_OUTBOUND);
    c.soft_lifetime.seconds = 5;
    c.hard_lifetime.seconds = 10;
    CHECK("SA with lifetimes", ipsec_sa_new(&c, T0, &sa), IPSEC_OK, NULL);
    CHECK("poll before the soft lifetime", ipsec_sa_poll_event(sa, T0 + 4 * SECOND, &ev), IPSEC_OK, NULL);
    TRUE("no event yet", ev.kind == IPSEC_EVENT_NONE);
    CHECK("poll after the soft lifetime", ipsec_sa_poll_event(sa, T0 + 6 * SECOND, &ev), IPSEC_OK, NULL);
    TRUE("rekey by time", ev.kind == IPSEC_EVENT_REKEY && ev.limit == IPSEC_LIMIT_TIME);
    off = 128; len = 100;
    put_packet(buf, off, len);
    CHECK("encrypt after the hard lifetime", ipsec_sa_encrypt(sa, buf, sizeof buf, &off, &len, T0 + 11 * SECOND), IPSEC_ERR_LIFETIME_EXPIRED, "lifetime");
    CHECK("poll after expiry", ipsec_sa_poll_event(sa, T0 + 11 * SECOND, &ev), IPSEC_OK, NULL);
    TRUE("expired by time", ev.kind == IPSEC_EVENT_EXPIRED && ev.limit == IPSEC_LIMIT_TIME);
    CHECK("info", ipsec_sa_get_info(sa, &info), IPSEC_OK, NULL);
    TRUE("info says expired", info.expired && info.spi == 0x1000 && info.cipher == IPSEC_CIPHER_AES_128_GCM);
    ipsec_sa_free(sa);

    base_config(&c, 0x1000, IPSEC_DIRECTION_OUTBOUND);
    c.seq = UINT32_MAX - 1;
    CHECK("SA one sequence number from the end", ipsec_sa_new(&c, T0, &sa), IPSEC_OK, NULL);
    off = 128; len = 100;
    put_packet(buf, off, len);
    CHECK("the last sequence number", ipsec_sa_encrypt(sa, buf, sizeof buf, &off, &len, T0), IPSEC_OK, NULL);
    off = 128; len = 100;
    put_packet(buf, off, len);
    CHECK("sequence overflow", ipsec_sa_encrypt(sa, buf, sizeof buf, &off, &len, T0), IPSEC_ERR_SEQUENCE_OVERFLOW, "exhausted");
    ipsec_sa_free(sa);
    c.seq = UINT64_C(1) << 32;
    CHECK("seq beyond 32 bits without ESN", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_CONFIG, "seq");
}

static void configs_and_enums(void)
{
    ipsec_sa_config c;
    ipsec_sa *sa = NULL;
    ipsec_replay_window *w = NULL;
    ipsec_spd *spd = NULL;
    ipsec_flow flow;
    ipsec_decision d;
    uint8_t pkt[40] = {0x45};
    const char *policy = "[[policy]]\nname = \"all\"\ndirection = \"both\"\naction = \"bypass\"\n";

    printf("\n-- out-of-range enums and bad configurations\n");
    base_config(&c, 0x1000, 7);
    CHECK("direction 7", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_INVALID_ARGUMENT, "direction 7");
    base_config(&c, 0x1000, IPSEC_DIRECTION_OUTBOUND);
    c.mode = 0;
    CHECK("mode 0", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_INVALID_ARGUMENT, "mode 0");
    c.mode = IPSEC_MODE_TUNNEL;
    c.cipher = 99;
    CHECK("cipher 99", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_INVALID_ARGUMENT, "cipher 99");
    c.cipher = 0xffffffffu;
    CHECK("cipher 0xffffffff", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_INVALID_ARGUMENT, "ipsec_cipher");
    c.cipher = IPSEC_CIPHER_AES_128_GCM;
    c.integrity = 5;
    CHECK("integrity 5", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_INVALID_ARGUMENT, "integrity 5");
    c.integrity = IPSEC_INTEGRITY_NONE;
    c.padding = 2;
    CHECK("padding 2", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_INVALID_ARGUMENT, "padding 2");
    c.padding = IPSEC_PADDING_BLOCKS;
    c.reserved[2] = 1;
    CHECK("reserved field set", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_INVALID_ARGUMENT, "reserved");
    c.reserved[2] = 0;
    c.reserved32 = 1;
    CHECK("reserved32 set", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_INVALID_ARGUMENT, "reserved32");
    c.reserved32 = 0;
    c.lookup = 4;
    CHECK("lookup 4", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_INVALID_ARGUMENT, "ipsec_sa_lookup");
    c.lookup = IPSEC_LOOKUP_SPI;
    memset(&c.esn, 2, 1); /* a byte that is no bool, as a memset or the wire leaves it */
    CHECK("esn holding 2", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_INVALID_ARGUMENT, "esn is 2");
    c.esn = false;
    c.spi = 255;
    CHECK("reserved SPI 255", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_CONFIG, "spi");
    c.spi = 0x1000;
    c.key_len = 16;
    CHECK("AES-128-GCM key without salt", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_CONFIG, "key");
    c.key_len = 20;
    c.cipher = IPSEC_CIPHER_AES_128_CBC;
    c.key_len = 16;
    CHECK("AES-CBC without integrity", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_CONFIG, "integrity");
    base_config(&c, 0x1000, IPSEC_DIRECTION_OUTBOUND);
    c.tunnel_dst = NULL;
    CHECK("tunnel_src without tunnel_dst", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_CONFIG, "tunnel_dst");
    c.tunnel_dst = "not an address";
    CHECK("tunnel_dst not an address", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_CONFIG, "not an IPv4 or IPv6");
    base_config(&c, 0x1000, IPSEC_DIRECTION_INBOUND);
    c.replay_window = 5;
    CHECK("replay window of 5", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_CONFIG, "replay_window");
    TRUE("no SA written on any failure", sa == NULL);

    printf("\n-- bad TOML\n");
    CHECK("SPD from broken TOML", ipsec_spd_from_toml("[[policy]\nname=", strlen("[[policy]\nname="), &spd), IPSEC_ERR_CONFIG, "toml");
    CHECK("policy with an unknown key", ipsec_spd_from_toml(UNKNOWN_KEY, strlen(UNKNOWN_KEY), &spd), IPSEC_ERR_CONFIG, "acton");
    CHECK("text that is not UTF-8", ipsec_spd_from_toml("\xff\xfe", 2, &spd), IPSEC_ERR_INVALID_ARGUMENT, "UTF-8");
    CHECK("policy file that does not exist", ipsec_spd_load("/nonexistent/policy.toml", &spd), IPSEC_ERR_IO, "/nonexistent/policy.toml");
    CHECK("SA from broken TOML", ipsec_sa_from_toml("[[sa]\n", 6, "x", T0, &sa), IPSEC_ERR_CONFIG, "toml");
    CHECK("SA name not in the text", ipsec_sa_from_toml("", 0, "missing", T0, &sa), IPSEC_ERR_NOT_FOUND, "missing");
    {
        const char *t = "[[sa]]\nname = \"s\"\nspi = 4096\ndirection = \"inbound\"\nmode = \"tunnel\"\ncipher = \"aes-128-gcm\"\nkey = \"0011\"\n";
        CHECK("SA with a short key", ipsec_sa_from_toml(t, strlen(t), "s", T0, &sa), IPSEC_ERR_CONFIG, "sa \"s\"");
    }
    TRUE("no SA or SPD written on any failure", sa == NULL && spd == NULL);

    CHECK("replay window of 16", ipsec_replay_window_new(16, false, &w), IPSEC_ERR_CONFIG, "replay_window");

    CHECK("a valid SPD", ipsec_spd_from_toml(policy, strlen(policy), &spd), IPSEC_OK, NULL);
    memset(&flow, 0, sizeof flow);
    flow.direction = IPSEC_DIRECTION_OUTBOUND;
    flow.family = 5;
    CHECK("flow family 5", ipsec_spd_lookup(spd, &flow, &d), IPSEC_ERR_INVALID_ARGUMENT, "family 5");
    flow.family = IPSEC_FAMILY_IPV4;
    flow.direction = 0;
    CHECK("flow direction 0", ipsec_spd_lookup(spd, &flow, &d), IPSEC_ERR_INVALID_ARGUMENT, "direction 0");
    flow.direction = IPSEC_DIRECTION_OUTBOUND;
    memset(&flow.has_icmp, 0x80, 1);
    CHECK("flow has_icmp holding 0x80", ipsec_spd_lookup(spd, &flow, &d), IPSEC_ERR_INVALID_ARGUMENT, "has_icmp is 128");
    flow.has_icmp = false;
    flow.direction = 0;
    CHECK("flow NULL", ipsec_spd_lookup(spd, NULL, &d), IPSEC_ERR_INVALID_ARGUMENT, "`flow`");
    CHECK("lookup_packet direction 3", ipsec_spd_lookup_packet(spd, 3, pkt, sizeof pkt, &d), IPSEC_ERR_INVALID_ARGUMENT, "direction 3");
    CHECK("lookup_packet of a truncated packet", ipsec_spd_lookup_packet(spd, IPSEC_DIRECTION_OUTBOUND, pkt, 10, &d), IPSEC_ERR_MALFORMED, "truncated");
    CHECK("lookup_packet of zero bytes", ipsec_spd_lookup_packet(spd, IPSEC_DIRECTION_OUTBOUND, NULL, 0, &d), IPSEC_ERR_MALFORMED, "truncated");
    flow.direction = IPSEC_DIRECTION_OUTBOUND;
    CHECK("a valid lookup", ipsec_spd_lookup(spd, &flow, &d), IPSEC_OK, NULL);
    TRUE("bypass by policy \"all\"", d.action == IPSEC_ACTION_BYPASS && d.policy && strcmp(d.policy, "all") == 0 && d.policy_index == 0 && d.sa == NULL);
    {
        ipsec_lint *lint = NULL;
        ipsec_lint_finding f;
        CHECK("lint", ipsec_spd_lint(spd, &lint), IPSEC_OK, NULL);
        CHECK("lint index out of range", ipsec_lint_get(lint, ipsec_lint_count(lint), &f), IPSEC_ERR_INVALID_ARGUMENT, "out of range");
        ipsec_lint_free(lint);
        CHECK("lint of broken TOML", ipsec_lint_toml(BAD_NAME, strlen(BAD_NAME), &lint), IPSEC_OK, NULL);
        TRUE("broken TOML gives an invalid finding", ipsec_lint_count(lint) >= 1 && ipsec_lint_get(lint, 0, &f) == IPSEC_OK && f.severity == IPSEC_SEVERITY_ERROR && strcmp(f.code, "invalid") == 0);
        ipsec_lint_free(lint);
        {
            /* A work budget too small for the file ends the lint with a "budget" finding. */
            static const char RULES[] =
                "[[policy]]\nname = \"a\"\ndirection = \"both\"\nlocal = \"10.0.0.1\"\naction = \"bypass\"\n"
                "[[policy]]\nname = \"b\"\ndirection = \"both\"\nlocal = \"10.0.0.2\"\naction = \"bypass\"\n"
                "[[policy]]\nname = \"c\"\ndirection = \"both\"\nlocal = \"10.0.0.0/24\"\naction = \"discard\"\n";
            size_t i, budget_findings = 0;
            CHECK("lint with a budget of 1 step", ipsec_lint_toml_budget(RULES, strlen(RULES), 1, &lint), IPSEC_OK, NULL);
            for (i = 0; i < ipsec_lint_count(lint); i++) {
                if (ipsec_lint_get(lint, i, &f) == IPSEC_OK && strcmp(f.code, "budget") == 0) {
                    budget_findings++;
                }
            }
            TRUE("one budget finding", budget_findings == 1);
            ipsec_lint_free(lint);
            CHECK("lint with the default budget (0)", ipsec_lint_toml_budget(RULES, strlen(RULES), 0, &lint), IPSEC_OK, NULL);
            budget_findings = 0;
            for (i = 0; i < ipsec_lint_count(lint); i++) {
                if (ipsec_lint_get(lint, i, &f) == IPSEC_OK && strcmp(f.code, "budget") == 0) {
                    budget_findings++;
                }
            }
            TRUE("no budget finding with the default", budget_findings == 0 && ipsec_lint_count(lint) > 0);
            ipsec_lint_free(lint);
        }
    }
    ipsec_spd_free(spd);
}

/* Configurations that cannot work: refused with IPSEC_ERR_CONFIG, the message naming the
 * field as the TOML files and the Python keywords do. */
static void refused_configs(void)
{
    ipsec_sa_config c;
    ipsec_sa *sa = NULL;
    ipsec_sa_info info;
    uint8_t buf[512];
    size_t off, len;
    const char *esn_sa = "[[sa]]\nname = \"esn\"\nspi = 4096\ndirection = \"inbound\"\n"
                         "mode = \"tunnel\"\ncipher = \"aes-128-gcm\"\n"
                         "key = \"0102030405060708090a0b0c0d0e0f1011121314\"\nesn = true\n"
                         "seq = \"0xffffffffffffff00\"\n";

    printf("\n-- configurations that cannot work\n");
    base_config(&c, 0x1000, IPSEC_DIRECTION_OUTBOUND);
    c.udp_encap = true;
    c.udp_src_port = 4500;
    CHECK("UDP encapsulation to port 0", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_CONFIG, "udp_encap: the destination port is 0");
    base_config(&c, 0x1000, IPSEC_DIRECTION_OUTBOUND);
    c.soft_lifetime.bytes = 2000000;
    c.hard_lifetime.bytes = 1000000;
    CHECK("soft byte lifetime above the hard one", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_CONFIG, "soft_lifetime.bytes");
    c.soft_lifetime.bytes = 0;
    c.soft_lifetime.seconds = 60;
    c.hard_lifetime.seconds = 60;
    CHECK("soft time lifetime equal to the hard one", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_CONFIG, "soft_lifetime.seconds");
    base_config(&c, 0x1000, IPSEC_DIRECTION_OUTBOUND);
    c.replay_window = 1024;
    CHECK("replay window on an outbound SA", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_CONFIG, "replay_window");
    base_config(&c, 0x1000, IPSEC_DIRECTION_OUTBOUND);
    c.tfc_pad_to = 65535;
    CHECK("TFC padding no IP packet can hold", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_CONFIG, "tfc_pad_to");
    base_config(&c, 0x1000, IPSEC_DIRECTION_INBOUND);
    c.key = NULL;
    c.key_len = 0;
    CHECK("no key", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_CONFIG, "key: missing");
    TRUE("no SA written on any failure", sa == NULL);

    /* outer_ttl 0 is refused, as in every layer; ipsec_sa_config_init sets 64. */
    base_config(&c, 0x1000, IPSEC_DIRECTION_OUTBOUND);
    c.outer_ttl = 0;
    CHECK("outer_ttl 0", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_CONFIG, "outer_ttl: 0");
    TRUE("... nothing written", sa == NULL);
    base_config(&c, 0x1000, IPSEC_DIRECTION_OUTBOUND);
    CHECK("outer_ttl from ipsec_sa_config_init", ipsec_sa_new(&c, T0, &sa), IPSEC_OK, NULL);
    off = 128;
    len = 100;
    put_packet(buf, off, len);
    CHECK("encrypt with the default outer_ttl", ipsec_sa_encrypt(sa, buf, sizeof buf, &off, &len, T0), IPSEC_OK, NULL);
    TRUE("the outer TTL is 64", buf[off + 8] == 64);
    ipsec_sa_free(sa);
    sa = NULL;

    /* A 64-bit ESN sequence number above 2^63-1, as a string in the SA file. */
    CHECK("SA file with seq = \"0xffffffffffffff00\"", ipsec_sa_from_toml(esn_sa, strlen(esn_sa), "esn", T0, &sa), IPSEC_OK, NULL);
    CHECK("its info", ipsec_sa_get_info(sa, &info), IPSEC_OK, NULL);
    TRUE("its window top is the 64-bit number", info.seq == UINT64_C(0xffffffffffffff00));
    ipsec_sa_free(sa);
}

static void replay_window(void)
{
    ipsec_replay_window *w = NULL;
    uint64_t highest = 0;
    printf("\n-- the replay window on its own\n");
    CHECK("window of 64", ipsec_replay_window_new(64, false, &w), IPSEC_OK, NULL);
    CHECK("sequence number 0", ipsec_replay_window_accept(w, 0), IPSEC_ERR_TOO_OLD, "below the replay window");
    CHECK("accept 5", ipsec_replay_window_accept(w, 5), IPSEC_OK, NULL);
    CHECK("accept 5 again", ipsec_replay_window_accept(w, 5), IPSEC_ERR_REPLAY, "sequence number 5");
    CHECK("check 5", ipsec_replay_window_check(w, 5), IPSEC_ERR_REPLAY, "replay");
    CHECK("accept 200", ipsec_replay_window_accept(w, 200), IPSEC_OK, NULL);
    CHECK("check 136 (too old)", ipsec_replay_window_check(w, 136), IPSEC_ERR_TOO_OLD, "highest received 200");
    CHECK("check 137 (bottom of the window)", ipsec_replay_window_check(w, 137), IPSEC_OK, NULL);
    CHECK("highest", ipsec_replay_window_highest(w, &highest), IPSEC_OK, NULL);
    TRUE("highest is 200", highest == 200);
    CHECK("highest into NULL", ipsec_replay_window_highest(w, NULL), IPSEC_ERR_INVALID_ARGUMENT, "`out`");
    ipsec_replay_window_free(w);
}

/* Fragment `index` (of two, 32 payload bytes each) of an 84-byte IPv4 ESP datagram,
   written at buf + off; `corrupt` breaks its header checksum. */
static void put_fragment(uint8_t *buf, size_t off, int index, int corrupt)
{
    uint8_t *p = buf + off;
    uint32_t sum = 0;
    int i;
    memset(p, 0, 20);
    p[0] = 0x45;
    p[3] = 52;
    p[5] = 0x42;
    p[6] = index == 0 ? 0x20 : 0; /* MF on the first */
    p[7] = index == 0 ? 0 : 4;    /* offset 32 / 8 on the second */
    p[8] = 64;
    p[9] = 50;
    p[12] = 192; p[14] = 2; p[15] = 1;
    p[16] = 198; p[17] = 51; p[18] = 100; p[19] = 2;
    for (i = 0; i < 20; i += 2) {
        sum += (uint32_t)((p[i] << 8) | p[i + 1]);
    }
    while (sum >> 16) {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = ~sum & 0xffff;
    p[10] = (uint8_t)(sum >> 8);
    p[11] = (uint8_t)(sum ^ (corrupt ? 1u : 0u));
    for (i = 0; i < 32; i++) {
        p[20 + i] = (uint8_t)(index * 32 + i);
    }
}

static void reassembly(void)
{
    uint8_t buf[256];
    size_t off, len, dropped = 99;
    uint32_t what = 0;
    ipsec_reassembler *r = NULL;
    ipsec_reassembly_limits limits;
    ipsec_sa_stats s;
    ipsec_gateway *gw = NULL;

    printf("\n-- fragment reassembly\n");
    CHECK("limits_init(NULL)", ipsec_reassembly_limits_init(NULL), IPSEC_ERR_INVALID_ARGUMENT, "`limits`");
    CHECK("limits_init", ipsec_reassembly_limits_init(&limits), IPSEC_OK, NULL);
    TRUE("default limits", limits.max_bytes == 4u << 20 && limits.max_datagrams == 1024 &&
         limits.max_fragments == 64 && limits.lifetime_ns == 30 * SECOND);
    limits.reserved[2] = 7;
    CHECK("reserved limits field set", ipsec_reassembler_new(&limits, &r), IPSEC_ERR_INVALID_ARGUMENT, "reserved");
    TRUE("no reassembler written on failure", r == NULL);
    CHECK("new with a NULL out", ipsec_reassembler_new(NULL, NULL), IPSEC_ERR_INVALID_ARGUMENT, "`out`");
    CHECK("new with the defaults", ipsec_reassembler_new(NULL, &r), IPSEC_OK, NULL);

    off = 16; len = 52;
    put_fragment(buf, off, 0, 0);
    CHECK("insert into a NULL reassembler", ipsec_reassembler_insert(NULL, buf, sizeof buf, &off, &len, T0, &what), IPSEC_ERR_INVALID_ARGUMENT, "`reassembler`");
    CHECK("insert with a NULL out", ipsec_reassembler_insert(r, buf, sizeof buf, &off, &len, T0, NULL), IPSEC_ERR_INVALID_ARGUMENT, "`out`");
    off = 250;
    CHECK("insert a descriptor beyond the buffer", ipsec_reassembler_insert(r, buf, sizeof buf, &off, &len, T0, &what), IPSEC_ERR_INVALID_ARGUMENT, "out of bounds");
    off = 16;
    put_fragment(buf, off, 0, 1);
    CHECK("a fragment with a bad header checksum", ipsec_reassembler_insert(r, buf, sizeof buf, &off, &len, T0, &what), IPSEC_ERR_MALFORMED, "checksum");
    put_fragment(buf, off, 0, 0);
    CHECK("the first fragment", ipsec_reassembler_insert(r, buf, sizeof buf, &off, &len, T0, &what), IPSEC_OK, NULL);
    TRUE("held, descriptor unchanged", what == IPSEC_REASSEMBLY_HELD && off == 16 && len == 52);
    CHECK("its exact copy", ipsec_reassembler_insert(r, buf, sizeof buf, &off, &len, T0, &what), IPSEC_ERR_FRAGMENT_DUPLICATE, "duplicate");
    put_fragment(buf, off, 1, 0);
    CHECK("the last fragment, 83 bytes of room", ipsec_reassembler_insert(r, buf, off + 83, &off, &len, T0, &what), IPSEC_ERR_NO_BUFFER_SPACE, "tailroom");
    TRUE("refused: descriptor unchanged", off == 16 && len == 52 && what == IPSEC_REASSEMBLY_HELD);
    CHECK("the last fragment, room enough", ipsec_reassembler_insert(r, buf, off + 84, &off, &len, T0, &what), IPSEC_OK, NULL);
    TRUE("complete: the whole datagram in place", what == IPSEC_REASSEMBLY_COMPLETE && off == 16 && len == 84 &&
         buf[16 + 3] == 84 && buf[16 + 6] == 0 && buf[16 + 20 + 40] == 40);
    put_fragment(buf, off, 1, 0);
    len = 52;
    CHECK("a lone fragment", ipsec_reassembler_insert(r, buf, sizeof buf, &off, &len, T0, &what), IPSEC_OK, NULL);
    CHECK("expire into NULL", ipsec_reassembler_expire(r, T0, NULL), IPSEC_ERR_INVALID_ARGUMENT, "`out_dropped`");
    CHECK("expire before its lifetime", ipsec_reassembler_expire(r, T0 + 29 * SECOND, &dropped), IPSEC_OK, NULL);
    TRUE("nothing dropped yet", dropped == 0);
    CHECK("expire after its lifetime", ipsec_reassembler_expire(r, T0 + 30 * SECOND, &dropped), IPSEC_OK, NULL);
    TRUE("one fragment timed out", dropped == 1);
    CHECK("stats of a NULL reassembler", ipsec_reassembler_get_stats(NULL, &s), IPSEC_ERR_INVALID_ARGUMENT, "`reassembler`");
    CHECK("stats", ipsec_reassembler_get_stats(r, &s), IPSEC_OK, NULL);
    TRUE("every drop counted under its reason", s.packets == 1 && s.bytes == 84 && s.malformed == 1 &&
         s.fragment_duplicate == 1 && s.no_buffer_space == 1 && s.fragment_timeout == 1);
    TRUE("status_str names the fragment statuses",
         strstr(ipsec_status_str(IPSEC_ERR_FRAGMENT_OVERLAP), "IPSEC_ERR_FRAGMENT_OVERLAP") != NULL);
    ipsec_reassembler_free(r);

    /* A gateway holds an outer ESP fragment: REASSEMBLING, no SA, no policy. */
    {
        const char *t = "[[policy]]\nname = \"all\"\ndirection = \"both\"\naction = \"discard\"\n";
        ipsec_gateway_result res;
        CHECK("a gateway", ipsec_gateway_new(t, strlen(t), T0, &gw), IPSEC_OK, NULL);
        off = 16; len = 52;
        put_fragment(buf, off, 0, 0);
        CHECK("an outer ESP fragment", ipsec_gateway_inbound(gw, buf, sizeof buf, &off, &len, T0, &res), IPSEC_OK, NULL);
        TRUE("reassembling", res.verdict == IPSEC_VERDICT_REASSEMBLING && res.sa == NULL && res.policy == NULL &&
             off == 16 && len == 52);
        CHECK("its copy", ipsec_gateway_inbound(gw, buf, sizeof buf, &off, &len, T0, &res), IPSEC_ERR_FRAGMENT_DUPLICATE, "duplicate");
        ipsec_reassembly_limits_init(&limits);
        limits.reserved[0] = 1;
        CHECK("gateway limits with a reserved field set", ipsec_gateway_set_reassembly_limits(gw, &limits, &dropped), IPSEC_ERR_INVALID_ARGUMENT, "reserved");
        CHECK("gateway limits into NULL", ipsec_gateway_set_reassembly_limits(gw, NULL, NULL), IPSEC_ERR_INVALID_ARGUMENT, "`out_dropped`");
        CHECK("gateway expire", ipsec_gateway_expire_fragments(gw, T0 + 31 * SECOND, &dropped), IPSEC_OK, NULL);
        TRUE("the held fragment timed out", dropped == 1);
        CHECK("gateway stats", ipsec_gateway_get_stats(gw, &s), IPSEC_OK, NULL);
        TRUE("fragment drops on the gateway", s.fragment_duplicate == 1 && s.fragment_timeout == 1);
        ipsec_gateway_free(gw);
    }
}

static void spi_allocation_and_jitter(void)
{
    const char *t =
        "[[policy]]\nname = \"rdp\"\ndirection = \"inbound\"\nprotocol = \"tcp\"\n"
        "action = \"protect\"\nsa = \"in\"\n"
        "[[sa]]\nname = \"in\"\nspi = 0x2001\ndirection = \"inbound\"\nmode = \"tunnel\"\n"
        "cipher = \"aes-128-gcm\"\nkey = \"000102030405060708090a0b0c0d0e0f10111213\"\n";
    ipsec_gateway *gw = NULL;
    ipsec_sa_config c;
    ipsec_sa *sa = NULL;
    ipsec_sa_event ev;
    uint32_t spis[100], spi = 0;
    uint64_t bytes = 1, packets = 1, time_ns = 0, first_ns = 0;
    int i, j, distinct = 1, valid = 1, spread = 0, bounded = 1;

    printf("\n-- SPI allocation (get_spi), soft lifetime jitter\n");
    CHECK("a gateway with an inbound SA 0x2001", ipsec_gateway_new(t, strlen(t), T0, &gw), IPSEC_OK, NULL);
    CHECK("allocate_spi on a NULL gateway", ipsec_gateway_allocate_spi(NULL, T0, &spi), IPSEC_ERR_INVALID_ARGUMENT, "`gateway`");
    CHECK("allocate_spi into NULL", ipsec_gateway_allocate_spi(gw, T0, NULL), IPSEC_ERR_INVALID_ARGUMENT, "`out_spi`");
    for (i = 0; i < 100; i++) {
        CHECK("allocate_spi", ipsec_gateway_allocate_spi(gw, T0, &spis[i]), IPSEC_OK, NULL);
        valid &= spis[i] >= 256 && spis[i] != 0x2001;
        for (j = 0; j < i; j++) {
            distinct &= spis[i] != spis[j];
        }
    }
    TRUE("SPIs >= 256, not the inbound SA's", valid);
    TRUE("SPIs distinct", distinct);
    CHECK("SPI range below 256", ipsec_gateway_set_spi_range(gw, 100, 0x3000), IPSEC_ERR_CONFIG, "spi_min");
    CHECK("SPI range upside down", ipsec_gateway_set_spi_range(gw, 0x3000, 0x2000), IPSEC_ERR_CONFIG, "spi_max");
    CHECK("SPI range on a NULL gateway", ipsec_gateway_set_spi_range(NULL, 0x2000, 0x2003), IPSEC_ERR_INVALID_ARGUMENT, "`gateway`");
    CHECK("SPI range of four around the inbound SA's", ipsec_gateway_set_spi_range(gw, 0x2000, 0x2003), IPSEC_OK, NULL);
    for (i = 0; i < 3; i++) {
        CHECK("allocate in the small range", ipsec_gateway_allocate_spi(gw, T0, &spis[i]), IPSEC_OK, NULL);
    }
    TRUE("the three free SPIs, the inbound SA's left out",
         spis[0] + spis[1] + spis[2] == 0x2000 + 0x2002 + 0x2003 &&
         spis[0] != spis[1] && spis[1] != spis[2] && spis[0] != spis[2] &&
         spis[0] != 0x2001 && spis[1] != 0x2001 && spis[2] != 0x2001);
    spi = 7;
    CHECK("the range is full", ipsec_gateway_allocate_spi(gw, T0, &spi), IPSEC_ERR_SPI_EXHAUSTED, "no free SPI");
    TRUE("nothing written on failure", spi == 7);
    TRUE("status_str names it", strstr(ipsec_status_str(IPSEC_ERR_SPI_EXHAUSTED), "IPSEC_ERR_SPI_EXHAUSTED") != NULL);
    CHECK("reservations ran out after 165 s", ipsec_gateway_allocate_spi(gw, T0 + 165 * SECOND, &spi), IPSEC_OK, NULL);
    TRUE("a free SPI again", spi == 0x2000 || spi == 0x2002 || spi == 0x2003);
    ipsec_gateway_free(gw);

    base_config(&c, 0x1000, IPSEC_DIRECTION_INBOUND);
    TRUE("config_init sets the default jitter, 10%", c.soft_lifetime_jitter == 10);
    c.soft_lifetime.seconds = 100;
    c.soft_lifetime.packets = 1000;
    c.hard_lifetime.seconds = 200;
    c.soft_lifetime_jitter = 101;
    CHECK("jitter above 100%", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_CONFIG, "soft_lifetime_jitter");
    TRUE("no SA written on failure", sa == NULL);
    c.soft_lifetime_jitter = 0;
    CHECK("jitter 0", ipsec_sa_new(&c, T0, &sa), IPSEC_OK, NULL);
    CHECK("soft limits into NULL", ipsec_sa_get_soft_limits(sa, &bytes, NULL, &time_ns), IPSEC_ERR_INVALID_ARGUMENT, "`out_packets`");
    CHECK("soft limits of a NULL SA", ipsec_sa_get_soft_limits(NULL, &bytes, &packets, &time_ns), IPSEC_ERR_INVALID_ARGUMENT, "`sa`");
    CHECK("soft limits", ipsec_sa_get_soft_limits(sa, &bytes, &packets, &time_ns), IPSEC_OK, NULL);
    TRUE("jitter 0: the limits exactly", bytes == 0 && packets == 1000 && time_ns == 100 * SECOND);
    CHECK("poll a nanosecond before", ipsec_sa_poll_event(sa, T0 + 100 * SECOND - 1, &ev), IPSEC_OK, NULL);
    TRUE("no event yet", ev.kind == IPSEC_EVENT_NONE);
    CHECK("poll at the soft lifetime", ipsec_sa_poll_event(sa, T0 + 100 * SECOND, &ev), IPSEC_OK, NULL);
    TRUE("rekey by time", ev.kind == IPSEC_EVENT_REKEY && ev.limit == IPSEC_LIMIT_TIME);
    ipsec_sa_free(sa);
    c.soft_lifetime_jitter = 50;
    for (i = 0; i < 50; i++) {
        sa = NULL;
        CHECK("jitter 50%", ipsec_sa_new(&c, T0, &sa), IPSEC_OK, NULL);
        CHECK("its soft limits", ipsec_sa_get_soft_limits(sa, &bytes, &packets, &time_ns), IPSEC_OK, NULL);
        bounded &= time_ns >= 50 * SECOND && time_ns <= 100 * SECOND && packets >= 500 && packets <= 1000;
        if (i == 0) {
            first_ns = time_ns;
        } else if (time_ns != first_ns) {
            spread = 1;
        }
        ipsec_sa_free(sa);
    }
    TRUE("jittered limits within [soft/2, soft]", bounded);
    TRUE("SAs created together get different soft limits", spread);
}

static void bursts(void)
{
    uint8_t bufs[4][512];
    ipsec_packet pkts[4];
    ipsec_sa *sa = make_sa(0x1000, IPSEC_DIRECTION_OUTBOUND);
    size_t i;

    printf("\n-- bursts\n");
    for (i = 0; i < 4; i++) {
        pkts[i].buf = bufs[i];
        pkts[i].capacity = sizeof bufs[i];
        pkts[i].offset = 128;
        pkts[i].length = 100;
        pkts[i].status = 12345;
        put_packet(bufs[i], 128, 100);
    }
    TRUE("burst with a NULL sa returns 0", ipsec_sa_encrypt_burst(NULL, pkts, 4, T0) == 0);
    TRUE("... and marks every packet", pkts[0].status == IPSEC_ERR_INVALID_ARGUMENT && pkts[3].status == IPSEC_ERR_INVALID_ARGUMENT);
    TRUE("burst of NULL packets returns 0", ipsec_sa_encrypt_burst(sa, NULL, 4, T0) == 0);
    TRUE("empty burst returns 0", ipsec_sa_decrypt_burst(sa, NULL, 0, T0) == 0);
    pkts[1].buf = NULL;
    pkts[2].offset = 500;
    pkts[3].offset = 0;
    put_packet(bufs[3], 0, 100);
    TRUE("one of four packets succeeds", ipsec_sa_encrypt_burst(sa, pkts, 4, T0) == 1);
    TRUE("statuses per packet", pkts[0].status == IPSEC_OK && pkts[1].status == IPSEC_ERR_INVALID_ARGUMENT && pkts[2].status == IPSEC_ERR_INVALID_ARGUMENT && pkts[3].status == IPSEC_ERR_NO_BUFFER_SPACE);
    TRUE("failed packets untouched", pkts[2].offset == 500 && pkts[3].offset == 0 && pkts[3].length == 100);
    TRUE("the successful packet was updated", pkts[0].offset < 128 && pkts[0].length > 100);
    CHECK("the last error is the last failed packet's", IPSEC_ERR_NO_BUFFER_SPACE, IPSEC_ERR_NO_BUFFER_SPACE, "headroom");
    TRUE("decrypt burst on an outbound SA", ipsec_sa_decrypt_burst(sa, pkts, 1, T0) == 0 && pkts[0].status == IPSEC_ERR_WRONG_DIRECTION);
    ipsec_sa_free(sa);
}

/* RFC 1071 sum of `n` bytes (not complemented), added to `sum`. */
static uint32_t sum16(uint32_t sum, const uint8_t *p, size_t n)
{
    size_t i;
    for (i = 0; i + 1 < n; i += 2) {
        sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    }
    if (n % 2 == 1) {
        sum += (uint32_t)(p[n - 1] << 8);
    }
    return sum;
}

static uint16_t fold(uint32_t sum)
{
    while (sum > 0xffff) {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    return (uint16_t)sum;
}

static void nat_traversal(void)
{
    ipsec_sa_config c;
    ipsec_sa *sa = NULL;
    uint8_t buf[512], ka[IPSEC_NAT_KEEPALIVE_MAX_LEN], small[IPSEC_NAT_KEEPALIVE_MAX_LEN - 1];
    size_t off = 128, len = 100, n = 12345;
    uint64_t due = 0;
    uint32_t pseudo;

    printf("\n-- NAT traversal: DF, keepalives, NAT original addresses\n");
    TRUE("the config struct kept its size (LP64: 216 bytes)",
         sizeof(void *) != 8 || sizeof(ipsec_sa_config) == 216);
    base_config(&c, 0x3000, IPSEC_DIRECTION_OUTBOUND);
    TRUE("config_init: DF copy, keepalive every 20 s, no NAT-OA",
         c.df == IPSEC_DF_COPY && c.nat_keepalive_interval == 20 && c.nat_original_src == NULL &&
             c.nat_original_dst == NULL);
    c.df = 3;
    CHECK("df 3", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_INVALID_ARGUMENT, "ipsec_df");
    c.df = IPSEC_DF_SET;
    c.udp_encap = true;
    c.udp_src_port = 4500;
    c.udp_dst_port = 4501;
    CHECK("a NAT-T SA with DF set", ipsec_sa_new(&c, T0, &sa), IPSEC_OK, NULL);
    put_packet(buf, off, len);
    CHECK("encrypt", ipsec_sa_encrypt(sa, buf, sizeof buf, &off, &len, T0), IPSEC_OK, NULL);
    TRUE("outer DF set by policy (the inner packet has none)", (buf[off + 6] & 0x40) != 0);
    CHECK("next_keepalive", ipsec_sa_next_keepalive(sa, &due), IPSEC_OK, NULL);
    TRUE("due 20 s after the last packet", due == T0 + 20 * SECOND);
    CHECK("poll_keepalive, not due", ipsec_sa_poll_keepalive(sa, due - 1, ka, sizeof ka, &n), IPSEC_OK, NULL);
    TRUE("... writes length 0", n == 0);
    CHECK("poll_keepalive into too small a buffer",
          ipsec_sa_poll_keepalive(sa, due, small, sizeof small, &n), IPSEC_ERR_BUFFER_TOO_SMALL,
          "IPSEC_NAT_KEEPALIVE_MAX_LEN");
    TRUE("... writes nothing", n == 0);
    CHECK("poll_keepalive with a NULL sa", ipsec_sa_poll_keepalive(NULL, due, ka, sizeof ka, &n), IPSEC_ERR_INVALID_ARGUMENT, "`sa`");
    CHECK("poll_keepalive into a NULL buffer", ipsec_sa_poll_keepalive(sa, due, NULL, sizeof ka, &n), IPSEC_ERR_INVALID_ARGUMENT, "`buf`");
    CHECK("poll_keepalive with a NULL out_len", ipsec_sa_poll_keepalive(sa, due, ka, sizeof ka, NULL), IPSEC_ERR_INVALID_ARGUMENT, "`out_len`");
    CHECK("next_keepalive of a NULL sa", ipsec_sa_next_keepalive(NULL, &due), IPSEC_ERR_INVALID_ARGUMENT, "`sa`");
    CHECK("poll_keepalive, due", ipsec_sa_poll_keepalive(sa, due, ka, sizeof ka, &n), IPSEC_OK, NULL);
    TRUE("an IPv4 keepalive of 29 bytes", n == 29 && ka[0] == 0x45 && ka[3] == 29 && ka[9] == 17);
    TRUE("IPv4 header checksum", fold(sum16(0, ka, 20)) == 0xffff);
    TRUE("ports 4500 -> 4501, UDP length 9, payload 0xFF",
         ka[20] == 0x11 && ka[21] == 0x94 && ka[22] == 0x11 && ka[23] == 0x95 && ka[25] == 9 && ka[28] == 0xff);
    pseudo = sum16(0, ka + 12, 8) + 17 + 9;
    TRUE("UDP checksum verifies", (ka[26] | ka[27]) != 0 && fold(sum16(pseudo, ka + 20, 9)) == 0xffff);
    CHECK("poll_keepalive again", ipsec_sa_poll_keepalive(sa, due, ka, sizeof ka, &n), IPSEC_OK, NULL);
    TRUE("... none: it was just sent", n == 0);
    ipsec_sa_free(sa);
    sa = NULL;

    base_config(&c, 0x3001, IPSEC_DIRECTION_INBOUND);
    c.mode = IPSEC_MODE_TRANSPORT;
    c.udp_encap = true;
    c.udp_src_port = 4500; /* port 0 is refused */
    c.udp_dst_port = 4500;
    c.nat_original_src = "10.0.0.5";
    CHECK("NAT-OA source without destination", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_CONFIG, "nat_original_dst");
    c.nat_original_dst = "not an address";
    CHECK("NAT-OA destination not an address", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_CONFIG, "nat_original_dst");
    c.nat_original_dst = "198.51.100.2";
    CHECK("NAT-OA on an inbound transport SA", ipsec_sa_new(&c, T0, &sa), IPSEC_OK, NULL);
    CHECK("no keepalives from an inbound SA", ipsec_sa_next_keepalive(sa, &due), IPSEC_OK, NULL);
    TRUE("... UINT64_MAX", due == UINT64_MAX);
    ipsec_sa_free(sa);
    c.mode = IPSEC_MODE_TUNNEL;
    sa = NULL;
    CHECK("NAT-OA on a tunnel SA", ipsec_sa_new(&c, T0, &sa), IPSEC_ERR_CONFIG, "nat_original_addresses");
    TRUE("... nothing written", sa == NULL);
}

#ifdef IPSEC_TEST_HOOKS
/* Only in a library built with the `test-hooks` feature (never a release one): the
 * n-th SA packet operation from now on, on this thread, panics inside the library. */
void ipsec_test_panic_after(uint64_t n);

/* After a caught panic the handle is poisoned: every later call on it answers
 * IPSEC_ERR_POISONED; a burst that panics part-way reports what it did. */
static void poisoned_handles(void)
{
    ipsec_sa *sa = make_sa(0x1000, IPSEC_DIRECTION_OUTBOUND);
    ipsec_sa *other = make_sa(0x1001, IPSEC_DIRECTION_OUTBOUND);
    ipsec_packet pkts[5];
    uint8_t bufs[5][256];
    uint8_t buf[256];
    ipsec_sa_stats stats;
    ipsec_sa_info info;
    ipsec_overhead oh;
    ipsec_sa_event ev;
    size_t off, len, used = 99, i;
    uint32_t path_mtu, inner_mtu;

    printf("\n-- a panic poisons the handle (test hooks)\n");
    for (i = 0; i < 5; i++) {
        memset(&pkts[i], 0, sizeof pkts[i]);
        put_packet(bufs[i], 64, 100);
        pkts[i].buf = bufs[i];
        pkts[i].capacity = sizeof bufs[i];
        pkts[i].offset = 64;
        pkts[i].length = 100;
        pkts[i].status = 999;
    }
    ipsec_test_panic_after(3);
    TRUE("a burst that panics at its third packet: 2 succeeded",
         ipsec_sa_encrypt_burst(sa, pkts, 5, T0) == 2);
    TRUE("... the first two are IPSEC_OK and encrypted",
         pkts[0].status == IPSEC_OK && pkts[1].status == IPSEC_OK && pkts[0].offset < 64 &&
             pkts[1].length > 100);
    TRUE("... the third is IPSEC_ERR_PANIC", pkts[2].status == IPSEC_ERR_PANIC);
    TRUE("... the last two IPSEC_ERR_POISONED and untouched",
         pkts[3].status == IPSEC_ERR_POISONED && pkts[4].status == IPSEC_ERR_POISONED &&
             pkts[3].offset == 64 && pkts[4].length == 100);
    off = 64;
    len = 100;
    put_packet(buf, off, len);
    CHECK("encrypt on the poisoned SA", ipsec_sa_encrypt(sa, buf, sizeof buf, &off, &len, T0), IPSEC_ERR_POISONED, "panic");
    TRUE("... nothing written", off == 64 && len == 100);
    CHECK("decrypt on it", ipsec_sa_decrypt(sa, buf, sizeof buf, &off, &len, T0), IPSEC_ERR_POISONED, "panic");
    CHECK("get_stats on it", ipsec_sa_get_stats(sa, &stats), IPSEC_ERR_POISONED, "panic");
    CHECK("get_info on it", ipsec_sa_get_info(sa, &info), IPSEC_ERR_POISONED, "panic");
    CHECK("overhead on it", ipsec_sa_overhead(sa, 100, &oh), IPSEC_ERR_POISONED, "panic");
    CHECK("poll_event on it", ipsec_sa_poll_event(sa, T0, &ev), IPSEC_ERR_POISONED, "panic");
    CHECK("get_path_mtu on it", ipsec_sa_get_path_mtu(sa, T0, &path_mtu, &inner_mtu), IPSEC_ERR_POISONED, "panic");
    TRUE("a burst on it: 0", ipsec_sa_encrypt_burst(sa, pkts, 2, T0) == 0);
    TRUE("... every status IPSEC_ERR_POISONED",
         pkts[0].status == IPSEC_ERR_POISONED && pkts[1].status == IPSEC_ERR_POISONED);
    ipsec_sa_free(sa);
    off = 64;
    len = 100;
    CHECK("another SA still works", ipsec_sa_encrypt(other, buf, sizeof buf, &off, &len, T0), IPSEC_OK, NULL);

    /* One packet: the SA is poisoned by the call that panicked. */
    ipsec_sa_free(other);
    other = make_sa(0x1002, IPSEC_DIRECTION_OUTBOUND);
    off = 64;
    len = 100;
    put_packet(buf, off, len);
    ipsec_test_panic_after(1);
    CHECK("encrypt that panics", ipsec_sa_encrypt(other, buf, sizeof buf, &off, &len, T0), IPSEC_ERR_PANIC, "deliberate panic");
    CHECK("the next call", ipsec_sa_encrypt(other, buf, sizeof buf, &off, &len, T0), IPSEC_ERR_POISONED, "IPSEC_ERR_PANIC");
    for (i = 0; i < 3; i++) {
        put_packet(bufs[i], 64, 100);
        pkts[i].buf = bufs[i];
        pkts[i].offset = 64;
        pkts[i].length = 100;
        pkts[i].fragments = 7;
    }
    ipsec_sa_free(other);

    /* The fragmenting burst reports the spares the packets before the panic used. */
    other = make_sa(0x1003, IPSEC_DIRECTION_OUTBOUND);
    ipsec_test_panic_after(2);
    TRUE("a fragmenting burst that panics at its second packet: 1 succeeded",
         ipsec_sa_encrypt_burst_fragmenting(other, pkts, 3, T0, NULL, 0, &used) == 1);
    TRUE("... spares used written (0: the first packet fit)", used == 0);
    TRUE("... statuses OK, PANIC, POISONED",
         pkts[0].status == IPSEC_OK && pkts[1].status == IPSEC_ERR_PANIC &&
             pkts[2].status == IPSEC_ERR_POISONED && pkts[2].fragments == 0);
    ipsec_sa_free(other);
}
#endif

int main(void)
{
    null_handles_and_pointers();
    lengths_and_room();
    bad_packets();
    lifetimes_and_sequence();
    configs_and_enums();
    refused_configs();
    replay_window();
    reassembly();
    bursts();
    nat_traversal();
    spi_allocation_and_jitter();
#ifdef IPSEC_TEST_HOOKS
    poisoned_handles();
#endif
    printf("\n%d checks, %d failed\n", checks, failed);
    return failed == 0 ? 0 : 1;
}
