/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_ws.h -- WebSocket subscribers (mod_comet_ws.c): the opening
 * handshake on the request thread, then the connection detached to the
 * hub, which reads and writes its frames (comet_hub.c).  The subscriber
 * handler does everything else as for the other transports (channels,
 * position, subscription, what is due at once).
 *
 * Refusals.  Before the upgrade, with an HTTP status: a handshake that is
 * not one (400, 426), WebSocket not in CometTransports (406), an Origin
 * CometAllowOrigin does not allow (403), a connection the hub cannot take
 * over (501: HTTP/2, or a TLS session that cannot be taken over, see
 * mod_comet_takeover.h).  After a good handshake, the refusals of any
 * subscriber (a bad channel or id, 503 when busy) are a 101 followed by a
 * close frame with code 4000 + the HTTP status and the reason: a browser
 * sees neither an HTTP status nor a reason otherwise.
 *
 * Every function: request thread.
 */
#ifndef MOD_COMET_WS_H
#define MOD_COMET_WS_H

#include <httpd.h>

#include "mod_comet_config.h"
#include "comet_buf.h"
#include "comet_hub.h"

/* True when r means to be a WebSocket (its Upgrade names websocket). */
int comet_ws_wanted(const request_rec *r);

/* The checks before the upgrade (see above): OK, or an HTTP status with
 * the reason noted (comet_refuse). */
int comet_ws_check(request_rec *r, const comet_dir_conf_t *dc);

/* Refuse a good handshake with status (the reason comet_refuse noted):
 * the 101, a close frame 4000 + status, and the connection ends.
 * Returns what the handler returns. */
int comet_ws_refuse(request_rec *r, int status);

/* Upgrade: the 101 written on the socket, the bytes the client sent past
 * its handshake collected, and the connection handed to the hub with spec
 * (transport COMET_T_WS; ws settings are filled in here), which sends
 * what is due from the positions on.  Over TLS the hub takes the session
 * over (comet_takeover_start) and adopts it when httpd lets go of the
 * connection.  On success httpd is told the
 * connection is gone (as for a detached subscriber) and the hub owns the
 * subscriptions.  Returns what the handler returns; *adopted says whether
 * the hub took it. */
int comet_ws_park(request_rec *r, const comet_dir_conf_t *dc,
                  comet_hub_t *hub, comet_hub_spec_t *spec, int *adopted);

#endif /* MOD_COMET_WS_H */
