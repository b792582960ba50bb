/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_redis.c -- CometRedis in httpd (see mod_comet_redis.h): the
 * bus of each child process on its Redis thread, and the calls of the
 * handlers and of the publish socket into it.
 *
 * Threads: the bus's own work on the Redis thread; the handlers' calls on
 * request threads, which hand their request to the Redis thread and wait
 * for it, bounded; the publish socket's on the publish thread, which never
 * waits (the reply comes back through comet_pubsrv_published).
 */

#include <unistd.h>

#include <apr_strings.h>
#include <httpd.h>
#include <http_config.h>
#include <http_log.h>

#include "mod_comet.h"
#include "mod_comet_config.h"
#include "mod_comet_redis.h"
#include "event_bridge.h"

APLOG_USE_MODULE(comet);

/* This process's bus, set in child_init before any thread uses it. */
static comet_bus_t *bus;

/* On the Redis thread once its loop has returned. */
static void redis_thread_exit(void *baton)
{
    comet_bus_t **b = baton;

    if (*b) {
        comet_bus_close(*b);
    }
}

void comet_shared_child_init(server_rec *s)
{
    const comet_redis_url_t *url = comet_config_redis(s);
    comet_bus_config_t cfg;
    comet_loop_t *loop;
    apr_pool_t *p;
    apr_uint32_t slot, nonce = 0;
    char host[64];
    apr_status_t rv;

    bus = NULL;
    if (!url || !comet_proc_slot(&slot)) {
        return;
    }
    if (comet_bridge_redis(&loop, &p, redis_thread_exit, &bus)
        != APR_SUCCESS) {
        return;
    }
    if (gethostname(host, sizeof(host)) != 0) {
        apr_cpystrn(host, "?", sizeof(host));
    }
    host[sizeof(host) - 1] = '\0';
    apr_generate_random_bytes((unsigned char *)&nonce, sizeof(nonce));
    comet_bus_config_default(&cfg);
    cfg.url = url;
    cfg.redis.name = apr_psprintf(p, "mod_comet-%" APR_PID_T_FMT, getpid());
    cfg.store = comet_proc_store();
    cfg.slot = slot;
    cfg.wake = comet_wake_slot;
    /* Unique among every process of every server sharing the Redis. */
    cfg.member = apr_psprintf(p, "%s/%" APR_PID_T_FMT "/%08x", host,
                              getpid(), nonce);
    rv = comet_bus_create(&bus, loop, &cfg, p);
    if (rv == APR_SUCCESS) {
        rv = comet_bus_start(bus);
    }
    if (rv != APR_SUCCESS) {
        comet_log_serror(APLOG_CRIT, rv, s, COMET_LOGNO(1201) "process %"
                         APR_PID_T_FMT " cannot set up its Redis client for "
                         "%s: its publishes will fail", getpid(),
                         url->display);
        bus = NULL;
        return;
    }
    ap_log_error(APLOG_MARK, APLOG_DEBUG, 0, s, COMET_LOGNO(1202)
                 "process %" APR_PID_T_FMT " shares its channels through %s",
                 getpid(), url->display);
}

int comet_shared_enabled(void)
{
    return bus != NULL;
}

static const char *refusal_text(apr_pool_t *p, apr_status_t rv)
{
    char eb[160];

    return apr_pstrdup(p, comet_strerror(rv, eb, sizeof(eb)));
}

apr_status_t comet_shared_publish(request_rec *r, const comet_publish_t *msg,
                                 comet_publish_result_t *res,
                                 const char **why)
{
    comet_bus_req_t *req;
    const comet_bus_result_t *br;
    apr_status_t rv;

    if (!bus) {
        *why = "not stored: this process has no Redis client";
        return COMET_BUS_ENOTSENT;
    }
    req = comet_bus_req_publish(msg, NULL, 0);
    if (!req) {
        *why = "not stored: out of memory";
        return COMET_BUS_ENOTSENT;
    }
    /* The bus answers within Redis' command timeout (5 s); a second more
     * for the hand-overs between threads. */
    rv = comet_bus_call(bus, &req, 1, apr_time_from_sec(6));
    if (!req) {
        *why = "outcome unknown: Redis did not answer in time (the "
               "message may or may not be stored)";
        return COMET_BUS_EUNKNOWN;
    }
    br = comet_bus_req_result(req);
    rv = br->status;
    if (rv == APR_SUCCESS) {
        res->id = br->id;
        res->receivers = br->count > 0 ? (apr_uint32_t)br->count : 0;
    }
    else if (rv == COMET_BUS_ENOTSENT || rv == COMET_BUS_EUNKNOWN) {
        *why = apr_pstrdup(r->pool, br->error);
    }
    else {
        *why = refusal_text(r->pool, rv);
    }
    comet_bus_req_free(req);
    return rv;
}

apr_status_t comet_shared_publish_async(const comet_publish_t *msg,
                                       const char *from, apr_size_t from_len,
                                       comet_bus_done_fn *done, void *baton)
{
    comet_bus_req_t *req;
    apr_status_t rv;

    if (!bus) {
        return COMET_BUS_ENOTSENT;
    }
    if (!(req = comet_bus_req_publish(msg, from, from_len))) {
        return APR_ENOMEM;
    }
    if ((rv = comet_bus_submit(bus, req, done, baton)) != APR_SUCCESS) {
        comet_bus_req_free(req);
    }
    return rv;
}

/* On the Redis thread: the outcome of a WebSocket client's publish, which
 * the bus has counted (and logged when Redis failed). */
static void hub_done(comet_bus_req_t *req, void *baton)
{
    comet_bus_req_free(req);
}

apr_status_t comet_shared_hub_publish(void *baton, const comet_publish_t *msg,
                                      const char **why)
{
    apr_status_t rv = comet_shared_publish_async(msg, NULL, 0, hub_done,
                                                 NULL);

    if (rv != APR_SUCCESS) {
        *why = rv == APR_ENOMEM ? "not stored: out of memory"
               : !bus ? "not stored: this process has no Redis client"
               : "not stored: the Redis client has stopped";
    }
    return rv;
}

/* On the Redis thread: a sync asked for by a socket subscriber. */
static void follow_done(comet_bus_req_t *req, void *baton)
{
    comet_bus_req_free(req);
}

void comet_shared_follow(void *baton, const char *channel, apr_size_t len)
{
    comet_bus_req_t *req;

    if (!bus || !(req = comet_bus_req_sync(channel, len, 0))) {
        return;
    }
    if (comet_bus_submit(bus, req, follow_done, NULL) != APR_SUCCESS) {
        comet_bus_req_free(req);
    }
}

/* On the Redis thread: hand the reply back to the publish thread. */
static void pubsock_done(comet_bus_req_t *req, void *baton)
{
    const comet_bus_result_t *br = comet_bus_req_result(req);
    char line[400];

    if (br->status == APR_SUCCESS) {
        comet_pubsrv_published(baton, APR_SUCCESS,
                               br->count > 0 ? br->count : 0, NULL);
    }
    else {
        apr_snprintf(line, sizeof(line), "ERR %s", br->error);
        comet_pubsrv_published(baton, br->status, 0, line);
    }
    comet_bus_req_free(req);
}

apr_status_t comet_shared_pubsock_publish(void *baton,
                                         comet_pubsrv_pending_t *pending,
                                         const comet_publish_t *msg)
{
    return comet_shared_publish_async(msg, NULL, 0, pubsock_done, pending);
}

void comet_shared_sync(request_rec *r, const char *const *ids,
                      const apr_uint64_t *seqs, int nchan, int *synced)
{
    comet_bus_req_t **reqs;
    int i;

    memset(synced, 0, sizeof(*synced) * (apr_size_t)nchan);
    if (!bus) {
        return;
    }
    reqs = apr_pcalloc(r->pool, sizeof(*reqs) * (apr_size_t)nchan);
    for (i = 0; i < nchan; i++) {
        reqs[i] = comet_bus_req_sync(ids[i], strlen(ids[i]), seqs[i]);
        if (!reqs[i]) {
            while (i--) {
                comet_bus_req_free(reqs[i]);
            }
            return;
        }
    }
    comet_bus_call(bus, reqs, (apr_size_t)nchan, 0);
    for (i = 0; i < nchan; i++) {
        if (reqs[i]) {
            synced[i] = comet_bus_req_result(reqs[i])->status
                        == APR_SUCCESS;
            comet_bus_req_free(reqs[i]);
        }
    }
}

void comet_shared_stats(comet_bus_stats_t *out)
{
    if (!bus) {
        memset(out, 0, sizeof(*out));
        return;
    }
    comet_bus_stats(bus, out);
}
