/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Unit tests of comet_pubcmd.c, the publish socket's commands, spoken to a
 * real server (pubsrv_util.h) the way redis-cli and client libraries speak
 * them.  Every test runs in its own forked process under check's
 * timeout. */
#include "pubsrv_util.h"

/* ---- publishing --------------------------------------------------------- */

START_TEST(publish_answers_the_receivers_of_every_process_and_wakes_them)
{
    apr_uint32_t s0, s1;
    comet_read_t r;
    int fd;

    start(NULL);
    s0 = attach();
    /* A second process slot: another pid that is alive (our parent). */
    ck_assert_int_eq(comet_store_proc_attach(fx.st, (apr_int32_t)getppid(),
                                             &s1), APR_SUCCESS);
    subscribe(s0, "room");
    subscribe(s0, "room");
    subscribe(s1, "room");

    fd = client();
    send_str(fd, "*3\r\n$7\r\nPUBLISH\r\n$4\r\nroom\r\n$5\r\nhello\r\n");
    expect(fd, ":3\r\n");
    ck_assert_uint_eq(__atomic_load_n(&fx.woken, __ATOMIC_SEQ_CST),
                      (1u << s0) | (1u << s1));
    /* No subscriber: stored all the same, Redis counts 0. */
    send_str(fd, "PUBLISH empty x\r\n");
    expect(fd, ":0\r\n");

    r = read_all("room");
    ck_assert_int_eq(r.msgs->nelts, 1);
    ck_assert_str_eq(msg_at(&r, 0)->data, "hello");
    ck_assert_ptr_null(msg_at(&r, 0)->event);
    r = read_all("empty");
    ck_assert_int_eq(r.msgs->nelts, 1);
    close(fd);
}
END_TEST

START_TEST(comet_publish_stores_the_event_type_and_inline_quotes_work)
{
    comet_read_t r;
    int fd;

    start(NULL);
    fd = client();
    send_str(fd, "COMET.PUBLISH news update \"hello world\\n\"\r\n");
    expect(fd, ":0\r\n");
    /* An empty event type is no event type. */
    send_str(fd, "*4\r\n$13\r\nCOMET.PUBLISH\r\n$4\r\nnews\r\n$0\r\n\r\n"
             "$3\r\nraw\r\n");
    expect(fd, ":0\r\n");
    r = read_all("news");
    ck_assert_int_eq(r.msgs->nelts, 2);
    ck_assert_str_eq(msg_at(&r, 0)->event, "update");
    ck_assert_str_eq(msg_at(&r, 0)->data, "hello world\n");
    ck_assert_ptr_null(msg_at(&r, 1)->event);
    ck_assert_str_eq(msg_at(&r, 1)->data, "raw");
    close(fd);
}
END_TEST

/* ---- inspecting --------------------------------------------------------- */

START_TEST(pubsub_numsub_channels_and_numpat_answer_like_redis)
{
    apr_uint32_t s0;
    char line[256];
    int fd;

    start(NULL);
    s0 = attach();
    subscribe(s0, "news.a");
    subscribe(s0, "news.a");
    subscribe(s0, "sport");
    fd = client();

    send_str(fd, "PUBSUB NUMSUB news.a sport nobody bad%id\r\n");
    expect(fd, "*8\r\n$6\r\nnews.a\r\n:2\r\n$5\r\nsport\r\n:1\r\n"
           "$6\r\nnobody\r\n:0\r\n$6\r\nbad%id\r\n:0\r\n");
    send_str(fd, "PUBSUB NUMSUB\r\n");
    expect(fd, "*0\r\n");
    send_str(fd, "PUBSUB CHANNELS news.*\r\n");
    expect(fd, "*1\r\n$6\r\nnews.a\r\n");
    send_str(fd, "PUBSUB CHANNELS\r\n");
    read_line(fd, line, sizeof(line));
    ck_assert_str_eq(line, "*2\r\n");
    read_line(fd, line, sizeof(line));
    read_line(fd, line, sizeof(line));
    read_line(fd, line, sizeof(line));
    read_line(fd, line, sizeof(line));
    send_str(fd, "PUBSUB NUMPAT\r\n");
    expect(fd, ":0\r\n");
    send_str(fd, "pubsub frob\r\n");
    expect(fd, "-ERR unknown subcommand 'frob'. Try PUBSUB HELP.\r\n");
    send_str(fd, "PUBSUB\r\n");
    expect(fd, "-ERR wrong number of arguments for 'pubsub' command\r\n");
    close(fd);
}
END_TEST

START_TEST(comet_info_and_delete_report_a_channel_and_null_when_absent)
{
    apr_uint32_t s0;
    char line[128];
    int fd;

    start(NULL);
    s0 = attach();
    subscribe(s0, "x");
    fd = client();
    send_str(fd, "PUBLISH x abc\r\nPUBLISH x de\r\n");
    expect(fd, ":1\r\n:1\r\n");
    send_str(fd, "COMET.INFO x\r\n");
    expect(fd, "*12\r\n$8\r\nmessages\r\n:2\r\n$5\r\nbytes\r\n:5\r\n"
           "$11\r\nsubscribers\r\n:1\r\n$9\r\npublished\r\n:2\r\n"
           "$7\r\nlast_id\r\n");
    read_line(fd, line, sizeof(line));     /* $<n> */
    read_line(fd, line, sizeof(line));     /* <epoch>:2 */
    ck_assert_msg(strstr(line, ":2\r\n"), "last_id %s", line);
    expect(fd, "$12\r\nlast_publish\r\n");
    read_line(fd, line, sizeof(line));
    ck_assert_msg(line[0] == ':' && atoll(line + 1) > 0, "%s", line);

    send_str(fd, "COMET.INFO nothing\r\n");
    expect(fd, "$-1\r\n");
    /* Take the wakeups of the publishes, as the hub would. */
    {
        comet_chanref_t refs[4];
        int overflow;

        comet_store_proc_drain(fx.st, s0, refs, 4, &overflow);
    }
    fx.woken = 0;
    send_str(fd, "COMET.DELETE x\r\n");
    expect(fd, ":1\r\n");
    ck_assert_uint_eq(__atomic_load_n(&fx.woken, __ATOMIC_SEQ_CST),
                      1u << s0);
    send_str(fd, "COMET.DELETE nothing\r\n");
    expect(fd, "$-1\r\n");
    send_str(fd, "COMET.DELETE bad,id\r\n");
    expect(fd, "-ERR invalid channel id (1 to 1024 bytes of A-Z a-z 0-9 - _ "
           ". ~ : @ /)\r\n");
    close(fd);
}
END_TEST

/* ---- what client libraries send ----------------------------------------- */

START_TEST(hello_switches_to_resp3_and_the_connect_chatter_is_answered)
{
    char line[256];
    int fd;

    start(NULL);
    fd = client();
    send_str(fd, "HELLO 3 SETNAME lib-client\r\n");
    expect(fd, "%7\r\n$6\r\nserver\r\n$9\r\nmod_comet\r\n$7\r\nversion\r\n"
           "$4\r\ntest\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n");
    read_line(fd, line, sizeof(line));
    expect(fd, "$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n"
           "$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n");
    /* RESP3 types from now on. */
    send_str(fd, "COMET.INFO none\r\nCLIENT GETNAME\r\n");
    expect(fd, "_\r\n$10\r\nlib-client\r\n");
    send_str(fd, "COMMAND DOCS\r\nCONFIG GET save\r\n");
    expect(fd, "%0\r\n%0\r\n");
    send_str(fd, "HELLO 2\r\n");
    expect(fd, "*14\r\n");
    for (int i = 0; i < 14; i++) {
        read_line(fd, line, sizeof(line));
        if (line[0] == '$') {
            read_line(fd, line, sizeof(line));
        }
    }
    send_str(fd, "HELLO 4\r\nHELLO x\r\nHELLO 3 AUTH u p\r\n");
    expect(fd, "-NOPROTO unsupported protocol version\r\n"
           "-ERR Protocol version is not an integer or out of range\r\n");
    read_line(fd, line, sizeof(line));
    ck_assert_msg(!strncmp(line, "-ERR AUTH is not supported", 26), "%s",
                  line);

    send_str(fd, "CLIENT SETINFO LIB-NAME redis-py\r\n"
             "CLIENT SETINFO LIB-VER 5.0\r\nCLIENT SETNAME bad name\r\n"
             "SELECT 0\r\nSELECT 1\r\nCOMMAND\r\nCOMMAND COUNT\r\n"
             "PING\r\nPING hi\r\nECHO there\r\n");
    expect(fd, "+OK\r\n+OK\r\n-ERR wrong number of arguments for "
           "'client|setname' command\r\n+OK\r\n-ERR DB index is out of "
           "range\r\n*0\r\n:23\r\n+PONG\r\n$2\r\nhi\r\n$5\r\nthere\r\n");
    send_str(fd, "AUTH secret\r\n");
    read_line(fd, line, sizeof(line));
    ck_assert_msg(strstr(line, "CometPublishSocketMode"), "%s", line);
    send_str(fd, "INFO\r\n");
    read_line(fd, line, sizeof(line));
    ck_assert_msg(line[0] == '$', "%s", line);
    read_line(fd, line, sizeof(line));
    ck_assert_str_eq(line, "# Server\r\n");
    close(fd);

    fd = client();
    send_str(fd, "QUIT\r\nPING\r\n");
    expect(fd, "+OK\r\n");
    expect_closed(fd);
    close(fd);
}
END_TEST

/* ---- refusals ----------------------------------------------------------- */

START_TEST(refusals_use_redis_wording_and_keep_the_connection)
{
    char big[5000];
    int fd;

    start(NULL);
    fd = client();
    send_str(fd, "FLUSHALL\r\nfoo bar baz\r\n");
    expect(fd, "-ERR unknown command 'FLUSHALL', with args beginning with: "
           "\r\n-ERR unknown command 'foo', with args beginning with: "
           "'bar' 'baz' \r\n");
    send_str(fd, "PUBLISH onlyone\r\nPUBLISH a b c\r\nECHO\r\n");
    expect(fd, "-ERR wrong number of arguments for 'publish' command\r\n"
           "-ERR wrong number of arguments for 'publish' command\r\n"
           "-ERR wrong number of arguments for 'echo' command\r\n");
    send_str(fd, "PUBLISH bad,channel x\r\nPUBLISH \"\" x\r\n");
    expect(fd, "-ERR invalid channel id (1 to 1024 bytes of A-Z a-z 0-9 - _ "
           ". ~ : @ /)\r\n-ERR invalid channel id (1 to 1024 bytes of A-Z "
           "a-z 0-9 - _ . ~ : @ /)\r\n");
    send_str(fd, "COMET.PUBLISH c \"bad type\" x\r\n");
    expect(fd, "-ERR invalid event type (1 to 64 printable bytes other than "
           "space)\r\n");
    /* A server without a slot of its own cannot take subscribers. */
    send_str(fd, "SUBSCRIBE c\r\n");
    expect(fd, "-ERR subscribing is not available in this process (no "
           "process slot of the store left for it): subscribe over "
           "HTTP\r\n");

    /* The largest message passes; one byte more is refused, and the
     * connection goes on. */
    memset(big, 'x', sizeof(big));
    send_str(fd, "*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$4096\r\n");
    send_all(fd, big, 4096);
    send_str(fd, "\r\n*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$4097\r\n");
    send_all(fd, big, 4097);
    send_str(fd, "\r\nPING\r\n");
    expect(fd, ":0\r\n-ERR message larger than CometMaxMessageSize (4096 "
           "bytes)\r\n+PONG\r\n");
    close(fd);
}
END_TEST

START_TEST(a_full_store_refuses_with_a_clear_error)
{
    opts_t o;
    char *big, *cmd, line[256];
    int fd, i, full = 0;

    memset(&o, 0, sizeof(o));
    o.max_message = 60000;
    o.store_size = 512 * 1024;
    start(&o);
    big = malloc(60000);
    cmd = malloc(61000);
    memset(big, 'y', 60000);
    fd = client();
    /* Different channels, so no eviction makes room. */
    for (i = 0; i < 40 && !full; i++) {
        int n = sprintf(cmd, "*3\r\n$7\r\nPUBLISH\r\n$3\r\nf%02d\r\n"
                        "$60000\r\n", i);

        send_all(fd, cmd, (size_t)n);
        send_all(fd, big, 60000);
        send_str(fd, "\r\n");
        read_line(fd, line, sizeof(line));
        if (line[0] == '-') {
            ck_assert_str_eq(line, "-ERR the message store is full "
                             "(CometSharedMemorySize): message not "
                             "stored\r\n");
            full = 1;
        }
        else {
            ck_assert_str_eq(line, ":0\r\n");
        }
    }
    ck_assert_msg(full, "store never filled");
    send_str(fd, "PING\r\n");
    expect(fd, "+PONG\r\n");
    free(big);
    free(cmd);
    close(fd);
}
END_TEST

Suite *test_comet_pubcmd_suite(void)
{
    Suite *s = suite_create("comet_pubcmd");
    TCase *tp = tcase_create("publish");
    TCase *ti = tcase_create("inspect");
    TCase *tc = tcase_create("clients");
    TCase *te = tcase_create("errors");

    tcase_add_checked_fixture(tp, setup, teardown);
    tcase_add_test(tp, publish_answers_the_receivers_of_every_process_and_wakes_them);
    tcase_add_test(tp, comet_publish_stores_the_event_type_and_inline_quotes_work);
    suite_add_tcase(s, tp);

    tcase_add_checked_fixture(ti, setup, teardown);
    tcase_add_test(ti, pubsub_numsub_channels_and_numpat_answer_like_redis);
    tcase_add_test(ti, comet_info_and_delete_report_a_channel_and_null_when_absent);
    suite_add_tcase(s, ti);

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, hello_switches_to_resp3_and_the_connect_chatter_is_answered);
    suite_add_tcase(s, tc);

    tcase_add_checked_fixture(te, setup, teardown);
    tcase_add_test(te, refusals_use_redis_wording_and_keep_the_connection);
    tcase_add_test(te, a_full_store_refuses_with_a_clear_error);
    suite_add_tcase(s, te);
    return s;
}
