/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Unit tests of comet_render.c: store reads (built by hand, as the store
 * returns them) rendered as SSE, ndjson and long-poll output, byte for
 * byte. */
#include <string.h>

#include "unit_common.h"
#include "comet_render.h"

#define EPOCH 0x0000abcdu

/* An empty read in the test pool; add messages with add_msg. */
static comet_read_t *new_read(int missed, int deleted)
{
    comet_read_t *rd = apr_pcalloc(comet_test_pool, sizeof(*rd));

    rd->msgs = apr_array_make(comet_test_pool, 4, sizeof(comet_msg_t));
    rd->missed = missed;
    rd->deleted = deleted;
    return rd;
}

/* A message published at seq milliseconds past the epoch of time. */
static void add_msg(comet_read_t *rd, apr_uint64_t seq, const char *event,
                    const char *data)
{
    comet_msg_t *m = apr_array_push(rd->msgs);

    memset(m, 0, sizeof(*m));
    m->id.epoch = EPOCH;
    m->id.seq = seq;
    m->published = (apr_time_t)seq * 1000 + 999;
    m->event = event;
    m->event_len = event ? strlen(event) : 0;
    m->data = data;
    m->data_len = strlen(data);
    rd->newest = m->id;
}

/* ---- positions ---------------------------------------------------------- */

START_TEST(position_id_is_plain_for_one_channel_and_compound_for_several)
{
    char buf[COMET_MSGID_COMPOUND_MAXLEN(3)];
    apr_uint64_t seqs[3] = { 7, 0, 12 };

    ck_assert_uint_eq(comet_render_position_id(buf, EPOCH, seqs, 1), 10);
    ck_assert_str_eq(buf, "0000abcd:7");
    ck_assert_uint_eq(comet_render_position_id(buf, EPOCH, seqs, 3), 15);
    ck_assert_str_eq(buf, "0000abcd:7,0,12");
}
END_TEST

/* ---- streams ------------------------------------------------------------ */

START_TEST(sse_stream_of_a_read_is_missed_then_new_messages_then_deleted)
{
    comet_buf_t *b = comet_test_buf(4096);
    comet_read_t *rd = new_read(1, 1);
    const char *ids[1] = { "room1" };
    apr_uint64_t seqs[1] = { 5 };

    add_msg(rd, 5, NULL, "already seen");
    add_msg(rd, 6, NULL, "six");
    add_msg(rd, 7, "typing", "seven");
    ck_assert_int_eq(comet_render_stream(b, COMET_T_SSE, 0, EPOCH, ids, seqs,
                                         1, 0, rd, 0, NULL,
                                         comet_test_pool),
                     APR_SUCCESS);
    COMET_ASSERT_BUF(b, "event: comet-missed\ndata: room1\n\n"
                        "id: 0000abcd:6\ndata: six\n\n"
                        "id: 0000abcd:7\nevent: typing\ndata: seven\n\n"
                        "event: comet-deleted\ndata: room1\n\n");
    ck_assert_uint_eq(seqs[0], 7);
}
END_TEST

START_TEST(multi_channel_frames_carry_the_compound_id_and_name_the_channel)
{
    comet_buf_t *b = comet_test_buf(4096);
    comet_read_t *rd = new_read(0, 0);
    const char *ids[2] = { "room1", "room2" };
    apr_uint64_t seqs[2] = { 3, 10 };

    add_msg(rd, 11, NULL, "a");
    add_msg(rd, 12, "typing", "b");
    ck_assert_int_eq(comet_render_stream(b, COMET_T_SSE, 0, EPOCH, ids, seqs,
                                         2, 1, rd, 0, NULL,
                                         comet_test_pool),
                     APR_SUCCESS);
    COMET_ASSERT_BUF(b, "id: 0000abcd:3,11\nevent: room2\ndata: a\n\n"
                        "id: 0000abcd:3,12\nevent: room2#typing\ndata: b\n\n");
    ck_assert_uint_eq(seqs[0], 3);
    ck_assert_uint_eq(seqs[1], 12);

    /* ndjson: the compound id too (a single channel's shows the message's
     * own id, see the chunked test). */
    comet_buf_truncate(b, 0);
    seqs[1] = 10;
    ck_assert_int_eq(comet_render_stream(b, COMET_T_STREAM, 0, EPOCH, ids,
                                         seqs, 2, 1, rd, 0, NULL,
                                         comet_test_pool),
                     APR_SUCCESS);
    COMET_ASSERT_BUF(b, "{\"channel\":\"room2\",\"id\":\"0000abcd:3,11\","
                        "\"time\":11,\"data\":\"a\"}\n"
                        "{\"channel\":\"room2\",\"id\":\"0000abcd:3,12\","
                        "\"event\":\"typing\",\"time\":12,\"data\":\"b\"}\n");
}
END_TEST

START_TEST(websocket_frames_hold_the_stream_objects_one_text_frame_each)
{
    comet_buf_t *b = comet_test_buf(4096);
    comet_read_t *rd = new_read(1, 1);
    const char *ids[1] = { "room1" };
    apr_uint64_t seqs[1] = { 5 };
    comet_msg_t *m;
    static const char want[] =
        "\x81\x21{\"missed\":true,\"channel\":\"room1\"}"
        "\x81\x48{\"channel\":\"room1\",\"id\":\"0000abcd:6\","
        "\"from\":\"bob\",\"time\":6,\"data\":\"six\"}"
        "\x81\x22{\"deleted\":true,\"channel\":\"room1\"}";

    add_msg(rd, 6, NULL, "six");
    m = &APR_ARRAY_IDX(rd->msgs, 0, comet_msg_t);
    m->from = "bob";
    m->from_len = 3;
    /* Never chunked, whatever the caller says. */
    ck_assert_int_eq(comet_render_stream(b, COMET_T_WS, 1, EPOCH, ids, seqs,
                                         1, 0, rd, 0, NULL, comet_test_pool),
                     APR_SUCCESS);
    ck_assert_uint_eq(b->len, sizeof(want) - 1);
    ck_assert(memcmp(b->data, want, b->len) == 0);
    ck_assert_uint_eq(seqs[0], 6);
}
END_TEST

START_TEST(chunked_stream_makes_each_frame_one_chunk)
{
    comet_buf_t *b = comet_test_buf(4096);
    comet_read_t *rd = new_read(1, 1);
    const char *ids[1] = { "c" };
    apr_uint64_t seqs[1] = { 0 };

    add_msg(rd, 1, NULL, "x");
    ck_assert_int_eq(comet_render_stream(b, COMET_T_STREAM, 1, EPOCH, ids,
                                         seqs, 1, 0, rd, 0, NULL,
                                         comet_test_pool),
                     APR_SUCCESS);
    COMET_ASSERT_BUF(b, "1e\r\n{\"missed\":true,\"channel\":\"c\"}\n\r\n"
                        "36\r\n{\"channel\":\"c\",\"id\":\"0000abcd:1\","
                        "\"time\":1,\"data\":\"x\"}\n\r\n"
                        "1f\r\n{\"deleted\":true,\"channel\":\"c\"}\n\r\n");
    ck_assert_uint_eq(seqs[0], 1);
}
END_TEST

START_TEST(a_frame_that_does_not_fit_is_left_out_and_the_position_stays)
{
    static const char first[] = "id: 0000abcd:1\ndata: x\n\n";
    comet_buf_t *b = comet_test_buf(sizeof(first) - 1 + 10);
    comet_read_t *rd = new_read(0, 0);
    const char *ids[1] = { "c" };
    apr_uint64_t seqs[1] = { 0 };

    add_msg(rd, 1, NULL, "x");
    add_msg(rd, 2, NULL, "a payload longer than the room left");
    ck_assert_int_eq(comet_render_stream(b, COMET_T_SSE, 0, EPOCH, ids, seqs,
                                         1, 0, rd, 0, NULL,
                                         comet_test_pool),
                     APR_ENOSPC);
    COMET_ASSERT_BUF(b, "id: 0000abcd:1\ndata: x\n\n");
    ck_assert_uint_eq(seqs[0], 1);
}
END_TEST

START_TEST(nothing_read_renders_nothing)
{
    comet_buf_t *b = comet_test_buf(4096);
    const char *ids[1] = { "c" };
    apr_uint64_t seqs[1] = { 4 };

    ck_assert_int_eq(comet_render_stream(b, COMET_T_SSE, 1, EPOCH, ids, seqs,
                                         1, 0, NULL, 0, NULL,
                                         comet_test_pool),
                     APR_SUCCESS);
    ck_assert_uint_eq(b->len, 0);
    ck_assert_uint_eq(seqs[0], 4);
}
END_TEST

/* A channel shared through Redis starts its ids anew below a reader's
 * position when Redis lost its data: the store's read says missed, its
 * newest is below the position, and its messages are all due. */
START_TEST(a_missed_read_below_the_position_starts_the_reader_over)
{
    comet_buf_t *b = comet_test_buf(4096);
    comet_read_t *rd = new_read(1, 0), *empty = new_read(1, 0);
    const char *ids[2] = { "room1", "room2" };
    apr_uint64_t seqs[2] = { 900, 0 };

    add_msg(rd, 41, NULL, "first anew");
    add_msg(rd, 42, NULL, "second anew");
    ck_assert_int_eq(comet_render_stream(b, COMET_T_SSE, 0, EPOCH, ids, seqs,
                                         1, 0, rd, 0, NULL,
                                         comet_test_pool),
                     APR_SUCCESS);
    COMET_ASSERT_BUF(b, "event: comet-missed\ndata: room1\n\n"
                        "id: 0000abcd:41\ndata: first anew\n\n"
                        "id: 0000abcd:42\ndata: second anew\n\n");
    ck_assert_uint_eq(seqs[0], 42);

    /* Nothing read: the reader moves to the channel's newest. */
    comet_buf_truncate(b, 0);
    empty->newest.epoch = EPOCH;
    empty->newest.seq = 40;
    seqs[0] = 900;
    seqs[1] = 3;
    ck_assert_int_eq(comet_render_stream(b, COMET_T_SSE, 0, EPOCH, ids, seqs,
                                         2, 0, empty, 0, NULL,
                                         comet_test_pool),
                     APR_SUCCESS);
    COMET_ASSERT_BUF(b, "event: comet-missed\ndata: room1\n\n");
    ck_assert_uint_eq(seqs[0], 40);
    ck_assert_uint_eq(seqs[1], 3);
}
END_TEST

/* ---- long-poll ---------------------------------------------------------- */

START_TEST(poll_document_holds_every_channels_news_and_the_position_after)
{
    comet_buf_t *b = comet_test_buf(4096), *tmp = comet_test_buf(4096);
    comet_read_t *r0 = new_read(0, 0), *r2 = new_read(1, 0);
    const comet_read_t *reads[3];
    const char *ids[3] = { "a", "b", "c" };
    apr_uint64_t seqs[3] = { 2, 7, 8 };

    add_msg(r0, 4, "typing", "four");
    add_msg(r2, 9, NULL, "nine");
    add_msg(r2, 10, NULL, "ten");
    reads[0] = r0;
    reads[1] = NULL;
    reads[2] = r2;
    ck_assert_int_eq(comet_render_poll(b, tmp, EPOCH, ids, seqs, 3, reads, 1,
                                       0, NULL),
                     APR_SUCCESS);
    COMET_ASSERT_BUF(b, "{\"id\":\"0000abcd:4,7,10\""
                        ",\"missed\":true,\"messages\":["
                        "{\"channel\":\"a\",\"id\":\"0000abcd:4\","
                        "\"event\":\"typing\",\"time\":4,\"data\":\"four\"},"
                        "{\"channel\":\"c\",\"id\":\"0000abcd:9\","
                        "\"time\":9,\"data\":\"nine\"},"
                        "{\"channel\":\"c\",\"id\":\"0000abcd:10\","
                        "\"time\":10,\"data\":\"ten\"}]}");
    ck_assert_uint_eq(seqs[0], 4);
    ck_assert_uint_eq(seqs[1], 7);
    ck_assert_uint_eq(seqs[2], 10);
}
END_TEST

START_TEST(poll_without_news_answers_the_position_the_client_has)
{
    comet_buf_t *b = comet_test_buf(4096), *tmp = comet_test_buf(4096);
    const comet_read_t *reads[1] = { NULL };
    const char *ids[1] = { "a" };
    apr_uint64_t seqs[1] = { 5 };

    ck_assert_int_eq(comet_render_poll(b, tmp, EPOCH, ids, seqs, 1, reads, 0,
                                       0, NULL),
                     APR_SUCCESS);
    COMET_ASSERT_BUF(b, "{\"id\":\"0000abcd:5\""
                        ",\"missed\":false,\"messages\":[]}");
    ck_assert_uint_eq(seqs[0], 5);
}
END_TEST

/* ---- bounds ------------------------------------------------------------- */

START_TEST(a_stream_limit_leaves_the_rest_for_later_but_always_takes_one)
{
    comet_buf_t *b = comet_test_buf(4096);
    comet_read_t *rd = new_read(0, 1);
    const char *ids[1] = { "c" };
    apr_uint64_t seqs[1] = { 0 };
    int complete = -1;

    add_msg(rd, 1, NULL, "first");
    add_msg(rd, 2, NULL, "second");
    add_msg(rd, 3, NULL, "third");
    /* Less than one frame: the first goes in all the same. */
    ck_assert_int_eq(comet_render_stream(b, COMET_T_SSE, 0, EPOCH, ids, seqs,
                                         1, 0, rd, 5, &complete,
                                         comet_test_pool), APR_SUCCESS);
    COMET_ASSERT_BUF(b, "id: 0000abcd:1\ndata: first\n\n");
    ck_assert_int_eq(complete, 0);
    ck_assert_uint_eq(seqs[0], 1);
    /* The next call goes on from there; two frames fit in 60 bytes. */
    comet_buf_truncate(b, 0);
    ck_assert_int_eq(comet_render_stream(b, COMET_T_SSE, 0, EPOCH, ids, seqs,
                                         1, 0, rd, 60, &complete,
                                         comet_test_pool), APR_SUCCESS);
    COMET_ASSERT_BUF(b, "id: 0000abcd:2\ndata: second\n\n"
                        "id: 0000abcd:3\ndata: third\n\n"
                        "event: comet-deleted\ndata: c\n\n");
    ck_assert_int_eq(complete, 1);
    ck_assert_uint_eq(seqs[0], 3);
}
END_TEST

START_TEST(a_capped_poll_holds_the_first_messages_and_the_id_after_them)
{
    comet_buf_t *b = comet_test_buf(4096), *tmp = comet_test_buf(4096);
    comet_read_t *r0 = new_read(0, 0), *r1 = new_read(0, 0);
    const comet_read_t *reads[2];
    const char *ids[2] = { "a", "b" };
    apr_uint64_t seqs[2] = { 0, 0 };
    int complete = -1;

    add_msg(r0, 4, NULL, "four");
    add_msg(r0, 5, NULL, "five");
    add_msg(r1, 6, NULL, "six");
    reads[0] = r0;
    reads[1] = r1;
    /* Each message is 56 bytes of JSON: two fit in 120, not three. */
    ck_assert_int_eq(comet_render_poll(b, tmp, EPOCH, ids, seqs, 2, reads, 0,
                                       120, &complete), APR_SUCCESS);
    COMET_ASSERT_BUF(b, "{\"id\":\"0000abcd:5,0\""
                        ",\"missed\":false,\"messages\":["
                        "{\"channel\":\"a\",\"id\":\"0000abcd:4\","
                        "\"time\":4,\"data\":\"four\"},"
                        "{\"channel\":\"a\",\"id\":\"0000abcd:5\","
                        "\"time\":5,\"data\":\"five\"}]}");
    ck_assert_int_eq(complete, 0);
    ck_assert_uint_eq(seqs[0], 5);
    ck_assert_uint_eq(seqs[1], 0);
    /* A bound below one message still lets one through. */
    comet_buf_truncate(b, 0);
    ck_assert_int_eq(comet_render_poll(b, tmp, EPOCH, ids, seqs, 2, reads, 0,
                                       1, &complete), APR_SUCCESS);
    COMET_ASSERT_BUF(b, "{\"id\":\"0000abcd:5,6\""
                        ",\"missed\":false,\"messages\":["
                        "{\"channel\":\"b\",\"id\":\"0000abcd:6\","
                        "\"time\":6,\"data\":\"six\"}]}");
    ck_assert_int_eq(complete, 1);
}
END_TEST

START_TEST(the_frame_bound_holds_for_the_worst_payloads)
{
    enum { N = 4096 };
    comet_buf_t *b = comet_test_buf(1024 * 1024);
    char *nl = apr_palloc(comet_test_pool, N + 1);
    char *ctl = apr_palloc(comet_test_pool, N + 1);
    char *chan = apr_palloc(comet_test_pool, 1025);
    char *event = apr_palloc(comet_test_pool, COMET_STORE_EVENT_MAX + 1);
    const char *ids[1024];
    apr_uint64_t seqs[1024];
    comet_msg_t m;
    apr_size_t bound = comet_render_frame_max(N, 1024);

    memset(nl, '\n', N);
    nl[N] = '\0';
    memset(ctl, 0x01, N);
    ctl[N] = '\0';
    memset(chan, 'c', 1024);
    chan[1024] = '\0';
    memset(event, 'e', COMET_STORE_EVENT_MAX);
    event[COMET_STORE_EVENT_MAX] = '\0';
    for (int i = 0; i < 1024; i++) {
        ids[i] = chan;
        seqs[i] = ~(apr_uint64_t)0;
    }
    memset(&m, 0, sizeof(m));
    m.id.epoch = EPOCH;
    m.id.seq = ~(apr_uint64_t)0;
    m.published = apr_time_from_sec(4000000000LL);
    m.event = event;
    m.event_len = COMET_STORE_EVENT_MAX;
    for (int t = 0; t < 2; t++) {
        m.data = t ? ctl : nl;
        m.data_len = N;
        comet_buf_truncate(b, 0);
        ck_assert_int_eq(comet_render_msg(b, COMET_T_SSE, 1, EPOCH, ids, seqs,
                                          1024, 0, &m, comet_test_pool),
                         APR_SUCCESS);
        ck_assert_uint_le(b->len, bound);
        comet_buf_truncate(b, 0);
        ck_assert_int_eq(comet_render_msg(b, COMET_T_STREAM, 1, EPOCH, ids,
                                          seqs, 1024, 0, &m, comet_test_pool),
                         APR_SUCCESS);
        ck_assert_uint_le(b->len, bound);
    }
    /* And it is not far above what such a payload really takes. */
    ck_assert_uint_le(bound, 6 * N + 32 * 1024);
}
END_TEST

START_TEST(poll_after_ids_started_anew_holds_them_and_their_position)
{
    comet_buf_t *b = comet_test_buf(4096), *tmp = comet_test_buf(4096);
    comet_read_t *rd = new_read(1, 0);
    const comet_read_t *reads[1];
    const char *ids[1] = { "a" };
    apr_uint64_t seqs[1] = { 900 };

    add_msg(rd, 7, NULL, "seven");
    reads[0] = rd;
    ck_assert_int_eq(comet_render_poll(b, tmp, EPOCH, ids, seqs, 1, reads, 1,
                                       0, NULL),
                     APR_SUCCESS);
    COMET_ASSERT_BUF(b, "{\"id\":\"0000abcd:7\""
                        ",\"missed\":true,\"messages\":["
                        "{\"channel\":\"a\",\"id\":\"0000abcd:7\","
                        "\"time\":7,\"data\":\"seven\"}]}");
    ck_assert_uint_eq(seqs[0], 7);
}
END_TEST

Suite *test_comet_render_suite(void)
{
    Suite *s = suite_create("comet_render");
    TCase *ts = tcase_create("stream");
    TCase *tp = tcase_create("poll");

    tcase_add_checked_fixture(ts, comet_test_pool_setup,
                              comet_test_pool_teardown);
    tcase_add_test(ts,
                   position_id_is_plain_for_one_channel_and_compound_for_several);
    tcase_add_test(ts,
                   sse_stream_of_a_read_is_missed_then_new_messages_then_deleted);
    tcase_add_test(ts,
                   multi_channel_frames_carry_the_compound_id_and_name_the_channel);
    tcase_add_test(ts, chunked_stream_makes_each_frame_one_chunk);
    tcase_add_test(ts,
                   websocket_frames_hold_the_stream_objects_one_text_frame_each);
    tcase_add_test(ts,
                   a_frame_that_does_not_fit_is_left_out_and_the_position_stays);
    tcase_add_test(ts, nothing_read_renders_nothing);
    tcase_add_test(ts,
                   a_missed_read_below_the_position_starts_the_reader_over);
    suite_add_tcase(s, ts);

    tcase_add_checked_fixture(tp, comet_test_pool_setup,
                              comet_test_pool_teardown);
    tcase_add_test(tp,
                   poll_document_holds_every_channels_news_and_the_position_after);
    tcase_add_test(tp, poll_without_news_answers_the_position_the_client_has);
    tcase_add_test(tp,
                   poll_after_ids_started_anew_holds_them_and_their_position);
    tcase_add_test(tp,
                   a_capped_poll_holds_the_first_messages_and_the_id_after_them);
    tcase_add_test(ts,
                   a_stream_limit_leaves_the_rest_for_later_but_always_takes_one);
    tcase_add_test(ts, the_frame_bound_holds_for_the_worst_payloads);
    suite_add_tcase(s, tp);
    return s;
}
