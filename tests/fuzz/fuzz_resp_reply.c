/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * fuzz_resp_reply.c -- libFuzzer target for the RESP2/RESP3 reply parser
 * (comet_resp_reply.c), which reads what a Redis server sends back.
 *
 * Input: two bytes of settings, then the bytes a server sends.
 *   [0]     the limits (max_depth 1, 2, 4, 16; max_elements 1, 3, 64, 1M;
 *           max_bulk 1, 5, 300, 64M; max_line 1, 8, 300, 64K)
 *   [1]     the largest piece the stream is handed over in (1..256), and
 *           the seed of the piece sizes
 *
 * The stream is parsed twice: all at once, and in random pieces through a
 * caller's buffer that keeps only what the parser did not consume, copied
 * into a fresh allocation of exactly the bytes held before every call.
 * Checked:
 *   - consumed is 0 unless a reply is complete, then at least 1 and no more
 *     than was passed; an error consumes nothing, is sticky and has a
 *     one-line text;
 *   - each reply is a well-formed tree: every node's span is 1 plus its
 *     elements' spans, a map has an even number of elements, nesting of
 *     aggregates with elements and nodes within the limits, strings inside the consumed bytes and
 *     NUL-terminated there and within max_bulk or max_line, a bool 0 or 1;
 *     comet_resp_reply_child and _next agree with the spans;
 *   - both runs give the same replies and end alike;
 *   - each reply, written again in RESP3 and parsed by a new parser, gives
 *     the same tree.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <apr_general.h>
#include <apr_pools.h>

#include "comet_resp_reply.h"

#define CHECK(cond) do {                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "fuzz_resp_reply.c:%d: check failed: %s\n",    \
                    __LINE__, #cond);                                       \
            abort();                                                        \
        }                                                                   \
    } while (0)

static apr_pool_t *root;
static uint32_t rng;

static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

typedef struct {
    unsigned char *p;
    size_t         len, cap;
} bytes_t;

static void put(bytes_t *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        CHECK(b->p != NULL);
    }
    if (n) {
        memcpy(b->p + b->len, data, n);
    }
    b->len += n;
}

static void putf(bytes_t *b, const char *fmt, long long v)
{
    char tmp[64];
    int n = snprintf(tmp, sizeof(tmp), fmt, v);

    put(b, tmp, (size_t)n);
}

/* A node's content, for comparing trees (everything the API shows). */
static void log_node(bytes_t *log, const comet_resp_reply_t *n)
{
    put(log, &n->type, sizeof(n->type));
    put(log, &n->flags, sizeof(n->flags));
    put(log, &n->elements, sizeof(n->elements));
    put(log, &n->span, sizeof(n->span));
    switch (n->type) {
    case COMET_REPLY_INTEGER:
    case COMET_REPLY_BOOL:
        put(log, &n->integer, sizeof(n->integer));
        break;
    case COMET_REPLY_DOUBLE:
        put(log, &n->dval, sizeof(n->dval));
        /* fall through: its text too */
    case COMET_REPLY_STRING:
    case COMET_REPLY_ERROR:
    case COMET_REPLY_BIGNUM:
        put(log, &n->len, sizeof(n->len));
        put(log, n->str, n->len);
        if (n->flags & COMET_REPLY_F_VERBATIM) {
            put(log, n->format, 3);
        }
        break;
    }
}

/* Check the subtree at n (depth d); log it; returns its span. */
static size_t check_tree(const comet_resp_reply_t *n, size_t d,
                         const char *data, size_t consumed,
                         const comet_resp_reply_limits_t *lim, bytes_t *log)
{
    size_t span = 1;

    CHECK(n->type >= COMET_REPLY_STRING && n->type <= COMET_REPLY_PUSH);
    log_node(log, n);
    switch (n->type) {
    case COMET_REPLY_STRING:
    case COMET_REPLY_ERROR:
    case COMET_REPLY_DOUBLE:
    case COMET_REPLY_BIGNUM:
        CHECK(n->str >= data && n->str + n->len < data + consumed);
        CHECK(n->str[n->len] == '\0');
        CHECK(n->len <= lim->max_bulk || n->len <= lim->max_line);
        break;
    case COMET_REPLY_BOOL:
        CHECK(n->integer == 0 || n->integer == 1);
        break;
    }
    if (comet_resp_reply_aggregate(n)) {
        const comet_resp_reply_t *c = n + 1;

        /* The depth bound is on aggregates with elements, the ones that
         * need a place on the parser's stack; an empty one is a leaf. */
        CHECK(n->elements == 0 || d < lim->max_depth);
        if (n->type == COMET_REPLY_MAP) {
            CHECK(n->elements % 2 == 0);
        }
        for (size_t i = 0; i < n->elements; i++) {
            size_t s;

            CHECK(comet_resp_reply_child(n, i) == c);
            s = check_tree(c, d + 1, data, consumed, lim, log);
            CHECK(comet_resp_reply_next(c) == c + s);
            span += s;
            c += s;
        }
        CHECK(comet_resp_reply_child(n, n->elements) == NULL);
    }
    else {
        CHECK(n->elements == 0);
        CHECK(comet_resp_reply_child(n, 0) == NULL);
    }
    CHECK(n->span == span);
    return span;
}

/* The subtree at n in RESP3; 0 when it cannot be written back as it was
 * read (a simple string holding CR or LF). */
static int encode(const comet_resp_reply_t *n, bytes_t *out)
{
    const comet_resp_reply_t *c;

    switch (n->type) {
    case COMET_REPLY_STRING:
    case COMET_REPLY_ERROR:
        if (n->flags & COMET_REPLY_F_SIMPLE) {
            if (memchr(n->str, '\r', n->len) || memchr(n->str, '\n', n->len)) {
                return 0;
            }
            put(out, n->type == COMET_REPLY_ERROR ? "-" : "+", 1);
            put(out, n->str, n->len);
        }
        else if (n->flags & COMET_REPLY_F_VERBATIM) {
            putf(out, "=%lld\r\n", (long long)n->len + 4);
            put(out, n->format, 3);
            put(out, ":", 1);
            put(out, n->str, n->len);
        }
        else {
            putf(out, n->type == COMET_REPLY_ERROR ? "!%lld\r\n"
                                                   : "$%lld\r\n",
                 (long long)n->len);
            put(out, n->str, n->len);
        }
        break;
    case COMET_REPLY_INTEGER:
        putf(out, ":%lld", (long long)n->integer);
        break;
    case COMET_REPLY_NIL:
        put(out, "_", 1);
        break;
    case COMET_REPLY_DOUBLE:
        put(out, ",", 1);
        put(out, n->str, n->len);
        break;
    case COMET_REPLY_BOOL:
        put(out, n->integer ? "#t" : "#f", 2);
        break;
    case COMET_REPLY_BIGNUM:
        put(out, "(", 1);
        put(out, n->str, n->len);
        break;
    default:
        putf(out, n->type == COMET_REPLY_ARRAY ? "*%lld"
                  : n->type == COMET_REPLY_MAP ? "%%%lld"
                  : n->type == COMET_REPLY_SET ? "~%lld" : ">%lld",
             (long long)(n->type == COMET_REPLY_MAP ? n->elements / 2
                                                    : n->elements));
        put(out, "\r\n", 2);
        for (c = n + 1; c < n + n->span; c = comet_resp_reply_next(c)) {
            if (!encode(c, out)) {
                return 0;
            }
        }
        return 1;
    }
    put(out, "\r\n", 2);
    return 1;
}

static void check_reencoded(const comet_resp_reply_t *reply,
                            const bytes_t *want,
                            const comet_resp_reply_limits_t *lim,
                            apr_pool_t *p)
{
    comet_resp_reply_parser_t *parser;
    const comet_resp_reply_t *back;
    bytes_t out = { NULL, 0, 0 }, log = { NULL, 0, 0 };
    apr_size_t consumed;

    if (encode(reply, &out)) {
        CHECK(comet_resp_reply_parser_create(&parser, lim, p)
              == APR_SUCCESS);
        CHECK(comet_resp_reply_parse(parser, (char *)out.p, out.len,
                                     &consumed, &back) == APR_SUCCESS);
        CHECK(consumed == out.len);
        check_tree(back, 0, (char *)out.p, consumed, lim, &log);
        CHECK(log.len == want->len && !memcmp(log.p, want->p, log.len));
    }
    free(out.p);
    free(log.p);
}

static void run(const unsigned char *in, size_t n,
                const comet_resp_reply_limits_t *lim, size_t max_piece,
                bytes_t *log, int deep)
{
    apr_pool_t *p;
    comet_resp_reply_parser_t *parser;
    const comet_resp_reply_t *reply;
    char *held = NULL;
    size_t have = 0, fed = 0;
    apr_size_t consumed;
    apr_status_t rv = APR_INCOMPLETE;

    CHECK(apr_pool_create(&p, root) == APR_SUCCESS);
    CHECK(comet_resp_reply_parser_create(&parser, lim, p) == APR_SUCCESS);
    do {
        size_t piece = max_piece ? 1 + rnd() % max_piece : n - fed;
        char *buf;

        if (piece > n - fed) {
            piece = n - fed;
        }
        buf = malloc(have + piece + 1);
        CHECK(buf != NULL);
        if (have) {
            memcpy(buf, held, have);
        }
        free(held);
        memcpy(buf + have, in + fed, piece);
        held = buf;
        have += piece;
        fed += piece;
        for (;;) {
            rv = comet_resp_reply_parse(parser, held, have, &consumed,
                                        &reply);
            CHECK(consumed <= have);
            if (rv == APR_SUCCESS) {
                bytes_t one = { NULL, 0, 0 };

                CHECK(consumed >= 1);
                check_tree(reply, 0, held, consumed, lim, &one);
                CHECK(reply->span <= lim->max_elements);
                put(log, one.p, one.len);
                if (deep) {
                    check_reencoded(reply, &one, lim, p);
                }
                free(one.p);
            }
            else if (rv == APR_INCOMPLETE) {
                CHECK(consumed == 0);
            }
            else {
                const char *why = comet_resp_reply_error(parser);
                char byte = '+';

                CHECK(rv == COMET_EPROTO || rv == COMET_ETOOBIG);
                CHECK(consumed == 0);
                CHECK(why[0] != '\0');
                CHECK(!strchr(why, '\r') && !strchr(why, '\n'));
                CHECK(comet_resp_reply_parse(parser, &byte, 1, &consumed,
                                             &reply) == rv);
                put(log, why, strlen(why));
                break;
            }
            memmove(held, held + consumed, have - consumed);
            have -= consumed;
            if (rv != APR_SUCCESS) {
                break;
            }
        }
    } while (rv == APR_INCOMPLETE && fed < n);
    put(log, &rv, sizeof(rv));
    if (rv == APR_INCOMPLETE) {
        put(log, &have, sizeof(have));
        put(log, held, have);
    }
    free(held);
    apr_pool_destroy(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const apr_size_t depths[] = { 1, 2, 4, 16 };
    static const apr_size_t elements[] = { 1, 3, 64, 1024 * 1024 };
    static const apr_size_t bulks[] = { 1, 5, 300, 64 * 1024 * 1024 };
    static const apr_size_t lines[] = { 1, 8, 300, 64 * 1024 };
    comet_resp_reply_limits_t lim;
    bytes_t whole = { NULL, 0, 0 }, pieces = { NULL, 0, 0 };

    if (!root) {
        CHECK(apr_initialize() == APR_SUCCESS);
        CHECK(apr_pool_create(&root, NULL) == APR_SUCCESS);
    }
    if (size < 2) {
        return 0;
    }
    lim.max_depth = depths[data[0] & 3];
    lim.max_elements = elements[(data[0] >> 2) & 3];
    lim.max_bulk = bulks[(data[0] >> 4) & 3];
    lim.max_line = lines[(data[0] >> 6) & 3];
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
