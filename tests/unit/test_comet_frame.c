/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unit_common.h"
#include "comet_frame.h"

/* ---- helpers ------------------------------------------------------------ */

/* What an EventSource makes of a stream (the WHATWG parsing rules): the
 * data of every dispatched event, with its event name, appended to out as
 * "<name>|<data>\x1e".  Lets tests check the framing by its effect. */
static void eventsource_parse(const char *s, apr_size_t len, comet_buf_t *out)
{
    comet_buf_t *data = comet_test_buf(1 << 22), *event = comet_test_buf(4096);
    apr_size_t i = 0;

    while (i < len) {
        apr_size_t start = i, colon, vstart;

        while (i < len && s[i] != '\r' && s[i] != '\n') {
            i++;
        }
        ck_assert_msg(i < len, "stream ends inside a line");
        if (i == start) {
            /* Blank line: dispatch. */
            if (data->len) {
                comet_buf_truncate(data, data->len - 1);   /* last LF */
                comet_buf_append(out, event->data, event->len);
                comet_buf_putc(out, '|');
                comet_buf_append(out, data->data, data->len);
                comet_buf_putc(out, '\x1e');
            }
            comet_buf_truncate(data, 0);
            comet_buf_truncate(event, 0);
        }
        else if (s[start] != ':') {
            for (colon = start; colon < i && s[colon] != ':'; colon++) {
            }
            vstart = colon < i ? colon + 1 : i;
            if (vstart < i && s[vstart] == ' ') {
                vstart++;
            }
            if (colon - start == 4 && memcmp(s + start, "data", 4) == 0) {
                comet_buf_append(data, s + vstart, i - vstart);
                comet_buf_putc(data, '\n');
            }
            else if (colon - start == 5
                     && memcmp(s + start, "event", 5) == 0) {
                comet_buf_truncate(event, 0);
                comet_buf_append(event, s + vstart, i - vstart);
            }
        }
        if (s[i] == '\r' && i + 1 < len && s[i + 1] == '\n') {
            i++;
        }
        i++;
    }
}

/* The payload as an EventSource hands it over: CR and CRLF become LF. */
static void normalise_newlines(const char *s, apr_size_t len, comet_buf_t *out)
{
    apr_size_t i;

    for (i = 0; i < len; i++) {
        if (s[i] == '\r') {
            comet_buf_putc(out, '\n');
            if (i + 1 < len && s[i + 1] == '\n') {
                i++;
            }
        }
        else {
            comet_buf_putc(out, s[i]);
        }
    }
}

/* ---- chunks ------------------------------------------------------------- */

START_TEST(chunk_has_its_length_in_lowercase_hex)
{
    comet_buf_t *b = comet_test_buf(1 << 20);
    char *big = malloc(4096);

    ck_assert_int_eq(comet_frame_chunk(b, "hello", 5), APR_SUCCESS);
    COMET_ASSERT_BUF(b, "5\r\nhello\r\n");

    comet_buf_truncate(b, 0);
    memset(big, 'a', 4096);
    comet_frame_chunk(b, big, 255);
    ck_assert_int_eq(memcmp(b->data, "ff\r\naaa", 7), 0);
    ck_assert_uint_eq(b->len, 4 + 255 + 2);

    comet_buf_truncate(b, 0);
    comet_frame_chunk(b, big, 4096);
    ck_assert_int_eq(memcmp(b->data, "1000\r\n", 6), 0);
    ck_assert_int_eq(memcmp(b->data + 6 + 4096, "\r\n", 2), 0);
    ck_assert_uint_eq(b->len, 6 + 4096 + 2);

    comet_buf_truncate(b, 0);
    comet_frame_chunk(b, big, 26);
    ck_assert_int_eq(memcmp(b->data, "1a\r\n", 4), 0);
    free(big);
}
END_TEST

START_TEST(empty_chunk_writes_nothing_and_last_chunk_is_zero)
{
    comet_buf_t *b = comet_test_buf(64);

    ck_assert_int_eq(comet_frame_chunk(b, "", 0), APR_SUCCESS);
    ck_assert_uint_eq(b->len, 0);
    ck_assert_int_eq(comet_frame_chunk_last(b), APR_SUCCESS);
    COMET_ASSERT_BUF(b, "0\r\n\r\n");
}
END_TEST

START_TEST(chunk_built_in_place_matches_chunk_of_copy)
{
    comet_buf_t *b = comet_test_buf(1 << 20), *want = comet_test_buf(1 << 20);
    apr_size_t mark;
    char *big = malloc(70000);

    comet_buf_puts(b, "prefix");
    ck_assert_int_eq(comet_frame_chunk_begin(b, &mark), APR_SUCCESS);
    comet_frame_sse(b, "e:1", 3, NULL, 0, "hi", 2);
    comet_frame_sse(b, "e:2", 3, NULL, 0, "yo", 2);
    ck_assert_int_eq(comet_frame_chunk_end(b, mark), APR_SUCCESS);
    COMET_ASSERT_BUF(b, "prefix" "24\r\n"
                        "id: e:1\ndata: hi\n\n" "id: e:2\ndata: yo\n\n" "\r\n");

    /* Empty content leaves nothing behind. */
    comet_buf_truncate(b, 0);
    comet_frame_chunk_begin(b, &mark);
    comet_frame_chunk_end(b, mark);
    ck_assert_uint_eq(b->len, 0);

    /* 64 KB and more: a five-digit length. */
    memset(big, 'b', 70000);
    comet_buf_truncate(b, 0);
    comet_frame_chunk_begin(b, &mark);
    comet_buf_append(b, big, 70000);
    comet_frame_chunk_end(b, mark);
    comet_frame_chunk(want, big, 70000);
    ck_assert_uint_eq(b->len, want->len);
    ck_assert_int_eq(memcmp(b->data, want->data, want->len), 0);
    ck_assert_int_eq(memcmp(b->data, "11170\r\n", 7), 0);
    free(big);
}
END_TEST

START_TEST(chunk_that_does_not_fit_leaves_buffer_unchanged)
{
    comet_buf_t b;
    char mem[16];

    comet_buf_wrap(&b, mem, sizeof(mem));
    comet_buf_puts(&b, "abc");
    ck_assert_int_eq(comet_frame_chunk(&b, "0123456789", 10), APR_ENOSPC);
    ck_assert_uint_eq(b.len, 3);
}
END_TEST

/* ---- Server-Sent Events ------------------------------------------------- */

START_TEST(sse_message_has_id_event_and_data_lines)
{
    comet_buf_t *b = comet_test_buf(4096);

    ck_assert_int_eq(comet_frame_sse(b, "1f03a9c2:42", 11, "typing", 6,
                                     "hello", 5), APR_SUCCESS);
    COMET_ASSERT_BUF(b, "id: 1f03a9c2:42\nevent: typing\ndata: hello\n\n");

    comet_buf_truncate(b, 0);
    comet_frame_sse(b, NULL, 0, NULL, 0, "hello", 5);
    COMET_ASSERT_BUF(b, "data: hello\n\n");

    comet_buf_truncate(b, 0);
    comet_frame_sse(b, "1:2", 3, "", 0, "x", 1);
    COMET_ASSERT_BUF(b, "id: 1:2\ndata: x\n\n");
}
END_TEST

START_TEST(sse_splits_data_at_lf_cr_and_crlf)
{
    comet_buf_t *b = comet_test_buf(4096);

    comet_frame_sse(b, NULL, 0, NULL, 0, "a\nb", 3);
    COMET_ASSERT_BUF(b, "data: a\ndata: b\n\n");

    comet_buf_truncate(b, 0);
    comet_frame_sse(b, NULL, 0, NULL, 0, "a\r\nb", 4);
    COMET_ASSERT_BUF(b, "data: a\ndata: b\n\n");

    comet_buf_truncate(b, 0);
    comet_frame_sse(b, NULL, 0, NULL, 0, "a\rb", 3);
    COMET_ASSERT_BUF(b, "data: a\ndata: b\n\n");

    /* CR CR is two line ends; LF CR too; CR LF only one. */
    comet_buf_truncate(b, 0);
    comet_frame_sse(b, NULL, 0, NULL, 0, "a\r\rb\n\rc", 7);
    COMET_ASSERT_BUF(b, "data: a\ndata:\ndata: b\ndata:\ndata: c\n\n");

    comet_buf_truncate(b, 0);
    comet_frame_sse(b, NULL, 0, NULL, 0, "\r\n", 2);
    COMET_ASSERT_BUF(b, "data:\ndata:\n\n");
}
END_TEST

START_TEST(sse_empty_payload_is_one_empty_data_line)
{
    comet_buf_t *b = comet_test_buf(4096), *events = comet_test_buf(4096);

    comet_frame_sse(b, "1:1", 3, NULL, 0, "", 0);
    COMET_ASSERT_BUF(b, "id: 1:1\ndata:\n\n");
    eventsource_parse(b->data, b->len, events);
    COMET_ASSERT_BUF(events, "|\x1e");     /* dispatched, data "" */
}
END_TEST

START_TEST(sse_payload_ending_in_newline_keeps_it)
{
    comet_buf_t *b = comet_test_buf(4096), *events = comet_test_buf(4096);

    comet_frame_sse(b, NULL, 0, NULL, 0, "a\n", 2);
    COMET_ASSERT_BUF(b, "data: a\ndata:\n\n");
    comet_buf_truncate(b, 0);
    comet_frame_sse(b, NULL, 0, NULL, 0, "a\r", 2);
    COMET_ASSERT_BUF(b, "data: a\ndata:\n\n");
    comet_buf_truncate(b, 0);
    comet_frame_sse(b, NULL, 0, NULL, 0, "a\r\n", 3);
    COMET_ASSERT_BUF(b, "data: a\ndata:\n\n");
    eventsource_parse(b->data, b->len, events);
    COMET_ASSERT_BUF(events, "|a\n\x1e");
}
END_TEST

START_TEST(sse_leading_space_and_colon_survive)
{
    comet_buf_t *b = comet_test_buf(4096), *events = comet_test_buf(4096);

    comet_frame_sse(b, NULL, 0, NULL, 0, " x\n:y\ndata: z", 13);
    COMET_ASSERT_BUF(b, "data:  x\ndata: :y\ndata: data: z\n\n");
    eventsource_parse(b->data, b->len, events);
    COMET_ASSERT_BUF(events, "| x\n:y\ndata: z\x1e");
}
END_TEST

START_TEST(sse_binary_bytes_pass_through_unchanged)
{
    comet_buf_t *b = comet_test_buf(4096);

    comet_frame_sse(b, NULL, 0, NULL, 0, "\0\xff\xc3(\x01", 5);
    COMET_ASSERT_BUF(b, "data: \0\xff\xc3(\x01\n\n");
}
END_TEST

START_TEST(sse_id_and_event_cannot_break_the_frame)
{
    comet_buf_t *b = comet_test_buf(4096);

    comet_frame_sse(b, "1\n2", 3, "a\rb\0", 4, "x", 1);
    COMET_ASSERT_BUF(b, "id: 1?2\nevent: a?b?\ndata: x\n\n");
}
END_TEST

START_TEST(sse_any_payload_reaches_eventsource_intact)
{
    /* Random payloads over the bytes that matter to the framing: every
     * one must come out of an EventSource as itself (newlines as LF), as
     * exactly one event with the right name. */
    static const char alphabet[] = "a \r\n:\0x";
    comet_buf_t *b = comet_test_buf(1 << 16), *events = comet_test_buf(1 << 16);
    comet_buf_t *want = comet_test_buf(1 << 16);
    char payload[64];
    int round;

    srand(12345);
    for (round = 0; round < 3000; round++) {
        apr_size_t len = (apr_size_t)(rand() % 40), i;

        for (i = 0; i < len; i++) {
            payload[i] = alphabet[rand() % (sizeof(alphabet) - 1)];
        }
        comet_buf_truncate(b, 0);
        comet_buf_truncate(events, 0);
        comet_buf_truncate(want, 0);
        ck_assert_int_eq(comet_frame_sse(b, "7:1", 3, "room1#t", 7,
                                         payload, len), APR_SUCCESS);
        eventsource_parse(b->data, b->len, events);
        comet_buf_puts(want, "room1#t|");
        normalise_newlines(payload, len, want);
        comet_buf_putc(want, '\x1e');
        ck_assert_msg(events->len == want->len
                      && memcmp(events->data, want->data, want->len) == 0,
                      "payload \"%s\" came out as \"%s\"",
                      comet_test_show(payload, len), comet_test_show(events->data, events->len));
    }
}
END_TEST

START_TEST(sse_64k_payload_of_many_lines)
{
    comet_buf_t *b = comet_test_buf(1 << 20), *events = comet_test_buf(1 << 20);
    char *payload = malloc(65536);
    apr_size_t i;

    for (i = 0; i < 65536; i++) {
        payload[i] = (i % 64 == 63) ? '\n' : (char)('a' + i % 26);
    }
    ck_assert_int_eq(comet_frame_sse(b, NULL, 0, NULL, 0, payload, 65536),
                     APR_SUCCESS);
    /* 1024 lines ending in LF: 1024 full data lines plus the empty one. */
    ck_assert_uint_eq(b->len, 1024 * (6 + 63 + 1) + 6 + 1);
    eventsource_parse(b->data, b->len, events);
    ck_assert_uint_eq(events->len, 1 + 65536 + 1);
    ck_assert_int_eq(memcmp(events->data + 1, payload, 65536), 0);
    free(payload);
}
END_TEST

START_TEST(sse_message_that_does_not_fit_leaves_buffer_unchanged)
{
    comet_buf_t b;
    char mem[32];

    comet_buf_wrap(&b, mem, sizeof(mem));
    comet_frame_sse(&b, NULL, 0, NULL, 0, "ok", 2);
    ck_assert_uint_eq(b.len, 10);
    ck_assert_int_eq(comet_frame_sse(&b, "1:1", 3, NULL, 0, "a\nb\nc\nd", 7),
                     APR_ENOSPC);
    ck_assert_uint_eq(b.len, 10);
}
END_TEST

START_TEST(sse_comment_retry_and_special_events)
{
    comet_buf_t *b = comet_test_buf(4096);

    comet_frame_sse_comment(b, "keepalive", 9);
    COMET_ASSERT_BUF(b, ": keepalive\n\n");
    comet_buf_truncate(b, 0);
    comet_frame_sse_comment(b, "", 0);
    COMET_ASSERT_BUF(b, ":\n\n");
    comet_buf_truncate(b, 0);
    comet_frame_sse_comment(b, "a\r\nb", 4);
    COMET_ASSERT_BUF(b, ": a  b\n\n");
    comet_buf_truncate(b, 0);
    comet_frame_sse_retry(b, 3000);
    COMET_ASSERT_BUF(b, "retry: 3000\n\n");
    comet_buf_truncate(b, 0);
    comet_frame_sse_missed(b, "room1", 5);
    COMET_ASSERT_BUF(b, "event: comet-missed\ndata: room1\n\n");
    comet_buf_truncate(b, 0);
    comet_frame_sse_deleted(b, "room1", 5);
    COMET_ASSERT_BUF(b, "event: comet-deleted\ndata: room1\n\n");
}
END_TEST

START_TEST(event_name_tells_channel_only_when_several)
{
    apr_size_t len;
    const char *name;

    name = comet_frame_event_name(comet_test_pool, 1, "room1", 5, NULL, 0,
                                  &len);
    ck_assert_str_eq(name, "room1");
    ck_assert_uint_eq(len, 5);
    name = comet_frame_event_name(comet_test_pool, 1, "room1", 5,
                                  "typing", 6, &len);
    ck_assert_str_eq(name, "room1#typing");
    ck_assert_uint_eq(len, 12);
    name = comet_frame_event_name(comet_test_pool, 0, "room1", 5,
                                  "typing", 6, &len);
    ck_assert_str_eq(name, "typing");
    name = comet_frame_event_name(comet_test_pool, 0, "room1", 5, NULL, 0,
                                  &len);
    ck_assert_ptr_null(name);
    ck_assert_uint_eq(len, 0);
    name = comet_frame_event_name(comet_test_pool, 0, "room1", 5, "", 0,
                                  &len);
    ck_assert_ptr_null(name);
}
END_TEST

/* ---- JSON --------------------------------------------------------------- */

#define JSON_IS(in, out) do {                                          \
        comet_buf_truncate(b, 0);                                      \
        ck_assert_int_eq(comet_frame_json_string(b, (in),              \
                                                 sizeof(in) - 1),      \
                         APR_SUCCESS);                                 \
        COMET_ASSERT_BUF(b, out);                                      \
    } while (0)

START_TEST(json_escapes_quote_backslash_and_control_bytes)
{
    comet_buf_t *b = comet_test_buf(4096);

    JSON_IS("", "\"\"");
    JSON_IS("say \"hi\" \\o/", "\"say \\\"hi\\\" \\\\o/\"");
    JSON_IS("\b\f\n\r\t", "\"\\b\\f\\n\\r\\t\"");
    JSON_IS("\x01\x1f\0", "\"\\u0001\\u001f\\u0000\"");
    JSON_IS("\x7f/", "\"\x7f/\"");
}
END_TEST

START_TEST(json_passes_valid_utf8_through)
{
    comet_buf_t *b = comet_test_buf(4096);

    JSON_IS("caf\xc3\xa9", "\"caf\xc3\xa9\"");                 /* é  */
    JSON_IS("\xe2\x82\xac", "\"\xe2\x82\xac\"");               /* €  */
    JSON_IS("\xf0\x9f\x98\x80", "\"\xf0\x9f\x98\x80\"");       /* 😀 */
    JSON_IS("\xed\x9f\xbf", "\"\xed\x9f\xbf\"");               /* U+D7FF */
    JSON_IS("\xf4\x8f\xbf\xbf", "\"\xf4\x8f\xbf\xbf\"");       /* U+10FFFF */
    JSON_IS("\xe2\x80\xa8", "\"\xe2\x80\xa8\"");               /* U+2028 */
}
END_TEST

START_TEST(json_writes_invalid_utf8_bytes_as_u00xx)
{
    comet_buf_t *b = comet_test_buf(4096);

    JSON_IS("\x80", "\"\\u0080\"");                     /* lone continuation */
    JSON_IS("\xff\xfe", "\"\\u00ff\\u00fe\"");
    JSON_IS("\xc0\xaf", "\"\\u00c0\\u00af\"");          /* overlong '/'      */
    JSON_IS("\xe0\x80\xaf", "\"\\u00e0\\u0080\\u00af\""); /* overlong        */
    JSON_IS("\xed\xa0\x80", "\"\\u00ed\\u00a0\\u0080\""); /* surrogate       */
    JSON_IS("\xf4\x90\x80\x80",                          /* past U+10FFFF   */
            "\"\\u00f4\\u0090\\u0080\\u0080\"");
    JSON_IS("a\xe2\x82", "\"a\\u00e2\\u0082\"");        /* cut at the end    */
    JSON_IS("\xc3(", "\"\\u00c3(\"");                   /* bad continuation  */
    JSON_IS("\xff\xc3\xa9", "\"\\u00ff\xc3\xa9\"");     /* resynchronises    */
}
END_TEST

START_TEST(json_64k_strings)
{
    comet_buf_t *b = comet_test_buf(1 << 20);
    char *s = malloc(65536);

    memset(s, 'a', 65536);
    ck_assert_int_eq(comet_frame_json_string(b, s, 65536), APR_SUCCESS);
    ck_assert_uint_eq(b->len, 65538);
    ck_assert_int_eq(b->data[0], '"');
    ck_assert_int_eq(b->data[65537], '"');

    memset(s, '\x01', 65536);
    comet_buf_truncate(b, 0);
    ck_assert_int_eq(comet_frame_json_string(b, s, 65536), APR_SUCCESS);
    ck_assert_uint_eq(b->len, 2 + 6 * 65536);
    ck_assert_int_eq(memcmp(b->data + 1 + 6 * 65535, "\\u0001\"", 7), 0);
    free(s);
}
END_TEST

/* ---- long-poll body and ndjson ------------------------------------------ */

static comet_frame_msg_t msg_of(const char *channel, const char *id,
                                const char *event, const char *data,
                                apr_time_t time)
{
    comet_frame_msg_t m;

    m.channel = channel;
    m.channel_len = strlen(channel);
    m.id = id;
    m.id_len = strlen(id);
    m.event = event;
    m.event_len = event ? strlen(event) : 0;
    m.data = data;
    m.data_len = strlen(data);
    m.time = time;
    return m;
}

START_TEST(poll_body_lists_messages_of_several_channels)
{
    comet_buf_t *b = comet_test_buf(4096);
    comet_frame_poll_t poll;
    comet_frame_msg_t m1 = msg_of("room1", "1f03a9c2:41", "typing", "hi",
                                  APR_INT64_C(1700000000123456));
    comet_frame_msg_t m2 = msg_of("room2", "1f03a9c2:42", NULL, "a\"b\n",
                                  APR_INT64_C(1700000000124999));

    ck_assert_int_eq(comet_frame_poll_begin(&poll, b, "1f03a9c2:41,42", 14,
                                            0), APR_SUCCESS);
    ck_assert_int_eq(comet_frame_poll_add(&poll, &m1), APR_SUCCESS);
    ck_assert_int_eq(comet_frame_poll_add(&poll, &m2), APR_SUCCESS);
    ck_assert_int_eq(comet_frame_poll_end(&poll), APR_SUCCESS);
    COMET_ASSERT_BUF(b, "{\"id\":\"1f03a9c2:41,42\""
                        ",\"missed\":false,\"messages\":["
                        "{\"channel\":\"room1\",\"id\":\"1f03a9c2:41\","
                        "\"event\":\"typing\",\"time\":1700000000123,"
                        "\"data\":\"hi\"},"
                        "{\"channel\":\"room2\",\"id\":\"1f03a9c2:42\","
                        "\"time\":1700000000124,\"data\":\"a\\\"b\\n\"}]}");
    ck_assert_uint_eq(poll.messages, 2);
}
END_TEST

START_TEST(poll_body_after_timeout_has_no_messages_and_tells_missed)
{
    comet_buf_t *b = comet_test_buf(4096);
    comet_frame_poll_t poll;

    comet_frame_poll_begin(&poll, b, "1f03a9c2:7", 10, 0);
    comet_frame_poll_end(&poll);
    COMET_ASSERT_BUF(b, "{\"id\":\"1f03a9c2:7\""
                        ",\"missed\":false,\"messages\":[]}");

    comet_buf_truncate(b, 0);
    comet_frame_poll_begin(&poll, b, "1f03a9c2:7", 10, 1);
    comet_frame_poll_end(&poll);
    COMET_ASSERT_BUF(b, "{\"id\":\"1f03a9c2:7\""
                        ",\"missed\":true,\"messages\":[]}");
}
END_TEST

START_TEST(poll_message_that_does_not_fit_is_left_out_whole)
{
    comet_buf_t *b = comet_test_buf(120);
    comet_frame_poll_t poll;
    comet_frame_msg_t small = msg_of("c", "1:1", NULL, "x", 0);
    comet_frame_msg_t big = msg_of("c", "1:2", NULL,
                                   "0123456789012345678901234567890123456789"
                                   "0123456789012345678901234567890123456789",
                                   0);
    apr_size_t before;

    comet_frame_poll_begin(&poll, b, "1:1", 3, 0);
    ck_assert_int_eq(comet_frame_poll_add(&poll, &small), APR_SUCCESS);
    before = b->len;
    ck_assert_int_eq(comet_frame_poll_add(&poll, &big), APR_ENOSPC);
    ck_assert_uint_eq(b->len, before);
    ck_assert_uint_eq(poll.messages, 1);
    ck_assert_int_eq(comet_frame_poll_end(&poll), APR_SUCCESS);
    COMET_ASSERT_BUF(b, "{\"id\":\"1:1\",\"missed\":false,\"messages\":["
                        "{\"channel\":\"c\",\"id\":\"1:1\",\"time\":0,"
                        "\"data\":\"x\"}]}");
    ck_assert_uint_eq(poll.start, 0);
}
END_TEST

START_TEST(ndjson_lines_for_message_missed_deleted_and_keepalive)
{
    comet_buf_t *b = comet_test_buf(4096);
    comet_frame_msg_t m = msg_of("room1", "1f03a9c2:42", "typing",
                                 "caf\xc3\xa9\n\xff", APR_INT64_C(1000));

    ck_assert_int_eq(comet_frame_ndjson(b, &m), APR_SUCCESS);
    COMET_ASSERT_BUF(b, "{\"channel\":\"room1\",\"id\":\"1f03a9c2:42\","
                        "\"event\":\"typing\",\"time\":1,"
                        "\"data\":\"caf\xc3\xa9\\n\\u00ff\"}\n");
    comet_buf_truncate(b, 0);
    comet_frame_ndjson_missed(b, "room1", 5);
    comet_frame_ndjson_deleted(b, "room1", 5);
    comet_frame_ndjson_keepalive(b);
    COMET_ASSERT_BUF(b, "{\"missed\":true,\"channel\":\"room1\"}\n"
                        "{\"deleted\":true,\"channel\":\"room1\"}\n"
                        "\n");
}
END_TEST

START_TEST(ndjson_line_has_no_raw_newline_whatever_the_payload)
{
    comet_buf_t *b = comet_test_buf(1 << 20);
    char payload[256];
    comet_frame_msg_t m;
    int i;

    for (i = 0; i < 256; i++) {
        payload[i] = (char)i;
    }
    m = msg_of("c", "1:1", "t", "", 0);
    m.data = payload;
    m.data_len = sizeof(payload);
    ck_assert_int_eq(comet_frame_ndjson(b, &m), APR_SUCCESS);
    ck_assert_ptr_eq(memchr(b->data, '\n', b->len), b->data + b->len - 1);
    ck_assert_ptr_null(memchr(b->data, '\r', b->len));
}
END_TEST

START_TEST(sender_is_a_json_field_and_an_sse_line_that_cannot_break_either)
{
    comet_buf_t *b = comet_test_buf(4096);
    comet_frame_msg_t m = msg_of("room1", "1:2", NULL, "hi", 0);

    m.from = "al\"ice\n";
    m.from_len = 7;
    ck_assert_int_eq(comet_frame_ndjson(b, &m), APR_SUCCESS);
    COMET_ASSERT_BUF(b, "{\"channel\":\"room1\",\"id\":\"1:2\","
                        "\"from\":\"al\\\"ice\\n\",\"time\":0,"
                        "\"data\":\"hi\"}\n");
    comet_buf_truncate(b, 0);
    ck_assert_int_eq(comet_frame_json_msg(b, &m), APR_SUCCESS);
    ck_assert_uint_gt(b->len, 0);
    ck_assert_int_eq(b->data[b->len - 1], '}');
    comet_buf_truncate(b, 0);
    ck_assert_int_eq(comet_frame_sse_from(b, "1:2", 3, "t", 1, "al\nice", 6,
                                          "hi", 2), APR_SUCCESS);
    COMET_ASSERT_BUF(b, "id: 1:2\nevent: t\nfrom: al?ice\ndata: hi\n\n");
}
END_TEST

Suite *test_comet_frame_suite(void)
{
    Suite *s = suite_create("comet_frame");
    TCase *tc = tcase_create("frame");

    tcase_add_checked_fixture(tc, comet_test_pool_setup,
                              comet_test_pool_teardown);
    tcase_add_test(tc, chunk_has_its_length_in_lowercase_hex);
    tcase_add_test(tc,
                   sender_is_a_json_field_and_an_sse_line_that_cannot_break_either);
    tcase_add_test(tc, empty_chunk_writes_nothing_and_last_chunk_is_zero);
    tcase_add_test(tc, chunk_built_in_place_matches_chunk_of_copy);
    tcase_add_test(tc, chunk_that_does_not_fit_leaves_buffer_unchanged);
    tcase_add_test(tc, sse_message_has_id_event_and_data_lines);
    tcase_add_test(tc, sse_splits_data_at_lf_cr_and_crlf);
    tcase_add_test(tc, sse_empty_payload_is_one_empty_data_line);
    tcase_add_test(tc, sse_payload_ending_in_newline_keeps_it);
    tcase_add_test(tc, sse_leading_space_and_colon_survive);
    tcase_add_test(tc, sse_binary_bytes_pass_through_unchanged);
    tcase_add_test(tc, sse_id_and_event_cannot_break_the_frame);
    tcase_add_test(tc, sse_any_payload_reaches_eventsource_intact);
    tcase_add_test(tc, sse_64k_payload_of_many_lines);
    tcase_add_test(tc, sse_message_that_does_not_fit_leaves_buffer_unchanged);
    tcase_add_test(tc, sse_comment_retry_and_special_events);
    tcase_add_test(tc, event_name_tells_channel_only_when_several);
    tcase_add_test(tc, json_escapes_quote_backslash_and_control_bytes);
    tcase_add_test(tc, json_passes_valid_utf8_through);
    tcase_add_test(tc, json_writes_invalid_utf8_bytes_as_u00xx);
    tcase_add_test(tc, json_64k_strings);
    tcase_add_test(tc, poll_body_lists_messages_of_several_channels);
    tcase_add_test(tc,
                   poll_body_after_timeout_has_no_messages_and_tells_missed);
    tcase_add_test(tc, poll_message_that_does_not_fit_is_left_out_whole);
    tcase_add_test(tc, ndjson_lines_for_message_missed_deleted_and_keepalive);
    tcase_add_test(tc, ndjson_line_has_no_raw_newline_whatever_the_payload);
    suite_add_tcase(s, tc);
    return s;
}
