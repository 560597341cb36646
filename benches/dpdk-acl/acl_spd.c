/*
 * SPDX-License-Identifier: MIT OR Apache-2.0
 *
 * DPDK's rte_acl classifier (the one DPDK's ipsec-secgw uses for its SPD) on the rule
 * sets and flows of our SPD benchmark, exported by `benches/examples/spd_acl.rs`: the
 * baseline for `Spd::lookup` (issue 14).
 *
 * Per rule set file: two rte_acl contexts, one per direction (as ipsec-secgw keeps an
 * outbound and an inbound SP per family); a policy of direction "both" goes into both.
 * Fields as ipsec-secgw's sp4.c/sp6.c lay them out: the protocol (1 byte, BITMASK, the
 * first input word), the source and destination addresses (MASK; IPv6 as four 32-bit
 * words each), the source and destination ports (RANGE, sharing one 4-byte input word).
 * For outbound a policy's local side is the packet's source, for inbound its
 * destination. Priority: our SPD is "first match in file order wins", so policy i of n
 * gets priority n - i (rte_acl returns the highest), and its userdata is i + 1 (0 means
 * no match). A flow without ports (ICMP, ESP) carries ports 0 and 0, which no exported
 * port range holds.
 *
 * Each flow's key (protocol, addresses, ports in network byte order, at the offsets of
 * the field definitions) is built once, with the array of data pointers, before
 * anything is timed, as a DPDK application points rte_acl at its packets' headers.
 *
 * First, always: every flow is classified and rte_acl's policy must equal the one our
 * SPD matched (the file's last column); the first mismatch is printed and the program
 * exits 1. Then, unless --check: rte_acl_classify in bursts of 32 (outbound flows, then
 * inbound flows), the measuring thread's CPU clock, a calibration pass, then 7 rounds
 * of at least 20 ms whose median is reported (as benches/openssl/evp_aead.c and the
 * Rust side do). Build time: rte_acl_add_rules + rte_acl_build of both contexts (wall
 * clock, as Instant on the Rust side). Memory: the EAL heap's allocated bytes
 * (rte_malloc_get_socket_stats) before rte_acl_create, after the rules are added and
 * after the build: "trie_bytes" is what rte_acl_build allocated (the run-time structure
 * rte_acl_classify walks), "bytes" adds the contexts and their copy of the rules.
 * Output: one JSON line per rule set.
 *
 * Build and run (scripts/spd-report.py does both):
 *     cc -O2 -Wall -Wextra -o target/acl_spd benches/dpdk-acl/acl_spd.c \
 *         $(pkg-config --cflags --libs libdpdk)
 *     target/acl_spd [--check] [--dump] [--alg scalar|sse|avx2|avx512x16|avx512x32] FILE...
 * --check: the cross-check only; --dump: rte_acl_dump of each context after its build
 * (to stdout; "alg=" is the classify method, 6 = AVX512X16); --alg: force a method
 * (default: rte_acl's own choice for this CPU and EAL's SIMD width, 256 bits unless
 * --force-max-simd-bitwidth, which is AVX512X16 on an AVX-512 CPU).
 * EAL runs with --no-huge -m 512 --no-pci --no-shconf --file-prefix=acl_spd_PID
 * --log-level=error -l 0 (one lcore, no hugepages, no shared configuration and a
 * prefix of its own, so it can run beside other DPDK processes).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <rte_acl.h>
#include <rte_eal.h>
#include <rte_lcore.h>
#include <rte_malloc.h>

#define ROUNDS 7
#define ROUND_NS 20000000.0
#define BURST 32
#define KEY_SIZE 40 /* the largest key: IPv6, 40 bytes */

enum family { V4, V6 };

/* Field numbers; IPv6 has four words per address. */
enum { F_PROTO = 0 };
#define F_SRC(fam, w) (1 + (w))
#define F_DST(fam, w) ((fam) == V4 ? 2 : 5 + (w))
#define F_SPORT(fam) ((fam) == V4 ? 3 : 9)
#define F_DPORT(fam) ((fam) == V4 ? 4 : 10)
#define NUM_FIELDS(fam) ((fam) == V4 ? 5 : 11)
#define ADDR_WORDS(fam) ((fam) == V4 ? 1 : 4)
/* Key layout: proto at 0, source at 4, destination after it, then the two ports. */
#define OFF_SRC 4
#define OFF_DST(fam) ((fam) == V4 ? 8 : 20)
#define OFF_PORTS(fam) ((fam) == V4 ? 12 : 36)

struct prefix {
    uint32_t w[4]; /* host order words, most significant first */
    int len;
};

struct rule {
    uint32_t index; /* position in the policy file */
    int out, in;
    struct prefix local, remote;
    int proto; /* -1: any */
    uint16_t lport[2], rport[2];
};

struct flow {
    int out;
    uint8_t key[KEY_SIZE];
    uint32_t expected; /* policy index + 1; 0: none */
    char text[160];
};

struct set {
    char name[64];
    enum family fam;
    struct rule *rules;
    size_t nrules;
    struct flow *flows;
    size_t nflows;
    uint32_t npolicies; /* the highest policy index + 1 */
};

static double cpu_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static double wall_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static void die(const char *what, const char *detail) {
    fprintf(stderr, "acl_spd: %s: %s\n", what, detail);
    exit(2);
}

static int parse_addr(enum family fam, const char *s, uint8_t *bytes) {
    return inet_pton(fam == V4 ? AF_INET : AF_INET6, s, bytes) == 1;
}

static int parse_prefix(enum family fam, const char *s, struct prefix *p) {
    char buf[64];
    uint8_t bytes[16];
    const char *slash = strchr(s, '/');
    if (slash == NULL || (size_t)(slash - s) >= sizeof(buf))
        return 0;
    memcpy(buf, s, (size_t)(slash - s));
    buf[slash - s] = '\0';
    if (!parse_addr(fam, buf, bytes))
        return 0;
    p->len = atoi(slash + 1);
    for (int w = 0; w < ADDR_WORDS(fam); w++) {
        uint32_t be;
        memcpy(&be, bytes + 4 * w, 4);
        p->w[w] = ntohl(be);
    }
    return 1;
}

static int parse_ports(const char *s, uint16_t r[2]) {
    unsigned lo, hi;
    if (strcmp(s, "any") == 0) {
        r[0] = 0;
        r[1] = 65535;
        return 1;
    }
    if (sscanf(s, "%u-%u", &lo, &hi) != 2 || lo > hi || hi > 65535)
        return 0;
    r[0] = (uint16_t)lo;
    r[1] = (uint16_t)hi;
    return 1;
}

static void load(const char *path, struct set *set) {
    FILE *f = fopen(path, "r");
    char line[512];
    size_t cap_r = 1024, cap_f = 1024;
    if (f == NULL)
        die(path, strerror(errno));
    memset(set, 0, sizeof(*set));
    const char *base = strrchr(path, '/');
    snprintf(set->name, sizeof(set->name), "%s", base ? base + 1 : path);
    set->fam = strstr(set->name, "ipv6") ? V6 : V4;
    set->rules = malloc(cap_r * sizeof(*set->rules));
    set->flows = malloc(cap_f * sizeof(*set->flows));
    while (fgets(line, sizeof(line), f) != NULL) {
        char a[8], b[64], c[64], d[16], e[16], g[16], h[16];
        unsigned idx;
        line[strcspn(line, "\n")] = '\0';
        if (strncmp(line, "rule ", 5) == 0) {
            struct rule r;
            if (sscanf(line, "rule %u %7s %63s %63s %15s %15s %15s", &idx, a, b, c, d, e, g) != 7)
                die(path, line);
            r.index = idx;
            if (idx + 1 > set->npolicies)
                set->npolicies = idx + 1;
            r.out = strcmp(a, "in") != 0;
            r.in = strcmp(a, "out") != 0;
            r.proto = strcmp(d, "any") == 0 ? -1 : atoi(d);
            if (!parse_prefix(set->fam, b, &r.local) || !parse_prefix(set->fam, c, &r.remote) ||
                !parse_ports(e, r.lport) || !parse_ports(g, r.rport))
                die(path, line);
            if (set->nrules == cap_r)
                set->rules = realloc(set->rules, (cap_r *= 2) * sizeof(*set->rules));
            set->rules[set->nrules++] = r;
        } else if (strncmp(line, "flow ", 5) == 0) {
            struct flow fl;
            unsigned proto;
            uint8_t src[16], dst[16];
            uint16_t sport, dport;
            if (sscanf(line, "flow %7s %63s %63s %u %15s %15s %15s", a, b, c, &proto, d, e, h) != 7 ||
                !parse_addr(set->fam, b, src) || !parse_addr(set->fam, c, dst))
                die(path, line);
            memset(&fl, 0, sizeof(fl));
            fl.out = strcmp(a, "out") == 0;
            fl.key[0] = (uint8_t)proto;
            memcpy(fl.key + OFF_SRC, src, 4u * ADDR_WORDS(set->fam));
            memcpy(fl.key + OFF_DST(set->fam), dst, 4u * ADDR_WORDS(set->fam));
            sport = htons(strcmp(d, "-") == 0 ? 0 : (uint16_t)atoi(d));
            dport = htons(strcmp(e, "-") == 0 ? 0 : (uint16_t)atoi(e));
            memcpy(fl.key + OFF_PORTS(set->fam), &sport, 2);
            memcpy(fl.key + OFF_PORTS(set->fam) + 2, &dport, 2);
            fl.expected = strcmp(h, "none") == 0 ? 0 : (uint32_t)atoi(h) + 1;
            snprintf(fl.text, sizeof(fl.text), "%.159s", line);
            if (set->nflows == cap_f)
                set->flows = realloc(set->flows, (cap_f *= 2) * sizeof(*set->flows));
            set->flows[set->nflows++] = fl;
        }
    }
    fclose(f);
    if (set->nrules == 0 || set->nflows == 0)
        die(path, "no rules or no flows");
}

static void field_defs(enum family fam, struct rte_acl_config *cfg) {
    int n = 0;
    memset(cfg, 0, sizeof(*cfg));
    cfg->num_categories = 1;
    cfg->defs[n++] = (struct rte_acl_field_def){
        .type = RTE_ACL_FIELD_TYPE_BITMASK, .size = 1, .field_index = F_PROTO,
        .input_index = 0, .offset = 0};
    for (int w = 0; w < ADDR_WORDS(fam); w++)
        cfg->defs[n++] = (struct rte_acl_field_def){
            .type = RTE_ACL_FIELD_TYPE_MASK, .size = 4, .field_index = (uint8_t)F_SRC(fam, w),
            .input_index = (uint8_t)(1 + w), .offset = (uint32_t)(OFF_SRC + 4 * w)};
    for (int w = 0; w < ADDR_WORDS(fam); w++)
        cfg->defs[n++] = (struct rte_acl_field_def){
            .type = RTE_ACL_FIELD_TYPE_MASK, .size = 4, .field_index = (uint8_t)F_DST(fam, w),
            .input_index = (uint8_t)(1 + ADDR_WORDS(fam) + w),
            .offset = (uint32_t)(OFF_DST(fam) + 4 * w)};
    cfg->defs[n++] = (struct rte_acl_field_def){
        .type = RTE_ACL_FIELD_TYPE_RANGE, .size = 2, .field_index = (uint8_t)F_SPORT(fam),
        .input_index = (uint8_t)(1 + 2 * ADDR_WORDS(fam)), .offset = (uint32_t)OFF_PORTS(fam)};
    cfg->defs[n++] = (struct rte_acl_field_def){
        .type = RTE_ACL_FIELD_TYPE_RANGE, .size = 2, .field_index = (uint8_t)F_DPORT(fam),
        .input_index = (uint8_t)(1 + 2 * ADDR_WORDS(fam)),
        .offset = (uint32_t)OFF_PORTS(fam) + 2};
    cfg->num_fields = (uint32_t)n;
}

/* An address prefix into the MASK fields starting at `first` (per 32-bit word). */
static void put_prefix(enum family fam, struct rte_acl_field *fld, int first,
                       const struct prefix *p) {
    for (int w = 0; w < ADDR_WORDS(fam); w++) {
        int len = p->len - 32 * w;
        fld[first + w].value.u32 = p->w[w];
        fld[first + w].mask_range.u32 = (uint32_t)(len < 0 ? 0 : len > 32 ? 32 : len);
    }
}

/* The rules of one direction, packed at the context's rule size. */
static size_t make_rules(const struct set *set, int out, uint8_t *buf, size_t rule_sz) {
    size_t k = 0;
    enum family fam = set->fam;
    for (size_t i = 0; i < set->nrules; i++) {
        const struct rule *r = &set->rules[i];
        if (!(out ? r->out : r->in))
            continue;
        struct rte_acl_rule *ar = (struct rte_acl_rule *)(void *)(buf + k++ * rule_sz);
        memset(ar, 0, rule_sz);
        ar->data.category_mask = 1;
        ar->data.priority = (int32_t)(set->npolicies - r->index);
        ar->data.userdata = r->index + 1;
        ar->field[F_PROTO].value.u8 = r->proto < 0 ? 0 : (uint8_t)r->proto;
        ar->field[F_PROTO].mask_range.u8 = r->proto < 0 ? 0 : 0xff;
        const struct prefix *src = out ? &r->local : &r->remote;
        const struct prefix *dst = out ? &r->remote : &r->local;
        const uint16_t *sp = out ? r->lport : r->rport, *dp = out ? r->rport : r->lport;
        put_prefix(fam, ar->field, F_SRC(fam, 0), src);
        put_prefix(fam, ar->field, F_DST(fam, 0), dst);
        ar->field[F_SPORT(fam)].value.u16 = sp[0];
        ar->field[F_SPORT(fam)].mask_range.u16 = sp[1];
        ar->field[F_DPORT(fam)].value.u16 = dp[0];
        ar->field[F_DPORT(fam)].mask_range.u16 = dp[1];
    }
    return k;
}

static size_t heap_bytes(void) {
    struct rte_malloc_socket_stats st;
    if (rte_malloc_get_socket_stats((int)rte_socket_id(), &st) != 0)
        return 0;
    return st.heap_allocsz_bytes;
}

struct dir {
    struct rte_acl_ctx *ctx;
    const uint8_t **data; /* the flows of this direction */
    const struct flow **flows;
    size_t n;
};

static void classify_all(const struct dir *d, uint32_t *results) {
    for (size_t i = 0; i < d->n; i += BURST) {
        uint32_t num = (uint32_t)(d->n - i < BURST ? d->n - i : BURST);
        if (rte_acl_classify(d->ctx, d->data + i, results + i, num, 1) != 0)
            die("rte_acl_classify", "failed");
    }
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int run_set(const char *path, int check_only, int alg, int dump) {
    struct set set;
    struct dir dirs[2];
    struct rte_acl_config cfg;
    load(path, &set);
    field_defs(set.fam, &cfg);
    size_t rule_sz = RTE_ACL_RULE_SZ(cfg.num_fields);
    uint8_t *buf = malloc(rule_sz * set.nrules);
    uint32_t *results = malloc(set.nflows * sizeof(uint32_t));
    size_t before = heap_bytes(), after_add = 0;
    double build_ns = 0;
    if (buf == NULL || results == NULL)
        die("malloc", "out of memory");
    for (int o = 0; o < 2; o++) {
        int out = o == 0;
        char name[RTE_ACL_NAMESIZE];
        snprintf(name, sizeof(name), "%.20s-%s", set.name + 4, out ? "out" : "in");
        size_t n = make_rules(&set, out, buf, rule_sz);
        struct rte_acl_param prm = {
            .name = name, .socket_id = (int)rte_socket_id(), .rule_size = (uint32_t)rule_sz,
            .max_rule_num = (uint32_t)n};
        dirs[o].ctx = rte_acl_create(&prm);
        if (dirs[o].ctx == NULL)
            die("rte_acl_create", rte_strerror(rte_errno));
        double t = wall_ns();
        int rc = rte_acl_add_rules(dirs[o].ctx, (const struct rte_acl_rule *)(void *)buf, (uint32_t)n);
        if (rc != 0)
            die("rte_acl_add_rules", strerror(-rc));
        build_ns += wall_ns() - t;
    }
    after_add = heap_bytes();
    for (int o = 0; o < 2; o++) {
        double t = wall_ns();
        int rc = rte_acl_build(dirs[o].ctx, &cfg);
        build_ns += wall_ns() - t;
        if (rc != 0)
            die("rte_acl_build", strerror(-rc));
        if (alg != 0 && rte_acl_set_ctx_classify(dirs[o].ctx, (enum rte_acl_classify_alg)alg) != 0)
            die("rte_acl_set_ctx_classify", "algorithm not supported here");
        if (dump)
            rte_acl_dump(dirs[o].ctx); /* to stdout; alg= is the classify method */
    }
    size_t after_build = heap_bytes();
    /* The data pointers, per direction, prepared once. */
    for (int o = 0; o < 2; o++) {
        dirs[o].data = malloc(set.nflows * sizeof(*dirs[o].data));
        dirs[o].flows = malloc(set.nflows * sizeof(*dirs[o].flows));
        dirs[o].n = 0;
        for (size_t i = 0; i < set.nflows; i++)
            if (set.flows[i].out == (o == 0)) {
                dirs[o].data[dirs[o].n] = set.flows[i].key;
                dirs[o].flows[dirs[o].n++] = &set.flows[i];
            }
    }
    /* The cross-check: rte_acl must answer as our SPD did, for every flow. */
    for (int o = 0; o < 2; o++) {
        classify_all(&dirs[o], results);
        for (size_t i = 0; i < dirs[o].n; i++)
            if (results[i] != dirs[o].flows[i]->expected) {
                char got[16];
                if (results[i] == 0)
                    snprintf(got, sizeof(got), "none");
                else
                    snprintf(got, sizeof(got), "%" PRIu32, results[i] - 1);
                fprintf(stderr, "acl_spd: %s: MISMATCH: rte_acl matched policy %s for \"%s\"\n",
                        set.name, got, dirs[o].flows[i]->text);
                return 1;
            }
    }
    fprintf(stderr, "acl_spd: %s: %zu flows, rte_acl agrees with ipsec-core on every one\n",
            set.name, set.nflows);
    if (!check_only) {
        double t = cpu_ns(), one, rounds[ROUNDS];
        classify_all(&dirs[0], results);
        classify_all(&dirs[1], results);
        one = cpu_ns() - t;
        long passes = (long)(ROUND_NS / (one > 1 ? one : 1)) + 1;
        for (int r = 0; r < ROUNDS; r++) {
            t = cpu_ns();
            for (long p = 0; p < passes; p++) {
                classify_all(&dirs[0], results);
                classify_all(&dirs[1], results);
            }
            rounds[r] = (cpu_ns() - t) / ((double)passes * (double)set.nflows);
        }
        qsort(rounds, ROUNDS, sizeof(double), cmp_double);
        double npol = (double)set.npolicies;
        printf("{\"impl\":\"rte_acl\",\"family\":\"%s\",\"rules\":%" PRIu32 ",\"flows\":%zu,"
               "\"burst\":%d,\"ns_per_lookup\":%.2f,\"build_ms\":%.3f,\"bytes\":%zu,"
               "\"bytes_per_rule\":%.1f,\"trie_bytes\":%zu,\"trie_bytes_per_rule\":%.1f}\n",
               set.fam == V4 ? "ipv4" : "ipv6", set.npolicies, set.nflows, BURST,
               rounds[ROUNDS / 2], build_ns / 1e6, after_build - before,
               (double)(after_build - before) / npol, after_build - after_add,
               (double)(after_build - after_add) / npol);
        fflush(stdout);
    }
    for (int o = 0; o < 2; o++) {
        rte_acl_free(dirs[o].ctx);
        free(dirs[o].data);
        free(dirs[o].flows);
    }
    free(buf);
    free(results);
    free(set.rules);
    free(set.flows);
    return 0;
}

int main(int argc, char **argv) {
    char prefix[64];
    snprintf(prefix, sizeof(prefix), "--file-prefix=acl_spd_%ld", (long)getpid());
    char *eal[] = {argv[0], "--no-huge", "-m", "512", "--no-pci", "--no-shconf", prefix,
                   "--log-level=error", "-l", "0", NULL};
    int check_only = 0, alg = 0, dump = 0, status = 0, first = 1;
    static const char *algs[] = {"default", "scalar", "sse", "avx2", "neon", "altivec",
                                 "avx512x16", "avx512x32"};
    while (first < argc && strncmp(argv[first], "--", 2) == 0) {
        if (strcmp(argv[first], "--check") == 0) {
            check_only = 1;
            first++;
        } else if (strcmp(argv[first], "--dump") == 0) {
            dump = 1;
            first++;
        } else if (strcmp(argv[first], "--alg") == 0 && first + 1 < argc) {
            alg = -1;
            for (int i = 0; i < (int)(sizeof(algs) / sizeof(algs[0])); i++)
                if (strcmp(argv[first + 1], algs[i]) == 0)
                    alg = i;
            if (alg < 0)
                die("--alg", argv[first + 1]);
            first += 2;
        } else {
            die("unknown option", argv[first]);
        }
    }
    if (first == argc) {
        fprintf(stderr, "usage: %s [--check] [--dump] [--alg NAME] FILE...\n", argv[0]);
        return 2;
    }
    if (rte_eal_init((int)(sizeof(eal) / sizeof(eal[0])) - 1, eal) < 0)
        die("rte_eal_init", rte_strerror(rte_errno));
    for (int i = first; i < argc && status == 0; i++)
        status = run_set(argv[i], check_only, alg, dump);
    rte_eal_cleanup();
    return status;
}
