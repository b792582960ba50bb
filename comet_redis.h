/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_redis.h -- an asynchronous Redis client on a comet_loop.
 *
 * Why our own client and not hiredis.  Debian 12 ships hiredis 0.14: no
 * RESP3 (so no push messages beside replies, no HELLO), no help with
 * Redis Cluster, and its async API wants an adapter for every event loop
 * while ours (comet_loop.h) is small and already carries the hub.  We have
 * a fuzzed RESP request codec (comet_resp.c) and a reply parser of the same
 * design (comet_resp_reply.c); what remains is a connection state machine,
 * and owning it lets every buffer carry our bounds, every failure our log
 * line, and every callback a documented thread.
 *
 * Threads.  Everything here runs on the loop's thread: the thread inside
 * comet_loop_run() of the loop the client was created on (in mod_comet the
 * hub thread, or a per-child Redis thread of its own), or, while no thread
 * runs the loop, the one thread that owns it.  Callbacks are called on it
 * too, never from inside the function that queued the command.  Nothing
 * here locks; other threads hand work to the loop with comet_loop_wake().
 *
 * A connection (comet_redis_t):
 *   - connects without blocking (TCP over IPv4 or IPv6, or a Unix socket)
 *     within connect_timeout, then says HELLO 3 (with AUTH user password
 *     when a password is set, and SETNAME); a server that does not know
 *     HELLO (before Redis 6) gets AUTH and stays on RESP2; then SELECT db;
 *   - queues commands FIFO: each queued command is serialised at once into
 *     the output buffer, and the buffer goes out on the loop's next turn,
 *     so a burst costs a few large writes (pipelining); replies are matched
 *     in order to the callbacks;
 *   - bounds: max_pending commands, max_out bytes waiting to be written,
 *     max_in bytes of one reply (plus what was read after it), and the
 *     reply parser's limits (depth, elements, bulk, line);
 *   - command_timeout: a reply that has not come in time means the
 *     connection is stuck (replies come in order, so no later one can come
 *     first): the connection is dropped and reconnected;
 *   - reconnects by itself after any failure, after a delay that doubles
 *     from backoff_min to backoff_max with jitter (a random half of it), so
 *     that the children of many servers do not all come back at once;
 *   - tells its owner when it is up and down (comet_redis_on_state).
 *
 * What happens to a command, exactly once:
 *   - the callback gets its reply (status APR_SUCCESS; a Redis error is a
 *     reply of type COMET_REPLY_ERROR), or
 *   - the callback gets a failure status and a text, reply NULL:
 *       COMET_REDIS_ELOST    the connection was lost after the command was
 *                            written: it may or may not have run
 *       COMET_REDIS_EDOWN    the connection was lost before the command was
 *                            written whole: it did not run
 *       APR_TIMEUP           no reply within command_timeout (may have run)
 *       COMET_REDIS_ECLOSED  comet_redis_close() while it waited
 *     Nothing is ever sent again automatically: the caller decides (a
 *     publish may not be repeated blindly, an idempotent read may).
 *   - or comet_redis_command() itself returns an error, and the callback
 *     is never called: COMET_REDIS_EDOWN while the connection is down and
 *     waiting to reconnect (fail fast: the caller reports it at once rather
 *     than piling commands up), APR_ENOSPC when max_pending or max_out is
 *     reached, COMET_REDIS_ECLOSED after close.  While a connection attempt
 *     is under way (also the first one) commands are held and go out once
 *     the handshake is done; they fail with the attempt if it fails.
 *
 * Pub/sub (comet_redis_sub_t) is a connection of its own that keeps a set
 * of channels, subscribes to them whenever it is up (again after every
 * reconnect) and reports per channel: READY (subscribed; "resumed" when
 * it had been lost before, so that the owner fetches what it may have
 * missed meanwhile), LOST (the connection went down or the server ended
 * the subscription: messages may be missed until READY comes again),
 * FAILED (the server refused it: it left the set) and MESSAGE.
 *
 * Logging goes through comet_log (comet_core.h).  No log line and no error
 * text carries a password: connections are named by the URL's display
 * form, which never has one.
 */
#ifndef COMET_REDIS_H
#define COMET_REDIS_H

#include <apr_pools.h>
#include <apr_network_io.h>

#include "comet_core.h"
#include "comet_buf.h"
#include "comet_loop.h"
#include "comet_resp_reply.h"

/* Error codes, in APR's user range above the core's own (comet_core.h). */
#define COMET_REDIS_EDOWN    (APR_OS_START_USERERR + 100) /* not connected */
#define COMET_REDIS_ELOST    (APR_OS_START_USERERR + 101) /* lost in flight */
#define COMET_REDIS_ECLOSED  (APR_OS_START_USERERR + 102) /* client closed  */
#define COMET_REDIS_EAUTH    (APR_OS_START_USERERR + 103) /* hello refused */
#define COMET_REDIS_EURL     (APR_OS_START_USERERR + 104) /* bad URL         */

/* A short English text for the codes above, else comet_strerror().
 * Any thread. */
const char *comet_redis_strerror(apr_status_t rv, char *buf, apr_size_t len);

/* ---- URLs -----------------------------------------------------------------
 *   redis://[user:password@]host[:port][/db]
 *   unix:/path/redis.sock[?db=N][&user=NAME]
 *   redis-cluster://[user:password@]host1:port1,host2:port2,...
 * host is a name, an IPv4 address or a bracketed IPv6 address ([::1]);
 * port defaults to 6379; user and password may be %-encoded (a password
 * with '@', ':' or '/').  A cluster has only database 0.  A Unix socket's
 * URL has no room for a password: give it (or any password, so that it is
 * not written in the configuration) with comet_redis_password_file().
 * A password without a user authenticates as Redis' "default" user. */

#define COMET_REDIS_TCP      1
#define COMET_REDIS_UNIX     2
#define COMET_REDIS_CLUSTER  3

typedef struct comet_redis_addr_t {
    const char *host;       /* TCP: name or address (no brackets)          */
    apr_port_t  port;
    const char *path;       /* Unix socket, else NULL                     */
} comet_redis_addr_t;

typedef struct comet_redis_url_t {
    int                 kind;
    comet_redis_addr_t *addrs;      /* 1, or the cluster's seed nodes       */
    apr_size_t          naddrs;
    int                 db;
    const char         *user;       /* NULL: "default"                      */
    const char         *password;   /* NULL: no AUTH                        */
    const char         *display;    /* for logs: the URL, password "***"    */
} comet_redis_url_t;

#define COMET_REDIS_MAX_SEEDS 64

/* Parse text into *url (in p).  On failure returns COMET_REDIS_EURL with a
 * message in err that names what is wrong and never repeats the password.
 * Any thread; no I/O (names are resolved when connecting). */
apr_status_t comet_redis_url_parse(comet_redis_url_t **url, const char *text,
                                   apr_pool_t *p, char *err,
                                   apr_size_t errlen);

/* Read a password from the first line of a file (trailing CR/LF dropped;
 * at most 512 bytes; empty refused) and set it on url, replacing one the
 * URL had.  The file need be readable only at start-up (by root, before
 * httpd drops its privileges).  Error texts name the file, never its
 * content.  Any thread; blocking file I/O. */
apr_status_t comet_redis_url_password_file(comet_redis_url_t *url,
                                           const char *path, apr_pool_t *p,
                                           char *err, apr_size_t errlen);

/* ---- options ------------------------------------------------------------ */

typedef struct comet_redis_opts_t {
    const char          *name;            /* CLIENT SETNAME; NULL: none   */
    apr_interval_time_t  connect_timeout; /* connect + handshake (2 s)    */
    apr_interval_time_t  command_timeout; /* per reply (5 s)              */
    apr_interval_time_t  backoff_min;     /* first reconnect delay (100 ms) */
    apr_interval_time_t  backoff_max;     /* cap (5 s)                    */
    apr_size_t           max_pending;     /* commands queued (100,000)    */
    apr_size_t           max_out;         /* bytes to write (32 MB)       */
    apr_size_t           max_in;          /* bytes of input (80 MB)       */
    apr_size_t           max_channels;    /* of a subscriber (1,000,000)  */
    int                  resp2;           /* skip HELLO: RESP2 only       */
    comet_resp_reply_limits_t reply;      /* max_bulk 64 MB, ...          */
} comet_redis_opts_t;

/* Any thread. */
void comet_redis_opts_default(comet_redis_opts_t *opts);

/* ---- a connection ------------------------------------------------------- */

typedef struct comet_redis_t comet_redis_t;

/* A reply or a failure (see above).  reply and error are valid during the
 * call only.  error is a one-line text for a log or a client ("connection
 * to redis://127.0.0.1:6379 lost: Connection reset by peer"); NULL with a
 * reply. */
typedef void comet_redis_reply_fn(void *baton, apr_status_t status,
                                  const comet_resp_reply_t *reply,
                                  const char *error);

/* up: 1 when the handshake is done, 0 when a connection that was up went
 * down (and once when the first attempts fail before any was up); text
 * says why.  Called after the commands in flight have been failed, so a
 * callback that queues a command while down gets COMET_REDIS_EDOWN. */
typedef void comet_redis_state_fn(void *baton, comet_redis_t *c, int up,
                                  apr_status_t why, const char *text);

/* Out-of-band data: RESP3 pushes, and in RESP2 the pub/sub arrays of a
 * subscribed connection.  Valid during the call only. */
typedef void comet_redis_push_fn(void *baton, comet_redis_t *c,
                                 const comet_resp_reply_t *push);

/* A connection to addr (NULL: url->addrs[0]) with url's user, password and
 * db, in p (opts copied; NULL: the defaults).  Nothing happens until
 * comet_redis_start().  The loop must outlive p.  A cleanup of p closes
 * the socket without calling any callback (call comet_redis_close() first
 * to have the pending callbacks called).  Loop's thread. */
apr_status_t comet_redis_create(comet_redis_t **c, comet_loop_t *loop,
                                const comet_redis_url_t *url,
                                const comet_redis_addr_t *addr,
                                const comet_redis_opts_t *opts,
                                apr_pool_t *p);

/* Set before start.  Loop's thread. */
void comet_redis_on_state(comet_redis_t *c, comet_redis_state_fn *fn,
                          void *baton);
void comet_redis_on_push(comet_redis_t *c, comet_redis_push_fn *fn,
                         void *baton);

/* Begin connecting.  Loop's thread. */
apr_status_t comet_redis_start(comet_redis_t *c);

/* Queue a command of argc arguments (argvlen NULL: NUL-terminated
 * strings).  APR_SUCCESS: fn will be called exactly once, later (fn may
 * be NULL: the reply is dropped).  Otherwise fn is never called (see
 * above).  SUBSCRIBE and the like are accounted as such (they get their
 * confirmations, not one reply), but their pushes go to the push callback:
 * the comet_redis_sub_* functions are the way to subscribe.  Loop's
 * thread; cost O(bytes of the command). */
apr_status_t comet_redis_command(comet_redis_t *c, int argc,
                                 const char *const *argv,
                                 const apr_size_t *argvlen,
                                 comet_redis_reply_fn *fn, void *baton);

/* The same with NUL-terminated arguments ending with NULL. */
apr_status_t comet_redis_commandv(comet_redis_t *c, comet_redis_reply_fn *fn,
                                  void *baton, ...);

/* Queue a command already in RESP (one "*<n>" array of bulks, as
 * comet_redis_format() writes it); used to send a command again on
 * another connection (cluster redirections).  Loop's thread. */
apr_status_t comet_redis_command_resp(comet_redis_t *c, const char *resp,
                                      apr_size_t len,
                                      comet_redis_reply_fn *fn, void *baton);

/* Stop: close the socket, fail every pending command with
 * COMET_REDIS_ECLOSED, never reconnect.  The state callback is not called.
 * Safe inside any of its callbacks.  Loop's thread. */
void comet_redis_close(comet_redis_t *c);

/* Loop's thread; O(1). */
int comet_redis_is_up(const comet_redis_t *c);
int comet_redis_proto(const comet_redis_t *c);      /* 2 or 3; 0 never up */
const char *comet_redis_name(const comet_redis_t *c); /* "redis://h:p" */
apr_size_t comet_redis_pending(const comet_redis_t *c);

typedef struct comet_redis_stats_t {
    apr_uint64_t commands;      /* queued                                  */
    apr_uint64_t replies;       /* matched to a command                    */
    apr_uint64_t pushes;        /* out-of-band                             */
    apr_uint64_t writes;        /* write() calls that wrote something      */
    apr_uint64_t connects;      /* handshakes completed                    */
    apr_uint64_t failures;      /* connections or attempts that failed     */
} comet_redis_stats_t;

void comet_redis_stats(const comet_redis_t *c, comet_redis_stats_t *stats);

/* Append one command in RESP to out (argvlen NULL: strlen).  Any thread
 * that owns out. */
apr_status_t comet_redis_format(comet_buf_t *out, int argc,
                                const char *const *argv,
                                const apr_size_t *argvlen);

/* ---- pub/sub ------------------------------------------------------------ */

typedef struct comet_redis_sub_t comet_redis_sub_t;

#define COMET_REDIS_SUB_MESSAGE 1   /* payload on channel                   */
#define COMET_REDIS_SUB_READY   2   /* subscribed (resumed: after a LOST)   */
#define COMET_REDIS_SUB_LOST    3   /* may miss messages until READY        */
#define COMET_REDIS_SUB_FAILED  4   /* refused; no longer in the set        */

typedef struct comet_redis_sub_event_t {
    int          type;
    int          sharded;       /* SSUBSCRIBE / smessage                    */
    int          resumed;       /* READY after LOST: fetch what was missed  */
    const char  *channel;
    apr_size_t   channel_len;
    const char  *payload;       /* MESSAGE                                  */
    apr_size_t   payload_len;
    const char  *error;         /* LOST, FAILED: why (one line)             */
} comet_redis_sub_event_t;

/* Valid during the call only.  The callback may subscribe and unsubscribe
 * (also the event's channel). */
typedef void comet_redis_sub_fn(void *baton, comet_redis_sub_t *sub,
                                const comet_redis_sub_event_t *ev);

/* A subscriber connection (see comet_redis_create for the arguments and
 * p's lifetime).  Loop's thread. */
apr_status_t comet_redis_sub_create(comet_redis_sub_t **sub,
                                    comet_loop_t *loop,
                                    const comet_redis_url_t *url,
                                    const comet_redis_addr_t *addr,
                                    const comet_redis_opts_t *opts,
                                    comet_redis_sub_fn *fn, void *baton,
                                    apr_pool_t *p);

/* Begin connecting.  Loop's thread. */
apr_status_t comet_redis_sub_start(comet_redis_sub_t *sub);

/* Add channel to the set (SSUBSCRIBE when sharded) and subscribe now if
 * the connection is up, else when it comes up; READY or FAILED follows.
 * Subscribing to a channel in the set again does nothing.  APR_ENOSPC
 * past max_channels.  Loop's thread; O(channel bytes). */
apr_status_t comet_redis_sub_subscribe(comet_redis_sub_t *sub,
                                       const char *channel, apr_size_t len,
                                       int sharded);

/* Take channel out of the set (and UNSUBSCRIBE it if subscribed); no
 * event follows, and messages still on their way are dropped.
 * APR_NOTFOUND when not in the set.  Loop's thread. */
apr_status_t comet_redis_sub_unsubscribe(comet_redis_sub_t *sub,
                                         const char *channel, apr_size_t len);

/* Channels in the set, and of them subscribed now.  Loop's thread. */
apr_size_t comet_redis_sub_count(const comet_redis_sub_t *sub);
apr_size_t comet_redis_sub_active(const comet_redis_sub_t *sub);

/* The state callback of its connection (comet_redis_on_state() on it
 * would take the subscriber's place).  Called after the subscriber has
 * handled the change (after the LOST events of a down).  Loop's thread. */
void comet_redis_sub_on_state(comet_redis_sub_t *sub,
                              comet_redis_state_fn *fn, void *baton);

/* Its connection (for stats, is_up, name).  Send no commands on it and
 * set no callbacks.  Loop's thread. */
comet_redis_t *comet_redis_sub_conn(comet_redis_sub_t *sub);

/* Close the connection and forget the set; no event follows.  Loop's
 * thread. */
void comet_redis_sub_close(comet_redis_sub_t *sub);

#endif /* COMET_REDIS_H */
