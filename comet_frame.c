/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* The formats are specified in comet_frame.h; this file only keeps them. */

#include <string.h>

#include <apr_strings.h>

#include "comet_frame.h"

/* Room _chunk_begin keeps for "<hex>\r\n": 16 hex digits (64-bit length)
 * and CRLF.  Any real length needs at most 14 digits (< 2^56 bytes), so
 * the header _chunk_end writes is always two bytes shorter than this and
 * the trailing CRLF fits in room already allocated: _end cannot fail. */
#define CHUNK_HEAD_ROOM 18

/* Append to buf unless an earlier append of the same frame failed: lets a
 * frame be written as a plain sequence of puts with one check (and one
 * rollback) at its end. */
static void put(comet_buf_t *buf, apr_status_t *rv, const void *s,
                apr_size_t n)
{
    if (*rv == APR_SUCCESS) {
        *rv = comet_buf_append(buf, s, n);
    }
}

#define PUT_LIT(buf, rv, lit) put((buf), (rv), (lit), sizeof(lit) - 1)

/* Leave buf as it was before the frame when the frame failed. */
static apr_status_t finish(comet_buf_t *buf, apr_size_t start,
                           apr_status_t rv)
{
    if (rv != APR_SUCCESS) {
        comet_buf_truncate(buf, start);
    }
    return rv;
}

static apr_size_t format_hex(char *out, apr_uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[16];
    apr_size_t n = 0, i;

    do {
        tmp[n++] = digits[v & 0xf];
        v >>= 4;
    } while (v);
    for (i = 0; i < n; i++) {
        out[i] = tmp[n - 1 - i];
    }
    return n;
}

/* ---- chunks ------------------------------------------------------------- */

apr_status_t comet_frame_chunk(comet_buf_t *buf, const void *data,
                               apr_size_t len)
{
    char head[CHUNK_HEAD_ROOM];
    apr_size_t n, start = buf->len;
    apr_status_t rv = APR_SUCCESS;

    if (len == 0) {
        return APR_SUCCESS;
    }
    n = format_hex(head, len);
    head[n++] = '\r';
    head[n++] = '\n';
    put(buf, &rv, head, n);
    put(buf, &rv, data, len);
    PUT_LIT(buf, &rv, "\r\n");
    return finish(buf, start, rv);
}

apr_status_t comet_frame_chunk_last(comet_buf_t *buf)
{
    return comet_buf_append(buf, "0\r\n\r\n", 5);
}

apr_status_t comet_frame_chunk_begin(comet_buf_t *buf, apr_size_t *mark)
{
    apr_status_t rv = comet_buf_reserve(buf, CHUNK_HEAD_ROOM);

    if (rv == APR_SUCCESS) {
        *mark = buf->len;
        buf->len += CHUNK_HEAD_ROOM;
    }
    return rv;
}

apr_status_t comet_frame_chunk_end(comet_buf_t *buf, apr_size_t mark)
{
    char head[CHUNK_HEAD_ROOM];
    apr_size_t body = buf->len - mark - CHUNK_HEAD_ROOM, n;

    if (body == 0) {
        buf->len = mark;
        return APR_SUCCESS;
    }
    n = format_hex(head, body);
    head[n++] = '\r';
    head[n++] = '\n';
    memmove(buf->data + mark + n, buf->data + mark + CHUNK_HEAD_ROOM, body);
    memcpy(buf->data + mark, head, n);
    buf->len = mark + n + body;
    buf->data[buf->len++] = '\r';
    buf->data[buf->len++] = '\n';
    return APR_SUCCESS;
}

/* ---- Server-Sent Events ------------------------------------------------- */

/* "<name>: <value>\n" with the bytes that would end the line early (or,
 * for NUL, make a browser ignore an id) replaced. */
static void put_field(comet_buf_t *buf, apr_status_t *rv, const char *name,
                      apr_size_t name_len, const char *value,
                      apr_size_t len)
{
    apr_size_t i;
    char *out;

    put(buf, rv, name, name_len);
    if (*rv != APR_SUCCESS
        || (*rv = comet_buf_reserve(buf, len + 1)) != APR_SUCCESS) {
        return;
    }
    out = buf->data + buf->len;
    for (i = 0; i < len; i++) {
        char c = value[i];

        out[i] = (c == '\r' || c == '\n' || c == '\0') ? '?' : c;
    }
    out[len] = '\n';
    buf->len += len + 1;
}

apr_status_t comet_frame_sse(comet_buf_t *buf,
                             const char *id, apr_size_t id_len,
                             const char *event, apr_size_t event_len,
                             const char *data, apr_size_t data_len)
{
    return comet_frame_sse_from(buf, id, id_len, event, event_len, NULL, 0,
                                data, data_len);
}

apr_status_t comet_frame_sse_from(comet_buf_t *buf,
                                  const char *id, apr_size_t id_len,
                                  const char *event, apr_size_t event_len,
                                  const char *from, apr_size_t from_len,
                                  const char *data, apr_size_t data_len)
{
    apr_size_t start = buf->len, i = 0, line;
    apr_status_t rv = APR_SUCCESS;

    if (id) {
        put_field(buf, &rv, "id: ", 4, id, id_len);
    }
    if (event && event_len) {
        put_field(buf, &rv, "event: ", 7, event, event_len);
    }
    if (from && from_len) {
        put_field(buf, &rv, "from: ", 6, from, from_len);
    }
    /* The last segment is written even when empty: that is what carries an
     * empty payload and a payload's final newline. */
    for (;;) {
        line = i;
        while (i < data_len && data[i] != '\r' && data[i] != '\n') {
            i++;
        }
        if (i == line) {
            PUT_LIT(buf, &rv, "data:\n");
        }
        else {
            PUT_LIT(buf, &rv, "data: ");
            put(buf, &rv, data + line, i - line);
            PUT_LIT(buf, &rv, "\n");
        }
        if (i == data_len || rv != APR_SUCCESS) {
            break;
        }
        if (data[i] == '\r' && i + 1 < data_len && data[i + 1] == '\n') {
            i++;
        }
        i++;
    }
    PUT_LIT(buf, &rv, "\n");
    return finish(buf, start, rv);
}

apr_status_t comet_frame_sse_comment(comet_buf_t *buf, const char *text,
                                     apr_size_t len)
{
    apr_size_t start = buf->len, i;
    apr_status_t rv = APR_SUCCESS;

    if (len == 0) {
        return comet_buf_append(buf, ":\n\n", 3);
    }
    PUT_LIT(buf, &rv, ": ");
    if (rv == APR_SUCCESS
        && (rv = comet_buf_reserve(buf, len + 2)) == APR_SUCCESS) {
        char *out = buf->data + buf->len;

        for (i = 0; i < len; i++) {
            out[i] = (text[i] == '\r' || text[i] == '\n') ? ' ' : text[i];
        }
        out[len] = '\n';
        out[len + 1] = '\n';
        buf->len += len + 2;
    }
    return finish(buf, start, rv);
}

apr_status_t comet_frame_sse_retry(comet_buf_t *buf, apr_uint32_t ms)
{
    return comet_buf_printf(buf, "retry: %lu\n\n", (unsigned long)ms);
}

static apr_status_t sse_special(comet_buf_t *buf, const char *event,
                                apr_size_t event_len, const char *channel,
                                apr_size_t len)
{
    apr_size_t start = buf->len;
    apr_status_t rv = APR_SUCCESS;

    put_field(buf, &rv, "event: ", 7, event, event_len);
    put_field(buf, &rv, "data: ", 6, channel, len);
    PUT_LIT(buf, &rv, "\n");
    return finish(buf, start, rv);
}

apr_status_t comet_frame_sse_missed(comet_buf_t *buf, const char *channel,
                                    apr_size_t len)
{
    return sse_special(buf, "comet-missed", 12, channel, len);
}

apr_status_t comet_frame_sse_deleted(comet_buf_t *buf, const char *channel,
                                     apr_size_t len)
{
    return sse_special(buf, "comet-deleted", 13, channel, len);
}

const char *comet_frame_event_name(apr_pool_t *p, int multi,
                                   const char *channel,
                                   apr_size_t channel_len,
                                   const char *type, apr_size_t type_len,
                                   apr_size_t *len)
{
    char *name;

    if (!type) {
        type_len = 0;
    }
    if (!multi) {
        *len = type_len;
        return type_len ? apr_pstrmemdup(p, type, type_len) : NULL;
    }
    *len = channel_len + (type_len ? 1 + type_len : 0);
    name = apr_palloc(p, *len + 1);
    memcpy(name, channel, channel_len);
    if (type_len) {
        name[channel_len] = '#';
        memcpy(name + channel_len + 1, type, type_len);
    }
    name[*len] = '\0';
    return name;
}

/* ---- JSON --------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence (2-4 bytes) starting at s, or 0 when
 * s[0] does not start one: overlong forms, surrogates (U+D800..DFFF) and
 * code points past U+10FFFF are not valid (RFC 3629). */
static apr_size_t utf8_sequence(const unsigned char *s, apr_size_t avail)
{
    unsigned char c = s[0], lo = 0x80, hi = 0xbf;
    apr_size_t n, i;

    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
    }
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0) {
            lo = 0xa0;
        }
        else if (c == 0xed) {
            hi = 0x9f;
        }
    }
    else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0) {
            lo = 0x90;
        }
        else if (c == 0xf4) {
            hi = 0x8f;
        }
    }
    else {
        return 0;
    }
    if (avail < n || s[1] < lo || s[1] > hi) {
        return 0;
    }
    for (i = 2; i < n; i++) {
        if (s[i] < 0x80 || s[i] > 0xbf) {
            return 0;
        }
    }
    return n;
}

/* Bytes that go out as they are: printable ASCII but the two JSON
 * specials, and DEL (not a control character for JSON). */
#define JSON_PLAIN(c) ((c) >= 0x20 && (c) < 0x80 && (c) != '"' && (c) != '\\')

static void put_json(comet_buf_t *buf, apr_status_t *rv, const char *str,
                     apr_size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    apr_size_t i = 0, run, n;
    char esc[6];

    PUT_LIT(buf, rv, "\"");
    while (i < len && *rv == APR_SUCCESS) {
        /* Copy the longest run of bytes that need no escape at once. */
        run = i;
        for (;;) {
            if (i < len && JSON_PLAIN(s[i])) {
                i++;
            }
            else if (i < len && s[i] >= 0x80
                     && (n = utf8_sequence(s + i, len - i)) != 0) {
                i += n;
            }
            else {
                break;
            }
        }
        put(buf, rv, s + run, i - run);
        if (i == len) {
            break;
        }
        esc[0] = '\\';
        n = 2;
        switch (s[i]) {
        case '"':  esc[1] = '"';  break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b';  break;
        case '\f': esc[1] = 'f';  break;
        case '\n': esc[1] = 'n';  break;
        case '\r': esc[1] = 'r';  break;
        case '\t': esc[1] = 't';  break;
        default:
            /* Other control bytes, and bytes that are not valid UTF-8. */
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[s[i] >> 4];
            esc[5] = hex[s[i] & 0xf];
            n = 6;
            break;
        }
        put(buf, rv, esc, n);
        i++;
    }
    PUT_LIT(buf, rv, "\"");
}

apr_status_t comet_frame_json_string(comet_buf_t *buf, const char *s,
                                     apr_size_t len)
{
    apr_size_t start = buf->len;
    apr_status_t rv = APR_SUCCESS;

    put_json(buf, &rv, s, len);
    return finish(buf, start, rv);
}

/* {"channel":..,"id":..[,"event":..][,"from":..],"time":..,"data":..} */
static void put_msg(comet_buf_t *buf, apr_status_t *rv,
                    const comet_frame_msg_t *msg)
{
    char num[32];
    apr_size_t n;

    PUT_LIT(buf, rv, "{\"channel\":");
    put_json(buf, rv, msg->channel, msg->channel_len);
    PUT_LIT(buf, rv, ",\"id\":");
    put_json(buf, rv, msg->id, msg->id_len);
    if (msg->event && msg->event_len) {
        PUT_LIT(buf, rv, ",\"event\":");
        put_json(buf, rv, msg->event, msg->event_len);
    }
    if (msg->from && msg->from_len) {
        PUT_LIT(buf, rv, ",\"from\":");
        put_json(buf, rv, msg->from, msg->from_len);
    }
    n = apr_snprintf(num, sizeof(num), ",\"time\":%" APR_INT64_T_FMT,
                     (apr_int64_t)apr_time_as_msec(msg->time));
    put(buf, rv, num, n);
    PUT_LIT(buf, rv, ",\"data\":");
    put_json(buf, rv, msg->data, msg->data_len);
    PUT_LIT(buf, rv, "}");
}

apr_status_t comet_frame_poll_begin(comet_frame_poll_t *poll,
                                    comet_buf_t *buf,
                                    const char *next_id, apr_size_t id_len,
                                    int missed)
{
    apr_status_t rv = APR_SUCCESS;

    poll->buf = buf;
    poll->start = buf->len;
    poll->messages = 0;
    PUT_LIT(buf, &rv, "{\"id\":");
    put_json(buf, &rv, next_id, id_len);
    if (missed) {
        PUT_LIT(buf, &rv, ",\"missed\":true,\"messages\":[");
    }
    else {
        PUT_LIT(buf, &rv, ",\"missed\":false,\"messages\":[");
    }
    return finish(buf, poll->start, rv);
}

apr_status_t comet_frame_poll_add(comet_frame_poll_t *poll,
                                  const comet_frame_msg_t *msg)
{
    comet_buf_t *buf = poll->buf;
    apr_size_t start = buf->len;
    apr_status_t rv = APR_SUCCESS;

    if (poll->messages) {
        PUT_LIT(buf, &rv, ",");
    }
    put_msg(buf, &rv, msg);
    if (rv == APR_SUCCESS) {
        poll->messages++;
    }
    return finish(buf, start, rv);
}

apr_status_t comet_frame_poll_end(comet_frame_poll_t *poll)
{
    return comet_buf_append(poll->buf, "]}", 2);
}

apr_status_t comet_frame_json_msg(comet_buf_t *buf,
                                  const comet_frame_msg_t *msg)
{
    apr_size_t start = buf->len;
    apr_status_t rv = APR_SUCCESS;

    put_msg(buf, &rv, msg);
    return finish(buf, start, rv);
}

apr_status_t comet_frame_ndjson(comet_buf_t *buf,
                                const comet_frame_msg_t *msg)
{
    apr_size_t start = buf->len;
    apr_status_t rv = APR_SUCCESS;

    put_msg(buf, &rv, msg);
    PUT_LIT(buf, &rv, "\n");
    return finish(buf, start, rv);
}

static apr_status_t ndjson_flag(comet_buf_t *buf, const char *head,
                                apr_size_t head_len, const char *channel,
                                apr_size_t len)
{
    apr_size_t start = buf->len;
    apr_status_t rv = APR_SUCCESS;

    put(buf, &rv, head, head_len);
    put_json(buf, &rv, channel, len);
    PUT_LIT(buf, &rv, "}\n");
    return finish(buf, start, rv);
}

apr_status_t comet_frame_ndjson_missed(comet_buf_t *buf,
                                       const char *channel, apr_size_t len)
{
    static const char head[] = "{\"missed\":true,\"channel\":";

    return ndjson_flag(buf, head, sizeof(head) - 1, channel, len);
}

apr_status_t comet_frame_ndjson_deleted(comet_buf_t *buf,
                                        const char *channel, apr_size_t len)
{
    static const char head[] = "{\"deleted\":true,\"channel\":";

    return ndjson_flag(buf, head, sizeof(head) - 1, channel, len);
}

apr_status_t comet_frame_ndjson_keepalive(comet_buf_t *buf)
{
    return comet_buf_putc(buf, '\n');
}
