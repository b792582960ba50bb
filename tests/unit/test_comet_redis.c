/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* The Redis client against real redis-server processes (started by each
 * test on free loopback ports, stopped by PID, a few hundred milliseconds
 * each) and, for what a real server will not do on demand (an old server
 * without HELLO, a server that never answers or answers garbage), a fake
 * server on the test's own loop.  They live here rather than in the
 * integration suite because they need no httpd and all of them together
 * take a few seconds. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <apr_strings.h>

#include "unit_common.h"
#include "comet_redis.h"
#include "comet_resp.h"
#include "redis_util.h"
#include "redis_fake.h"

/* ---- log capture: no line may ever carry a password --------------------- */

static char log_text[65536];
static apr_size_t log_len;

static void log_capture(void *baton, int level, const char *file, int line,
                        apr_status_t rv, const char *fmt, va_list ap)
{
    char msg[1024];
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);

    if (n > 0 && log_len + (apr_size_t)n + 2 < sizeof(log_text)) {
        memcpy(log_text + log_len, msg, (apr_size_t)n);
        log_len += (apr_size_t)n;
        log_text[log_len++] = '\n';
        log_text[log_len] = '\0';
    }
    if (getenv("COMET_TEST_VERBOSE")) {
        fprintf(stderr, "log: %s\n", msg);
    }
}

static void setup(void)
{
    comet_test_pool_setup();
    log_len = 0;
    log_text[0] = '\0';
    comet_log_set(log_capture, NULL, COMET_LOG_DEBUG);
}

static void teardown(void)
{
    comet_log_set(NULL, NULL, 0);
    comet_test_pool_teardown();
}

static comet_loop_t *new_loop(void)
{
    comet_loop_t *loop;

    ck_assert_int_eq(comet_loop_create(&loop, 1024, comet_test_pool),
                     APR_SUCCESS);
    return loop;
}

static comet_redis_opts_t fast_opts(void)
{
    comet_redis_opts_t o;

    comet_redis_opts_default(&o);
    o.backoff_min = apr_time_from_msec(20);
    o.backoff_max = apr_time_from_msec(200);
    o.connect_timeout = apr_time_from_sec(2);
    o.command_timeout = apr_time_from_sec(5);
    return o;
}

static comet_redis_url_t *url_of(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static comet_redis_url_t *url_of(const char *fmt, ...)
{
    comet_redis_url_t *url;
    char text[512], err[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    ck_assert_msg(comet_redis_url_parse(&url, text, comet_test_pool, err,
                                        sizeof(err)) == APR_SUCCESS,
                  "%s: %s", text, err);
    return url;
}

/* ---- a recorder of replies and states ----------------------------------- */

typedef struct calls_t {
    int           n;
    apr_status_t  status;
    int           type;
    apr_int64_t   integer;
    char          str[256];
    char          error[512];
    int           ups;
    int           downs;
    char          states[64];   /* "u" / "d" per state change              */
} calls_t;

static void rec_reply(void *baton, apr_status_t st,
                      const comet_resp_reply_t *r, const char *err)
{
    calls_t *c = baton;

    c->n++;
    c->status = st;
    c->type = r ? r->type : 0;
    c->integer = r ? r->integer : 0;
    c->str[0] = '\0';
    c->error[0] = '\0';
    if (r && r->str) {
        apr_cpystrn(c->str, r->str, sizeof(c->str));
    }
    if (err) {
        apr_cpystrn(c->error, err, sizeof(c->error));
    }
}

static void rec_state(void *baton, comet_redis_t *conn, int up,
                      apr_status_t why, const char *text)
{
    calls_t *c = baton;
    apr_size_t len = strlen(c->states);

    if (up) {
        c->ups++;
    }
    else {
        c->downs++;
        apr_cpystrn(c->error, text, sizeof(c->error));
    }
    if (len + 1 < sizeof(c->states)) {
        c->states[len] = up ? 'u' : 'd';
        c->states[len + 1] = '\0';
    }
}

static comet_redis_t *connect_ok(comet_loop_t *loop, comet_redis_url_t *url,
                                 const comet_redis_opts_t *o, calls_t *st)
{
    comet_redis_t *c;

    ck_assert_int_eq(comet_redis_create(&c, loop, url, NULL, o,
                                        comet_test_pool), APR_SUCCESS);
    comet_redis_on_state(c, rec_state, st);
    ck_assert_int_eq(comet_redis_start(c), APR_SUCCESS);
    ck_assert_msg(wait_count(loop, &st->ups, 1, 5000), "not up: %s; log:\n%s",
                  st->error, log_text);
    return c;
}

/* One command, waited for. */
static calls_t run_cmd(comet_loop_t *loop, comet_redis_t *c, ...)
{
    const char *argv[16];
    calls_t r;
    int argc = 0;
    va_list ap;

    memset(&r, 0, sizeof(r));
    va_start(ap, c);
    while ((argv[argc] = va_arg(ap, const char *)) != NULL && argc < 15) {
        argc++;
    }
    va_end(ap);
    ck_assert_int_eq(comet_redis_command(c, argc, argv, NULL, rec_reply, &r),
                     APR_SUCCESS);
    ck_assert_msg(wait_count(loop, &r.n, 1, 5000), "no reply to %s", argv[0]);
    return r;
}

#define START_REDIS(s, extra_args) do { \
        memset(&(s), 0, sizeof(s)); \
        apr_cpystrn((s).extra, (extra_args), sizeof((s).extra)); \
        ck_assert_msg(redis_util_start(&(s)) == 0, "redis-server did not " \
                      "start"); \
    } while (0)

/* ---- URLs --------------------------------------------------------------- */

START_TEST(urls_of_every_form_parse)
{
    comet_redis_url_t *u;

    u = url_of("redis://127.0.0.1:6380/2");
    ck_assert_int_eq(u->kind, COMET_REDIS_TCP);
    ck_assert_str_eq(u->addrs[0].host, "127.0.0.1");
    ck_assert_int_eq(u->addrs[0].port, 6380);
    ck_assert_int_eq(u->db, 2);
    ck_assert_ptr_null(u->user);
    ck_assert_ptr_null(u->password);
    ck_assert_str_eq(u->display, "redis://127.0.0.1:6380/2");

    u = url_of("redis://localhost");
    ck_assert_int_eq(u->addrs[0].port, 6379);
    ck_assert_int_eq(u->db, 0);

    u = url_of("%s", "REDIS://comet:p%40ss:w%2Fd@[::1]:7000/");
    ck_assert_str_eq(u->user, "comet");
    ck_assert_str_eq(u->password, "p@ss:w/d");
    ck_assert_str_eq(u->addrs[0].host, "::1");
    ck_assert_int_eq(u->addrs[0].port, 7000);
    ck_assert_str_eq(u->display, "redis://comet:***@[::1]:7000");

    /* An unescaped '@' in the password: the last one ends it. */
    u = url_of("redis://:a@b@h:1");
    ck_assert_ptr_null(u->user);
    ck_assert_str_eq(u->password, "a@b");
    ck_assert_str_eq(u->display, "redis://:***@h:1");

    u = url_of("unix:/run/redis/redis.sock?db=3&user=app");
    ck_assert_int_eq(u->kind, COMET_REDIS_UNIX);
    ck_assert_str_eq(u->addrs[0].path, "/run/redis/redis.sock");
    ck_assert_int_eq(u->db, 3);
    ck_assert_str_eq(u->user, "app");
    ck_assert_str_eq(u->display, "unix:/run/redis/redis.sock?db=3&user=app");
    u = url_of("unix:///tmp/r.sock");
    ck_assert_str_eq(u->addrs[0].path, "/tmp/r.sock");

    u = url_of("redis-cluster://u:secret@10.0.0.1:7000,10.0.0.2,[::1]:7002");
    ck_assert_int_eq(u->kind, COMET_REDIS_CLUSTER);
    ck_assert_uint_eq(u->naddrs, 3);
    ck_assert_str_eq(u->addrs[1].host, "10.0.0.2");
    ck_assert_int_eq(u->addrs[1].port, 6379);
    ck_assert_int_eq(u->addrs[2].port, 7002);
    ck_assert_str_eq(u->display,
                     "redis-cluster://u:***@10.0.0.1:7000,10.0.0.2:6379,"
                     "[::1]:7002");
}
END_TEST

START_TEST(bad_urls_are_refused_with_a_clear_message)
{
    static const struct { const char *url, *msg; } bad[] = {
        { "", "empty Redis URL" },
        { "http://x", "unsupported Redis URL scheme 'http'" },
        { "rediss://h:1", "TLS to Redis (rediss://) is not supported" },
        { "redis://", "no host" },
        { "redis://h:0", "invalid port '0'" },
        { "redis://h:65536", "invalid port '65536'" },
        { "redis://h:12x", "invalid port '12x'" },
        { "redis://h/x", "invalid database number 'x'" },
        { "redis://h?x=1", "no query or fragment" },
        { "redis://h1,h2", "several hosts" },
        { "redis://[::1", "IPv6 address without ']'" },
        { "redis://[abc]", "'[abc]' is not an IPv6 address" },
        { "redis://ho st", "blank or control character" },
        { "redis://h$t", "invalid host name 'h$t'" },
        { "redis://u:p%zzsecret@h", "invalid %-escape in the password" },
        /* A '/' in a password cuts the URL early: nothing is quoted. */
        { "redis://u:sec/secret@h", "invalid database number (not shown: "
          "the URL holds a password" },
        { "redis://u:secret@h:secret", "invalid port (not shown" },
        { "redis://u:secret@h/secret", "invalid database number (not shown" },
        { "redis-cluster://h:1/2", "database 0 only" },
        { "unix:relative.sock", "must be absolute" },
        { "unix:/x.sock?password=secret", "no password in a unix: URL" },
        { "unix:/x.sock?foo=1", "unknown parameter 'foo'" },
        { "unix:/x.sock?db=abc", "invalid database number 'abc'" },
    };
    comet_redis_url_t *u;
    char err[256];
    apr_size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        ck_assert_int_eq(comet_redis_url_parse(&u, bad[i].url,
                                               comet_test_pool, err,
                                               sizeof(err)),
                         COMET_REDIS_EURL);
        ck_assert_msg(strstr(err, bad[i].msg) != NULL, "%s: \"%s\"",
                      bad[i].url, err);
        ck_assert_msg(!strstr(err, "secret"), "%s: %s", bad[i].url, err);
    }
}
END_TEST

START_TEST(password_file_sets_the_password_and_never_shows_it)
{
    char dir[] = "/tmp/comet-pwtest-XXXXXX", path[200], err[256];
    comet_redis_url_t *u = url_of("unix:/tmp/r.sock");
    FILE *f;

    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/pw", dir);
    f = fopen(path, "w");
    fputs("s3cr3t-pw\r\nsecond line ignored\n", f);
    fclose(f);
    ck_assert_int_eq(comet_redis_url_password_file(u, path, comet_test_pool,
                                                   err, sizeof(err)),
                     APR_SUCCESS);
    ck_assert_str_eq(u->password, "s3cr3t-pw");
    ck_assert_ptr_null(strstr(u->display, "s3cr3t"));

    u = url_of("redis://app@127.0.0.1:1");
    ck_assert_int_eq(comet_redis_url_password_file(u, path, comet_test_pool,
                                                   err, sizeof(err)),
                     APR_SUCCESS);
    ck_assert_str_eq(u->display, "redis://app:***@127.0.0.1:1");

    f = fopen(path, "w");
    fputs("\n", f);
    fclose(f);
    ck_assert_int_eq(comet_redis_url_password_file(u, path, comet_test_pool,
                                                   err, sizeof(err)),
                     COMET_REDIS_EURL);
    ck_assert_ptr_nonnull(strstr(err, "no password on its first line"));
    unlink(path);
    ck_assert_int_eq(comet_redis_url_password_file(u, path, comet_test_pool,
                                                   err, sizeof(err)),
                     COMET_REDIS_EURL);
    ck_assert_ptr_nonnull(strstr(err, "cannot open"));
    rmdir(dir);
}
END_TEST

/* ---- commands against a real server ------------------------------------- */

START_TEST(commands_get_their_replies_over_resp3)
{
    redis_util_server_t s;
    comet_loop_t *loop = new_loop();
    comet_redis_opts_t o = fast_opts();
    calls_t st, r;
    comet_redis_t *c;

    START_REDIS(s, "");
    memset(&st, 0, sizeof(st));
    c = connect_ok(loop, url_of("redis://127.0.0.1:%d", s.port), &o, &st);
    ck_assert_int_eq(comet_redis_proto(c), 3);
    ck_assert_str_eq(st.states, "u");

    r = run_cmd(loop, c, "SET", "k", "v1", NULL);
    ck_assert_int_eq(r.status, APR_SUCCESS);
    ck_assert_int_eq(r.type, COMET_REPLY_STRING);
    ck_assert_str_eq(r.str, "OK");
    r = run_cmd(loop, c, "GET", "k", NULL);
    ck_assert_str_eq(r.str, "v1");
    r = run_cmd(loop, c, "GET", "nokey", NULL);
    ck_assert_int_eq(r.type, COMET_REPLY_NIL);
    r = run_cmd(loop, c, "INCR", "k", NULL);
    ck_assert_int_eq(r.status, APR_SUCCESS);
    ck_assert_int_eq(r.type, COMET_REPLY_ERROR);
    ck_assert_msg(strncmp(r.str, "ERR", 3) == 0, "%s", r.str);
    r = run_cmd(loop, c, "HGETALL", "nohash", NULL);
    ck_assert_int_eq(r.type, COMET_REPLY_MAP);
    r = run_cmd(loop, c, "ZSCORE", "nozset", "m", NULL);
    ck_assert_int_eq(r.type, COMET_REPLY_NIL);

    comet_redis_close(c);
    ck_assert_int_eq(comet_redis_commandv(c, rec_reply, &r, "PING", NULL),
                     COMET_REDIS_ECLOSED);
    redis_util_stop(&s);
}
END_TEST

typedef struct burst_t {
    int          done;
    int          bad;
    apr_int64_t  expect;
} burst_t;

static void burst_reply(void *baton, apr_status_t st,
                        const comet_resp_reply_t *r, const char *err)
{
    burst_t *b = baton;

    if (st != APR_SUCCESS || r->type != COMET_REPLY_INTEGER
        || r->integer != ++b->expect) {
        b->bad++;
    }
    b->done++;
}

START_TEST(pipelined_burst_of_10000_commands_in_few_writes)
{
    redis_util_server_t s;
    comet_loop_t *loop = new_loop();
    comet_redis_opts_t o = fast_opts();
    comet_redis_stats_t stats;
    calls_t st, r;
    burst_t b;
    comet_redis_t *c;
    int i;

    START_REDIS(s, "");
    memset(&st, 0, sizeof(st));
    memset(&b, 0, sizeof(b));
    c = connect_ok(loop, url_of("redis://127.0.0.1:%d", s.port), &o, &st);
    comet_redis_stats(c, &stats);
    for (i = 0; i < 10000; i++) {
        ck_assert_int_eq(comet_redis_commandv(c, burst_reply, &b, "INCR",
                                              "burst", NULL), APR_SUCCESS);
    }
    ck_assert_uint_eq(comet_redis_pending(c), 10000);
    ck_assert(wait_count(loop, &b.done, 10000, 20000));
    ck_assert_int_eq(b.bad, 0);
    {
        comet_redis_stats_t after;

        comet_redis_stats(c, &after);
        ck_assert_uint_eq(after.replies - stats.replies, 10000);
        /* Many commands per write: 10,000 commands, ~300 KB. */
        ck_assert_msg(after.writes - stats.writes < 100, "%lu writes",
                      (unsigned long)(after.writes - stats.writes));
    }
    r = run_cmd(loop, c, "GET", "burst", NULL);
    ck_assert_str_eq(r.str, "10000");
    ck_assert_uint_eq(comet_redis_pending(c), 0);
    redis_util_stop(&s);
}
END_TEST

START_TEST(unix_socket_and_database_are_used)
{
    redis_util_server_t s;
    comet_loop_t *loop = new_loop();
    comet_redis_opts_t o = fast_opts();
    calls_t st0, st3, r;
    comet_redis_t *c3, *c0;

    START_REDIS(s, "");
    memset(&st0, 0, sizeof(st0));
    memset(&st3, 0, sizeof(st3));
    c3 = connect_ok(loop, url_of("unix:%s?db=3", s.sock), &o, &st3);
    ck_assert_str_eq(comet_redis_name(c3), apr_pstrcat(comet_test_pool,
                                                       "unix:", s.sock, NULL));
    c0 = connect_ok(loop, url_of("redis://127.0.0.1:%d", s.port), &o, &st0);
    r = run_cmd(loop, c3, "SET", "where", "db3", NULL);
    ck_assert_str_eq(r.str, "OK");
    r = run_cmd(loop, c0, "GET", "where", NULL);
    ck_assert_int_eq(r.type, COMET_REPLY_NIL);
    r = run_cmd(loop, c0, "SELECT", "3", NULL);
    r = run_cmd(loop, c0, "GET", "where", NULL);
    ck_assert_str_eq(r.str, "db3");
    redis_util_stop(&s);
}
END_TEST

START_TEST(ipv6_loopback_is_reached)
{
    redis_util_server_t s;
    comet_loop_t *loop = new_loop();
    comet_redis_opts_t o = fast_opts();
    calls_t st, r;
    comet_redis_t *c;
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 sa;

    START_REDIS(s, "");
    memset(&sa, 0, sizeof(sa));
    sa.sin6_family = AF_INET6;
    sa.sin6_port = htons((unsigned short)s.port);
    sa.sin6_addr = in6addr_loopback;
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        /* No IPv6 on this machine: nothing to test. */
        fprintf(stderr, "ipv6_loopback_is_reached: no ::1 here, skipped\n");
        if (fd >= 0) {
            close(fd);
        }
        redis_util_stop(&s);
        return;
    }
    close(fd);
    memset(&st, 0, sizeof(st));
    c = connect_ok(loop, url_of("redis://[::1]:%d", s.port), &o, &st);
    r = run_cmd(loop, c, "PING", NULL);
    ck_assert_str_eq(r.str, "PONG");
    redis_util_stop(&s);
}
END_TEST

START_TEST(acl_user_authenticates_and_wrong_password_is_refused)
{
    redis_util_server_t s;
    comet_loop_t *loop = new_loop();
    comet_redis_opts_t o = fast_opts();
    calls_t st, st2, st3, r;
    comet_redis_t *c, *bad;
    char out[256];

    START_REDIS(s, "");
    ck_assert_int_eq(redis_util_sh(out, sizeof(out), "redis-cli -p %d ACL "
                                   "SETUSER comet on '>Sup3r-s3cret' '~app:*' "
                                   "'&*' '+@all'", s.port), 0);
    ck_assert_int_eq(redis_util_sh(out, sizeof(out), "redis-cli -p %d "
                                   "CONFIG SET requirepass Def4ult-pw",
                                   s.port),
                     0);
    memset(&st, 0, sizeof(st));
    c = connect_ok(loop, url_of("redis://comet:Sup3r-s3cret@127.0.0.1:%d",
                                s.port), &o, &st);
    r = run_cmd(loop, c, "ACL", "WHOAMI", NULL);
    ck_assert_str_eq(r.str, "comet");
    r = run_cmd(loop, c, "SET", "app:x", "1", NULL);
    ck_assert_str_eq(r.str, "OK");
    r = run_cmd(loop, c, "SET", "other", "1", NULL);
    ck_assert_int_eq(r.type, COMET_REPLY_ERROR);
    ck_assert_msg(strncmp(r.str, "NOPERM", 6) == 0, "%s", r.str);

    /* The default user by password alone, over RESP2 (AUTH, not HELLO). */
    o.resp2 = 1;
    memset(&st3, 0, sizeof(st3));
    c = connect_ok(loop, url_of("redis://:Def4ult-pw@127.0.0.1:%d", s.port),
                   &o, &st3);
    ck_assert_int_eq(comet_redis_proto(c), 2);
    r = run_cmd(loop, c, "ACL", "WHOAMI", NULL);
    ck_assert_str_eq(r.str, "default");
    o.resp2 = 0;

    /* A wrong password: down, once, with the server's reason; retried
     * with backoff; never a word of the password in the log. */
    memset(&st2, 0, sizeof(st2));
    ck_assert_int_eq(comet_redis_create(&bad, loop,
                                        url_of("redis://comet:Wr0ng-pw@"
                                               "127.0.0.1:%d", s.port),
                                        NULL, &o, comet_test_pool),
                     APR_SUCCESS);
    comet_redis_on_state(bad, rec_state, &st2);
    ck_assert_int_eq(comet_redis_commandv(bad, rec_reply, &r, "PING", NULL),
                     APR_SUCCESS);
    memset(&r, 0, sizeof(r));
    comet_redis_start(bad);
    ck_assert(wait_count(loop, &st2.downs, 1, 5000));
    ck_assert_msg(strstr(st2.error, "WRONGPASS") != NULL, "%s", st2.error);
    ck_assert_int_eq(r.n, 1);
    ck_assert_int_eq(r.status, COMET_REDIS_EDOWN);
    {
        comet_redis_stats_t stats;

        /* It keeps trying (backoff 20-200 ms), and says down only once. */
        do {
            comet_redis_stats(bad, &stats);
            run_for(loop, 50);
        } while (stats.failures < 3);
        ck_assert_int_eq(st2.downs, 1);
        ck_assert_int_eq(st2.ups, 0);
    }
    ck_assert_ptr_nonnull(strstr(log_text, "WRONGPASS"));
    ck_assert_msg(!strstr(log_text, "Wr0ng-pw") && !strstr(log_text, "s3cret")
                  && !strstr(log_text, "Def4ult"), "%s", log_text);
    comet_redis_close(bad);
    redis_util_stop(&s);
}
END_TEST

/* ---- a server killed and restarted -------------------------------------- */

typedef struct subrec_t {
    int  ready;
    int  resumed;
    int  lost;
    int  failed;
    int  messages;
    char last_msg[256];
    char last_chan[128];
    char error[256];
    char events[256];   /* r R l f m per event (R: resumed) */
} subrec_t;

static void rec_sub(void *baton, comet_redis_sub_t *sub,
                    const comet_redis_sub_event_t *ev)
{
    subrec_t *s = baton;
    apr_size_t len = strlen(s->events);
    char e = '?';

    snprintf(s->last_chan, sizeof(s->last_chan), "%.*s",
             (int)ev->channel_len, ev->channel);
    switch (ev->type) {
    case COMET_REDIS_SUB_READY:
        s->ready++;
        s->resumed += ev->resumed;
        e = ev->resumed ? 'R' : 'r';
        break;
    case COMET_REDIS_SUB_LOST:
        s->lost++;
        e = 'l';
        apr_cpystrn(s->error, ev->error, sizeof(s->error));
        break;
    case COMET_REDIS_SUB_FAILED:
        s->failed++;
        e = 'f';
        apr_cpystrn(s->error, ev->error, sizeof(s->error));
        break;
    case COMET_REDIS_SUB_MESSAGE:
        s->messages++;
        e = 'm';
        snprintf(s->last_msg, sizeof(s->last_msg), "%.*s",
                 (int)ev->payload_len, ev->payload);
        break;
    }
    if (len + 1 < sizeof(s->events)) {
        s->events[len] = e;
        s->events[len + 1] = '\0';
    }
}

START_TEST(killed_server_fails_in_flight_commands_and_comes_back)
{
    redis_util_server_t s;
    comet_loop_t *loop = new_loop();
    comet_redis_opts_t o = fast_opts();
    calls_t st, sst, sleep_r, after_r, r;
    subrec_t sr;
    comet_redis_t *c, *pub;
    comet_redis_sub_t *sub;
    comet_redis_stats_t stats;
    int port;

    START_REDIS(s, "--enable-debug-command yes");
    port = s.port;
    memset(&st, 0, sizeof(st));
    memset(&sst, 0, sizeof(sst));
    memset(&sr, 0, sizeof(sr));
    c = connect_ok(loop, url_of("redis://127.0.0.1:%d", port), &o, &st);
    ck_assert_int_eq(comet_redis_sub_create(&sub, loop,
                                            url_of("redis://127.0.0.1:%d",
                                                   port),
                                            NULL, &o, rec_sub, &sr,
                                            comet_test_pool), APR_SUCCESS);
    comet_redis_sub_on_state(sub, rec_state, &sst);
    ck_assert_int_eq(comet_redis_sub_subscribe(sub, "news", 4, 0),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_redis_sub_subscribe(sub, "shard{1}", 8, 1),
                     APR_SUCCESS);
    comet_redis_sub_start(sub);
    ck_assert(wait_count(loop, &sr.ready, 2, 5000));
    ck_assert_str_eq(sr.events, "rr");
    ck_assert_uint_eq(comet_redis_sub_active(sub), 2);

    r = run_cmd(loop, c, "PUBLISH", "news", "before", NULL);
    ck_assert_int_eq(r.integer, 1);
    r = run_cmd(loop, c, "SPUBLISH", "shard{1}", "sharded-before", NULL);
    ck_assert_int_eq(r.integer, 1);
    ck_assert(wait_count(loop, &sr.messages, 2, 5000));
    ck_assert_str_eq(sr.last_msg, "sharded-before");

    /* Two commands written, the server busy with the first: killed. */
    memset(&sleep_r, 0, sizeof(sleep_r));
    memset(&after_r, 0, sizeof(after_r));
    comet_redis_stats(c, &stats);
    ck_assert_int_eq(comet_redis_commandv(c, rec_reply, &sleep_r, "DEBUG",
                                          "SLEEP", "5", NULL), APR_SUCCESS);
    ck_assert_int_eq(comet_redis_commandv(c, rec_reply, &after_r, "INCR",
                                          "n", NULL), APR_SUCCESS);
    {
        comet_redis_stats_t now;

        do {
            run_for(loop, 5);
            comet_redis_stats(c, &now);
        } while (now.writes == stats.writes);
    }
    redis_util_kill(&s, SIGKILL);
    ck_assert(wait_count(loop, &after_r.n, 1, 5000));
    ck_assert_int_eq(sleep_r.n, 1);
    ck_assert_int_eq(sleep_r.status, COMET_REDIS_ELOST);
    ck_assert_int_eq(after_r.status, COMET_REDIS_ELOST);
    ck_assert_msg(strstr(sleep_r.error, "lost") != NULL, "%s",
                  sleep_r.error);
    ck_assert(wait_count(loop, &st.downs, 1, 5000));
    ck_assert(wait_count(loop, &sr.lost, 2, 5000));
    ck_assert_str_eq(st.states, "ud");
    /* While down: refused at once, never queued. */
    ck_assert_int_eq(comet_redis_commandv(c, rec_reply, &r, "PING", NULL),
                     COMET_REDIS_EDOWN);

    /* Back on the same port: up again, subscriptions restored, resumed. */
    s.port = port;
    ck_assert_int_eq(redis_util_start(&s), 0);
    ck_assert(wait_count(loop, &st.ups, 2, 5000));
    ck_assert_str_eq(st.states, "udu");
    ck_assert(wait_count(loop, &sr.resumed, 2, 5000));
    ck_assert_str_eq(sr.events, "rrmmllRR");
    ck_assert_str_eq(sst.states, "udu");
    r = run_cmd(loop, c, "PUBLISH", "news", "after", NULL);
    ck_assert_int_eq(r.integer, 1);
    ck_assert(wait_count(loop, &sr.messages, 3, 5000));
    ck_assert_str_eq(sr.last_msg, "after");
    /* Nothing was sent again by itself: n was never incremented. */
    r = run_cmd(loop, c, "GET", "n", NULL);
    ck_assert_int_eq(r.type, COMET_REPLY_NIL);

    /* A publisher on a fresh connection, and unsubscribe. */
    memset(&st, 0, sizeof(st));
    pub = connect_ok(loop, url_of("redis://127.0.0.1:%d", port), &o, &st);
    ck_assert_int_eq(comet_redis_sub_unsubscribe(sub, "news", 4),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_redis_sub_unsubscribe(sub, "news", 4),
                     APR_NOTFOUND);
    r = run_cmd(loop, pub, "PUBSUB", "NUMSUB", "news", NULL);
    r = run_cmd(loop, pub, "PUBLISH", "news", "unheard", NULL);
    ck_assert_int_eq(r.integer, 0);
    comet_redis_sub_close(sub);
    redis_util_stop(&s);
}
END_TEST

START_TEST(resp2_subscriber_gets_messages_and_refusals)
{
    redis_util_server_t s;
    comet_loop_t *loop = new_loop();
    comet_redis_opts_t o = fast_opts();
    calls_t st, r;
    subrec_t sr;
    comet_redis_t *c;
    comet_redis_sub_t *sub;
    char out[256];

    START_REDIS(s, "");
    ck_assert_int_eq(redis_util_sh(out, sizeof(out), "redis-cli -p %d ACL "
                                   "SETUSER limited on '>pw' '~*' "
                                   "resetchannels '&allowed*' '+@all'",
                                   s.port), 0);
    o.resp2 = 1;
    memset(&st, 0, sizeof(st));
    memset(&sr, 0, sizeof(sr));
    c = connect_ok(loop, url_of("redis://127.0.0.1:%d", s.port), &o, &st);
    ck_assert_int_eq(comet_redis_sub_create(&sub, loop,
                                            url_of("redis://limited:pw@"
                                                   "127.0.0.1:%d", s.port),
                                            NULL, &o, rec_sub, &sr,
                                            comet_test_pool), APR_SUCCESS);
    comet_redis_sub_start(sub);
    ck_assert_int_eq(comet_redis_sub_subscribe(sub, "allowed1", 8, 0),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_redis_sub_subscribe(sub, "forbidden", 9, 0),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_redis_sub_subscribe(sub, "allowed2", 8, 0),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_redis_sub_subscribe(sub, "allowed2", 8, 1),
                     APR_EINVAL);
    ck_assert(wait_count(loop, &sr.failed, 1, 5000));
    ck_assert(wait_count(loop, &sr.ready, 2, 5000));
    ck_assert_msg(strncmp(sr.error, "NOPERM", 6) == 0, "%s", sr.error);
    ck_assert_uint_eq(comet_redis_sub_count(sub), 2);
    ck_assert_int_eq(comet_redis_proto(comet_redis_sub_conn(sub)), 2);

    r = run_cmd(loop, c, "PUBLISH", "allowed2", "hello over resp2", NULL);
    ck_assert_int_eq(r.integer, 1);
    ck_assert(wait_count(loop, &sr.messages, 1, 5000));
    ck_assert_str_eq(sr.last_msg, "hello over resp2");
    ck_assert_str_eq(sr.last_chan, "allowed2");
    /* A RESP2 connection that leaves subscribed mode reads replies again. */
    ck_assert_int_eq(comet_redis_sub_unsubscribe(sub, "allowed1", 8),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_redis_sub_unsubscribe(sub, "allowed2", 8),
                     APR_SUCCESS);
    {
        int zero = 0;

        do {
            r = run_cmd(loop, c, "PUBSUB", "NUMSUB", "allowed2", NULL);
            r = run_cmd(loop, c, "PUBLISH", "allowed2", "y", NULL);
            zero = r.integer == 0;
        } while (!zero);
    }
    redis_util_stop(&s);
}
END_TEST

START_TEST(server_without_hello_gets_auth_and_resp2)
{
    comet_loop_t *loop = new_loop();
    comet_redis_opts_t o = fast_opts();
    fake_t *f = fake_start(loop, FAKE_OLD, comet_test_pool);
    calls_t st, r;
    comet_redis_t *c;

    memset(&st, 0, sizeof(st));
    c = connect_ok(loop, url_of("redis://:good@127.0.0.1:%d/5", f->port), &o,
                   &st);
    ck_assert_int_eq(comet_redis_proto(c), 2);
    ck_assert_str_eq(f->seen, "HELLO 3 AUTH default good|AUTH good|SELECT 5|");
    r = run_cmd(loop, c, "GET", "k", NULL);
    ck_assert_str_eq(r.str, "v");

    /* A wrong password: the server's text in the log without the
     * password it quoted. */
    f->seen[0] = '\0';
    memset(&st, 0, sizeof(st));
    ck_assert_int_eq(comet_redis_create(&c, loop,
                                        url_of("redis://:Hush-Hush@127.0.0.1:"
                                               "%d", f->port),
                                        NULL, &o, comet_test_pool),
                     APR_SUCCESS);
    comet_redis_on_state(c, rec_state, &st);
    comet_redis_start(c);
    ck_assert(wait_count(loop, &st.downs, 1, 5000));
    ck_assert_msg(strstr(st.error, "AUTH refused: WRONGPASS") != NULL, "%s",
                  st.error);
    ck_assert_msg(!strstr(log_text, "Hush-Hush"), "%s", log_text);
    comet_redis_close(c);
}
END_TEST

START_TEST(silent_server_times_out_the_command_and_the_connection)
{
    comet_loop_t *loop = new_loop();
    comet_redis_opts_t o = fast_opts();
    fake_t *f = fake_start(loop, FAKE_SILENT, comet_test_pool);
    calls_t st, r, r2;
    comet_redis_t *c;

    o.command_timeout = apr_time_from_msec(200);
    memset(&st, 0, sizeof(st));
    memset(&r, 0, sizeof(r));
    memset(&r2, 0, sizeof(r2));
    c = connect_ok(loop, url_of("redis://127.0.0.1:%d", f->port), &o, &st);
    ck_assert_int_eq(comet_redis_commandv(c, rec_reply, &r, "GET", "a", NULL),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_redis_commandv(c, rec_reply, &r2, "SET", "a", "b",
                                          NULL), APR_SUCCESS);
    ck_assert(wait_count(loop, &r.n, 1, 5000));
    ck_assert_int_eq(r.status, APR_TIMEUP);
    ck_assert_msg(strstr(r.error, "no reply within 200 ms") != NULL, "%s",
                  r.error);
    /* The one behind it was written too: it may have run. */
    ck_assert_int_eq(r2.n, 1);
    ck_assert_int_eq(r2.status, APR_TIMEUP);
    /* And the connection comes back by itself. */
    ck_assert(wait_count(loop, &st.ups, 2, 5000));
    ck_assert_str_eq(st.states, "udu");
    ck_assert_int_eq(f->accepts, 2);
}
END_TEST

START_TEST(garbage_or_unasked_replies_drop_the_connection)
{
    comet_loop_t *loop = new_loop();
    comet_redis_opts_t o = fast_opts();
    fake_t *f = fake_start(loop, FAKE_GARBAGE, comet_test_pool);
    calls_t st, r;
    comet_redis_t *c;

    memset(&st, 0, sizeof(st));
    c = connect_ok(loop, url_of("redis://127.0.0.1:%d", f->port), &o, &st);
    r = run_cmd(loop, c, "GET", "a", NULL);
    ck_assert_int_eq(r.status, COMET_REDIS_ELOST);
    ck_assert_msg(strstr(r.error, "unknown reply type '@'") != NULL, "%s",
                  r.error);
    ck_assert(wait_count(loop, &st.ups, 2, 5000));

    f->mode = FAKE_EXTRA;
    r = run_cmd(loop, c, "GET", "a", NULL);
    ck_assert_int_eq(r.status, APR_SUCCESS);
    ck_assert_str_eq(r.str, "one");
    ck_assert(wait_count(loop, &st.downs, 2, 5000));
    ck_assert_msg(strstr(st.error, "a reply without a command") != NULL, "%s",
                  st.error);
}
END_TEST

/* ---- bounds and closing ------------------------------------------------- */

static void close_in_callback(void *baton, apr_status_t st,
                              const comet_resp_reply_t *r, const char *err)
{
    comet_redis_t **c = baton;

    comet_redis_close(*c);
}

START_TEST(queue_bounds_and_close_inside_a_callback)
{
    comet_loop_t *loop = new_loop();
    comet_redis_opts_t o = fast_opts();
    fake_t *f = fake_start(loop, 0, comet_test_pool);
    calls_t st, r[4];
    comet_redis_t *c;
    int i;

    o.max_pending = 3;
    memset(&st, 0, sizeof(st));
    memset(r, 0, sizeof(r));
    ck_assert_int_eq(comet_redis_create(&c, loop,
                                        url_of("redis://127.0.0.1:%d",
                                               f->port), NULL, &o,
                                        comet_test_pool), APR_SUCCESS);
    comet_redis_on_state(c, rec_state, &st);
    /* Held before start, in order, bounded. */
    ck_assert_int_eq(comet_redis_commandv(c, close_in_callback, &c, "GET",
                                          "a", NULL), APR_SUCCESS);
    for (i = 1; i < 3; i++) {
        ck_assert_int_eq(comet_redis_commandv(c, rec_reply, &r[i], "GET",
                                              "a", NULL), APR_SUCCESS);
    }
    ck_assert_int_eq(comet_redis_commandv(c, rec_reply, &r[3], "GET", "a",
                                          NULL), APR_ENOSPC);
    ck_assert_int_eq(comet_redis_commandv(c, rec_reply, &r[3], "SUBSCRIBE",
                                          NULL), APR_EINVAL);
    comet_redis_start(c);
    ck_assert(wait_count(loop, &r[2].n, 1, 5000));
    /* The first reply closed the client: the others failed, once. */
    ck_assert_int_eq(r[1].n, 1);
    ck_assert_int_eq(r[1].status, COMET_REDIS_ECLOSED);
    ck_assert_int_eq(r[2].status, COMET_REDIS_ECLOSED);
    ck_assert_int_eq(comet_redis_is_up(c), 0);
    ck_assert_str_eq(st.states, "u");
}
END_TEST

START_TEST(nothing_listening_reports_down_once_and_keeps_trying)
{
    comet_loop_t *loop = new_loop();
    comet_redis_opts_t o = fast_opts();
    calls_t st, r;
    comet_redis_t *c;
    comet_redis_stats_t stats;
    int port = redis_util_free_port();

    memset(&st, 0, sizeof(st));
    memset(&r, 0, sizeof(r));
    ck_assert_int_eq(comet_redis_create(&c, loop,
                                        url_of("redis://127.0.0.1:%d", port),
                                        NULL, &o, comet_test_pool),
                     APR_SUCCESS);
    comet_redis_on_state(c, rec_state, &st);
    comet_redis_start(c);
    ck_assert(wait_count(loop, &st.downs, 1, 5000));
    ck_assert_msg(strstr(st.error, "refused") != NULL, "%s", st.error);
    do {
        run_for(loop, 20);
        comet_redis_stats(c, &stats);
    } while (stats.failures < 5);
    ck_assert_int_eq(st.downs, 1);
    /* One line for the first failure; the next ones are rate-limited. */
    {
        const char *p = log_text;
        int lines = 0;

        while ((p = strstr(p, "cannot connect")) != NULL) {
            lines++;
            p++;
        }
        ck_assert_int_eq(lines, 1);
    }
    comet_redis_close(c);
}
END_TEST

Suite *test_comet_redis_suite(void)
{
    Suite *s = suite_create("comet_redis");
    TCase *tu = tcase_create("url");
    TCase *tr = tcase_create("server");
    TCase *tf = tcase_create("fake");

    tcase_add_checked_fixture(tu, setup, teardown);
    tcase_add_test(tu, urls_of_every_form_parse);
    tcase_add_test(tu, bad_urls_are_refused_with_a_clear_message);
    tcase_add_test(tu, password_file_sets_the_password_and_never_shows_it);
    suite_add_tcase(s, tu);

    tcase_add_checked_fixture(tr, setup, teardown);
    tcase_add_unchecked_fixture(tr, redis_util_sweep_setup, redis_util_sweep);
    tcase_set_timeout(tr, 60);
    tcase_add_test(tr, commands_get_their_replies_over_resp3);
    tcase_add_test(tr, pipelined_burst_of_10000_commands_in_few_writes);
    tcase_add_test(tr, unix_socket_and_database_are_used);
    tcase_add_test(tr, ipv6_loopback_is_reached);
    tcase_add_test(tr, acl_user_authenticates_and_wrong_password_is_refused);
    tcase_add_test(tr, killed_server_fails_in_flight_commands_and_comes_back);
    tcase_add_test(tr, resp2_subscriber_gets_messages_and_refusals);
    suite_add_tcase(s, tr);

    tcase_add_checked_fixture(tf, setup, teardown);
    tcase_set_timeout(tf, 30);
    tcase_add_test(tf, server_without_hello_gets_auth_and_resp2);
    tcase_add_test(tf, silent_server_times_out_the_command_and_the_connection);
    tcase_add_test(tf, garbage_or_unasked_replies_drop_the_connection);
    tcase_add_test(tf, queue_bounds_and_close_inside_a_callback);
    tcase_add_test(tf, nothing_listening_reports_down_once_and_keeps_trying);
    suite_add_tcase(s, tf);
    return s;
}
