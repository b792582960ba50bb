/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * event_bridge.c -- the bridge thread of a child process: its life in
 * httpd.  What it does is comet_hub.c (and the publish socket server).
 *
 * Pools: the bridge's pool is a child of the child pool, created and
 * destroyed by the thread that runs child_init / the cleanup; the hub and
 * everything it allocates live in it.  The thread itself allocates only
 * from the hub's scratch pool and malloc.
 */

#include <signal.h>
#include <sys/resource.h>

#include <apr_thread_proc.h>
#include <httpd.h>
#include <http_config.h>
#include <http_log.h>
#include <ap_mpm.h>

#include "mod_comet.h"
#include "mod_comet_config.h"
#include "mod_comet_susp.h"
#include "mod_comet_status.h"
#include "mod_comet_pubsock.h"
#include "event_bridge.h"
#include "comet_loop.h"

APLOG_USE_MODULE(comet);

typedef struct comet_bridge_t {
    apr_pool_t   *pool;
    apr_thread_t *thread;
    comet_hub_t  *hub;
    /* The publish socket has a loop and thread of its own, so that a
     * publisher's reply never waits behind a large fan-out. */
    apr_pool_t   *pub_pool;
    comet_loop_t *pub_loop;
    apr_thread_t *pub_thread;
    server_rec   *server;
    apr_uint32_t  max_subscribers;
    volatile int  running;
    int           joined;
} comet_bridge_t;

/* This process's bridge (set in child_init, on the thread that runs the
 * child's hooks). */
static comet_bridge_t *bridge;

int comet_bridge_post_config(apr_pool_t *pconf, apr_pool_t *ptemp,
                             server_rec *s)
{
    int rc = comet_status_post_config(pconf, s);

    return rc != OK ? rc : comet_pubsock_post_config(pconf, ptemp, s);
}

static void *APR_THREAD_FUNC bridge_main(apr_thread_t *thd, void *data)
{
    comet_bridge_t *b = data;
    apr_status_t rv;

    rv = comet_hub_run(b->hub);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, b->server,
                     "event bridge loop failed; this process no longer "
                     "serves subscribers");
    }
    b->running = 0;
    apr_thread_exit(thd, rv);
    return NULL;
}

static void *APR_THREAD_FUNC pub_main(apr_thread_t *thd, void *data)
{
    comet_bridge_t *b = data;
    apr_status_t rv = comet_loop_run(b->pub_loop);

    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, b->server,
                     "publish socket loop failed in this process");
    }
    apr_thread_exit(thd, rv);
    return NULL;
}

static void bridge_join(comet_bridge_t *b)
{
    apr_status_t trv;

    if (b->joined) {
        return;
    }
    b->joined = 1;
    if (b->pub_thread) {
        comet_loop_stop(b->pub_loop);
        apr_thread_join(&trv, b->pub_thread);
    }
    if (b->thread) {
        comet_hub_stop(b->hub);
        apr_thread_join(&trv, b->thread);
    }
}

static apr_status_t bridge_cleanup(void *data)
{
    comet_bridge_t *b = data;

    bridge_join(b);
    bridge = NULL;
    return APR_SUCCESS;
}

void comet_bridge_child_init(apr_pool_t *pchild, server_rec *s)
{
    comet_hub_config_t cfg;
    comet_bridge_t *b;
    sigset_t all, old;
    struct rlimit rl;
    apr_status_t rv;

    /* Every subscriber is a descriptor: use all the process may have. */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    b = apr_pcalloc(pchild, sizeof(*b));
    b->server = s;
    if ((rv = apr_pool_create(&b->pool, pchild)) != APR_SUCCESS) {
        goto failed;
    }
    apr_pool_tag(b->pool, "comet_bridge");
    memset(&cfg, 0, sizeof(cfg));
    cfg.store = comet_globals.store;
    cfg.slot = comet_globals.slot;
    cfg.wake_fd = comet_globals.wake_fds[comet_globals.slot];
    cfg.max_pending = comet_config_max_pending(s);
    cfg.max_subscribers = comet_config_max_subscribers(s);
    /* A subscriber that does not read must not hold megabytes of kernel
     * memory; what does not fit waits in our bounded queue instead. */
    cfg.sndbuf = 64 * 1024;
    cfg.wake = comet_wake_slot;
    b->max_subscribers = cfg.max_subscribers;
    cfg.tick = comet_status_tick;
    cfg.on_stop = comet_susp_hub_stopping;
    if ((rv = comet_hub_create(&b->hub, &cfg, b->pool)) != APR_SUCCESS) {
        goto failed;
    }
    /* A loop is its thread's once it runs: attach before.  The server's
     * pool is a child of its loop's, so that it goes first. */
    if ((rv = apr_pool_create(&b->pub_pool, b->pool)) != APR_SUCCESS
        || (rv = comet_loop_create(&b->pub_loop, 64, b->pub_pool))
           != APR_SUCCESS) {
        goto failed;
    }
    {
        apr_pool_t *srv_pool;

        if ((rv = apr_pool_create(&srv_pool, b->pub_pool)) != APR_SUCCESS) {
            goto failed;
        }
        comet_pubsock_child_init(srv_pool, s, b->pub_loop);
    }
    comet_status_child_init(pchild, b->hub);
    /* The thread must take no signal meant for httpd's own threads. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    b->running = 1;
    rv = apr_thread_create(&b->thread, NULL, bridge_main, b, b->pool);
    if (rv == APR_SUCCESS
        && apr_thread_create(&b->pub_thread, NULL, pub_main, b, b->pool)
           != APR_SUCCESS) {
        b->pub_thread = NULL;
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, "cannot start the "
                     "publish socket thread of process %" APR_PID_T_FMT,
                     getpid());
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rv != APR_SUCCESS) {
        b->running = 0;
        goto failed;
    }
    bridge = b;
    apr_pool_pre_cleanup_register(pchild, b, bridge_cleanup);
    return;

failed:
    ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, "cannot start the event "
                 "bridge of process %" APR_PID_T_FMT "; it will refuse "
                 "subscribers", getpid());
}

void comet_bridge_child_stopping(int graceful)
{
    comet_susp_stopping(graceful);
    if (bridge && bridge->hub) {
        /* End every parked subscriber now (the hub's ending writes never
         * block), and wait for it: the process may exit right after this
         * hook, and must not do so while the bridge is inside the store. */
        bridge_join(bridge);
    }
    /* Suspended subscribers the hub has ended: on an ungraceful stop no
     * callback may run any more; they are finished here. */
    comet_susp_stopped(graceful);
}

void comet_bridge_register_hooks(apr_pool_t *p)
{
    comet_status_register_hooks(p);
}

comet_hub_t *comet_bridge_hub(void)
{
    comet_bridge_t *b = bridge;

    return b && b->running ? b->hub : NULL;
}

int comet_bridge_full(comet_hub_t *hub)
{
    comet_bridge_t *b = bridge;

    return b && b->max_subscribers
           && comet_hub_count(hub) >= b->max_subscribers;
}
