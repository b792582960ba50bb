/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_takeover.h -- TLS subscribers detached like plain ones
 * (mod_comet_takeover.c): mod_ssl's session of the connection is taken
 * over by the hub once the response head is out, and httpd ends its side
 * of the connection without a byte more on the wire.  Also the
 * configuration notice about comet locations that HTTP/2 may serve.
 */
#ifndef MOD_COMET_TAKEOVER_H
#define MOD_COMET_TAKEOVER_H

#include <httpd.h>

#include "comet_hub.h"

/* register_hooks: mod_ssl's optional pre_handshake hook (it runs only
 * where mod_ssl runs it) and the guard filter. */
void comet_takeover_register_hooks(void);

/* post_config (the parent, not the dry pass): a notice for every comet
 * subscriber location of a virtual host whose Protocols include h2, with
 * the CometHTTP2 policy that applies there. */
void comet_takeover_post_config(apr_pool_t *ptemp, server_rec *s);

/* Why the hub cannot take r's TLS session over (NULL: it can).  Checked
 * before the response head is sent: on a refusal the subscriber is
 * suspended as before.  Reads from the connection without waiting (input
 * the client pipelined is a refusal).  Request thread. */
const char *comet_takeover_refusal(request_rec *r);

/* After the response head and the first bytes went out, flushed: the
 * session is the hub's from now on (spec is copied; its fd and ssl are
 * filled in later).  httpd ends the connection as for any aborted one,
 * quietly: no last chunk, no close_notify, no shutdown() of the socket.
 * When httpd frees the connection the session is detached onto a dup()
 * of the socket and adopted by hub, which owns the subscriptions from
 * then on (on any failure they are released).  APR_SUCCESS, or an error
 * when nothing was taken (the subscriptions are still the caller's).
 * Request thread. */
apr_status_t comet_takeover_start(request_rec *r, comet_hub_t *hub,
                                  const comet_hub_spec_t *spec);

#endif /* MOD_COMET_TAKEOVER_H */
