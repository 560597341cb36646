/*
 * examples/c/gateway.c: the branch-office VPN of examples/branch-office.toml, run by a
 * C program through libipsec (the same scenario as `ipsec demo`).
 *
 *   head office 10.0.0.0/24, gateway 192.0.2.1
 *     <== leased line ==> branch 1 10.1.0.0/24, gateway 198.51.100.2
 *     <== leased line ==> branch 2 10.2.0.0/24, gateway 203.0.113.2
 *
 * The policy file is the HEAD OFFICE gateway's view. The head office runs it as an
 * ipsec_gateway (the SPD plus the four SAs of its [[sa]] tables): inbound ESP is
 * decrypted by the SA of its SPI and checked against that SA's policy (RFC 4301 §5.2),
 * outbound packets are classified and encrypted.
 *
 * Each branch gateway holds the mirror image of its tunnel: the head office's inbound
 * SA ("b1-to-ho") is the branch's outbound SA, the head office's outbound SA
 * ("ho-to-b1") the branch's inbound SA. A branch gateway has its own configuration; here
 * it is built from ipsec_sa_config structs (the keys below are those of the example
 * file: if they differ, decryption fails and this program says so). The branch's SPD is
 * the head office's with local and remote swapped, so the branch's outbound decision
 * for a packet is the head office SPD's INBOUND decision for it (ipsec_spd_lookup_packet).
 *
 * For every flow the administrators care about (terminal services, Outlook, printing,
 * and traffic that must be refused) it builds the real IPv4/TCP packet, classifies it
 * at the branch, encrypts it there, lets the head office decrypt and check it, and sends
 * the reply back the same way; refused traffic is dropped at the branch, and the head
 * office refuses it in the clear too. Then an attacker replays, tampers and spoofs an
 * SPI, and a burst of print jobs goes out with one packet that has no headroom.
 * Counters at the end. Exit status 0 only when every expectation held.
 *
 * Usage: gateway [POLICY.toml]   (default: examples/branch-office.toml)
 */
#include <ipsec.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUF_SIZE 2048
#define HEADROOM 128
#define BURST 8

static int failures = 0;

/* A fixed point in time for the whole run (nanoseconds; any epoch will do). */
static const uint64_t NOW_NS = UINT64_C(1780000000) * UINT64_C(1000000000);

static void expect(int ok, const char *what)
{
    if (!ok) {
        failures++;
        printf("    EXPECTATION FAILED: %s\n", what);
    }
}

/* The status's name and this thread's last-error message. */
static const char *explain(ipsec_status st)
{
    static char msg[512];
    size_t n = 0;
    char last[400];
    if (ipsec_last_error(last, sizeof last, &n) != IPSEC_OK) {
        strcpy(last, "(message longer than the buffer)");
    }
    snprintf(msg, sizeof msg, "%s (%s)", ipsec_status_str(st), last);
    return msg;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    long size;
    if (f == NULL) {
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        text = malloc((size_t)size + 1);
        if (text != NULL && fread(text, 1, (size_t)size, f) == (size_t)size) {
            text[size] = '\0';
            *len = (size_t)size;
        } else {
            free(text);
            text = NULL;
        }
    }
    fclose(f);
    return text;
}

/* ---- packets ------------------------------------------------------------------------ */

static uint32_t ip4(unsigned a, unsigned b, unsigned c, unsigned d)
{
    return ((uint32_t)a << 24) | ((uint32_t)b << 16) | ((uint32_t)c << 8) | (uint32_t)d;
}

static void put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, v >> 16); put16(p + 2, v & 0xffff); }
static uint32_t get32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint32_t sum16(const uint8_t *p, size_t n, uint32_t sum)
{
    size_t i;
    for (i = 0; i + 1 < n; i += 2) {
        sum += ((uint32_t)p[i] << 8) | p[i + 1];
    }
    if (n & 1) {
        sum += (uint32_t)p[n - 1] << 8;
    }
    return sum;
}

static uint16_t fold(uint32_t sum)
{
    while (sum >> 16) {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    return (uint16_t)~sum;
}

/* Writes an IPv4 packet (TCP or UDP, checksums correct) at p; returns its length. */
static size_t build_packet(uint8_t *p, uint8_t proto, uint32_t src, uint16_t sport,
                           uint32_t dst, uint16_t dport, const char *payload)
{
    size_t plen = strlen(payload);
    size_t l4 = proto == 6 ? 20 : 8;
    size_t total = 20 + l4 + plen;
    uint8_t pseudo[12];
    uint32_t sum;
    memset(p, 0, total);
    p[0] = 0x45;
    put16(p + 2, (uint32_t)total);
    put16(p + 4, 0x1234);
    p[8] = 64;
    p[9] = proto;
    put32(p + 12, src);
    put32(p + 16, dst);
    put16(p + 10, fold(sum16(p, 20, 0)));
    put16(p + 20, sport);
    put16(p + 22, dport);
    if (proto == 6) {
        put32(p + 24, 1000);      /* sequence number */
        p[32] = 5 << 4;           /* data offset */
        p[33] = 0x18;             /* PSH, ACK */
        put16(p + 34, 64240);     /* window */
    } else {
        put16(p + 24, (uint32_t)(8 + plen));
    }
    memcpy(p + 20 + l4, payload, plen);
    put32(pseudo, src);
    put32(pseudo + 4, dst);
    pseudo[8] = 0;
    pseudo[9] = proto;
    put16(pseudo + 10, (uint32_t)(l4 + plen));
    sum = sum16(pseudo, sizeof pseudo, 0);
    put16(p + 20 + (proto == 6 ? 16 : 6), fold(sum16(p + 20, l4 + plen, sum)));
    return total;
}

static int contains(const uint8_t *hay, size_t n, const char *needle)
{
    size_t m = strlen(needle), i;
    for (i = 0; i + m <= n; i++) {
        if (memcmp(hay + i, needle, m) == 0) {
            return 1;
        }
    }
    return 0;
}

/* ---- the branch gateways ------------------------------------------------------------ */

struct branch {
    const char *label;
    unsigned net;            /* 10.<net>.0.0/24 */
    const char *gateway;     /* the branch gateway's address */
    const char *up_name;     /* branch -> head office (the branch's outbound SA) */
    uint32_t up_spi;
    const char *up_key;
    const char *down_name;   /* head office -> branch (the branch's inbound SA) */
    uint32_t down_spi;
    const char *down_key;
    ipsec_sa *up;
    ipsec_sa *down;
};

static const char *HQ_GATEWAY = "192.0.2.1";

static int hex_key(const char *hex, uint8_t *out, size_t max)
{
    size_t n = strlen(hex) / 2, i;
    unsigned v;
    if (n > max) {
        return -1;
    }
    for (i = 0; i < n; i++) {
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) {
            return -1;
        }
        out[i] = (uint8_t)v;
    }
    return (int)n;
}

static ipsec_status branch_sa(uint32_t spi, uint32_t direction, const char *key_hex,
                              const char *src, const char *dst, ipsec_sa **out)
{
    ipsec_sa_config cfg;
    uint8_t key[36];
    int key_len = hex_key(key_hex, key, sizeof key);
    ipsec_status st;
    if (key_len < 0) {
        return IPSEC_ERR_INVALID_ARGUMENT;
    }
    ipsec_sa_config_init(&cfg);
    cfg.spi = spi;
    cfg.direction = direction;
    cfg.mode = IPSEC_MODE_TUNNEL;
    cfg.cipher = IPSEC_CIPHER_AES_128_GCM;
    cfg.key = key;
    cfg.key_len = (size_t)key_len;
    if (direction == IPSEC_DIRECTION_INBOUND) {
        cfg.replay_window = 1024; /* only the receiver keeps a window */
    }
    cfg.tunnel_src = src;
    cfg.tunnel_dst = dst;
    st = ipsec_sa_new(&cfg, NOW_NS, out);
    memset(key, 0, sizeof key); /* the SA has its own copy */
    return st;
}

/* ---- the scenario ------------------------------------------------------------------- */

struct flow {
    const char *name;
    uint8_t proto;
    uint32_t src;
    uint32_t dst;
    uint16_t dport;
    int allowed;
};

static const uint32_t TERMINAL = 0x0a00000a, MAIL = 0x0a000014, PRINT = 0x0a00001e;

/* One packet through the tunnel: returns 1 if every step did what it should. */
static int request_and_reply(ipsec_spd *spd, ipsec_gateway *hq, struct branch *b,
                             const struct flow *f, uint8_t *captured, size_t *captured_len)
{
    uint8_t buf[BUF_SIZE], original[BUF_SIZE];
    size_t off = HEADROOM, len, orig_len;
    char payload[128];
    ipsec_decision d;
    ipsec_gateway_result r;
    ipsec_status st;
    uint16_t sport = (uint16_t)(49152 + f->dport % 1000);

    snprintf(payload, sizeof payload, "%s request from %s", f->name, b->label);
    len = build_packet(buf + off, f->proto, f->src, sport, f->dst, f->dport, payload);
    memcpy(original, buf + off, len);
    orig_len = len;

    /* The branch classifies (its outbound = the head office's inbound view). */
    st = ipsec_spd_lookup_packet(spd, IPSEC_DIRECTION_INBOUND, buf + off, len, &d);
    if (st != IPSEC_OK) {
        printf("    lookup failed: %s\n", explain(st));
        return 0;
    }
    printf("    branch SPD: %-8s policy %-20s SA %s\n",
           d.action == IPSEC_ACTION_PROTECT ? "protect" :
           d.action == IPSEC_ACTION_BYPASS ? "bypass" : "discard",
           d.policy ? d.policy : "(none)", d.sa ? d.sa : "-");
    if (!f->allowed) {
        expect(d.action == IPSEC_ACTION_DISCARD, "refused traffic is discarded at the branch");
        /* Had it been sent in the clear, the head office refuses it as well. */
        st = ipsec_gateway_inbound(hq, buf, sizeof buf, &off, &len, NOW_NS, &r);
        printf("    in the clear at the head office: %s\n", explain(st));
        expect(st == IPSEC_ERR_POLICY_DISCARD, "head office drops refused cleartext");
        return d.action == IPSEC_ACTION_DISCARD && st == IPSEC_ERR_POLICY_DISCARD;
    }
    if (d.action != IPSEC_ACTION_PROTECT || d.sa == NULL || strcmp(d.sa, b->up_name) != 0) {
        expect(0, "allowed traffic is protected with the branch's SA");
        return 0;
    }

    /* The branch encrypts. */
    st = ipsec_sa_encrypt(b->up, buf, sizeof buf, &off, &len, NOW_NS);
    if (st != IPSEC_OK) {
        printf("    branch encrypt failed: %s\n", explain(st));
        expect(0, "branch encrypts");
        return 0;
    }
    expect(buf[off + 9] == 50, "the wire packet is ESP (IP protocol 50)");
    expect(!contains(buf + off, len, payload), "no cleartext payload on the wire");
    if (captured != NULL && *captured_len == 0) {
        memcpy(captured, buf + off, len);
        *captured_len = len;
    }
    printf("    on the line: %zu B ESP, SPI 0x%08x, seq %u\n", len,
           (unsigned)get32(buf + off + 20), (unsigned)get32(buf + off + 24));

    /* The head office decrypts and checks the inner packet against the SA's policy. */
    st = ipsec_gateway_inbound(hq, buf, sizeof buf, &off, &len, NOW_NS, &r);
    if (st != IPSEC_OK) {
        printf("    head office inbound failed: %s\n", explain(st));
        expect(0, "head office decrypts");
        return 0;
    }
    expect(r.verdict == IPSEC_VERDICT_DECRYPTED && r.sa && strcmp(r.sa, b->up_name) == 0,
           "decrypted by the branch's SA");
    expect(r.policy && d.policy && strcmp(r.policy, d.policy) == 0,
           "accepted under the policy that classified it (RFC 4301 5.2)");
    expect(len == orig_len && memcmp(buf + off, original, len) == 0,
           "the head office gets the original packet");

    /* The server answers; the head office classifies and encrypts the reply. */
    off = HEADROOM;
    snprintf(payload, sizeof payload, "%s reply to %s", f->name, b->label);
    len = build_packet(buf + off, f->proto, f->dst, f->dport, f->src, sport, payload);
    memcpy(original, buf + off, len);
    orig_len = len;
    st = ipsec_gateway_outbound(hq, buf, sizeof buf, &off, &len, NOW_NS, &r);
    if (st != IPSEC_OK || r.verdict != IPSEC_VERDICT_PROTECTED) {
        printf("    head office outbound failed: %s\n", explain(st));
        expect(0, "head office protects the reply");
        return 0;
    }
    expect(r.sa && strcmp(r.sa, b->down_name) == 0, "reply goes through the branch's tunnel");
    expect(r.policy && d.policy && strcmp(r.policy, d.policy) == 0,
           "the reply is protected by the same policy");
    st = ipsec_sa_decrypt(b->down, buf, sizeof buf, &off, &len, NOW_NS);
    if (st != IPSEC_OK) {
        printf("    branch decrypt failed: %s\n", explain(st));
        expect(0, "branch decrypts the reply");
        return 0;
    }
    expect(len == orig_len && memcmp(buf + off, original, len) == 0,
           "the branch gets the original reply");
    printf("    ok: request and reply through the tunnel (SA %s up, %s down)\n",
           b->up_name, r.sa);
    return 1;
}

static void print_stats(const char *gateway, const char *name, const ipsec_sa_info *info,
                        const ipsec_sa_stats *s)
{
    printf("  %-12s %-10s 0x%08x %-8s %7llu %8llu  auth_failed=%llu replay=%llu "
           "unknown_spi=%llu policy_discard=%llu no_buffer_space=%llu\n",
           gateway, name, (unsigned)info->spi,
           info->direction == IPSEC_DIRECTION_OUTBOUND ? "outbound" : "inbound",
           (unsigned long long)s->packets, (unsigned long long)s->bytes,
           (unsigned long long)s->auth_failed, (unsigned long long)s->replay,
           (unsigned long long)s->unknown_spi, (unsigned long long)s->policy_discard,
           (unsigned long long)s->no_buffer_space);
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "examples/branch-office.toml";
    struct branch branches[2] = {
        {"branch1", 1, "198.51.100.2", "b1-to-ho", 0x2001,
         "2b7e151628aed2a6abf7158809cf4f3cb1c2d3e4", "ho-to-b1", 0x1001,
         "8f1c5e3a9b27d4610c5fa2e87b3d9146a1b2c3d4", NULL, NULL},
        {"branch2", 2, "203.0.113.2", "b2-to-ho", 0x2002,
         "f69f2445df4f9b17ad2b417be66c3710d1e2f3a4", "ho-to-b2", 0x1002,
         "603deb1015ca71be2b73aef0857d7781c1d2e3f4", NULL, NULL},
    };
    size_t text_len = 0, i, j, n;
    char *text = read_file(path, &text_len);
    ipsec_spd *spd = NULL;
    ipsec_gateway *hq = NULL;
    ipsec_lint *lint = NULL;
    ipsec_firewall *fw = NULL;
    ipsec_status st;
    uint8_t captured[BUF_SIZE];
    size_t captured_len = 0;
    unsigned refused = 0;
    ipsec_sa_stats gw_stats;

    if (text == NULL) {
        fprintf(stderr, "gateway: cannot read %s\n", path);
        return 2;
    }
    printf("libipsec %s (header %s), policy %s (the head office's view)\n",
           ipsec_version(), IPSEC_VERSION_STRING, path);
    expect(strcmp(ipsec_version(), IPSEC_VERSION_STRING) == 0, "library matches the header");

    st = ipsec_spd_from_toml(text, text_len, &spd);
    if (st == IPSEC_OK) {
        st = ipsec_gateway_new(text, text_len, NOW_NS, &hq);
    }
    if (st != IPSEC_OK) {
        fprintf(stderr, "gateway: %s: %s\n", path, explain(st));
        free(text);
        ipsec_spd_free(spd);
        return 2;
    }

    /* What the policy says about itself. */
    printf("\nLint:\n");
    if (ipsec_spd_lint(spd, &lint) == IPSEC_OK) {
        n = ipsec_lint_count(lint);
        for (i = 0; i < n; i++) {
            ipsec_lint_finding f;
            if (ipsec_lint_get(lint, i, &f) == IPSEC_OK) {
                printf("  %s [%s] %s: %s\n",
                       f.severity == IPSEC_SEVERITY_ERROR ? "error" :
                       f.severity == IPSEC_SEVERITY_WARNING ? "warning" : "info",
                       f.code, f.policy ? f.policy : "(file)", f.message);
                expect(f.severity != IPSEC_SEVERITY_ERROR, "no lint errors");
            }
        }
        if (n == 0) {
            printf("  no findings\n");
        }
    }
    ipsec_lint_free(lint);

    printf("\nFirewall openings between the gateways:\n");
    if (ipsec_spd_firewall_openings(spd, &fw) == IPSEC_OK) {
        unsigned esp = 0, ike = 0;
        n = ipsec_firewall_count(fw);
        for (i = 0; i < n; i++) {
            ipsec_firewall_opening o;
            if (ipsec_firewall_get(fw, i, &o) != IPSEC_OK) {
                continue;
            }
            if (o.has_port) {
                printf("  %-13s -> %-13s %s/%u (%s)\n", o.from, o.to, o.protocol_name,
                       (unsigned)o.port, o.label);
                ike += o.port == 500;
            } else {
                printf("  %-13s -> %-13s IP protocol %u (%s), not a port\n", o.from, o.to,
                       (unsigned)o.protocol, o.label);
                esp += o.protocol == 50;
            }
        }
        expect(ike == 4 && esp == 4, "UDP 500 and ESP both ways for both tunnels");
    }
    ipsec_firewall_free(fw);

    /* The branch gateways: the mirror image of each tunnel. */
    for (i = 0; i < 2; i++) {
        struct branch *b = &branches[i];
        st = branch_sa(b->up_spi, IPSEC_DIRECTION_OUTBOUND, b->up_key, b->gateway, HQ_GATEWAY, &b->up);
        if (st == IPSEC_OK) {
            st = branch_sa(b->down_spi, IPSEC_DIRECTION_INBOUND, b->down_key, NULL, NULL, &b->down);
        }
        if (st != IPSEC_OK) {
            fprintf(stderr, "gateway: %s SAs: %s\n", b->label, explain(st));
            failures++;
            goto out;
        }
    }

    printf("\nFlows (branch -> head office, and the reply):\n");
    for (i = 0; i < 2; i++) {
        struct branch *b = &branches[i];
        uint32_t pc1 = ip4(10, b->net, 0, 15), pc2 = ip4(10, b->net, 0, 16),
                 pc3 = ip4(10, b->net, 0, 17);
        struct flow flows[] = {
            {"terminal services (RDP 3389)", 6, pc1, TERMINAL, 3389, 1},
            {"Outlook (HTTPS 443)", 6, pc1, MAIL, 443, 1},
            {"Outlook (RPC endpoint mapper 135)", 6, pc2, MAIL, 135, 1},
            {"printing (SMB 445)", 6, pc3, PRINT, 445, 1},
            {"printing (IPP 631)", 6, pc3, PRINT, 631, 1},
            {"printing (raw 9100)", 6, pc3, PRINT, 9100, 1},
            {"telnet to the terminal server", 6, pc2, TERMINAL, 23, 0},
            {"SMB to a non-print server", 6, pc1, TERMINAL, 445, 0},
            {"SMB from an unknown subnet", 6, ip4(172, 16, 5, 5), PRINT, 445, 0},
            {"DNS (UDP 53)", 17, pc1, ip4(10, 0, 0, 53), 53, 0},
        };
        for (j = 0; j < sizeof flows / sizeof flows[0]; j++) {
            int ok;
            printf("  %s: %s\n", b->label, flows[j].name);
            ok = request_and_reply(spd, hq, b, &flows[j], i == 0 ? captured : NULL,
                                   &captured_len);
            refused += !flows[j].allowed;
            if (!ok) {
                printf("    FAILED\n");
                failures += flows[j].allowed; /* refused flows count their own failures */
            }
        }
    }

    /* IKE between the gateways passes in the clear (a BYPASS policy). */
    {
        uint8_t buf[BUF_SIZE];
        size_t off = HEADROOM, len;
        ipsec_gateway_result r;
        len = build_packet(buf + off, 17, ip4(198, 51, 100, 2), 500, ip4(192, 0, 2, 1), 500,
                           "IKE_SA_INIT");
        st = ipsec_gateway_inbound(hq, buf, sizeof buf, &off, &len, NOW_NS, &r);
        printf("\nIKE from branch 1's gateway: %s\n",
               st == IPSEC_OK && r.verdict == IPSEC_VERDICT_BYPASSED ? "bypassed (in the clear)"
                                                                     : explain(st));
        expect(st == IPSEC_OK && r.verdict == IPSEC_VERDICT_BYPASSED, "IKE is let through");
    }

    /* An attacker on branch 1's line. */
    printf("\nAttacker on branch1's leased line:\n");
    {
        uint8_t buf[BUF_SIZE];
        size_t off, len;
        ipsec_gateway_result r;

        expect(captured_len > 0, "an ESP packet was captured");
        off = HEADROOM;
        len = captured_len;
        memcpy(buf + off, captured, len);
        st = ipsec_gateway_inbound(hq, buf, sizeof buf, &off, &len, NOW_NS, &r);
        printf("  replays a captured RDP packet:      %s\n", explain(st));
        expect(st == IPSEC_ERR_REPLAY, "replay refused");

        off = HEADROOM;
        len = build_packet(buf + off, 6, ip4(10, 1, 0, 15), 49595, MAIL, 443, "quarterly figures");
        st = ipsec_sa_encrypt(branches[0].up, buf, sizeof buf, &off, &len, NOW_NS);
        expect(st == IPSEC_OK, "branch encrypts the packet to tamper with");
        buf[off + len - 24] ^= 0x01; /* one bit inside the encrypted payload */
        st = ipsec_gateway_inbound(hq, buf, sizeof buf, &off, &len, NOW_NS, &r);
        printf("  flips one bit of an Outlook packet: %s\n", explain(st));
        expect(st == IPSEC_ERR_AUTH_FAILED, "tampering detected");

        off = HEADROOM;
        len = captured_len;
        memcpy(buf + off, captured, len);
        put32(buf + off + 20, 0x0badf00d);
        st = ipsec_gateway_inbound(hq, buf, sizeof buf, &off, &len, NOW_NS, &r);
        printf("  sends ESP with an unknown SPI:      %s\n", explain(st));
        expect(st == IPSEC_ERR_UNKNOWN_SPI, "unknown SPI refused");
    }

    /* A burst of print jobs from branch 2; one buffer has no headroom left. */
    printf("\nBurst of %d print jobs from branch2 (one without headroom):\n", BURST);
    {
        static uint8_t bufs[BURST][BUF_SIZE];
        ipsec_packet pkts[BURST];
        ipsec_gateway_result r;
        size_t ok, delivered = 0;
        char payload[64];
        for (i = 0; i < BURST; i++) {
            size_t head = i == 3 ? 0 : HEADROOM;
            snprintf(payload, sizeof payload, "print job %u", (unsigned)i);
            pkts[i].buf = bufs[i];
            pkts[i].capacity = BUF_SIZE;
            pkts[i].offset = head;
            pkts[i].length = build_packet(bufs[i] + head, 6, ip4(10, 2, 0, 17),
                                          (uint16_t)(50000 + i), PRINT, 9100, payload);
            pkts[i].status = IPSEC_OK;
        }
        ok = ipsec_sa_encrypt_burst(branches[1].up, pkts, BURST, NOW_NS);
        printf("  encrypted %u of %d", (unsigned)ok, BURST);
        for (i = 0; i < BURST; i++) {
            if (pkts[i].status != IPSEC_OK) {
                printf("; packet %u: %s", (unsigned)i, ipsec_status_str(pkts[i].status));
                expect(i == 3 && pkts[i].status == IPSEC_ERR_NO_BUFFER_SPACE,
                       "only the packet without headroom fails, with NO_BUFFER_SPACE");
                continue;
            }
            st = ipsec_gateway_inbound(hq, pkts[i].buf, pkts[i].capacity, &pkts[i].offset,
                                       &pkts[i].length, NOW_NS, &r);
            delivered += st == IPSEC_OK;
        }
        printf("\n  delivered to the head office: %u\n", (unsigned)delivered);
        expect(ok == BURST - 1 && delivered == BURST - 1, "the other jobs get through");
    }

    /* Lifetime events, as a gateway's housekeeping loop polls them (the example SAs have
     * no lifetimes, so nothing is due an hour later). */
    {
        ipsec_gateway_event gev;
        ipsec_sa_event ev;
        const uint64_t later = NOW_NS + UINT64_C(3600) * UINT64_C(1000000000);
        while ((st = ipsec_gateway_poll_event(hq, later, &gev)) == IPSEC_OK &&
               gev.event.kind != IPSEC_EVENT_NONE) {
            printf("head office: SA %s needs %s\n", gev.sa,
                   gev.event.kind == IPSEC_EVENT_REKEY ? "a rekey" : "replacing (expired)");
            expect(0, "no lifetime events for SAs without lifetimes");
        }
        expect(st == IPSEC_OK, "gateway events polled");
        for (i = 0; i < 2; i++) {
            st = ipsec_sa_poll_event(branches[i].up, later, &ev);
            expect(st == IPSEC_OK && ev.kind == IPSEC_EVENT_NONE, "no rekey due at the branch");
        }
    }

    /* The SA monitor. */
    printf("\nSA monitor:\n  %-12s %-10s %-10s %-8s %7s %8s  drops\n", "GATEWAY", "SA", "SPI",
           "DIR", "PACKETS", "BYTES");
    n = ipsec_gateway_sa_count(hq);
    for (i = 0; i < n; i++) {
        ipsec_gateway_sa sa;
        if (ipsec_gateway_get_sa(hq, i, &sa) != IPSEC_OK) {
            continue;
        }
        print_stats("head-office", sa.name, &sa.info, &sa.stats);
        if (strcmp(sa.name, "b1-to-ho") == 0) {
            expect(sa.stats.replay == 1 && sa.stats.auth_failed == 1,
                   "b1-to-ho counted one replay and one forgery");
        }
    }
    for (i = 0; i < 2; i++) {
        ipsec_sa_info info;
        ipsec_sa_stats s;
        ipsec_sa *sas[2];
        const char *names[2];
        sas[0] = branches[i].up;
        sas[1] = branches[i].down;
        names[0] = branches[i].up_name;
        names[1] = branches[i].down_name;
        for (j = 0; j < 2; j++) {
            if (ipsec_sa_get_info(sas[j], &info) == IPSEC_OK &&
                ipsec_sa_get_stats(sas[j], &s) == IPSEC_OK) {
                print_stats(branches[i].label, names[j], &info, &s);
            }
        }
    }
    if (ipsec_gateway_get_stats(hq, &gw_stats) == IPSEC_OK) {
        printf("  head office, no SA: policy_discard=%llu unknown_spi=%llu\n",
               (unsigned long long)gw_stats.policy_discard,
               (unsigned long long)gw_stats.unknown_spi);
        expect(gw_stats.policy_discard == refused && gw_stats.unknown_spi == 1,
               "gateway counters: every refused flow and the spoofed SPI");
    }

out:
    for (i = 0; i < 2; i++) {
        ipsec_sa_free(branches[i].up);
        ipsec_sa_free(branches[i].down);
    }
    ipsec_gateway_free(hq);
    ipsec_spd_free(spd);
    free(text);
    if (failures != 0) {
        printf("\n%d expectation(s) failed\n", failures);
        return 1;
    }
    printf("\nAll expectations held.\n");
    return 0;
}
