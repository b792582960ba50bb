/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_susp.c -- suspended subscribers: streams whose bytes must pass
 * httpd's filters (TLS, HTTP/1.0, a transforming filter) without keeping a
 * worker thread while the client waits.
 *
 * The handler sends the head and what is due, hands the subscriber to the
 * hub as a sink and returns SUSPENDED: the event MPM forgets the
 * connection, which is then ours to write to, to watch, to end and to
 * free.  What the hub hands over (on the hub thread) is written through
 * r->output_filters by MPM callbacks (t = 0 timed callbacks on MPM
 * workers), one at a time per subscriber.
 *
 *   writes   never block: a connection filter just above the core output
 *            filter turns each FLUSH into a non-blocking push of what the
 *            core holds.  Bytes the socket does not take stay in the core
 *            (at most one slice) and the rest waits in our buffer; the
 *            hub thread watches the socket for room and calls back.  The
 *            hub decides how much we hold (it drops a subscriber holding
 *            more than CometMaxPendingBytes before a write); when it asks
 *            (a backlog, a subscriber catching up), we tell it once all
 *            has left (comet_hub_room) and it hands over the next part.
 *   watching the hub thread watches the raw socket, edge-triggered, for
 *            the peer's close (RDHUP/HUP/ERR) only: under TLS its bytes are
 *            mod_ssl's.  A close cancels the subscriber.
 *   the gate after the suspend_connection hooks have run, the suspending
 *            worker still writes into the connection's state (in c->pool).
 *            Nothing touches the connection until that worker has left the
 *            MPM's code: our suspend hook notes the worker's scoreboard
 *            slot (status SERVER_BUSY_WRITE) and a per-thread counter; the
 *            gate opens when the worker's next scoreboard update changes
 *            the status (it always does before it takes other work) or
 *            the counter moved (our pre_connection and resume_connection
 *            hooks bump it: the thread serves another connection).  A
 *            callback that finds the gate shut registers itself again.
 *   ending   last bytes and a non-blocking wait for them to leave (5 s at
 *            most from the hub's end of the stream), the hub-thread
 *            watcher removed, then: EOR (access log,
 *            r->pool), lingering close start (last TLS record, FIN), the
 *            connection state set back to SUSPENDED (the MPM's counters),
 *            and c->pool destroyed (socket closed).
 *   stopping graceful: the hub ends every subscriber; callbacks still run
 *            while the MPM waits for connections to end; what cannot leave
 *            at once is cut.  Ungraceful: workers are going, callbacks may
 *            not run; the stopping thread ends every idle subscriber
 *            itself (last bytes without waiting), the rest goes with the
 *            process.
 *
 * Suspended connections still count against the event MPM's connection
 * limit per process; at most (ThreadsPerChild - 1) x
 * AsyncRequestWorkerFactor are suspended per process, so that the rest of
 * the site is always served.
 *
 * Threads (see event_bridge.h): the handler's side on a request thread,
 * the connection's side in MPM callbacks, the sink, the watcher and the
 * tasks on the hub thread, stopping on the thread that runs
 * child_stopping.  One mutex (susp_mu) guards every record's state; a
 * function whose comment says "Under susp_mu" is called with it held.
 * Outside it a record is touched by one thread at a time (the one whose
 * callback is scheduled: sched).
 *
 * Names: the file's statics start with susp_ (globals susp_g_, the mutex
 * susp_mu), its constants with SUSP_.
 */

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <apr_atomic.h>
#include <apr_strings.h>
#include <httpd.h>
#include <http_config.h>
#include <http_connection.h>
#include <http_core.h>
#include <http_log.h>
#include <http_protocol.h>
#include <http_request.h>
#include <ap_mpm.h>
#include <mpm_common.h>
#include <scoreboard.h>
#include <util_filter.h>

#include "mod_comet.h"
#include "mod_comet_susp.h"
#include "mod_comet_keep.h"
#include "mod_comet_status.h"
#include "comet_loop.h"

APLOG_USE_MODULE(comet);

/* Bytes handed to the filters per pass: with what the core may already
 * hold, well under its blocking threshold (FlushMaxThreshold, 64 KB). */
#define SUSP_SLICE      (16 * 1024)
/* Actions per callback before it gives its worker back. */
#define SUSP_STEPS      32
/* How long the last bytes may take to leave. */
#define SUSP_LINGER     apr_time_from_sec(5)
/* Our buffer of unsent bytes is freed once empty when it grew past this. */
#define SUSP_KEEP       (256 * 1024)

/* See "the gate" above. */
enum { SUSP_GATE_NONE, SUSP_GATE_SET, SUSP_GATE_OPEN };
/* The hub-thread watcher. */
enum { SUSP_W_NONE, SUSP_W_ACTIVE, SUSP_W_GONE };
/* The response. */
enum { SUSP_P_STREAM, SUSP_P_TAIL, SUSP_P_CLOSE, SUSP_P_DONE };

typedef struct susp_t susp_t;
struct susp_t {
    susp_t             *prev, *next;    /* live records                  */
    request_rec        *r;
    conn_rec           *c;
    const char         *channel;        /* the first, in r->pool (logs)  */
    int                 fd;             /* c's socket: watched only      */
    comet_hub_t        *hub;
    comet_hub_sub_t    *handle;         /* until the sink's close        */
    apr_bucket_brigade *bb;             /* r->pool: request-level passes */
    apr_bucket_brigade *cbb;            /* c->pool: connection flushes   */
    int                 pslot, tslot;   /* the suspending worker         */
    apr_uint32_t        epoch0;

    /* Bytes from the hub not yet passed to the filters: out[off, len). */
    char               *out;
    apr_size_t          off, len, cap, max;

    unsigned            gate:2, watch:2, phase:2;
    unsigned            last:1;         /* the hub ended the stream      */
    unsigned            closed:1;       /* the hub is done with us       */
    unsigned            sched:1;        /* a callback is due or running  */
    unsigned            abort:1;        /* end without the stream's end  */
    unsigned            client_gone:1;
    unsigned            cancelled:1;
    unsigned            pending:1;      /* the core holds unsent bytes   */
    unsigned            notify:1;       /* the hub waits for all to leave */
    unsigned            writable:1;     /* room seen since               */
    unsigned            ww:1;           /* waiting for room              */
    unsigned            retiring:1;
    unsigned            linger_posted:1, linger_armed:1, linger_over:1;
    int                 tasks;          /* tasks posted, not yet run     */
    comet_loop_io_t     io;
    comet_timer_t       linger;
    comet_hub_task_t    t_add, t_ww, t_linger, t_retire;
};

static pthread_mutex_t susp_mu = PTHREAD_MUTEX_INITIALIZER;
static susp_t *susp_g_list;
static int susp_g_no_callbacks;     /* ungraceful stop: see above         */

/* Per-process numbers. */
static apr_uint32_t susp_g_limit;   /* set in post_config                 */
static volatile apr_uint32_t susp_g_refusal_logged;
/* (The numbers are in comet_status_live().) */

static ap_filter_rec_t *susp_g_nb_filter;

/* One counter per worker thread slot of this process (the gate). */
static volatile apr_uint32_t *susp_g_epochs;
static int susp_g_threads;

/* ---- where a worker thread sits in the scoreboard ------------------------------------ */

static __thread int susp_t_tslot = -1;  /* -1: not found (yet)            */
static __thread int susp_t_pslot = -1;

/* This thread's worker slot, found once (by its pid and thread id; the
 * parent writes the process slot's pid right after the fork, so a miss
 * is not remembered). */
static int susp_my_worker(int *pslot, int *tslot)
{
    if (susp_t_tslot < 0) {
        int servers = 0, threads = 0;
        pid_t pid = getpid();
        apr_os_thread_t me = apr_os_thread_current();

        ap_mpm_query(AP_MPMQ_HARD_LIMIT_DAEMONS, &servers);
        ap_mpm_query(AP_MPMQ_HARD_LIMIT_THREADS, &threads);
        for (int p = 0; ap_scoreboard_image && p < servers
                        && susp_t_tslot < 0; p++) {
            if (ap_scoreboard_image->parent[p].pid != pid) {
                continue;
            }
            for (int t = 0; t < threads && t < susp_g_threads; t++) {
                worker_score *ws = &ap_scoreboard_image->servers[p][t];

                if (ws->pid == pid && apr_os_thread_equal(ws->tid, me)) {
                    susp_t_pslot = p;
                    susp_t_tslot = t;
                    break;
                }
            }
        }
    }
    if (susp_t_tslot < 0) {
        return 0;
    }
    *pslot = susp_t_pslot;
    *tslot = susp_t_tslot;
    return 1;
}

/* This thread has left whatever connection it served before. */
static void susp_moved_on(void)
{
    int p, t;

    if (susp_g_epochs && susp_my_worker(&p, &t)) {
        apr_atomic_inc32(&susp_g_epochs[t]);
    }
}

/* Whether the suspending worker has left the MPM's code.  Under susp_mu. */
static int susp_gate_passed(susp_t *s)
{
    worker_score *ws = &ap_scoreboard_image->servers[s->pslot][s->tslot];
    int passed = __atomic_load_n(&ws->status, __ATOMIC_ACQUIRE)
                 != SERVER_BUSY_WRITE
                 || apr_atomic_read32(&susp_g_epochs[s->tslot]) != s->epoch0;

    /* What the worker wrote before its update is visible after it. */
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return passed;
}

/* ---- the non-blocking connection filter ---------------------------------------------- */

/* The core output filter, last of the connection's. */
static apr_status_t susp_core_push(conn_rec *c)
{
    ap_filter_t *f = c->output_filters;

    while (f->next) {
        f = f->next;
    }
    /* With no brigade it writes what it holds, without waiting. */
    return f->frec->filter_func.out_func(f, NULL);
}

static apr_status_t susp_nb_out_filter(ap_filter_t *f, apr_bucket_brigade *bb)
{
    apr_bucket *e, *next;
    apr_status_t rv = APR_SUCCESS;
    int flush = 0;

    for (e = APR_BRIGADE_FIRST(bb); e != APR_BRIGADE_SENTINEL(bb); e = next) {
        next = APR_BUCKET_NEXT(e);
        if (APR_BUCKET_IS_FLUSH(e)) {
            flush = 1;
            apr_bucket_delete(e);
        }
    }
    if (!APR_BRIGADE_EMPTY(bb)) {
        rv = ap_pass_brigade(f->next, bb);
    }
    if (rv == APR_SUCCESS && flush) {
        rv = susp_core_push(f->c);
    }
    return rv;
}

/* ---- records --------------------------------------------------------------------------- */

static void susp_list_add(susp_t *s)
{
    s->prev = NULL;
    s->next = susp_g_list;
    if (susp_g_list) {
        susp_g_list->prev = s;
    }
    susp_g_list = s;
}

static void susp_list_remove(susp_t *s)
{
    if (s->prev) {
        s->prev->next = s->next;
    }
    else if (susp_g_list == s) {
        susp_g_list = s->next;
    }
    if (s->next) {
        s->next->prev = s->prev;
    }
    s->prev = s->next = NULL;
}

/* Free the record once nothing refers to it any more.  Under susp_mu.  1:
 * freed. */
static int susp_maybe_free(susp_t *s)
{
    if (s->phase != SUSP_P_DONE || !s->closed || s->tasks || s->sched) {
        return 0;
    }
    free(s->out);
    free(s);
    return 1;
}

static void susp_callback(void *baton);

/* Have a callback run for s (once: one at a time).  Under susp_mu. */
static void susp_schedule(susp_t *s)
{
    apr_status_t rv;

    if (s->sched || s->gate == SUSP_GATE_NONE || s->phase == SUSP_P_DONE
        || susp_g_no_callbacks) {
        return;
    }
    s->sched = 1;
    rv = ap_mpm_register_timed_callback(0, susp_callback, s);
    if (rv != APR_SUCCESS) {
        s->sched = 0;
        COMET_SUB_LOG(s->r, APLOG_ERR, rv, 0501, s->channel, "cannot "
                      "register a callback for a suspended subscriber");
    }
}

/* Post one of s's tasks.  Under susp_mu.  0 when the hub's thread is
 * gone. */
static int susp_post(susp_t *s, comet_hub_task_t *t)
{
    s->tasks++;
    if (comet_hub_post(s->hub, t) != APR_SUCCESS) {
        s->tasks--;
        return 0;
    }
    return 1;
}

/* ---- the hub's side: sink (hub thread) ---------------------------------------------- */

/* What s holds that its client has not taken: our buffer, and what the
 * core output filter keeps (at most about a slice).  Under susp_mu. */
static apr_size_t susp_held(const susp_t *s)
{
    return s->len - s->off + (s->pending ? SUSP_SLICE : 0);
}

static apr_status_t susp_sink_write(void *baton, const char *data,
                                    apr_size_t len, int flags,
                                    apr_size_t *held)
{
    susp_t *s = baton;
    apr_status_t rv = APR_SUCCESS;

    pthread_mutex_lock(&susp_mu);
    *held = 0;
    if (s->phase != SUSP_P_STREAM || s->abort || s->client_gone) {
        /* Nothing more reaches the client: the hub lets go. */
        rv = APR_ECONNABORTED;
    }
    else if (len) {
        apr_size_t have = s->len - s->off;

        if (have + len > s->max) {
            /* The hub bounds what it hands over; this only guards. */
            rv = APR_ENOSPC;
        }
        else {
            if (s->off && s->len + len > s->cap) {
                memmove(s->out, s->out + s->off, have);
                s->len = have;
                s->off = 0;
            }
            if (s->len + len > s->cap) {
                apr_size_t ncap = s->cap ? s->cap * 2 : 4096;
                char *n;

                while (ncap < s->len + len) {
                    ncap *= 2;
                }
                if (!(n = realloc(s->out, ncap))) {
                    rv = APR_ENOMEM;
                }
                else {
                    s->out = n;
                    s->cap = ncap;
                }
            }
            if (rv == APR_SUCCESS) {
                memcpy(s->out + s->len, data, len);
                s->len += len;
                susp_schedule(s);
            }
        }
    }
    if (rv == APR_SUCCESS && (flags & COMET_HUB_SINK_LAST)) {
        /* The end (httpd writes the last chunk): with the close that
         * follows. */
        s->last = 1;
        susp_schedule(s);
    }
    if (rv == APR_SUCCESS) {
        *held = susp_held(s);
        if ((flags & COMET_HUB_SINK_NOTIFY) && *held) {
            /* susp_decide calls comet_hub_room once all has left. */
            s->notify = 1;
        }
    }
    pthread_mutex_unlock(&susp_mu);
    return rv;
}

static void susp_sink_close(void *baton)
{
    susp_t *s = baton;

    pthread_mutex_lock(&susp_mu);
    s->closed = 1;
    s->handle = NULL;
    if (!s->last) {
        /* Dropped (slow, gone, cancelled): no orderly end. */
        s->abort = 1;
    }
    else if (s->watch != SUSP_W_GONE && !s->linger_posted) {
        /* The end is known: from now on what is left gets SUSP_LINGER to
         * leave. */
        s->linger_posted = 1;
        if (!susp_post(s, &s->t_linger)) {
            s->watch = SUSP_W_GONE;
        }
    }
    if (!susp_maybe_free(s)) {
        susp_schedule(s);
    }
    pthread_mutex_unlock(&susp_mu);
}

static const comet_hub_sink_t susp_sink = { susp_sink_write, susp_sink_close };

/* ---- the hub's side: watcher and tasks (hub thread) --------------------------------- */

static void susp_forget_watch(comet_loop_t *loop, susp_t *s, int loop_usable)
{
    if (s->watch == SUSP_W_ACTIVE && loop_usable) {
        comet_loop_io_remove(loop, &s->io);
    }
    if (s->linger_armed && loop_usable) {
        comet_timer_cancel(loop, &s->linger);
    }
    s->linger_armed = 0;
    s->watch = SUSP_W_GONE;
    s->ww = 0;
}

static void susp_watch_io(comet_loop_t *loop, int fd, int events, void *baton)
{
    susp_t *s = baton;

    pthread_mutex_lock(&susp_mu);
    if (events & (COMET_LOOP_HUP | COMET_LOOP_ERROR)) {
        /* The client closed (or reset): nothing can reach it any more. */
        susp_forget_watch(loop, s, 1);
        s->client_gone = 1;
        if (!s->closed && !s->cancelled && s->handle) {
            s->cancelled = 1;
            comet_hub_cancel(s->hub, s->handle);
        }
        susp_schedule(s);
    }
    else if ((events & COMET_LOOP_WRITE) && s->ww) {
        s->ww = 0;
        s->writable = 1;
        comet_loop_io_modify(loop, &s->io, COMET_LOOP_READ | COMET_LOOP_EDGE);
        susp_schedule(s);
    }
    /* Bytes alone are left where they are: under TLS they are mod_ssl's,
     * and a subscriber has nothing more to say.  Edge-triggered, they do
     * not wake us again; the close that follows does. */
    pthread_mutex_unlock(&susp_mu);
}

static void susp_linger_over(comet_loop_t *loop, comet_timer_t *timer,
                             void *baton)
{
    susp_t *s = baton;

    pthread_mutex_lock(&susp_mu);
    s->linger_armed = 0;
    s->linger_over = 1;
    susp_schedule(s);
    pthread_mutex_unlock(&susp_mu);
}

static void susp_task_add(comet_hub_t *hub, comet_hub_task_t *t, int stopping)
{
    susp_t *s = t->baton;

    pthread_mutex_lock(&susp_mu);
    s->tasks--;
    if (s->watch == SUSP_W_NONE) {
        if (!stopping
            && comet_loop_io_add(comet_hub_loop(hub), &s->io, s->fd,
                                 COMET_LOOP_READ | COMET_LOOP_EDGE,
                                 susp_watch_io, s) == APR_SUCCESS) {
            s->watch = SUSP_W_ACTIVE;
        }
        else {
            s->watch = SUSP_W_GONE;
            susp_schedule(s);
        }
    }
    susp_maybe_free(s);
    pthread_mutex_unlock(&susp_mu);
}

/* The core holds bytes: call back when the socket has room. */
static void susp_task_want_write(comet_hub_t *hub, comet_hub_task_t *t,
                                 int stopping)
{
    susp_t *s = t->baton;
    comet_loop_t *loop = comet_hub_loop(hub);

    pthread_mutex_lock(&susp_mu);
    s->tasks--;
    if (s->watch == SUSP_W_ACTIVE && !stopping
        && comet_loop_io_modify(loop, &s->io, COMET_LOOP_READ
                                | COMET_LOOP_WRITE | COMET_LOOP_EDGE)
           == APR_SUCCESS) {
    }
    else {
        /* No watcher (client gone, hub stopping): the callback sees it
         * and cuts the stream. */
        susp_forget_watch(loop, s, !stopping);
        susp_schedule(s);
    }
    susp_maybe_free(s);
    pthread_mutex_unlock(&susp_mu);
}

/* The hub has ended the stream: what is left gets SUSP_LINGER to leave. */
static void susp_task_linger(comet_hub_t *hub, comet_hub_task_t *t,
                             int stopping)
{
    susp_t *s = t->baton;

    pthread_mutex_lock(&susp_mu);
    s->tasks--;
    if (stopping || s->watch != SUSP_W_ACTIVE) {
        susp_forget_watch(comet_hub_loop(hub), s, !stopping);
        susp_schedule(s);
    }
    else if (!s->linger_armed && !s->linger_over) {
        if (comet_timer_arm_in(comet_hub_loop(hub), &s->linger, SUSP_LINGER)
            == APR_SUCCESS) {
            s->linger_armed = 1;
        }
        else {
            /* No timer to wait with: no waiting. */
            s->linger_over = 1;
            susp_schedule(s);
        }
    }
    susp_maybe_free(s);
    pthread_mutex_unlock(&susp_mu);
}

static void susp_task_retire(comet_hub_t *hub, comet_hub_task_t *t,
                             int stopping)
{
    susp_t *s = t->baton;

    pthread_mutex_lock(&susp_mu);
    s->tasks--;
    susp_forget_watch(comet_hub_loop(hub), s, !stopping);
    susp_schedule(s);
    susp_maybe_free(s);
    pthread_mutex_unlock(&susp_mu);
}

void comet_susp_hub_stopping(comet_hub_t *hub, void *baton)
{
    comet_loop_t *loop = comet_hub_loop(hub);

    pthread_mutex_lock(&susp_mu);
    for (susp_t *s = susp_g_list; s; s = s->next) {
        if (s->hub != hub || s->watch == SUSP_W_NONE) {
            /* (A pending add task sees the hub stopping.) */
            continue;
        }
        if (s->watch == SUSP_W_ACTIVE || s->linger_armed || s->ww) {
            susp_forget_watch(loop, s, 1);
            susp_schedule(s);
        }
    }
    pthread_mutex_unlock(&susp_mu);
}

/* ---- the connection's side (MPM callback) ------------------------------------------ */

enum { SUSP_A_IDLE, SUSP_A_WRITE, SUSP_A_PUSH, SUSP_A_FINALIZE, SUSP_A_CLOSE };

/* Wait for room, or give up on the bytes when no one can tell us of it.
 * Under susp_mu.  Returns SUSP_A_PUSH, SUSP_A_IDLE, or -1 (cut the stream). */
static int susp_await_room(susp_t *s)
{
    if (s->writable) {
        s->writable = 0;
        return SUSP_A_PUSH;
    }
    if (s->watch == SUSP_W_GONE || s->linger_over) {
        return -1;
    }
    if (!s->ww) {
        s->ww = 1;
        if (!susp_post(s, &s->t_ww)) {
            s->ww = 0;
            s->watch = SUSP_W_GONE;
            return -1;
        }
    }
    return SUSP_A_IDLE;
}

/* What to do next.  Under susp_mu.  SUSP_A_WRITE takes up to SUSP_SLICE
 * bytes into slice. */
static int susp_decide(susp_t *s, char *slice, apr_size_t *n)
{
    int a;

    if (s->phase <= SUSP_P_TAIL && (s->abort || s->client_gone)) {
        s->abort = 1;
        s->phase = SUSP_P_CLOSE;
    }
    if (s->phase == SUSP_P_STREAM) {
        if (s->pending) {
            if ((a = susp_await_room(s)) >= 0) {
                return a;
            }
            s->abort = 1;
            s->phase = SUSP_P_CLOSE;
        }
        else if (s->len > s->off) {
            *n = s->len - s->off < SUSP_SLICE ? s->len - s->off : SUSP_SLICE;
            memcpy(slice, s->out + s->off, *n);
            s->off += *n;
            if (s->off == s->len) {
                s->off = s->len = 0;
                if (s->cap > SUSP_KEEP) {
                    /* A backlog or a large message made it big. */
                    free(s->out);
                    s->out = NULL;
                    s->cap = 0;
                }
            }
            return SUSP_A_WRITE;
        }
        else if (s->closed && s->last) {
            return SUSP_A_FINALIZE;
        }
        else {
            if (s->notify && s->handle && !s->closed && !s->cancelled) {
                /* All the hub gave has left: it may give more. */
                s->notify = 0;
                comet_hub_room(s->hub, s->handle);
            }
            return SUSP_A_IDLE;
        }
    }
    if (s->phase == SUSP_P_TAIL) {
        if (!s->pending) {
            s->phase = SUSP_P_CLOSE;
        }
        else if ((a = susp_await_room(s)) >= 0) {
            return a;
        }
        else {
            s->abort = 1;
            s->phase = SUSP_P_CLOSE;
        }
    }
    /* SUSP_P_CLOSE: the hub lets go, the watcher goes, then the connection. */
    if (s->abort && !s->closed && !s->cancelled && s->handle) {
        s->cancelled = 1;
        comet_hub_cancel(s->hub, s->handle);
    }
    if (s->watch != SUSP_W_GONE) {
        if (!s->retiring) {
            s->retiring = 1;
            if (!susp_post(s, &s->t_retire)) {
                s->watch = SUSP_W_GONE;
            }
        }
        if (s->watch != SUSP_W_GONE) {
            return SUSP_A_IDLE;
        }
    }
    return SUSP_A_CLOSE;
}

/* End the request and free the connection (see "ending" above). */
static void susp_finish(susp_t *s)
{
    request_rec *r = s->r;
    conn_rec *c = s->c;

    if (s->abort) {
        /* Unsent bytes are dropped rather than waited for, and the log
         * says the client did not get the whole response. */
        c->aborted = 1;
    }
    ap_process_request_after_handler(r);
    ap_start_lingering_close(c);
    /* What the MPM's connection cleanup counts this connection as. */
    c->cs->state = CONN_STATE_SUSPENDED;
    apr_pool_destroy(c->pool);
}

/* Do s's work until there is none, or (in a callback) until its share
 * of the worker is used.  Called with susp_mu held and s->sched set; returns
 * with susp_mu released.  1: the connection has ended (s may be freed). */
static int susp_work(susp_t *s, int in_callback)
{
    char slice[SUSP_SLICE];
    int steps = 0;

    for (;;) {
        request_rec *r = s->r;
        conn_rec *c = s->c;
        apr_size_t n = 0;
        apr_status_t rv = APR_SUCCESS;
        int a, pending;

        if (in_callback && !susp_g_no_callbacks && steps++ == SUSP_STEPS) {
            /* Give the worker back; another callback goes on. */
            pthread_mutex_unlock(&susp_mu);
            if (ap_mpm_register_timed_callback(0, susp_callback, s)
                != APR_SUCCESS) {
                pthread_mutex_lock(&susp_mu);
                s->sched = 0;
                pthread_mutex_unlock(&susp_mu);
            }
            return 0;
        }
        a = susp_decide(s, slice, &n);
        if (a == SUSP_A_IDLE) {
            s->sched = 0;
            pthread_mutex_unlock(&susp_mu);
            return 0;
        }
        if (a == SUSP_A_CLOSE) {
            susp_list_remove(s);
            pthread_mutex_unlock(&susp_mu);
            susp_finish(s);
            apr_atomic_dec32(&comet_status_live()->suspended);
            pthread_mutex_lock(&susp_mu);
            s->phase = SUSP_P_DONE;
            s->sched = 0;
            susp_maybe_free(s);
            pthread_mutex_unlock(&susp_mu);
            return 1;
        }
        pthread_mutex_unlock(&susp_mu);

        apr_thread_mutex_lock(r->invoke_mtx);
        switch (a) {
        case SUSP_A_WRITE:
            APR_BRIGADE_INSERT_TAIL(s->bb, apr_bucket_transient_create(
                                    slice, n, c->bucket_alloc));
            APR_BRIGADE_INSERT_TAIL(s->bb,
                                    apr_bucket_flush_create(c->bucket_alloc));
            rv = ap_pass_brigade(r->output_filters, s->bb);
            apr_brigade_cleanup(s->bb);
            break;
        case SUSP_A_PUSH:
            rv = susp_core_push(c);
            break;
        case SUSP_A_FINALIZE:
            ap_finalize_request_protocol(r);
            /* The end may wait in a connection filter (TLS coalescing):
             * flush it down. */
            APR_BRIGADE_INSERT_TAIL(s->cbb,
                                    apr_bucket_flush_create(c->bucket_alloc));
            rv = ap_pass_brigade(c->output_filters, s->cbb);
            apr_brigade_cleanup(s->cbb);
            break;
        }
        pending = c->data_in_output_filters;
        if (rv != APR_SUCCESS) {
            c->aborted = 1;
        }
        apr_thread_mutex_unlock(r->invoke_mtx);

        pthread_mutex_lock(&susp_mu);
        s->pending = !!pending;
        if (c->aborted) {
            s->abort = 1;
        }
        if (a == SUSP_A_FINALIZE) {
            s->phase = SUSP_P_TAIL;
        }
    }
}

static void susp_callback(void *baton)
{
    susp_t *s = baton;

    pthread_mutex_lock(&susp_mu);
    if (s->gate == SUSP_GATE_SET) {
        if (!susp_gate_passed(s)) {
            /* The suspending worker is still on its way out: try again
             * (it needs microseconds). */
            apr_atomic_inc32(&comet_status_live()->gate_waits);
            pthread_mutex_unlock(&susp_mu);
            sched_yield();
            if (ap_mpm_register_timed_callback(0, susp_callback, s)
                != APR_SUCCESS) {
                pthread_mutex_lock(&susp_mu);
                s->sched = 0;
                pthread_mutex_unlock(&susp_mu);
            }
            return;
        }
        s->gate = SUSP_GATE_OPEN;
    }
    susp_work(s, 1);
}

/* ---- hooks --------------------------------------------------------------------------- */

static apr_status_t susp_conn_gone(void *data)
{
    conn_rec *c = data;

    if (c->cs && c->cs->state == CONN_STATE_SUSPENDED) {
        apr_atomic_dec32(&comet_status_live()->mpm_suspended);
    }
    apr_atomic_dec32(&comet_status_live()->mpm_conns);
    return APR_SUCCESS;
}

/* Every connection of the MPM: counted as the MPM counts it (the
 * server-status section shows both numbers, and that suspended
 * connections end). */
int comet_susp_pre_connection(conn_rec *c, void *csd)
{
    if (c->master || !c->cs) {
        return OK;
    }
    susp_moved_on();
    apr_atomic_inc32(&comet_status_live()->mpm_conns);
    apr_pool_cleanup_register(c->pool, c, susp_conn_gone,
                              apr_pool_cleanup_null);
    return OK;
}

void comet_susp_resume_connection(conn_rec *c, request_rec *r)
{
    susp_moved_on();
}

void comet_susp_suspend_connection(conn_rec *c, request_rec *r)
{
    comet_conn_t *cc;
    susp_t *s;

    if (c->master || !c->cs || c->cs->state != CONN_STATE_SUSPENDED) {
        return;
    }
    apr_atomic_inc32(&comet_status_live()->mpm_suspended);
    if (!(cc = comet_conn(c, 0)) || !(s = cc->susp)) {
        return;
    }
    cc->susp = NULL;
    pthread_mutex_lock(&susp_mu);
    s->epoch0 = apr_atomic_read32(&susp_g_epochs[s->tslot]);
    /* The gate: shut until this worker's next scoreboard update. */
    ap_update_child_status_from_indexes(s->pslot, s->tslot,
                                        SERVER_BUSY_WRITE, NULL);
    s->gate = SUSP_GATE_SET;
    if (s->pending || s->len > s->off || s->closed || s->client_gone) {
        susp_schedule(s);
    }
    pthread_mutex_unlock(&susp_mu);
}

void comet_susp_register_filter(void)
{
    susp_g_nb_filter = ap_register_output_filter("COMET_NONBLOCK",
                                                 susp_nb_out_filter, NULL,
                                                 AP_FTYPE_NETWORK - 1);
}

/* ---- configuration ------------------------------------------------------------------- */

static const char *susp_find_directive(ap_directive_t *d, const char *name)
{
    for (; d; d = d->next) {
        const char *v;

        if (!strcasecmp(d->directive, name)) {
            return d->args;
        }
        if (d->first_child
            && (v = susp_find_directive(d->first_child, name))) {
            return v;
        }
    }
    return NULL;
}

void comet_susp_post_config(server_rec *s)
{
    const char *arg = susp_find_directive(ap_conftree,
                                          "AsyncRequestWorkerFactor");
    double factor = arg ? strtod(arg, NULL) : 2.0;
    int threads = 0;

    ap_mpm_query(AP_MPMQ_MAX_THREADS, &threads);
    if (factor < 1.0) {
        factor = 1.0;
    }
    susp_g_limit = threads > 1 ? (apr_uint32_t)((threads - 1) * factor) : 0;
    ap_log_error(APLOG_MARK, APLOG_INFO, 0, s, COMET_LOGNO(0503)
                 "subscribers that need httpd's filters (TLS, HTTP/1.0): up "
                 "to %u suspended per process, (ThreadsPerChild %d - 1) x "
                 "AsyncRequestWorkerFactor %g; HTTP/2 subscribers are held, "
                 "at most %d per process",
                 susp_g_limit, threads, factor, threads > 2 ? threads / 2 : 1);
}

void comet_susp_child_init(apr_pool_t *pchild)
{
    int threads = 0;

    ap_mpm_query(AP_MPMQ_HARD_LIMIT_THREADS, &threads);
    susp_g_threads = threads > 0 ? threads : 1;
    susp_g_epochs = apr_pcalloc(pchild, sizeof(*susp_g_epochs)
                                        * (apr_size_t)susp_g_threads);
}

/* ---- the handler's side -------------------------------------------------------------- */

int comet_susp_possible(request_rec *r)
{
    int async = 0, p, t;

    /* The request's filters must lead to the connection's, so that the
     * non-blocking filter added there is on the request's way out. */
    return !r->connection->master && r->connection->cs && susp_g_epochs
           && !comet_keep_is_kept(r->connection)
           && r->output_filters != r->connection->output_filters
           && ap_mpm_query(AP_MPMQ_IS_ASYNC, &async) == APR_SUCCESS && async
           && susp_my_worker(&p, &t);
}

int comet_susp_reserve(request_rec *r)
{
    if (apr_atomic_inc32(&comet_status_live()->suspended) >= susp_g_limit) {
        apr_atomic_dec32(&comet_status_live()->suspended);
        if (apr_atomic_cas32(&susp_g_refusal_logged, 1, 0) == 0) {
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, COMET_LOGNO(0504)
                          "%u subscribers are suspended in this process, as "
                          "many as the event MPM leaves room for "
                          "((ThreadsPerChild - 1) x AsyncRequestWorkerFactor);"
                          " refusing more with 503.  "
                          "Raise AsyncRequestWorkerFactor (or ThreadsPerChild) "
                          "to allow more, or serve comet locations over plain "
                          "HTTP/1.1", susp_g_limit);
        }
        return 0;
    }
    return 1;
}

void comet_susp_unreserve(void)
{
    apr_atomic_dec32(&comet_status_live()->suspended);
}

void comet_susp_prepare(request_rec *r)
{
    conn_rec *c = r->connection;

    /* From now on no write waits for the client. */
    ap_add_output_filter_handle(susp_g_nb_filter, NULL, r, c);
    /* Nothing more is read from this connection; reqtimeout's body
     * timer would only report our end as a timeout. */
    for (ap_filter_t *f = c->input_filters; f; f = f->next) {
        if (!strcasecmp(f->frec->name, "reqtimeout")) {
            ap_remove_input_filter(f);
            break;
        }
    }
}

int comet_susp_park(request_rec *r, comet_hub_t *hub,
                    comet_hub_spec_t *spec, apr_size_t max_pending)
{
    conn_rec *c = r->connection;
    comet_hub_sub_t *handle = NULL;
    apr_os_sock_t fd;
    susp_t *s;

    if (c->aborted || apr_os_sock_get(&fd, ap_get_conn_socket(c))
                      != APR_SUCCESS
        || !(s = calloc(1, sizeof(*s)))) {
        comet_susp_unreserve();
        return OK;
    }
    s->r = r;
    s->c = c;
    s->channel = spec->ids[0];
    s->fd = fd;
    s->hub = hub;
    /* The hub hands over at most max_pending plus one write of at most
     * max_pending (comet_hub.h); past this something is wrong. */
    s->max = 2 * max_pending + 4 * SUSP_SLICE;
    s->bb = apr_brigade_create(r->pool, c->bucket_alloc);
    s->cbb = apr_brigade_create(c->pool, c->bucket_alloc);
    s->pending = !!c->data_in_output_filters;
    susp_my_worker(&s->pslot, &s->tslot);
    s->t_add.fn = susp_task_add;
    s->t_ww.fn = susp_task_want_write;
    s->t_linger.fn = susp_task_linger;
    s->t_retire.fn = susp_task_retire;
    s->t_add.baton = s->t_ww.baton = s->t_linger.baton = s;
    s->t_retire.baton = s;
    comet_timer_init(&s->linger, susp_linger_over, s);
    spec->fd = -1;
    spec->sink = &susp_sink;
    spec->sink_baton = s;

    pthread_mutex_lock(&susp_mu);
    susp_list_add(s);
    pthread_mutex_unlock(&susp_mu);
    if (comet_hub_adopt(hub, spec, &handle) != APR_SUCCESS) {
        pthread_mutex_lock(&susp_mu);
        susp_list_remove(s);
        pthread_mutex_unlock(&susp_mu);
        free(s);
        comet_susp_unreserve();
        COMET_SUB_LOG(r, APLOG_INFO, 0, 0502, spec->ids[0], "the hub is "
                      "full or stopping; ending the response");
        return OK;
    }
    pthread_mutex_lock(&susp_mu);
    if (!s->closed) {
        s->handle = handle;
    }
    if (!susp_post(s, &s->t_add)) {
        s->watch = SUSP_W_GONE;
    }
    pthread_mutex_unlock(&susp_mu);
    /* The suspend hook finds the record here; released with the
     * connection. */
    comet_conn(c, 1)->susp = s;
    return SUSPENDED;
}

/* ---- stopping -------------------------------------------------------------------------- */

void comet_susp_stopping(int graceful)
{
    if (!graceful) {
        /* Workers are leaving: callbacks may never run.  What the hub
         * ends now is finished by comet_susp_stopped. */
        pthread_mutex_lock(&susp_mu);
        susp_g_no_callbacks = 1;
        pthread_mutex_unlock(&susp_mu);
    }
}

void comet_susp_stopped(int graceful)
{
    if (graceful) {
        return;
    }
    /* The hub's thread has ended (every subscriber closed, no watcher
     * left).  End each connection no callback owns, without waiting. */
    for (;;) {
        susp_t *s;

        pthread_mutex_lock(&susp_mu);
        for (s = susp_g_list; s; s = s->next) {
            if (!s->sched && s->phase != SUSP_P_DONE
                && (s->gate == SUSP_GATE_OPEN
                    || (s->gate == SUSP_GATE_SET && susp_gate_passed(s)))) {
                break;
            }
        }
        if (!s) {
            pthread_mutex_unlock(&susp_mu);
            return;
        }
        s->sched = 1;
        s->gate = SUSP_GATE_OPEN;
        s->watch = SUSP_W_GONE;
        s->ww = 0;
        /* Whatever does not leave at once is cut. */
        s->linger_over = 1;
        if (!susp_work(s, 0)) {
            /* Idle although the hub ended it: left to the process exit. */
            pthread_mutex_lock(&susp_mu);
            if (!s->sched) {
                susp_list_remove(s);
            }
            pthread_mutex_unlock(&susp_mu);
        }
    }
}
