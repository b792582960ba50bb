/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_req.h -- reading a request to a comet location, shared by the
 * subscriber and publisher handlers (mod_comet_req.c): which channels,
 * which transport, the query's arguments, and refusals with a reason.
 * Every function: request thread.
 */
#ifndef MOD_COMET_REQ_H
#define MOD_COMET_REQ_H

#include <httpd.h>

#include "mod_comet_config.h"

/* Refuse r: note why (kept by reference) for the answer, return status. */
int comet_refuse(request_rec *r, int status, const char *why);

/* The reason comet_refuse noted, or NULL. */
const char *comet_refusal(const request_rec *r);

/* Answer status with the reason comet_refuse noted as a one-line plain
 * text body; httpd's own page when there is none (and for 405). */
int comet_error_response(request_rec *r, int status);

/* The value of the query argument name, or NULL; *args caches the parsed
 * query (NULL at first). */
const char *comet_query_arg(request_rec *r, apr_table_t **args,
                            const char *name);

/* The channel ids r names (CometChannel, else the URL path after the
 * <Location>), split at commas and checked (comet_parse_channels); at
 * most max.  OK, or an HTTP status with the reason noted. */
int comet_request_channels(request_rec *r, const comet_dir_conf_t *dc,
                           int max, const char ***ids, int *n);

/* The transport r asks for (its transport= argument, else its Accept
 * header, else long-poll), among CometTransports.  OK and *transport, or
 * 400 / 406 with the reason noted. */
int comet_request_transport(request_rec *r, const comet_dir_conf_t *dc,
                            apr_table_t **args, int *transport);

/* The <Location> (or <LocationMatch> pattern) r was configured by, for
 * log lines that tell an admin where to act. */
const char *comet_request_location(request_rec *r,
                                   const comet_dir_conf_t *dc);

/* CORS (CometAllowOrigin) for a browser's request from another origin:
 * 1 when the location allows r's origin (Access-Control-Allow-Origin and,
 * for a listed origin, -Credentials and Vary are set on r); 0 when r
 * does not come from another origin (no Origin header and no
 * Sec-Fetch-Site: cross-site, or an Origin that is r's own scheme and
 * Host); -1 when it comes from another origin that is not allowed. */
int comet_request_cors(request_rec *r, const comet_dir_conf_t *dc);

#endif /* MOD_COMET_REQ_H */
