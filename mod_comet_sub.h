/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_sub.h -- the comet-subscriber handler (mod_comet_sub.c).
 */
#ifndef MOD_COMET_SUB_H
#define MOD_COMET_SUB_H

#include <httpd.h>

/* Answer a subscriber: at once, or by parking it with this process's hub
 * (detached, suspended or held).  Request thread. */
int comet_subscriber_handler(request_rec *r);

#include "mod_comet_config.h"

/* The channel ids a request names (CometChannel, else the URL path after
 * the <Location>), split at commas and checked; at most max.  OK, or an
 * HTTP status with the reason in r->notes "comet-error".  Request thread. */
int comet_request_channels(request_rec *r, const comet_dir_conf_t *dc,
                           int max, const char ***ids, int *n);

/* Answer status with the reason refuse() left in r->notes as a plain
 * text body (or httpd's own page when there is none).  Request thread. */
int comet_error_response(request_rec *r, int status);

#endif /* MOD_COMET_SUB_H */
