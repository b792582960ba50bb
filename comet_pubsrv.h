/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_pubsrv.h -- the publish socket's server: the Redis protocol (RESP)
 * spoken on a comet_loop, so that redis-cli, redis-benchmark and the Redis
 * client libraries can publish to the store.
 *
 * Commands (names are case-insensitive):
 *   PUBLISH <channel> <message>        :<subscribers that received it>
 *   PUBSUB NUMSUB [channel ...]        channel, count pairs
 *   PUBSUB CHANNELS [pattern]          channels with subscribers (glob)
 *   PUBSUB NUMPAT                      :0 (nobody subscribes by pattern)
 *   PING [msg]  ECHO <msg>  QUIT  RESET
 *   HELLO [2|3 [AUTH u p] [SETNAME n]] server map; RESP2 and RESP3
 *   COMMAND [COUNT|DOCS|LIST|INFO ...] enough for client libraries
 *   CLIENT SETNAME|GETNAME|SETINFO|ID|INFO|LIST|NO-EVICT|NO-TOUCH|REPLY ON
 *   SELECT 0   INFO [section]   CONFIG GET <pattern> (empty)
 *   AUTH                               refused: the socket's file
 *                                      permissions are the access control
 * Extensions:
 *   COMET.PUBLISH <channel> <event-type> <message>
 *   COMET.INFO <channel>               map: messages bytes subscribers
 *                                      published last_id last_publish
 *                                      (null when there is no such channel)
 *   COMET.DELETE <channel>             :<subscribers told>, null when none
 *
 * Errors are "-ERR <text>" (Redis wording where Redis has one).  Malformed
 * framing is answered "-ERR Protocol error: ..." and that connection is
 * closed after the reply; so is a bulk string declared longer than the
 * largest message by more than COMET_PUBSRV_BULK_SLACK bytes, which cannot
 * be skipped without reading it.  A message up to that much too large is
 * refused and the connection stays usable.
 *
 * Memory per connection is bounded: its input buffer holds at most one
 * command (the largest message plus COMET_PUBSRV_BULK_SLACK plus 64 KiB of
 * other arguments; a longer command is a protocol error), and while its
 * unsent replies pass max_output the server stops reading from it and
 * runs no more of its commands.  A client that stays over that bound
 * without taking any of its replies for stuck_timeout is disconnected.
 *
 * Server-independent: APR and POSIX only.  The connections are
 * comet_pubsrv.c's, the commands comet_pubcmd.c's.
 *
 * Threads: everything runs on the loop's thread, which in the module is
 * the publish thread (a loop of its own, not the hub thread's), except
 * comet_pubsrv_stats (any thread).
 */
#ifndef COMET_PUBSRV_H
#define COMET_PUBSRV_H

#include <apr_pools.h>

#include "comet_core.h"
#include "comet_loop.h"
#include "comet_store.h"

/* Bytes a declared bulk may exceed the largest message and still be read
 * (and refused with a reply), rather than end the connection. */
#define COMET_PUBSRV_BULK_SLACK   (64 * 1024)

typedef struct comet_pubsrv_t comet_pubsrv_t;

typedef struct comet_pubsrv_config_t {
    comet_store_t *store;
    int            listen_fd;      /* a listening, non-blocking stream
                                      socket (not owned: never closed
                                      here), or -1: clients only come
                                      through comet_pubsrv_adopt        */
    apr_size_t     max_message;    /* bytes of a message; 0: the store's */
    comet_wake_fn *wake;           /* passed to comet_store_publish and
                                      comet_store_delete                */
    void          *wake_baton;
    apr_uint32_t   max_clients;    /* connections at once; 0: 1024      */
    apr_size_t     max_output;     /* unsent reply bytes past which a
                                      client is not read; 0: 256 KiB     */
    apr_interval_time_t stuck_timeout; /* 0: 30 s                       */
    const char    *version;        /* shown by HELLO and INFO; may be NULL */
} comet_pubsrv_config_t;

/* A server on loop, in p.  Watches cfg->listen_fd (when >= 0) at once.
 * The loop's thread (the publish thread), before or while the loop runs.
 * p must be destroyed before the loop's pool, and only while the loop is
 * not running: its cleanup closes every client connection. */
apr_status_t comet_pubsrv_create(comet_pubsrv_t **srv, comet_loop_t *loop,
                                 const comet_pubsrv_config_t *cfg,
                                 apr_pool_t *p);

/* Serve an already connected stream socket (the server owns fd from now
 * on, also on failure, when it is closed).  APR_EAGAIN when max_clients
 * are connected.  The loop's thread (the publish thread). */
apr_status_t comet_pubsrv_adopt(comet_pubsrv_t *srv, int fd);

typedef struct comet_pubsrv_stats_t {
    apr_uint32_t clients;          /* connected now                        */
    apr_uint64_t accepted;         /* connections since start              */
    apr_uint64_t commands;         /* commands run                         */
    apr_uint64_t publishes;        /* messages stored by PUBLISH and
                                      COMET.PUBLISH                         */
    apr_uint64_t errors;           /* error replies                        */
    apr_uint64_t dropped;          /* closed for a protocol error, a
                                      refused bulk or being stuck          */
} comet_pubsrv_stats_t;

/* A snapshot of the counters (each read on its own).  Any thread. */
void comet_pubsrv_stats(comet_pubsrv_t *srv, comet_pubsrv_stats_t *out);

#endif /* COMET_PUBSRV_H */
