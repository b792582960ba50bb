/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_keep.c -- a kept connection's next request, served by httpd.
 *
 * A plain HTTP/1.1 long-poll whose head allowed keep-alive is not closed
 * after its answer: the hub keeps the socket and watches it
 * (comet_hub_keep).  httpd 2.4 cannot take a connection back into its
 * keep-alive queue once the MPM has forgotten it, so once a whole request
 * head waits, the hub hands the socket here (keep_handback, hub thread),
 * and a t=0 timed callback (keep_callback, MPM callback) makes a
 * connection record on it as the event MPM does for an accepted socket:
 * a transaction pool with an allocator of its own, a bucket allocator,
 * this worker's scoreboard handle, the create_connection and
 * pre_connection hooks (so mod_reqtimeout, mod_logio and the rest see a
 * fresh connection), then process_connection, which reads and serves one
 * request the ordinary way: access control, every hook, the handler,
 * logging.  Afterwards:
 *   - the comet handler parked it again (c->aborted; the hub has a dup()
 *     of the socket): done;
 *   - an answer the socket did not take at once: the hub waits until the
 *     socket has room (at most Timeout) and a callback writes on, so that
 *     no worker waits for a slow reader;
 *   - keep-alive allowed: a pipelined request already read is served in
 *     turn; else the socket goes back to the hub to wait for the next;
 *   - else: a lingering close (our sending side shut down; the hub reads
 *     what the client still sends, for at most 2 s).
 *
 * The event MPM's request hooks write into its per-connection record
 * (ap_get_module_config(c->conn_config, &mpm_event_module)) without
 * checking it: a connection it did not create gets a zeroed block, larger
 * than the MPM's record, in that slot.  A subscription on a kept
 * connection is never suspended (mod_comet_susp.c asks
 * comet_keep_is_kept): suspension is the MPM's business, and the MPM does
 * not know this connection.
 *
 * Threads: keep_handback on the hub thread; the callbacks on MPM workers
 * (MPM callback); the write-wait tasks on the hub thread.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <apr_atomic.h>
#include <apr_network_io.h>
#include <apr_portable.h>
#include <apr_thread_mutex.h>
#include <httpd.h>
#include <http_config.h>
#include <http_connection.h>
#include <http_core.h>
#include <http_log.h>
#include <http_protocol.h>
#include <http_vhost.h>
#include <ap_mpm.h>
#include <mpm_common.h>
#include <scoreboard.h>
#include <util_filter.h>

#include "mod_comet.h"
#include "mod_comet_keep.h"
#include "event_bridge.h"
#include "comet_loop.h"

APLOG_USE_MODULE(comet);

/* Transaction pools kept for reuse (a pool and its allocator per
 * connection, as the MPM's). */
#define KEEP_POOLS_MAX      64
/* Larger than the event MPM's private per-connection record. */
#define KEEP_MPM_CONF_SIZE  4096

typedef struct keep_conn_t {
    apr_pool_t       *pool;
    conn_rec         *c;
    conn_state_t     *cs;
    int               fd;
    int               failed;     /* the socket broke or timed out       */
    comet_hub_t      *hub;
    comet_hub_task_t  task;
    comet_loop_io_t   io;
    comet_timer_t     timer;
} keep_conn_t;

static server_rec *keep_server;
static module *keep_mpm_module;
static int keep_thread_limit;
static apr_thread_mutex_t *keep_mu;
static apr_pool_t *keep_pools[KEEP_POOLS_MAX];
static int keep_npools;

/* This worker's place in the scoreboard. */
static __thread int keep_t_pslot = -1, keep_t_tslot = -1;

static int keep_my_worker(int *pslot, int *tslot)
{
    if (keep_t_tslot < 0) {
        int servers = 0, threads = 0;
        pid_t pid = getpid();
        apr_os_thread_t me = apr_os_thread_current();

        ap_mpm_query(AP_MPMQ_HARD_LIMIT_DAEMONS, &servers);
        ap_mpm_query(AP_MPMQ_HARD_LIMIT_THREADS, &threads);
        for (int p = 0; ap_scoreboard_image && p < servers
                        && keep_t_tslot < 0; p++) {
            if (ap_scoreboard_image->parent[p].pid != pid) {
                continue;
            }
            for (int t = 0; t < threads; t++) {
                worker_score *ws = &ap_scoreboard_image->servers[p][t];

                if (ws->pid == pid && apr_os_thread_equal(ws->tid, me)) {
                    keep_t_pslot = p;
                    keep_t_tslot = t;
                    break;
                }
            }
        }
    }
    *pslot = keep_t_pslot;
    *tslot = keep_t_tslot;
    return keep_t_tslot >= 0;
}

static apr_pool_t *pool_get(void)
{
    apr_pool_t *p = NULL;
    apr_allocator_t *a;

    apr_thread_mutex_lock(keep_mu);
    if (keep_npools) {
        p = keep_pools[--keep_npools];
    }
    apr_thread_mutex_unlock(keep_mu);
    if (p) {
        return p;
    }
    if (apr_allocator_create(&a) != APR_SUCCESS) {
        return NULL;
    }
    apr_allocator_max_free_set(a, ap_max_mem_free);
    if (apr_pool_create_ex(&p, NULL, NULL, a) != APR_SUCCESS) {
        apr_allocator_destroy(a);
        return NULL;
    }
    apr_allocator_owner_set(a, p);
    apr_pool_tag(p, "comet_kept_transaction");
    return p;
}

/* Runs the connection's cleanups (the socket among them). */
static void pool_put(apr_pool_t *p)
{
    apr_pool_clear(p);
    apr_thread_mutex_lock(keep_mu);
    if (keep_npools < KEEP_POOLS_MAX) {
        keep_pools[keep_npools++] = p;
        p = NULL;
    }
    apr_thread_mutex_unlock(keep_mu);
    if (p) {
        apr_pool_destroy(p);
    }
}

/* What the core output filter holds, written without waiting. */
static apr_status_t keep_push(conn_rec *c)
{
    ap_filter_t *f = c->output_filters;

    while (f->next) {
        f = f->next;
    }
    return f->frec->filter_func.out_func(f, NULL);
}

/* ---- waiting for room (hub thread) ------------------------------------- */

static void keep_resume(void *baton);

static void keep_schedule(keep_conn_t *kc)
{
    if (ap_mpm_register_timed_callback(0, keep_resume, kc) != APR_SUCCESS) {
        /* No worker will ever come: the connection goes with the
         * process. */
        ap_log_cerror(APLOG_MARK, APLOG_DEBUG, 0, kc->c, COMET_LOGNO(1301)
                      "no callback for a kept connection's write; it "
                      "closes with the process");
    }
}

static void keep_writable(comet_loop_t *loop, int fd, int events,
                          void *baton)
{
    keep_conn_t *kc = baton;

    comet_loop_io_remove(loop, &kc->io);
    comet_timer_cancel(loop, &kc->timer);
    if (events & (COMET_LOOP_HUP | COMET_LOOP_ERROR)) {
        kc->failed = 1;
    }
    keep_schedule(kc);
}

static void keep_write_timeout(comet_loop_t *loop, comet_timer_t *timer,
                               void *baton)
{
    keep_conn_t *kc = baton;

    comet_loop_io_remove(loop, &kc->io);
    kc->failed = 1;
    keep_schedule(kc);
}

static void keep_task_watch(comet_hub_t *hub, comet_hub_task_t *t,
                            int stopping)
{
    keep_conn_t *kc = t->baton;
    comet_loop_t *loop = comet_hub_loop(hub);

    comet_timer_init(&kc->timer, keep_write_timeout, kc);
    if (stopping
        || comet_loop_io_add(loop, &kc->io, kc->fd, COMET_LOOP_WRITE,
                             keep_writable, kc) != APR_SUCCESS) {
        kc->failed = 1;
        keep_schedule(kc);
        return;
    }
    if (comet_timer_arm_in(loop, &kc->timer, kc->c->base_server->timeout)
        != APR_SUCCESS) {
        comet_loop_io_remove(loop, &kc->io);
        kc->failed = 1;
        keep_schedule(kc);
    }
}

/* ---- serving (MPM callback) -------------------------------------------- */

/* The connection is done with: closed the lingering way, unless broken. */
static void keep_end(keep_conn_t *kc)
{
    conn_rec *c = kc->c;

    if (!c->aborted && !kc->failed) {
        int nfd;

        ap_prep_lingering_close(c);
        shutdown(kc->fd, SHUT_WR);
        nfd = fcntl(kc->fd, F_DUPFD_CLOEXEC, 0);
        if (nfd >= 0 && comet_hub_keep(kc->hub, nfd, 0, 1) != APR_SUCCESS) {
            close(nfd);
        }
    }
    pool_put(kc->pool);
}

/* Serve requests until one parks, the connection ends, or it waits for
 * the client (the hub has it then). */
static void keep_serve(keep_conn_t *kc, int resumed)
{
    conn_rec *c = kc->c;
    conn_state_t *cs = kc->cs;

    for (;;) {
        if (!resumed) {
            cs->state = CONN_STATE_PROCESSING;
            ap_run_process_connection(c);
            if (c->aborted) {
                /* Parked again (the hub has its own descriptor), or the
                 * client is gone. */
                pool_put(kc->pool);
                return;
            }
            if (cs->state == CONN_STATE_SUSPENDED) {
                /* Never: kept connections are not suspended (see
                 * comet_keep_is_kept). */
                ap_log_cerror(APLOG_MARK, APLOG_CRIT, 0, c,
                              COMET_LOGNO(1302) "a kept connection was "
                              "suspended");
                return;
            }
        }
        resumed = 0;
        if (keep_push(c) != APR_SUCCESS) {
            kc->failed = 1;
            keep_end(kc);
            return;
        }
        if (c->data_in_output_filters) {
            /* The client reads slowly: wait for room without a worker. */
            kc->task.fn = keep_task_watch;
            kc->task.baton = kc;
            if (comet_hub_post(kc->hub, &kc->task) != APR_SUCCESS) {
                kc->failed = 1;
                keep_end(kc);
            }
            return;
        }
        if (cs->state != CONN_STATE_WRITE_COMPLETION
            || c->keepalive != AP_CONN_KEEPALIVE) {
            keep_end(kc);
            return;
        }
        if (c->data_in_input_filters) {
            continue;       /* pipelined: read already, serve it now */
        }
        {
            int nfd = fcntl(kc->fd, F_DUPFD_CLOEXEC, 0);

            if (nfd >= 0
                && comet_hub_keep(kc->hub, nfd, (apr_uint32_t)c->keepalives,
                                  0) == APR_SUCCESS) {
                pool_put(kc->pool);
                return;
            }
            if (nfd >= 0) {
                close(nfd);
            }
            keep_end(kc);
            return;
        }
    }
}

static void keep_resume(void *baton)
{
    keep_conn_t *kc = baton;
    int pslot, tslot;

    if (kc->failed || !keep_my_worker(&pslot, &tslot)) {
        kc->failed = 1;
        keep_end(kc);
        return;
    }
    ap_update_sb_handle(kc->c->sbh, pslot, tslot);
    kc->c->current_thread = ap_thread_current();
    keep_serve(kc, 1);
}

typedef struct keep_handoff_t {
    int          fd;
    apr_uint32_t served;
} keep_handoff_t;

static void keep_callback(void *baton)
{
    keep_handoff_t *h = baton;
    int fd = h->fd;
    apr_uint32_t served = h->served;
    struct sockaddr_storage la, ra;
    socklen_t ll = sizeof(la), rl = sizeof(ra);
    apr_os_sock_info_t info;
    apr_socket_t *sock = NULL;
    apr_bucket_alloc_t *ba;
    ap_sb_handle_t *sbh;
    keep_conn_t *kc;
    conn_rec *c;
    apr_pool_t *p;
    int pslot, tslot, rc;

    free(h);
    if (!keep_my_worker(&pslot, &tslot) || !(p = pool_get())) {
        close(fd);
        return;
    }
    if (getsockname(fd, (struct sockaddr *)&la, &ll) < 0
        || getpeername(fd, (struct sockaddr *)&ra, &rl) < 0) {
        close(fd);
        pool_put(p);
        return;
    }
    memset(&info, 0, sizeof(info));
    info.os_sock = &fd;
    info.local = (struct sockaddr *)&la;
    info.remote = (struct sockaddr *)&ra;
    info.family = ra.ss_family;
    info.type = SOCK_STREAM;
    info.protocol = IPPROTO_TCP;
    if (apr_os_sock_make(&sock, &info, p) != APR_SUCCESS) {
        close(fd);
        pool_put(p);
        return;
    }
    /* The pool owns the socket now: clearing it closes fd. */
    ba = apr_bucket_alloc_create(p);
    ap_create_sb_handle(&sbh, p, pslot, tslot);
    c = ap_run_create_connection(p, keep_server, sock,
                                 (long)pslot * keep_thread_limit + tslot,
                                 sbh, ba);
    if (!c) {
        pool_put(p);
        return;
    }
    kc = apr_pcalloc(p, sizeof(*kc));
    kc->pool = p;
    kc->c = c;
    kc->fd = fd;
    kc->hub = comet_bridge_hub();
    kc->cs = apr_pcalloc(p, sizeof(*kc->cs));
    kc->cs->state = CONN_STATE_PROCESSING;
    c->cs = kc->cs;
    if (keep_mpm_module) {
        ap_set_module_config(c->conn_config, keep_mpm_module,
                             apr_pcalloc(p, KEEP_MPM_CONF_SIZE));
    }
    c->current_thread = ap_thread_current();
    c->keepalives = (int)served;
    apr_table_setn(c->notes, COMET_KEPT_NOTE, "1");
    ap_update_vhost_given_ip(c);
    rc = ap_pre_connection(c, sock);
    if ((rc != OK && rc != DONE) || c->aborted || !kc->hub) {
        kc->failed = 1;
        keep_end(kc);
        return;
    }
    keep_serve(kc, 0);
}

static apr_status_t keep_handback(void *baton, int fd, apr_uint32_t served)
{
    keep_handoff_t *h = malloc(sizeof(*h));
    apr_status_t rv;

    if (!h) {
        return APR_ENOMEM;
    }
    h->fd = fd;
    h->served = served;
    rv = ap_mpm_register_timed_callback(0, keep_callback, h);
    if (rv != APR_SUCCESS) {
        free(h);
    }
    return rv;
}

void comet_keep_child_init(apr_pool_t *pchild, server_rec *s,
                           comet_hub_config_t *cfg)
{
    int async = 0;
    struct rlimit rl;

    /* Only the event MPM serves timed callbacks on its workers. */
    keep_mpm_module = ap_find_linked_module("event.c");
    if (!keep_mpm_module || ap_mpm_query(AP_MPMQ_IS_ASYNC, &async)
        != APR_SUCCESS || !async
        || apr_thread_mutex_create(&keep_mu, APR_THREAD_MUTEX_DEFAULT,
                                   pchild) != APR_SUCCESS) {
        return;
    }
    keep_server = s;
    ap_mpm_query(AP_MPMQ_HARD_LIMIT_THREADS, &keep_thread_limit);
    cfg->handback = keep_handback;
    cfg->keep_timeout = s->keep_alive_timeout > 0 ? s->keep_alive_timeout
                                                  : apr_time_from_sec(5);
    cfg->head_timeout = comet_keep_head_timeout(s);
    /* Kept connections take descriptors: at most half of what the process
     * may open, and with the parked subscribers, CometMaxSubscribers. */
    cfg->max_kept = getrlimit(RLIMIT_NOFILE, &rl) == 0
                    && rl.rlim_cur != RLIM_INFINITY
                    ? (apr_uint32_t)(rl.rlim_cur / 2) : 65536;
    if (cfg->max_subscribers && cfg->max_subscribers < cfg->max_kept) {
        cfg->max_kept = cfg->max_subscribers;
    }
}

int comet_keep_enabled(void)
{
    return keep_server != NULL;
}

int comet_keep_is_kept(const conn_rec *c)
{
    return apr_table_get(c->notes, COMET_KEPT_NOTE) != NULL;
}

apr_time_t comet_keep_head_timeout(const server_rec *s)
{
    apr_time_t cap = apr_time_from_sec(20);

    return s->timeout > 0 && s->timeout < cap ? s->timeout : cap;
}
