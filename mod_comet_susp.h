/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_susp.h -- suspended subscribers (mod_comet_susp.c): TLS,
 * HTTP/1.0, transforming filters.  Their bytes go through httpd's
 * filters, and no worker is kept while they wait.  Its numbers are in
 * comet_status_live().
 */
#ifndef MOD_COMET_SUSP_H
#define MOD_COMET_SUSP_H

#include <httpd.h>

#include "comet_hub.h"

/* register_hooks: the non-blocking connection filter. */
void comet_susp_register_filter(void);

/* The MPM's connection hooks (registered by mod_comet.c): every
 * connection counted as the MPM counts it, and the gate (a worker that
 * moved on; a connection just suspended).  Request thread (an MPM worker
 * serving the connection). */
int comet_susp_pre_connection(conn_rec *c, void *csd);
void comet_susp_resume_connection(conn_rec *c, request_rec *r);
void comet_susp_suspend_connection(conn_rec *c, request_rec *r);

/* post_config (the parent, not the dry pass): the per-process bound. */
void comet_susp_post_config(server_rec *s);

/* child_init, before any request: per-thread state. */
void comet_susp_child_init(apr_pool_t *pchild);

/* Whether r may be suspended.  Request thread. */
int comet_susp_possible(request_rec *r);

/* Take a place under the per-process bound: 1, or 0 when there is none
 * (the caller answers 503).  Request thread. */
int comet_susp_reserve(request_rec *r);

/* Give back a place taken by comet_susp_reserve when r is not parked
 * after all.  Request thread. */
void comet_susp_unreserve(void);

/* From now on writes on r's connection never wait for the client; call
 * before the response head is sent.  Request thread. */
void comet_susp_prepare(request_rec *r);

/* Hand r to the hub as a sink (spec from the handler; its sink fields are
 * set here): SUSPENDED, or OK when the hub refuses (the place is given
 * back).  Request thread. */
int comet_susp_park(request_rec *r, comet_hub_t *hub,
                    comet_hub_spec_t *spec, apr_size_t max_pending);

/* comet_hub_config_t.on_stop: remove the watchers and timers of every
 * suspended subscriber from the hub's loop.  Hub thread. */
void comet_susp_hub_stopping(comet_hub_t *hub, void *baton);

/* child_stopping, before the hub thread stops (stopping) and after it has
 * been joined (stopped). */
void comet_susp_stopping(int graceful);
void comet_susp_stopped(int graceful);

#endif /* MOD_COMET_SUSP_H */
