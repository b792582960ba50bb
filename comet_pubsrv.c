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
 *   read     one recv() per readiness event, into the server's read buffer
 *            when the connection holds no unfinished command (the usual
 *            case: whole commands cost no memory of their own), else onto
 *            the end of its unfinished one; so that a client with a long
 *            pipeline cannot hold the loop for more than one buffer's
 *            worth of commands;
 *   process  parse and run every complete command while the unsent
 *            replies stay under max_output (replies of a whole pipeline go
 *            out in one send); what is left of the read (an unfinished
 *            command, or commands held back by the replies) is copied to
 *            the connection's own buffer, charged to max_input;
 *   flush    send() until EAGAIN, then wait for WRITE.
 * Reading stops while the replies are over the bound (the kernel's buffer
 * then fills and the client's writes block: back-pressure, not memory),
 * and starts again as soon as they drain below it.
 *
 * Deadlines.  A connection has one timer, armed for the nearest of the
 * deadlines its state has (conn_deadline): lingering, stuck, unfinished
 * command, idle.  Activity only moves deadlines later, so the timer is
 * re-armed only when a deadline comes nearer; when it fires early it
 * looks again and re-arms.
 *
 * The server's pools use an allocator of their own, so that connections
 * can come and go on the loop thread while other threads allocate from
 * the pool the server was created in.
 */

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/sockios.h>

#include <apr_allocator.h>
#include <apr_hash.h>

#include <apr_strings.h>

#include "comet_pubsrv_private.h"

#define PUBSRV_DEFAULT_CLIENTS   1024
#define PUBSRV_DEFAULT_OUTPUT    (256 * 1024)
#define PUBSRV_DEFAULT_INPUT     (32 * 1024 * 1024)
#define PUBSRV_DEFAULT_STUCK     apr_time_from_sec(30)
#define PUBSRV_DEFAULT_COMMAND   apr_time_from_sec(10)
/* Room for the arguments around the message in one command. */
#define PUBSRV_ARGS_ROOM         (64 * 1024)
/* Bytes one recv() may take. */
#define PUBSRV_READ_CHUNK        (16 * 1024)
/* Accepts per readiness event, so that a connection storm cannot keep the
 * loop from serving the connections it already has. */
#define PUBSRV_ACCEPT_BATCH      64
/* How long the listener rests when the process is out of descriptors
 * (level-triggered, it would otherwise report the same pending
 * connection in a tight loop). */
#define PUBSRV_ACCEPT_PAUSE      apr_time_from_msec(100)
/* While full: how often to look whether the other processes still have
 * room (then leave the connections to them) or are full too (then take
 * them, to refuse them). */
#define PUBSRV_FULL_RECHECK      apr_time_from_msec(100)
/* At most one warning per interval for what clients can cause at will. */
#define PUBSRV_LOG_INTERVAL      apr_time_from_sec(10)

static void conn_close(comet_pubconn_t *c);
static void listener_update(comet_pubsrv_t *srv);

/* ---- the processes that share the socket -------------------------------- */

typedef struct pubsrv_peer_t {
    apr_int32_t  pid;               /* 0: free                          */
    apr_uint32_t clients;
    apr_uint32_t max_clients;
} pubsrv_peer_t;

struct comet_pubsrv_peers_t {
    apr_uint32_t  n;
    pubsrv_peer_t peer[1];          /* [n] */
};

#define PEER_LOAD(x)     __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define PEER_STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)

apr_size_t comet_pubsrv_peers_size(apr_uint32_t n)
{
    return sizeof(comet_pubsrv_peers_t)
           + sizeof(pubsrv_peer_t) * (n ? n - 1 : 0);
}

comet_pubsrv_peers_t *comet_pubsrv_peers_format(void *mem, apr_uint32_t n)
{
    comet_pubsrv_peers_t *peers = mem;

    memset(mem, 0, comet_pubsrv_peers_size(n));
    peers->n = n;
    return peers;
}

static int peer_alive(apr_int32_t pid)
{
    /* Our peers run as our user: EPERM means the number now belongs to
     * someone else's process. */
    return pid > 0 && kill((pid_t)pid, 0) == 0;
}

/* Take a free record, or one whose process is gone.  Returns 0 when there
 * is none (the server then takes part without being seen). */
static int peer_claim(comet_pubsrv_t *srv)
{
    comet_pubsrv_peers_t *peers = srv->cfg.peers;
    apr_int32_t me = (apr_int32_t)getpid();
    apr_uint32_t i;

    for (i = 0; i < peers->n; i++) {
        pubsrv_peer_t *pe = &peers->peer[i];
        apr_int32_t pid = PEER_LOAD(pe->pid);

        if ((pid == 0 || !peer_alive(pid))
            && __atomic_compare_exchange_n(&pe->pid, &pid, me, 0,
                                           __ATOMIC_ACQ_REL,
                                           __ATOMIC_RELAXED)) {
            PEER_STORE(pe->max_clients, srv->cfg.max_clients);
            PEER_STORE(pe->clients, 0);
            srv->peer = i + 1;
            return 1;
        }
    }
    return 0;
}

static void peer_release(comet_pubsrv_t *srv)
{
    pubsrv_peer_t *pe;
    apr_int32_t me = (apr_int32_t)getpid();

    if (!srv->peer) {
        return;
    }
    pe = &srv->cfg.peers->peer[srv->peer - 1];
    srv->peer = 0;
    __atomic_compare_exchange_n(&pe->pid, &me, 0, 0, __ATOMIC_ACQ_REL,
                                __ATOMIC_RELAXED);
}

static void peer_publish_clients(comet_pubsrv_t *srv)
{
    if (srv->peer) {
        PEER_STORE(srv->cfg.peers->peer[srv->peer - 1].clients,
                   __atomic_load_n(&srv->st.clients, __ATOMIC_RELAXED));
    }
}

/* Has another live process of the server room for a connection? */
static int peers_have_room(comet_pubsrv_t *srv)
{
    comet_pubsrv_peers_t *peers = srv->cfg.peers;
    apr_uint32_t i;

    if (!peers) {
        return 0;
    }
    for (i = 0; i < peers->n; i++) {
        pubsrv_peer_t *pe = &peers->peer[i];
        apr_int32_t pid = PEER_LOAD(pe->pid);

        if (i + 1 != srv->peer && pid
            && PEER_LOAD(pe->clients) < PEER_LOAD(pe->max_clients)
            && peer_alive(pid)) {
            return 1;
        }
    }
    return 0;
}

/* ---- logging ------------------------------------------------------------ */

static void ratelog(comet_pubsrv_ratelog_t *rl, int level, const char *fmt,
                    ...) __attribute__((format(printf, 3, 4)));

static void ratelog(comet_pubsrv_ratelog_t *rl, int level, const char *fmt,
                    ...)
{
    apr_time_t now = comet_now_mono();
    char text[400];
    va_list ap;

    if (now < rl->next) {
        rl->skipped++;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (rl->skipped) {
        comet_log(level, 0, "%s (and %" APR_UINT64_T_FMT " more times in "
                  "the last %d s)", text, rl->skipped,
                  (int)apr_time_sec(PUBSRV_LOG_INTERVAL));
    }
    else {
        comet_log(level, 0, "%s", text);
    }
    rl->skipped = 0;
    rl->next = now + PUBSRV_LOG_INTERVAL;
}

/* ---- input buffers ------------------------------------------------------ */

/* Only the loop thread writes in_total; stats read it from any thread. */
static void in_total_set(comet_pubsrv_t *srv, apr_size_t v)
{
    __atomic_store_n(&srv->in_total, v, __ATOMIC_RELAXED);
}

static void in_free(comet_pubconn_t *c)
{
    in_total_set(c->srv, c->srv->in_total - c->in_cap);
    free(c->in);
    c->in = NULL;
    c->in_len = c->in_cap = 0;
}

/* Room for want bytes in c->in, within in_max and the server's max_input.
 * Returns APR_ENOSPC (max_input) or APR_ENOMEM. */
static apr_status_t in_reserve(comet_pubconn_t *c, apr_size_t want)
{
    comet_pubsrv_t *srv = c->srv;
    apr_size_t cap = c->in_cap * 2;
    char *in;

    if (want <= c->in_cap) {
        return APR_SUCCESS;
    }
    if (cap < want) {
        cap = want;
    }
    if (cap > srv->in_max) {
        cap = srv->in_max;
    }
    if (srv->in_total - c->in_cap + cap > srv->cfg.max_input) {
        /* Only what is needed, if that still fits. */
        cap = want;
        if (srv->in_total - c->in_cap + cap > srv->cfg.max_input) {
            return APR_ENOSPC;
        }
    }
    if (!(in = realloc(c->in, cap))) {
        return APR_ENOMEM;
    }
    in_total_set(srv, srv->in_total - c->in_cap + cap);
    c->in = in;
    c->in_cap = cap;
    return APR_SUCCESS;
}

/* The server ends the connection: data is its last reply (or none). */
static void conn_end(comet_pubconn_t *c)
{
    c->closing = 1;
    if (c->in) {
        in_free(c);
    }
}

/* A connection whose input would pass max_input: the one that asks last
 * is let go, the others keep their place. */
static void conn_over_input(comet_pubconn_t *c, apr_status_t rv)
{
    comet_pubsrv_t *srv = c->srv;

    if (rv == APR_ENOSPC) {
        comet_pubcmd_reply_err(c, "ERR too much unfinished input on the "
                               "publish socket (more than %" APR_SIZE_T_FMT
                               " bytes in all): try again later",
                               srv->cfg.max_input);
        ratelog(&srv->log_input, COMET_LOG_WARNING, "publish socket: "
                "client %" APR_UINT64_T_FMT " closed: the unfinished "
                "commands of all clients would pass %" APR_SIZE_T_FMT
                " bytes (CometPublishSocketMaxInput)", c->id,
                srv->cfg.max_input);
    }
    else {
        comet_log(COMET_LOG_ERR, rv, "publish socket: client %"
                  APR_UINT64_T_FMT ": no memory for its input", c->id);
        c->broken = 1;
    }
    COMET_PUBSRV_STAT_ADD(srv, dropped, 1);
    conn_end(c);
}

/* ---- deadlines ---------------------------------------------------------- */

/* When the connection is due for its nearest bound; 0: none. */
static apr_time_t conn_deadline(comet_pubconn_t *c)
{
    comet_pubsrv_t *srv = c->srv;

    if (c->lingering || (c->refused && !c->closing)) {
        return c->linger_end;
    }
    /* Waiting on the client to take its replies: over the bound, or with
     * a last reply before closing.  A client that takes nothing at all for
     * stuck_timeout is let go (every bit of progress counts). */
    if (c->waiting) {
        return c->progress + srv->cfg.stuck_timeout;
    }
    if (c->closing || c->npend) {
        /* Replies that wait on a publish come within its own bound. */
        return 0;
    }
    if (c->in_len) {
        return c->cmd_start + srv->cfg.command_timeout;
    }
    /* As in Redis, a subscriber is not idle: it waits for messages. */
    if (srv->cfg.idle_timeout > 0 && !COMET_PUBCONN_SUBSCRIBED(c)) {
        return c->active + srv->cfg.idle_timeout;
    }
    return 0;
}

/* Arm the timer for the nearest deadline.  Returns -1 when it cannot be
 * armed: the connection must then be closed (a bound nobody enforces is
 * no bound). */
static int conn_schedule(comet_pubconn_t *c)
{
    comet_pubsrv_t *srv = c->srv;
    apr_time_t when = conn_deadline(c);
    apr_status_t rv;

    if (!when) {
        comet_timer_cancel(srv->loop, &c->timer);
        return 0;
    }
    if (comet_timer_armed(&c->timer) && c->timer.when <= when) {
        return 0;           /* fires early, then looks again */
    }
    if ((rv = comet_timer_arm(srv->loop, &c->timer, when)) != APR_SUCCESS) {
        ratelog(&srv->log_timer, COMET_LOG_ERR, "publish socket: client %"
                APR_UINT64_T_FMT " closed: no timer for its deadlines (%d "
                "of them armed)", c->id,
                (int)comet_loop_timer_count(srv->loop));
        COMET_PUBSRV_STAT_ADD(srv, dropped, 1);
        return -1;
    }
    return 0;
}

/* ---- connections -------------------------------------------------------- */

/* Reply bytes sent but not yet read by the client (they sit in the
 * kernel); APR_SIZE_MAX when the socket cannot say. */
static apr_size_t conn_unread(comet_pubconn_t *c)
{
    int n;

    return ioctl(c->fd, SIOCOUTQ, &n) == 0 && n >= 0 ? (apr_size_t)n
                                                     : APR_SIZE_MAX;
}

/* Returns -1 when the connection is to be closed at once. */
static int set_interest(comet_pubconn_t *c)
{
    comet_pubsrv_t *srv = c->srv;
    int want = 0, waiting;

    if (c->lingering
        || (!c->closing && !c->eof && !c->awaiting
            && c->out->len < srv->cfg.max_output)) {
        want |= COMET_LOOP_READ;
    }
    if (c->out->len) {
        want |= COMET_LOOP_WRITE;
    }
    comet_loop_io_modify(srv->loop, &c->io, want);
    /* The stuck clock starts when the connection begins to wait on the
     * client; every reply byte taken restarts it (conn_flush). */
    waiting = c->out->len && (c->closing
                              || c->out->len >= srv->cfg.max_output);
    if (waiting && !c->waiting) {
        c->progress = comet_now_mono();
        c->unread = conn_unread(c);
    }
    c->waiting = waiting;
    return conn_schedule(c);
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
    if (progress) {
        c->progress = comet_now_mono();
        if (c->waiting) {
            c->unread = conn_unread(c);
        }
    }
    if (c->out->len == 0 && c->out->cap > srv->cfg.max_output) {
        /* One large reply should not cost the connection's memory for
         * the rest of its life. */
        comet_buf_release(c->out);
    }
    return 0;
}

/* Run the complete commands in data[0, len) while the replies stay under
 * max_output.  Returns the bytes used; *blocked is set when it stopped
 * because of the replies (commands may be left). */
static apr_size_t conn_run(comet_pubconn_t *c, char *data, apr_size_t len,
                           int *blocked)
{
    comet_pubsrv_t *srv = c->srv;
    apr_size_t start = 0, consumed;
    comet_resp_cmd_t cmd;
    apr_status_t rv;
    int ran = 0;

    *blocked = 0;
    while (!c->closing && !c->broken) {
        if (c->out->len >= srv->cfg.max_output) {
            *blocked = 1;
            break;
        }
        if (c->npend >= COMET_PUBSRV_PIPELINE) {
            /* Read on once a publish is answered. */
            c->awaiting = 1;
            break;
        }
        rv = comet_resp_parse(c->parser, data + start, len - start,
                              &consumed, &cmd);
        start += consumed;
        if (rv == APR_SUCCESS) {
            comet_pubcmd_execute(c, &cmd);
            ran = 1;
            /* A long pipeline must not keep this process's subscribers
             * from reading: a channel's buffer may be short. */
            if (++srv->since_poll >= COMET_PUBSRV_POLL_EVERY) {
                srv->since_poll = 0;
                comet_pubsub_poll(srv);
            }
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
        comet_log(rv == COMET_ETOOBIG ? COMET_LOG_WARNING : COMET_LOG_INFO,
                  0, "publish socket: client %" APR_UINT64_T_FMT " closed: "
                  "%s", c->id, rv == COMET_ETOOBIG
                  ? "message larger than CometMaxMessageSize"
                  : comet_resp_parser_error(c->parser));
        COMET_PUBSRV_STAT_ADD(srv, dropped, 1);
        conn_end(c);
        return len;
    }
    if (ran) {
        c->active = comet_now_mono();
    }
    if (start < len && (ran || !c->cmd_start)) {
        /* A command begins in this read. */
        c->cmd_start = comet_now_mono();
    }
    else if (start == len) {
        c->cmd_start = 0;
    }
    return start;
}

/* Run the commands in the connection's own buffer. */
static void conn_run_own(comet_pubconn_t *c, int *blocked)
{
    apr_size_t used;

    *blocked = 0;
    if (!c->in_len) {
        return;
    }
    used = conn_run(c, c->in, c->in_len, blocked);
    /* An error may have dropped the input already. */
    if (c->in_len) {
        memmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= used;
    }
}

/* Run what the connection has: first the fresh bytes of a read into the
 * server's buffer (fresh, len), then its own buffer. */
static void conn_service(comet_pubconn_t *c, char *fresh, apr_size_t len)
{
    comet_pubsrv_t *srv = c->srv;
    int blocked = 0;

    if (len && !c->closing) {
        apr_size_t used = conn_run(c, fresh, len, &blocked);
        apr_status_t rv;

        /* The server's buffer is the next read's: keep the rest. */
        if (used < len && !c->closing) {
            if ((rv = in_reserve(c, len - used)) != APR_SUCCESS) {
                conn_over_input(c, rv);
            }
            else {
                memcpy(c->in, fresh + used, len - used);
                c->in_len = len - used;
            }
        }
    }
    else if (c->in_len && !c->closing) {
        conn_run_own(c, &blocked);
    }
    for (;;) {
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
        if (c->lagging && !c->closing && !c->dropped
            && c->out->len < srv->cfg.max_output) {
            /* Subscriptions reading their backlog take turns with the
             * socket: a slice while it has room. */
            apr_size_t before = c->out->len;

            comet_pubsub_catch_up(c);
            if (c->out->len > before || c->broken) {
                continue;
            }
        }
        if (!blocked || c->out->len >= srv->cfg.max_output) {
            break;
        }
        /* The socket took enough of the replies: run more commands. */
        conn_run_own(c, &blocked);
    }
    if (c->in && c->in_len == 0) {
        /* No unfinished command: its memory goes back. */
        in_free(c);
    }
    if (c->eof && !c->closing && !c->awaiting && !c->npend) {
        /* Every complete command has run; nothing more will come. */
        c->closing = 1;
    }
    if (c->closing && c->out->len == 0 && !c->lingering && !c->npend) {
        if (c->eof) {
            conn_close(c);
            return;
        }
        /* Tell the client that nothing more comes, and read what it still
         * sends (a command being written when the error was decided)
         * until it closes: closing now would cut it off before it reads
         * the reason (a broken pipe, or a reset that discards the reply). */
        shutdown(c->fd, SHUT_WR);
        c->lingering = 1;
        c->linger_end = comet_now_mono() + COMET_PUBSRV_LINGER;
    }
    if (set_interest(c) < 0) {
        conn_close(c);
    }
}

void comet_pubsrv_conn_kick(comet_pubconn_t *c)
{
    if (c->dropped) {
        conn_close(c);
        return;
    }
    if (!c->lingering) {
        conn_service(c, NULL, 0);
    }
}

/* Throw away what a lingering connection sends.  Returns -1 when it is
 * done (closed, an error, or more than it may send). */
static int conn_drain(comet_pubconn_t *c)
{
    ssize_t n = recv(c->fd, c->srv->rbuf, PUBSRV_READ_CHUNK, 0);

    if (n > 0) {
        c->drained += (apr_size_t)n;
        return c->drained > COMET_PUBSRV_LINGER_BYTES ? -1 : 0;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK
                  || errno == EINTR)) {
        return 0;
    }
    return -1;
}

/* One recv().  Returns the bytes read into the server's buffer (0 when
 * there were none, or they went to the connection's own buffer), or -1
 * when the connection is to be closed at once. */
static ssize_t conn_read(comet_pubconn_t *c)
{
    comet_pubsrv_t *srv = c->srv;
    apr_status_t rv;
    ssize_t n;

    if (!c->in_len) {
        n = recv(c->fd, srv->rbuf, PUBSRV_READ_CHUNK, 0);
        if (n == 0) {
            c->eof = 1;
        }
        else if (n < 0) {
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR
                   ? 0 : -1;
        }
        return n;
    }
    if (c->in_len == srv->in_max) {
        /* A whole buffer and still no complete command. */
        comet_pubcmd_reply_err(c, "ERR Protocol error: request larger than "
                               "%" APR_SIZE_T_FMT " bytes", srv->in_max);
        comet_log(COMET_LOG_WARNING, 0, "publish socket: client %"
                  APR_UINT64_T_FMT " closed: request too large", c->id);
        COMET_PUBSRV_STAT_ADD(srv, dropped, 1);
        conn_end(c);
        return 0;
    }
    rv = in_reserve(c, c->in_len + (c->in_len + PUBSRV_READ_CHUNK
                                    <= srv->in_max ? PUBSRV_READ_CHUNK
                                                   : srv->in_max
                                                     - c->in_len));
    if (rv != APR_SUCCESS) {
        conn_over_input(c, rv);
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

/* Tell a refused connection why, then close it in order. */
static void conn_refuse(comet_pubconn_t *c)
{
    comet_pubcmd_reply_err(c, "ERR max number of clients reached");
    conn_end(c);
    conn_service(c, NULL, 0);
}

static void conn_io(comet_loop_t *loop, int fd, int events, void *baton)
{
    comet_pubconn_t *c = baton;
    int reading = !c->closing && !c->eof && !c->awaiting
                  && c->out->len < c->srv->cfg.max_output;
    ssize_t fresh = 0;

    if (events & COMET_LOOP_ERROR) {
        conn_close(c);
        return;
    }
    if (c->lingering) {
        if ((events & (COMET_LOOP_READ | COMET_LOOP_HUP))
            && conn_drain(c) < 0) {
            conn_close(c);
        }
        return;
    }
    if (c->refused && !c->closing) {
        /* Its first command has come: the answer to it is the refusal
         * (as a reply, not as a greeting that a client library would
         * take for a broken connection). */
        if (conn_drain(c) < 0) {
            conn_close(c);
        }
        else {
            conn_refuse(c);
        }
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
        else if ((fresh = conn_read(c)) < 0) {
            conn_close(c);
            return;
        }
    }
    conn_service(c, c->srv->rbuf, (apr_size_t)fresh);
}

static void conn_timer(comet_loop_t *loop, comet_timer_t *timer, void *baton)
{
    comet_pubconn_t *c = baton;
    comet_pubsrv_t *srv = c->srv;
    apr_time_t when = conn_deadline(c);

    if (!when) {
        return;
    }
    if (when > comet_now_mono()) {
        if (conn_schedule(c) < 0) {
            conn_close(c);
        }
        return;
    }
    if (c->lingering) {
        conn_close(c);
        return;
    }
    if (c->refused && !c->closing) {
        /* It sent nothing: tell it anyway. */
        conn_refuse(c);
        return;
    }
    if (c->waiting) {
        apr_size_t unread = conn_unread(c);

        /* We could send nothing, but the client is reading what the
         * kernel holds for it (a socket is writable again only once most
         * of that is read): that is progress too. */
        if (unread < c->unread) {
            c->unread = unread;
            c->progress = comet_now_mono();
            if (conn_schedule(c) < 0) {
                conn_close(c);
            }
            return;
        }
        comet_log(COMET_LOG_INFO, 0, "publish socket: client %"
                  APR_UINT64_T_FMT " closed: it took none of its %"
                  APR_SIZE_T_FMT " bytes of replies for %" APR_TIME_T_FMT
                  " s", c->id, c->out->len,
                  apr_time_sec(srv->cfg.stuck_timeout));
        COMET_PUBSRV_STAT_ADD(srv, dropped, 1);
        conn_close(c);
        return;
    }
    COMET_PUBSRV_STAT_ADD(srv, timeouts, 1);
    if (c->in_len) {
        /* A half-sent command (a bulk that stopped coming): say why. */
        comet_log(COMET_LOG_INFO, 0, "publish socket: client %"
                  APR_UINT64_T_FMT " closed: %" APR_SIZE_T_FMT " bytes of "
                  "a command and no more for %" APR_TIME_T_FMT " ms "
                  "(CometPublishSocketCommandTimeout)", c->id, c->in_len,
                  apr_time_as_msec(srv->cfg.command_timeout));
        comet_pubcmd_reply_err(c, "ERR command not complete after %"
                               APR_TIME_T_FMT " ms: closing the connection",
                               apr_time_as_msec(srv->cfg.command_timeout));
        conn_end(c);
        conn_service(c, NULL, 0);
        return;
    }
    /* Idle: closed without a word, as Redis closes idle clients. */
    comet_log(COMET_LOG_DEBUG, 0, "publish socket: client %" APR_UINT64_T_FMT
              " closed: idle for %" APR_TIME_T_FMT " s", c->id,
              apr_time_sec(srv->cfg.idle_timeout));
    conn_close(c);
}

static apr_status_t conn_cleanup(void *data)
{
    comet_pubconn_t *c = data;
    comet_pubsrv_t *srv = c->srv;

    comet_pubsub_conn_end(c);
    if (c->watched) {
        comet_loop_io_remove(srv->loop, &c->io);
    }
    comet_timer_cancel(srv->loop, &c->timer);
    close(c->fd);
    in_free(c);
    while (c->pend_head) {
        comet_pubsrv_pending_t *p = c->pend_head;

        c->pend_head = p->next;
        if (p->done) {
            free(p->raw);
            free(p);
        }
        else {
            /* Freed when its publish is done. */
            p->conn = NULL;
        }
    }
    if (c->prev) {
        c->prev->next = c->next;
    }
    else {
        srv->conns = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    if (c->refused) {
        srv->refusing--;
    }
    else {
        __atomic_sub_fetch(&srv->st.clients, 1, __ATOMIC_RELAXED);
        peer_publish_clients(srv);
    }
    return APR_SUCCESS;
}

static void conn_close(comet_pubconn_t *c)
{
    comet_pubsrv_t *srv = c->srv;
    int was_client = !c->refused;

    apr_pool_destroy(c->pool);
    if (was_client) {
        listener_update(srv);
    }
}

/* A connection: a client, or (refused) one that only gets told there is
 * no room. */
static apr_status_t conn_open(comet_pubsrv_t *srv, int fd, int refused)
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
    c->since = c->active = c->progress = comet_now_mono();
    c->refused = refused;
    c->sub_names = apr_hash_make(p);
    comet_timer_init(&c->timer, conn_timer, c);
    c->next = srv->conns;
    if (c->next) {
        c->next->prev = c;
    }
    srv->conns = c;
    if (refused) {
        srv->refusing++;
    }
    else {
        __atomic_add_fetch(&srv->st.clients, 1, __ATOMIC_RELAXED);
        peer_publish_clients(srv);
    }
    apr_pool_cleanup_register(p, c, conn_cleanup, apr_pool_cleanup_null);

    if ((rv = comet_resp_parser_create(&c->parser, &srv->limits, p))
        != APR_SUCCESS
        || (rv = comet_buf_create(&c->out, p, 0, srv->cfg.max_output
                                                 + COMET_PUBSRV_REPLY_MAX))
           != APR_SUCCESS
        || (rv = comet_loop_io_add(srv->loop, &c->io, fd, COMET_LOOP_READ,
                                   conn_io, c)) != APR_SUCCESS) {
        conn_close(c);
        return rv;
    }
    c->watched = 1;
    if (refused) {
        /* Told when its first command comes (or after the linger time). */
        c->linger_end = c->since + COMET_PUBSRV_LINGER;
        if (conn_schedule(c) < 0) {
            conn_close(c);
        }
        return APR_SUCCESS;
    }
    COMET_PUBSRV_STAT_ADD(srv, accepted, 1);
    comet_log(COMET_LOG_DEBUG, 0, "publish socket: client %" APR_UINT64_T_FMT
              " connected", c->id);
    if (set_interest(c) < 0) {
        conn_close(c);
        return APR_ENOSPC;
    }
    return APR_SUCCESS;
}

/* ---- the listener ------------------------------------------------------- */

static int srv_full(comet_pubsrv_t *srv)
{
    return __atomic_load_n(&srv->st.clients, __ATOMIC_RELAXED)
           >= srv->cfg.max_clients;
}

/* A connection no process has room for: told so, in order, then closed. */
static void refuse_client(comet_pubsrv_t *srv, int fd)
{
    static const char msg[] = "-ERR max number of clients reached\r\n";

    COMET_PUBSRV_STAT_ADD(srv, refused, 1);
    ratelog(&srv->log_refused, COMET_LOG_WARNING, "publish socket: "
            "connection refused: max number of clients reached (%u per "
            "process, CometPublishSocketMaxClients)%s", srv->cfg.max_clients,
            srv->cfg.peers ? " in every process" : "");
    if (srv->refusing < COMET_PUBSRV_REFUSING_MAX) {
        conn_open(srv, fd, 1);
        return;
    }
    /* Too many being refused already: best effort, a new socket has room
     * for a line. */
    if (send(fd, msg, sizeof(msg) - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
        /* nothing more to tell it */
    }
    close(fd);
}

/* Watch the listener or not: a server with room accepts; a full one
 * leaves new connections to a process with room, and takes them (to
 * refuse them) only when there is none.  While full it looks again every
 * PUBSRV_FULL_RECHECK. */
static void listener_update(comet_pubsrv_t *srv)
{
    int accept = 1;

    if (!srv->listening || srv->paused) {
        return;
    }
    if (srv_full(srv)) {
        accept = !peers_have_room(srv);
        if (!comet_timer_armed(&srv->recheck)
            && comet_timer_arm_in(srv->loop, &srv->recheck,
                                  PUBSRV_FULL_RECHECK) != APR_SUCCESS) {
            /* Without a look later, refusing is the safe side: a client
             * waiting unseen in the backlog would hang. */
            accept = 1;
        }
    }
    else if (comet_timer_armed(&srv->recheck)) {
        comet_timer_cancel(srv->loop, &srv->recheck);
    }
    if (accept != srv->accepting
        && comet_loop_io_modify(srv->loop, &srv->lio,
                                accept ? COMET_LOOP_READ : 0)
           == APR_SUCCESS) {
        srv->accepting = accept;
    }
}

static void listener_recheck(comet_loop_t *loop, comet_timer_t *timer,
                             void *baton)
{
    listener_update(baton);
}

static void listener_resume(comet_loop_t *loop, comet_timer_t *timer,
                            void *baton)
{
    comet_pubsrv_t *srv = baton;

    srv->paused = 0;
    srv->accepting = -1;
    listener_update(srv);
}

static void listener_io(comet_loop_t *loop, int fd, int events, void *baton)
{
    comet_pubsrv_t *srv = baton;
    int i;

    for (i = 0; i < PUBSRV_ACCEPT_BATCH; i++) {
        int cfd;

        if (srv_full(srv) && peers_have_room(srv)) {
            /* Leave the rest to a process that can serve them. */
            listener_update(srv);
            return;
        }
        cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
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
            if (comet_timer_arm_in(loop, &srv->resume, PUBSRV_ACCEPT_PAUSE)
                == APR_SUCCESS) {
                srv->paused = 1;
                comet_loop_io_modify(loop, &srv->lio, 0);
            }
            return;
        }
        if (srv_full(srv)) {
            refuse_client(srv, cfd);
            continue;
        }
        conn_open(srv, cfd, 0);
        if (srv_full(srv)) {
            listener_update(srv);
        }
    }
}

/* ---- the server --------------------------------------------------------- */

/* ---- replies that wait on a publish ------------------------------------ */

comet_pubsrv_pending_t *comet_pubsrv_pending_add(comet_pubconn_t *c)
{
    comet_pubsrv_pending_t *p = calloc(1, sizeof(*p));

    if (!p) {
        return NULL;
    }
    p->srv = c->srv;
    p->conn = c;
    if (c->pend_tail) {
        c->pend_tail->next = p;
    }
    else {
        c->pend_head = p;
    }
    c->pend_tail = p;
    c->npend++;
    return p;
}

/* Write the replies at the head of c's that are known. */
static void conn_settle(comet_pubconn_t *c)
{
    while (c->pend_head && c->pend_head->done) {
        comet_pubsrv_pending_t *p = c->pend_head;

        c->pend_head = p->next;
        if (!c->pend_head) {
            c->pend_tail = NULL;
        }
        c->npend--;
        comet_pubcmd_reply_pending(c, p);
        free(p->raw);
        free(p);
    }
}

void comet_pubsrv_pending_done(comet_pubsrv_pending_t *p)
{
    p->done = 1;
    if (p->conn) {
        conn_settle(p->conn);
    }
}

void comet_pubsrv_published(comet_pubsrv_pending_t *p, apr_status_t rv,
                            apr_int64_t receivers, const char *error)
{
    comet_pubsrv_t *srv = p->srv;

    p->rv = rv;
    p->receivers = receivers;
    if (rv != APR_SUCCESS && error != p->error) {
        apr_cpystrn(p->error, error ? error : "ERR not published",
                    sizeof(p->error));
    }
    apr_thread_mutex_lock(srv->done_mu);
    p->qnext = srv->done_q;
    srv->done_q = p;
    apr_thread_mutex_unlock(srv->done_mu);
    comet_loop_wake(srv->loop);
}

/* The loop's wake: publishes finished by other threads. */
static void srv_wake(comet_loop_t *loop, void *baton)
{
    comet_pubsrv_t *srv = baton;
    comet_pubsrv_pending_t *p, *next;
    comet_pubconn_t *list = NULL, *c;

    apr_thread_mutex_lock(srv->done_mu);
    p = srv->done_q;
    srv->done_q = NULL;
    apr_thread_mutex_unlock(srv->done_mu);
    for (; p; p = next) {
        next = p->qnext;
        if (!p->conn) {
            free(p->raw);
            free(p);
            continue;
        }
        p->done = 1;
        if (!p->conn->settling) {
            p->conn->settling = 1;
            p->conn->settle_next = list;
            list = p->conn;
        }
    }
    while ((c = list) != NULL) {
        list = c->settle_next;
        c->settling = 0;
        conn_settle(c);
        if (c->awaiting && c->npend < COMET_PUBSRV_PIPELINE) {
            c->awaiting = 0;
        }
        conn_service(c, NULL, 0);
    }
}

static apr_status_t srv_cleanup(void *data)
{
    comet_pubsrv_t *srv = data;

    /* Whoever finishes publishes has finished them all by now (the
     * module stops the Redis thread first); the connections are gone. */
    while (srv->done_q) {
        comet_pubsrv_pending_t *p = srv->done_q;

        srv->done_q = p->qnext;
        free(p->raw);
        free(p);
    }

    /* The connections' pools (children of this one) are gone already. */
    if (srv->listening) {
        comet_loop_io_remove(srv->loop, &srv->lio);
        srv->listening = 0;
    }
    comet_timer_cancel(srv->loop, &srv->resume);
    comet_timer_cancel(srv->loop, &srv->recheck);
    peer_release(srv);
    return APR_SUCCESS;
}

apr_size_t comet_pubsrv_command_max(apr_size_t max_message)
{
    return max_message + COMET_PUBSRV_BULK_SLACK + PUBSRV_ARGS_ROOM;
}

apr_size_t comet_pubsrv_timers(apr_uint32_t max_clients)
{
    /* One per client, one per refused connection being closed, the
     * listener's two, the subscribers' flush. */
    return (max_clients ? max_clients : PUBSRV_DEFAULT_CLIENTS)
           + COMET_PUBSRV_REFUSING_MAX + 3;
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
    if (srv->cfg.command_timeout <= 0) {
        srv->cfg.command_timeout = PUBSRV_DEFAULT_COMMAND;
    }
    comet_resp_limits_default(&srv->limits);
    srv->limits.max_bulk = srv->cfg.max_message + COMET_PUBSRV_BULK_SLACK;
    srv->in_max = comet_pubsrv_command_max(srv->cfg.max_message);
    if (!srv->cfg.max_input) {
        srv->cfg.max_input = PUBSRV_DEFAULT_INPUT > 4 * srv->in_max
                             ? PUBSRV_DEFAULT_INPUT : 4 * srv->in_max;
    }
    else if (srv->cfg.max_input < srv->in_max) {
        /* The largest command must fit. */
        srv->cfg.max_input = srv->in_max;
    }
    srv->rbuf = apr_palloc(pool, PUBSRV_READ_CHUNK);
    if ((rv = apr_pool_create(&srv->scratch, pool)) != APR_SUCCESS) {
        return rv;
    }
    if (srv->cfg.publish) {
        if ((rv = apr_thread_mutex_create(&srv->done_mu,
                                          APR_THREAD_MUTEX_DEFAULT, pool))
            != APR_SUCCESS
            || (rv = comet_buf_create(&srv->capture, pool, 0,
                                      COMET_PUBSRV_REPLY_MAX))
               != APR_SUCCESS) {
            return rv;
        }
        comet_loop_on_wake(loop, srv_wake, srv);
    }
    comet_timer_init(&srv->resume, listener_resume, srv);
    comet_timer_init(&srv->recheck, listener_recheck, srv);
    apr_pool_cleanup_register(pool, srv, srv_cleanup,
                              apr_pool_cleanup_null);
    if ((rv = comet_pubsub_init(srv)) != APR_SUCCESS) {
        return rv;
    }
    if (srv->cfg.peers && !peer_claim(srv)) {
        comet_log(COMET_LOG_WARNING, 0, "publish socket: no record left for "
                  "process %ld among the %u of the socket's processes: "
                  "the others cannot see when it has room",
                  (long)getpid(), srv->cfg.peers->n);
    }
    if (cfg->listen_fd >= 0) {
        if ((rv = comet_loop_io_add(loop, &srv->lio, cfg->listen_fd,
                                    COMET_LOOP_READ, listener_io, srv))
            != APR_SUCCESS) {
            return rv;
        }
        srv->listening = 1;
        srv->accepting = 1;
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
    if (srv_full(srv)) {
        refuse_client(srv, fd);
        return APR_EAGAIN;
    }
    return conn_open(srv, fd, 0);
}

void comet_pubsrv_stats(comet_pubsrv_t *srv, comet_pubsrv_stats_t *out)
{
    out->clients = __atomic_load_n(&srv->st.clients, __ATOMIC_RELAXED);
    out->accepted = __atomic_load_n(&srv->st.accepted, __ATOMIC_RELAXED);
    out->commands = __atomic_load_n(&srv->st.commands, __ATOMIC_RELAXED);
    out->publishes = __atomic_load_n(&srv->st.publishes, __ATOMIC_RELAXED);
    out->errors = __atomic_load_n(&srv->st.errors, __ATOMIC_RELAXED);
    out->dropped = __atomic_load_n(&srv->st.dropped, __ATOMIC_RELAXED);
    out->timeouts = __atomic_load_n(&srv->st.timeouts, __ATOMIC_RELAXED);
    out->refused = __atomic_load_n(&srv->st.refused, __ATOMIC_RELAXED);
    out->input_bytes = __atomic_load_n(&srv->in_total, __ATOMIC_RELAXED);
    out->subscribers = __atomic_load_n(&srv->st.subscribers,
                                       __ATOMIC_RELAXED);
    out->channels = __atomic_load_n(&srv->st.channels, __ATOMIC_RELAXED);
    out->patterns = __atomic_load_n(&srv->st.patterns, __ATOMIC_RELAXED);
    out->pushes = __atomic_load_n(&srv->st.pushes, __ATOMIC_RELAXED);
    out->dropped_slow = __atomic_load_n(&srv->st.dropped_slow,
                                        __ATOMIC_RELAXED);
    out->missed = __atomic_load_n(&srv->st.missed, __ATOMIC_RELAXED);
}
