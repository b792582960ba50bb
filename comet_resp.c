/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <apr_strings.h>

#include "comet_resp.h"

/* Where the parser is between two calls.  All positions are offsets into
 * the caller's data, counted from the first byte it has not consumed. */
typedef enum {
    RESP_IDLE,      /* before a command: at pos starts "*..." or a line   */
    RESP_ARRAY,     /* inside "*<n>": pos is at the next "$<len>" header  */
    RESP_BULK,      /* pos is at the first byte of a bulk of bulk_len     */
    RESP_INLINE,    /* an inline line starts at pos; scanned up to scan   */
    RESP_ERROR
} resp_state_e;

struct comet_resp_parser_t {
    comet_resp_limits_t limits;
    apr_pool_t         *pool;
    resp_state_e        state;
    apr_size_t          pos;
    apr_size_t          scan;
    apr_size_t          nargs;      /* declared by "*<n>"              */
    apr_size_t          argc;       /* arguments complete so far       */
    apr_size_t          bulk_len;
    /* Three arrays of cap entries, grown together. */
    apr_size_t          cap;
    apr_size_t         *arg_off;
    apr_size_t         *arg_len;
    char              **argv;
    apr_status_t        err;
    char                errmsg[80];
};

void comet_resp_limits_default(comet_resp_limits_t *limits)
{
    limits->max_args = COMET_RESP_MAX_ARGS_DEFAULT;
    limits->max_bulk = COMET_RESP_MAX_BULK_DEFAULT;
    limits->max_inline = COMET_RESP_MAX_INLINE_DEFAULT;
}

apr_status_t comet_resp_parser_create(comet_resp_parser_t **parserp,
                                      const comet_resp_limits_t *limits,
                                      apr_pool_t *p)
{
    comet_resp_parser_t *parser = apr_pcalloc(p, sizeof(*parser));

    if (limits) {
        parser->limits = *limits;
    }
    else {
        comet_resp_limits_default(&parser->limits);
    }
    if (parser->limits.max_args == 0 || parser->limits.max_inline == 0) {
        return APR_EINVAL;
    }
    parser->pool = p;
    *parserp = parser;
    return APR_SUCCESS;
}

void comet_resp_parser_reset(comet_resp_parser_t *parser)
{
    parser->state = RESP_IDLE;
    parser->pos = parser->scan = 0;
    parser->nargs = parser->argc = parser->bulk_len = 0;
    parser->err = APR_SUCCESS;
    parser->errmsg[0] = '\0';
}

const char *comet_resp_parser_error(const comet_resp_parser_t *parser)
{
    return parser->errmsg;
}

static apr_status_t fail(comet_resp_parser_t *parser, apr_status_t rv,
                         const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static apr_status_t fail(comet_resp_parser_t *parser, apr_status_t rv,
                         const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    apr_vsnprintf(parser->errmsg, sizeof(parser->errmsg), fmt, ap);
    va_end(ap);
    parser->state = RESP_ERROR;
    parser->err = rv;
    return rv;
}

/* Room for n arguments.  Grown by doubling in the pool: the copies left
 * behind add up to less than the final size, which max_args bounds. */
static apr_status_t ensure_args(comet_resp_parser_t *parser, apr_size_t n)
{
    apr_size_t cap = parser->cap ? parser->cap : 8;
    apr_size_t *off, *len;
    char **argv;

    if (n <= parser->cap) {
        return APR_SUCCESS;
    }
    while (cap < n) {
        cap *= 2;
    }
    if (cap > parser->limits.max_args) {
        cap = parser->limits.max_args;
    }
    off = apr_palloc(parser->pool, cap * sizeof(*off));
    len = apr_palloc(parser->pool, cap * sizeof(*len));
    argv = apr_palloc(parser->pool, cap * sizeof(*argv));
    if (!off || !len || !argv) {
        return APR_ENOMEM;
    }
    if (parser->cap) {
        memcpy(off, parser->arg_off, parser->cap * sizeof(*off));
        memcpy(len, parser->arg_len, parser->cap * sizeof(*len));
    }
    parser->arg_off = off;
    parser->arg_len = len;
    parser->argv = argv;
    parser->cap = cap;
    return APR_SUCCESS;
}

/* "<digits>\r\n" or "-<digits>\r\n" at data[i]: 1 with *v and *next (the
 * offset after the LF), 0 when the bytes so far are a valid beginning,
 * -1 on anything else.  18 digits bound the value far below overflow. */
static int parse_count(const char *data, apr_size_t i, apr_size_t len,
                       apr_int64_t *v, apr_size_t *next)
{
    apr_int64_t val = 0;
    int neg = 0, digits = 0;

    if (i < len && data[i] == '-') {
        neg = 1;
        i++;
    }
    while (i < len && data[i] >= '0' && data[i] <= '9') {
        if (++digits > 18) {
            return -1;
        }
        val = val * 10 + (data[i] - '0');
        i++;
    }
    if (i == len) {
        return 0;
    }
    if (digits == 0 || data[i] != '\r') {
        return -1;
    }
    if (i + 1 == len) {
        return 0;
    }
    if (data[i + 1] != '\n') {
        return -1;
    }
    *v = neg ? -val : val;
    *next = i + 2;
    return 1;
}

/* What Redis counts as blanks between inline words (isspace() in the C
 * locale, spelled out so that no locale changes it). */
#define RESP_SPACE(c) ((c) == ' ' || (c) == '\t' || (c) == '\n' \
                       || (c) == '\r' || (c) == '\v' || (c) == '\f')

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Split the inline line s[start, end) into words, unescaping in place.
 * Each word's NUL goes where the writer stands after it, which is never
 * past the byte the reader has just finished with (s[end] is the line's
 * CR or LF), so no NUL lands on a byte still to be read. */
static apr_status_t split_inline(comet_resp_parser_t *parser, char *s,
                                 apr_size_t start, apr_size_t end)
{
    apr_size_t r = start, w, word;
    apr_status_t rv;

    parser->argc = 0;
    for (;;) {
        int dq = 0, sq = 0, done = 0;

        while (r < end && RESP_SPACE(s[r])) {
            r++;
        }
        if (r == end) {
            return APR_SUCCESS;
        }
        if (parser->argc == parser->limits.max_args) {
            return fail(parser, COMET_EPROTO,
                        "Protocol error: too many arguments");
        }
        if ((rv = ensure_args(parser, parser->argc + 1)) != APR_SUCCESS) {
            return fail(parser, rv, "out of memory");
        }
        word = w = r;
        while (!done) {
            if (dq) {
                if (r == end) {
                    goto unbalanced;
                }
                if (s[r] == '\\' && r + 3 < end && s[r + 1] == 'x'
                    && hex_value(s[r + 2]) >= 0 && hex_value(s[r + 3]) >= 0) {
                    s[w++] = (char)(hex_value(s[r + 2]) * 16
                                    + hex_value(s[r + 3]));
                    r += 4;
                }
                else if (s[r] == '\\' && r + 1 < end) {
                    char c = s[r + 1];

                    switch (c) {
                    case 'n': c = '\n'; break;
                    case 'r': c = '\r'; break;
                    case 't': c = '\t'; break;
                    case 'b': c = '\b'; break;
                    case 'a': c = '\a'; break;
                    default: break;
                    }
                    s[w++] = c;
                    r += 2;
                }
                else if (s[r] == '"') {
                    r++;
                    if (r < end && !RESP_SPACE(s[r])) {
                        goto unbalanced;
                    }
                    done = 1;
                }
                else {
                    s[w++] = s[r++];
                }
            }
            else if (sq) {
                if (r == end) {
                    goto unbalanced;
                }
                if (s[r] == '\\' && r + 1 < end && s[r + 1] == '\'') {
                    s[w++] = '\'';
                    r += 2;
                }
                else if (s[r] == '\'') {
                    r++;
                    if (r < end && !RESP_SPACE(s[r])) {
                        goto unbalanced;
                    }
                    done = 1;
                }
                else {
                    s[w++] = s[r++];
                }
            }
            else if (r == end) {
                done = 1;
            }
            else if (RESP_SPACE(s[r])) {
                r++;
                done = 1;
            }
            else if (s[r] == '"') {
                dq = 1;
                r++;
            }
            else if (s[r] == '\'') {
                sq = 1;
                r++;
            }
            else {
                s[w++] = s[r++];
            }
        }
        parser->arg_off[parser->argc] = word;
        parser->arg_len[parser->argc] = w - word;
        parser->argc++;
        s[w] = '\0';
    }

unbalanced:
    return fail(parser, COMET_EPROTO,
                "Protocol error: unbalanced quotes in request");
}

/* Drop the bytes before the command in progress from the parser's
 * offsets, as the caller drops them from its buffer. */
static void rebase(comet_resp_parser_t *parser, apr_size_t by)
{
    apr_size_t i;

    parser->pos -= by;
    parser->scan = parser->scan > by ? parser->scan - by : 0;
    for (i = 0; i < parser->argc; i++) {
        parser->arg_off[i] -= by;
    }
}

apr_status_t comet_resp_parse(comet_resp_parser_t *parser, char *data,
                              apr_size_t len, apr_size_t *consumed,
                              comet_resp_cmd_t *cmd)
{
    const comet_resp_limits_t *lim = &parser->limits;
    apr_size_t start = 0;       /* where the command in progress begins */
    apr_size_t i, next;
    apr_int64_t n;
    apr_status_t rv;
    char *nl;
    int got;

    *consumed = 0;
    if (parser->state == RESP_ERROR) {
        return parser->err;
    }
    if (parser->pos > len || parser->scan > len) {
        /* The caller passed fewer bytes than it had already shown us. */
        return APR_EINVAL;
    }
    /* A command in progress began at offset 0 (all before it was consumed
     * by the previous call); an idle parser starts at pos. */
    if (parser->state == RESP_IDLE) {
        start = parser->pos;
    }

    for (;;) {
        switch (parser->state) {
        case RESP_IDLE:
            start = parser->pos;
            if (parser->pos >= len) {
                goto incomplete;
            }
            if (data[parser->pos] != '*') {
                parser->state = RESP_INLINE;
                parser->scan = parser->pos;
                break;
            }
            got = parse_count(data, parser->pos + 1, len, &n, &next);
            if (got == 0) {
                goto incomplete;
            }
            if (got < 0 || n < 0) {
                return fail(parser, COMET_EPROTO,
                            "Protocol error: invalid multibulk length");
            }
            if ((apr_uint64_t)n > lim->max_args) {
                return fail(parser, COMET_EPROTO,
                            "Protocol error: too many arguments");
            }
            parser->pos = next;
            if (n == 0) {
                /* "*0": nothing to do, as in Redis. */
                break;
            }
            parser->nargs = (apr_size_t)n;
            parser->argc = 0;
            parser->state = RESP_ARRAY;
            break;

        case RESP_ARRAY:
            if (parser->argc == parser->nargs) {
                goto complete;
            }
            if (parser->pos >= len) {
                goto incomplete;
            }
            if (data[parser->pos] != '$') {
                unsigned char c = (unsigned char)data[parser->pos];

                return fail(parser, COMET_EPROTO,
                            "Protocol error: expected '$', got '%c'",
                            c >= 0x20 && c < 0x7f ? c : '?');
            }
            got = parse_count(data, parser->pos + 1, len, &n, &next);
            if (got == 0) {
                goto incomplete;
            }
            if (got < 0 || n < 0) {
                return fail(parser, COMET_EPROTO,
                            "Protocol error: invalid bulk length");
            }
            if ((apr_uint64_t)n > lim->max_bulk) {
                return fail(parser, COMET_ETOOBIG,
                            "message larger than maximum message size");
            }
            if ((rv = ensure_args(parser, parser->argc + 1)) != APR_SUCCESS) {
                return fail(parser, rv, "out of memory");
            }
            parser->bulk_len = (apr_size_t)n;
            parser->pos = next;
            parser->state = RESP_BULK;
            break;

        case RESP_BULK:
            if (len - parser->pos < parser->bulk_len + 2) {
                goto incomplete;
            }
            i = parser->pos + parser->bulk_len;
            if (data[i] != '\r' || data[i + 1] != '\n') {
                return fail(parser, COMET_EPROTO,
                            "Protocol error: expected CRLF after bulk string");
            }
            parser->arg_off[parser->argc] = parser->pos;
            parser->arg_len[parser->argc] = parser->bulk_len;
            parser->argc++;
            parser->pos = i + 2;
            parser->state = RESP_ARRAY;
            break;

        case RESP_INLINE:
            nl = memchr(data + parser->scan, '\n', len - parser->scan);
            if (!nl) {
                /* The limit is on the line without its CR LF; a CR at
                 * the end may be the first half of that. */
                i = len;
                if (i > parser->pos && data[i - 1] == '\r') {
                    i--;
                }
                parser->scan = len;
                if (i - parser->pos > lim->max_inline) {
                    return fail(parser, COMET_EPROTO,
                                "Protocol error: too big inline request");
                }
                goto incomplete;
            }
            next = (apr_size_t)(nl - data);
            i = next;
            if (i > parser->pos && data[i - 1] == '\r') {
                i--;
            }
            if (i - parser->pos > lim->max_inline) {
                return fail(parser, COMET_EPROTO,
                            "Protocol error: too big inline request");
            }
            if ((rv = split_inline(parser, data, parser->pos, i))
                != APR_SUCCESS) {
                return rv;
            }
            parser->pos = next + 1;
            if (parser->argc == 0) {
                /* A blank line: skipped, like Redis does. */
                parser->state = RESP_IDLE;
                break;
            }
            goto complete;

        case RESP_ERROR:
            return parser->err;
        }
    }

complete:
    /* Only now that nothing more will be read may the NULs be written
     * (for bulks: over the CR checked above). */
    for (i = 0; i < parser->argc; i++) {
        parser->argv[i] = data + parser->arg_off[i];
        parser->argv[i][parser->arg_len[i]] = '\0';
    }
    cmd->argc = parser->argc;
    cmd->argv = parser->argv;
    cmd->argv_len = parser->arg_len;
    *consumed = parser->pos;
    parser->state = RESP_IDLE;
    parser->pos = parser->scan = 0;
    parser->argc = parser->nargs = 0;
    return APR_SUCCESS;

incomplete:
    /* Blank input before the command in progress is done with. */
    *consumed = start;
    if (start) {
        rebase(parser, start);
    }
    return APR_INCOMPLETE;
}

/* ---- replies ------------------------------------------------------------ */

/* <type><s>\r\n with CR and LF in s written as spaces. */
static apr_status_t put_line(comet_buf_t *out, char type, const char *s,
                             apr_size_t len)
{
    apr_status_t rv;
    apr_size_t i;
    char *p;

    if (len > (apr_size_t)-1 - 3) {
        return APR_ENOSPC;
    }
    if ((rv = comet_buf_reserve(out, len + 3)) != APR_SUCCESS) {
        return rv;
    }
    p = out->data + out->len;
    *p++ = type;
    for (i = 0; i < len; i++) {
        p[i] = (s[i] == '\r' || s[i] == '\n') ? ' ' : s[i];
    }
    p[len] = '\r';
    p[len + 1] = '\n';
    out->len += len + 3;
    return APR_SUCCESS;
}

static apr_status_t put_count(comet_buf_t *out, char type, apr_int64_t n)
{
    char line[32];
    int len = apr_snprintf(line, sizeof(line), "%c%" APR_INT64_T_FMT "\r\n",
                           type, n);

    return comet_buf_append(out, line, (apr_size_t)len);
}

apr_status_t comet_resp_simple(comet_buf_t *out, const char *s,
                               apr_size_t len)
{
    return put_line(out, '+', s, len);
}

apr_status_t comet_resp_error(comet_buf_t *out, const char *s,
                              apr_size_t len)
{
    return put_line(out, '-', s, len);
}

apr_status_t comet_resp_errorf(comet_buf_t *out, const char *fmt, ...)
{
    /* Error texts are short; a longer one is cut rather than refused. */
    char text[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (n < 0) {
        return APR_EINVAL;
    }
    if ((apr_size_t)n >= sizeof(text)) {
        n = sizeof(text) - 1;
    }
    return put_line(out, '-', text, (apr_size_t)n);
}

apr_status_t comet_resp_integer(comet_buf_t *out, apr_int64_t v)
{
    return put_count(out, ':', v);
}

apr_status_t comet_resp_bulk(comet_buf_t *out, const void *data,
                             apr_size_t len)
{
    apr_size_t start = out->len;
    apr_status_t rv;

    if ((rv = put_count(out, '$', (apr_int64_t)len)) == APR_SUCCESS
        && (rv = comet_buf_append(out, data, len)) == APR_SUCCESS
        && (rv = comet_buf_append(out, "\r\n", 2)) == APR_SUCCESS) {
        return APR_SUCCESS;
    }
    comet_buf_truncate(out, start);
    return rv;
}

apr_status_t comet_resp_null(comet_buf_t *out, int proto)
{
    return proto >= COMET_RESP3 ? comet_buf_append(out, "_\r\n", 3)
                                : comet_buf_append(out, "$-1\r\n", 5);
}

apr_status_t comet_resp_array(comet_buf_t *out, apr_size_t n)
{
    return put_count(out, '*', (apr_int64_t)n);
}

apr_status_t comet_resp_map(comet_buf_t *out, int proto, apr_size_t n)
{
    return proto >= COMET_RESP3 ? put_count(out, '%', (apr_int64_t)n)
                                : put_count(out, '*', 2 * (apr_int64_t)n);
}

apr_status_t comet_resp_push(comet_buf_t *out, int proto, apr_size_t n)
{
    return proto >= COMET_RESP3 ? put_count(out, '>', (apr_int64_t)n)
                                : put_count(out, '*', (apr_int64_t)n);
}
