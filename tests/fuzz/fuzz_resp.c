/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * fuzz_resp.c -- libFuzzer target for the RESP request parser
 * (comet_resp.c), which reads what any local client of the publish socket
 * sends.
 *
 * Input: two bytes of settings, then the bytes a client sends.
 *   [0]     the limits (max_args, max_bulk, max_inline: a few of each,
 *           from the smallest legal values up to the defaults)
 *   [1]     the largest piece the stream is handed over in (1..256), and
 *           the seed of the piece sizes
 *
 * The stream is parsed twice: all at once, and in random pieces through a
 * caller's buffer that keeps only what the parser did not consume, copied
 * into a fresh allocation of exactly the bytes held before every call (so
 * a pointer kept across calls, or a read past the bytes passed, is an
 * AddressSanitizer report).  Checked:
 *   - consumed never exceeds what was passed; what an incomplete parse
 *     consumes (blank lines, empty arrays) holds no command; an error
 *     consumes nothing and is sticky;
 *   - every command keeps the limits: 1 <= argc <= max_args, each
 *     argument NUL-terminated inside the consumed bytes; a bulk never
 *     longer than max_bulk, an inline line never longer than max_inline;
 *   - an error has a text without CR or LF (it goes into "-ERR <text>");
 *   - both runs give the same commands and end the same way (the same
 *     error text, or incomplete with the same bytes left);
 *   - each command, written again as a RESP array of bulks and parsed by a
 *     new parser, comes back the same in one call, consuming all of it.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <apr_general.h>
#include <apr_pools.h>

#include "comet_resp.h"

#define CHECK(cond) do {                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "fuzz_resp.c:%d: check failed: %s\n",          \
                    __LINE__, #cond);                                       \
            abort();                                                        \
        }                                                                   \
    } while (0)

static apr_pool_t *root;
static uint32_t rng;

static uint32_t rnd(void)
{
    /* xorshift32: the same input always takes the same path. */
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);

    CHECK(p != NULL);
    return p;
}

/* What a run saw: one record per command (argc, then each length and its
 * bytes), then how it ended. */
typedef struct {
    unsigned char *p;
    size_t         len, cap;
} log_t;

static void log_put(log_t *log, const void *data, size_t n)
{
    if (n == 0) {
        return;
    }
    if (log->len + n > log->cap) {
        log->cap = (log->len + n) * 2 + 64;
        log->p = realloc(log->p, log->cap);
        CHECK(log->p != NULL);
    }
    memcpy(log->p + log->len, data, n);
    log->len += n;
}

static void log_cmd(log_t *log, const comet_resp_cmd_t *cmd)
{
    log_put(log, &cmd->argc, sizeof(cmd->argc));
    for (apr_size_t i = 0; i < cmd->argc; i++) {
        log_put(log, &cmd->argv_len[i], sizeof(cmd->argv_len[i]));
        log_put(log, cmd->argv[i], cmd->argv_len[i]);
    }
}

static int same_cmd(const comet_resp_cmd_t *a, const comet_resp_cmd_t *b)
{
    if (a->argc != b->argc) {
        return 0;
    }
    for (apr_size_t i = 0; i < a->argc; i++) {
        if (a->argv_len[i] != b->argv_len[i]
            || memcmp(a->argv[i], b->argv[i], a->argv_len[i]) != 0) {
            return 0;
        }
    }
    return 1;
}

static void check_cmd(const comet_resp_cmd_t *cmd, const char *data,
                      apr_size_t consumed, const comet_resp_limits_t *lim)
{
    CHECK(cmd->argc >= 1 && cmd->argc <= lim->max_args);
    for (apr_size_t i = 0; i < cmd->argc; i++) {
        const char *a = cmd->argv[i];

        CHECK(a >= data && a + cmd->argv_len[i] < data + consumed);
        CHECK(a[cmd->argv_len[i]] == '\0');
        CHECK(cmd->argv_len[i] <= lim->max_bulk
              || cmd->argv_len[i] <= lim->max_inline);
    }
}

/* The command as a RESP array of bulks, parsed by a new parser: the same
 * command, all bytes consumed, in one call. */
static void check_reencoded(const comet_resp_cmd_t *cmd,
                            const comet_resp_limits_t *lim, apr_pool_t *p)
{
    comet_resp_parser_t *parser;
    comet_resp_cmd_t back;
    comet_buf_t *out;
    apr_size_t consumed, total = 32;

    for (apr_size_t i = 0; i < cmd->argc; i++) {
        if (cmd->argv_len[i] > lim->max_bulk) {
            return;         /* an inline word the bulk limit refuses */
        }
        total += cmd->argv_len[i] + 32;
    }
    CHECK(comet_buf_create(&out, p, 0, total + 1) == APR_SUCCESS);
    CHECK(comet_resp_array(out, cmd->argc) == APR_SUCCESS);
    for (apr_size_t i = 0; i < cmd->argc; i++) {
        CHECK(comet_resp_bulk(out, cmd->argv[i], cmd->argv_len[i])
              == APR_SUCCESS);
    }
    CHECK(comet_resp_parser_create(&parser, lim, p) == APR_SUCCESS);
    CHECK(comet_resp_parse(parser, out->data, out->len, &consumed, &back)
          == APR_SUCCESS);
    CHECK(consumed == out->len);
    CHECK(same_cmd(cmd, &back));
}

/* What an incomplete parse consumed (blank lines, empty or null arrays)
 * holds no command: a new parser takes all of it and returns none. */
static void check_no_command(const char *bytes, apr_size_t n,
                             const comet_resp_limits_t *lim, apr_pool_t *p)
{
    comet_resp_parser_t *parser;
    comet_resp_cmd_t cmd;
    apr_size_t consumed;
    char *copy = xmalloc(n);

    memcpy(copy, bytes, n);
    CHECK(comet_resp_parser_create(&parser, lim, p) == APR_SUCCESS);
    CHECK(comet_resp_parse(parser, copy, n, &consumed, &cmd)
          == APR_INCOMPLETE);
    CHECK(consumed == n);
    free(copy);
}

/* Feed in[0, n) in pieces of 1..max_piece bytes (0: all at once); log
 * what comes out. */
static void run(const unsigned char *in, size_t n,
                const comet_resp_limits_t *lim, size_t max_piece,
                log_t *log, int deep)
{
    apr_pool_t *p;
    comet_resp_parser_t *parser;
    comet_resp_cmd_t cmd;
    char *held = NULL;
    size_t have = 0, fed = 0;
    apr_size_t consumed;
    apr_status_t rv = APR_INCOMPLETE;

    CHECK(apr_pool_create(&p, root) == APR_SUCCESS);
    CHECK(comet_resp_parser_create(&parser, lim, p) == APR_SUCCESS);
    do {
        size_t piece = max_piece ? 1 + rnd() % max_piece : n - fed;
        char *buf;

        if (piece > n - fed) {
            piece = n - fed;
        }
        /* A fresh allocation of exactly what is held: the parser may keep
         * offsets, never pointers, and must not read past len. */
        buf = xmalloc(have + piece);
        if (have) {
            memcpy(buf, held, have);
        }
        free(held);
        memcpy(buf + have, in + fed, piece);
        held = buf;
        have += piece;
        fed += piece;
        for (;;) {
            rv = comet_resp_parse(parser, held, have, &consumed, &cmd);
            CHECK(consumed <= have);
            if (rv == APR_SUCCESS) {
                CHECK(consumed >= 1);
                check_cmd(&cmd, held, consumed, lim);
                log_cmd(log, &cmd);
                if (deep) {
                    check_reencoded(&cmd, lim, p);
                }
            }
            else if (rv == APR_INCOMPLETE) {
                if (consumed && deep) {
                    check_no_command(held, consumed, lim, p);
                }
            }
            else {
                const char *why = comet_resp_parser_error(parser);
                char byte = '*';

                CHECK(rv == COMET_EPROTO || rv == COMET_ETOOBIG);
                CHECK(consumed == 0);
                CHECK(why[0] != '\0');
                CHECK(strchr(why, '\r') == NULL && strchr(why, '\n') == NULL);
                /* Sticky. */
                CHECK(comet_resp_parse(parser, &byte, 1, &consumed, &cmd)
                      == rv);
                log_put(log, why, strlen(why));
                break;
            }
            memmove(held, held + consumed, have - consumed);
            have -= consumed;
            if (rv != APR_SUCCESS) {
                break;
            }
        }
    } while (rv == APR_SUCCESS || (rv == APR_INCOMPLETE && fed < n));
    log_put(log, &rv, sizeof(rv));
    if (rv == APR_INCOMPLETE) {
        /* Both runs keep the same unfinished bytes. */
        log_put(log, &have, sizeof(have));
        log_put(log, held, have);
    }
    free(held);
    apr_pool_destroy(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const apr_size_t args[] = { 1, 2, 3, 1024 };
    static const apr_size_t bulks[] = { 0, 1, 5, 300, 256 * 1024 + 1024 };
    static const apr_size_t inlines[] = { 1, 8, 300, 64 * 1024 };
    comet_resp_limits_t lim;
    log_t whole = { NULL, 0, 0 }, pieces = { NULL, 0, 0 };

    if (!root) {
        CHECK(apr_initialize() == APR_SUCCESS);
        CHECK(apr_pool_create(&root, NULL) == APR_SUCCESS);
    }
    if (size < 2) {
        return 0;
    }
    lim.max_args = args[data[0] & 3];
    lim.max_bulk = bulks[(data[0] >> 2) % 5];
    lim.max_inline = inlines[(data[0] >> 5) & 3];
    rng = 0x9e3779b9u ^ ((uint32_t)data[1] * 0x01000193u);
    data += 2;
    size -= 2;

    run(data, size, &lim, 0, &whole, 1);
    run(data, size, &lim, 1 + (rnd() & 0xff), &pieces, 0);
    CHECK(whole.len == pieces.len);
    CHECK(whole.len == 0 || memcmp(whole.p, pieces.p, whole.len) == 0);
    free(whole.p);
    free(pieces.p);
    return 0;
}
