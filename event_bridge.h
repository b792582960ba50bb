/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * event_bridge.h -- the threads a child process adds to httpd's: the
 * bridge thread, which owns the parked subscribers of the process (it runs
 * the process's comet_hub), and a second small loop thread that serves the
 * publish socket's connections (so that a publisher's reply never waits
 * behind a large fan-out).
 *
 * Started in child_init, stopped when the child stops (child_stopping, and
 * at the latest in a pre-cleanup of the child pool, with a join).
 */
#ifndef COMET_EVENT_BRIDGE_H
#define COMET_EVENT_BRIDGE_H

#include <httpd.h>

#include "comet_hub.h"

/* Parent, post_config (not the dry pass): what must exist before children
 * fork.  Returns OK or an HTTP error that stops the start. */
int comet_bridge_post_config(apr_pool_t *pconf, apr_pool_t *ptemp,
                             server_rec *s);

/* Child: start the bridge thread. */
void comet_bridge_child_init(apr_pool_t *pchild, server_rec *s);

/* Child: the process is stopping (graceful or not): end every parked
 * subscriber now so that the process can go. */
void comet_bridge_child_stopping(int graceful);

void comet_bridge_register_hooks(apr_pool_t *p);

/* This process's hub while the bridge runs, else NULL.  Request threads. */
comet_hub_t *comet_bridge_hub(void);

/* True when the process holds CometMaxSubscribers.  Request threads. */
int comet_bridge_full(comet_hub_t *hub);

#endif /* COMET_EVENT_BRIDGE_H */
