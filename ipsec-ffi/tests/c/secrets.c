/*
 * No secret of a policy or SA file ever shows in what the C API says about it (issue 11,
 * item 1). Every malformed-secret file of ipsec-core/tests/data/secret-shapes/ (trailing
 * garbage after `key = "..."`, a duplicated `key =` line, a key as a bare integer, an
 * unterminated string, the same for `integrity_key`, ...; see its README) goes through
 * every loader of the C API; every `ipsec_last_error` message and every lint finding
 * (`ipsec_lint_toml`, `ipsec_spd_lint`) is searched for any 8 consecutive characters of
 * any secret of `secrets.txt`.
 *
 * Run by scripts/test-ffi.sh from the repository root (or with the shapes directory as
 * the only argument), against the static and the shared library, under valgrind and
 * with ASan/UBSan. Exit status 0 when every check held.
 */
#define _POSIX_C_SOURCE 200809L
#include <ipsec.h>

#include <ctype.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SECRETS 16
#define MAX_SHAPES 128
#define WINDOW 8

static char secrets[MAX_SECRETS][160];
static int n_secrets = 0;
static int checks = 0, failed = 0, refusals = 0;

/* The whole file, NUL-terminated (its length in *len); NULL if it cannot be read. */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    long size;
    if (f == NULL) {
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return NULL;
    }
    buf = malloc((size_t)size + 1);
    if (buf != NULL && fread(buf, 1, (size_t)size, f) != (size_t)size) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf != NULL) {
        buf[size] = '\0';
        *len = (size_t)size;
    }
    return buf;
}

/* Fails the check when `text` holds WINDOW consecutive characters of a secret (any case). */
static void check_text(const char *shape, const char *what, const char *text)
{
    char low[4096];
    size_t i, n = strlen(text);
    int s;
    if (n >= sizeof low) {
        n = sizeof low - 1;
    }
    for (i = 0; i < n; i++) {
        low[i] = (char)tolower((unsigned char)text[i]);
    }
    low[n] = '\0';
    checks++;
    for (s = 0; s < n_secrets; s++) {
        size_t len = strlen(secrets[s]), at;
        for (at = 0; at + WINDOW <= len; at++) {
            char piece[WINDOW + 1];
            memcpy(piece, secrets[s] + at, WINDOW);
            piece[WINDOW] = '\0';
            if (strstr(low, piece) != NULL) {
                failed++;
                printf("FAIL %s: %s shows \"%s\", a piece of a secret: %s\n", shape, what, piece,
                       text);
                return;
            }
        }
    }
}

/* After a call: on failure, the last-error message is checked. */
static void after(const char *shape, const char *what, ipsec_status st)
{
    char msg[4096];
    size_t n = 0;
    if (st == IPSEC_OK) {
        return;
    }
    refusals++;
    if (ipsec_last_error(msg, sizeof msg, &n) != IPSEC_OK) {
        failed++;
        printf("FAIL %s: %s: no last-error message\n", shape, what);
        return;
    }
    check_text(shape, what, msg);
}

/* Every finding of a lint result is checked, then the result freed. */
static void check_lint(const char *shape, const char *what, struct ipsec_lint *lint)
{
    size_t i, count = ipsec_lint_count(lint);
    for (i = 0; i < count; i++) {
        ipsec_lint_finding f;
        if (ipsec_lint_get(lint, i, &f) != IPSEC_OK) {
            failed++;
            printf("FAIL %s: %s: finding %u unreadable\n", shape, what, (unsigned)i);
            continue;
        }
        check_text(shape, what, f.code);
        check_text(shape, what, f.message);
        if (f.policy != NULL) {
            check_text(shape, what, f.policy);
        }
    }
    ipsec_lint_free(lint);
}

static void run_shape(const char *dir, const char *shape)
{
    char path[1024];
    size_t len = 0;
    char *text;
    struct ipsec_spd *spd = NULL;
    struct ipsec_gateway *gw = NULL;
    struct ipsec_lint *lint = NULL;
    struct ipsec_sa *sa = NULL;
    const char *names[] = {"out", "in"};
    int before = refusals, i;
    ipsec_status st;

    snprintf(path, sizeof path, "%s/%s", dir, shape);
    text = read_file(path, &len);
    if (text == NULL) {
        failed++;
        printf("FAIL %s: cannot read\n", path);
        return;
    }

    st = ipsec_spd_from_toml(text, len, &spd);
    after(shape, "ipsec_spd_from_toml", st);
    if (st == IPSEC_OK) {
        if (ipsec_spd_lint(spd, &lint) == IPSEC_OK) {
            check_lint(shape, "ipsec_spd_lint", lint);
        }
        ipsec_spd_free(spd);
        spd = NULL;
    }
    st = ipsec_spd_load(path, &spd);
    after(shape, "ipsec_spd_load", st);
    ipsec_spd_free(spd);

    st = ipsec_gateway_new(text, len, 0, &gw);
    after(shape, "ipsec_gateway_new", st);
    ipsec_gateway_free(gw);

    for (i = 0; i < 2; i++) {
        sa = NULL;
        st = ipsec_sa_from_toml(text, len, names[i], 0, &sa);
        after(shape, "ipsec_sa_from_toml", st);
        ipsec_sa_free(sa);
    }

    lint = NULL;
    st = ipsec_lint_toml(text, len, &lint);
    after(shape, "ipsec_lint_toml", st);
    if (st == IPSEC_OK) {
        check_lint(shape, "ipsec_lint_toml", lint);
    }

    checks++;
    if (refusals == before) {
        failed++;
        printf("FAIL %s: loaded without any error\n", shape);
    }
    free(text);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "ipsec-core/tests/data/secret-shapes";
    char path[1024];
    char *list = NULL;
    size_t len = 0, n_shapes = 0, i;
    char *shapes[MAX_SHAPES];
    char *line;
    DIR *d;
    struct dirent *e;

    snprintf(path, sizeof path, "%s/secrets.txt", dir);
    list = read_file(path, &len);
    if (list == NULL) {
        printf("FAIL cannot read %s\n", path);
        return 1;
    }
    for (line = strtok(list, "\r\n"); line != NULL && n_secrets < MAX_SECRETS;
         line = strtok(NULL, "\r\n")) {
        size_t k;
        for (k = 0; line[k] != '\0' && k + 1 < sizeof secrets[0]; k++) {
            secrets[n_secrets][k] = (char)tolower((unsigned char)line[k]);
        }
        secrets[n_secrets][k] = '\0';
        n_secrets++;
    }
    free(list);

    d = opendir(dir);
    if (d == NULL) {
        printf("FAIL cannot open %s\n", dir);
        return 1;
    }
    while ((e = readdir(d)) != NULL && n_shapes < MAX_SHAPES) {
        size_t n = strlen(e->d_name);
        if (n > 5 && strcmp(e->d_name + n - 5, ".toml") == 0) {
            shapes[n_shapes] = malloc(n + 1);
            if (shapes[n_shapes] == NULL) {
                break;
            }
            memcpy(shapes[n_shapes], e->d_name, n + 1);
            n_shapes++;
        }
    }
    closedir(d);
    qsort(shapes, n_shapes, sizeof shapes[0], by_name);
    checks++;
    if (n_shapes < 30 || n_secrets < 3) {
        failed++;
        printf("FAIL only %u shapes and %d secrets in %s\n", (unsigned)n_shapes, n_secrets, dir);
    }
    for (i = 0; i < n_shapes; i++) {
        run_shape(dir, shapes[i]);
        free(shapes[i]);
    }
    printf("%d of %d checks failed over %u malformed-secret files\n", failed, checks,
           (unsigned)n_shapes);
    return failed == 0 ? 0 : 1;
}
