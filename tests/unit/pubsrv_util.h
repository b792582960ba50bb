/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Shared by the tests of the publish socket's server (test_comet_pubsrv.c,
 * test_comet_pubcmd.c): a real store, a real Unix socket, the server's loop
 * in a thread of its own, clients in the test's thread.  Waits are on
 * conditions (a reply, a closed socket, a counter), bounded by WAIT_MS. */
#ifndef COMET_PUBSRV_UTIL_H
#define COMET_PUBSRV_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <sys/eventfd.h>

#include "store_util.h"
#include "comet_loop.h"
#include "comet_pubsrv.h"

#define WAIT_MS 5000

typedef struct fixture_t {
    comet_store_t  *st;
    comet_loop_t   *loop;
    comet_pubsrv_t *srv;
    comet_pubsrv_t *srv2;       /* a second server on the same socket    */
    comet_pubsrv_peers_t *peers;
    pthread_t       thread;
    int             running;
    int             lfd;
    int             lfd2;       /* srv2's descriptor of the socket        */
    char            dir[64];
    char            path[128];
    apr_uint32_t    woken;      /* bit per slot the store asked to wake */
    int             sub_fd;     /* the server's slot's eventfd, or 0     */
    apr_uint32_t    sub_slot;   /* the server's slot                    */
} fixture_t;

static fixture_t fx;

static APR_INLINE void wake_cb(void *baton, apr_uint32_t slot)
{
    apr_uint64_t one = 1;

    __atomic_or_fetch(&fx.woken, 1u << slot, __ATOMIC_SEQ_CST);
    if (fx.sub_fd > 0 && slot == fx.sub_slot
        && write(fx.sub_fd, &one, sizeof(one)) < 0) {
        /* saturated: woken anyway */
    }
}

static APR_INLINE void *loop_main(void *arg)
{
    comet_loop_run(fx.loop);
    return NULL;
}

typedef struct opts_t {
    apr_size_t          store_size;    /* 0: 4 MB */
    apr_size_t          max_message;   /* 0: 4096 */
    apr_size_t          max_output;
    apr_interval_time_t stuck;
    apr_uint32_t        max_clients;
    apr_size_t          max_input;
    apr_interval_time_t command_timeout;
    apr_interval_time_t idle_timeout;
    apr_size_t          max_timers;    /* of the loop; 0: 1024 */
    apr_uint32_t        second;        /* max_clients of a second server on
                                          the same socket, sharing a table
                                          of peers with the first; 0: none */
    int                 adopt_fd;      /* served before the loop starts */
    int                 subscribers;   /* the server gets a slot of its own
                                          and its eventfd: SUBSCRIBE works */
    apr_size_t          max_pending;
    comet_pubsrv_publish_fn *publish;  /* publishes handed out            */
} opts_t;

static APR_INLINE void start(const opts_t *o)
{
    comet_pubsrv_config_t cfg;
    comet_store_config_t scfg;
    struct sockaddr_un sa;

    memset(&fx, 0, sizeof(fx));
    comet_store_config_default(&scfg, o && o->store_size ? o->store_size
                                                         : 4 * 1024 * 1024);
    scfg.max_procs = 4;
    scfg.max_message_size = o && o->max_message ? o->max_message : 4096;
    fx.st = store_util_make_cfg(&scfg);
    ck_assert_int_eq(comet_loop_create(&fx.loop, o && o->max_timers
                                                 ? o->max_timers : 1024,
                                       comet_test_pool), APR_SUCCESS);

    strcpy(fx.dir, "/tmp/comet-pubsrv.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(fx.dir));
    snprintf(fx.path, sizeof(fx.path), "%s/s", fx.dir);
    fx.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fx.lfd, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, fx.path);
    ck_assert_int_eq(bind(fx.lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(fx.lfd, 128), 0);

    memset(&cfg, 0, sizeof(cfg));
    cfg.store = fx.st;
    cfg.listen_fd = fx.lfd;
    cfg.wake = wake_cb;
    cfg.version = "test";
    if (o) {
        cfg.max_output = o->max_output;
        cfg.stuck_timeout = o->stuck;
        cfg.max_clients = o->max_clients;
        cfg.max_input = o->max_input;
        cfg.command_timeout = o->command_timeout;
        cfg.idle_timeout = o->idle_timeout;
        cfg.publish = o->publish;
        cfg.max_pending = o->max_pending;
    }
    if (o && o->subscribers) {
        ck_assert_int_eq(comet_store_proc_attach_ex(fx.st,
                                                    (apr_int32_t)getpid(),
                                                    COMET_STORE_SLOT_EXTRA,
                                                    &fx.sub_slot),
                         APR_SUCCESS);
        fx.sub_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        ck_assert_int_gt(fx.sub_fd, 0);
        cfg.wake_fd = fx.sub_fd;
        cfg.slot = fx.sub_slot;
    }
    if (o && o->second) {
        fx.peers = comet_pubsrv_peers_format(
            apr_palloc(comet_test_pool, comet_pubsrv_peers_size(2)), 2);
        cfg.peers = fx.peers;
    }
    ck_assert_int_eq(comet_pubsrv_create(&fx.srv, fx.loop, &cfg,
                                         comet_test_pool), APR_SUCCESS);
    if (o && o->second) {
        /* The same socket through another descriptor, as a second process
         * would have it: one watcher per descriptor in a loop. */
        cfg.listen_fd = fx.lfd2 = dup(fx.lfd);
        cfg.max_clients = o->second;
        ck_assert_int_ge(cfg.listen_fd, 0);
        ck_assert_int_eq(comet_pubsrv_create(&fx.srv2, fx.loop, &cfg,
                                             comet_test_pool), APR_SUCCESS);
    }
    if (o && o->adopt_fd > 0) {
        ck_assert_int_eq(comet_pubsrv_adopt(fx.srv, o->adopt_fd),
                         APR_SUCCESS);
    }
    ck_assert_int_eq(pthread_create(&fx.thread, NULL, loop_main, NULL), 0);
    fx.running = 1;
}

static APR_INLINE void setup(void)
{
    comet_test_pool_setup();
}

static APR_INLINE void teardown(void)
{
    if (fx.running) {
        comet_loop_stop(fx.loop);
        pthread_join(fx.thread, NULL);
        fx.running = 0;
    }
    /* Destroying the pool closes the server's connections. */
    comet_test_pool_teardown();
    if (fx.sub_fd > 0) {
        close(fx.sub_fd);
    }
    if (fx.lfd2 > 0) {
        close(fx.lfd2);
    }
    if (fx.lfd > 0) {
        close(fx.lfd);
        unlink(fx.path);
        rmdir(fx.dir);
    }
}

/* ---- clients ------------------------------------------------------------- */

static APR_INLINE long long now_ms(void)
{
    return (long long)(comet_now_mono() / 1000);
}

static APR_INLINE int client(void)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    ck_assert_int_ge(fd, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, fx.path);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

static APR_INLINE void send_all(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);

        ck_assert_msg(n > 0, "send: %s", strerror(errno));
        data += n;
        len -= (size_t)n;
    }
}

static APR_INLINE void send_str(int fd, const char *s)
{
    send_all(fd, s, strlen(s));
}

/* Send what the peer takes until it closes. */
static APR_INLINE void send_until_closed(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);

        if (n <= 0) {
            return;
        }
        data += n;
        len -= (size_t)n;
    }
}

/* Read exactly len bytes (0 when the peer closed first or time ran out;
 * *got says how many came). */
static APR_INLINE int read_n(int fd, char *buf, size_t len, size_t *got)
{
    long long end = now_ms() + WAIT_MS;

    *got = 0;
    while (*got < len) {
        struct pollfd p = { fd, POLLIN, 0 };
        ssize_t n;

        if (poll(&p, 1, (int)(end - now_ms())) <= 0) {
            return 0;
        }
        n = recv(fd, buf + *got, len - *got, 0);
        if (n <= 0) {
            return 0;
        }
        *got += (size_t)n;
    }
    return 1;
}

/* The next bytes from fd must be exactly expect. */
static APR_INLINE void expect(int fd, const char *expect)
{
    size_t len = strlen(expect), got;
    char *buf = malloc(len + 1);

    read_n(fd, buf, len, &got);
    buf[got] = '\0';
    ck_assert_msg(got == len && !memcmp(buf, expect, len),
                  "expected \"%s\", got \"%s\"", expect, buf);
    free(buf);
}

/* The peer closes (after nothing more than what was read). */
static APR_INLINE void expect_closed(int fd)
{
    char c;
    size_t got;

    ck_assert_msg(!read_n(fd, &c, 1, &got) && got == 0,
                  "connection still open (or more data)");
}

/* Read one reply line (up to CRLF) into buf. */
static APR_INLINE void read_line(int fd, char *buf, size_t max)
{
    size_t len = 0, got;

    while (len + 1 < max) {
        ck_assert_msg(read_n(fd, buf + len, 1, &got), "no full line: %.*s",
                      (int)len, buf);
        len++;
        if (len >= 2 && buf[len - 2] == '\r' && buf[len - 1] == '\n') {
            break;
        }
    }
    buf[len] = '\0';
}

static APR_INLINE int wait_until(int (*cond)(void))
{
    long long end = now_ms() + WAIT_MS;

    while (!cond()) {
        if (now_ms() > end) {
            return 0;
        }
        usleep(2000);
    }
    return 1;
}

static APR_INLINE int no_clients(void)
{
    comet_pubsrv_stats_t s;

    comet_pubsrv_stats(fx.srv, &s);
    return s.clients == 0;
}

static APR_INLINE comet_chanref_t subscribe(apr_uint32_t slot, const char *ch)
{
    comet_chanref_t ref;
    comet_msgid_t newest;

    ck_assert_int_eq(comet_store_subscribe(fx.st, slot, ch, strlen(ch), 0,
                                           &ref, &newest), APR_SUCCESS);
    return ref;
}

static APR_INLINE apr_uint32_t attach(void)
{
    apr_uint32_t slot;

    ck_assert_int_eq(comet_store_proc_attach(fx.st, (apr_int32_t)getpid(),
                                             &slot), APR_SUCCESS);
    return slot;
}

static APR_INLINE comet_read_t read_all(const char *ch)
{
    comet_msgid_t zero = { 0, 0 };
    comet_read_t r;

    ck_assert_int_eq(comet_store_read_by_id(fx.st, ch, strlen(ch), zero, 0, 0,
                                            comet_now_mono(), comet_test_pool,
                                            &r), APR_SUCCESS);
    return r;
}

static APR_INLINE comet_msg_t *msg_at(comet_read_t *r, int i)
{
    return &APR_ARRAY_IDX(r->msgs, i, comet_msg_t);
}

#endif
