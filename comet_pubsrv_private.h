/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_pubsrv_private.h -- what the three parts of the publish socket's
 * server share, and nobody else: comet_pubsrv.c (connections: listener,
 * accept, read, flush, bounds, timers), comet_pubcmd.c (the commands and
 * their replies) and comet_pubsub.c (subscribed connections: channels,
 * patterns, the slot's wakeups, pushes).  Other files use comet_pubsrv.h.
 *
 * Threads: everything here runs on the server's loop thread (the publish
 * thread in the module), which alone touches these records; only the
 * counters in comet_pubsrv_t.st are read by other threads, atomically.
 */
#ifndef COMET_PUBSRV_PRIVATE_H
#define COMET_PUBSRV_PRIVATE_H

#include <apr_hash.h>
#include <apr_thread_mutex.h>

#include "comet_buf.h"
#include "comet_pubsrv.h"
#include "comet_resp.h"

/* A reply may pass max_output by this much (PUBSUB CHANNELS of a large
 * table); a longer one is refused. */
#define COMET_PUBSRV_REPLY_MAX   (64 * 1024 * 1024)
/* Commands run between two looks at the subscribers' wakeups. */
#define COMET_PUBSRV_POLL_EVERY  16
/* Bytes of a client's name (CLIENT SETNAME), with its NUL. */
#define COMET_PUBSRV_NAME_MAX    128

/* One client connection, in a pool of its own. */
typedef struct comet_pubconn_t comet_pubconn_t;

/* comet_pubsub.c's records: a channel the server listens to, a pattern,
 * and one connection's subscription to either. */
typedef struct comet_pubsub_chan_t comet_pubsub_chan_t;
typedef struct comet_pubsub_pat_t comet_pubsub_pat_t;
typedef struct comet_pubsub_sub_t comet_pubsub_sub_t;

/* The pushes of one batch in one shape, with where each message starts,
 * so that a subscriber that joined in the middle gets the tail. */
typedef struct comet_pubsub_shape_t {
    comet_buf_t *buf;
    apr_size_t  *off;                 /* [messages + 1]                  */
    int          done;                /* formatted for this batch        */
} comet_pubsub_shape_t;

/* Shapes: RESP2 and RESP3 of "message", "comet.message", "pmessage". */
#define COMET_PUBSUB_SHAPES      6

/* At most one log line per interval for a kind of event that a client
 * can cause at will; the lines in between are counted and the next line
 * says how many there were. */
typedef struct comet_pubsrv_ratelog_t {
    apr_time_t   next;
    apr_uint64_t skipped;
} comet_pubsrv_ratelog_t;

/* A reply that waits (comet_pubsrv.h, "Publishing elsewhere"): a
 * publish's, or the reply of a command run while one was waiting
 * (captured: raw). */
struct comet_pubsrv_pending_t {
    comet_pubsrv_t         *srv;
    comet_pubconn_t        *conn;     /* NULL once the connection is gone */
    comet_pubsrv_pending_t *next;     /* the connection's, in order      */
    comet_pubsrv_pending_t *qnext;    /* the server's finished queue     */
    int                     done;     /* loop thread: the reply is known  */
    apr_status_t            rv;
    apr_int64_t             receivers;
    char                   *raw;      /* a captured reply (malloc)       */
    apr_size_t              raw_len;
    char                    error[512];
};

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

    /* Subscribers (comet_pubsub.c). */
    comet_loop_io_t       wake_io;    /* the slot's eventfd              */
    int                   wake_watched;
    apr_hash_t           *chans;      /* channel id -> comet_pubsub_chan_t */
    apr_hash_t           *by_index;   /* store record index -> the same  */
    apr_hash_t           *pats;       /* pattern -> comet_pubsub_pat_t   */
    comet_pubsub_chan_t  *chan_list;  /* the same records, to walk       */
    comet_pubsub_pat_t   *pat_list;
    apr_uint32_t          npats;      /* distinct patterns               */
    apr_uint32_t          nchans;     /* channels with subscriptions     */
    int                   draining;   /* pushes are flushed after it     */
    comet_timer_t         push_timer; /* flushes pushes made elsewhere   */
    apr_uint64_t          drained;    /* the store's last seq before the
                                         last drain: an overflow's walk
                                         starts there                    */
    apr_pool_t           *batch;      /* one batch's reads; cleared      */
    comet_pubsub_shape_t  shape[COMET_PUBSUB_SHAPES];
    comet_pubconn_t      *pushed;     /* connections given pushes during
                                         a drain, flushed after it       */
    comet_pubsrv_ratelog_t log_slow, log_missed;
    apr_uint32_t          since_poll; /* commands since the last look    */
    apr_thread_mutex_t   *done_mu;    /* finished publishes handed back  */
    comet_pubsrv_pending_t *done_q;
    comet_buf_t          *capture;    /* a reply that has to wait        */
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
    comet_pubsrv_pending_t *pend_head, *pend_tail;
    apr_uint32_t         npend;       /* replies waiting                  */
    int                  awaiting;    /* not read: npend at the bound     */
    comet_pubconn_t     *settle_next; /* in a wake's list of connections
                                         with replies known              */
    int                  settling;
    char                 name[COMET_PUBSRV_NAME_MAX];

    /* Subscribed mode (comet_pubsub.c). */
    comet_pubsub_sub_t  *subs;        /* channels and patterns            */
    apr_hash_t          *sub_names;   /* kind + name -> comet_pubsub_sub_t */
    apr_uint32_t         nchans;      /* channels subscribed              */
    apr_uint32_t         npats;       /* patterns subscribed              */
    apr_uint32_t         lagging;     /* subscriptions reading their own
                                         way up to the shared position   */
    comet_pubconn_t     *push_prev, *push_next;
    int                  pushed;      /* in srv->pushed                   */
    int                  dropped;     /* past max_pending: closed after
                                         the drain                       */
};

/* In subscribed mode: a channel or a pattern subscribed. */
#define COMET_PUBCONN_SUBSCRIBED(c) ((c)->nchans + (c)->npats > 0)

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

/* Output was queued on c outside of its commands (pushes): send what the
 * socket takes, and close c when it must be (dropped, a broken socket).
 * comet_pubsub.c, after a drain. */
void comet_pubsrv_conn_kick(comet_pubconn_t *c);

/* ---- comet_pubsub.c ------------------------------------------------------ */

/* Set up the server's subscriber side (watch the slot's eventfd when the
 * configuration gives one).  comet_pubsrv_create. */
apr_status_t comet_pubsub_init(comet_pubsrv_t *srv);

/* Give back what the connection holds: its subscriptions in the store and
 * among the server's channels and patterns.  Its pool's cleanup. */
void comet_pubsub_conn_end(comet_pubconn_t *c);

/* Between commands: when the slot has a wakeup pending, read what it
 * brings into the subscribers' output now (flushed on the next turn of
 * the loop), so that publishers of this process cannot keep the
 * channels' buffers from being read.  One read() of the eventfd. */
void comet_pubsub_poll(comet_pubsrv_t *srv);

/* Serve the connection's lagging subscriptions (COMET.SUBSCRIBE FROM an
 * older id) while its unsent output stays under max_output.  After its
 * output drained. */
void comet_pubsub_catch_up(comet_pubconn_t *c);

/* RESET: leave every subscription, without a reply for each. */
void comet_pubsub_reset(comet_pubconn_t *c);

/* The commands (see comet_pubsrv.h). */
void comet_pubsub_cmd_subscribe(comet_pubconn_t *c,
                                const comet_resp_cmd_t *cmd);
void comet_pubsub_cmd_unsubscribe(comet_pubconn_t *c,
                                  const comet_resp_cmd_t *cmd);
void comet_pubsub_cmd_psubscribe(comet_pubconn_t *c,
                                 const comet_resp_cmd_t *cmd);
void comet_pubsub_cmd_punsubscribe(comet_pubconn_t *c,
                                   const comet_resp_cmd_t *cmd);
void comet_pubsub_cmd_comet_subscribe(comet_pubconn_t *c,
                                      const comet_resp_cmd_t *cmd);
/* Its text ("ERR ..."), into buf. */
void comet_pubcmd_store_error_text(comet_pubconn_t *c, apr_status_t rv,
                                   char *buf, apr_size_t len);

/* A waiting reply at the end of c's (NULL: out of memory). */
comet_pubsrv_pending_t *comet_pubsrv_pending_add(comet_pubconn_t *c);

/* Its reply is known now (on the loop thread: p->rv, receivers, error or
 * raw are set): written once those before it are. */
void comet_pubsrv_pending_done(comet_pubsrv_pending_t *p);

/* Write a known waiting reply into c->out. */
void comet_pubcmd_reply_pending(comet_pubconn_t *c,
                                comet_pubsrv_pending_t *p);

#endif /* COMET_PUBSRV_PRIVATE_H */
