/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * event_bridge.c -- the hub thread and the publish thread of a child
 * process: made, started and joined (see event_bridge.h).  What they do
 * is comet_hub.c and comet_pubsrv.c; when they start and stop is
 * mod_comet.c's.
 */

#include <signal.h>
#include <unistd.h>

#include <apr_thread_proc.h>
#include <httpd.h>
#include <http_config.h>
#include <http_log.h>

#include "comet_pubsrv.h"
#include "mod_comet.h"
#include "mod_comet_config.h"
#include "event_bridge.h"

APLOG_USE_MODULE(comet);

typedef struct comet_bridge_t {
    apr_pool_t   *pool;
    server_rec   *server;
    /* The hub thread. */
    apr_thread_t *thread;
    comet_hub_t  *hub;
    volatile int  running;
    int           joined;
    /* The publish thread. */
    apr_pool_t   *pub_pool;
    comet_loop_t *pub_loop;
    apr_thread_t *pub_thread;
    /* The Redis thread. */
    apr_pool_t   *redis_pool;
    comet_loop_t *redis_loop;
    apr_thread_t *redis_thread;
    void        (*redis_exit)(void *baton);
    void         *redis_baton;
} comet_bridge_t;

/* This process's threads (set and cleared by the thread that runs
 * child_init and the child's hooks and cleanups). */
static comet_bridge_t *bridge;

static void log_no_hub(server_rec *s, apr_status_t rv)
{
    ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, COMET_LOGNO(0601)
                 "cannot start the hub thread of process %" APR_PID_T_FMT
                 "; it will refuse subscribers", getpid());
}

static void *APR_THREAD_FUNC hub_main(apr_thread_t *thd, void *data)
{
    comet_bridge_t *b = data;
    apr_status_t rv;

    rv = comet_hub_run(b->hub);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, b->server, COMET_LOGNO(0602)
                     "hub thread failed; this process no longer serves "
                     "subscribers");
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
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, b->server, COMET_LOGNO(0603)
                     "publish socket loop failed in this process");
    }
    apr_thread_exit(thd, rv);
    return NULL;
}

static void *APR_THREAD_FUNC redis_main(apr_thread_t *thd, void *data)
{
    comet_bridge_t *b = data;
    apr_status_t rv = comet_loop_run(b->redis_loop);

    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, b->server, COMET_LOGNO(0605)
                     "Redis loop failed in this process: its publishes "
                     "fail and its subscribers get nothing from other "
                     "servers");
    }
    if (b->redis_exit) {
        b->redis_exit(b->redis_baton);
    }
    apr_thread_exit(thd, rv);
    return NULL;
}

apr_status_t comet_bridge_redis(comet_loop_t **loop, apr_pool_t **pool,
                                void (*on_exit)(void *baton), void *baton)
{
    comet_bridge_t *b = bridge;
    apr_status_t rv;

    if (!b) {
        return APR_EINIT;
    }
    /* A few timers: the bus's tick, the connections' own. */
    if ((rv = apr_pool_create(&b->redis_pool, b->pool)) != APR_SUCCESS
        || (rv = comet_loop_create(&b->redis_loop, 4096, b->redis_pool))
           != APR_SUCCESS
        || (rv = apr_pool_create(pool, b->redis_pool)) != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, b->server, COMET_LOGNO(0606)
                     "cannot make the Redis loop of process %" APR_PID_T_FMT,
                     getpid());
        b->redis_loop = NULL;
        return rv;
    }
    b->redis_exit = on_exit;
    b->redis_baton = baton;
    *loop = b->redis_loop;
    return APR_SUCCESS;
}

apr_status_t comet_bridge_create(apr_pool_t *pchild, server_rec *s,
                                 const comet_hub_config_t *cfg,
                                 comet_hub_t **hub, comet_loop_t **pub_loop,
                                 apr_pool_t **pub_pool)
{
    comet_bridge_t *b = apr_pcalloc(pchild, sizeof(*b));
    apr_status_t rv;

    b->server = s;
    if ((rv = apr_pool_create(&b->pool, pchild)) != APR_SUCCESS) {
        goto failed;
    }
    apr_pool_tag(b->pool, "comet_bridge");
    if ((rv = comet_hub_create(&b->hub, cfg, b->pool)) != APR_SUCCESS) {
        goto failed;
    }
    /* A loop is its thread's once it runs: its servers attach before.
     * Their pool is a child of the loop's, so that it goes first.  Every
     * publish socket connection has a timer: room for all of them. */
    if ((rv = apr_pool_create(&b->pub_pool, b->pool)) != APR_SUCCESS
        || (rv = comet_loop_create(&b->pub_loop, comet_pubsrv_timers(
                                       comet_config_socket_clients(s)),
                                   b->pub_pool))
           != APR_SUCCESS
        || (rv = apr_pool_create(pub_pool, b->pub_pool)) != APR_SUCCESS) {
        goto failed;
    }
    *hub = b->hub;
    *pub_loop = b->pub_loop;
    bridge = b;
    return APR_SUCCESS;

failed:
    log_no_hub(s, rv);
    return rv;
}

void comet_bridge_start(server_rec *s)
{
    comet_bridge_t *b = bridge;
    sigset_t all, old;
    apr_status_t rv;

    if (!b) {
        return;
    }
    /* The threads must take no signal meant for httpd's own threads. */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    b->running = 1;
    rv = apr_thread_create(&b->thread, NULL, hub_main, b, b->pool);
    if (rv == APR_SUCCESS
        && apr_thread_create(&b->pub_thread, NULL, pub_main, b, b->pool)
           != APR_SUCCESS) {
        b->pub_thread = NULL;
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, COMET_LOGNO(0604)
                     "cannot start the publish socket thread of process %"
                     APR_PID_T_FMT, getpid());
    }
    if (rv == APR_SUCCESS && b->redis_loop
        && apr_thread_create(&b->redis_thread, NULL, redis_main, b, b->pool)
           != APR_SUCCESS) {
        b->redis_thread = NULL;
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, COMET_LOGNO(0607)
                     "cannot start the Redis thread of process %"
                     APR_PID_T_FMT ": its publishes will fail", getpid());
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rv != APR_SUCCESS) {
        b->thread = NULL;
        b->running = 0;
        log_no_hub(s, rv);
    }
}

void comet_bridge_stop(void)
{
    comet_bridge_t *b = bridge;
    apr_status_t trv;

    if (!b || b->joined) {
        return;
    }
    b->joined = 1;
    if (b->redis_thread) {
        comet_loop_stop(b->redis_loop);
        apr_thread_join(&trv, b->redis_thread);
    }
    if (b->pub_thread) {
        comet_loop_stop(b->pub_loop);
        apr_thread_join(&trv, b->pub_thread);
    }
    if (b->thread) {
        comet_hub_stop(b->hub);
        apr_thread_join(&trv, b->thread);
    }
    bridge = NULL;
}

comet_hub_t *comet_bridge_hub(void)
{
    comet_bridge_t *b = bridge;

    return b && b->running ? b->hub : NULL;
}
