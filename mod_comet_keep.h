/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_keep.h -- kept long-poll connections (mod_comet_keep.c).
 */
#ifndef MOD_COMET_KEEP_H
#define MOD_COMET_KEEP_H

#include <httpd.h>

#include "comet_hub.h"

/* In c->notes of a connection that mod_comet_keep.c made. */
#define COMET_KEPT_NOTE "comet-kept"

/* Set the hub's configuration up for kept connections (the event MPM
 * only; nothing otherwise).  Child start-up, before the hub starts. */
void comet_keep_child_init(apr_pool_t *pchild, server_rec *s,
                           comet_hub_config_t *cfg);

/* Whether this process keeps long-poll connections.  Any thread. */
int comet_keep_enabled(void);

/* Whether c is a kept connection (not the MPM's).  Request thread. */
int comet_keep_is_kept(const conn_rec *c);

/* How long a kept connection's next request head may take from its first
 * byte: the server's Timeout, at most 20 s.  Any thread. */
apr_time_t comet_keep_head_timeout(const server_rec *s);

#endif /* MOD_COMET_KEEP_H */
