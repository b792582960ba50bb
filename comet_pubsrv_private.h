/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_pubsrv_private.h -- what the two halves of the publish socket's
 * server share, and nobody else: comet_pubsrv.c (connections: listener,
 * accept, read, flush, bounds, timers) and comet_pubcmd.c (the commands and
 * their replies).  Other files use comet_pubsrv.h.
 *
 * Threads: everything here runs on the server's loop thread (the publish
 * thread in the module), which alone touches these records; only the
 * counters in comet_pubsrv_t.st are read by other threads, atomically.
 */
#ifndef COMET_PUBSRV_PRIVATE_H
#define COMET_PUBSRV_PRIVATE_H

#include "comet_buf.h"
#include "comet_pubsrv.h"
#include "comet_resp.h"

/* A reply may pass max_output by this much (PUBSUB CHANNELS of a large
 * table); a longer one is refused. */
#define COMET_PUBSRV_REPLY_MAX   (64 * 1024 * 1024)
/* Bytes of a client's name (CLIENT SETNAME), with its NUL. */
#define COMET_PUBSRV_NAME_MAX    128

/* One client connection, in a pool of its own. */
typedef struct comet_pubconn_t comet_pubconn_t;

/* At most one log line per interval for a kind of event that a client
 * can cause at will; the lines in between are counted and the next line
 * says how many there were. */
typedef struct comet_pubsrv_ratelog_t {
    apr_time_t   next;
    apr_uint64_t skipped;
} comet_pubsrv_ratelog_t;

struct comet_pubsrv_t {
    comet_pubsrv_config_t cfg;
    comet_loop_t         *loop;
    apr_pool_t           *pool;       /* own allocator; loop thread only */
    apr_pool_t           *scratch;    /* cleared after each use          */
    comet_resp_limits_t   limits;
    apr_size_t            in_max;     /* one connection's unfinished
                                         command, at most               */
    apr_size_t            in_total;   /* all connections' input buffers
                                         (atomic: read by any thread)    */
    char                 *rbuf;       /* every read lands here first     */
    apr_size_t            max_channel_id;
    comet_loop_io_t       lio;        /* the listener                    */
    int                   listening;  /* lio is in the loop              */
    int                   accepting;  /* lio has READ interest           */
    comet_timer_t         resume;     /* ends an accept pause            */
    comet_timer_t         recheck;    /* full: look at the peers again   */
    int                   paused;     /* out of descriptors              */
    apr_uint32_t          peer;       /* our record in cfg.peers         */
    apr_uint32_t          refusing;   /* refused connections lingering   */
    comet_pubconn_t      *conns;      /* all connections                 */
    apr_uint64_t          next_id;
    apr_time_t            started;    /* comet_now_mono()                */
    comet_pubsrv_ratelog_t log_refused, log_input, log_timer;
    comet_pubsrv_stats_t  st;         /* atomics: read by any thread     */
};

struct comet_pubconn_t {
    comet_pubsrv_t      *srv;
    comet_pubconn_t     *prev, *next;
    apr_pool_t          *pool;
    int                  fd;
    comet_loop_io_t      io;
    int                  watched;
    comet_timer_t        timer;       /* the nearest of its deadlines    */
    comet_resp_parser_t *parser;
    char                *in;          /* malloc()ed: an unfinished command
                                         (NULL when there is none)       */
    apr_size_t           in_len, in_cap;
    comet_buf_t         *out;
    apr_uint64_t         id;
    apr_time_t           since;       /* connected                       */
    apr_time_t           active;      /* last command completed          */
    apr_time_t           cmd_start;   /* the unfinished one's first read  */
    apr_time_t           progress;    /* replies last taken by the client */
    apr_size_t           unread;      /* sent, not yet read, at progress  */
    apr_time_t           linger_end;
    apr_size_t           drained;     /* bytes thrown away lingering     */
    int                  proto;       /* COMET_RESP2 or COMET_RESP3       */
    int                  eof;         /* the client will send no more     */
    int                  closing;     /* close once out is sent           */
    int                  waiting;     /* on the client to take replies    */
    int                  lingering;   /* half-closed; draining its input  */
    int                  refused;     /* not a client: told it is one too
                                         many                            */
    int                  broken;      /* a reply could not be written     */
    char                 name[COMET_PUBSRV_NAME_MAX];
};

/* Count in the server's statistics (read by any thread). */
#define COMET_PUBSRV_STAT_ADD(srv, field, n) \
    __atomic_add_fetch(&(srv)->st.field, (n), __ATOMIC_RELAXED)

/* Run one parsed command: look it up, check its arity, reply into c->out
 * (an unknown command or a wrong arity gets Redis's error).  Counts it. */
void comet_pubcmd_execute(comet_pubconn_t *c, const comet_resp_cmd_t *cmd);

/* Error replies for the connection code (framing errors).  Like every reply
 * writer they note a failure in c->broken instead of returning it. */

/* "-<text>" from a printf format; counts an error. */
void comet_pubcmd_reply_err(comet_pubconn_t *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The error reply for a store or size refusal (COMET_EBADCHAN,
 * COMET_ETOOBIG, COMET_EFULL, COMET_EPROTO, or any other status). */
void comet_pubcmd_reply_store_error(comet_pubconn_t *c, apr_status_t rv);

#endif /* COMET_PUBSRV_PRIVATE_H */
