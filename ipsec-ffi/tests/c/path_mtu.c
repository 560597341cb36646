/*
 * Path MTU, fragmenting encryption, ICMP "too big" errors and byte lifetimes through the
 * C API: a packet that does not fit is pre-fragmented into the caller's spare
 * descriptors (each fragment decrypts on its own), a DF packet is refused with
 * IPSEC_ERR_TOO_BIG and answered with a well-formed ICMP error, an ICMP message about
 * the SA's own packet lowers its path MTU, and a hard byte lifetime is never overshot.
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

static const uint64_t T0 = UINT64_C(1000000000000);
static const uint8_t KEY[20] = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0};

#define HEAD 128
#define SIZE 4096

static ipsec_sa *make_sa(uint32_t direction, uint32_t path_mtu, uint64_t hard_bytes)
{
    ipsec_sa_config c;
    ipsec_sa *sa = NULL;
    ipsec_sa_config_init(&c);
    c.spi = 0x5000;
    c.direction = direction;
    c.mode = IPSEC_MODE_TUNNEL;
    c.cipher = IPSEC_CIPHER_AES_128_GCM;
    c.key = KEY;
    c.key_len = sizeof KEY;
    if (direction == IPSEC_DIRECTION_OUTBOUND) {
        c.tunnel_src = "192.0.2.1";
        c.tunnel_dst = "198.51.100.2";
    }
    c.path_mtu = path_mtu;
    c.hard_lifetime.bytes = hard_bytes;
    if (ipsec_sa_new(&c, T0, &sa) != IPSEC_OK) {
        printf("FAIL: cannot create the test SA\n");
        exit(1);
    }
    return sa;
}

static uint16_t checksum(const uint8_t *p, size_t n)
{
    uint32_t sum = 0;
    size_t i;
    for (i = 0; i + 1 < n; i += 2) {
        sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    }
    if (n & 1) {
        sum += (uint32_t)(p[n - 1] << 8);
    }
    while (sum >> 16) {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    return (uint16_t)~sum;
}

/* An IPv4/UDP packet of `len` bytes from 10.0.0.1, DF as given, at buf + off. */
static void put_packet(uint8_t *buf, size_t off, size_t len, int df)
{
    uint8_t *p = buf + off;
    uint16_t c;
    size_t i;
    for (i = 0; i < len; i++) {
        p[i] = (uint8_t)(i * 13);
    }
    memset(p, 0, 28);
    p[0] = 0x45;
    p[2] = (uint8_t)(len >> 8);
    p[3] = (uint8_t)len;
    p[4] = 0x12;
    p[5] = 0x34;
    p[6] = df ? 0x40 : 0;
    p[8] = 64;
    p[9] = 17;
    p[12] = 10; p[15] = 1;
    p[16] = 10; p[17] = 1; p[19] = 1;
    p[20] = 0x13; p[21] = 0x88; p[22] = 0x13; p[23] = 0x89;
    p[24] = (uint8_t)((len - 20) >> 8);
    p[25] = (uint8_t)(len - 20);
    c = checksum(p, 20);
    p[10] = (uint8_t)(c >> 8);
    p[11] = (uint8_t)c;
}

static void fragments(void)
{
    static uint8_t buf[SIZE], spare_mem[3][SIZE], copy[SIZE];
    ipsec_packet spares[3];
    ipsec_sa *out = make_sa(IPSEC_DIRECTION_OUTBOUND, 1200, 0);
    ipsec_sa *in = make_sa(IPSEC_DIRECTION_INBOUND, 0, 0);
    size_t off = HEAD, len = 3000, used = 99, needed = 0, i, data = 0;
    uint32_t pmtu = 0, inner = 0;
    ipsec_sa_stats st;
    int all_fit = 1, all_decrypt = 1;

    printf("\n-- pre-fragmentation into spare descriptors\n");
    put_packet(buf, off, len, 0);
    memcpy(copy, buf, SIZE);
    TRUE("path MTU and inner MTU", ipsec_sa_get_path_mtu(out, T0, &pmtu, &inner) == IPSEC_OK && pmtu == 1200 && inner > 1100 && inner < 1200);
    TRUE("two spares needed", ipsec_sa_spares_needed(out, buf + off, len, T0, &needed) == IPSEC_OK && needed == 2);
    TRUE("plain encrypt: no spares", ipsec_sa_encrypt(out, buf, SIZE, &off, &len, T0) == IPSEC_ERR_NO_BUFFER_SPACE);
    TRUE("... and the packet is unchanged", off == HEAD && len == 3000 && memcmp(buf, copy, SIZE) == 0);
    for (i = 0; i < 3; i++) {
        spares[i].buf = spare_mem[i];
        spares[i].capacity = SIZE;
        spares[i].offset = HEAD;
        spares[i].length = 0;
        spares[i].status = 999;
        spares[i].fragments = 0;
    }
    TRUE("one spare is too few", ipsec_sa_encrypt_fragmenting(out, buf, SIZE, &off, &len, T0, spares, 1, &used) == IPSEC_ERR_NO_BUFFER_SPACE && used == 99 && spares[0].status == 999);
    TRUE("fragmenting encrypt", ipsec_sa_encrypt_fragmenting(out, buf, SIZE, &off, &len, T0, spares, 3, &used) == IPSEC_OK);
    TRUE("two spares used", used == 2 && spares[0].status == IPSEC_OK && spares[2].status == 999);
    all_fit = len <= 1200 && spares[0].length <= 1200 && spares[1].length <= 1200;
    TRUE("every ESP packet fits the path MTU", all_fit);
    {
        size_t o = off, l = len;
        all_decrypt &= ipsec_sa_decrypt(in, buf, SIZE, &o, &l, T0) == IPSEC_OK;
        data += l - 20;
        all_decrypt &= (buf[o + 6] & 0x20) != 0; /* MF on the first fragment */
        for (i = 0; i < 2; i++) {
            o = spares[i].offset;
            l = spares[i].length;
            all_decrypt &= ipsec_sa_decrypt(in, spare_mem[i], SIZE, &o, &l, T0) == IPSEC_OK;
            all_decrypt &= spare_mem[i][o + 4] == 0x12 && spare_mem[i][o + 5] == 0x34;
            data += l - 20;
        }
    }
    TRUE("each fragment decrypts, with the original IP ID", all_decrypt);
    TRUE("the fragments carry the whole payload", data == 3000 - 20);
    TRUE("stats: three ESP packets", ipsec_sa_get_stats(out, &st) == IPSEC_OK && st.packets == 3 && st.no_buffer_space == 2);
    ipsec_sa_free(out);
    ipsec_sa_free(in);
}

static void too_big_and_icmp(void)
{
    static uint8_t buf[SIZE], icmp[1500];
    ipsec_sa *out = make_sa(IPSEC_DIRECTION_OUTBOUND, 1500, 0);
    size_t off = HEAD, len = 1480, n = 0;
    uint32_t pmtu = 0, inner = 0, learned = 0;
    ipsec_sa_stats st;
    uint16_t c;

    printf("\n-- DF set: too big, and the ICMP error for the sender\n");
    put_packet(buf, off, len, 1);
    TRUE("DF packet beyond the inner MTU", ipsec_sa_encrypt(out, buf, SIZE, &off, &len, T0) == IPSEC_ERR_TOO_BIG);
    TRUE("counted as too_big", ipsec_sa_get_stats(out, &st) == IPSEC_OK && st.too_big == 1);
    TRUE("ICMP error built", ipsec_sa_too_big_reply(out, buf + off, len, "10.0.0.254", T0, icmp, sizeof icmp, &n) == IPSEC_OK && n == 576);
    ipsec_sa_get_path_mtu(out, T0, &pmtu, &inner);
    TRUE("type 3 code 4 with the inner MTU", icmp[20] == 3 && icmp[21] == 4 && (uint32_t)(icmp[26] << 8 | icmp[27]) == inner);
    TRUE("to the sender, from the gateway", icmp[16] == 10 && icmp[19] == 1 && icmp[12] == 10 && icmp[15] == 254);
    TRUE("checksums", checksum(icmp, 20) == 0 && checksum(icmp + 20, n - 20) == 0);
    TRUE("a small output buffer", ipsec_sa_too_big_reply(out, buf + off, len, "10.0.0.254", T0, icmp, 100, &n) == IPSEC_ERR_BUFFER_TOO_SMALL);
    TRUE("a source of the wrong family", ipsec_sa_too_big_reply(out, buf + off, len, "2001:db8::1", T0, icmp, sizeof icmp, &n) == IPSEC_ERR_INVALID_ARGUMENT);
    len = 500;
    put_packet(buf, off, len, 1);
    TRUE("no error about a packet that fits", ipsec_sa_too_big_reply(out, buf + off, len, "10.0.0.254", T0, icmp, sizeof icmp, &n) == IPSEC_OK && n == 0);

    printf("\n-- an ICMP message about our own ESP packet lowers the path MTU\n");
    TRUE("a small packet passes", ipsec_sa_encrypt(out, buf, SIZE, &off, &len, T0) == IPSEC_OK);
    /* The router 203.0.113.9 says: 1400. IP header, ICMP header, then the ESP packet. */
    memset(icmp, 0, sizeof icmp);
    icmp[0] = 0x45;
    icmp[2] = 0;
    icmp[3] = 20 + 8 + 64;
    icmp[8] = 60;
    icmp[9] = 1;
    icmp[12] = 203; icmp[13] = 0; icmp[14] = 113; icmp[15] = 9;
    icmp[16] = 192; icmp[17] = 0; icmp[18] = 2; icmp[19] = 1;
    c = checksum(icmp, 20);
    icmp[10] = (uint8_t)(c >> 8);
    icmp[11] = (uint8_t)c;
    icmp[20] = 3;
    icmp[21] = 4;
    icmp[26] = 1400 >> 8;
    icmp[27] = 1400 & 0xff;
    memcpy(icmp + 28, buf + off, 64);
    c = checksum(icmp + 20, 8 + 64);
    icmp[22] = (uint8_t)(c >> 8);
    icmp[23] = (uint8_t)c;
    TRUE("handled", ipsec_sa_handle_icmp(out, icmp, 20 + 8 + 64, T0, &learned) == IPSEC_OK && learned == 1400);
    TRUE("now in force", ipsec_sa_get_path_mtu(out, T0, &pmtu, &inner) == IPSEC_OK && pmtu == 1400);
    icmp[28 + 20] ^= 0xff; /* another SPI */
    TRUE("ICMP about another SA's packet", ipsec_sa_handle_icmp(out, icmp, 20 + 8 + 64, T0, &learned) == IPSEC_ERR_MALFORMED);
    TRUE("set_path_mtu below 68", ipsec_sa_set_path_mtu(out, 60) == IPSEC_ERR_CONFIG);
    TRUE("set_path_mtu 0 removes it", ipsec_sa_set_path_mtu(out, 0) == IPSEC_OK && ipsec_sa_get_path_mtu(out, T0, &pmtu, &inner) == IPSEC_OK && pmtu == 0 && inner == 0);
    ipsec_sa_free(out);
}

static void byte_lifetime(void)
{
    static uint8_t buf[SIZE];
    ipsec_sa *out = make_sa(IPSEC_DIRECTION_OUTBOUND, 0, 1000);
    size_t off, len;
    int i, ok = 1;
    ipsec_sa_stats st;
    ipsec_sa_event ev;

    printf("\n-- a hard byte lifetime is never overshot\n");
    for (i = 0; i < 2; i++) {
        off = HEAD;
        len = 400;
        put_packet(buf, off, len, 1);
        ok &= ipsec_sa_encrypt(out, buf, SIZE, &off, &len, T0) == IPSEC_OK;
    }
    TRUE("800 bytes pass", ok);
    off = HEAD;
    len = 400;
    put_packet(buf, off, len, 1);
    TRUE("the packet that would cross 1000 is refused", ipsec_sa_encrypt(out, buf, SIZE, &off, &len, T0) == IPSEC_ERR_LIFETIME_EXPIRED);
    TRUE("bytes stop at 800", ipsec_sa_get_stats(out, &st) == IPSEC_OK && st.bytes == 800 && st.lifetime_expired == 1);
    TRUE("and the SA expired", ipsec_sa_poll_event(out, T0, &ev) == IPSEC_OK && ev.kind == IPSEC_EVENT_EXPIRED && ev.limit == IPSEC_LIMIT_BYTES);
    ipsec_sa_free(out);
}

int main(void)
{
    fragments();
    too_big_and_icmp();
    byte_lifetime();
    printf("\n%d checks, %d failed\n", checks, failed);
    return failed == 0 ? 0 : 1;
}
