/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Unit tests of comet_store.c in one process: limits, missed detection,
 * reclaim, a full segment, accounting, slots and wakeups.  Time
 * is simulated through the now argument. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <apr_hash.h>
#include <apr_strings.h>

#include "store_util.h"

#define MB (1024 * 1024)

static comet_msgid_t mkid(apr_uint32_t epoch, apr_uint64_t seq)
{
    comet_msgid_t id;

    id.epoch = epoch;
    id.seq = seq;
    return id;
}

static comet_read_t rd(comet_store_t *st, const char *chan,
                       comet_msgid_t after, apr_time_t now)
{
    comet_read_t r;

    ck_assert_int_eq(comet_store_read_by_id(st, chan, strlen(chan), after, 0,
                                            0, now, comet_test_pool, &r),
                     APR_SUCCESS);
    return r;
}

static comet_msg_t *msg_at(comet_read_t *r, int i)
{
    return &APR_ARRAY_IDX(r->msgs, i, comet_msg_t);
}

static apr_uint64_t pub(comet_store_t *st, const char *chan, const char *data,
                        apr_time_t now)
{
    comet_publish_result_t res;

    ck_assert_int_eq(store_util_pub(st, chan, data, strlen(data), now, &res),
                     APR_SUCCESS);
    return res.id.seq;
}

/* ---- format, attach, config --------------------------------------------- */

START_TEST(format_refuses_a_too_small_segment_and_attach_foreign_memory)
{
    comet_store_config_t cfg;
    comet_store_t *st, *st2;
    apr_size_t min;
    char *seg;

    comet_store_config_default(&cfg, 0);
    min = comet_store_min_size(&cfg);
    ck_assert(min > 256 * 1024);
    cfg.size = min - 1;
    seg = store_util_segment(min + 4096);
    ck_assert_int_eq(comet_store_format(&st, seg, &cfg, comet_test_pool),
                     APR_EINVAL);
    cfg.size = min;
    ck_assert_int_eq(comet_store_format(&st, seg, &cfg, comet_test_pool),
                     APR_SUCCESS);
    ck_assert_uint_ne(comet_store_epoch(st), 0);

    ck_assert_int_eq(comet_store_attach(&st2, seg, min, comet_test_pool),
                     APR_SUCCESS);
    ck_assert_uint_eq(comet_store_epoch(st2), comet_store_epoch(st));
    ck_assert_int_eq(comet_store_attach(&st2, seg, min + 4096,
                                        comet_test_pool), COMET_ECORRUPT);
    /* Foreign memory: zeros, and a store whose magic was overwritten. */
    ck_assert_int_eq(comet_store_attach(&st2, store_util_segment(MB), MB,
                                        comet_test_pool), COMET_ECORRUPT);
    seg[0] ^= 0x55;
    ck_assert_int_eq(comet_store_attach(&st2, seg, min, comet_test_pool),
                     COMET_ECORRUPT);
    seg[0] ^= 0x55;
    ck_assert_int_eq(comet_store_attach(&st2, seg, min, comet_test_pool),
                     APR_SUCCESS);
    /* Where apr_shm puts it: 8 bytes into a mapping; 4 is refused. */
    ck_assert_int_eq(comet_store_format(&st2, seg + 8, &cfg, comet_test_pool),
                     APR_SUCCESS);
    ck_assert_int_eq(store_util_pub(st2, "c", "x", 1, 1, NULL), APR_SUCCESS);
    store_util_check(st2);
    ck_assert_int_eq(comet_store_attach(&st2, seg + 8, min, comet_test_pool),
                     APR_SUCCESS);
    store_util_check(st2);
    ck_assert_int_eq(comet_store_format(&st2, seg + 4, &cfg, comet_test_pool),
                     APR_EINVAL);
    /* Each format draws a new epoch. */
    ck_assert_int_eq(comet_store_format(&st2, seg, &cfg, comet_test_pool),
                     APR_SUCCESS);
    ck_assert_uint_ne(comet_store_epoch(st2), comet_store_epoch(st));
}
END_TEST

START_TEST(set_limits_applies_new_buffer_length_and_keeps_geometry)
{
    comet_store_t *st = store_util_make(MB, 10, 0, 0, 4);
    comet_store_config_t cfg;
    comet_read_t r;
    int i;

    for (i = 0; i < 10; i++) {
        pub(st, "c", "0123456789", 1);
    }
    comet_store_get_config(st, &cfg);
    ck_assert_uint_eq(cfg.buffer_length, 10);
    ck_assert_uint_eq(cfg.max_procs, 4);
    cfg.buffer_length = 4;
    cfg.message_timeout = STORE_UTIL_SEC(5);
    cfg.max_message_size = 20;
    cfg.max_procs = 99;
    comet_store_set_limits(st, &cfg);
    comet_store_get_config(st, &cfg);
    ck_assert_uint_eq(cfg.buffer_length, 4);
    ck_assert_uint_eq(cfg.max_procs, 4);
    ck_assert_uint_eq(cfg.size, MB);
    ck_assert_int_eq(cfg.message_timeout, STORE_UTIL_SEC(5));
    r = rd(st, "c", mkid(0, 0), 2);
    ck_assert_int_eq(r.msgs->nelts, 4);
    ck_assert_uint_eq(msg_at(&r, 0)->id.seq, 7);
    ck_assert_int_eq(store_util_pub(st, "c", "012345678901234567890", 21, 2,
                                    NULL), COMET_ETOOBIG);
    store_util_check(st);
}
END_TEST

/* ---- buffers ------------------------------------------------------------ */

START_TEST(publish_then_read_returns_the_message_with_event_and_times)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 0);
    comet_publish_t m = { "news", 4, "hello", 5, "update", 6, NULL, 0 };
    comet_publish_result_t res;
    apr_time_t before = apr_time_now();
    comet_read_t r;
    comet_msg_t *msg;

    ck_assert_int_eq(comet_store_publish(st, &m, 1000, NULL, NULL, &res),
                     APR_SUCCESS);
    ck_assert_uint_eq(res.id.epoch, comet_store_epoch(st));
    ck_assert_uint_eq(res.id.seq, 1);
    ck_assert_uint_eq(res.receivers, 0);
    r = rd(st, "news", mkid(0, 0), 1000);
    ck_assert_int_eq(r.msgs->nelts, 1);
    ck_assert(!r.missed && !r.deleted && !r.more);
    msg = msg_at(&r, 0);
    ck_assert_str_eq(msg->data, "hello");
    ck_assert_uint_eq(msg->data_len, 5);
    ck_assert_str_eq(msg->event, "update");
    ck_assert_uint_eq(msg->event_len, 6);
    ck_assert(msg->published >= before && msg->published <= apr_time_now());
    ck_assert_uint_eq(r.newest.seq, 1);
    /* No event: NULL; empty data is a message too. */
    m.event = NULL;
    m.event_len = 0;
    m.data_len = 0;
    ck_assert_int_eq(comet_store_publish(st, &m, 1001, NULL, NULL, &res),
                     APR_SUCCESS);
    r = rd(st, "news", mkid(res.id.epoch, 1), 1001);
    ck_assert_int_eq(r.msgs->nelts, 1);
    ck_assert_ptr_null(msg_at(&r, 0)->event);
    ck_assert_uint_eq(msg_at(&r, 0)->data_len, 0);
    ck_assert_int_eq(comet_store_read_by_id(st, "none", 4, mkid(0, 0), 0, 0, 1,
                                            comet_test_pool, &r),
                     COMET_ENOCHAN);
    store_util_check(st);
}
END_TEST

START_TEST(publish_refuses_bad_channel_event_and_size)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 0);
    comet_store_config_t cfg;
    comet_publish_t m = { "c", 1, "x", 1, NULL, 0, NULL, 0 };
    char ev[COMET_STORE_EVENT_MAX + 1];
    char *big;
    comet_store_stats_t s;

    memset(ev, 'e', sizeof(ev));
    m.event = ev;
    m.event_len = COMET_STORE_EVENT_MAX;
    ck_assert_int_eq(comet_store_publish(st, &m, 1, NULL, NULL, NULL),
                     APR_SUCCESS);
    m.event_len = COMET_STORE_EVENT_MAX + 1;
    ck_assert_int_eq(comet_store_publish(st, &m, 1, NULL, NULL, NULL),
                     COMET_EPROTO);
    m.event = "a b";
    m.event_len = 3;
    ck_assert_int_eq(comet_store_publish(st, &m, 1, NULL, NULL, NULL),
                     COMET_EPROTO);
    m.event = "a\nb";
    ck_assert_int_eq(comet_store_publish(st, &m, 1, NULL, NULL, NULL),
                     COMET_EPROTO);
    m.event = NULL;
    ck_assert_int_eq(comet_store_publish(st, &m, 1, NULL, NULL, NULL),
                     COMET_EPROTO);
    m.event_len = 0;
    m.channel = "bad channel";
    m.channel_len = 11;
    ck_assert_int_eq(comet_store_publish(st, &m, 1, NULL, NULL, NULL),
                     COMET_EBADCHAN);

    comet_store_get_config(st, &cfg);
    big = calloc(1, cfg.max_message_size + 1);
    m.channel = "c";
    m.channel_len = 1;
    m.data = big;
    m.data_len = cfg.max_message_size + 1;
    ck_assert_int_eq(comet_store_publish(st, &m, 1, NULL, NULL, NULL),
                     COMET_ETOOBIG);
    m.data_len = cfg.max_message_size;
    ck_assert_int_eq(comet_store_publish(st, &m, 1, NULL, NULL, NULL),
                     APR_SUCCESS);
    free(big);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.messages, 2);
    store_util_check(st);
}
END_TEST

START_TEST(publish_keeps_the_sender_beside_event_and_data)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 0);
    comet_publish_t m = { "room", 4, "hi there", 8, "chat", 4, NULL, 0 };
    char from[COMET_STORE_FROM_MAX + 1];
    comet_publish_result_t res;
    comet_read_t r;
    comet_msg_t *msg;

    /* Any bytes, up to the bound: the sender is shown JSON-escaped. */
    memset(from, 'a', sizeof(from));
    from[0] = '"';
    from[1] = '\0';
    m.from = from;
    m.from_len = COMET_STORE_FROM_MAX;
    ck_assert_int_eq(comet_store_publish(st, &m, 1, NULL, NULL, &res),
                     APR_SUCCESS);
    m.from = "alice";
    m.from_len = 5;
    m.event = NULL;
    m.event_len = 0;
    ck_assert_int_eq(comet_store_publish(st, &m, 2, NULL, NULL, &res),
                     APR_SUCCESS);
    m.from_len = COMET_STORE_FROM_MAX + 1;
    m.from = from;
    ck_assert_int_eq(comet_store_publish(st, &m, 3, NULL, NULL, NULL),
                     APR_EINVAL);
    m.from = NULL;
    m.from_len = 0;
    ck_assert_int_eq(comet_store_publish(st, &m, 3, NULL, NULL, &res),
                     APR_SUCCESS);

    r = rd(st, "room", mkid(0, 0), 4);
    ck_assert_int_eq(r.msgs->nelts, 3);
    msg = msg_at(&r, 0);
    ck_assert_uint_eq(msg->from_len, COMET_STORE_FROM_MAX);
    ck_assert(memcmp(msg->from, from, COMET_STORE_FROM_MAX) == 0);
    ck_assert_str_eq(msg->event, "chat");
    ck_assert_str_eq(msg->data, "hi there");
    msg = msg_at(&r, 1);
    ck_assert_str_eq(msg->from, "alice");
    ck_assert_ptr_null(msg->event);
    ck_assert_str_eq(msg->data, "hi there");
    msg = msg_at(&r, 2);
    ck_assert_ptr_null(msg->from);
    ck_assert_uint_eq(msg->from_len, 0);
    /* The checksum covers the sender: the verifier agrees. */
    store_util_check(st);
}
END_TEST

START_TEST(buffer_keeps_the_newest_by_count_evicting_oldest_first)
{
    comet_store_t *st = store_util_make(MB, 5, 0, 0, 0);
    comet_read_t r;
    char buf[16];
    int i;

    for (i = 1; i <= 8; i++) {
        snprintf(buf, sizeof(buf), "m%d", i);
        ck_assert_uint_eq(pub(st, "c", buf, i), (apr_uint64_t)i);
    }
    r = rd(st, "c", mkid(0, 0), 9);
    ck_assert_int_eq(r.msgs->nelts, 5);
    for (i = 0; i < 5; i++) {
        snprintf(buf, sizeof(buf), "m%d", i + 4);
        ck_assert_uint_eq(msg_at(&r, i)->id.seq, (apr_uint64_t)i + 4);
        ck_assert_str_eq(msg_at(&r, i)->data, buf);
    }
    ck_assert(r.missed);
    store_util_check(st);
}
END_TEST

START_TEST(buffer_drops_messages_older_than_the_timeout)
{
    comet_store_t *st = store_util_make(MB, 0, STORE_UTIL_SEC(10), 0, 0);
    comet_channel_stats_t cs;
    comet_store_stats_t s;
    comet_read_t r;

    pub(st, "c", "old", STORE_UTIL_SEC(100));
    pub(st, "c", "new", STORE_UTIL_SEC(105));
    r = rd(st, "c", mkid(0, 0), STORE_UTIL_SEC(110) - 1);
    ck_assert_int_eq(r.msgs->nelts, 2);
    ck_assert(!r.missed);
    r = rd(st, "c", mkid(0, 0), STORE_UTIL_SEC(110));
    ck_assert_int_eq(r.msgs->nelts, 1);
    ck_assert_str_eq(msg_at(&r, 0)->data, "new");
    ck_assert(r.missed);
    r = rd(st, "c", mkid(0, 0), STORE_UTIL_SEC(115));
    ck_assert_int_eq(r.msgs->nelts, 0);
    ck_assert_uint_eq(r.newest.seq, 2);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.messages, 0);
    ck_assert_int_eq(comet_store_channel_stats(st, "c", 1, &cs), APR_SUCCESS);
    ck_assert_uint_eq(cs.messages, 0);
    ck_assert_uint_eq(cs.published, 2);
    store_util_check(st);
}
END_TEST

START_TEST(read_stops_at_max_msgs_and_max_bytes_but_returns_one)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 0);
    comet_read_t r;
    int i;

    for (i = 0; i < 6; i++) {
        pub(st, "c", "0123456789", 1);
    }
    ck_assert_int_eq(comet_store_read_by_id(st, "c", 1, mkid(0, 0), 4, 0, 1,
                                            comet_test_pool, &r), APR_SUCCESS);
    ck_assert_int_eq(r.msgs->nelts, 4);
    ck_assert(r.more);
    ck_assert_int_eq(comet_store_read_by_id(st, "c", 1, msg_at(&r, 3)->id, 4,
                                            0, 1, comet_test_pool, &r),
                     APR_SUCCESS);
    ck_assert_int_eq(r.msgs->nelts, 2);
    ck_assert(!r.more);
    ck_assert_int_eq(comet_store_read_by_id(st, "c", 1, mkid(0, 0), 0, 25, 1,
                                            comet_test_pool, &r), APR_SUCCESS);
    ck_assert_int_eq(r.msgs->nelts, 2);
    ck_assert(r.more);
    ck_assert_int_eq(comet_store_read_by_id(st, "c", 1, mkid(0, 0), 0, 3, 1,
                                            comet_test_pool, &r), APR_SUCCESS);
    ck_assert_int_eq(r.msgs->nelts, 1);
    ck_assert(r.more);
}
END_TEST

/* Where a backlog of n starts: after it come the newest n kept. */
START_TEST(backlog_start_leaves_the_newest_n_after_it)
{
    comet_store_t *st = store_util_make(MB, 5, 0, 0, 1);
    comet_chanref_t ref;
    comet_msgid_t newest;
    apr_uint64_t seq[8], at = 99;
    apr_uint32_t slot;

    ck_assert_int_eq(comet_store_proc_attach(st, 1, &slot), APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, slot, "b", 1, 1, &ref,
                                           &newest), APR_SUCCESS);
    ck_assert_int_eq(comet_store_backlog_start(st, &ref, 3, 1, &at),
                     APR_SUCCESS);
    ck_assert_uint_eq(at, 0);
    /* Eight published, five kept: seq[3] .. seq[7]. */
    for (int i = 0; i < 8; i++) {
        seq[i] = pub(st, "b", "x", 1);
    }
    ck_assert_int_eq(comet_store_backlog_start(st, &ref, 2, 1, &at),
                     APR_SUCCESS);
    ck_assert_uint_eq(at, seq[5]);
    ck_assert_int_eq(comet_store_backlog_start(st, &ref, 0, 1, &at),
                     APR_SUCCESS);
    ck_assert_uint_eq(at, seq[7]);
    ck_assert_int_eq(comet_store_backlog_start(st, &ref, 4, 1, &at),
                     APR_SUCCESS);
    ck_assert_uint_eq(at, seq[3]);
    /* More than is kept: all of it. */
    ck_assert_int_eq(comet_store_backlog_start(st, &ref, 5, 1, &at),
                     APR_SUCCESS);
    ck_assert_uint_eq(at, 0);
    ck_assert_int_eq(comet_store_backlog_start(st, &ref, 1000, 1, &at),
                     APR_SUCCESS);
    ck_assert_uint_eq(at, 0);
    comet_store_unsubscribe(st, slot, &ref, 1);
}
END_TEST

/* ---- missed detection --------------------------------------------------- */

START_TEST(missed_is_set_when_messages_after_the_position_were_evicted)
{
    comet_store_t *st = store_util_make(MB, 3, 0, 0, 0);
    apr_uint32_t ep = comet_store_epoch(st);
    comet_read_t r;
    int i;

    for (i = 1; i <= 5; i++) {
        pub(st, "c", "x", 1);   /* seqs 1..5, 1 and 2 evicted */
    }
    r = rd(st, "c", mkid(ep, 1), 1);
    ck_assert(r.missed);
    ck_assert_int_eq(r.msgs->nelts, 3);
    r = rd(st, "c", mkid(ep, 2), 1);
    ck_assert(!r.missed);
    ck_assert_int_eq(r.msgs->nelts, 3);
    r = rd(st, "c", mkid(ep, 4), 1);
    ck_assert(!r.missed);
    ck_assert_int_eq(r.msgs->nelts, 1);
    ck_assert_uint_eq(msg_at(&r, 0)->id.seq, 5);
    r = rd(st, "c", mkid(ep, 5), 1);
    ck_assert(!r.missed);
    ck_assert_int_eq(r.msgs->nelts, 0);
    /* Another epoch: everything buffered, and missed. */
    r = rd(st, "c", mkid(ep ^ 1, 4), 1);
    ck_assert(r.missed);
    ck_assert_int_eq(r.msgs->nelts, 3);
}
END_TEST

START_TEST(missed_is_not_set_for_a_fresh_subscriber_of_a_quiet_channel)
{
    comet_store_t *st = store_util_make(MB, 0, STORE_UTIL_SEC(10), 0, 2);
    apr_uint32_t slot;
    comet_chanref_t ref;
    comet_msgid_t newest;
    comet_read_t r;

    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    pub(st, "c", "gone", 0);
    /* The message expired: a new subscriber starts after it anyway. */
    ck_assert_int_eq(comet_store_subscribe(st, slot, "c", 1,
                                           STORE_UTIL_SEC(20), &ref, &newest),
                     APR_SUCCESS);
    ck_assert_uint_eq(newest.seq, 1);
    pub(st, "c", "next", STORE_UTIL_SEC(21));
    ck_assert_int_eq(comet_store_read(st, &ref, newest, 0, 0,
                                      STORE_UTIL_SEC(21), comet_test_pool,
                                      &r), APR_SUCCESS);
    ck_assert(!r.missed);
    ck_assert_int_eq(r.msgs->nelts, 1);
    ck_assert_str_eq(msg_at(&r, 0)->data, "next");
}
END_TEST

START_TEST(missed_is_set_after_the_channel_was_reclaimed_and_recreated)
{
    comet_store_t *st = store_util_make(MB, 0, STORE_UTIL_SEC(10),
                                        STORE_UTIL_SEC(5), 2);
    apr_uint32_t ep = comet_store_epoch(st), slot;
    comet_channel_stats_t cs;
    comet_chanref_t ref;
    comet_msgid_t newest;
    comet_read_t r;
    apr_uint64_t s3, s4;

    pub(st, "a", "1", 0);
    pub(st, "a", "2", 0);
    s3 = pub(st, "a", "3", 0);
    /* Expired at 10 s, idle until 15 s. */
    ck_assert_uint_eq(comet_store_maintain(st, STORE_UTIL_SEC(15) - 1, NULL,
                                           NULL), 0);
    ck_assert_int_eq(comet_store_channel_stats(st, "a", 1, &cs), APR_SUCCESS);
    ck_assert_uint_eq(comet_store_maintain(st, STORE_UTIL_SEC(15), NULL,
                                           NULL), 1);
    ck_assert_int_eq(comet_store_channel_stats(st, "a", 1, &cs),
                     COMET_ENOCHAN);

    s4 = pub(st, "a", "4", STORE_UTIL_SEC(16));
    ck_assert_uint_eq(s4, s3 + 1);
    r = rd(st, "a", mkid(ep, 2), STORE_UTIL_SEC(16));   /* "3" is lost */
    ck_assert(r.missed);
    ck_assert_int_eq(r.msgs->nelts, 1);
    r = rd(st, "a", mkid(ep, s3), STORE_UTIL_SEC(16));  /* saw them all */
    ck_assert(!r.missed);
    ck_assert_int_eq(r.msgs->nelts, 1);

    /* A channel never seen before starts clean for a subscriber at 0. */
    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, slot, "b", 1,
                                           STORE_UTIL_SEC(16), &ref, &newest),
                     APR_SUCCESS);
    ck_assert_uint_eq(newest.seq, 0);
    pub(st, "b", "first", STORE_UTIL_SEC(16));
    ck_assert_int_eq(comet_store_read(st, &ref, newest, 0, 0,
                                      STORE_UTIL_SEC(16), comet_test_pool,
                                      &r), APR_SUCCESS);
    ck_assert(!r.missed);
    ck_assert_int_eq(r.msgs->nelts, 1);
    store_util_check(st);
}
END_TEST

/* ---- reclaim, full segment, accounting ---------------------------------- */

START_TEST(idle_channel_is_reclaimed_only_after_channel_idle)
{
    comet_store_t *st = store_util_make(MB, 0, STORE_UTIL_SEC(100),
                                        STORE_UTIL_SEC(60), 2);
    comet_store_stats_t s0, s;
    comet_chanref_t ref;
    comet_msgid_t newest;
    apr_uint32_t slot;

    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    comet_store_stats(st, &s0);
    ck_assert_int_eq(comet_store_subscribe(st, slot, "room", 4, 0, &ref,
                                           &newest), APR_SUCCESS);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.channels, 1);
    /* Subscribed: never reclaimed, however long. */
    ck_assert_uint_eq(comet_store_maintain(st, STORE_UTIL_SEC(1000), NULL,
                                           NULL), 0);
    comet_store_unsubscribe(st, slot, &ref, STORE_UTIL_SEC(1000));
    ck_assert_uint_eq(comet_store_maintain(st, STORE_UTIL_SEC(1059), NULL,
                                           NULL), 0);
    /* A message keeps it until the message expires, then idle runs. */
    pub(st, "room", "x", STORE_UTIL_SEC(1059));
    ck_assert_uint_eq(comet_store_maintain(st, STORE_UTIL_SEC(1200), NULL,
                                           NULL), 0);
    ck_assert_uint_eq(comet_store_maintain(st, STORE_UTIL_SEC(1219), NULL,
                                           NULL), 1);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.channels, 0);
    ck_assert_uint_eq(s.bytes_used, s0.bytes_used);
    ck_assert_uint_eq(s.bytes_free, s0.bytes_free);
    /* The old ref is dead. */
    ck_assert_int_eq(comet_store_read(st, &ref, mkid(0, 0), 0, 0, 1,
                                      comet_test_pool, &(comet_read_t){0}),
                     COMET_ENOCHAN);
    store_util_check(st);
}
END_TEST

START_TEST(memory_accounting_is_exact)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 2);
    comet_store_stats_t s0, s;
    comet_chanref_t ref;
    comet_msgid_t newest;
    apr_uint32_t slot;
    char data[300], longid[101];
    apr_size_t total;

    comet_store_stats(st, &s0);
    total = s0.bytes_used + s0.bytes_free;
    ck_assert_uint_eq(s0.bytes_used, 0);
    memset(data, 'd', sizeof(data));
    memset(longid, 'L', 100);
    longid[100] = '\0';

    /* 100 bytes: header + 16 in the first block, 60 + 24 in two more. */
    ck_assert_int_eq(store_util_pub(st, "c", data, 100, 1, NULL), APR_SUCCESS);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.bytes_used, 3 * 64);
    ck_assert_uint_eq(s.bytes_used + s.bytes_free, total);
    ck_assert_int_eq(store_util_pub(st, "c", data, 16, 1, NULL), APR_SUCCESS);
    ck_assert_int_eq(store_util_pub(st, "c", data, 17, 1, NULL), APR_SUCCESS);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.bytes_used, (3 + 1 + 2) * 64);
    /* An id over 24 bytes lives in ceil(100 / 60) = 2 blocks. */
    ck_assert_int_eq(store_util_pub(st, longid, data, 0, 1, NULL),
                     APR_SUCCESS);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.bytes_used, (6 + 2 + 1) * 64);
    /* A subscribed slot costs one block per channel, given back. */
    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, slot, "c", 1, 1, &ref,
                                           &newest), APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, slot, "c", 1, 1, &ref,
                                           &newest), APR_SUCCESS);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.bytes_used, (9 + 1) * 64);
    ck_assert_uint_eq(s.subscribers, 2);
    comet_store_unsubscribe(st, slot, &ref, 1);
    comet_store_unsubscribe(st, slot, &ref, 1);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.bytes_used, 9 * 64);
    ck_assert_uint_eq(s.subscribers, 0);
    store_util_check(st);
    ck_assert_int_eq(comet_store_delete(st, "c", 1, NULL, NULL, NULL),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_delete(st, longid, 100, NULL, NULL, NULL),
                     APR_SUCCESS);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.bytes_used, 0);
    ck_assert_uint_eq(s.bytes_free, total);
    ck_assert_uint_eq(s.channels, 0);
    ck_assert_uint_eq(s.messages, 0);
    store_util_check(st);
}
END_TEST

START_TEST(full_segment_refuses_with_nothing_changed_then_recovers)
{
    comet_store_config_t cfg;
    comet_store_t *st;
    comet_store_stats_t s, s2;
    comet_channel_stats_t cs, cs2;
    comet_read_t r, r2;
    char data[1000], name[32];
    apr_status_t rv = APR_SUCCESS;
    int i, n = 0;

    comet_store_config_default(&cfg, 0);
    cfg.max_message_size = 1000;
    cfg.max_procs = 2;
    cfg.buffer_length = 1000;
    cfg.message_timeout = STORE_UTIL_SEC(10);
    cfg.size = comet_store_min_size(&cfg) + 128 * 1024;
    st = store_util_make_cfg(&cfg);
    memset(data, 'f', sizeof(data));

    for (i = 0; i < 100000 && rv == APR_SUCCESS; i++) {
        snprintf(name, sizeof(name), "ch%d", i % 7);
        rv = store_util_pub(st, name, data, sizeof(data), i, NULL);
        n += rv == APR_SUCCESS;
    }
    ck_assert_int_eq(rv, COMET_EFULL);
    ck_assert_int_gt(n, 40);
    comet_store_stats(st, &s);
    ck_assert_int_eq(comet_store_channel_stats(st, "ch0", 3, &cs),
                     APR_SUCCESS);
    r = rd(st, "ch0", mkid(0, 0), i);

    /* Again, to an existing channel and to a new one: refused, no change. */
    ck_assert_int_eq(store_util_pub(st, "ch0", data, sizeof(data), i, NULL),
                     COMET_EFULL);
    ck_assert_int_eq(store_util_pub(st, "brand-new", data, sizeof(data), i,
                                    NULL), COMET_EFULL);
    comet_store_stats(st, &s2);
    ck_assert(memcmp(&s, &s2, sizeof(s)) == 0);
    ck_assert_int_eq(comet_store_channel_stats(st, "ch0", 3, &cs2),
                     APR_SUCCESS);
    ck_assert(memcmp(&cs, &cs2, sizeof(cs)) == 0);
    ck_assert_int_eq(comet_store_channel_stats(st, "brand-new", 9, &cs2),
                     COMET_ENOCHAN);
    r2 = rd(st, "ch0", mkid(0, 0), i);
    ck_assert_int_eq(r.msgs->nelts, r2.msgs->nelts);
    ck_assert(!r2.missed);
    store_util_check(st);

    /* Once the oldest messages are past the timeout there is room. */
    ck_assert_int_eq(store_util_pub(st, "brand-new", data, sizeof(data),
                                    STORE_UTIL_SEC(10) + 5, NULL),
                     APR_SUCCESS);
    comet_store_stats(st, &s2);
    ck_assert_uint_lt(s2.messages, s.messages);
    ck_assert_uint_eq(s2.bytes_used + s2.bytes_free,
                      s.bytes_used + s.bytes_free);
    store_util_check(st);
}
END_TEST

START_TEST(full_channel_table_refuses_until_idle_channels_go)
{
    comet_store_t *st = store_util_make(MB, 0, STORE_UTIL_SEC(1),
                                        STORE_UTIL_SEC(1), 2);
    comet_store_stats_t s;
    comet_chanref_t ref;
    comet_msgid_t newest;
    apr_uint32_t slot, i;
    char name[32];

    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    comet_store_stats(st, &s);
    for (i = 0; i < s.channels_max; i++) {
        snprintf(name, sizeof(name), "c%u", i);
        ck_assert_int_eq(store_util_pub(st, name, "x", 1, 0, NULL),
                         APR_SUCCESS);
    }
    ck_assert_int_eq(comet_store_subscribe(st, slot, "more", 4, 10, &ref,
                                           &newest), COMET_EFULL);
    ck_assert_int_eq(store_util_pub(st, "more", "x", 1, 10, NULL),
                     COMET_EFULL);
    /* Existing channels still take messages and subscribers. */
    ck_assert_int_eq(store_util_pub(st, "c1", "x", 1, 10, NULL), APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, slot, "c2", 2, 10, &ref,
                                           &newest), APR_SUCCESS);
    store_util_check(st);
    /* Expired and then idle for channel_idle: reclaimed to make room. */
    ck_assert_int_eq(comet_store_subscribe(st, slot, "more", 4,
                                           STORE_UTIL_SEC(3), &ref, &newest),
                     APR_SUCCESS);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.channels, 2);
    store_util_check(st);
}
END_TEST

START_TEST(stats_count_channels_messages_and_subscribers)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 3);
    comet_store_stats_t s;
    comet_channel_stats_t cs;
    comet_chanref_t r1, r2, r3;
    comet_msgid_t newest;
    comet_publish_result_t res;
    apr_uint32_t a, b;

    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &a), APR_SUCCESS);
    ck_assert_int_eq(comet_store_proc_attach(st, getppid(), &b), APR_SUCCESS);
    ck_assert_uint_ne(a, b);
    ck_assert_int_eq(comet_store_subscribe(st, a, "x", 1, 1, &r1, &newest),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, b, "x", 1, 1, &r2, &newest),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, b, "y", 1, 1, &r3, &newest),
                     APR_SUCCESS);
    ck_assert_int_eq(store_util_pub(st, "x", "hello", 5, 1, &res),
                     APR_SUCCESS);
    ck_assert_uint_eq(res.receivers, 2);
    ck_assert_int_eq(store_util_pub(st, "x", "hi", 2, 1, &res), APR_SUCCESS);
    ck_assert_int_eq(store_util_pub(st, "z", "hi", 2, 1, &res), APR_SUCCESS);
    ck_assert_uint_eq(res.receivers, 0);

    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.channels, 3);
    ck_assert_uint_eq(s.messages, 3);
    ck_assert_uint_eq(s.published, 3);
    ck_assert_uint_eq(s.subscribers, 3);
    ck_assert_uint_eq(s.recoveries, 0);
    ck_assert_uint_gt(s.channels_max, 100);
    ck_assert_uint_eq(comet_store_proc_subscribers(st, a), 1);
    ck_assert_uint_eq(comet_store_proc_subscribers(st, b), 2);

    ck_assert_int_eq(comet_store_channel_stats(st, "x", 1, &cs), APR_SUCCESS);
    ck_assert_uint_eq(cs.messages, 2);
    ck_assert_uint_eq(cs.bytes, 7);
    ck_assert_uint_eq(cs.subscribers, 2);
    ck_assert_uint_eq(cs.published, 2);
    ck_assert_uint_eq(cs.newest.seq, 2);
    ck_assert(cs.last_publish > 0);
    ck_assert_int_eq(comet_store_channel_stats(st, "q", 1, &cs),
                     COMET_ENOCHAN);
    ck_assert_int_eq(comet_store_channel_stats(st, "q q", 3, &cs),
                     COMET_EBADCHAN);
    store_util_check(st);
}
END_TEST

/* ---- delete ------------------------------------------------------------- */

static int wake_count[8];

static void count_wake(void *baton, apr_uint32_t slot)
{
    (void)baton;
    ck_assert_uint_lt(slot, 8);
    wake_count[slot]++;
}

START_TEST(delete_frees_messages_wakes_and_ends_after_last_subscriber)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 2);
    comet_store_stats_t s0, s;
    comet_chanref_t ref, ref2, got;
    comet_msgid_t newest;
    comet_read_t r;
    apr_uint32_t slot, receivers = 99;
    int overflow;

    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    comet_store_stats(st, &s0);
    ck_assert_int_eq(comet_store_subscribe(st, slot, "d", 1, 1, &ref, &newest),
                     APR_SUCCESS);
    pub(st, "d", "one", 1);
    ck_assert_uint_eq(comet_store_proc_drain(st, slot, &got, 1, &overflow), 1);
    memset(wake_count, 0, sizeof(wake_count));

    ck_assert_int_eq(comet_store_delete(st, "d", 1, count_wake, NULL,
                                        &receivers), APR_SUCCESS);
    ck_assert_uint_eq(receivers, 1);
    ck_assert_int_eq(wake_count[slot], 1);
    ck_assert_uint_eq(comet_store_proc_drain(st, slot, &got, 1, &overflow), 1);
    ck_assert_uint_eq(got.index, ref.index);
    ck_assert_uint_eq(got.gen, ref.gen);
    ck_assert_int_eq(comet_store_read(st, &ref, mkid(0, 0), 0, 0, 1,
                                      comet_test_pool, &r), APR_SUCCESS);
    ck_assert(r.deleted);
    ck_assert_int_eq(r.msgs->nelts, 0);
    ck_assert_int_eq(comet_store_read_by_id(st, "d", 1, mkid(0, 0), 0, 0, 1,
                                            comet_test_pool, &r),
                     COMET_ENOCHAN);
    ck_assert_int_eq(comet_store_delete(st, "d", 1, NULL, NULL, NULL),
                     COMET_ENOCHAN);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.messages, 0);
    ck_assert_uint_eq(s.channels, 1);
    store_util_check(st);

    /* The name is free at once: a new channel, a new ref. */
    ck_assert_int_eq(comet_store_subscribe(st, slot, "d", 1, 1, &ref2,
                                           &newest), APR_SUCCESS);
    ck_assert(ref2.index != ref.index || ref2.gen != ref.gen);
    ck_assert_uint_eq(newest.seq, 0);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.channels, 2);
    comet_store_unsubscribe(st, slot, &ref, 1);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.channels, 1);
    ck_assert_int_eq(comet_store_read(st, &ref, mkid(0, 0), 0, 0, 1,
                                      comet_test_pool, &r), COMET_ENOCHAN);
    /* Never published to: it goes with its last subscriber. */
    comet_store_unsubscribe(st, slot, &ref2, 1);
    ck_assert_int_eq(comet_store_delete(st, "d", 1, NULL, NULL, &receivers),
                     COMET_ENOCHAN);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.channels, 0);
    ck_assert_uint_eq(s.bytes_used, s0.bytes_used);
    store_util_check(st);
}
END_TEST

/* ---- what subscribers may cost ------------------------------------------ */

START_TEST(a_channel_never_published_goes_with_its_last_subscriber)
{
    comet_store_t *st = store_util_make(MB, 0, 0, STORE_UTIL_SEC(60), 2);
    comet_store_stats_t s0, s;
    comet_chanref_t a, b, c;
    comet_msgid_t newest;
    apr_uint32_t slot;
    char longid[200];

    memset(longid, 'L', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    comet_store_stats(st, &s0);
    ck_assert_int_eq(comet_store_subscribe(st, slot, longid, strlen(longid),
                                           0, &a, &newest), APR_SUCCESS);
    ck_assert_uint_eq(newest.seq, 0);
    ck_assert_int_eq(comet_store_subscribe(st, slot, longid, strlen(longid),
                                           0, &b, &newest), APR_SUCCESS);
    comet_store_unsubscribe(st, slot, &a, 0);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.channels, 1);
    /* The last one leaves: record, id blocks and entries go at once, not
     * channel_idle later. */
    comet_store_unsubscribe(st, slot, &b, 0);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.channels, 0);
    ck_assert_uint_eq(s.bytes_used, s0.bytes_used);
    store_util_check(st);

    /* Published to once: it is the publishers' and waits for
     * channel_idle as before (its message never expires here). */
    ck_assert_int_eq(comet_store_subscribe(st, slot, "p", 1, 0, &c, &newest),
                     APR_SUCCESS);
    pub(st, "p", "x", 0);
    comet_store_unsubscribe(st, slot, &c, 0);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.channels, 1);

    /* A process that dies takes its unpublished channels with it. */
    ck_assert_int_eq(comet_store_subscribe(st, slot, "q", 1, 0, &c, &newest),
                     APR_SUCCESS);
    comet_store_proc_detach(st, slot);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.channels, 1);
    ck_assert_uint_eq(s.subscribers, 0);
    store_util_check(st);
}
END_TEST

/* Subscribe to new channels named n0, n1, ... (idlen bytes each) until the
 * store says no; returns how many it took, *rv the refusal. */
static apr_uint32_t subscribe_until_refused(comet_store_t *st,
                                            apr_uint32_t slot,
                                            apr_size_t idlen,
                                            apr_status_t *rv)
{
    char name[1100];
    comet_chanref_t ref;
    comet_msgid_t newest;
    apr_uint32_t n;

    for (n = 0;; n++) {
        int k = snprintf(name, sizeof(name), "n%u-", n);

        memset(name + k, 'x', idlen > (apr_size_t)k ? idlen - k : 0);
        name[idlen > (apr_size_t)k ? idlen : (apr_size_t)k] = '\0';
        *rv = comet_store_subscribe(st, slot, name, strlen(name), 0, &ref,
                                    &newest);
        if (*rv != APR_SUCCESS) {
            return n;
        }
    }
}

START_TEST(subscriptions_leave_the_publishers_a_quarter_of_the_records)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 4);
    comet_store_stats_t s;
    comet_chanref_t ref;
    comet_msgid_t newest;
    apr_uint32_t slot, slot2, n, pubs = 0;
    apr_status_t rv;
    char name[32];

    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_proc_attach(st, getppid(), &slot2),
                     APR_SUCCESS);
    pub(st, "existing", "x", 0);
    n = subscribe_until_refused(st, slot, 8, &rv);
    ck_assert_int_eq(rv, COMET_EQUOTA);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.channels_max - s.channels,
                      s.channels_max / COMET_STORE_CHAN_RESERVE);
    ck_assert_uint_eq(n, s.channels - 1);
    /* Subscribers of published channels are still welcome, from any
     * process... */
    ck_assert_int_eq(comet_store_subscribe(st, slot2, "existing", 8, 0, &ref,
                                           &newest), APR_SUCCESS);
    /* ...and publishers have the rest of the table. */
    do {
        snprintf(name, sizeof(name), "pub%u", pubs);
        rv = store_util_pub(st, name, "x", 1, 0, NULL);
        pubs += rv == APR_SUCCESS;
    } while (rv == APR_SUCCESS);
    ck_assert_int_eq(rv, COMET_EFULL);
    ck_assert_uint_eq(pubs, s.channels_max / COMET_STORE_CHAN_RESERVE);
    store_util_check(st);
}
END_TEST

START_TEST(subscriptions_leave_the_publishers_an_eighth_of_the_blocks)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 4);
    comet_store_stats_t s0, s;
    comet_chanref_t ref;
    comet_msgid_t newest;
    apr_uint32_t slot, slot2, nblocks;
    apr_status_t rv;
    char data[1000];

    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_proc_attach(st, getppid(), &slot2),
                     APR_SUCCESS);
    comet_store_stats(st, &s0);
    nblocks = (apr_uint32_t)((s0.bytes_free + s0.bytes_used) / 64);
    /* Ids of 1000 bytes: 17 blocks and an entry each, so the blocks run
     * short before the records do; then short ids, one block each, take
     * what is left of the subscribers' share. */
    subscribe_until_refused(st, slot, 1000, &rv);
    ck_assert_int_eq(rv, COMET_EQUOTA);
    comet_store_stats(st, &s);
    ck_assert_uint_lt(s.bytes_free / 64,
                      nblocks / COMET_STORE_BLOCK_RESERVE + 18);
    ck_assert_uint_gt(s.channels_max - s.channels,
                      s.channels_max / COMET_STORE_CHAN_RESERVE);
    {
        char name[32];
        int i = 0;

        do {
            snprintf(name, sizeof(name), "s%d", i++);
            rv = comet_store_subscribe(st, slot, name, strlen(name), 0,
                                       &ref, &newest);
        } while (rv == APR_SUCCESS);
    }
    ck_assert_int_eq(rv, COMET_EQUOTA);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.bytes_free / 64, nblocks / COMET_STORE_BLOCK_RESERVE);
    /* Another process may not make new channels either... */
    ck_assert_int_eq(comet_store_subscribe(st, slot2, "t0", 2, 0, &ref,
                                           &newest), COMET_EQUOTA);
    /* ...but publishers still store messages, on new channels too. */
    memset(data, 'd', sizeof(data));
    ck_assert_int_eq(store_util_pub(st, "news", data, sizeof(data), 0, NULL),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, slot2, "news", 4, 0, &ref,
                                           &newest), APR_SUCCESS);
    store_util_check(st);
}
END_TEST

START_TEST(subscribing_to_existing_channels_only_refuses_the_others)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 2);
    comet_chanref_t ref, held;
    comet_msgid_t newest;
    comet_store_stats_t s;
    apr_uint32_t slot;

    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe_ex(st, slot, "none", 4,
                                              COMET_STORE_SUB_EXISTING, 0,
                                              &ref, &newest), COMET_ENOCHAN);
    /* A record that only subscribers made is not a channel yet. */
    ck_assert_int_eq(comet_store_subscribe(st, slot, "sub", 3, 0, &held,
                                           &newest), APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe_ex(st, slot, "sub", 3,
                                              COMET_STORE_SUB_EXISTING, 0,
                                              &ref, &newest), COMET_ENOCHAN);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.subscribers, 1);
    pub(st, "sub", "now it is", 0);
    ck_assert_int_eq(comet_store_subscribe_ex(st, slot, "sub", 3,
                                              COMET_STORE_SUB_EXISTING, 0,
                                              &ref, &newest), APR_SUCCESS);
    ck_assert_uint_gt(newest.seq, 0);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.subscribers, 2);
    store_util_check(st);
}
END_TEST

START_TEST(event_types_of_the_servers_signals_are_reserved)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 0);
    comet_publish_t m = { "c", 1, "x", 1, NULL, 0, NULL, 0 };
    const char *refused[] = { "comet-missed", "comet-deleted", "Comet-Missed",
                              "COMET-anything", "comet-" };
    const char *allowed[] = { "comet", "comets", "my-comet-missed", "cometx" };
    comet_store_stats_t s;
    size_t i;

    for (i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        m.event = refused[i];
        m.event_len = strlen(refused[i]);
        ck_assert_msg(comet_store_publish(st, &m, 1, NULL, NULL, NULL)
                      == COMET_ERESERVED, "%s was accepted", refused[i]);
    }
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.messages, 0);
    ck_assert_uint_eq(s.channels, 0);
    for (i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++) {
        m.event = allowed[i];
        m.event_len = strlen(allowed[i]);
        ck_assert_int_eq(comet_store_publish(st, &m, 1, NULL, NULL, NULL),
                         APR_SUCCESS);
    }
    store_util_check(st);
}
END_TEST

START_TEST(an_id_beyond_the_newest_seq_reads_as_one_of_another_epoch)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 0);
    apr_uint32_t ep = comet_store_epoch(st);
    apr_uint64_t s1, s2;
    comet_read_t r;

    s1 = pub(st, "a", "1", 0);
    s2 = pub(st, "a", "2", 0);
    ck_assert_uint_eq(comet_store_last_seq(st), s2);
    /* The newest is a position like any other. */
    r = rd(st, "a", mkid(ep, s2), 0);
    ck_assert(!r.missed);
    ck_assert_int_eq(r.msgs->nelts, 0);
    /* One past it was never handed out: everything kept, and a miss. */
    r = rd(st, "a", mkid(ep, s2 + 1), 0);
    ck_assert(r.missed);
    ck_assert_int_eq(r.msgs->nelts, 2);
    ck_assert_uint_eq(msg_at(&r, 0)->id.seq, s1);
    r = rd(st, "a", mkid(ep, APR_UINT64_C(0xffffffffffffffff)), 0);
    ck_assert(r.missed);
    ck_assert_int_eq(r.msgs->nelts, 2);
}
END_TEST

/* ---- channel lists ------------------------------------------------------ */

START_TEST(channels_lists_subscribed_channels_matching_the_pattern)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 2);
    static const char *const names[] = {
        "news/sport", "news/weather", "chat/1", "chat/2", "quiet"
    };
    comet_chanref_t ref;
    comet_msgid_t newest;
    apr_array_header_t *a;
    apr_uint32_t slot;
    char longid[300];
    int i, found = 0;

    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    for (i = 0; i < 4; i++) {
        ck_assert_int_eq(comet_store_subscribe(st, slot, names[i],
                                               strlen(names[i]), 1, &ref,
                                               &newest), APR_SUCCESS);
    }
    pub(st, "quiet", "no subscribers", 1);
    memset(longid, 'n', sizeof(longid));
    memcpy(longid, "news/", 5);
    ck_assert_int_eq(comet_store_subscribe(st, slot, longid, sizeof(longid), 1,
                                           &ref, &newest), APR_SUCCESS);

    a = comet_store_channels(st, NULL, 100, comet_test_pool);
    ck_assert_int_eq(a->nelts, 5);
    a = comet_store_channels(st, "news/*", 100, comet_test_pool);
    ck_assert_int_eq(a->nelts, 3);
    for (i = 0; i < a->nelts; i++) {
        const char *n = APR_ARRAY_IDX(a, i, char *);

        ck_assert(strncmp(n, "news/", 5) == 0);
        found |= strlen(n) == sizeof(longid);
    }
    ck_assert(found);
    a = comet_store_channels(st, "chat/[2-9]", 100, comet_test_pool);
    ck_assert_int_eq(a->nelts, 1);
    ck_assert_str_eq(APR_ARRAY_IDX(a, 0, char *), "chat/2");
    a = comet_store_channels(st, "*", 2, comet_test_pool);
    ck_assert_int_eq(a->nelts, 2);
    a = comet_store_channels(st, "quiet", 10, comet_test_pool);
    ck_assert_int_eq(a->nelts, 0);
}
END_TEST

/* Lock holds of the walk, counted by the test hook (called with the lock
 * just taken). */
static volatile int walk_locks;

static void count_locks(int point)
{
    if (point == COMET_STORE_HOOK_LOCKED) {
        walk_locks++;
    }
}

typedef struct churn_t {
    comet_store_t *st;
    apr_uint32_t   slot;
    volatile int   stop;
    long           rounds;
} churn_t;

/* Channels that come and go while another thread walks the table. */
static void *churn_main(void *arg)
{
    churn_t *c = arg;
    comet_chanref_t ref;
    comet_msgid_t newest;
    char name[32];

    while (!c->stop) {
        int n = snprintf(name, sizeof(name), "churn/%ld", c->rounds % 500);

        if (comet_store_subscribe(c->st, c->slot, name, (apr_size_t)n, 1,
                                  &ref, &newest) == APR_SUCCESS) {
            comet_store_unsubscribe(c->st, c->slot, &ref, 1);
        }
        c->rounds++;
    }
    return NULL;
}

START_TEST(channels_walks_the_table_in_slices_listing_steady_channels_once)
{
    enum { STEADY = 3000 };
    comet_store_t *st = store_util_make(8 * MB, 0, 0, 0, 2);
    comet_store_stats_t s;
    comet_chanref_t ref;
    comet_msgid_t newest;
    apr_array_header_t *a;
    apr_uint32_t slot;
    char name[32];
    pthread_t thr;
    churn_t churn;
    int i, w;

    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    for (i = 0; i < STEADY; i++) {
        int n = snprintf(name, sizeof(name), "steady/%d", i);

        ck_assert_int_eq(comet_store_subscribe(st, slot, name, (apr_size_t)n,
                                               1, &ref, &newest),
                         APR_SUCCESS);
    }
    comet_store_stats(st, &s);
    ck_assert_uint_gt(s.channels_max, 2 * STEADY);

    /* Never the whole table under one lock: one hold per slice. */
    walk_locks = 0;
    comet_store_test_hook = count_locks;
    a = comet_store_channels(st, "steady/*", APR_SIZE_MAX, comet_test_pool);
    comet_store_test_hook = NULL;
    ck_assert_int_eq(a->nelts, STEADY);
    ck_assert_msg(walk_locks >= (int)(s.channels_max / 256),
                  "%d lock holds for %u records", walk_locks,
                  s.channels_max);

    /* Channels made and dropped meanwhile may or may not be listed; those
     * subscribed all along are, each exactly once. */
    memset(&churn, 0, sizeof(churn));
    churn.st = st;
    churn.slot = slot;
    ck_assert_int_eq(pthread_create(&thr, NULL, churn_main, &churn), 0);
    for (w = 0; w < 20; w++) {
        apr_hash_t *seen = apr_hash_make(comet_test_pool);
        int steady = 0;

        a = comet_store_channels(st, NULL, APR_SIZE_MAX, comet_test_pool);
        for (i = 0; i < a->nelts; i++) {
            const char *n = APR_ARRAY_IDX(a, i, char *);

            ck_assert_msg(!apr_hash_get(seen, n, APR_HASH_KEY_STRING),
                          "%s listed twice", n);
            apr_hash_set(seen, n, APR_HASH_KEY_STRING, n);
            if (!strncmp(n, "steady/", 7)) {
                steady++;
            }
            else {
                ck_assert_msg(!strncmp(n, "churn/", 6), "%s", n);
            }
        }
        ck_assert_int_eq(steady, STEADY);
    }
    churn.stop = 1;
    pthread_join(thr, NULL);
    ck_assert_int_gt(churn.rounds, 0);
    store_util_check(st);
}
END_TEST

/* ---- process slots and wakeups ------------------------------------------ */

static pid_t dead_pid(void)
{
    pid_t pid = fork();

    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        _exit(0);
    }
    ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
    return pid;
}

START_TEST(proc_slots_attach_reap_and_clear_counts)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 2);
    comet_store_stats_t s;
    comet_channel_stats_t cs;
    comet_chanref_t ref;
    comet_msgid_t newest;
    comet_publish_result_t res;
    apr_uint32_t a, b, c;
    pid_t gone = dead_pid();

    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &a), APR_SUCCESS);
    ck_assert_int_eq(comet_store_proc_attach(st, gone, &b), APR_SUCCESS);
    ck_assert_uint_ne(a, b);
    ck_assert_int_eq(comet_store_subscribe(st, b, "c", 1, 1, &ref, &newest),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, b, "c", 1, 1, &ref, &newest),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, a, "c", 1, 1, &ref, &newest),
                     APR_SUCCESS);
    ck_assert_int_eq(store_util_pub(st, "c", "x", 1, 1, &res), APR_SUCCESS);
    ck_assert_uint_eq(res.receivers, 3);
    /* Both slots live-looking: a third process finds no slot... */
    ck_assert_int_eq(comet_store_proc_attach(st, getppid(), &c), APR_SUCCESS);
    ck_assert_uint_eq(c, b);    /* ...except the dead one's, cleared. */
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.subscribers, 1);
    ck_assert_uint_eq(comet_store_proc_subscribers(st, c), 0);
    ck_assert_int_eq(comet_store_proc_attach(st, dead_pid(), &c),
                     COMET_ENOSLOT);

    /* Reap: a slot whose pid is gone is cleared and freed. */
    comet_store_proc_detach(st, b);
    ck_assert_int_eq(comet_store_proc_attach(st, gone, &b), APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, b, "c", 1, 1, &ref, &newest),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_channel_stats(st, "c", 1, &cs), APR_SUCCESS);
    ck_assert_uint_eq(cs.subscribers, 2);
    ck_assert_uint_eq(comet_store_proc_reap(st), 1);
    ck_assert_uint_eq(comet_store_proc_reap(st), 0);
    ck_assert_int_eq(comet_store_channel_stats(st, "c", 1, &cs), APR_SUCCESS);
    ck_assert_uint_eq(cs.subscribers, 1);
    ck_assert_uint_eq(comet_store_proc_subscribers(st, b), 0);
    ck_assert_int_eq(comet_store_subscribe(st, b, "c", 1, 1, &ref, &newest),
                     COMET_ENOSLOT);
    ck_assert_int_eq(comet_store_subscribe(st, 7, "c", 1, 1, &ref, &newest),
                     APR_EINVAL);

    /* The same pid attaching again gets its slot back, emptied. */
    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &c), APR_SUCCESS);
    ck_assert_uint_eq(c, a);
    ck_assert_uint_eq(comet_store_proc_subscribers(st, a), 0);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.subscribers, 0);
    store_util_check(st);
}
END_TEST

START_TEST(wakeups_coalesce_until_drained_and_queue_each_channel_once)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 4);
    comet_chanref_t ra, rb, rc, got[8];
    comet_msgid_t newest;
    apr_uint32_t a, b;
    int overflow, i;
    comet_publish_t m = { "c", 1, "x", 1, NULL, 0, NULL, 0 };

    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &a), APR_SUCCESS);
    ck_assert_int_eq(comet_store_proc_attach(st, getppid(), &b), APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, a, "c", 1, 1, &ra, &newest),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, a, "c", 1, 1, &ra, &newest),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, b, "c", 1, 1, &rb, &newest),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, a, "e", 1, 1, &rc, &newest),
                     APR_SUCCESS);
    memset(wake_count, 0, sizeof(wake_count));
    for (i = 0; i < 3; i++) {
        ck_assert_int_eq(comet_store_publish(st, &m, 1, count_wake, NULL,
                                             NULL), APR_SUCCESS);
    }
    m.channel = "e";
    ck_assert_int_eq(comet_store_publish(st, &m, 1, count_wake, NULL, NULL),
                     APR_SUCCESS);
    m.channel = "nobody";
    m.channel_len = 6;
    ck_assert_int_eq(comet_store_publish(st, &m, 1, count_wake, NULL, NULL),
                     APR_SUCCESS);
    ck_assert_int_eq(wake_count[a], 1);
    ck_assert_int_eq(wake_count[b], 1);
    ck_assert_int_eq(wake_count[2] + wake_count[3], 0);

    /* a: "c" once (three publishes), then "e". */
    ck_assert_uint_eq(comet_store_proc_drain(st, a, got, 8, &overflow), 2);
    ck_assert(!overflow);
    ck_assert_uint_eq(got[0].index, ra.index);
    ck_assert_uint_eq(got[1].index, rc.index);
    ck_assert_uint_eq(comet_store_proc_drain(st, a, got, 8, &overflow), 0);

    /* a was drained: kicked again; b was not: no second kick. */
    m.channel = "c";
    m.channel_len = 1;
    ck_assert_int_eq(comet_store_publish(st, &m, 1, count_wake, NULL, NULL),
                     APR_SUCCESS);
    ck_assert_int_eq(wake_count[a], 2);
    ck_assert_int_eq(wake_count[b], 1);
    ck_assert_uint_eq(comet_store_proc_drain(st, b, got, 8, &overflow), 1);
    ck_assert_uint_eq(got[0].index, rb.index);
    ck_assert_uint_eq(comet_store_proc_drain(st, a, got, 8, &overflow), 1);

    /* A drain shorter than the queue keeps the mark: no kick meanwhile. */
    m.channel = "e";
    ck_assert_int_eq(comet_store_publish(st, &m, 1, count_wake, NULL, NULL),
                     APR_SUCCESS);
    m.channel = "c";
    ck_assert_int_eq(comet_store_publish(st, &m, 1, count_wake, NULL, NULL),
                     APR_SUCCESS);
    ck_assert_int_eq(wake_count[a], 3);
    ck_assert_uint_eq(comet_store_proc_drain(st, a, got, 1, &overflow), 1);
    ck_assert_int_eq(comet_store_publish(st, &m, 1, count_wake, NULL, NULL),
                     APR_SUCCESS);
    ck_assert_int_eq(wake_count[a], 3);
    ck_assert_uint_ge(comet_store_proc_drain(st, a, got, 8, &overflow), 1);
    ck_assert_uint_eq(comet_store_proc_drain(st, a, got, 8, &overflow), 0);
    ck_assert_int_eq(comet_store_publish(st, &m, 1, count_wake, NULL, NULL),
                     APR_SUCCESS);
    ck_assert_int_eq(wake_count[a], 4);
    store_util_check(st);
}
END_TEST

START_TEST(maintain_kicks_again_a_slot_woken_but_not_drained_for_a_second)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 2);
    comet_chanref_t ref, got[2];
    comet_msgid_t newest;
    apr_uint32_t slot;
    int overflow;

    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, slot, "c", 1, 0, &ref, &newest),
                     APR_SUCCESS);
    memset(wake_count, 0, sizeof(wake_count));
    /* The publisher's kick is lost (no wake function). */
    pub(st, "c", "x", STORE_UTIL_SEC(10));
    comet_store_maintain(st, STORE_UTIL_SEC(11) - 1, count_wake, NULL);
    ck_assert_int_eq(wake_count[slot], 0);
    comet_store_maintain(st, STORE_UTIL_SEC(11), count_wake, NULL);
    ck_assert_int_eq(wake_count[slot], 1);
    comet_store_maintain(st, STORE_UTIL_SEC(11) + 5, count_wake, NULL);
    ck_assert_int_eq(wake_count[slot], 1);
    comet_store_maintain(st, STORE_UTIL_SEC(12), count_wake, NULL);
    ck_assert_int_eq(wake_count[slot], 2);
    ck_assert_uint_eq(comet_store_proc_drain(st, slot, got, 2, &overflow), 1);
    comet_store_maintain(st, STORE_UTIL_SEC(20), count_wake, NULL);
    ck_assert_int_eq(wake_count[slot], 2);
}
END_TEST

START_TEST(wakeup_queue_overflow_is_reported_once)
{
    comet_store_t *st = store_util_make(8 * MB, 0, 0, 0, 2);
    comet_chanref_t ref, *got;
    comet_msgid_t newest;
    apr_uint32_t slot;
    char name[32];
    int i, overflow;
    apr_size_t n;

    got = malloc(sizeof(*got) * (COMET_STORE_QUEUE_LEN + 10));
    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    for (i = 0; i < COMET_STORE_QUEUE_LEN + 5; i++) {
        snprintf(name, sizeof(name), "ch%d", i);
        ck_assert_int_eq(comet_store_subscribe(st, slot, name, strlen(name), 1,
                                               &ref, &newest), APR_SUCCESS);
        pub(st, name, "x", 1);
    }
    n = comet_store_proc_drain(st, slot, got, COMET_STORE_QUEUE_LEN + 10,
                               &overflow);
    ck_assert_uint_eq(n, COMET_STORE_QUEUE_LEN);
    ck_assert(overflow);
    ck_assert_uint_eq(comet_store_proc_drain(st, slot, got, 10, &overflow), 0);
    ck_assert(!overflow);
    free(got);
    store_util_check(st);
}
END_TEST

START_TEST(an_extra_slot_shares_the_pid_and_goes_with_its_process)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 4);
    comet_chanref_t ref;
    comet_msgid_t newest;
    comet_publish_result_t res;
    apr_uint32_t a, x, again, y;
    pid_t gone = dead_pid();

    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &a), APR_SUCCESS);
    ck_assert_int_eq(comet_store_proc_attach_ex(st, getpid(),
                                                COMET_STORE_SLOT_EXTRA, &x),
                     APR_SUCCESS);
    ck_assert_uint_ne(a, x);
    /* Subscribers of both slots are receivers of one channel. */
    ck_assert_int_eq(comet_store_subscribe(st, a, "c", 1, 1, &ref, &newest),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, x, "c", 1, 1, &ref, &newest),
                     APR_SUCCESS);
    ck_assert_int_eq(store_util_pub(st, "c", "m", 1, 1, &res), APR_SUCCESS);
    ck_assert_uint_eq(res.receivers, 2);

    /* A new process with the pid of a dead one that held two slots takes
     * the first over and frees the other. */
    ck_assert_int_eq(comet_store_proc_attach(st, gone, &y), APR_SUCCESS);
    ck_assert_int_eq(comet_store_proc_attach_ex(st, gone,
                                                COMET_STORE_SLOT_EXTRA, &y),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, y, "c", 1, 1, &ref, &newest),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_proc_attach(st, gone, &again), APR_SUCCESS);
    ck_assert_int_eq(store_util_pub(st, "c", "m", 1, 1, &res), APR_SUCCESS);
    ck_assert_uint_eq(res.receivers, 2);
    /* Both its slots are free again (one is its again): two attach. */
    ck_assert_int_eq(comet_store_proc_attach(st, getppid(), &y),
                     APR_SUCCESS);
    ck_assert_uint_ne(y, again);

    /* Reaping a dead process clears all its slots. */
    comet_store_proc_detach(st, again);
    comet_store_proc_detach(st, y);
    ck_assert_int_eq(comet_store_proc_attach(st, gone, &y), APR_SUCCESS);
    ck_assert_int_eq(comet_store_proc_attach_ex(st, gone,
                                                COMET_STORE_SLOT_EXTRA,
                                                &again), APR_SUCCESS);
    ck_assert_int_eq(comet_store_proc_watch(st, again, 2, NULL), APR_SUCCESS);
    ck_assert_uint_eq(comet_store_patterns(st), 2);
    ck_assert_uint_eq(comet_store_proc_reap(st), 2);
    ck_assert_uint_eq(comet_store_patterns(st), 0);
    store_util_check(st);
}
END_TEST

START_TEST(a_watching_slot_is_queued_every_channel_once_per_burst)
{
    comet_store_t *st = store_util_make(8 * MB, 0, 0, 0, 4);
    comet_chanref_t ref, *got;
    comet_msgid_t newest;
    comet_publish_result_t res;
    apr_array_header_t *since;
    apr_uint32_t w, other;
    apr_uint64_t seq;
    const char *id;
    apr_size_t n, len;
    char name[32];
    int overflow, i;

    got = malloc(sizeof(*got) * (COMET_STORE_QUEUE_LEN + 10));
    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &other),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_proc_attach_ex(st, getpid(),
                                                COMET_STORE_SLOT_EXTRA, &w),
                     APR_SUCCESS);
    pub(st, "before", "x", 1);
    /* Not watching: nothing queued, nobody woken. */
    memset(wake_count, 0, sizeof(wake_count));
    pub(st, "quiet", "x", 1);
    ck_assert_int_eq(wake_count[w], 0);

    ck_assert_int_eq(comet_store_proc_watch(st, w, 3, &seq), APR_SUCCESS);
    ck_assert_uint_eq(seq, comet_store_last_seq(st));
    ck_assert_uint_eq(comet_store_patterns(st), 3);
    ck_assert_int_eq(comet_store_proc_watch(st, 9, 1, NULL), APR_EINVAL);
    for (i = 0; i < 50; i++) {
        ck_assert_int_eq(comet_store_publish(st, &(comet_publish_t){
                             i % 2 ? "a" : "b", 1, "x", 1, NULL, 0, NULL, 0 }, 1,
                             count_wake, NULL, &res), APR_SUCCESS);
        /* Watching is not subscribing: nobody receives it. */
        ck_assert_uint_eq(res.receivers, 0);
    }
    ck_assert_int_eq(wake_count[w], 1);
    ck_assert_int_eq(wake_count[other], 0);
    n = comet_store_proc_drain(st, w, got, 8, &overflow);
    ck_assert_uint_eq(n, 2);
    ck_assert(!overflow);
    ck_assert_int_eq(comet_store_chan_id(st, &got[0], comet_test_pool, &id,
                                         &len), APR_SUCCESS);
    ck_assert_str_eq(id, "b");
    ck_assert_uint_eq(len, 1);

    /* A subscribed channel is queued once for both reasons. */
    ck_assert_int_eq(comet_store_subscribe(st, w, "s", 1, 1, &ref, &newest),
                     APR_SUCCESS);
    pub(st, "s", "x", 1);
    ck_assert_uint_eq(comet_store_proc_drain(st, w, got, 8, &overflow), 1);
    ck_assert_uint_eq(got[0].index, ref.index);

    /* More distinct channels than the queue: overflow, and the walk finds
     * what was published since. */
    seq = comet_store_last_seq(st);
    for (i = 0; i < COMET_STORE_QUEUE_LEN + 5; i++) {
        snprintf(name, sizeof(name), "ch%d", i);
        pub(st, name, "x", 1);
    }
    n = comet_store_proc_drain(st, w, got, COMET_STORE_QUEUE_LEN + 10,
                               &overflow);
    ck_assert_uint_eq(n, COMET_STORE_QUEUE_LEN);
    ck_assert(overflow);
    since = comet_store_published_since(st, seq, NULL, NULL,
                                        comet_test_pool);
    ck_assert_int_eq(since->nelts, COMET_STORE_QUEUE_LEN + 5);
    since = comet_store_published_since(st, 0, NULL, NULL, comet_test_pool);
    ck_assert_int_eq(since->nelts, COMET_STORE_QUEUE_LEN + 5 + 5);

    /* Watch off: publishes are no longer queued there. */
    ck_assert_int_eq(comet_store_proc_watch(st, w, 0, NULL), APR_SUCCESS);
    ck_assert_uint_eq(comet_store_patterns(st), 0);
    pub(st, "a", "y", 1);
    ck_assert_uint_eq(comet_store_proc_drain(st, w, got, 8, &overflow), 0);
    store_util_check(st);

    /* A stale ref names nothing. */
    ref.gen++;
    ck_assert_int_eq(comet_store_chan_id(st, &ref, comet_test_pool, &id,
                                         &len), COMET_ENOCHAN);
    free(got);
}
END_TEST

static int match_even(void *baton, const char *id, apr_size_t len)
{
    (void)baton;
    return (id[len - 1] - '0') % 2 == 0;
}

START_TEST(published_since_keeps_what_the_match_keeps)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 2);
    apr_array_header_t *since;
    apr_uint64_t seq;
    int i;

    pub(st, "old0", "x", 1);
    seq = comet_store_last_seq(st);
    for (i = 0; i < 6; i++) {
        char name[8];

        snprintf(name, sizeof(name), "new%d", i);
        pub(st, name, "x", 1);
    }
    since = comet_store_published_since(st, seq, match_even, NULL,
                                        comet_test_pool);
    ck_assert_int_eq(since->nelts, 3);
    ck_assert_str_eq(APR_ARRAY_IDX(since, 0, comet_store_chan_t).id, "new0");
}
END_TEST

/* ---- the verifier can fail ---------------------------------------------- */

START_TEST(check_finds_a_damaged_message)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 0);
    char *seg = store_util_last_base, *hit;
    char data[200], why[256];

    store_util_fill(data, sizeof(data), 0xfeedbeef);
    ck_assert_int_eq(store_util_pub(st, "c", data, sizeof(data), 1, NULL),
                     APR_SUCCESS);
    store_util_check(st);
    /* The first 16 payload bytes sit in the message's first block. */
    hit = memmem(seg, MB, data, 16);
    ck_assert_ptr_nonnull(hit);
    hit[12] ^= 1;
    ck_assert_int_eq(comet_store_check(st, why, sizeof(why)), COMET_ECORRUPT);
    ck_assert_ptr_nonnull(strstr(why, "damaged"));
    hit[12] ^= 1;
    store_util_check(st);
}
END_TEST

/* ---- feeding ------------------------------------------------------------- */

#define FEED_EPOCH 0x5eedf00du

static apr_status_t feed(comet_store_t *st, const char *chan, int has_msg,
                         apr_uint64_t seq, int expect_fed,
                         apr_uint64_t expect_last, apr_time_t age,
                         apr_time_t now, comet_store_pos_t *pos)
{
    comet_store_feed_t f;
    char data[32];

    memset(&f, 0, sizeof(f));
    f.channel = chan;
    f.channel_len = strlen(chan);
    f.has_msg = has_msg;
    f.seq = seq;
    snprintf(data, sizeof(data), "m%" APR_UINT64_T_FMT, seq);
    f.data = data;
    f.data_len = strlen(data);
    f.event = "ev";
    f.event_len = 2;
    f.age = age;
    f.expect_fed = expect_fed;
    f.expect_last = expect_last;
    return comet_store_feed(st, &f, now, NULL, NULL, pos);
}

/* Reads after seq; returns the seqs read as "a,b,c" and *missed. */
static const char *feed_read(comet_store_t *st, const char *chan,
                             apr_uint64_t after, apr_time_t now, int *missed)
{
    comet_msgid_t a = { FEED_EPOCH, after };
    comet_read_t r;
    char *out = "";
    int i;

    ck_assert_int_eq(comet_store_read_by_id(st, chan, strlen(chan), a, 0, 0,
                                            now, comet_test_pool, &r),
                     APR_SUCCESS);
    for (i = 0; i < r.msgs->nelts; i++) {
        comet_msg_t *m = &APR_ARRAY_IDX(r.msgs, i, comet_msg_t);

        ck_assert_uint_eq(m->id.epoch, FEED_EPOCH);
        ck_assert_str_eq(m->data, apr_psprintf(comet_test_pool, "m%"
                                               APR_UINT64_T_FMT, m->id.seq));
        out = apr_psprintf(comet_test_pool, "%s%s%" APR_UINT64_T_FMT, out,
                           i ? "," : "", m->id.seq);
    }
    *missed = r.missed;
    return out;
}

static comet_store_t *feed_store(apr_uint32_t buffer_length,
                                 apr_time_t timeout)
{
    comet_store_config_t cfg;

    comet_store_config_default(&cfg, MB);
    cfg.epoch = FEED_EPOCH;
    cfg.max_procs = 4;
    if (buffer_length) {
        cfg.buffer_length = buffer_length;
    }
    if (timeout) {
        cfg.message_timeout = timeout;
    }
    return store_util_make_cfg(&cfg);
}

START_TEST(feed_appends_in_order_refuses_a_stale_position_and_never_creates)
{
    comet_store_t *st = feed_store(0, 0);
    comet_store_pos_t pos;
    comet_chanref_t ref, got[4];
    comet_msgid_t newest;
    apr_uint32_t slot;
    int missed, overflow;

    ck_assert_uint_eq(comet_store_epoch(st), FEED_EPOCH);
    ck_assert_int_eq(feed(st, "x", 1, 5, 0, 0, 0, 0, &pos), COMET_ENOCHAN);
    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, slot, "x", 1, 0, &ref,
                                           &newest), APR_SUCCESS);
    ck_assert_int_eq(comet_store_position(st, slot, "x", 1, &pos),
                     APR_SUCCESS);
    ck_assert(!pos.fed && pos.last == 0 && pos.subscribers == 1
              && pos.slot_subscribers == 1);
    ck_assert_int_eq(comet_store_position(st, slot + 1, "x", 1, &pos),
                     APR_SUCCESS);
    ck_assert_uint_eq(pos.slot_subscribers, 0);

    /* The first message of a channel not yet fed: what came before it is
     * unknown, so a reader before it missed some. */
    ck_assert_int_eq(feed(st, "x", 1, 5, 0, 0, 0, 0, &pos), APR_SUCCESS);
    ck_assert(pos.fed && pos.last == 5);
    ck_assert_uint_eq(comet_store_proc_drain(st, slot, got, 4, &overflow), 1);
    ck_assert_str_eq(feed_read(st, "x", 4, 0, &missed), "5");
    ck_assert(!missed);
    ck_assert_str_eq(feed_read(st, "x", 3, 0, &missed), "5");
    ck_assert(missed);

    /* In order; the same again is stale and changes nothing. */
    ck_assert_int_eq(feed(st, "x", 1, 6, 1, 5, 0, 0, &pos), APR_SUCCESS);
    ck_assert_int_eq(feed(st, "x", 1, 6, 1, 5, 0, 0, &pos), COMET_ESTALE);
    ck_assert(pos.fed && pos.last == 6);
    ck_assert_int_eq(feed(st, "x", 1, 7, 0, 0, 0, 0, &pos), COMET_ESTALE);
    ck_assert_int_eq(feed(st, "x", 1, 7, 1, 6, 0, 0, &pos), APR_SUCCESS);
    ck_assert_str_eq(feed_read(st, "x", 4, 0, &missed), "5,6,7");
    ck_assert(!missed);
    ck_assert_uint_eq(comet_store_proc_drain(st, slot, got, 4, &overflow), 1);
    ck_assert_int_eq(feed(st, "x", 1, 0, 1, 7, 0, 0, &pos), APR_EINVAL);
    store_util_check(st);
}
END_TEST

/* A fed message keeps its sender (the identity a WebSocket or HTTP client
 * published with on another server), and one without a sender has none,
 * also in blocks that a message with one held before. */
START_TEST(feed_keeps_the_sender_and_a_message_without_one_has_none)
{
    comet_store_t *st = feed_store(2, 0);
    comet_store_pos_t pos;
    comet_chanref_t ref;
    comet_msgid_t newest, after = { FEED_EPOCH, 0 };
    comet_store_feed_t f;
    comet_read_t r;
    apr_uint32_t slot;
    char from[COMET_STORE_FROM_MAX + 1];
    apr_uint64_t seq;

    memset(from, 'a', sizeof(from));
    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, slot, "w", 1, 0, &ref,
                                           &newest), APR_SUCCESS);
    memset(&f, 0, sizeof(f));
    f.channel = "w";
    f.channel_len = 1;
    f.has_msg = 1;
    f.data = "payload";
    f.data_len = 7;
    f.event = "ev";
    f.event_len = 2;
    f.from = from;
    f.from_len = COMET_STORE_FROM_MAX + 1;
    f.seq = 1;
    ck_assert_int_eq(comet_store_feed(st, &f, 0, NULL, NULL, &pos),
                     APR_EINVAL);
    for (seq = 1; seq <= 6; seq++) {
        /* Odd: a full-length sender; even: none (in the blocks an odd one
         * left when the buffer of 2 evicted it). */
        f.from = seq & 1 ? from : NULL;
        f.from_len = seq & 1 ? COMET_STORE_FROM_MAX : 0;
        f.seq = seq;
        f.expect_fed = seq > 1;
        f.expect_last = seq - 1;
        ck_assert_int_eq(comet_store_feed(st, &f, 0, NULL, NULL, &pos),
                         APR_SUCCESS);
        ck_assert_int_eq(comet_store_read_by_id(st, "w", 1, after, 0, 0, 0,
                                                comet_test_pool, &r),
                         APR_SUCCESS);
        ck_assert_int_ge(r.msgs->nelts, 1);
        {
            comet_msg_t *m = &APR_ARRAY_IDX(r.msgs, r.msgs->nelts - 1,
                                            comet_msg_t);

            ck_assert_uint_eq(m->id.seq, seq);
            ck_assert_str_eq(m->data, "payload");
            ck_assert_int_eq(m->event_len, 2);
            ck_assert(!memcmp(m->event, "ev", 2));
            if (seq & 1) {
                ck_assert_uint_eq(m->from_len, COMET_STORE_FROM_MAX);
                ck_assert(!memcmp(m->from, from, COMET_STORE_FROM_MAX));
            }
            else {
                ck_assert_uint_eq(m->from_len, 0);
                ck_assert(m->from == NULL);
            }
        }
        store_util_check(st);
    }
}
END_TEST

START_TEST(a_gap_or_new_ids_move_the_channel_and_readers_learn_they_missed)
{
    comet_store_t *st = feed_store(3, 0);
    comet_store_pos_t pos;
    comet_chanref_t ref;
    comet_msgid_t newest;
    apr_uint32_t slot;
    int missed;

    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, slot, "y", 1, 0, &ref,
                                           &newest), APR_SUCCESS);
    ck_assert_int_eq(feed(st, "y", 1, 5, 0, 0, 0, 0, &pos), APR_SUCCESS);
    ck_assert_int_eq(feed(st, "y", 1, 6, 1, 5, 0, 0, &pos), APR_SUCCESS);

    /* A gap: 7 to 9 are lost. */
    ck_assert_int_eq(feed(st, "y", 1, 10, 1, 6, 0, 0, &pos), APR_SUCCESS);
    ck_assert_str_eq(feed_read(st, "y", 6, 0, &missed), "10");
    ck_assert(missed);
    ck_assert_str_eq(feed_read(st, "y", 9, 0, &missed), "10");
    ck_assert(!missed);
    store_util_check(st);

    /* Ids that started anew, lower: a reader at the old position is
     * beyond the newest, so it cannot be placed. */
    ck_assert_int_eq(feed(st, "y", 1, 3, 1, 10, 0, 0, &pos), APR_SUCCESS);
    ck_assert_str_eq(feed_read(st, "y", 10, 0, &missed), "3");
    ck_assert(missed);
    ck_assert_str_eq(feed_read(st, "y", 2, 0, &missed), "3");
    ck_assert(!missed);
    store_util_check(st);

    /* A position alone: the messages before it are gone. */
    ck_assert_int_eq(feed(st, "y", 0, 20, 1, 3, 0, 0, &pos), APR_SUCCESS);
    ck_assert(pos.last == 20);
    ck_assert_str_eq(feed_read(st, "y", 3, 0, &missed), "");
    ck_assert(missed);
    ck_assert_str_eq(feed_read(st, "y", 20, 0, &missed), "");
    ck_assert(!missed);
    ck_assert_int_eq(feed(st, "y", 0, 20, 1, 20, 0, 0, &pos), APR_SUCCESS);
    ck_assert_str_eq(feed_read(st, "y", 25, 0, &missed), "");
    ck_assert(missed);

    /* The buffer length holds for fed channels too. */
    for (apr_uint64_t s = 21; s <= 25; s++) {
        ck_assert_int_eq(feed(st, "y", 1, s, 1, s - 1, 0, 0, &pos),
                         APR_SUCCESS);
    }
    ck_assert_str_eq(feed_read(st, "y", 22, 0, &missed), "23,24,25");
    ck_assert(!missed);
    ck_assert_str_eq(feed_read(st, "y", 21, 0, &missed), "23,24,25");
    ck_assert(missed);
    store_util_check(st);
}
END_TEST

START_TEST(a_fed_message_expires_counting_from_its_age)
{
    comet_store_t *st = feed_store(0, STORE_UTIL_SEC(10));
    comet_store_pos_t pos;
    comet_chanref_t ref;
    comet_msgid_t newest;
    apr_uint32_t slot;
    int missed;

    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, slot, "z", 1, 0, &ref,
                                           &newest), APR_SUCCESS);
    ck_assert_int_eq(feed(st, "z", 1, 1, 0, 0, STORE_UTIL_SEC(9),
                          STORE_UTIL_SEC(100), &pos), APR_SUCCESS);
    ck_assert_int_eq(feed(st, "z", 1, 2, 1, 1, 0, STORE_UTIL_SEC(100), &pos),
                     APR_SUCCESS);
    ck_assert_str_eq(feed_read(st, "z", 0, STORE_UTIL_SEC(100), &missed),
                     "1,2");
    ck_assert_str_eq(feed_read(st, "z", 0, STORE_UTIL_SEC(102), &missed),
                     "2");
    ck_assert(missed);
    store_util_check(st);
}
END_TEST

Suite *test_comet_store_suite(void)
{
    Suite *s = suite_create("comet_store");
    TCase *buf = tcase_create("buffers");
    TCase *mem = tcase_create("memory");
    TCase *procs = tcase_create("procs");
    TCase *feedtc = tcase_create("feed");

    tcase_add_checked_fixture(buf, store_util_setup,
                              store_util_teardown);
    tcase_add_test(buf,
                   format_refuses_a_too_small_segment_and_attach_foreign_memory);
    tcase_add_test(buf,
                   set_limits_applies_new_buffer_length_and_keeps_geometry);
    tcase_add_test(buf,
                   publish_then_read_returns_the_message_with_event_and_times);
    tcase_add_test(buf, publish_refuses_bad_channel_event_and_size);
    tcase_add_test(buf, event_types_of_the_servers_signals_are_reserved);
    tcase_add_test(buf,
                   an_id_beyond_the_newest_seq_reads_as_one_of_another_epoch);
    tcase_add_test(buf, publish_keeps_the_sender_beside_event_and_data);
    tcase_add_test(buf,
                   buffer_keeps_the_newest_by_count_evicting_oldest_first);
    tcase_add_test(buf, buffer_drops_messages_older_than_the_timeout);
    tcase_add_test(buf, read_stops_at_max_msgs_and_max_bytes_but_returns_one);
    tcase_add_test(buf, backlog_start_leaves_the_newest_n_after_it);
    tcase_add_test(buf,
                   missed_is_set_when_messages_after_the_position_were_evicted);
    tcase_add_test(buf,
                   missed_is_not_set_for_a_fresh_subscriber_of_a_quiet_channel);
    tcase_add_test(buf,
                   missed_is_set_after_the_channel_was_reclaimed_and_recreated);
    tcase_add_test(buf,
                   delete_frees_messages_wakes_and_ends_after_last_subscriber);
    suite_add_tcase(s, buf);

    tcase_add_checked_fixture(mem, store_util_setup,
                              store_util_teardown);
    tcase_add_test(mem, idle_channel_is_reclaimed_only_after_channel_idle);
    tcase_add_test(mem, memory_accounting_is_exact);
    tcase_add_test(mem,
                   full_segment_refuses_with_nothing_changed_then_recovers);
    tcase_add_test(mem, full_channel_table_refuses_until_idle_channels_go);
    tcase_add_test(mem, stats_count_channels_messages_and_subscribers);
    tcase_add_test(mem, check_finds_a_damaged_message);
    tcase_add_test(mem,
                   a_channel_never_published_goes_with_its_last_subscriber);
    tcase_add_test(mem,
                   subscriptions_leave_the_publishers_a_quarter_of_the_records);
    tcase_add_test(mem,
                   subscriptions_leave_the_publishers_an_eighth_of_the_blocks);
    tcase_add_test(mem,
                   subscribing_to_existing_channels_only_refuses_the_others);
    suite_add_tcase(s, mem);

    tcase_add_checked_fixture(procs, store_util_setup,
                              store_util_teardown);
    tcase_add_test(procs,
                   channels_lists_subscribed_channels_matching_the_pattern);
    tcase_add_test(procs,
                   channels_walks_the_table_in_slices_listing_steady_channels_once);
    tcase_add_test(procs, proc_slots_attach_reap_and_clear_counts);
    tcase_add_test(procs,
                   wakeups_coalesce_until_drained_and_queue_each_channel_once);
    tcase_add_test(procs,
                   maintain_kicks_again_a_slot_woken_but_not_drained_for_a_second);
    tcase_add_test(procs, wakeup_queue_overflow_is_reported_once);
    tcase_add_test(procs,
                   an_extra_slot_shares_the_pid_and_goes_with_its_process);
    tcase_add_test(procs,
                   a_watching_slot_is_queued_every_channel_once_per_burst);
    tcase_add_test(procs, published_since_keeps_what_the_match_keeps);
    suite_add_tcase(s, procs);

    tcase_add_checked_fixture(feedtc, store_util_setup,
                              store_util_teardown);
    tcase_add_test(feedtc,
                   feed_appends_in_order_refuses_a_stale_position_and_never_creates);
    tcase_add_test(feedtc,
                   feed_keeps_the_sender_and_a_message_without_one_has_none);
    tcase_add_test(feedtc,
                   a_gap_or_new_ids_move_the_channel_and_readers_learn_they_missed);
    tcase_add_test(feedtc, a_fed_message_expires_counting_from_its_age);
    suite_add_tcase(s, feedtc);
    return s;
}
