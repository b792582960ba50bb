/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_redis_cluster.h -- Redis Cluster on top of comet_redis.h.
 *
 * From the seed nodes of a redis-cluster:// URL the client learns the slot
 * map (CLUSTER SHARDS, Redis 7; CLUSTER SLOTS before), keeps one command
 * connection per node it has to talk to, and routes each command by the
 * hash slot of the key the caller names (CRC16/XMODEM of the key, or of
 * its {hash tag}, modulo 16384).
 *
 * Redirections.  -MOVED <slot> <host:port>: the slot has a new owner: the
 * map is updated at once for that slot (and refreshed whole soon after)
 * and the command goes to the new owner.  -ASK <slot> <host:port>: the
 * slot is being migrated and this key is already on the target: ASKING
 * and the command go to that node, once.  A redirected command was not
 * executed, so sending it again is safe; at most COMET_REDIS_CLUSTER_
 * MAX_REDIRECTS per command, then the caller gets the last error reply.
 * Any other failure is the caller's (see comet_redis.h: a command in flight
 * when its node fails is never sent again automatically).
 *
 * Failover.  When a master's connection goes down, or a node answers
 * CLUSTERDOWN, or a sharded subscription is ended by the server, the map
 * is refreshed from any node that is up, again and again with the
 * connection backoff (backoff_min doubling to backoff_max) while some
 * slot has no master or some master is down; when healthy, every
 * refresh_interval.  Commands for a slot whose master is down fail at
 * once (COMET_REDIS_EDOWN), so that a publisher hears of it, until the map
 * names the promoted replica.
 *
 * Sharded pub/sub.  comet_redis_cluster_subscribe() SSUBSCRIBEs a channel
 * on the master of its slot, through a subscriber connection per master
 * (comet_redis_sub_t).  When the slot moves (resharding, failover) the
 * channel is LOST, moved to the new owner, and READY again with resumed
 * set: the owner fetches what it may have missed.  Keep a comet channel's
 * keys and its Redis channel in one slot with a hash tag, so that one
 * node holds both.
 *
 * State callback: up once every slot has a master whose connection is
 * up; down when that stops being true (a master lost, a slot unserved).
 *
 * Threads: everything on the loop's thread, as in comet_redis.h.
 */
#ifndef COMET_REDIS_CLUSTER_H
#define COMET_REDIS_CLUSTER_H

#include "comet_redis.h"

#define COMET_REDIS_SLOTS 16384
#define COMET_REDIS_CLUSTER_MAX_REDIRECTS 5
/* Nodes one cluster client knows at most (masters, replicas, departed). */
#define COMET_REDIS_CLUSTER_MAX_NODES 512

/* CRC16/XMODEM (polynomial 0x1021, initial 0), as Redis Cluster uses.
 * Any thread; O(len). */
apr_uint16_t comet_redis_crc16(const char *buf, apr_size_t len);

/* The hash slot of key: of the part between the first '{' and the first
 * '}' after it when that part is not empty, else of the whole key.
 * Any thread; O(len). */
unsigned comet_redis_slot(const char *key, apr_size_t len);

typedef struct comet_redis_cluster_t comet_redis_cluster_t;

typedef void comet_redis_cluster_state_fn(void *baton,
                                          comet_redis_cluster_t *cl, int up,
                                          const char *text);

typedef void comet_redis_cluster_sub_fn(void *baton,
                                        comet_redis_cluster_t *cl,
                                        const comet_redis_sub_event_t *ev);

typedef struct comet_redis_cluster_stats_t {
    apr_uint64_t moved;         /* -MOVED followed                          */
    apr_uint64_t asked;         /* -ASK followed                            */
    apr_uint64_t refreshes;     /* slot maps received                       */
    apr_uint64_t map_changes;   /* refreshes that changed some slot's owner */
    apr_size_t   nodes;         /* known nodes                              */
    apr_size_t   masters;       /* in the current map                       */
} comet_redis_cluster_stats_t;

/* A cluster client for url (kind COMET_REDIS_CLUSTER; its seeds) in p,
 * with opts for every connection (NULL: defaults).  sub_fn receives the
 * sharded pub/sub events (may be NULL when not subscribing).  Nothing
 * happens before comet_redis_cluster_start().  The loop must outlive p.
 * Loop's thread. */
apr_status_t comet_redis_cluster_create(comet_redis_cluster_t **cl,
                                        comet_loop_t *loop,
                                        const comet_redis_url_t *url,
                                        const comet_redis_opts_t *opts,
                                        comet_redis_cluster_sub_fn *sub_fn,
                                        void *sub_baton, apr_pool_t *p);

/* Loop's thread. */
void comet_redis_cluster_on_state(comet_redis_cluster_t *cl,
                                  comet_redis_cluster_state_fn *fn,
                                  void *baton);

/* Time between refreshes while healthy (default 30 s).  Loop's thread. */
void comet_redis_cluster_refresh_interval(comet_redis_cluster_t *cl,
                                          apr_interval_time_t interval);

/* Connect to the seeds and learn the map.  Loop's thread. */
apr_status_t comet_redis_cluster_start(comet_redis_cluster_t *cl);

/* Send a command to the master of key's slot (key: the command's key, or
 * any key of the slot; every key of a multi-key command must be in that
 * slot).  Returns and calls back as comet_redis_command(), plus
 * COMET_REDIS_EDOWN at once while the slot has no known master.  Loop's
 * thread; cost O(bytes) plus one malloc (the command is kept for a
 * redirection). */
apr_status_t comet_redis_cluster_command(comet_redis_cluster_t *cl,
                                         const char *key, apr_size_t keylen,
                                         int argc, const char *const *argv,
                                         const apr_size_t *argvlen,
                                         comet_redis_reply_fn *fn,
                                         void *baton);

/* Sharded subscription to channel on its slot's master; READY, LOST,
 * FAILED and MESSAGE events go to sub_fn.  Loop's thread. */
apr_status_t comet_redis_cluster_subscribe(comet_redis_cluster_t *cl,
                                           const char *channel,
                                           apr_size_t len);

/* APR_NOTFOUND when not subscribed.  Loop's thread. */
apr_status_t comet_redis_cluster_unsubscribe(comet_redis_cluster_t *cl,
                                             const char *channel,
                                             apr_size_t len);

/* Ask for a new slot map now (coalesced with one under way).  Loop's
 * thread. */
void comet_redis_cluster_refresh(comet_redis_cluster_t *cl);

/* "host:port" of the master of slot in the current map, or NULL.  Loop's
 * thread. */
const char *comet_redis_cluster_master_of(const comet_redis_cluster_t *cl,
                                          unsigned slot);

int comet_redis_cluster_is_up(const comet_redis_cluster_t *cl);

void comet_redis_cluster_stats(const comet_redis_cluster_t *cl,
                               comet_redis_cluster_stats_t *stats);

/* Close every connection: pending commands fail with COMET_REDIS_ECLOSED;
 * no more events.  Loop's thread, not from inside one of its callbacks. */
void comet_redis_cluster_close(comet_redis_cluster_t *cl);

#endif /* COMET_REDIS_CLUSTER_H */
