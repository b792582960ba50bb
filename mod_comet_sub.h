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

/* Register the filter that holds a long-poll's response head back for the
 * hub.  At hook registration. */
void comet_sub_register_filter(void);

#endif /* MOD_COMET_SUB_H */
