/*
 * A live gateway driven through the C API as a key manager drives it: two gateways (a
 * head office "hq" and a branch "br") start from a policy file holding only a deny-all;
 * SAs are added and a policy installed before the deny-all at run time, and packets go
 * from one to the other. Then a make-before-break rekey (inbound first, then outbound):
 * a packet sent under the old SA is accepted until the old inbound SA is deleted and
 * refused as an unknown SPI after. Retired SAs disappear from the SA list when the
 * gateway deletes them (on a packet, or on poll_event). Every refusal has its status
 * (230..237, IPSEC_ERR_CONFIG) and the core's message, and changes nothing (SA count,
 * policies, traffic); NULL and non-UTF-8 arguments are refused. Last, RFC 4301 §4.1
 * lookup (ipsec_sa_config.lookup): multicast SAs sharing an SPI, each found by its group.
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

/*
 * Checks that a call returned `want`, and for an error that the last-error message is
 * exactly `exact` (when not NULL) or contains `word` (when not NULL).
 */
static void check_status(int line, const char *what, ipsec_status got, ipsec_status want,
                         const char *exact, const char *word)
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
    if ((exact != NULL && strcmp(msg, exact) != 0) || (word != NULL && strstr(msg, word) == NULL) ||
        msg[0] == '\0') {
        failed++;
        printf("FAIL line %d: %s: message \"%s\", want %s \"%s\"\n", line, what, msg,
               exact != NULL ? "exactly" : "one with", exact != NULL ? exact : word);
        return;
    }
    printf("ok   %-50s %s: %s\n", what, ipsec_status_str(got), msg);
}

#define OK(what, call) check_status(__LINE__, what, (call), IPSEC_OK, NULL, NULL)
#define REFUSED(what, call, want, exact) check_status(__LINE__, what, (call), (want), (exact), NULL)
#define REFUSED_WITH(what, call, want, word) check_status(__LINE__, what, (call), (want), NULL, (word))

static const uint64_t T0 = UINT64_C(1000000000);
static const uint64_t SECOND = UINT64_C(1000000000);

/* The policy file both gateways start from: only the final deny-all. */
static const char DENY_ALL[] = "[[policy]]\nname = \"deny\"\ndirection = \"both\"\naction = \"discard\"\n";

#define HQ_RDP                                                                             \
    "name = \"rdp\"\nlocal = \"10.0.0.0/24\"\nremote = \"10.1.0.0/24\"\nprotocol = \"tcp\"\n" \
    "action = \"protect\"\nsa = [\"hq-out\", \"hq-in\"]\n"
#define BR_RDP                                                                             \
    "name = \"rdp\"\nlocal = \"10.1.0.0/24\"\nremote = \"10.0.0.0/24\"\nprotocol = \"tcp\"\n" \
    "action = \"protect\"\nsa = [\"br-out\", \"br-in\"]\n"

#define HEAD 128
#define SIZE 512
#define PLEN 40

/* Key number n: 16 bytes of AES-128 key and 4 of salt, different for every n. */
static void make_key(uint8_t key[20], unsigned n)
{
    unsigned i;
    for (i = 0; i < 20; i++) {
        key[i] = (uint8_t)(n * 37u + i * 11u + 1u);
    }
}

/* An AES-128-GCM tunnel SA (keys are copied by the call that takes the config). */
static void make_config(ipsec_sa_config *c, uint8_t key[20], uint32_t spi, uint32_t direction,
                        unsigned key_number)
{
    ipsec_sa_config_init(c);
    make_key(key, key_number);
    c->spi = spi;
    c->direction = direction;
    c->mode = IPSEC_MODE_TUNNEL;
    c->cipher = IPSEC_CIPHER_AES_128_GCM;
    c->key = key;
    c->key_len = 20;
    if (direction == IPSEC_DIRECTION_OUTBOUND) {
        c->tunnel_src = "192.0.2.1";
        c->tunnel_dst = "198.51.100.2";
    }
}

static ipsec_status add_sa(ipsec_gateway *gw, const char *name, uint32_t spi, uint32_t direction,
                           unsigned key_number)
{
    ipsec_sa_config c;
    uint8_t key[20];
    make_config(&c, key, spi, direction, key_number);
    return ipsec_gateway_add_sa(gw, name, &c, T0);
}

static ipsec_status rekey_sa(ipsec_gateway *gw, const char *replaces, const char *name, uint32_t spi,
                             uint32_t direction, unsigned key_number)
{
    ipsec_sa_config c;
    uint8_t key[20];
    make_config(&c, key, spi, direction, key_number);
    return ipsec_gateway_rekey_sa(gw, replaces, name, &c, T0);
}

/* A TCP packet 10.0.0.5:3389 -> 10.1.0.<host>:50000 carrying `tag`, at buf + HEAD. */
static void put_packet(uint8_t *buf, uint8_t host, uint32_t tag)
{
    uint8_t *p = buf + HEAD;
    memset(buf, 0, SIZE);
    p[0] = 0x45;
    p[3] = PLEN;
    p[8] = 64;
    p[9] = 6;
    p[12] = 10; p[15] = 5;
    p[16] = 10; p[17] = 1; p[19] = host;
    p[20] = 3389 >> 8; p[21] = 3389 & 0xff;
    p[22] = 50000 >> 8; p[23] = 50000 & 0xff;
    p[24] = (uint8_t)(tag >> 24); p[25] = (uint8_t)(tag >> 16);
    p[26] = (uint8_t)(tag >> 8); p[27] = (uint8_t)tag;
    p[32] = 0x50;
}

/* A packet on the wire between the gateways. */
typedef struct {
    uint8_t buf[SIZE];
    size_t off, len;
} wire;

/* hq encrypts the packet with `tag` (to 10.1.0.<host>) into `w`. */
static ipsec_status send_to(ipsec_gateway *hq, uint8_t host, uint32_t tag, wire *w,
                            ipsec_gateway_result *r)
{
    put_packet(w->buf, host, tag);
    w->off = HEAD;
    w->len = PLEN;
    return ipsec_gateway_outbound(hq, w->buf, SIZE, &w->off, &w->len, T0, r);
}

static ipsec_status send_tag(ipsec_gateway *hq, uint32_t tag, wire *w, ipsec_gateway_result *r)
{
    return send_to(hq, 9, tag, w, r);
}

/* br decrypts a copy of `w` at `now`; 1 in *same when the inner packet is packet `tag`. */
static ipsec_status receive(ipsec_gateway *br, const wire *w, uint64_t now, uint32_t tag,
                            ipsec_gateway_result *r, int *same)
{
    uint8_t copy[SIZE], want[SIZE];
    size_t off = w->off, len = w->len;
    ipsec_status st;
    memcpy(copy, w->buf, SIZE);
    st = ipsec_gateway_inbound(br, copy, SIZE, &off, &len, now, r);
    put_packet(want, 9, tag);
    *same = st == IPSEC_OK && len == PLEN && memcmp(copy + off, want + HEAD, PLEN) == 0;
    return st;
}

static int is(const char *s, const char *want)
{
    return s != NULL && strcmp(s, want) == 0;
}

/* Whether the gateway lists an SA called `name` (ipsec_gateway_get_sa over the count). */
static int lists(const ipsec_gateway *gw, const char *name)
{
    size_t i, n = ipsec_gateway_sa_count(gw);
    ipsec_gateway_sa e;
    for (i = 0; i < n; i++) {
        if (ipsec_gateway_get_sa(gw, i, &e) == IPSEC_OK && is(e.name, name)) {
            return 1;
        }
    }
    return 0;
}

/* hq -> br: a packet with `tag` goes through under the policy "rdp". */
static int flows(ipsec_gateway *hq, ipsec_gateway *br, uint32_t tag)
{
    wire w;
    ipsec_gateway_result r;
    int same = 0;
    return send_tag(hq, tag, &w, &r) == IPSEC_OK && receive(br, &w, T0, tag, &r, &same) == IPSEC_OK &&
           same && r.verdict == IPSEC_VERDICT_DECRYPTED && is(r.policy, "rdp");
}

static ipsec_gateway *empty_gateway(void)
{
    ipsec_gateway *gw = NULL;
    if (ipsec_gateway_new(DENY_ALL, sizeof DENY_ALL - 1, T0, &gw) != IPSEC_OK) {
        printf("FAIL: cannot create a gateway from the deny-all policy file: %s\n", last_error());
        exit(1);
    }
    return gw;
}

static ipsec_gateway *hq, *br;
static uint32_t tag = 100;

/* A refused call changed nothing: the SA counts and the traffic are as before. */
#define UNCHANGED(what, hq_sas)                                                             \
    TRUE(what ": nothing changed", ipsec_gateway_sa_count(hq) == (hq_sas) &&                \
                                       ipsec_gateway_sa_count(br) == 2 && flows(hq, br, ++tag))

static void build(void)
{
    wire w;
    ipsec_gateway_result r;
    int same = 0;

    printf("\n-- empty gateways, SAs and a policy added at run time\n");
    hq = empty_gateway();
    br = empty_gateway();
    TRUE("a deny-all policy file has no SAs", ipsec_gateway_sa_count(hq) == 0);
    TRUE("... and discards", send_tag(hq, 1, &w, &r) == IPSEC_ERR_POLICY_DISCARD);
    REFUSED("a policy before its SAs", ipsec_gateway_install_policy(hq, HQ_RDP, "deny"),
            IPSEC_ERR_MISSING_SA,
            "policy \"rdp\" names sa \"hq-out\", which is not installed (or only SAs being retired serve it)");
    OK("add hq-out", add_sa(hq, "hq-out", 0x1000, IPSEC_DIRECTION_OUTBOUND, 1));
    OK("add hq-in", add_sa(hq, "hq-in", 0x2000, IPSEC_DIRECTION_INBOUND, 2));
    OK("add br-out", add_sa(br, "br-out", 0x2000, IPSEC_DIRECTION_OUTBOUND, 2));
    OK("add br-in", add_sa(br, "br-in", 0x1000, IPSEC_DIRECTION_INBOUND, 1));
    TRUE("sa_count counts added SAs", ipsec_gateway_sa_count(hq) == 2 && ipsec_gateway_sa_count(br) == 2);
    TRUE("get_sa lists them by name", lists(hq, "hq-out") && lists(hq, "hq-in") && lists(br, "br-in"));
    OK("install rdp before the deny-all", ipsec_gateway_install_policy(hq, HQ_RDP, "deny"));
    OK("... on both", ipsec_gateway_install_policy(br, BR_RDP, "deny"));

    TRUE("hq protects with hq-out under rdp",
         send_tag(hq, 1, &w, &r) == IPSEC_OK && r.verdict == IPSEC_VERDICT_PROTECTED &&
             is(r.sa, "hq-out") && is(r.policy, "rdp") && w.buf[w.off + 9] == 50);
    TRUE("br decrypts it with br-in under rdp",
         receive(br, &w, T0, 1, &r, &same) == IPSEC_OK && same &&
             r.verdict == IPSEC_VERDICT_DECRYPTED && is(r.sa, "br-in") && is(r.policy, "rdp"));
}

static void refusals(void)
{
    ipsec_sa_config c;
    ipsec_sa_stats st;
    ipsec_sa_stats pattern;
    uint8_t key[20];
    char hex[41];
    const char *msg;
    unsigned i;
    static const struct {
        ipsec_status status;
        const char *name;
    } names[] = {
        {IPSEC_ERR_DUPLICATE_NAME, "IPSEC_ERR_DUPLICATE_NAME"},
        {IPSEC_ERR_DUPLICATE_SPI, "IPSEC_ERR_DUPLICATE_SPI"},
        {IPSEC_ERR_UNKNOWN_SA, "IPSEC_ERR_UNKNOWN_SA"},
        {IPSEC_ERR_SA_IN_USE, "IPSEC_ERR_SA_IN_USE"},
        {IPSEC_ERR_MISSING_SA, "IPSEC_ERR_MISSING_SA"},
        {IPSEC_ERR_DIRECTION_MISMATCH, "IPSEC_ERR_DIRECTION_MISMATCH"},
        {IPSEC_ERR_DUPLICATE_POLICY, "IPSEC_ERR_DUPLICATE_POLICY"},
        {IPSEC_ERR_UNKNOWN_POLICY, "IPSEC_ERR_UNKNOWN_POLICY"},
    };

    printf("\n-- every refusal: its status, the core's message, nothing changed\n");
    for (i = 0; i < sizeof names / sizeof names[0]; i++) {
        TRUE(names[i].name, (unsigned)names[i].status == 230 + i &&
                                strncmp(ipsec_status_str(names[i].status), names[i].name,
                                        strlen(names[i].name)) == 0 &&
                                ipsec_status_str(names[i].status)[strlen(names[i].name)] == ':');
    }

    REFUSED("duplicate name", add_sa(hq, "hq-in", 0x3000, IPSEC_DIRECTION_OUTBOUND, 30),
            IPSEC_ERR_DUPLICATE_NAME, "the name \"hq-in\" is taken by an installed SA, or by policies for the SA that succeeded one (SA names are unique)");
    UNCHANGED("duplicate name", 2);
    REFUSED("duplicate SPI", add_sa(hq, "other-in", 0x2000, IPSEC_DIRECTION_INBOUND, 31),
            IPSEC_ERR_DUPLICATE_SPI,
            "inbound sa \"hq-in\" already has SPI 0x00002000: inbound SAs are found by their SPI, "
            "so it must be unique among them (unless their lookups tell them apart by destination "
            "address, RFC 4301 \xc2\xa7" "4.1)");
    UNCHANGED("duplicate SPI", 2);

    memset(&pattern, 0xab, sizeof pattern);
    st = pattern;
    REFUSED("delete an unknown SA", ipsec_gateway_delete_sa(hq, "nope", &st), IPSEC_ERR_UNKNOWN_SA,
            "no SA called \"nope\" is installed");
    TRUE("... final_stats not written", memcmp(&st, &pattern, sizeof st) == 0);
    REFUSED("rekey an unknown SA", rekey_sa(hq, "nope", "x", 0x3001, IPSEC_DIRECTION_OUTBOUND, 33),
            IPSEC_ERR_UNKNOWN_SA, "no SA called \"nope\" is installed");
    REFUSED("retire an unknown SA", ipsec_gateway_retire_sa(hq, "nope", T0), IPSEC_ERR_UNKNOWN_SA,
            "no SA called \"nope\" is installed");
    UNCHANGED("unknown SA", 2);

    REFUSED("delete an SA a policy sends through", ipsec_gateway_delete_sa(hq, "hq-out", &st),
            IPSEC_ERR_SA_IN_USE,
            "sa \"hq-out\" is in use: policy \"rdp\" sends or receives through it (remove or "
            "replace the policy, or rekey the SA, first)");
    TRUE("... final_stats not written", memcmp(&st, &pattern, sizeof st) == 0);
    REFUSED_WITH("retire the inbound SA a policy needs", ipsec_gateway_retire_sa(hq, "hq-in", T0),
                 IPSEC_ERR_SA_IN_USE, "sa \"hq-in\" is in use");
    UNCHANGED("SA in use", 2);

    REFUSED("a policy naming an SA not installed",
            ipsec_gateway_install_policy(hq,
                                         "name = \"mail\"\nremote = \"10.1.0.0/24\"\naction = "
                                         "\"protect\"\nsa = [\"hq-out\", \"gone\"]\n",
                                         "deny"),
            IPSEC_ERR_MISSING_SA,
            "policy \"mail\" names sa \"gone\", which is not installed (or only SAs being retired serve it)");
    UNCHANGED("missing SA", 2);

    REFUSED("rekey an outbound SA with an inbound one",
            rekey_sa(hq, "hq-out", "hq-in-2", 0x2001, IPSEC_DIRECTION_INBOUND, 32),
            IPSEC_ERR_DIRECTION_MISMATCH,
            "sa \"hq-in-2\" cannot replace sa \"hq-out\": a successor must have the direction of "
            "the SA it replaces");
    UNCHANGED("direction mismatch", 2);

    REFUSED("a policy name that is installed", ipsec_gateway_install_policy(hq, HQ_RDP, NULL),
            IPSEC_ERR_DUPLICATE_POLICY, "a policy called \"rdp\" is installed (replace_policy changes it)");
    UNCHANGED("duplicate policy", 2);

    REFUSED("remove an unknown policy", ipsec_gateway_remove_policy(hq, "nope"),
            IPSEC_ERR_UNKNOWN_POLICY, "no policy called \"nope\" is installed");
    REFUSED("install before an unknown policy",
            ipsec_gateway_install_policy(hq, "name = \"web\"\naction = \"bypass\"\n", "nope"),
            IPSEC_ERR_UNKNOWN_POLICY, "no policy called \"nope\" is installed");
    REFUSED("replace a policy that is not installed",
            ipsec_gateway_replace_policy(hq, "name = \"web\"\naction = \"bypass\"\n"),
            IPSEC_ERR_UNKNOWN_POLICY, "no policy called \"web\" is installed");
    UNCHANGED("unknown policy", 2);

    make_config(&c, key, 0x4000, IPSEC_DIRECTION_INBOUND, 40);
    c.key_len = 5;
    REFUSED_WITH("a bad SA configuration (5-byte key)", ipsec_gateway_add_sa(hq, "short", &c, T0),
                 IPSEC_ERR_CONFIG, "sa \"short\": key");
    make_config(&c, key, 0x4000, IPSEC_DIRECTION_INBOUND, 41);
    c.mode = 77;
    REFUSED_WITH("an SA configuration with an enum out of range",
                 ipsec_gateway_add_sa(hq, "short", &c, T0), IPSEC_ERR_INVALID_ARGUMENT,
                 "sa \"short\": mode 77");
    make_config(&c, key, 0x4000, IPSEC_DIRECTION_OUTBOUND, 41);
    c.tunnel_dst = "198.51.100.300";
    REFUSED_WITH("an SA configuration with a bad address, named by the SA",
                 ipsec_gateway_rekey_sa(hq, "hq-out", "bad-peer", &c, T0), IPSEC_ERR_CONFIG,
                 "sa \"bad-peer\": tunnel_dst");
    REFUSED_WITH("an empty SA name", add_sa(hq, "", 0x4000, IPSEC_DIRECTION_INBOUND, 42),
                 IPSEC_ERR_CONFIG, "name");
    REFUSED_WITH("a policy that is not valid",
                 ipsec_gateway_install_policy(hq, "name = \"x\"\naction = \"encrypt\"\n", "deny"),
                 IPSEC_ERR_CONFIG, "policy \"x\": action");
    REFUSED_WITH("a policy naming SAs in the wrong direction",
                 ipsec_gateway_replace_policy(
                     hq, "name = \"rdp\"\nremote = \"10.1.0.0/24\"\naction = \"protect\"\n"
                         "sa = [\"hq-in\", \"hq-out\"]\n"),
                 IPSEC_ERR_CONFIG, "policy \"rdp\": sa");
    UNCHANGED("bad configuration", 2);

    /* Key 1 is hq-out's: an SA with the same key is refused, and the message names the
     * SA that has it, never the key. */
    REFUSED_WITH("a key an installed SA uses", add_sa(hq, "copy", 0x5000, IPSEC_DIRECTION_INBOUND, 1),
                 IPSEC_ERR_CONFIG, "sa \"hq-out\"");
    msg = last_error();
    make_key(key, 1);
    for (i = 0; i < 20; i++) {
        snprintf(hex + 2 * i, 3, "%02x", key[i]);
    }
    TRUE("... names the new SA, and holds no key bytes in hex",
         strstr(msg, "sa \"copy\"") != NULL && strstr(msg, hex) == NULL);
    hex[8] = '\0';
    TRUE("... not even the key's first four", strstr(msg, hex) == NULL);
    UNCHANGED("key reuse", 2);
    REFUSED("... and the policy that was refused is not there",
            ipsec_gateway_remove_policy(hq, "mail"), IPSEC_ERR_UNKNOWN_POLICY,
            "no policy called \"mail\" is installed");
    TRUE("the refused SAs are not there", !lists(hq, "copy") && !lists(hq, "other-in") &&
                                              !lists(hq, "short") && !lists(hq, "x"));
}

static void null_arguments(void)
{
    ipsec_sa_config c;
    uint8_t key[20];
    const char bad[] = {'b', (char)0xff, 'd', 0};

    printf("\n-- NULL and non-UTF-8 arguments\n");
    make_config(&c, key, 0x6000, IPSEC_DIRECTION_INBOUND, 60);
    REFUSED_WITH("add_sa: NULL gateway", ipsec_gateway_add_sa(NULL, "x", &c, T0),
                 IPSEC_ERR_INVALID_ARGUMENT, "`gateway`");
    REFUSED_WITH("add_sa: NULL name", ipsec_gateway_add_sa(hq, NULL, &c, T0),
                 IPSEC_ERR_INVALID_ARGUMENT, "`name`");
    REFUSED_WITH("add_sa: NULL config", ipsec_gateway_add_sa(hq, "x", NULL, T0),
                 IPSEC_ERR_INVALID_ARGUMENT, "`config`");
    REFUSED_WITH("add_sa: a name that is not UTF-8", ipsec_gateway_add_sa(hq, bad, &c, T0),
                 IPSEC_ERR_INVALID_ARGUMENT, "UTF-8");
    REFUSED_WITH("rekey_sa: NULL gateway", ipsec_gateway_rekey_sa(NULL, "hq-in", "x", &c, T0),
                 IPSEC_ERR_INVALID_ARGUMENT, "`gateway`");
    REFUSED_WITH("rekey_sa: NULL replaces", ipsec_gateway_rekey_sa(hq, NULL, "x", &c, T0),
                 IPSEC_ERR_INVALID_ARGUMENT, "`replaces`");
    REFUSED_WITH("rekey_sa: NULL name", ipsec_gateway_rekey_sa(hq, "hq-in", NULL, &c, T0),
                 IPSEC_ERR_INVALID_ARGUMENT, "`name`");
    REFUSED_WITH("rekey_sa: NULL config", ipsec_gateway_rekey_sa(hq, "hq-in", "x", NULL, T0),
                 IPSEC_ERR_INVALID_ARGUMENT, "`config`");
    REFUSED_WITH("delete_sa: NULL gateway", ipsec_gateway_delete_sa(NULL, "hq-in", NULL),
                 IPSEC_ERR_INVALID_ARGUMENT, "`gateway`");
    REFUSED_WITH("delete_sa: NULL name", ipsec_gateway_delete_sa(hq, NULL, NULL),
                 IPSEC_ERR_INVALID_ARGUMENT, "`name`");
    REFUSED_WITH("delete_sa: a name that is not UTF-8", ipsec_gateway_delete_sa(hq, bad, NULL),
                 IPSEC_ERR_INVALID_ARGUMENT, "UTF-8");
    REFUSED_WITH("retire_sa: NULL gateway", ipsec_gateway_retire_sa(NULL, "hq-in", T0),
                 IPSEC_ERR_INVALID_ARGUMENT, "`gateway`");
    REFUSED_WITH("retire_sa: NULL name", ipsec_gateway_retire_sa(hq, NULL, T0),
                 IPSEC_ERR_INVALID_ARGUMENT, "`name`");
    REFUSED_WITH("install_policy: NULL gateway", ipsec_gateway_install_policy(NULL, HQ_RDP, NULL),
                 IPSEC_ERR_INVALID_ARGUMENT, "`gateway`");
    REFUSED_WITH("install_policy: NULL text", ipsec_gateway_install_policy(hq, NULL, "deny"),
                 IPSEC_ERR_INVALID_ARGUMENT, "`policy_toml`");
    REFUSED_WITH("install_policy: text that is not UTF-8", ipsec_gateway_install_policy(hq, bad, NULL),
                 IPSEC_ERR_INVALID_ARGUMENT, "UTF-8");
    REFUSED_WITH("install_policy: before that is not UTF-8",
                 ipsec_gateway_install_policy(hq, "name = \"web\"\naction = \"bypass\"\n", bad),
                 IPSEC_ERR_INVALID_ARGUMENT, "`before`");
    REFUSED_WITH("replace_policy: NULL gateway", ipsec_gateway_replace_policy(NULL, HQ_RDP),
                 IPSEC_ERR_INVALID_ARGUMENT, "`gateway`");
    REFUSED_WITH("replace_policy: NULL text", ipsec_gateway_replace_policy(hq, NULL),
                 IPSEC_ERR_INVALID_ARGUMENT, "`policy_toml`");
    REFUSED_WITH("remove_policy: NULL gateway", ipsec_gateway_remove_policy(NULL, "rdp"),
                 IPSEC_ERR_INVALID_ARGUMENT, "`gateway`");
    REFUSED_WITH("remove_policy: NULL name", ipsec_gateway_remove_policy(hq, NULL),
                 IPSEC_ERR_INVALID_ARGUMENT, "`name`");
    UNCHANGED("NULL arguments", 2);
}

/* Make-before-break: br rekeys its inbound SA first, then hq its outbound SA. */
static void rekey(void)
{
    wire late1, late2, fresh, w;
    ipsec_gateway_result r;
    ipsec_sa_stats st, gw_stats;
    uint64_t unknown_before;
    uint32_t spi = 0;
    const char *old_name;
    int same = 0;

    printf("\n-- make-before-break rekey: inbound first, then outbound\n");
    /* Sent under the old SA, still on their way during the rekey. */
    OK("late packet 1 sent under hq-out", send_tag(hq, 1001, &late1, &r));
    OK("late packet 2 sent under hq-out", send_tag(hq, 1002, &late2, &r));

    OK("br allocates the new SPI", ipsec_gateway_allocate_spi(br, T0, &spi));
    OK("br: br-in-2 next to br-in", rekey_sa(br, "br-in", "br-in-2", spi, IPSEC_DIRECTION_INBOUND, 50));
    TRUE("... both listed", ipsec_gateway_sa_count(br) == 3 && lists(br, "br-in") && lists(br, "br-in-2"));
    TRUE("traffic under the old SAs still flows", flows(hq, br, ++tag));
    OK("hq: hq-out-2 replaces hq-out", rekey_sa(hq, "hq-out", "hq-out-2", spi, IPSEC_DIRECTION_OUTBOUND, 50));
    TRUE("... both listed", ipsec_gateway_sa_count(hq) == 3 && lists(hq, "hq-out-2"));
    TRUE("the next packet goes out under hq-out-2, with the new SPI",
         send_tag(hq, 1003, &fresh, &r) == IPSEC_OK && is(r.sa, "hq-out-2") && is(r.policy, "rdp") &&
             fresh.buf[fresh.off + 20] == (uint8_t)(spi >> 24) &&
             fresh.buf[fresh.off + 23] == (uint8_t)spi);

    memset(&st, 0, sizeof st);
    OK("hq deletes hq-out", ipsec_gateway_delete_sa(hq, "hq-out", &st));
    /* 1 (build) + 1 per flows() so far (tag - 100) + the 2 late packets. */
    TRUE("... its final counters", st.packets == (uint64_t)(tag - 100) + 3 && st.auth_failed == 0);
    TRUE("... gone from the list", ipsec_gateway_sa_count(hq) == 2 && !lists(hq, "hq-out") &&
                                        lists(hq, "hq-out-2") && lists(hq, "hq-in"));
    TRUE("hq still sends under hq-out-2", send_tag(hq, 1004, &w, &r) == IPSEC_OK && is(r.sa, "hq-out-2"));

    TRUE("br decrypts the new packet with br-in-2",
         receive(br, &fresh, T0, 1003, &r, &same) == IPSEC_OK && same && is(r.sa, "br-in-2") &&
             is(r.policy, "rdp"));
    TRUE("br still accepts late packet 1 with the old br-in",
         receive(br, &late1, T0, 1001, &r, &same) == IPSEC_OK && same && is(r.sa, "br-in"));
    old_name = r.sa;

    memset(&st, 0, sizeof st);
    OK("br deletes the old br-in", ipsec_gateway_delete_sa(br, "br-in", &st));
    /* 1 (build) + 1 per flows() so far + late packet 1. */
    TRUE("... its final counters count late packet 1", st.packets == (uint64_t)(tag - 100) + 2);
    TRUE("... the name string handed out before is still valid", is(old_name, "br-in"));
    TRUE("... gone from the list", ipsec_gateway_sa_count(br) == 2 && !lists(br, "br-in"));
    OK("br's own counters", ipsec_gateway_get_stats(br, &gw_stats));
    unknown_before = gw_stats.unknown_spi;
    REFUSED_WITH("late packet 2 after the delete: unknown SPI",
                 receive(br, &late2, T0, 1002, &r, &same), IPSEC_ERR_UNKNOWN_SPI, "SPI");
    OK("br's own counters", ipsec_gateway_get_stats(br, &gw_stats));
    TRUE("... counted as unknown_spi", gw_stats.unknown_spi == unknown_before + 1);
    REFUSED_WITH("deleting the new inbound SA under the policy", ipsec_gateway_delete_sa(br, "br-in-2", NULL),
                 IPSEC_ERR_SA_IN_USE, "\"rdp\"");
    OK("the old SPI is free again", add_sa(br, "spare", 0x1000, IPSEC_DIRECTION_INBOUND, 70));
    OK("... and the new SA goes", ipsec_gateway_delete_sa(br, "spare", NULL));
    TRUE("traffic flows under the new SAs", flows(hq, br, ++tag));
}

/* One more rekey round where the old inbound SA is retired, not deleted: gone from the
 * list when the gateway deletes it, on poll_event or on its next packet. */
static void retire(void)
{
    wire late3, late4;
    ipsec_gateway_result r;
    ipsec_gateway_event ev;
    int same = 0;

    printf("\n-- retired SAs: deleted by the gateway when their time comes\n");
    OK("late packet 3 under hq-out-2", send_tag(hq, 1005, &late3, &r));
    OK("br: br-in-3 next to br-in-2", rekey_sa(br, "br-in-2", "br-in-3", 0x7003, IPSEC_DIRECTION_INBOUND, 80));
    OK("hq: hq-out-3", rekey_sa(hq, "hq-out-2", "hq-out-3", 0x7003, IPSEC_DIRECTION_OUTBOUND, 80));
    OK("hq deletes hq-out-2", ipsec_gateway_delete_sa(hq, "hq-out-2", NULL));
    OK("br retires br-in-2 in 5 s", ipsec_gateway_retire_sa(br, "br-in-2", T0 + 5 * SECOND));
    TRUE("... still listed", ipsec_gateway_sa_count(br) == 3 && lists(br, "br-in-2"));
    TRUE("br-in-2 accepts late packet 3 before its time",
         receive(br, &late3, T0 + 4 * SECOND, 1005, &r, &same) == IPSEC_OK && same && is(r.sa, "br-in-2"));
    TRUE("poll_event before its time: nothing, still listed",
         ipsec_gateway_poll_event(br, T0 + 4 * SECOND, &ev) == IPSEC_OK && ev.sa == NULL &&
             ev.event.kind == IPSEC_EVENT_NONE && ipsec_gateway_sa_count(br) == 3);
    TRUE("poll_event at its time deletes it",
         ipsec_gateway_poll_event(br, T0 + 5 * SECOND, &ev) == IPSEC_OK && ev.sa == NULL &&
             ipsec_gateway_sa_count(br) == 2 && !lists(br, "br-in-2") && lists(br, "br-in-3"));
    REFUSED("... and it is unknown to the control calls", ipsec_gateway_delete_sa(br, "br-in-2", NULL),
            IPSEC_ERR_UNKNOWN_SA, "no SA called \"br-in-2\" is installed");

    OK("late packet 4 under hq-out-3", send_tag(hq, 1006, &late4, &r));
    OK("br: br-in-4 next to br-in-3", rekey_sa(br, "br-in-3", "br-in-4", 0x7004, IPSEC_DIRECTION_INBOUND, 90));
    OK("hq: hq-out-4", rekey_sa(hq, "hq-out-3", "hq-out-4", 0x7004, IPSEC_DIRECTION_OUTBOUND, 90));
    OK("hq deletes hq-out-3", ipsec_gateway_delete_sa(hq, "hq-out-3", NULL));
    OK("br retires br-in-3 in 10 s", ipsec_gateway_retire_sa(br, "br-in-3", T0 + 20 * SECOND));
    OK("... no, in 10 s (calling again moves the time)", ipsec_gateway_retire_sa(br, "br-in-3", T0 + 10 * SECOND));
    REFUSED_WITH("late packet 4 at that time: unknown SPI",
                 receive(br, &late4, T0 + 10 * SECOND, 1006, &r, &same), IPSEC_ERR_UNKNOWN_SPI, "SPI");
    TRUE("... and br-in-3 is gone from the list",
         ipsec_gateway_sa_count(br) == 2 && !lists(br, "br-in-3") && lists(br, "br-in-4"));
    TRUE("traffic flows under the newest SAs", flows(hq, br, ++tag));
    TRUE("... whose names the results give", lists(hq, "hq-out-4") && ipsec_gateway_sa_count(hq) == 2);
}

/*
 * Policies parsed off the gateway (ipsec_policy_parse, as a key manager does on its own
 * thread) and installed or replaced by ipsec_gateway_install_parsed_policy and
 * _replace_parsed_policy: the same checks and statuses as the text calls; the policy is
 * consumed whatever the call returns (valgrind finds a leak or a double free).
 */
static void parsed_policies(void)
{
    wire w;
    ipsec_gateway_result r;
    ipsec_policy *p = NULL, *q = NULL;
    const char *rdp_before;

    printf("\n-- policies parsed beforehand, installed and replaced\n");
    TRUE("rdp decides a packet", send_tag(hq, 1501, &w, &r) == IPSEC_OK && is(r.policy, "rdp"));
    rdp_before = r.policy;
    OK("parse rdp narrowed to 10.1.0.0/25",
       ipsec_policy_parse("name = \"rdp\"\nlocal = \"10.0.0.0/24\"\nremote = \"10.1.0.0/25\"\n"
                          "protocol = \"tcp\"\naction = \"protect\"\nsa = [\"hq-out-4\", \"hq-in\"]\n",
                          &p));
    TRUE("... a policy", p != NULL);
    OK("replace_parsed_policy", ipsec_gateway_replace_parsed_policy(hq, p));
    TRUE("10.1.0.200 now falls to the deny-all", send_to(hq, 200, 1502, &w, &r) == IPSEC_ERR_POLICY_DISCARD);
    TRUE("10.1.0.9 still goes through rdp, the same name string",
         send_tag(hq, 1503, &w, &r) == IPSEC_OK && r.policy == rdp_before);
    p = NULL;
    OK("parse a bypass for 10.1.0.200", ipsec_policy_parse("name = \"late\"\nremote = \"10.1.0.200\"\n"
                                                           "action = \"bypass\"\n",
                                                           &p));
    OK("install_parsed_policy before rdp", ipsec_gateway_install_parsed_policy(hq, p, "rdp"));
    TRUE("... it decides 10.1.0.200",
         send_to(hq, 200, 1504, &w, &r) == IPSEC_OK && r.verdict == IPSEC_VERDICT_BYPASSED && is(r.policy, "late"));
    OK("... removed by name", ipsec_gateway_remove_policy(hq, "late"));

    q = (ipsec_policy *)&w; /* must stay as it is */
    REFUSED_WITH("parse a policy that is not valid",
                 ipsec_policy_parse("name = \"x\"\naction = \"encrypt\"\n", &q), IPSEC_ERR_CONFIG,
                 "policy \"x\": action");
    TRUE("... out not written", q == (ipsec_policy *)&w);
    REFUSED_WITH("parse a protect policy without SAs",
                 ipsec_policy_parse("name = \"x\"\naction = \"protect\"\n", &q), IPSEC_ERR_CONFIG,
                 "policy \"x\": sa");
    p = NULL;
    OK("parse a policy naming an SA not installed",
       ipsec_policy_parse("name = \"mail\"\nremote = \"10.1.0.0/24\"\naction = \"protect\"\n"
                          "sa = [\"hq-out-4\", \"gone\"]\n",
                          &p));
    REFUSED("... refused by the gateway, and consumed", ipsec_gateway_install_parsed_policy(hq, p, "deny"),
            IPSEC_ERR_MISSING_SA,
            "policy \"mail\" names sa \"gone\", which is not installed (or only SAs being retired serve it)");
    p = NULL;
    OK("parse rdp again", ipsec_policy_parse(HQ_RDP, &p));
    REFUSED("install: its name is taken", ipsec_gateway_install_parsed_policy(hq, p, NULL),
            IPSEC_ERR_DUPLICATE_POLICY, "a policy called \"rdp\" is installed (replace_policy changes it)");
    p = NULL;
    OK("parse a policy naming the SAs the wrong way round",
       ipsec_policy_parse("name = \"rdp\"\nremote = \"10.1.0.0/24\"\naction = \"protect\"\n"
                          "sa = [\"hq-in\", \"hq-out-4\"]\n",
                          &p));
    REFUSED_WITH("replace: refused as the text call is", ipsec_gateway_replace_parsed_policy(hq, p),
                 IPSEC_ERR_CONFIG, "policy \"rdp\": sa");
    p = NULL;
    OK("parse a policy for the unknown-before case", ipsec_policy_parse("name = \"web\"\naction = \"bypass\"\n", &p));
    REFUSED("install before an unknown policy", ipsec_gateway_install_parsed_policy(hq, p, "nope"),
            IPSEC_ERR_UNKNOWN_POLICY, "no policy called \"nope\" is installed");
    p = NULL;
    OK("parse web again", ipsec_policy_parse("name = \"web\"\naction = \"bypass\"\n", &p));
    REFUSED_WITH("install_parsed_policy: NULL gateway (the policy is still consumed)",
                 ipsec_gateway_install_parsed_policy(NULL, p, NULL), IPSEC_ERR_INVALID_ARGUMENT, "`gateway`");
    REFUSED_WITH("install_parsed_policy: NULL policy", ipsec_gateway_install_parsed_policy(hq, NULL, NULL),
                 IPSEC_ERR_INVALID_ARGUMENT, "`policy`");
    REFUSED_WITH("replace_parsed_policy: NULL policy", ipsec_gateway_replace_parsed_policy(hq, NULL),
                 IPSEC_ERR_INVALID_ARGUMENT, "`policy`");
    REFUSED_WITH("parse: NULL text", ipsec_policy_parse(NULL, &p), IPSEC_ERR_INVALID_ARGUMENT, "`policy_toml`");
    REFUSED_WITH("parse: NULL out", ipsec_policy_parse(HQ_RDP, NULL), IPSEC_ERR_INVALID_ARGUMENT, "`out`");
    p = NULL;
    OK("a policy parsed and not installed", ipsec_policy_parse("name = \"web\"\naction = \"bypass\"\n", &p));
    ipsec_policy_free(p); /* freed by the caller */
    ipsec_policy_free(NULL);
    p = NULL;
    OK("rdp widened back to 10.1.0.0/24 (parsed)",
       ipsec_policy_parse("name = \"rdp\"\nlocal = \"10.0.0.0/24\"\nremote = \"10.1.0.0/24\"\n"
                          "protocol = \"tcp\"\naction = \"protect\"\nsa = [\"hq-out-4\", \"hq-in\"]\n",
                          &p));
    OK("... replaced", ipsec_gateway_replace_parsed_policy(hq, p));
    UNCHANGED("after the refusals", 2);
    TRUE("10.1.0.200 goes through rdp again", send_to(hq, 200, 1505, &w, &r) == IPSEC_OK && is(r.policy, "rdp"));
}

/* The entry of the SA `name` in `gw`; 1 when found. */
static int find_sa(const ipsec_gateway *gw, const char *name, ipsec_gateway_sa *out)
{
    size_t i, n = ipsec_gateway_sa_count(gw);
    for (i = 0; i < n; i++) {
        if (ipsec_gateway_get_sa(gw, i, out) == IPSEC_OK && is(out->name, name)) {
            return 1;
        }
    }
    return 0;
}

/*
 * ipsec_gateway_update_sa (NAT-T / MOBIKE: the same SA at new endpoints) and the use
 * time of ipsec_sa_stats.last_used_ns (query_sa): hq's outbound SA moves to another
 * outer destination with UDP encapsulation; its next packet carries the new header, the
 * branch still accepts it (same keys, the next sequence number), and the counters and
 * use time carried over. Refusals change nothing.
 */
static void moves(void)
{
    wire w;
    ipsec_gateway_result r;
    ipsec_gateway_sa e;
    uint64_t packets, seq;

    printf("\n-- update_sa: an SA moved to new endpoints, and its use time\n");
    TRUE("hq-out-4 is installed", find_sa(hq, "hq-out-4", &e));
    OK("a packet through it", send_tag(hq, 1601, &w, &r));
    TRUE("... its use time is the time of that packet (T0)",
         find_sa(hq, "hq-out-4", &e) && e.stats.packets > 0 && e.stats.last_used_ns == T0);
    packets = e.stats.packets;
    seq = e.info.seq;
    TRUE("... before the move: plain ESP to 198.51.100.2",
         w.buf[w.off + 9] == 50 && w.buf[w.off + 16] == 198 && w.buf[w.off + 19] == 2);
    OK("moved to 198.51.100.9, ESP in UDP 4500 -> 31000",
       ipsec_gateway_update_sa(hq, "hq-out-4", "192.0.2.1", "198.51.100.9", true, 4500, 31000, T0));
    TRUE("... counters and sequence number carried over",
         find_sa(hq, "hq-out-4", &e) && e.stats.packets == packets && e.info.seq == seq &&
             e.stats.last_used_ns == T0);
    OK("the next packet", send_tag(hq, 1602, &w, &r));
    TRUE("... is ESP in UDP to 198.51.100.9:31000",
         w.buf[w.off + 9] == 17 && w.buf[w.off + 19] == 9 && w.buf[w.off + 22] == (31000 >> 8) &&
             w.buf[w.off + 23] == (31000 & 0xff));
    TRUE("... with the next sequence number",
         find_sa(hq, "hq-out-4", &e) && e.info.seq == seq + 1);
    OK("moved back to plain ESP to 198.51.100.2",
       ipsec_gateway_update_sa(hq, "hq-out-4", "192.0.2.1", "198.51.100.2", false, 0, 0, T0));
    TRUE("the branch accepts the next packet (same keys, sequence number seq + 2)",
         flows(hq, br, 1603) && find_sa(hq, "hq-out-4", &e) && e.info.seq == seq + 2);

    TRUE("ipsec_gateway_find_sa: the same entry by name",
         ipsec_gateway_find_sa(hq, "hq-out-4", &e) == IPSEC_OK && is(e.name, "hq-out-4") &&
             e.info.seq == seq + 2 && e.stats.last_used_ns == T0);
    REFUSED("find an unknown SA", ipsec_gateway_find_sa(hq, "nope", &e), IPSEC_ERR_UNKNOWN_SA,
            "no SA called \"nope\" is installed");
    {
        uint32_t spi = 0;
        bool released = false;
        OK("allocate an SPI for a negotiation that fails", ipsec_gateway_allocate_spi(hq, T0, &spi));
        TRUE("release_spi gives it back",
             ipsec_gateway_release_spi(hq, spi, &released) == IPSEC_OK && released);
        TRUE("... once",
             ipsec_gateway_release_spi(hq, spi, &released) == IPSEC_OK && !released);
        TRUE("an installed SA's SPI is not given back (hq-in, 0x2000)",
             ipsec_gateway_release_spi(hq, 0x2000, &released) == IPSEC_OK && !released);
        OK("released may be NULL", ipsec_gateway_release_spi(hq, spi, NULL));
    }
    REFUSED("update an unknown SA",
            ipsec_gateway_update_sa(hq, "nope", "192.0.2.1", "198.51.100.2", false, 0, 0, T0),
            IPSEC_ERR_UNKNOWN_SA, "no SA called \"nope\" is installed");
    REFUSED_WITH("endpoints of two families",
                 ipsec_gateway_update_sa(hq, "hq-out-4", "192.0.2.1", "2001:db8::1", false, 0, 0, T0),
                 IPSEC_ERR_CONFIG, "sa \"hq-out-4\": tunnel");
    REFUSED_WITH("a source without a destination",
                 ipsec_gateway_update_sa(hq, "hq-out-4", "192.0.2.1", NULL, false, 0, 0, T0),
                 IPSEC_ERR_CONFIG, "sa \"hq-out-4\": tunnel_dst");
    REFUSED_WITH("not an address",
                 ipsec_gateway_update_sa(hq, "hq-out-4", "192.0.2.1", "nowhere", false, 0, 0, T0),
                 IPSEC_ERR_CONFIG, "tunnel_dst");
    REFUSED_WITH("NULL name", ipsec_gateway_update_sa(hq, NULL, NULL, NULL, false, 0, 0, T0),
                 IPSEC_ERR_INVALID_ARGUMENT, "`name`");
    REFUSED_WITH("NULL gateway", ipsec_gateway_update_sa(NULL, "hq-out-4", NULL, NULL, false, 0, 0, T0),
                 IPSEC_ERR_INVALID_ARGUMENT, "`gateway`");
    UNCHANGED("refused moves", 2);
}

static void policies(void)
{
    wire w;
    ipsec_gateway_result r;
    const char *policy_before;

    printf("\n-- policies replaced, installed last, removed\n");
    TRUE("rdp decides a packet", send_tag(hq, 2001, &w, &r) == IPSEC_OK && is(r.policy, "rdp"));
    policy_before = r.policy;
    OK("rdp narrowed to 10.1.0.0/25",
       ipsec_gateway_replace_policy(hq, "name = \"rdp\"\nlocal = \"10.0.0.0/24\"\nremote = \"10.1.0.0/25\"\n"
                                        "protocol = \"tcp\"\naction = \"protect\"\nsa = [\"hq-out\", \"hq-in\"]\n"));
    TRUE("... the same policy string as before",
         send_tag(hq, 2002, &w, &r) == IPSEC_OK && r.policy == policy_before && is(r.sa, "hq-out-4"));
    TRUE("10.1.0.200 now falls to the deny-all", send_to(hq, 200, 2003, &w, &r) == IPSEC_ERR_POLICY_DISCARD);
    OK("a bypass policy installed last (before = NULL)",
       ipsec_gateway_install_policy(hq, "name = \"late\"\nremote = \"10.1.0.0/24\"\naction = \"bypass\"\n", NULL));
    TRUE("... after the deny-all it decides nothing", send_to(hq, 200, 2004, &w, &r) == IPSEC_ERR_POLICY_DISCARD);
    OK("... removed", ipsec_gateway_remove_policy(hq, "late"));
    OK("rdp removed", ipsec_gateway_remove_policy(hq, "rdp"));
    TRUE("... the name string handed out before is still valid", is(policy_before, "rdp"));
    TRUE("its traffic is discarded", send_tag(hq, 2005, &w, &r) == IPSEC_ERR_POLICY_DISCARD);
    OK("now hq-out-4 may go", ipsec_gateway_delete_sa(hq, "hq-out-4", NULL));
    OK("... and hq-in", ipsec_gateway_delete_sa(hq, "hq-in", NULL));
    TRUE("hq is empty again", ipsec_gateway_sa_count(hq) == 0);
    REFUSED("a policy for SAs that are gone", ipsec_gateway_install_policy(hq, HQ_RDP, "deny"),
            IPSEC_ERR_MISSING_SA, "policy \"rdp\" names sa \"hq-out\", which is not installed (or only SAs being retired serve it)");
}

/*
 * RFC 4301 §4.1 lookup: two multicast SAs share SPI 0x5000, each found by its group
 * address (tunnel_dst); a third, found by the SPI alone, takes the SPI's other packets
 * (the longest match wins). A packet to a group no SA has is an unknown SPI.
 */
static ipsec_sa *group_sender(const char *group, unsigned key_number, uint8_t key[20])
{
    ipsec_sa_config c;
    ipsec_sa *sa = NULL;
    make_config(&c, key, 0x5000, IPSEC_DIRECTION_OUTBOUND, key_number);
    c.tunnel_dst = group;
    if (ipsec_sa_new(&c, T0, &sa) != IPSEC_OK) {
        printf("FAIL: cannot create the sender to %s: %s\n", group, last_error());
        exit(1);
    }
    return sa;
}

static ipsec_status add_group_sa(ipsec_gateway *gw, const char *name, const char *group,
                                 uint32_t lookup, unsigned key_number)
{
    ipsec_sa_config c;
    uint8_t key[20];
    char policy[256];
    ipsec_status st;
    make_config(&c, key, 0x5000, IPSEC_DIRECTION_INBOUND, key_number);
    c.tunnel_src = "192.0.2.1";
    c.tunnel_dst = group;
    c.lookup = lookup;
    st = ipsec_gateway_add_sa(gw, name, &c, T0);
    if (st != IPSEC_OK) {
        return st;
    }
    snprintf(policy, sizeof policy,
             "name = \"p-%s\"\ndirection = \"inbound\"\naction = \"protect\"\nsa = \"%s\"\n", name,
             name);
    return ipsec_gateway_install_policy(gw, policy, "deny");
}

/* `sa` encrypts packet `tag`; `gw` takes it: the status, and the SA's name in `*name`. */
static ipsec_status group_packet(ipsec_sa *sa, ipsec_gateway *gw, uint32_t t, const char **name)
{
    uint8_t buf[SIZE];
    size_t off = HEAD, len = PLEN;
    ipsec_gateway_result r;
    ipsec_status st;
    put_packet(buf, 9, t);
    *name = NULL;
    st = ipsec_sa_encrypt(sa, buf, SIZE, &off, &len, T0);
    if (st != IPSEC_OK) {
        return st;
    }
    st = ipsec_gateway_inbound(gw, buf, SIZE, &off, &len, T0, &r);
    if (st == IPSEC_OK) {
        *name = r.sa;
    }
    return st;
}

static void lookup(void)
{
    ipsec_gateway *gw = empty_gateway();
    uint8_t k1[20], k2[20], k3[20];
    ipsec_sa *to1 = group_sender("233.252.0.1", 41, k1);
    ipsec_sa *to2 = group_sender("233.252.0.2", 42, k2);
    ipsec_sa *astray = group_sender("233.252.0.3", 41, k3);
    ipsec_sa_config c;
    uint8_t key[20];
    ipsec_sa_stats stats;
    const char *name = NULL;
    OK("add group SA g1 (SPI 0x5000, spi+destination 233.252.0.1)",
       add_group_sa(gw, "g1", "233.252.0.1", IPSEC_LOOKUP_SPI_DESTINATION, 41));
    OK("add group SA g2 (the same SPI, 233.252.0.2)",
       add_group_sa(gw, "g2", "233.252.0.2", IPSEC_LOOKUP_SPI_DESTINATION, 42));
    REFUSED_WITH("a third SA with g1's SPI and group is a duplicate",
                 add_group_sa(gw, "g1-again", "233.252.0.1", IPSEC_LOOKUP_SPI_DESTINATION, 43),
                 IPSEC_ERR_DUPLICATE_SPI, "inbound sa \"g1\" already has SPI 0x00005000");
    OK("group 1's packet", group_packet(to1, gw, 1, &name));
    TRUE("... decrypted by g1", is(name, "g1"));
    OK("group 2's packet", group_packet(to2, gw, 2, &name));
    TRUE("... decrypted by g2", is(name, "g2"));
    REFUSED_WITH("a packet with the SPI to another group", group_packet(astray, gw, 3, &name),
                 IPSEC_ERR_UNKNOWN_SPI, "unknown SPI 0x00005000");
    OK("gateway stats", ipsec_gateway_get_stats(gw, &stats));
    TRUE("... counted as unknown SPI", stats.unknown_spi == 1);
    /* An SPI-alone SA beside them takes what no group SA does (wrong key: auth fails). */
    OK("add the SPI-alone SA u (key 44)",
       add_group_sa(gw, "u", "198.51.100.2", IPSEC_LOOKUP_SPI, 44));
    OK("group 1's packet still goes to g1", group_packet(to1, gw, 4, &name));
    TRUE("... decrypted by g1", is(name, "g1"));
    REFUSED_WITH("the stray packet now reaches u, whose key does not open it",
                 group_packet(astray, gw, 5, &name), IPSEC_ERR_AUTH_FAILED, "");
    /* Refused configurations: an address lookup on an outbound or transport-mode SA. */
    make_config(&c, key, 0x5001, IPSEC_DIRECTION_OUTBOUND, 45);
    c.lookup = IPSEC_LOOKUP_SPI_DESTINATION;
    REFUSED_WITH("spi+destination on an outbound SA", ipsec_gateway_add_sa(gw, "x", &c, T0),
                 IPSEC_ERR_CONFIG, "lookup: \"spi+destination\" given for an outbound SA");
    make_config(&c, key, 0x5001, IPSEC_DIRECTION_INBOUND, 45);
    c.mode = IPSEC_MODE_TRANSPORT;
    c.lookup = IPSEC_LOOKUP_SPI_DESTINATION_SOURCE;
    REFUSED_WITH("spi+destination+source in transport mode", ipsec_gateway_add_sa(gw, "x", &c, T0),
                 IPSEC_ERR_CONFIG, "lookup: ");
    OK("delete g1's policy", ipsec_gateway_remove_policy(gw, "p-g1"));
    OK("delete g1", ipsec_gateway_delete_sa(gw, "g1", NULL));
    OK("group 2's packet after g1 is gone", group_packet(to2, gw, 6, &name));
    TRUE("... decrypted by g2", is(name, "g2"));
    ipsec_sa_free(to1);
    ipsec_sa_free(to2);
    ipsec_sa_free(astray);
    ipsec_gateway_free(gw);
}

/* Policy changes pending beside the compiled classifier, and the rebuild. */
static void pending_changes(void)
{
    ipsec_gateway *gw = NULL;
    char text[160];
    int i;
    size_t before;

    printf("\n-- policy changes pending beside the classifier\n");
    OK("a gateway with a deny-all", ipsec_gateway_new(DENY_ALL, sizeof DENY_ALL - 1, T0, &gw));
    TRUE("nothing pending", ipsec_gateway_pending_policy_changes(gw) == 0);
    for (i = 0; i < IPSEC_POLICY_REBUILD_DUE; i++) {
        snprintf(text, sizeof text,
                 "name = \"bypass%d\"\nlocal = \"10.9.%d.0/24\"\nprotocol = \"icmp\"\naction = \"bypass\"\n",
                 i, i);
        if (ipsec_gateway_install_policy(gw, text, "deny") != IPSEC_OK) {
            break;
        }
    }
    TRUE("IPSEC_POLICY_REBUILD_DUE installs", i == IPSEC_POLICY_REBUILD_DUE);
    before = ipsec_gateway_pending_policy_changes(gw);
    TRUE("... each pending", before == IPSEC_POLICY_REBUILD_DUE);
    OK("ipsec_gateway_rebuild_policies", ipsec_gateway_rebuild_policies(gw));
    TRUE("... nothing pending", ipsec_gateway_pending_policy_changes(gw) == 0);
    OK("remove a compiled policy", ipsec_gateway_remove_policy(gw, "bypass7"));
    TRUE("... one change pending", ipsec_gateway_pending_policy_changes(gw) == 1);
    OK("rebuild again", ipsec_gateway_rebuild_policies(gw));
    TRUE("... nothing pending", ipsec_gateway_pending_policy_changes(gw) == 0);
    OK("... the policies as they were: bypass7 stays removed",
       ipsec_gateway_install_policy(gw, "name = \"bypass7\"\nprotocol = \"icmp\"\naction = \"bypass\"\n", "deny"));
    REFUSED_WITH("... and bypass8 stays installed",
                 ipsec_gateway_install_policy(gw, "name = \"bypass8\"\naction = \"bypass\"\n", "deny"),
                 IPSEC_ERR_DUPLICATE_POLICY, "bypass8");
    TRUE("pending of NULL is 0", ipsec_gateway_pending_policy_changes(NULL) == 0);
    REFUSED_WITH("rebuild_policies: NULL gateway", ipsec_gateway_rebuild_policies(NULL),
                 IPSEC_ERR_INVALID_ARGUMENT, "gateway");
    ipsec_gateway_free(gw);
}

int main(void)
{
    build();
    refusals();
    null_arguments();
    rekey();
    retire();
    parsed_policies();
    moves();
    policies();
    lookup();
    pending_changes();
    ipsec_gateway_free(hq);
    ipsec_gateway_free(br);
    printf("\n%d checks, %d failed\n", checks, failed);
    return failed == 0 ? 0 : 1;
}
