/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_json.c -- the client publishing envelope (see comet_json.h).
 *
 * A cursor over the bytes; each reader either advances it past what it
 * accepted or fails with a reason.  Strings are unescaped into the
 * caller's scratch; values other than strings are only checked (their
 * text is used as it is), with an explicit stack of open brackets instead
 * of recursion, so no input can run the stack out.
 */

#include <string.h>

#include "comet_json.h"
#include "comet_ws.h"

typedef struct jcur_t {
    const unsigned char *p, *end;
    char       *out;          /* scratch, for unescaped strings */
    const char *why;
} jcur_t;

static int fail(jcur_t *c, const char *why)
{
    if (!c->why) {
        c->why = why;
    }
    return 0;
}

static void skip_ws(jcur_t *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n'
                             || *c->p == '\r')) {
        c->p++;
    }
}

static int hex4(const unsigned char *p, unsigned *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char h = p[i];

        *v <<= 4;
        if (h >= '0' && h <= '9') {
            *v |= (unsigned)(h - '0');
        }
        else if (h >= 'a' && h <= 'f') {
            *v |= (unsigned)(h - 'a' + 10);
        }
        else if (h >= 'A' && h <= 'F') {
            *v |= (unsigned)(h - 'A' + 10);
        }
        else {
            return 0;
        }
    }
    return 1;
}

static char *put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        *o++ = (char)cp;
    }
    else if (cp < 0x800) {
        *o++ = (char)(0xc0 | (cp >> 6));
        *o++ = (char)(0x80 | (cp & 0x3f));
    }
    else if (cp < 0x10000) {
        *o++ = (char)(0xe0 | (cp >> 12));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *o++ = (char)(0x80 | (cp & 0x3f));
    }
    else {
        *o++ = (char)(0xf0 | (cp >> 18));
        *o++ = (char)(0x80 | ((cp >> 12) & 0x3f));
        *o++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *o++ = (char)(0x80 | (cp & 0x3f));
    }
    return o;
}

/* A string at the cursor (which is on its opening quote).  With unescape,
 * its value goes to c->out and *s, *len name it; else it is only checked.
 * An escape takes at least as many bytes as what it stands for (\uXXXX is
 * 6 bytes for at most 3; a surrogate pair 12 for 4), so the value never
 * outgrows its text and scratch of the text's size is enough. */
static int read_string(jcur_t *c, int unescape, const char **s,
                       apr_size_t *len)
{
    char *o = c->out, *start = c->out;

    c->p++;
    for (;;) {
        unsigned char ch;

        if (c->p >= c->end) {
            return fail(c, "unterminated string");
        }
        ch = *c->p++;
        if (ch == '"') {
            break;
        }
        if (ch < 0x20) {
            return fail(c, "control character in a string");
        }
        if (ch != '\\') {
            if (unescape) {
                *o++ = (char)ch;
            }
            continue;
        }
        if (c->p >= c->end) {
            return fail(c, "unterminated string");
        }
        ch = *c->p++;
        switch (ch) {
        case '"': case '\\': case '/':
            break;
        case 'b': ch = '\b'; break;
        case 'f': ch = '\f'; break;
        case 'n': ch = '\n'; break;
        case 'r': ch = '\r'; break;
        case 't': ch = '\t'; break;
        case 'u': {
            unsigned cp, lo;

            if (c->end - c->p < 4 || !hex4(c->p, &cp)) {
                return fail(c, "bad \\u escape");
            }
            c->p += 4;
            if (cp >= 0xdc00 && cp <= 0xdfff) {
                return fail(c, "lone low surrogate in a \\u escape");
            }
            if (cp >= 0xd800 && cp <= 0xdbff) {
                if (c->end - c->p < 6 || c->p[0] != '\\' || c->p[1] != 'u'
                    || !hex4(c->p + 2, &lo) || lo < 0xdc00 || lo > 0xdfff) {
                    return fail(c, "lone high surrogate in a \\u escape");
                }
                c->p += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            if (unescape) {
                o = put_utf8(o, cp);
            }
            continue;
        }
        default:
            return fail(c, "bad escape in a string");
        }
        if (unescape) {
            *o++ = (char)ch;
        }
    }
    if (unescape) {
        *s = start;
        *len = (apr_size_t)(o - start);
        c->out = o;
    }
    return 1;
}

static int is_digit(const jcur_t *c)
{
    return c->p < c->end && *c->p >= '0' && *c->p <= '9';
}

static int read_number(jcur_t *c)
{
    if (c->p < c->end && *c->p == '-') {
        c->p++;
    }
    if (!is_digit(c)) {
        return fail(c, "bad number");
    }
    if (*c->p == '0') {
        c->p++;
    }
    else {
        while (is_digit(c)) {
            c->p++;
        }
    }
    if (c->p < c->end && *c->p == '.') {
        c->p++;
        if (!is_digit(c)) {
            return fail(c, "bad number");
        }
        while (is_digit(c)) {
            c->p++;
        }
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-')) {
            c->p++;
        }
        if (!is_digit(c)) {
            return fail(c, "bad number");
        }
        while (is_digit(c)) {
            c->p++;
        }
    }
    return 1;
}

static int read_literal(jcur_t *c, const char *lit, apr_size_t n)
{
    if ((apr_size_t)(c->end - c->p) < n || memcmp(c->p, lit, n)) {
        return fail(c, "unexpected character");
    }
    c->p += n;
    return 1;
}

/* Any one value, checked, not kept.  Open brackets are kept in a stack:
 * '{' or '[' each, and after each member or element the next byte must be
 * a comma or the matching close. */
static int skip_value(jcur_t *c)
{
    char stack[COMET_JSON_MAX_DEPTH];
    int depth = 0;

    for (;;) {
        /* A value. */
        skip_ws(c);
        if (c->p >= c->end) {
            return fail(c, "value expected");
        }
        switch (*c->p) {
        case '{':
        case '[':
            if (depth == COMET_JSON_MAX_DEPTH) {
                return fail(c, "nested too deeply");
            }
            stack[depth++] = (char)*c->p++;
            skip_ws(c);
            if (c->p < c->end && *c->p == (stack[depth - 1] == '{' ? '}'
                                                                : ']')) {
                c->p++;
                depth--;
                goto after_value;
            }
            if (stack[depth - 1] == '{') {
                goto member;
            }
            continue;
        case '"':
            if (!read_string(c, 0, NULL, NULL)) {
                return 0;
            }
            break;
        case 't':
            if (!read_literal(c, "true", 4)) {
                return 0;
            }
            break;
        case 'f':
            if (!read_literal(c, "false", 5)) {
                return 0;
            }
            break;
        case 'n':
            if (!read_literal(c, "null", 4)) {
                return 0;
            }
            break;
        default:
            if (*c->p != '-' && (*c->p < '0' || *c->p > '9')) {
                return fail(c, "value expected");
            }
            if (!read_number(c)) {
                return 0;
            }
            break;
        }
    after_value:
        /* What follows a value: the end, a comma, or a close. */
        for (;;) {
            if (!depth) {
                return 1;
            }
            skip_ws(c);
            if (c->p >= c->end) {
                return fail(c, "unterminated array or object");
            }
            if (*c->p == ',') {
                c->p++;
                if (stack[depth - 1] == '{') {
                    goto member;
                }
                break;
            }
            if (*c->p != (stack[depth - 1] == '{' ? '}' : ']')) {
                return fail(c, "comma or close expected");
            }
            c->p++;
            depth--;
        }
        continue;
    member:
        /* A member's name and colon; its value comes next. */
        skip_ws(c);
        if (c->p >= c->end || *c->p != '"') {
            return fail(c, "member name expected");
        }
        if (!read_string(c, 0, NULL, NULL)) {
            return 0;
        }
        skip_ws(c);
        if (c->p >= c->end || *c->p != ':') {
            return fail(c, "colon expected");
        }
        c->p++;
    }
}

static int name_is(const char *s, apr_size_t len, const char *lit)
{
    return len == strlen(lit) && !memcmp(s, lit, len);
}

apr_status_t comet_json_envelope(const char *text, apr_size_t len,
                                 char *scratch, comet_json_envelope_t *env,
                                 const char **why)
{
    jcur_t c;
    int have_channel = 0, have_data = 0, have_event = 0;

    memset(env, 0, sizeof(*env));
    c.p = (const unsigned char *)text;
    c.end = c.p + len;
    c.out = scratch;
    c.why = NULL;
    if (!text || !comet_ws_utf8_valid(text, len)) {
        *why = "not UTF-8";
        return APR_EINVAL;
    }
    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{') {
        *why = "not a JSON object";
        return APR_EINVAL;
    }
    c.p++;
    skip_ws(&c);
    if (c.p < c.end && *c.p == '}') {
        c.p++;
    }
    else {
        for (;;) {
            const char *name;
            apr_size_t nlen;

            skip_ws(&c);
            if (c.p >= c.end || *c.p != '"') {
                fail(&c, "member name expected");
                goto bad;
            }
            if (!read_string(&c, 1, &name, &nlen)) {
                goto bad;
            }
            skip_ws(&c);
            if (c.p >= c.end || *c.p != ':') {
                fail(&c, "colon expected");
                goto bad;
            }
            c.p++;
            skip_ws(&c);
            if (name_is(name, nlen, "channel")
                || name_is(name, nlen, "event")) {
                int is_channel = name[0] == 'c';
                int *have = is_channel ? &have_channel : &have_event;

                if (*have) {
                    fail(&c, is_channel ? "\"channel\" given twice"
                                        : "\"event\" given twice");
                    goto bad;
                }
                if (c.p >= c.end || *c.p != '"') {
                    fail(&c, is_channel ? "\"channel\" must be a string"
                                        : "\"event\" must be a string");
                    goto bad;
                }
                if (!read_string(&c, 1,
                                 is_channel ? &env->channel : &env->event,
                                 is_channel ? &env->channel_len
                                            : &env->event_len)) {
                    goto bad;
                }
                *have = 1;
            }
            else if (name_is(name, nlen, "data")) {
                if (have_data) {
                    fail(&c, "\"data\" given twice");
                    goto bad;
                }
                if (c.p < c.end && *c.p == '"') {
                    if (!read_string(&c, 1, &env->data, &env->data_len)) {
                        goto bad;
                    }
                }
                else {
                    const unsigned char *start = c.p;

                    if (!skip_value(&c)) {
                        goto bad;
                    }
                    env->data = (const char *)start;
                    env->data_len = (apr_size_t)(c.p - start);
                }
                have_data = 1;
            }
            else {
                fail(&c, "unknown member (only channel, event and data)");
                goto bad;
            }
            skip_ws(&c);
            if (c.p < c.end && *c.p == ',') {
                c.p++;
                continue;
            }
            if (c.p < c.end && *c.p == '}') {
                c.p++;
                break;
            }
            fail(&c, "comma or close expected");
            goto bad;
        }
    }
    skip_ws(&c);
    if (c.p != c.end) {
        fail(&c, "bytes after the object");
        goto bad;
    }
    if (!have_channel) {
        fail(&c, "\"channel\" missing");
        goto bad;
    }
    if (!have_data) {
        fail(&c, "\"data\" missing");
        goto bad;
    }
    return APR_SUCCESS;

bad:
    memset(env, 0, sizeof(*env));
    *why = c.why;
    return APR_EINVAL;
}
