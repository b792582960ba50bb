/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_pub.h -- the comet-publisher handler (mod_comet_pub.c).
 */
#ifndef MOD_COMET_PUB_H
#define MOD_COMET_PUB_H

#include <httpd.h>

/* Publish to, inspect or delete the channel a request names.  Request
 * thread. */
int comet_publisher_handler(request_rec *r);

/* Find the optional functions of other modules it uses (mod_authz_core's
 * authz_some_auth_required).  The optional_fn_retrieve hook. */
void comet_pub_optional_fns(void);

#endif /* MOD_COMET_PUB_H */
