/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_pubsrv.h -- the publish socket's server: the Redis protocol (RESP)
 * spoken on a comet_loop, so that redis-cli, redis-benchmark and the Redis
 * client libraries can publish to the store, and listen to it.
 *
 * Commands (names are case-insensitive):
 *   PUBLISH <channel> <message>        :<subscribers that received it>
 *   PUBSUB NUMSUB [channel ...]        channel, count pairs
 *   PUBSUB CHANNELS [pattern]          channels with subscribers (glob)
 *   PUBSUB NUMPAT                      patterns listened to (the store's
 *                                      sum over processes)
 *   SUBSCRIBE / UNSUBSCRIBE / PSUBSCRIBE / PUNSUBSCRIBE  as Redis: pushes
 *                                      (RESP2 arrays, RESP3 push types),
 *                                      Redis' subscribed-mode rules
 *                                      (comet_pubsub.c, with the server's
 *                                      own store slot: cfg.slot/wake_fd)
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
 *   COMET.SUBSCRIBE <channel> [FROM <id>]  comet.message pushes with id,
 *                                      event and sender; a backlog after
 *                                      <id> first, comet.missed when part
 *                                      of it is gone
 *
 * Errors are "-ERR <text>" (Redis wording where Redis has one).  Malformed
 * framing is answered "-ERR Protocol error: ..." and that connection is
 * closed after the reply; so is a bulk string declared longer than the
 * largest message by more than COMET_PUBSRV_BULK_SLACK bytes, which cannot
 * be skipped without reading it.  A message up to that much too large is
 * refused and the connection stays usable.
 *
 * Bounds (the defaults are comet_pubsrv.c's; the module sets its own from
 * the directives):
 *   - at most max_clients connections; a connection that finds every
 *     process of the server full (see "Fair accept") is told "-ERR max
 *     number of clients reached" in answer to its first command (or after
 *     COMET_PUBSRV_LINGER without one) and closed in order (below); at
 *     most COMET_PUBSRV_REFUSING_MAX are handled so at once, more are
 *     sent the line and closed at once;
 *   - a connection's input costs nothing while it holds no unfinished
 *     command (input is read into one buffer of the server's, and only
 *     the unfinished tail of a read is kept per connection); an unfinished
 *     command is at most the largest message plus COMET_PUBSRV_BULK_SLACK
 *     plus 64 KiB of other arguments (longer: a protocol error), and all
 *     the connections' unfinished commands together at most max_input
 *     bytes: the connection whose input would pass it is told so and
 *     closed;
 *   - while a connection's unsent replies pass max_output the server stops
 *     reading from it and runs no more of its commands; one that takes
 *     none of its replies for stuck_timeout is disconnected;
 *   - a command begun must be complete within command_timeout (a half-sent
 *     bulk), or the connection is told so and closed;
 *   - a connection that completes no command for idle_timeout is closed
 *     (when idle_timeout is not 0), unless it is subscribed;
 *   - a subscribed connection whose unsent output would pass max_pending
 *     is closed (counted in dropped_slow); its backlog (COMET.SUBSCRIBE
 *     FROM) is read a slice at a time while its output is under
 *     max_output, and so never passes it.
 * Every connection has one timer for all of these: the loop must have
 * room for comet_pubsrv_timers(max_clients) timers, and a timer that
 * cannot be armed closes its connection (logged, counted in dropped).
 *
 * Closing in order: a connection closed by the server (an error reply, a
 * refusal) gets its last reply, then a half-close (shutdown for writing),
 * and its input is read and thrown away until the client closes, for at
 * most COMET_PUBSRV_LINGER (or COMET_PUBSRV_LINGER_BYTES), so that a
 * client still sending its command is not cut off before it reads why
 * (no broken pipe).
 *
 * Fair accept.  Several processes may serve one listening socket, each
 * with its own server.  Given a shared comet_pubsrv_peers_t, a server at
 * its max_clients stops accepting while another live process has room,
 * so that one takes the connection; only when all are full does it accept
 * to refuse.
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

/* How long, and how many bytes of its input, a connection closed in order
 * is given to finish sending before it is closed for good. */
#define COMET_PUBSRV_LINGER       apr_time_from_sec(2)
#define COMET_PUBSRV_LINGER_BYTES (64 * 1024 * 1024)

/* Refused connections being closed in order at once; more are closed
 * after a best-effort error line. */
#define COMET_PUBSRV_REFUSING_MAX 64

/* Channels and patterns one connection may subscribe to. */
#define COMET_PUBSRV_MAX_SUBS     65536

typedef struct comet_pubsrv_t comet_pubsrv_t;

/* Publishing elsewhere than into the store (in the module: through Redis,
 * see comet_bus.h).  With a publish function set, PUBLISH and
 * COMET.PUBLISH hand the message to it with a pending reply; whoever
 * finishes the publish calls comet_pubsrv_published, from any thread, and
 * the reply goes out in its place among the connection's replies (the
 * replies of commands run meanwhile wait behind it).  A connection has at
 * most COMET_PUBSRV_PIPELINE publishes waiting: past that, it is not read
 * until one is done.  A publish function that returns an error has not
 * taken the message (the reply is that error, COMET_ETOOBIG and the like
 * named as the store names them) and must not call
 * comet_pubsrv_published. */
typedef struct comet_pubsrv_pending_t comet_pubsrv_pending_t;
typedef apr_status_t comet_pubsrv_publish_fn(void *baton,
                                             comet_pubsrv_pending_t *pending,
                                             const comet_publish_t *msg);

#define COMET_PUBSRV_PIPELINE 1024

/* The outcome of a publish handed out: receivers with APR_SUCCESS, else
 * the error line for the client ("ERR ..."; "-" is added).  Exactly once
 * per pending reply; the connection may have gone meanwhile.  Any
 * thread; one short lock and a wake of the server's loop. */
void comet_pubsrv_published(comet_pubsrv_pending_t *pending, apr_status_t rv,
                            apr_int64_t receivers, const char *error);

/* The processes serving one listening socket: one record each, in memory
 * they all share (e.g. an anonymous shared mapping made before fork).
 * Robust to a process dying at any instant: a record names its process,
 * and one whose process is gone counts for nothing and is taken over. */
typedef struct comet_pubsrv_peers_t comet_pubsrv_peers_t;

/* Bytes of shared memory for n processes.  Any thread. */
apr_size_t comet_pubsrv_peers_size(apr_uint32_t n);

/* Format mem (comet_pubsrv_peers_size(n) bytes, zeroed or not) for n
 * processes.  Before any server uses it (in the module: the parent, in
 * post_config).  Any thread. */
comet_pubsrv_peers_t *comet_pubsrv_peers_format(void *mem, apr_uint32_t n);

/* Bytes of the largest command a connection may send, for messages of at
 * most max_message bytes (one connection's unfinished input, at most).
 * Any thread. */
apr_size_t comet_pubsrv_command_max(apr_size_t max_message);

/* Timers a loop needs for a server of max_clients (0: the default).  Any
 * thread. */
apr_size_t comet_pubsrv_timers(apr_uint32_t max_clients);

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
    apr_size_t     max_input;      /* bytes of unfinished commands of all
                                      connections together; 0: 32 MiB or
                                      four of the largest, whichever is
                                      more; never less than one          */
    apr_interval_time_t stuck_timeout;   /* 0: 30 s                     */
    apr_interval_time_t command_timeout; /* 0: 10 s                     */
    apr_interval_time_t idle_timeout;    /* 0: none                     */
    comet_pubsrv_peers_t *peers;   /* shared with the other processes
                                      on listen_fd, or NULL             */
    const char    *version;        /* shown by HELLO and INFO; may be NULL */
    /* Subscribers (SUBSCRIBE, PSUBSCRIBE, COMET.SUBSCRIBE): a process slot
     * of the store that this server alone drains, and its wakeup fd (not
     * owned; 0 or -1: no subscribers here, the commands are refused). */
    int            wake_fd;
    apr_uint32_t   slot;
    apr_size_t     max_pending;    /* unsent bytes of a subscribed
                                      connection past which it is dropped;
                                      0: 1 MiB                          */
    comet_pubsrv_publish_fn *publish;  /* NULL: into the store (above)   */
    void          *publish_baton;
    /* A channel that a connection of this process has begun to listen to
     * (SUBSCRIBE, COMET.SUBSCRIBE): where channels are shared with other
     * servers, the code that brings their messages here starts following
     * it.  Must not block.  May be NULL. */
    void         (*follow)(void *baton, const char *channel, apr_size_t len);
    void          *follow_baton;
} comet_pubsrv_config_t;

/* A server on loop, in p.  Watches cfg->listen_fd (when >= 0) at once;
 * with cfg->publish set it takes the loop's wake callback.
 * The loop's thread (the publish thread), before or while the loop runs.
 * p must be destroyed before the loop's pool, and only while the loop is
 * not running: its cleanup closes every client connection. */
apr_status_t comet_pubsrv_create(comet_pubsrv_t **srv, comet_loop_t *loop,
                                 const comet_pubsrv_config_t *cfg,
                                 apr_pool_t *p);

/* Serve an already connected stream socket (the server owns fd from now
 * on, also on failure, when it is closed).  APR_EAGAIN when max_clients
 * are connected (the client is refused in order).  The loop's thread (the
 * publish thread). */
apr_status_t comet_pubsrv_adopt(comet_pubsrv_t *srv, int fd);

typedef struct comet_pubsrv_stats_t {
    apr_uint32_t clients;          /* connected now                        */
    apr_uint64_t accepted;         /* connections since start              */
    apr_uint64_t commands;         /* commands run                         */
    apr_uint64_t publishes;        /* messages stored by PUBLISH and
                                      COMET.PUBLISH                         */
    apr_uint64_t errors;           /* error replies                        */
    apr_uint64_t dropped;          /* closed for a protocol error, a
                                      refused bulk, being stuck, passing
                                      max_input, or a timer that could not
                                      be armed                             */
    apr_uint64_t timeouts;         /* closed by command_timeout or
                                      idle_timeout                         */
    apr_uint64_t refused;          /* turned away: max_clients reached
                                      (in every process)                   */
    apr_size_t   input_bytes;      /* held now for unfinished commands (at
                                      most max_input)                      */
    apr_uint32_t subscribers;      /* connections in subscribed mode now   */
    apr_uint32_t channels;         /* channels they subscribe to, now      */
    apr_uint32_t patterns;         /* distinct patterns, now               */
    apr_uint64_t pushes;           /* messages pushed to subscribers       */
    apr_uint64_t dropped_slow;     /* subscribers dropped for passing
                                      max_pending (also in dropped)        */
    apr_uint64_t missed;           /* subscribers closed because messages
                                      of their channel left its buffer
                                      before this process read them (also
                                      in dropped)                          */
} comet_pubsrv_stats_t;

/* A snapshot of the counters (each read on its own).  Any thread. */
void comet_pubsrv_stats(comet_pubsrv_t *srv, comet_pubsrv_stats_t *out);

#endif /* COMET_PUBSRV_H */
