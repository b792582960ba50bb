/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_pubsrv.c -- the publish socket's RESP server (see comet_pubsrv.h):
 * its connections.  The commands they run are comet_pubcmd.c's; the
 * records both halves share are in comet_pubsrv_private.h.
 *
 * One record per connection, in a pool of its own (destroyed when the
 * connection closes).  A connection moves bytes in three steps, all on the
 * loop thread (the publish thread):
 *   read     one recv() into the input buffer per readiness event, so
 *            that a client with a long pipeline cannot hold the loop for
 *            more than one buffer's worth of commands;
 *   process  parse and run every complete command while the unsent
 *            replies stay under max_output (replies of a whole pipeline go
 *            out in one send);
 *   flush    send() until EAGAIN, then wait for WRITE.
 * Reading stops while the replies are over the bound (the kernel's buffer
 * then fills and the client's writes block: back-pressure, not memory),
 * and starts again as soon as they drain below it.
 *
 * The server's pools use an allocator of their own, so that connections
 * can come and go on the loop thread while other threads allocate from
 * the pool the server was created in.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <apr_allocator.h>

#include "comet_pubsrv_private.h"

#define PUBSRV_DEFAULT_CLIENTS   1024
#define PUBSRV_DEFAULT_OUTPUT    (256 * 1024)
#define PUBSRV_DEFAULT_STUCK     apr_time_from_sec(30)
/* Room for the arguments around the message in one command. */
#define PUBSRV_ARGS_ROOM         (64 * 1024)
/* Input is read at least this much at a time; an idle connection's buffer
 * shrinks back to it. */
#define PUBSRV_READ_CHUNK        (16 * 1024)
/* Accepts per readiness event, so that a connection storm cannot keep the
 * loop from serving the connections it already has. */
#define PUBSRV_ACCEPT_BATCH      64
/* How long the listener rests when the process is out of descriptors
 * (level-triggered, it would otherwise report the same pending
 * connection in a tight loop). */
#define PUBSRV_ACCEPT_PAUSE      apr_time_from_msec(100)

static void conn_close(comet_pubconn_t *c);

/* ---- connections -------------------------------------------------------------- */

static void set_interest(comet_pubconn_t *c)
{
    comet_pubsrv_t *srv = c->srv;
    int want = 0;

    if (!c->closing && !c->eof && c->out->len < srv->cfg.max_output) {
        want |= COMET_LOOP_READ;
    }
    if (c->out->len) {
        want |= COMET_LOOP_WRITE;
    }
    comet_loop_io_modify(srv->loop, &c->io, want);

    /* Waiting on the client to take its replies: over the bound, or with
     * a last reply before closing.  A client that takes nothing at all for
     * stuck_timeout is let go (flush re-arms on every bit of progress). */
    if (c->out->len && (c->closing || c->out->len >= srv->cfg.max_output)) {
        if (!comet_timer_armed(&c->stuck)) {
            comet_timer_arm_in(srv->loop, &c->stuck, srv->cfg.stuck_timeout);
        }
    }
    else if (comet_timer_armed(&c->stuck)) {
        comet_timer_cancel(srv->loop, &c->stuck);
    }
}

/* Returns -1 when the connection is to be closed at once. */
static int conn_flush(comet_pubconn_t *c)
{
    comet_pubsrv_t *srv = c->srv;
    int progress = 0;

    while (c->out->len) {
        ssize_t n = send(c->fd, c->out->data, c->out->len,
                         MSG_NOSIGNAL | MSG_DONTWAIT);

        if (n > 0) {
            comet_buf_consume(c->out, (apr_size_t)n);
            progress = 1;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        }
        return -1;
    }
    if (c->out->len == 0 && c->out->cap > srv->cfg.max_output) {
        /* One large reply should not cost the connection's memory for
         * the rest of its life. */
        comet_buf_release(c->out);
    }
    if (progress && comet_timer_armed(&c->stuck)) {
        comet_timer_arm_in(srv->loop, &c->stuck, srv->cfg.stuck_timeout);
    }
    return 0;
}

/* Run the complete commands in the input buffer.  Returns 1 when it
 * stopped because the replies passed max_output (commands may be left),
 * 0 when the input holds no complete command (or the connection is
 * closing). */
static int conn_process(comet_pubconn_t *c)
{
    comet_pubsrv_t *srv = c->srv;
    apr_size_t start = 0, consumed;
    comet_resp_cmd_t cmd;
    apr_status_t rv;
    int blocked = 0;

    while (!c->closing && !c->broken) {
        if (c->out->len >= srv->cfg.max_output) {
            blocked = 1;
            break;
        }
        rv = comet_resp_parse(c->parser, c->in + start, c->in_len - start,
                              &consumed, &cmd);
        start += consumed;
        if (rv == APR_SUCCESS) {
            comet_pubcmd_execute(c, &cmd);
            continue;
        }
        if (rv == APR_INCOMPLETE) {
            break;
        }
        /* Framing is lost: answer and hang up, as Redis does. */
        if (rv == COMET_ETOOBIG) {
            comet_pubcmd_reply_store_error(c, COMET_ETOOBIG);
        }
        else {
            comet_pubcmd_reply_err(c, "ERR %s",
                                   comet_resp_parser_error(c->parser));
        }
        comet_log(COMET_LOG_INFO, 0, "publish socket: client %"
                  APR_UINT64_T_FMT " closed: %s", c->id,
                  rv == COMET_ETOOBIG ? "message larger than "
                  "CometMaxMessageSize" : comet_resp_parser_error(c->parser));
        COMET_PUBSRV_STAT_ADD(srv, dropped, 1);
        c->closing = 1;
        c->in_len = start = 0;
    }
    if (start) {
        memmove(c->in, c->in + start, c->in_len - start);
        c->in_len -= start;
    }
    return blocked;
}

/* One recv().  Returns -1 when the connection is to be closed at once. */
static int conn_read(comet_pubconn_t *c)
{
    comet_pubsrv_t *srv = c->srv;
    ssize_t n;

    if (c->in_cap - c->in_len < PUBSRV_READ_CHUNK && c->in_cap < srv->in_max) {
        apr_size_t cap = c->in_cap * 2;
        char *in;

        if (cap < c->in_len + PUBSRV_READ_CHUNK) {
            cap = c->in_len + PUBSRV_READ_CHUNK;
        }
        if (cap > srv->in_max) {
            cap = srv->in_max;
        }
        if (!(in = realloc(c->in, cap))) {
            comet_log(COMET_LOG_ERR, APR_ENOMEM, "publish socket: client %"
                      APR_UINT64_T_FMT ": no memory for its input", c->id);
            return -1;
        }
        c->in = in;
        c->in_cap = cap;
    }
    if (c->in_len == c->in_cap) {
        /* A whole buffer and still no complete command. */
        comet_pubcmd_reply_err(c, "ERR Protocol error: request larger than "
                               "%" APR_SIZE_T_FMT " bytes", srv->in_max);
        comet_log(COMET_LOG_INFO, 0, "publish socket: client %"
                  APR_UINT64_T_FMT " closed: request too large", c->id);
        COMET_PUBSRV_STAT_ADD(srv, dropped, 1);
        c->closing = 1;
        c->in_len = 0;
        return 0;
    }
    n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
    if (n > 0) {
        c->in_len += (apr_size_t)n;
    }
    else if (n == 0) {
        c->eof = 1;
    }
    else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        return -1;
    }
    return 0;
}

static void conn_service(comet_pubconn_t *c)
{
    comet_pubsrv_t *srv = c->srv;

    for (;;) {
        int blocked = conn_process(c);

        if (c->broken) {
            comet_log(COMET_LOG_WARNING, APR_ENOSPC, "publish socket: client "
                      "%" APR_UINT64_T_FMT " closed: a reply could not be "
                      "buffered", c->id);
            conn_close(c);
            return;
        }
        if (conn_flush(c) < 0) {
            conn_close(c);
            return;
        }
        if (!blocked || c->out->len >= srv->cfg.max_output) {
            break;
        }
        /* The socket took enough of the replies: run more commands. */
    }
    if (c->eof && !c->closing) {
        /* Every complete command has run; nothing more will come. */
        c->closing = 1;
    }
    if (c->closing && c->out->len == 0) {
        conn_close(c);
        return;
    }
    if (c->in_len == 0 && c->in_cap > PUBSRV_READ_CHUNK) {
        /* Back to a small buffer after a large message. */
        char *in = realloc(c->in, PUBSRV_READ_CHUNK);

        if (in) {
            c->in = in;
            c->in_cap = PUBSRV_READ_CHUNK;
        }
    }
    set_interest(c);
}

static void conn_io(comet_loop_t *loop, int fd, int events, void *baton)
{
    comet_pubconn_t *c = baton;
    int reading = !c->closing && !c->eof
                  && c->out->len < c->srv->cfg.max_output;

    if (events & COMET_LOOP_ERROR) {
        conn_close(c);
        return;
    }
    if (events & (COMET_LOOP_READ | COMET_LOOP_HUP)) {
        if (!reading) {
            /* Only a full hangup is reported without READ interest: the
             * client can take no reply any more. */
            if (events & COMET_LOOP_HUP) {
                conn_close(c);
                return;
            }
        }
        else if (conn_read(c) < 0) {
            conn_close(c);
            return;
        }
    }
    conn_service(c);
}

static void conn_stuck(comet_loop_t *loop, comet_timer_t *timer, void *baton)
{
    comet_pubconn_t *c = baton;

    comet_log(COMET_LOG_INFO, 0, "publish socket: client %" APR_UINT64_T_FMT
              " closed: it took none of its %" APR_SIZE_T_FMT " bytes of "
              "replies for %" APR_TIME_T_FMT " s", c->id, c->out->len,
              apr_time_sec(c->srv->cfg.stuck_timeout));
    COMET_PUBSRV_STAT_ADD(c->srv, dropped, 1);
    conn_close(c);
}

static apr_status_t conn_cleanup(void *data)
{
    comet_pubconn_t *c = data;
    comet_pubsrv_t *srv = c->srv;

    if (c->watched) {
        comet_loop_io_remove(srv->loop, &c->io);
    }
    comet_timer_cancel(srv->loop, &c->stuck);
    close(c->fd);
    free(c->in);
    if (c->prev) {
        c->prev->next = c->next;
    }
    else {
        srv->conns = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    __atomic_sub_fetch(&srv->st.clients, 1, __ATOMIC_RELAXED);
    return APR_SUCCESS;
}

static void conn_close(comet_pubconn_t *c)
{
    apr_pool_destroy(c->pool);
}

static apr_status_t conn_open(comet_pubsrv_t *srv, int fd)
{
    apr_pool_t *p;
    comet_pubconn_t *c;
    apr_status_t rv;

    if ((rv = apr_pool_create(&p, srv->pool)) != APR_SUCCESS) {
        close(fd);
        return rv;
    }
    c = apr_pcalloc(p, sizeof(*c));
    c->srv = srv;
    c->pool = p;
    c->fd = fd;
    c->proto = COMET_RESP2;
    c->id = ++srv->next_id;
    c->since = comet_now_mono();
    comet_timer_init(&c->stuck, conn_stuck, c);
    c->next = srv->conns;
    if (c->next) {
        c->next->prev = c;
    }
    srv->conns = c;
    __atomic_add_fetch(&srv->st.clients, 1, __ATOMIC_RELAXED);
    apr_pool_cleanup_register(p, c, conn_cleanup, apr_pool_cleanup_null);

    if ((rv = comet_resp_parser_create(&c->parser, &srv->limits, p))
        != APR_SUCCESS
        || (rv = comet_buf_create(&c->out, p, 0, srv->cfg.max_output
                                                 + COMET_PUBSRV_REPLY_MAX))
           != APR_SUCCESS) {
        conn_close(c);
        return rv;
    }
    if (!(c->in = malloc(PUBSRV_READ_CHUNK))) {
        conn_close(c);
        return APR_ENOMEM;
    }
    c->in_cap = PUBSRV_READ_CHUNK;
    if ((rv = comet_loop_io_add(srv->loop, &c->io, fd, COMET_LOOP_READ,
                                conn_io, c)) != APR_SUCCESS) {
        conn_close(c);
        return rv;
    }
    c->watched = 1;
    COMET_PUBSRV_STAT_ADD(srv, accepted, 1);
    comet_log(COMET_LOG_DEBUG, 0, "publish socket: client %" APR_UINT64_T_FMT
              " connected", c->id);
    return APR_SUCCESS;
}

/* ---- the listener --------------------------------------------------------------- */

static void refuse_client(int fd)
{
    static const char msg[] = "-ERR max number of clients reached\r\n";

    /* Best effort: a new socket has room for a line. */
    if (send(fd, msg, sizeof(msg) - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        /* nothing more to tell it */
    }
    close(fd);
}

static void listener_resume(comet_loop_t *loop, comet_timer_t *timer,
                            void *baton)
{
    comet_pubsrv_t *srv = baton;

    comet_loop_io_modify(loop, &srv->lio, COMET_LOOP_READ);
}

static void listener_io(comet_loop_t *loop, int fd, int events, void *baton)
{
    comet_pubsrv_t *srv = baton;
    int i;

    for (i = 0; i < PUBSRV_ACCEPT_BATCH; i++) {
        int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (cfd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                /* Another process of the server took it, or none left. */
                return;
            }
            comet_log(errno == EMFILE || errno == ENFILE
                      ? COMET_LOG_WARNING : COMET_LOG_ERR,
                      APR_FROM_OS_ERROR(errno), "publish socket: cannot "
                      "accept a connection; trying again in %d ms",
                      (int)apr_time_as_msec(PUBSRV_ACCEPT_PAUSE));
            comet_loop_io_modify(loop, &srv->lio, 0);
            comet_timer_arm_in(loop, &srv->resume, PUBSRV_ACCEPT_PAUSE);
            return;
        }
        if (__atomic_load_n(&srv->st.clients, __ATOMIC_RELAXED)
            >= srv->cfg.max_clients) {
            refuse_client(cfd);
            continue;
        }
        conn_open(srv, cfd);
    }
}

/* ---- the server ------------------------------------------------------------------ */

static apr_status_t srv_cleanup(void *data)
{
    comet_pubsrv_t *srv = data;

    /* The connections' pools (children of this one) are gone already. */
    if (srv->listening) {
        comet_loop_io_remove(srv->loop, &srv->lio);
        srv->listening = 0;
    }
    comet_timer_cancel(srv->loop, &srv->resume);
    return APR_SUCCESS;
}

apr_status_t comet_pubsrv_create(comet_pubsrv_t **out, comet_loop_t *loop,
                                 const comet_pubsrv_config_t *cfg,
                                 apr_pool_t *p)
{
    comet_store_config_t scfg;
    apr_allocator_t *alloc;
    comet_pubsrv_t *srv;
    apr_pool_t *pool;
    apr_status_t rv;

    if ((rv = apr_allocator_create(&alloc)) != APR_SUCCESS) {
        return rv;
    }
    if ((rv = apr_pool_create_ex(&pool, p, NULL, alloc)) != APR_SUCCESS) {
        apr_allocator_destroy(alloc);
        return rv;
    }
    apr_allocator_owner_set(alloc, pool);
    /* Keep a few connections' worth of freed blocks, not every peak. */
    apr_allocator_max_free_set(alloc, 1024 * 1024);
    apr_pool_tag(pool, "comet_pubsrv");

    srv = apr_pcalloc(pool, sizeof(*srv));
    srv->cfg = *cfg;
    srv->loop = loop;
    srv->pool = pool;
    srv->started = comet_now_mono();
    comet_store_get_config(cfg->store, &scfg);
    srv->max_channel_id = scfg.max_channel_id;
    if (!srv->cfg.max_message) {
        srv->cfg.max_message = scfg.max_message_size;
    }
    if (!srv->cfg.max_clients) {
        srv->cfg.max_clients = PUBSRV_DEFAULT_CLIENTS;
    }
    if (!srv->cfg.max_output) {
        srv->cfg.max_output = PUBSRV_DEFAULT_OUTPUT;
    }
    if (srv->cfg.stuck_timeout <= 0) {
        srv->cfg.stuck_timeout = PUBSRV_DEFAULT_STUCK;
    }
    comet_resp_limits_default(&srv->limits);
    srv->limits.max_bulk = srv->cfg.max_message + COMET_PUBSRV_BULK_SLACK;
    srv->in_max = srv->limits.max_bulk + PUBSRV_ARGS_ROOM;
    if ((rv = apr_pool_create(&srv->scratch, pool)) != APR_SUCCESS) {
        return rv;
    }
    comet_timer_init(&srv->resume, listener_resume, srv);
    apr_pool_cleanup_register(pool, srv, srv_cleanup,
                              apr_pool_cleanup_null);
    if (cfg->listen_fd >= 0) {
        if ((rv = comet_loop_io_add(loop, &srv->lio, cfg->listen_fd,
                                    COMET_LOOP_READ, listener_io, srv))
            != APR_SUCCESS) {
            return rv;
        }
        srv->listening = 1;
    }
    *out = srv;
    return APR_SUCCESS;
}

apr_status_t comet_pubsrv_adopt(comet_pubsrv_t *srv, int fd)
{
    int flags = fcntl(fd, F_GETFL);

    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        apr_status_t rv = APR_FROM_OS_ERROR(errno);

        close(fd);
        return rv;
    }
    if (__atomic_load_n(&srv->st.clients, __ATOMIC_RELAXED)
        >= srv->cfg.max_clients) {
        refuse_client(fd);
        return APR_EAGAIN;
    }
    return conn_open(srv, fd);
}

void comet_pubsrv_stats(comet_pubsrv_t *srv, comet_pubsrv_stats_t *out)
{
    out->clients = __atomic_load_n(&srv->st.clients, __ATOMIC_RELAXED);
    out->accepted = __atomic_load_n(&srv->st.accepted, __ATOMIC_RELAXED);
    out->commands = __atomic_load_n(&srv->st.commands, __ATOMIC_RELAXED);
    out->publishes = __atomic_load_n(&srv->st.publishes, __ATOMIC_RELAXED);
    out->errors = __atomic_load_n(&srv->st.errors, __ATOMIC_RELAXED);
    out->dropped = __atomic_load_n(&srv->st.dropped, __ATOMIC_RELAXED);
}
