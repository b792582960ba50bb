/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * event_bridge.h -- the threads a child process adds to httpd's, and the
 * names every header of mod_comet uses for the threads that may call a
 * function.
 *
 *   request thread  an MPM worker running a handler or a request hook (the
 *                   subscriber and publisher handlers, the server-status
 *                   section).
 *   MPM callback    an MPM worker running a t=0 timed callback: a
 *                   suspended subscriber's writes (mod_comet_susp.c).
 *   hub thread      one per child (this file): runs the child's comet_hub,
 *                   which owns its parked subscribers, drains the store's
 *                   wakeups of its process slot, calls the sinks of
 *                   suspended and held subscribers, and ticks once a
 *                   second (the server-status record).
 *   publish thread  one per child (this file): runs a comet_loop of its
 *                   own that serves the publish socket (comet_pubsrv), so
 *                   that a publisher's reply never waits behind a large
 *                   fan-out.
 *   Redis thread    one per child with CometRedis (this file): runs a
 *                   comet_loop of its own with the process's Redis
 *                   connections (comet_bus): every byte to and from Redis,
 *                   so that no other thread ever waits on the network.
 *   any thread      the function locks, or uses atomics for, what it
 *                   touches.
 *
 * The hooks that run once (post_config in the parent; child_init,
 * child_stopping and the child pool's cleanups in a child) run on the
 * thread httpd runs them on, before the hub and publish threads start or
 * after they are joined; a function called only from them says which
 * hook.  mod_comet.c runs the lifecycle: it calls everything below.
 *
 * Pools: the threads' pool is a child of the child pool, created and
 * destroyed by the thread that runs child_init / the child pool's
 * cleanups; the hub and everything it allocates live in it.  The hub
 * thread allocates only from the hub's scratch pool and malloc; the
 * publish thread from the pools of its loop's servers.
 */
#ifndef COMET_EVENT_BRIDGE_H
#define COMET_EVENT_BRIDGE_H

#include <httpd.h>

#include "comet_hub.h"
#include "comet_loop.h"

/* child_init: make this child's hub (cfg) and the publish thread's loop;
 * no thread runs yet.  *pub_loop is the loop the publish thread will run,
 * *pub_pool a pool for the servers on it (destroyed before the loop).
 * APR_SUCCESS, or an error, logged here: the process will refuse
 * subscribers. */
apr_status_t comet_bridge_create(apr_pool_t *pchild, server_rec *s,
                                 const comet_hub_config_t *cfg,
                                 comet_hub_t **hub, comet_loop_t **pub_loop,
                                 apr_pool_t **pub_pool);

/* child_init, after comet_bridge_create, with CometRedis: the Redis
 * thread's loop (*loop) and a pool for what runs on it (*pool, destroyed
 * before the loop).  on_exit(baton) runs on the Redis thread once its loop
 * has returned (the bus closes there).  Logged on failure. */
apr_status_t comet_bridge_redis(comet_loop_t **loop, apr_pool_t **pool,
                                void (*on_exit)(void *baton), void *baton);

/* child_init, after comet_bridge_create and after the servers of the
 * publish loop are attached: start the hub thread, the publish thread and
 * the Redis thread (none takes a signal meant for httpd's threads).  A failure is
 * logged; without its hub thread the process refuses subscribers. */
void comet_bridge_start(server_rec *s);

/* child_stopping, and the child pool's pre-cleanup: stop the threads and
 * join them: the Redis thread first (what waited on Redis is answered:
 * not sent), then the publish thread, then the hub, which ends every
 * parked subscriber first (its ending writes never block).  Any number of times; nothing when there are no
 * threads. */
void comet_bridge_stop(void);

/* This process's hub while the hub thread runs, else NULL.  Request
 * thread. */
comet_hub_t *comet_bridge_hub(void);

#endif /* COMET_EVENT_BRIDGE_H */
