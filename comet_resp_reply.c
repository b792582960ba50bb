/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <apr_strings.h>

#include "comet_resp_reply.h"

/* Between calls the parser is either before a type byte (IDLE: at pos a
 * new value starts, its line scanned for LF up to scan) or inside the
 * payload of a bulk, blob error or verbatim string (BULK).  All positions
 * are offsets from the first byte of the reply in progress, which is the
 * first byte of the caller's data. */
typedef enum {
    REPLY_IDLE,
    REPLY_BULK,
    REPLY_ERROR
} reply_state_e;

/* An aggregate whose elements are being read. */
typedef struct reply_frame_t {
    apr_size_t node;        /* its node                                  */
    apr_size_t remaining;   /* elements still to come                    */
    int        attr;        /* an attribute: dropped when complete       */
} reply_frame_t;

struct comet_resp_reply_parser_t {
    comet_resp_reply_limits_t limits;
    apr_pool_t         *pool;
    reply_state_e       state;
    apr_size_t          pos;
    apr_size_t          scan;
    /* The reply so far, in pre-order. */
    comet_resp_reply_t *nodes;
    apr_size_t          nnodes;
    apr_size_t          cap;
    /* Open aggregates, innermost last. */
    reply_frame_t      *stack;
    apr_size_t          depth;
    /* Elements declared by the open aggregates and not begun yet: each
     * will be at least one node, so a count is refused as soon as it would
     * take the reply past max_elements. */
    apr_size_t          promised;
    /* BULK: the node being filled and its declared length. */
    apr_size_t          bulk_node;
    apr_size_t          bulk_len;
    apr_status_t        err;
    char                errmsg[96];
};

void comet_resp_reply_limits_default(comet_resp_reply_limits_t *limits)
{
    limits->max_depth = COMET_RESP_REPLY_MAX_DEPTH_DEFAULT;
    limits->max_elements = COMET_RESP_REPLY_MAX_ELEMENTS_DEFAULT;
    limits->max_bulk = COMET_RESP_REPLY_MAX_BULK_DEFAULT;
    limits->max_line = COMET_RESP_REPLY_MAX_LINE_DEFAULT;
}

apr_status_t comet_resp_reply_parser_create(comet_resp_reply_parser_t **pp,
                                            const comet_resp_reply_limits_t
                                                *limits,
                                            apr_pool_t *p)
{
    comet_resp_reply_parser_t *parser = apr_pcalloc(p, sizeof(*parser));

    if (limits) {
        parser->limits = *limits;
    }
    else {
        comet_resp_reply_limits_default(&parser->limits);
    }
    if (!parser->limits.max_depth || !parser->limits.max_elements
        || !parser->limits.max_line) {
        return APR_EINVAL;
    }
    parser->pool = p;
    parser->stack = apr_palloc(p, parser->limits.max_depth
                                  * sizeof(*parser->stack));
    *pp = parser;
    return APR_SUCCESS;
}

void comet_resp_reply_reset(comet_resp_reply_parser_t *parser)
{
    parser->state = REPLY_IDLE;
    parser->pos = parser->scan = 0;
    parser->nnodes = parser->depth = parser->promised = 0;
    parser->bulk_node = parser->bulk_len = 0;
    parser->err = APR_SUCCESS;
    parser->errmsg[0] = '\0';
}

const char *comet_resp_reply_error(const comet_resp_reply_parser_t *parser)
{
    return parser->errmsg;
}

static apr_status_t fail(comet_resp_reply_parser_t *parser, apr_status_t rv,
                         const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static apr_status_t fail(comet_resp_reply_parser_t *parser, apr_status_t rv,
                         const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    apr_vsnprintf(parser->errmsg, sizeof(parser->errmsg), fmt, ap);
    va_end(ap);
    parser->state = REPLY_ERROR;
    parser->err = rv;
    return rv;
}

/* A new zeroed node at the end; its index in *idx. */
static apr_status_t new_node(comet_resp_reply_parser_t *parser, int type,
                             apr_size_t *idx)
{
    comet_resp_reply_t *n;

    if (parser->depth) {
        /* One of the elements its aggregate declared. */
        parser->promised--;
    }
    if (parser->nnodes + parser->promised >= parser->limits.max_elements) {
        return fail(parser, COMET_ETOOBIG, "reply has more than %lu elements",
                    (unsigned long)parser->limits.max_elements);
    }
    if (parser->nnodes == parser->cap) {
        apr_size_t cap = parser->cap ? parser->cap * 2 : 16;
        comet_resp_reply_t *nodes;

        if (cap > parser->limits.max_elements) {
            cap = parser->limits.max_elements;
        }
        nodes = apr_palloc(parser->pool, cap * sizeof(*nodes));
        if (!nodes) {
            return fail(parser, APR_ENOMEM, "out of memory");
        }
        if (parser->nnodes) {
            memcpy(nodes, parser->nodes, parser->nnodes * sizeof(*nodes));
        }
        parser->nodes = nodes;
        parser->cap = cap;
    }
    n = &parser->nodes[parser->nnodes];
    memset(n, 0, sizeof(*n));
    n->type = type;
    n->span = 1;
    *idx = parser->nnodes++;
    return APR_SUCCESS;
}

/* [-+]?digits in s[0, len) into *v; 0 on anything else or overflow. */
static int parse_int64(const char *s, apr_size_t len, apr_int64_t *v)
{
    apr_uint64_t val = 0, limit;
    apr_size_t i = 0;
    int neg = 0;

    if (len && (s[0] == '-' || s[0] == '+')) {
        neg = s[0] == '-';
        i = 1;
    }
    if (i == len) {
        return 0;
    }
    limit = neg ? (apr_uint64_t)APR_INT64_MAX + 1
                : (apr_uint64_t)APR_INT64_MAX;
    for (; i < len; i++) {
        unsigned d;

        if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
        d = (unsigned)(s[i] - '0');
        if (val > (limit - d) / 10) {
            return 0;
        }
        val = val * 10 + d;
    }
    *v = neg ? (apr_int64_t)(0 - val) : (apr_int64_t)val;
    return 1;
}

/* A RESP3 double: what Redis writes (%.17g, "inf", "-inf", "nan").  The
 * C library's strtod takes more (hex floats, "infinity"), which is
 * harmless; the text is copied so that it is NUL-terminated for strtod. */
static int parse_double(const char *s, apr_size_t len, double *v)
{
    char text[64];
    char *end;

    if (len == 0 || len >= sizeof(text)) {
        return 0;
    }
    memcpy(text, s, len);
    text[len] = '\0';
    *v = strtod(text, &end);
    return end == text + len;
}

/* An attribute is metadata about what follows: forget it.  It was no
 * element of its parent, which still waits for the one it declared. */
static void drop_attribute(comet_resp_reply_parser_t *parser, apr_size_t node)
{
    parser->nnodes = node;
    if (parser->depth) {
        parser->promised++;
    }
}

/* One element of the innermost open aggregate is complete (or, with none
 * open, the reply): close every aggregate this completes. */
static int element_done(comet_resp_reply_parser_t *parser)
{
    while (parser->depth) {
        reply_frame_t *f = &parser->stack[parser->depth - 1];

        if (--f->remaining) {
            return 0;
        }
        parser->nodes[f->node].span = parser->nnodes - f->node;
        parser->depth--;
        if (f->attr) {
            drop_attribute(parser, f->node);
            return 0;
        }
    }
    return 1;
}

static apr_status_t open_aggregate(comet_resp_reply_parser_t *parser,
                                   char type, apr_int64_t n, int *done)
{
    const comet_resp_reply_limits_t *lim = &parser->limits;
    int attr = type == '|';
    apr_size_t idx, elements;
    apr_status_t rv;
    int t;

    switch (type) {
    case '*': t = COMET_REPLY_ARRAY; break;
    case '%': t = COMET_REPLY_MAP; break;
    case '~': t = COMET_REPLY_SET; break;
    case '>': t = COMET_REPLY_PUSH; break;
    default:  t = COMET_REPLY_MAP; break;      /* '|' */
    }
    if (n == -1 && type == '*') {
        /* RESP2's null array. */
        if ((rv = new_node(parser, COMET_REPLY_NIL, &idx)) != APR_SUCCESS) {
            return rv;
        }
        *done = element_done(parser);
        return APR_SUCCESS;
    }
    if (n < 0) {
        return fail(parser, COMET_EPROTO,
                    "Protocol error: invalid aggregate length");
    }
    if ((apr_uint64_t)n > lim->max_elements) {
        return fail(parser, COMET_ETOOBIG, "reply has more than %lu elements",
                    (unsigned long)lim->max_elements);
    }
    elements = (apr_size_t)n * ((type == '%' || attr) ? 2 : 1);
    if ((rv = new_node(parser, t, &idx)) != APR_SUCCESS) {
        return rv;
    }
    if (parser->nnodes + parser->promised + elements > lim->max_elements) {
        return fail(parser, COMET_ETOOBIG, "reply has more than %lu elements",
                    (unsigned long)lim->max_elements);
    }
    parser->nodes[idx].elements = elements;
    if (elements == 0) {
        if (attr) {
            drop_attribute(parser, idx);
            return APR_SUCCESS;
        }
        *done = element_done(parser);
        return APR_SUCCESS;
    }
    if (parser->depth == lim->max_depth) {
        return fail(parser, COMET_ETOOBIG,
                    "reply nested deeper than %lu levels",
                    (unsigned long)lim->max_depth);
    }
    parser->stack[parser->depth].node = idx;
    parser->stack[parser->depth].remaining = elements;
    parser->stack[parser->depth].attr = attr;
    parser->depth++;
    parser->promised += elements;
    return APR_SUCCESS;
}

/* The line data[pos, eol) after a type byte, eol at its CR. */
static apr_status_t parse_line(comet_resp_reply_parser_t *parser, char *data,
                               apr_size_t eol, int *done)
{
    apr_size_t start = parser->pos + 1, len = eol - start, idx;
    const char *s = data + start;
    char type = data[parser->pos];
    comet_resp_reply_t *n;
    apr_status_t rv;
    apr_int64_t v;

    switch (type) {
    case '+':
    case '-':
    case '(':
        if ((rv = new_node(parser, type == '-' ? COMET_REPLY_ERROR
                                   : type == '+' ? COMET_REPLY_STRING
                                   : COMET_REPLY_BIGNUM, &idx))
            != APR_SUCCESS) {
            return rv;
        }
        n = &parser->nodes[idx];
        if (type == '(' && !parse_int64(s, len, &v)) {
            /* Beyond 64 bits is the point of a big number: check only
             * the shape. */
            apr_size_t i = (len && (s[0] == '-' || s[0] == '+')) ? 1 : 0;

            if (i == len) {
                goto bad_line;
            }
            for (; i < len; i++) {
                if (s[i] < '0' || s[i] > '9') {
                    goto bad_line;
                }
            }
        }
        n->flags = type == '(' ? 0 : COMET_REPLY_F_SIMPLE;
        n->off_ = start;
        n->len = len;
        break;

    case ':':
        if (!parse_int64(s, len, &v)) {
            goto bad_line;
        }
        if ((rv = new_node(parser, COMET_REPLY_INTEGER, &idx))
            != APR_SUCCESS) {
            return rv;
        }
        parser->nodes[idx].integer = v;
        break;

    case ',':
        {
            double d;

            if (!parse_double(s, len, &d)) {
                goto bad_line;
            }
            if ((rv = new_node(parser, COMET_REPLY_DOUBLE, &idx))
                != APR_SUCCESS) {
                return rv;
            }
            n = &parser->nodes[idx];
            n->dval = d;
            n->off_ = start;
            n->len = len;
        }
        break;

    case '#':
        if (len != 1 || (s[0] != 't' && s[0] != 'f')) {
            goto bad_line;
        }
        if ((rv = new_node(parser, COMET_REPLY_BOOL, &idx)) != APR_SUCCESS) {
            return rv;
        }
        parser->nodes[idx].integer = s[0] == 't';
        break;

    case '_':
        if (len != 0) {
            goto bad_line;
        }
        if ((rv = new_node(parser, COMET_REPLY_NIL, &idx)) != APR_SUCCESS) {
            return rv;
        }
        break;

    case '$':
    case '!':
    case '=':
        if (len == 1 && s[0] == '?') {
            return fail(parser, COMET_EPROTO,
                        "Protocol error: streamed strings are not supported");
        }
        if (!parse_int64(s, len, &v) || (v < 0 && !(v == -1 && type == '$'))) {
            return fail(parser, COMET_EPROTO,
                        "Protocol error: invalid bulk length");
        }
        if (v == -1) {
            if ((rv = new_node(parser, COMET_REPLY_NIL, &idx))
                != APR_SUCCESS) {
                return rv;
            }
            break;
        }
        if ((apr_uint64_t)v > parser->limits.max_bulk) {
            return fail(parser, COMET_ETOOBIG,
                        "reply string longer than %lu bytes",
                        (unsigned long)parser->limits.max_bulk);
        }
        if (type == '=' && v < 4) {
            return fail(parser, COMET_EPROTO,
                        "Protocol error: invalid verbatim string");
        }
        if ((rv = new_node(parser, type == '!' ? COMET_REPLY_ERROR
                                               : COMET_REPLY_STRING, &idx))
            != APR_SUCCESS) {
            return rv;
        }
        if (type == '=') {
            parser->nodes[idx].flags = COMET_REPLY_F_VERBATIM;
        }
        parser->bulk_node = idx;
        parser->bulk_len = (apr_size_t)v;
        parser->state = REPLY_BULK;
        return APR_SUCCESS;

    case '*':
    case '%':
    case '~':
    case '>':
    case '|':
        if (len == 1 && s[0] == '?') {
            return fail(parser, COMET_EPROTO, "Protocol error: streamed "
                        "aggregates are not supported");
        }
        if (!parse_int64(s, len, &v)) {
            return fail(parser, COMET_EPROTO,
                        "Protocol error: invalid aggregate length");
        }
        return open_aggregate(parser, type, v, done);

    default:
        {
            unsigned char c = (unsigned char)type;

            return fail(parser, COMET_EPROTO,
                        "Protocol error: unknown reply type '%c'",
                        c >= 0x20 && c < 0x7f ? c : '?');
        }
    }
    *done = element_done(parser);
    return APR_SUCCESS;

bad_line:
    return fail(parser, COMET_EPROTO, "Protocol error: invalid '%c' line",
                type);
}

apr_status_t comet_resp_reply_parse(comet_resp_reply_parser_t *parser,
                                    char *data, apr_size_t len,
                                    apr_size_t *consumed,
                                    const comet_resp_reply_t **reply)
{
    apr_status_t rv;
    apr_size_t i;
    int done = 0;

    *consumed = 0;
    if (parser->state == REPLY_ERROR) {
        return parser->err;
    }
    if (parser->pos > len || parser->scan > len) {
        return APR_EINVAL;
    }
    while (!done) {
        if (parser->state == REPLY_BULK) {
            comet_resp_reply_t *n = &parser->nodes[parser->bulk_node];

            if (len - parser->pos < parser->bulk_len + 2) {
                return APR_INCOMPLETE;
            }
            i = parser->pos + parser->bulk_len;
            if (data[i] != '\r' || data[i + 1] != '\n') {
                return fail(parser, COMET_EPROTO,
                            "Protocol error: expected CRLF after bulk string");
            }
            n->off_ = parser->pos;
            n->len = parser->bulk_len;
            if (n->flags & COMET_REPLY_F_VERBATIM) {
                if (data[parser->pos + 3] != ':') {
                    return fail(parser, COMET_EPROTO,
                                "Protocol error: invalid verbatim string");
                }
                memcpy(n->format, data + parser->pos, 3);
                n->format[3] = '\0';
                n->off_ += 4;
                n->len -= 4;
            }
            parser->pos = i + 2;
            parser->scan = parser->pos;
            parser->state = REPLY_IDLE;
            done = element_done(parser);
            continue;
        }

        /* IDLE: a type byte and its line. */
        {
            apr_size_t from = parser->scan > parser->pos ? parser->scan
                                                         : parser->pos + 1;
            apr_size_t seen;
            char *nl;

            if (parser->pos >= len) {
                return APR_INCOMPLETE;
            }
            nl = from < len ? memchr(data + from, '\n', len - from) : NULL;
            if (!nl) {
                /* The line so far, less the type byte and a CR that may
                 * be the first half of its end. */
                seen = len - parser->pos - 1;
                if (seen && data[len - 1] == '\r') {
                    seen--;
                }
                parser->scan = len;
                if (seen > parser->limits.max_line) {
                    return fail(parser, COMET_ETOOBIG,
                                "reply line longer than %lu bytes",
                                (unsigned long)parser->limits.max_line);
                }
                return APR_INCOMPLETE;
            }
            i = (apr_size_t)(nl - data);
            /* The length first, counted as above (a CR before the LF is
             * not the line's): a line that would have been too long had
             * its LF come in a later read is too long now. */
            seen = i - (parser->pos + 1);
            if (seen && data[i - 1] == '\r') {
                seen--;
            }
            if (seen > parser->limits.max_line) {
                return fail(parser, COMET_ETOOBIG,
                            "reply line longer than %lu bytes",
                            (unsigned long)parser->limits.max_line);
            }
            if (i < parser->pos + 2 || data[i - 1] != '\r') {
                return fail(parser, COMET_EPROTO,
                            "Protocol error: reply line without CRLF");
            }
            if ((rv = parse_line(parser, data, i - 1, &done))
                != APR_SUCCESS) {
                return rv;
            }
            parser->pos = i + 1;
            parser->scan = parser->pos;
        }
    }

    /* Complete: offsets become pointers, and each string gets its NUL
     * over the CR that follows it (checked above). */
    for (i = 0; i < parser->nnodes; i++) {
        comet_resp_reply_t *n = &parser->nodes[i];

        if (n->type == COMET_REPLY_STRING || n->type == COMET_REPLY_ERROR
            || n->type == COMET_REPLY_DOUBLE
            || n->type == COMET_REPLY_BIGNUM) {
            char *s = data + n->off_;

            s[n->len] = '\0';
            n->str = s;
        }
    }
    *reply = parser->nodes;
    *consumed = parser->pos;
    parser->pos = parser->scan = 0;
    parser->nnodes = 0;
    parser->state = REPLY_IDLE;
    return APR_SUCCESS;
}

/* ---- walking ------------------------------------------------------------ */

int comet_resp_reply_aggregate(const comet_resp_reply_t *n)
{
    return n->type == COMET_REPLY_ARRAY || n->type == COMET_REPLY_MAP
           || n->type == COMET_REPLY_SET || n->type == COMET_REPLY_PUSH;
}

const comet_resp_reply_t *comet_resp_reply_child(const comet_resp_reply_t *n,
                                                 apr_size_t i)
{
    const comet_resp_reply_t *c;

    if (!n || !comet_resp_reply_aggregate(n) || i >= n->elements) {
        return NULL;
    }
    for (c = n + 1; i; i--) {
        c = comet_resp_reply_next(c);
    }
    return c;
}

int comet_resp_reply_is(const comet_resp_reply_t *n, const char *s,
                        int nocase)
{
    apr_size_t len = strlen(s);

    if (!n || n->type != COMET_REPLY_STRING || n->len != len) {
        return 0;
    }
    return nocase ? strncasecmp(n->str, s, len) == 0
                  : memcmp(n->str, s, len) == 0;
}

const comet_resp_reply_t *comet_resp_reply_get(const comet_resp_reply_t *n,
                                               const char *key)
{
    const comet_resp_reply_t *k;
    apr_size_t i;

    if (!n || (n->type != COMET_REPLY_MAP && n->type != COMET_REPLY_ARRAY)) {
        return NULL;
    }
    k = n + 1;
    for (i = 0; i + 1 < n->elements; i += 2) {
        const comet_resp_reply_t *v = comet_resp_reply_next(k);

        if (comet_resp_reply_is(k, key, 0)) {
            return v;
        }
        k = comet_resp_reply_next(v);
    }
    return NULL;
}
