/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_redis.h -- channels shared with other servers through Redis
 * (CometRedis), in httpd: this process's bus (comet_bus.h) on its Redis
 * thread, and what the handlers and the publish socket call.  Without
 * CometRedis none of it does anything and comet_shared_enabled() is 0.
 */
#ifndef MOD_COMET_REDIS_H
#define MOD_COMET_REDIS_H

#include <httpd.h>

#include "comet_bus.h"
#include "comet_pubsrv.h"

/* child_init, after comet_bridge_create, with CometRedis: the Redis
 * thread's loop and this process's bus on it (started with the thread).
 * A failure is logged: the process's publishes then fail (503, -ERR). */
void comet_shared_child_init(server_rec *s);

/* This process shares its channels through Redis.  Any thread. */
int comet_shared_enabled(void);

/* Publish msg through Redis and wait for the outcome (at most Redis'
 * command timeout and a second).  APR_SUCCESS: res->id, and
 * res->receivers = the subscribers of all servers as counted in Redis.
 * Otherwise COMET_BUS_ENOTSENT (not stored), COMET_BUS_EUNKNOWN (sent,
 * no answer: maybe stored), or a refusal of the message itself
 * (COMET_EBADCHAN, COMET_ETOOBIG, COMET_EPROTO, COMET_ERESERVED); *why is
 * a line for the client (in r->pool).  Request thread (it blocks, bounded:
 * the Redis thread does the I/O). */
apr_status_t comet_shared_publish(request_rec *r, const comet_publish_t *msg,
                                 comet_publish_result_t *res,
                                 const char **why);

/* The same without waiting, for publishers on threads that must not block
 * (a WebSocket client's, on the hub thread): done(req, baton) is called
 * once on the Redis thread with the outcome (comet_bus_req_result); it
 * owns req and frees it (comet_bus_req_free), and hands the result to its
 * own thread (comet_hub_post for the hub thread).  from (may be NULL) is
 * the sender's identity, kept with the message.  On an error return done
 * is never called.  Any thread. */
apr_status_t comet_shared_publish_async(const comet_publish_t *msg,
                                       const char *from, apr_size_t from_len,
                                       comet_bus_done_fn *done, void *baton);

/* The hub's publish function (comet_hub_config_t.publish) for WebSocket
 * clients: the message goes to the Redis thread and the hub thread goes
 * on.  A failure known at once (no Redis client in this process, the
 * client stopped, out of memory) is returned with *why; one known only later (Redis did
 * not answer, or refused) is counted in CometRedisPublishFailures and
 * logged by the bus, but the client is not told.  Hub thread. */
apr_status_t comet_shared_hub_publish(void *baton, const comet_publish_t *msg,
                                      const char **why);

/* The publish socket's follow function (comet_pubsrv_config_t.follow):
 * this server's copy of the channel is brought up to date and kept so, as
 * for an HTTP subscriber (comet_shared_sync), without waiting.  Publish
 * thread. */
void comet_shared_follow(void *baton, const char *channel, apr_size_t len);

/* The publish socket's publish function (comet_pubsrv_config_t.publish).
 * Publish thread. */
apr_status_t comet_shared_pubsock_publish(void *baton,
                                         comet_pubsrv_pending_t *pending,
                                         const comet_publish_t *msg);

/* Before a subscriber reads: bring this server's copy of its channels up
 * to date, for a subscriber at seqs (0: none), and keep it so.  synced[i]
 * is set to 1 for each channel that is (0: Redis could not be asked in
 * time; the copy is brought up to date when it can be, and the hub
 * delivers then).  Request thread (it blocks, bounded by a couple of
 * seconds in all; not at all while Redis is known to be down). */
void comet_shared_sync(request_rec *r, const char *const *ids,
                      const apr_uint64_t *seqs, int nchan, int *synced);

/* This process's counters (zeros without CometRedis).  Any thread. */
void comet_shared_stats(comet_bus_stats_t *out);

#endif /* MOD_COMET_REDIS_H */
