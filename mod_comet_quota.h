/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_quota.h -- CometMaxNewChannelsPerClient (mod_comet_quota.c):
 * in each child process, how many subscriptions to channels that were
 * never published to each client address holds.  Those are what a
 * subscriber can make the store create; the store keeps them within the
 * subscribers' share (comet_store.h), and this keeps one client from
 * taking all of that share.
 *
 * A client is r->useragent_addr (so mod_remoteip makes it the browser
 * behind a trusted proxy): an IPv4 address, or an IPv6 /64 (one host
 * usually has a whole /64).
 */
#ifndef MOD_COMET_QUOTA_H
#define MOD_COMET_QUOTA_H

#include <httpd.h>

/* Most subscriptions one count may hold back at once (a tag holds the
 * count in its low bits): CometMaxChannels' upper bound. */
#define COMET_QUOTA_MAX_TAKE 1024

/* Count n (1..COMET_QUOTA_MAX_TAKE) more for r's client when its count
 * stays within max: APR_SUCCESS and *tag, which names what was taken for
 * comet_quota_release.  Otherwise APR_EAGAIN (over max) or APR_ENOMEM (the
 * table cannot grow), nothing taken; *held is the client's count then.
 * Request thread. */
apr_status_t comet_quota_take(request_rec *r, apr_uint32_t n,
                              apr_uint32_t max, apr_uint32_t *tag,
                              apr_uint32_t *held);

/* Give back what tag took (0: nothing).  The signature of the hub's
 * on_end callback (baton unused).  Any thread: a request thread, or the
 * hub thread once the hub owns the subscriber. */
void comet_quota_release(void *baton, apr_uint32_t tag);

#endif /* MOD_COMET_QUOTA_H */
