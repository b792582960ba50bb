/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_bus.h -- channels shared by several servers through Redis (or a
 * Redis Cluster): publishing into Redis, and keeping this server's store a
 * copy of the channels its subscribers read.
 *
 * Data in Redis, for a comet channel C (the hash tag {C} keeps all of it in
 * one cluster slot, so one node holds it and one script sees it whole):
 *
 *   <prefix>:{C}:seq    hash  g (generation), n (count within it)
 *   <prefix>:{C}:msgs   stream of the kept messages, entry id "<g>-<n>",
 *                       fields e (event type), d (data), t (publish time,
 *                       Redis' clock, ms), f (sender), MAXLEN the buffer
 *                       length; expires with the message timeout
 *   <prefix>:{C}:subs   hash  member -> "<subscribers>:<expiry ms>", one
 *                       member per server process with subscribers on C
 *   <prefix>:{C}        the pub/sub channel (SPUBLISH on a cluster)
 *
 * A message's seq is g * 2^32 + n: every server gives it the same id,
 * "<COMET_BUS_EPOCH>:<seq>", and a client resumes with it anywhere.  One
 * script (COMET_BUS_SCRIPT_PUBLISH) counts, appends, trims, sets the
 * expiry and publishes at once, so that seqs follow the order of the
 * stream exactly.  When the seq hash is gone (Redis restarted without its
 * data, or it expired), the next publish starts a new generation: above
 * the stream's newest when the stream is still there, else at random (31
 * bits); when a server finds that Redis has gone back (a failover lost the
 * last writes: a client or a server has seen a seq the hash no longer
 * reaches), it moves the hash to the next generation.  Either way, no seq
 * of the lost messages is handed out again, and the stores' feed rules
 * (comet_store_feed) tell every reader behind the change that it missed
 * messages.
 *
 * Each process of a server (one bus each, on a thread of its own)
 * subscribes to the Redis channels of the comet channels its own
 * subscribers read and feeds what comes into the shared store, which wakes
 * the hub of every process with subscribers on it: delivery is the same
 * as for a local publish.  Feeding is a compare-and-set (comet_store_feed),
 * so the processes of one server feed one store without further
 * coordination, and each message is stored once whichever of them is
 * first.  A message that does not follow the store's newest (a gap: the
 * subscription was lost for a while, or the ids started anew) makes the
 * bus fetch the stream from the store's newest on (the sync script) and
 * feed what it gets in order before anything newer.
 *
 * Threads.  The bus runs on its loop's thread (in the module: the Redis
 * thread of each child process).  Other threads hand it requests
 * (comet_bus_submit, comet_bus_call: any thread); every other function is
 * for the loop's thread.
 *
 * Server-independent: APR and POSIX only.
 */
#ifndef COMET_BUS_H
#define COMET_BUS_H

#include <apr_pools.h>

#include "comet_core.h"
#include "comet_loop.h"
#include "comet_redis.h"
#include "comet_store.h"

/* The epoch of every id in a store fed by a bus: the same on all servers,
 * so that an id from one is placed by another (see comet_store_feed). */
#define COMET_BUS_EPOCH 0x7ed15c0du

/* seq of generation g, count n. */
#define COMET_BUS_SEQ(g, n) (((apr_uint64_t)(g) << 32) | (apr_uint64_t)(n))
#define COMET_BUS_GEN(seq)  ((apr_uint32_t)((seq) >> 32))

/* Outcomes of a publish, beside APR_SUCCESS (error codes in APR's user
 * range, after comet_redis.h's). */
#define COMET_BUS_ENOTSENT  (APR_OS_START_USERERR + 110) /* not stored   */
#define COMET_BUS_EUNKNOWN  (APR_OS_START_USERERR + 111) /* lost in flight:
                                                            maybe stored */

typedef struct comet_bus_t comet_bus_t;

typedef struct comet_bus_config_t {
    const comet_redis_url_t *url;
    comet_redis_opts_t  redis;          /* every connection's options      */
    comet_store_t      *store;
    apr_uint32_t        slot;           /* this process's, in the store    */
    comet_wake_fn      *wake;           /* for comet_store_feed            */
    void               *wake_baton;
    const char         *prefix;         /* of every key ("comet")         */
    const char         *member;         /* this process in the subscriber
                                           counts (unique per process)     */
    apr_interval_time_t linger;         /* a Redis subscription stays this
                                           long after this process's last
                                           subscriber of it left (10 s)    */
    apr_interval_time_t count_refresh;  /* counts written again (3 s)      */
    apr_interval_time_t count_ttl;      /* a count not refreshed for this
                                           long is ignored (15 s): a dead
                                           server's go away by themselves  */
    apr_interval_time_t sync_timeout;   /* comet_bus_call waits (2 s)     */
} comet_bus_config_t;

/* Defaults for the intervals above and prefix "comet".  Any thread. */
void comet_bus_config_default(comet_bus_config_t *cfg);

/* A bus on loop (whose wake callback it takes), in p.  The store's limits
 * (buffer length, message timeout, sizes) are Redis' too.  Nothing
 * connects before comet_bus_start.  Loop's thread (before it runs). */
apr_status_t comet_bus_create(comet_bus_t **bus, comet_loop_t *loop,
                              const comet_bus_config_t *cfg, apr_pool_t *p);

/* Connect (and reconnect, with backoff, for good).  Loop's thread. */
apr_status_t comet_bus_start(comet_bus_t *bus);

/* Fail every request still waiting (COMET_BUS_ENOTSENT: "shutting down"),
 * close every connection; later submissions are refused.  Loop's thread,
 * once comet_loop_run has returned (or before it ran). */
void comet_bus_close(comet_bus_t *bus);

/* ---- requests from any thread ------------------------------------------- */

typedef struct comet_bus_req_t comet_bus_req_t;

/* Called once on the bus's thread when req is done; the callee owns req
 * from then on (comet_bus_req_free). */
typedef void comet_bus_done_fn(comet_bus_req_t *req, void *baton);

typedef struct comet_bus_result_t {
    apr_status_t  status;   /* APR_SUCCESS, COMET_BUS_ENOTSENT,
                               COMET_BUS_EUNKNOWN                         */
    comet_msgid_t id;       /* publish: the message's id                  */
    apr_int64_t   count;    /* publish, numsub: subscribers on all servers
                               as counted in Redis (up to count_refresh
                               old)                                       */
    const char   *error;    /* when not APR_SUCCESS: one line, no secret  */
} comet_bus_result_t;

/* A publish of msg (channel, event, data copied), with the sender's
 * identity (from, copied; NULL: msg->from, if any) that travels with the
 * message and is stored with it in every server's copy.
 * NULL when out of memory.  Any thread; O(bytes). */
comet_bus_req_t *comet_bus_req_publish(const comet_publish_t *msg,
                                       const char *from, apr_size_t from_len);

/* Bring this server's copy of channel up to date (subscribing to it in
 * Redis if this process is not yet) and keep it so while this process has
 * subscribers on it.  want: the position a new subscriber comes with (0:
 * none); a position beyond the copy's newest is looked for in Redis.  The
 * channel must exist in the store (the subscriber subscribed first).
 * Success means the copy was in sync at some point after the request;
 * ENOTSENT that Redis could not be asked (the copy is as it was, and is
 * brought up to date when Redis is back).  Any thread. */
comet_bus_req_t *comet_bus_req_sync(const char *channel, apr_size_t len,
                                    apr_uint64_t want);

/* Subscribers of channel on all servers (as counted in Redis).  Any
 * thread. */
comet_bus_req_t *comet_bus_req_numsub(const char *channel, apr_size_t len);

/* Its result; valid once done.  Any thread that owns req. */
const comet_bus_result_t *comet_bus_req_result(const comet_bus_req_t *req);

/* Free a request that was never submitted or that is done.  Any thread
 * that owns it. */
void comet_bus_req_free(comet_bus_req_t *req);

/* Hand req to the bus; done(req, baton) will be called on the bus's
 * thread.  Errors (done is never called, the caller keeps req):
 * COMET_EBADCHAN, COMET_ETOOBIG, COMET_EPROTO, COMET_ERESERVED (the
 * store's rules for a publish), COMET_REDIS_ECLOSED (closed).  Any
 * thread; one short lock. */
apr_status_t comet_bus_submit(comet_bus_t *bus, comet_bus_req_t *req,
                              comet_bus_done_fn *done, void *baton);

/* Submit n requests and wait until all are done or timeout (<= 0: the
 * configured sync_timeout) has passed.  On return, each reqs[i] is done
 * (its result is valid; the caller frees it), or was refused at once (its
 * result says so; the caller frees it), or is still under way: then the
 * bus frees it later and reqs[i] is set to NULL.  Returns APR_SUCCESS
 * when all were done, APR_TIMEUP otherwise.  Any thread but the bus's
 * (a request thread: it blocks). */
apr_status_t comet_bus_call(comet_bus_t *bus, comet_bus_req_t **reqs,
                            apr_size_t n, apr_interval_time_t timeout);

/* ---- state and statistics ----------------------------------------------- */

typedef struct comet_bus_stats_t {
    apr_uint32_t up;            /* 1 while commands can reach Redis       */
    apr_uint32_t channels;      /* subscribed in Redis by this process    */
    apr_uint64_t published;     /* publishes stored                       */
    apr_uint64_t publish_failed;/* not stored, or outcome unknown         */
    apr_uint64_t received;      /* messages fed into the store            */
    apr_uint64_t duplicates;    /* received, already there                */
    apr_uint64_t fetches;       /* syncs of a channel from Redis          */
    apr_uint64_t gaps;          /* feeds that told readers of a loss      */
    apr_uint64_t rollbacks;     /* generations started after a loss       */
} comet_bus_stats_t;

/* Any thread (atomic reads, not one snapshot). */
void comet_bus_stats(comet_bus_t *bus, comet_bus_stats_t *out);

/* The Lua scripts, for tests and for reading (NUL-terminated). */
#define COMET_BUS_SCRIPT_PUBLISH 0
#define COMET_BUS_SCRIPT_SYNC    1
#define COMET_BUS_SCRIPT_BUMP    2
#define COMET_BUS_SCRIPT_COUNT   3
#define COMET_BUS_SCRIPT_NUMSUB  4
const char *comet_bus_script(int which);

#endif /* COMET_BUS_H */
