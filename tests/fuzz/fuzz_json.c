/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * fuzz_json.c -- libFuzzer target for the JSON that long-poll and ndjson
 * subscribers get (comet_frame.c, comet_render.c), with arbitrary bytes in
 * every string: payload, event type, channel, id.
 *
 * Input: four bytes of settings, then the event type, the channel, the id,
 * and the payload (whatever is left).
 *   [0]     bits 0-1: the buffer's bound (96, 600, 4096 bytes, or 16 MB);
 *           bits 2-3: messages (1..3); bit 4: missed; bit 5: deleted;
 *           bit 6: chunked
 *   [1]     length of the event type (0..63)
 *   [2]     length of the channel (0..31) and of the id (0..7, times 4)
 *   [3]     seed of how the payload is split and of the times
 *
 * Every document is read by a strict RFC 8259 parser written here: the
 * text must be UTF-8 (RFC 8259, 8.1), the grammar exact (no leading zeros,
 * no raw control characters in strings, only the escapes of section 7,
 * surrogate escapes only in pairs), no duplicate names, nothing after the
 * value.  Its strings decode to code points, which must be the input's
 * bytes read by the rule comet_frame.h documents: a valid UTF-8 sequence
 * is its code point, any other byte b is U+00b (\u00XX).  Checked:
 *   - comet_frame_json_string of the payload alone;
 *   - a long-poll body (comet_frame_poll_begin/_add/_end): exactly the
 *     members id, missed, messages; each message exactly channel, id,
 *     [event when typed], time (the integer Unix ms), data; a message that
 *     does not fit leaves the buffer as it was;
 *   - comet_render_poll of a store read: the document's id is the
 *     position after every message, each message carries its own id;
 *   - ndjson (comet_frame_ndjson, _missed, _deleted, _keepalive, and
 *     comet_render_stream, chunked or not): one JSON object per line, no
 *     raw LF inside one; a frame that does not fit leaves nothing.
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <apr_general.h>
#include <apr_pools.h>
#include <apr_strings.h>
#include <apr_tables.h>

#include "comet_frame.h"
#include "comet_render.h"
#include "comet_ids.h"

#define CHECK(cond) do {                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "fuzz_json.c:%d: check failed: %s\n",          \
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

/* ---- UTF-8 (RFC 3629) ------------------------------------------------------ */

/* The code point of the valid sequence at s (*n its length), or -1. */
static long utf8_decode(const unsigned char *s, size_t avail, size_t *n)
{
    unsigned long cp;
    size_t len;

    if (s[0] < 0x80) {
        *n = 1;
        return s[0];
    }
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        len = 2;
        cp = s[0] & 0x1f;
    }
    else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        len = 3;
        cp = s[0] & 0x0f;
    }
    else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        len = 4;
        cp = s[0] & 0x07;
    }
    else {
        return -1;
    }
    if (avail < len) {
        return -1;
    }
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return -1;
        }
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    /* Shortest form only; no surrogates; at most U+10FFFF. */
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)
        || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) {
        return -1;
    }
    *n = len;
    return (long)cp;
}

/* ---- code point strings ---------------------------------------------------- */

typedef struct {
    uint32_t *cp;
    size_t    len, cap;
} ustr_t;

static void u_put(ustr_t *u, uint32_t c)
{
    if (u->len == u->cap) {
        u->cap = u->cap * 2 + 16;
        u->cp = realloc(u->cp, u->cap * sizeof(*u->cp));
        CHECK(u->cp != NULL);
    }
    u->cp[u->len++] = c;
}

/* What a JSON reader must get for bytes s: comet_frame.h's rule. */
static void expect_string(ustr_t *u, const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0, n;

    u->len = 0;
    while (i < len) {
        long cp = utf8_decode(s + i, len - i, &n);

        if (cp < 0) {
            u_put(u, s[i]);
            i++;
        }
        else {
            u_put(u, (uint32_t)cp);
            i += n;
        }
    }
}

static int u_eq(const ustr_t *a, const ustr_t *b)
{
    return a->len == b->len
           && (a->len == 0 || !memcmp(a->cp, b->cp, a->len * sizeof(*a->cp)));
}

/* ---- a strict RFC 8259 parser ---------------------------------------------- */

enum { J_OBJ, J_ARR, J_STR, J_NUM, J_TRUE, J_FALSE, J_NULL };

typedef struct jnode_t jnode_t;
struct jnode_t {
    int       type;
    ustr_t    key;      /* the member's name, inside an object */
    ustr_t    str;      /* J_STR */
    char      num[64];  /* J_NUM text (longer ones are cut; not used) */
    jnode_t  *child, *next;
};

typedef struct {
    const unsigned char *s;
    size_t               len, i;
    int                  depth;
} jparser_t;

static void jfree(jnode_t *n)
{
    while (n) {
        jnode_t *next = n->next;

        jfree(n->child);
        free(n->key.cp);
        free(n->str.cp);
        free(n);
        n = next;
    }
}

static void jws(jparser_t *p)
{
    while (p->i < p->len && (p->s[p->i] == ' ' || p->s[p->i] == '\t'
                             || p->s[p->i] == '\n' || p->s[p->i] == '\r')) {
        p->i++;
    }
}

static int jhex4(jparser_t *p, unsigned *v)
{
    *v = 0;
    if (p->len - p->i < 4) {
        return 0;
    }
    for (int k = 0; k < 4; k++) {
        unsigned char c = p->s[p->i++];

        *v <<= 4;
        if (c >= '0' && c <= '9') {
            *v |= c - '0';
        }
        else if (c >= 'a' && c <= 'f') {
            *v |= c - 'a' + 10;
        }
        else if (c >= 'A' && c <= 'F') {
            *v |= c - 'A' + 10;
        }
        else {
            return 0;
        }
    }
    return 1;
}

/* A string at p->i (the opening quote); 0 when malformed. */
static int jstring(jparser_t *p, ustr_t *out)
{
    if (p->i >= p->len || p->s[p->i] != '"') {
        return 0;
    }
    p->i++;
    for (;;) {
        unsigned char c;

        if (p->i >= p->len) {
            return 0;
        }
        c = p->s[p->i];
        if (c == '"') {
            p->i++;
            return 1;
        }
        if (c < 0x20) {
            return 0;       /* raw control characters are not allowed */
        }
        if (c == '\\') {
            unsigned v, lo;

            if (++p->i >= p->len) {
                return 0;
            }
            switch (p->s[p->i++]) {
            case '"':  u_put(out, '"');  break;
            case '\\': u_put(out, '\\'); break;
            case '/':  u_put(out, '/');  break;
            case 'b':  u_put(out, 8);    break;
            case 'f':  u_put(out, 12);   break;
            case 'n':  u_put(out, 10);   break;
            case 'r':  u_put(out, 13);   break;
            case 't':  u_put(out, 9);    break;
            case 'u':
                if (!jhex4(p, &v)) {
                    return 0;
                }
                if (v >= 0xdc00 && v <= 0xdfff) {
                    return 0;       /* a low surrogate alone */
                }
                if (v >= 0xd800 && v <= 0xdbff) {
                    if (p->len - p->i < 6 || p->s[p->i] != '\\'
                        || p->s[p->i + 1] != 'u') {
                        return 0;
                    }
                    p->i += 2;
                    if (!jhex4(p, &lo) || lo < 0xdc00 || lo > 0xdfff) {
                        return 0;
                    }
                    v = 0x10000 + ((v - 0xd800) << 10) + (lo - 0xdc00);
                }
                u_put(out, v);
                break;
            default:
                return 0;
            }
        }
        else {
            size_t n;
            long cp = utf8_decode(p->s + p->i, p->len - p->i, &n);

            if (cp < 0) {
                return 0;   /* JSON text is UTF-8 */
            }
            u_put(out, (uint32_t)cp);
            p->i += n;
        }
    }
}

static int jdigits(jparser_t *p)
{
    size_t start = p->i;

    while (p->i < p->len && p->s[p->i] >= '0' && p->s[p->i] <= '9') {
        p->i++;
    }
    return p->i > start;
}

static int jnumber(jparser_t *p, jnode_t *n)
{
    size_t start = p->i, len;

    if (p->i < p->len && p->s[p->i] == '-') {
        p->i++;
    }
    if (p->i < p->len && p->s[p->i] == '0') {
        p->i++;
    }
    else if (!(p->i < p->len && p->s[p->i] >= '1' && p->s[p->i] <= '9')
             || !jdigits(p)) {
        return 0;
    }
    if (p->i < p->len && p->s[p->i] == '.') {
        p->i++;
        if (!jdigits(p)) {
            return 0;
        }
    }
    if (p->i < p->len && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
        p->i++;
        if (p->i < p->len && (p->s[p->i] == '+' || p->s[p->i] == '-')) {
            p->i++;
        }
        if (!jdigits(p)) {
            return 0;
        }
    }
    len = p->i - start;
    if (len >= sizeof(n->num)) {
        len = sizeof(n->num) - 1;
    }
    memcpy(n->num, p->s + start, len);
    n->num[len] = '\0';
    return 1;
}

static int jliteral(jparser_t *p, const char *lit)
{
    size_t n = strlen(lit);

    if (p->len - p->i < n || memcmp(p->s + p->i, lit, n)) {
        return 0;
    }
    p->i += n;
    return 1;
}

static jnode_t *jvalue(jparser_t *p);

static jnode_t *jnew(int type)
{
    jnode_t *n = calloc(1, sizeof(*n));

    CHECK(n != NULL);
    n->type = type;
    return n;
}

/* Members or elements after the opening bracket. */
static int jcontainer(jparser_t *p, jnode_t *n, int object, char close)
{
    jnode_t **tail = &n->child;

    jws(p);
    if (p->i < p->len && p->s[p->i] == close) {
        p->i++;
        return 1;
    }
    for (;;) {
        ustr_t key = { NULL, 0, 0 };
        jnode_t *v;

        if (object) {
            jws(p);
            if (!jstring(p, &key)) {
                free(key.cp);
                return 0;
            }
            /* Names are unique (a strict reader; RFC 8259, 4). */
            for (jnode_t *m = n->child; m; m = m->next) {
                if (u_eq(&m->key, &key)) {
                    free(key.cp);
                    return 0;
                }
            }
            jws(p);
            if (p->i >= p->len || p->s[p->i] != ':') {
                free(key.cp);
                return 0;
            }
            p->i++;
        }
        if (!(v = jvalue(p))) {
            free(key.cp);
            return 0;
        }
        v->key = key;
        *tail = v;
        tail = &v->next;
        jws(p);
        if (p->i >= p->len) {
            return 0;
        }
        if (p->s[p->i] == close) {
            p->i++;
            return 1;
        }
        if (p->s[p->i++] != ',') {
            return 0;
        }
    }
}

static jnode_t *jvalue(jparser_t *p)
{
    jnode_t *n = NULL;
    int ok = 0;

    jws(p);
    if (p->i >= p->len || ++p->depth > 64) {
        return NULL;
    }
    switch (p->s[p->i]) {
    case '{':
        p->i++;
        n = jnew(J_OBJ);
        ok = jcontainer(p, n, 1, '}');
        break;
    case '[':
        p->i++;
        n = jnew(J_ARR);
        ok = jcontainer(p, n, 0, ']');
        break;
    case '"':
        n = jnew(J_STR);
        ok = jstring(p, &n->str);
        break;
    case 't':
        n = jnew(J_TRUE);
        ok = jliteral(p, "true");
        break;
    case 'f':
        n = jnew(J_FALSE);
        ok = jliteral(p, "false");
        break;
    case 'n':
        n = jnew(J_NULL);
        ok = jliteral(p, "null");
        break;
    default:
        n = jnew(J_NUM);
        ok = jnumber(p, n);
        break;
    }
    p->depth--;
    if (!ok) {
        jfree(n);
        return NULL;
    }
    return n;
}

/* A whole JSON text: one value, optional whitespace around it; the
 * document must parse (the encoder never writes anything else). */
static jnode_t *jparse(const char *s, size_t len)
{
    jparser_t p;
    jnode_t *n;

    p.s = (const unsigned char *)s;
    p.len = len;
    p.i = 0;
    p.depth = 0;
    n = jvalue(&p);
    CHECK(n != NULL);
    jws(&p);
    CHECK(p.i == len);
    return n;
}

/* The member name of an object, or NULL. */
static jnode_t *jget(jnode_t *obj, const char *name)
{
    ustr_t key = { NULL, 0, 0 };
    jnode_t *m;

    CHECK(obj->type == J_OBJ);
    expect_string(&key, name, strlen(name));
    for (m = obj->child; m && !u_eq(&m->key, &key); m = m->next) {
    }
    free(key.cp);
    return m;
}

static int jcount(const jnode_t *n)
{
    int k = 0;

    for (const jnode_t *c = n->child; c; c = c->next) {
        k++;
    }
    return k;
}

/* A string member with exactly the bytes s (read by the rule). */
static void check_str(jnode_t *obj, const char *name, const char *s,
                      size_t len)
{
    jnode_t *m = jget(obj, name);
    ustr_t want = { NULL, 0, 0 };

    CHECK(m != NULL && m->type == J_STR);
    expect_string(&want, s, len);
    CHECK(u_eq(&m->str, &want));
    free(want.cp);
}

/* ---- the paths ----------------------------------------------------------------- */

typedef struct {
    comet_frame_msg_t msg[3];
    int               nmsgs, missed, deleted, chunked;
    apr_size_t        bound;
    const char       *id;       /* the next id of a long-poll */
    size_t            id_len;
} input_t;

/* One message object as comet_frame.h describes it. */
static void check_msg(jnode_t *o, const comet_frame_msg_t *m)
{
    char num[32];
    jnode_t *t;

    CHECK(o->type == J_OBJ);
    CHECK(jcount(o) == 4 + (m->event && m->event_len ? 1 : 0));
    check_str(o, "channel", m->channel, m->channel_len);
    check_str(o, "id", m->id, m->id_len);
    if (m->event && m->event_len) {
        check_str(o, "event", m->event, m->event_len);
    }
    check_str(o, "data", m->data, m->data_len);
    t = jget(o, "time");
    CHECK(t != NULL && t->type == J_NUM);
    snprintf(num, sizeof(num), "%lld", (long long)apr_time_as_msec(m->time));
    CHECK(!strcmp(t->num, num));
}

static void path_string(const input_t *in, apr_pool_t *p)
{
    comet_buf_t *buf;
    jnode_t *n;
    ustr_t want = { NULL, 0, 0 };
    const comet_frame_msg_t *m = &in->msg[0];

    CHECK(comet_buf_create(&buf, p, 0, 16 << 20) == APR_SUCCESS);
    CHECK(comet_frame_json_string(buf, m->data, m->data_len) == APR_SUCCESS);
    n = jparse(buf->data, buf->len);
    CHECK(n->type == J_STR);
    expect_string(&want, m->data, m->data_len);
    CHECK(u_eq(&n->str, &want));
    /* Valid UTF-8 without controls, quote or backslash is written as it
     * is, between the quotes. */
    {
        size_t i = 0, k;
        int plain = 1;

        while (plain && i < m->data_len) {
            unsigned char c = (unsigned char)m->data[i];

            plain = c >= 0x20 && c != '"' && c != '\\'
                    && utf8_decode((const unsigned char *)m->data + i,
                                   m->data_len - i, &k) >= 0;
            i += plain ? k : 0;
        }
        if (plain) {
            CHECK(buf->len == m->data_len + 2);
            CHECK(m->data_len == 0
                  || !memcmp(buf->data + 1, m->data, m->data_len));
        }
    }
    free(want.cp);
    jfree(n);
}

/* All or nothing: on failure the buffer is exactly as before. */
static void check_unchanged(const comet_buf_t *buf, const char *before,
                            apr_size_t len, apr_status_t rv)
{
    CHECK(rv == APR_ENOSPC);
    CHECK(buf->len == len);
    CHECK(len == 0 || memcmp(buf->data, before, len) == 0);
}

/* A long-poll body by hand: begin, the messages that fit, end. */
static void path_poll(const input_t *in, apr_pool_t *p)
{
    comet_frame_poll_t poll;
    comet_buf_t *buf;
    jnode_t *doc, *msgs, *e, *missed;
    int added = 0;

    CHECK(comet_buf_create(&buf, p, 0, in->bound) == APR_SUCCESS);
    if (comet_frame_poll_begin(&poll, buf, in->id, in->id_len, in->missed)
        != APR_SUCCESS) {
        CHECK(buf->len == 0);
        return;
    }
    for (int i = 0; i < in->nmsgs; i++) {
        apr_size_t len = buf->len;
        char *before = apr_pmemdup(p, buf->data, len);
        apr_status_t rv = comet_frame_poll_add(&poll, &in->msg[i]);

        if (rv != APR_SUCCESS) {
            check_unchanged(buf, before, len, rv);
            continue;   /* a later, smaller one may still fit */
        }
        /* Which ones went in, in order (bit i). */
        added |= 1 << i;
    }
    if (comet_frame_poll_end(&poll) != APR_SUCCESS) {
        return;
    }
    doc = jparse(buf->data, buf->len);
    CHECK(doc->type == J_OBJ && jcount(doc) == 3);
    check_str(doc, "id", in->id, in->id_len);
    missed = jget(doc, "missed");
    CHECK(missed && missed->type == (in->missed ? J_TRUE : J_FALSE));
    msgs = jget(doc, "messages");
    CHECK(msgs && msgs->type == J_ARR);
    e = msgs->child;
    for (int i = 0; i < in->nmsgs; i++) {
        if (added & (1 << i)) {
            CHECK(e != NULL);
            check_msg(e, &in->msg[i]);
            e = e->next;
        }
    }
    CHECK(e == NULL);
    jfree(doc);
}

static const char *const channels[] = { "room1", "b/c-2", "x" };

/* A store read of the input's messages (seqs 10, 13, 16). */
static comet_read_t *make_read(const input_t *in, apr_pool_t *p)
{
    comet_read_t *rd = apr_pcalloc(p, sizeof(*rd));

    rd->msgs = apr_array_make(p, 3, sizeof(comet_msg_t));
    rd->missed = in->missed;
    rd->deleted = in->deleted;
    for (int i = 0; i < in->nmsgs; i++) {
        comet_msg_t *m = apr_array_push(rd->msgs);

        m->id.epoch = 0x1f03a9c2;
        m->id.seq = 10 + 3 * (apr_uint64_t)i;
        m->published = in->msg[i].time;
        m->event = in->msg[i].event;
        m->event_len = in->msg[i].event_len;
        m->data = in->msg[i].data;
        m->data_len = in->msg[i].data_len;
        /* As the store reads: the channel's newest is its last message. */
        rd->newest = m->id;
    }
    return rd;
}

/* comet_render_poll: channel 1 of three gets the read; the document's id
 * is the compound position after it. */
static void path_render_poll(const input_t *in, apr_pool_t *p)
{
    apr_uint64_t seqs[3] = { 4, 5, 6 };
    const comet_read_t *reads[3] = { NULL, NULL, NULL };
    comet_read_t *rd = make_read(in, p);
    comet_buf_t *buf, *tmp;
    jnode_t *doc, *e;
    char text[COMET_MSGID_COMPOUND_MAXLEN(3)];
    apr_status_t rv;
    int i, complete = 0;

    reads[1] = rd;
    CHECK(comet_buf_create(&buf, p, 0, in->bound) == APR_SUCCESS);
    CHECK(comet_buf_create(&tmp, p, 0, in->bound) == APR_SUCCESS);
    /* No limit: every message of the read goes in, or nothing fits. */
    rv = comet_render_poll(buf, tmp, 0x1f03a9c2, channels, seqs, 3, reads,
                           in->missed, 0, &complete);
    if (rv != APR_SUCCESS) {
        CHECK(rv == APR_ENOSPC);
        return;
    }
    CHECK(complete);
    CHECK(seqs[0] == 4 && seqs[2] == 6);
    CHECK(seqs[1] == 10 + 3 * (apr_uint64_t)(in->nmsgs - 1));
    doc = jparse(buf->data, buf->len);
    CHECK(doc->type == J_OBJ && jcount(doc) == 3);
    check_str(doc, "id", text,
              comet_render_position_id(text, 0x1f03a9c2, seqs, 3));
    e = jget(doc, "messages");
    CHECK(e && e->type == J_ARR && jcount(e) == in->nmsgs);
    for (i = 0, e = e->child; e; e = e->next, i++) {
        const comet_msg_t *m = &APR_ARRAY_IDX(rd->msgs, i, comet_msg_t);
        comet_frame_msg_t fm;
        char one[COMET_MSGID_MAXLEN];

        memset(&fm, 0, sizeof(fm));
        fm.channel = channels[1];
        fm.channel_len = strlen(channels[1]);
        fm.id_len = comet_msgid_format(one, &m->id);
        fm.id = one;
        fm.event = m->event;
        fm.event_len = m->event_len;
        fm.data = m->data;
        fm.data_len = m->data_len;
        fm.time = m->published;
        check_msg(e, &fm);
    }
    jfree(doc);
}

/* Lines of an ndjson stream: each one JSON object (the keepalive: an
 * empty line).  Returns the number of objects, parsed into objs. */
static int split_lines(const char *s, size_t len, jnode_t **objs, int max)
{
    size_t i = 0;
    int n = 0;

    while (i < len) {
        const char *nl = memchr(s + i, '\n', len - i);
        size_t end;

        CHECK(nl != NULL);          /* every frame ends its line */
        end = (size_t)(nl - s);
        if (end > i) {
            CHECK(n < max);
            objs[n] = jparse(s + i, end - i);
            CHECK(objs[n]->type == J_OBJ);
            n++;
        }
        i = end + 1;
    }
    return n;
}

/* De-chunk strictly (see fuzz_sse.c). */
static char *dechunk(const char *s, size_t len, size_t *outlen)
{
    char *out = malloc(len + 1);
    size_t i = 0, o = 0;

    CHECK(out != NULL);
    while (i < len) {
        size_t n = 0, digits = 0;

        while (i < len && ((s[i] >= '0' && s[i] <= '9')
                           || (s[i] >= 'a' && s[i] <= 'f'))) {
            CHECK(!(digits == 0 && s[i] == '0'));
            n = n * 16 + (size_t)(s[i] <= '9' ? s[i] - '0' : s[i] - 'a' + 10);
            digits++;
            i++;
        }
        CHECK(digits >= 1 && digits <= 14 && n > 0);
        CHECK(i + 2 <= len && s[i] == '\r' && s[i + 1] == '\n');
        i += 2;
        CHECK(n <= len - i && len - i - n >= 2);
        memcpy(out + o, s + i, n);
        o += n;
        i += n;
        CHECK(s[i] == '\r' && s[i + 1] == '\n');
        i += 2;
    }
    *outlen = o;
    return out;
}

/* The ndjson frames by hand, then comet_render_stream of a read. */
static void path_ndjson(const input_t *in, apr_pool_t *p)
{
    comet_buf_t *buf;
    jnode_t *objs[16], *f;
    apr_uint64_t seqs[1] = { 9 };
    const char *chan = in->msg[0].channel;
    size_t clen = in->msg[0].channel_len, plen;
    char *plain;
    int n, k = 0;
    apr_status_t rv;

    CHECK(comet_buf_create(&buf, p, 0, in->bound) == APR_SUCCESS);
    for (int i = 0; i < in->nmsgs; i++) {
        apr_size_t len = buf->len;
        char *before = apr_pmemdup(p, buf->data, len);

        rv = comet_frame_ndjson(buf, &in->msg[i]);
        if (rv != APR_SUCCESS) {
            check_unchanged(buf, before, len, rv);
            return;
        }
    }
    if (comet_frame_ndjson_keepalive(buf) != APR_SUCCESS
        || comet_frame_ndjson_missed(buf, chan, clen) != APR_SUCCESS
        || comet_frame_ndjson_deleted(buf, chan, clen) != APR_SUCCESS) {
        return;
    }
    n = split_lines(buf->data, buf->len, objs, 16);
    CHECK(n == in->nmsgs + 2);
    for (int i = 0; i < in->nmsgs; i++) {
        check_msg(objs[i], &in->msg[i]);
    }
    for (int i = 0; i < 2; i++) {
        f = objs[in->nmsgs + i];
        CHECK(jcount(f) == 2);
        CHECK(jget(f, i ? "deleted" : "missed")
              && jget(f, i ? "deleted" : "missed")->type == J_TRUE);
        check_str(f, "channel", chan, clen);
    }
    for (int i = 0; i < n; i++) {
        jfree(objs[i]);
    }

    /* The same read as the hub renders it. */
    comet_buf_truncate(buf, 0);
    rv = comet_render_stream(buf, COMET_T_STREAM, in->chunked, 0x1f03a9c2,
                             channels, seqs, 1, 0, make_read(in, p), 0, NULL,
                             p);
    CHECK(rv == APR_SUCCESS || rv == APR_ENOSPC);
    if (in->chunked) {
        plain = dechunk(buf->data, buf->len, &plen);
    }
    else {
        plain = malloc(buf->len + 1);
        CHECK(plain != NULL);
        memcpy(plain, buf->data, buf->len);
        plen = buf->len;
    }
    n = split_lines(plain, plen, objs, 16);
    if (rv == APR_SUCCESS) {
        CHECK(n == in->missed + in->nmsgs + in->deleted);
    }
    if (in->missed && k < n) {
        CHECK(jget(objs[k], "missed") != NULL);
        check_str(objs[k], "channel", channels[0], strlen(channels[0]));
        k++;
    }
    for (int i = 0; i < in->nmsgs && k < n; i++) {
        comet_frame_msg_t fm = in->msg[i];
        comet_msgid_t id;
        char one[COMET_MSGID_MAXLEN];

        if (in->deleted && jget(objs[k], "deleted")) {
            break;
        }
        id.epoch = 0x1f03a9c2;
        id.seq = 10 + 3 * (apr_uint64_t)i;
        fm.channel = channels[0];
        fm.channel_len = strlen(channels[0]);
        fm.id_len = comet_msgid_format(one, &id);
        fm.id = one;
        check_msg(objs[k], &fm);
        k++;
        CHECK(seqs[0] >= id.seq);
    }
    if (rv == APR_SUCCESS && in->deleted) {
        CHECK(jget(objs[k], "deleted") != NULL);
        k++;
    }
    CHECK(k == n);
    for (int i = 0; i < n; i++) {
        jfree(objs[i]);
    }
    free(plain);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const apr_size_t bounds[] = { 96, 600, 4096, 16 << 20 };
    input_t in;
    apr_pool_t *p;
    size_t elen, clen, ilen, cut[4];
    char *copy, *d;
    apr_int64_t t;

    if (!root) {
        CHECK(apr_initialize() == APR_SUCCESS);
        CHECK(apr_pool_create(&root, NULL) == APR_SUCCESS);
    }
    if (size < 4) {
        return 0;
    }
    memset(&in, 0, sizeof(in));
    in.bound = bounds[data[0] & 3];
    in.nmsgs = 1 + ((data[0] >> 2) & 3) % 3;
    in.missed = (data[0] >> 4) & 1;
    in.deleted = (data[0] >> 5) & 1;
    in.chunked = (data[0] >> 6) & 1;
    elen = data[1] & 63;
    clen = data[2] & 31;
    ilen = (size_t)(data[2] >> 5) * 4;
    rng = 0x9e3779b9u ^ ((uint32_t)data[3] * 0x01000193u);
    size -= 4;
    /* An exact copy, so that a read past any part is a report. */
    copy = malloc(size ? size : 1);
    CHECK(copy != NULL);
    memcpy(copy, data + 4, size);
    d = copy;
    elen = elen > size ? size : elen;
    clen = clen > size - elen ? size - elen : clen;
    ilen = ilen > size - elen - clen ? size - elen - clen : ilen;
    in.id = d + elen + clen;
    in.id_len = ilen;
    size -= elen + clen + ilen;
    cut[0] = 0;
    cut[in.nmsgs] = size;
    for (int i = 1; i < in.nmsgs; i++) {
        cut[i] = cut[i - 1] + (size - cut[i - 1]
                               ? rnd() % (size - cut[i - 1] + 1) : 0);
    }
    for (int i = 0; i < in.nmsgs; i++) {
        comet_frame_msg_t *m = &in.msg[i];

        m->channel = d + elen;
        m->channel_len = clen;
        m->id = in.id;
        m->id_len = ilen;
        m->event = (i % 2 == 0 && elen) ? d : NULL;
        m->event_len = m->event ? elen : 0;
        m->data = d + elen + clen + ilen + cut[i];
        m->data_len = cut[i + 1] - cut[i];
        /* Any time, negative ones and the extremes included. */
        t = (apr_int64_t)(((uint64_t)rnd() << 32) | rnd());
        m->time = i == 2 ? INT64_MIN : i == 1 ? INT64_MAX : t;
    }

    CHECK(apr_pool_create(&p, root) == APR_SUCCESS);
    path_string(&in, p);
    path_poll(&in, p);
    path_render_poll(&in, p);
    path_ndjson(&in, p);
    apr_pool_destroy(p);
    free(copy);
    return 0;
}
