/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_pubsock.h -- the publish socket's life in httpd
 * (mod_comet_pubsock.c; comet_pubsrv.c speaks its protocol).
 */
#ifndef MOD_COMET_PUBSOCK_H
#define MOD_COMET_PUBSOCK_H

#include <httpd.h>

#include "comet_loop.h"
#include "comet_pubsrv.h"

/* post_config (the parent, not the dry pass): make the listening socket.
 * OK, or an HTTP error that stops the start. */
int comet_pubsock_post_config(apr_pool_t *pconf, apr_pool_t *ptemp,
                              server_rec *s);

/* child_init, before the publish thread starts: serve the socket on loop
 * (the publish thread's); p must be the loop's pool or a pool destroyed
 * before it. */
void comet_pubsock_child_init(apr_pool_t *p, server_rec *s,
                              comet_loop_t *loop);

/* The publish server's counters: 1, or 0 (and zeros) when this process
 * serves no socket.  Any thread. */
int comet_pubsock_stats(comet_pubsrv_stats_t *out);

/* The socket file, or NULL when off.  Any thread. */
const char *comet_pubsock_path(void);

#endif /* MOD_COMET_PUBSOCK_H */
