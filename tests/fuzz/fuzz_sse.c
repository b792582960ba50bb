/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * fuzz_sse.c -- libFuzzer target for Server-Sent Events framing of
 * arbitrary payloads, event names and ids (comet_frame.c, comet_render.c).
 *
 * Input: four bytes of settings, then the event name, the id, and the
 * payload (whatever is left).
 *   [0]     bit 0: chunked; bit 1: a multi-channel subscription; bits 2-3:
 *           the buffer's bound (64, 512, 4096 bytes, or 16 MB); bits 4-5:
 *           messages in the store read (1..3); bit 6: missed; bit 7:
 *           deleted
 *   [1]     length of the event name (0..63; 0 with bit 6 set: none)
 *   [2]     length of the id (0..31; a value >= 32: no id line)
 *   [3]     seed of how the payload is split into messages
 *
 * What comet_frame.c and comet_render.c write is read back by an SSE
 * parser written here from the WHATWG HTML standard, "Server-sent events",
 * section "Parsing an event stream" (lines end at CRLF, LF or CR; a
 * leading BOM is dropped; ':' starts a comment; "field: value" drops one
 * space; data lines are joined with LF and the last LF removed; an empty
 * data buffer dispatches nothing; an id with NUL is ignored; retry takes
 * ASCII digits only; an event left unfinished at the end of the stream is
 * dropped).  It works on bytes: the standard decodes the stream as UTF-8
 * first, which maps equal bytes to equal text, so equal bytes is the
 * stronger check.  Checked, on every path (comet_frame_sse directly, a
 * comment and a retry around it; comet_render_msg; comet_render_stream
 * with its missed and deleted notices; chunked or not, de-chunked by a
 * strict reader first):
 *   - each event comes back with the payload exactly, but that every CR
 *     and CRLF is LF (what comet_frame.h documents), and the event type
 *     and last event id written, with CR, LF and NUL as '?';
 *   - a multi-channel subscription names "<channel>" or "<channel>#<type>"
 *     and carries the compound id; the missed and deleted notices are
 *     events "comet-missed" / "comet-deleted" with the channel as data
 *     and leave the last event id alone;
 *   - nothing is left unfinished: the stream ends on an event boundary;
 *   - a frame that does not fit leaves the buffer exactly as it was
 *     (APR_ENOSPC); a stream that does not fit holds whole events, a
 *     prefix of the expected ones, and the position names the last one.
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
            fprintf(stderr, "fuzz_sse.c:%d: check failed: %s\n",           \
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

/* ---- byte strings ---------------------------------------------------------- */

typedef struct {
    char   *p;
    size_t  len, cap;
} bytes_t;

static void b_put(bytes_t *b, const void *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        CHECK(b->p != NULL);
    }
    if (n) {
        memcpy(b->p + b->len, s, n);
    }
    b->len += n;
}

static void b_set(bytes_t *b, const void *s, size_t n)
{
    b->len = 0;
    b_put(b, s, n);
}

static int b_eq(const bytes_t *b, const void *s, size_t n)
{
    return b->len == n && (n == 0 || memcmp(b->p, s, n) == 0);
}

/* ---- the parser (WHATWG HTML, "Parsing an event stream") ------------------- */

#define MAX_EVENTS 16

typedef struct {
    bytes_t type, data, last_id;
} sse_event_t;

typedef struct {
    sse_event_t ev[MAX_EVENTS];
    int         n;
    bytes_t     data, type, id_buf, last_id;   /* the parser's buffers */
    long long   retry;                         /* -1: never set         */
    int         pending;   /* data or event type buffered at the end */
} sse_result_t;

static void sse_dispatch(sse_result_t *r)
{
    sse_event_t *e;

    b_set(&r->last_id, r->id_buf.p, r->id_buf.len);
    if (r->data.len == 0) {
        r->type.len = 0;
        return;
    }
    if (r->data.p[r->data.len - 1] == '\n') {
        r->data.len--;
    }
    CHECK(r->n < MAX_EVENTS);
    e = &r->ev[r->n++];
    if (r->type.len) {
        b_set(&e->type, r->type.p, r->type.len);
    }
    else {
        b_set(&e->type, "message", 7);
    }
    b_set(&e->data, r->data.p, r->data.len);
    b_set(&e->last_id, r->last_id.p, r->last_id.len);
    r->data.len = 0;
    r->type.len = 0;
}

static void sse_field(sse_result_t *r, const char *name, size_t nlen,
                      const char *value, size_t vlen)
{
    if (nlen == 5 && !memcmp(name, "event", 5)) {
        b_set(&r->type, value, vlen);
    }
    else if (nlen == 4 && !memcmp(name, "data", 4)) {
        b_put(&r->data, value, vlen);
        b_put(&r->data, "\n", 1);
    }
    else if (nlen == 2 && !memcmp(name, "id", 2)) {
        if (!memchr(value, '\0', vlen)) {
            b_set(&r->id_buf, value, vlen);
        }
    }
    else if (nlen == 5 && !memcmp(name, "retry", 5)) {
        long long v = 0;
        size_t i;

        for (i = 0; i < vlen && value[i] >= '0' && value[i] <= '9'; i++) {
            v = v * 10 + (value[i] - '0');
        }
        if (i == vlen && vlen > 0 && vlen < 18) {
            r->retry = v;
        }
    }
    /* Any other field is ignored. */
}

static void sse_parse(const char *s, size_t len, sse_result_t *r)
{
    size_t i = 0;

    memset(r, 0, sizeof(*r));
    r->retry = -1;
    if (len >= 3 && !memcmp(s, "\xef\xbb\xbf", 3)) {
        i = 3;
    }
    while (i < len) {
        size_t start = i, end, colon;

        while (i < len && s[i] != '\r' && s[i] != '\n') {
            i++;
        }
        if (i == len) {
            /* No end of line: the stream ends inside a line, which is
             * discarded with anything pending. */
            r->pending = 1;
            return;
        }
        end = i;
        if (s[i] == '\r' && i + 1 < len && s[i + 1] == '\n') {
            i++;
        }
        i++;
        if (end == start) {
            sse_dispatch(r);
            continue;
        }
        if (s[start] == ':') {
            continue;
        }
        for (colon = start; colon < end && s[colon] != ':'; colon++) {
        }
        if (colon == end) {
            sse_field(r, s + start, end - start, "", 0);
        }
        else {
            size_t v = colon + 1;

            if (v < end && s[v] == ' ') {
                v++;
            }
            sse_field(r, s + start, colon - start, s + v, end - v);
        }
    }
    r->pending = r->data.len != 0 || r->type.len != 0;
}

static void sse_free(sse_result_t *r)
{
    for (int i = 0; i < MAX_EVENTS; i++) {
        free(r->ev[i].type.p);
        free(r->ev[i].data.p);
        free(r->ev[i].last_id.p);
    }
    free(r->data.p);
    free(r->type.p);
    free(r->id_buf.p);
    free(r->last_id.p);
}

/* ---- what is expected ---------------------------------------------------- */

/* The payload as EventSource gives it back: CRLF and CR become LF. */
static void expect_data(bytes_t *out, const char *s, size_t len)
{
    out->len = 0;
    b_put(out, "", 0);
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\r') {
            b_put(out, "\n", 1);
            if (i + 1 < len && s[i + 1] == '\n') {
                i++;
            }
        }
        else {
            b_put(out, s + i, 1);
        }
    }
}

/* A field value as written: CR, LF and NUL become '?'. */
static void expect_field(bytes_t *out, const char *s, size_t len)
{
    out->len = 0;
    b_put(out, "", 0);
    for (size_t i = 0; i < len; i++) {
        char c = (s[i] == '\r' || s[i] == '\n' || s[i] == '\0') ? '?' : s[i];

        b_put(out, &c, 1);
    }
}

static void check_event(const sse_event_t *e, const char *type,
                        size_t type_len, const char *data, size_t data_len,
                        const bytes_t *last_id)
{
    bytes_t want = { NULL, 0, 0 };

    if (type_len) {
        expect_field(&want, type, type_len);
        CHECK(b_eq(&e->type, want.p, want.len));
    }
    else {
        CHECK(b_eq(&e->type, "message", 7));
    }
    expect_data(&want, data, data_len);
    CHECK(b_eq(&e->data, want.p, want.len));
    CHECK(b_eq(&e->last_id, last_id->p, last_id->len));
    free(want.p);
}

/* ---- chunked transfer coding --------------------------------------------- */

/* De-chunk strictly: lowercase hex without leading zeros, CRLF, the
 * bytes, CRLF; never an empty chunk; nothing left over. */
static void dechunk(const char *s, size_t len, bytes_t *out)
{
    size_t i = 0;

    out->len = 0;
    b_put(out, "", 0);
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
        b_put(out, s + i, n);
        i += n;
        CHECK(s[i] == '\r' && s[i + 1] == '\n');
        i += 2;
    }
}

/* The event stream held in buf (de-chunked when chunked), parsed. */
static void parse_buf(const comet_buf_t *buf, apr_size_t from, int chunked,
                      sse_result_t *r)
{
    bytes_t plain = { NULL, 0, 0 };

    if (chunked) {
        dechunk(buf->data + from, buf->len - from, &plain);
        sse_parse(plain.p, plain.len, r);
    }
    else {
        sse_parse(buf->data + from, buf->len - from, r);
    }
    CHECK(!r->pending);
    free(plain.p);
}

/* ---- the paths --------------------------------------------------------------- */

typedef struct {
    const char *event;  size_t event_len;   /* NULL: none */
    const char *id;     size_t id_len;      /* NULL: none */
    const char *data;   size_t data_len;
    int         chunked, multi, nmsgs, missed, deleted;
    apr_size_t  bound;
} input_t;

/* All or nothing: on failure the buffer is exactly as before. */
static void check_unchanged(const comet_buf_t *buf, const char *before,
                            apr_size_t len, apr_status_t rv)
{
    CHECK(rv == APR_ENOSPC);
    CHECK(buf->len == len);
    CHECK(len == 0 || memcmp(buf->data, before, len) == 0);
}

/* comet_frame_sse between a comment, a retry, and a second event without
 * an id (the last event id must stay). */
static void path_frame(const input_t *in, apr_pool_t *p)
{
    comet_buf_t *buf;
    sse_result_t r;
    bytes_t id = { NULL, 0, 0 };
    apr_status_t rv;
    char *before;
    apr_size_t len;

    CHECK(comet_buf_create(&buf, p, 0, in->bound) == APR_SUCCESS);
    if (comet_frame_sse_comment(buf, in->data, in->data_len > 40 ? 40
                                : in->data_len) != APR_SUCCESS
        || comet_frame_sse_retry(buf, 2500) != APR_SUCCESS) {
        return;     /* a tiny bound: the other paths cover it */
    }
    len = buf->len;
    before = apr_pmemdup(p, buf->data, len);
    rv = comet_frame_sse(buf, in->id, in->id_len, in->event, in->event_len,
                         in->data, in->data_len);
    if (rv != APR_SUCCESS) {
        check_unchanged(buf, before, len, rv);
        return;
    }
    rv = comet_frame_sse(buf, NULL, 0, "second", 6, "x", 1);
    sse_parse(buf->data, buf->len, &r);
    CHECK(!r.pending);
    CHECK(r.retry == 2500);
    CHECK(r.n == (rv == APR_SUCCESS ? 2 : 1));
    if (in->id) {
        expect_field(&id, in->id, in->id_len);
    }
    else {
        b_put(&id, "", 0);
    }
    check_event(&r.ev[0], in->event, in->event ? in->event_len : 0,
                in->data, in->data_len, &id);
    if (r.n == 2) {
        check_event(&r.ev[1], "second", 6, "x", 1, &id);
    }
    sse_free(&r);
    free(id.p);
}

static const char *const channels[] = { "room1", "b/c-2", "x" };

/* The event name a message of channel ci with type gets. */
static void expect_name(const input_t *in, size_t ci, const char *type,
                        size_t type_len, bytes_t *out)
{
    out->len = 0;
    b_put(out, "", 0);
    if (in->multi) {
        b_put(out, channels[ci], strlen(channels[ci]));
        if (type_len) {
            b_put(out, "#", 1);
        }
    }
    if (type_len) {
        b_put(out, type, type_len);
    }
}

/* comet_render_stream of a read of nmsgs messages split from the payload,
 * with the missed and deleted notices. */
static void path_render(const input_t *in, apr_pool_t *p)
{
    apr_uint64_t seqs[3] = { 5, 9, 0 }, start_seq;
    size_t nchan = in->multi ? 3 : 1, ci = in->multi ? 1 : 0;
    apr_uint32_t epoch = 0x1f03a9c2;
    comet_read_t rd;
    comet_buf_t *buf;
    sse_result_t r;
    apr_status_t rv;
    size_t cut[4], k = 0, want_events;
    int e = 0;
    bytes_t name = { NULL, 0, 0 }, id = { NULL, 0, 0 };

    memset(&rd, 0, sizeof(rd));
    rd.msgs = apr_array_make(p, 3, sizeof(comet_msg_t));
    rd.missed = in->missed;
    rd.deleted = in->deleted;
    cut[0] = 0;
    cut[in->nmsgs] = in->data_len;
    for (int i = 1; i < in->nmsgs; i++) {
        cut[i] = cut[i - 1] + (in->data_len - cut[i - 1]
                               ? rnd() % (in->data_len - cut[i - 1] + 1) : 0);
    }
    /* A message at or before the position is skipped, never sent. */
    {
        comet_msg_t *old = apr_array_push(rd.msgs);

        memset(old, 0, sizeof(*old));
        old->id.epoch = epoch;
        old->id.seq = seqs[ci];
        old->data = "old";
        old->data_len = 3;
    }
    for (int i = 0; i < in->nmsgs; i++) {
        comet_msg_t *m = apr_array_push(rd.msgs);

        m->id.epoch = epoch;
        m->id.seq = seqs[ci] + 1 + (apr_uint64_t)i * 3;
        m->published = apr_time_from_sec(1700000000) + i;
        m->event = (i % 2 == 0) ? in->event : NULL;
        m->event_len = (i % 2 == 0) && in->event ? in->event_len : 0;
        m->data = in->data + cut[i];
        m->data_len = cut[i + 1] - cut[i];
    }
    /* As the store reads: the channel's newest is its last message. */
    rd.newest = APR_ARRAY_IDX(rd.msgs, rd.msgs->nelts - 1, comet_msg_t).id;
    CHECK(comet_buf_create(&buf, p, 0, in->bound) == APR_SUCCESS);
    start_seq = seqs[ci];
    rv = comet_render_stream(buf, COMET_T_SSE, in->chunked, epoch, channels,
                             seqs, nchan, ci, &rd, 0, NULL, p);
    CHECK(rv == APR_SUCCESS || rv == APR_ENOSPC);
    parse_buf(buf, 0, in->chunked, &r);
    want_events = (size_t)in->missed + (size_t)in->nmsgs
                  + (size_t)in->deleted;
    if (rv == APR_SUCCESS) {
        CHECK((size_t)r.n == want_events);
    }
    else {
        CHECK((size_t)r.n < want_events);
    }
    b_put(&id, "", 0);
    if (in->missed && e < r.n) {
        CHECK(b_eq(&r.ev[e].type, "comet-missed", 12));
        CHECK(b_eq(&r.ev[e].data, channels[ci], strlen(channels[ci])));
        CHECK(r.ev[e].last_id.len == 0);
        e++;
    }
    for (k = 0; k < (size_t)in->nmsgs && e < r.n; k++) {
        const comet_msg_t *m = &APR_ARRAY_IDX(rd.msgs, k + 1, comet_msg_t);
        apr_uint64_t pos[3];
        char text[COMET_MSGID_COMPOUND_MAXLEN(3)];
        size_t tl;

        memcpy(pos, seqs, sizeof(pos));
        pos[ci] = m->id.seq;
        tl = comet_render_position_id(text, epoch, pos, nchan);
        b_set(&id, text, tl);
        expect_name(in, ci, m->event, m->event_len, &name);
        check_event(&r.ev[e], name.p, name.len, m->data, m->data_len, &id);
        e++;
    }
    if (rv == APR_SUCCESS) {
        /* Every message went out: the position is the last one. */
        CHECK(k == (size_t)in->nmsgs);
        CHECK(seqs[ci] == start_seq + 1 + (apr_uint64_t)(in->nmsgs - 1) * 3);
        if (in->deleted) {
            CHECK(b_eq(&r.ev[e].type, "comet-deleted", 13));
            CHECK(b_eq(&r.ev[e].data, channels[ci], strlen(channels[ci])));
            CHECK(b_eq(&r.ev[e].last_id, id.p, id.len));
            e++;
        }
    }
    else {
        /* The position names the last message written. */
        CHECK(seqs[ci] == (k ? start_seq + 1 + (apr_uint64_t)(k - 1) * 3
                             : start_seq));
    }
    CHECK(e == r.n);
    sse_free(&r);
    free(name.p);
    free(id.p);
}

/* comet_render_msg of one message on its own, appended after other bytes:
 * all or nothing. */
static void path_msg(const input_t *in, apr_pool_t *p)
{
    apr_uint64_t seqs[3] = { 7, 42, 18446744073709551615ull };
    size_t nchan = in->multi ? 3 : 1, ci = in->multi ? 2 : 0;
    comet_msg_t m;
    comet_buf_t *buf;
    sse_result_t r;
    bytes_t name = { NULL, 0, 0 }, id = { NULL, 0, 0 };
    char text[COMET_MSGID_COMPOUND_MAXLEN(3)], *before;
    apr_size_t len;
    apr_status_t rv;

    memset(&m, 0, sizeof(m));
    m.id.epoch = 0xabcdef01;
    m.id.seq = seqs[ci];
    m.event = in->event;
    m.event_len = in->event ? in->event_len : 0;
    m.data = in->data;
    m.data_len = in->data_len;
    CHECK(comet_buf_create(&buf, p, 0, in->bound) == APR_SUCCESS);
    if (comet_render_notice(buf, COMET_T_SSE, in->chunked, 0, channels[ci])
        != APR_SUCCESS) {
        CHECK(buf->len == 0);
        return;
    }
    len = buf->len;
    before = apr_pmemdup(p, buf->data, len);
    rv = comet_render_msg(buf, COMET_T_SSE, in->chunked, m.id.epoch,
                          channels, seqs, nchan, ci, &m, p);
    if (rv != APR_SUCCESS) {
        check_unchanged(buf, before, len, rv);
        return;
    }
    parse_buf(buf, 0, in->chunked, &r);
    CHECK(r.n == 2);
    CHECK(b_eq(&r.ev[0].type, "comet-missed", 12));
    CHECK(r.ev[0].last_id.len == 0);
    b_set(&id, text, comet_render_position_id(text, m.id.epoch, seqs, nchan));
    expect_name(in, ci, m.event, m.event_len, &name);
    check_event(&r.ev[1], name.p, name.len, m.data, m.data_len, &id);
    sse_free(&r);
    free(name.p);
    free(id.p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const apr_size_t bounds[] = { 64, 512, 4096, 16 << 20 };
    input_t in;
    apr_pool_t *p;
    size_t elen, ilen;
    char *copy;

    if (!root) {
        CHECK(apr_initialize() == APR_SUCCESS);
        CHECK(apr_pool_create(&root, NULL) == APR_SUCCESS);
    }
    if (size < 4) {
        return 0;
    }
    memset(&in, 0, sizeof(in));
    in.chunked = data[0] & 1;
    in.multi = (data[0] >> 1) & 1;
    in.bound = bounds[(data[0] >> 2) & 3];
    in.nmsgs = 1 + ((data[0] >> 4) & 3) % 3;
    in.missed = (data[0] >> 6) & 1;
    in.deleted = (data[0] >> 7) & 1;
    elen = data[1] & 63;
    ilen = data[2];
    rng = 0x9e3779b9u ^ ((uint32_t)data[3] * 0x01000193u);
    size -= 4;
    /* An exact copy, so that a read past any part is a report. */
    copy = malloc(size ? size : 1);
    CHECK(copy != NULL);
    memcpy(copy, data + 4, size);
    if (elen > size) {
        elen = size;
    }
    in.event = (elen || !(data[1] & 64)) ? copy : NULL;
    in.event_len = elen;
    if (ilen < 32) {
        if (ilen > size - elen) {
            ilen = size - elen;
        }
        in.id = copy + elen;
        in.id_len = ilen;
    }
    else {
        ilen = 0;
    }
    in.data = copy + elen + ilen;
    in.data_len = size - elen - ilen;

    CHECK(apr_pool_create(&p, root) == APR_SUCCESS);
    path_frame(&in, p);
    path_msg(&in, p);
    path_render(&in, p);
    apr_pool_destroy(p);
    free(copy);
    return 0;
}
