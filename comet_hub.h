/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_hub.h -- the subscribers of one process, and their delivery.
 *
 * A hub runs on the hub thread of a child process, over a comet_loop.  It
 * owns every parked subscriber of its process as a compact record; it
 * wakes when the store queues one of its channels (the process slot's
 * eventfd), reads the new messages once per channel, renders them once
 * per kind of subscriber (comet_render.h), and writes them with
 * non-blocking sends.  It notices clients that leave, sends keepalives,
 * ends long-polls that time out, and drops a subscriber whose unsent
 * output passes a bound.
 *
 * Delivery never waits for a client and never loses a message silently:
 *   - a subscriber in step with its channel gets the channel's shared
 *     batch (read and rendered once for all);
 *   - a subscriber behind it (a backlog, a resumed id, an answer that did
 *     not fit in one batch) is served by reads of its own, one bounded
 *     batch at a time, and only once what it was given before has left
 *     (its socket has room, or its sink says so: comet_hub_room); then it
 *     rejoins the shared batch.  It gets the missed signal exactly when
 *     the store says messages after its position are gone;
 *   - a subscriber is dropped only when, before a write, more than
 *     max_pending bytes it was given have not left yet.  So it holds at
 *     most max_pending plus one write: twice max_pending, given that
 *     max_pending holds the largest frame (comet_render_frame_max).
 *
 * A subscriber reaches the hub in one of two shapes:
 *   - a socket (fd) that the hub writes to directly: plain HTTP/1.1 whose
 *     connection httpd has let go of (see README, "Internals"), or the
 *     same over TLS with the connection's TLS session, which the hub then
 *     carries on (comet_tls.h);
 *   - a sink: a set of callbacks, called on the hub thread, through which
 *     the hub hands bytes to code that writes them some other way: through
 *     httpd's filters on an MPM callback (suspended subscribers: TLS,
 *     HTTP/1.0) or on the request thread that holds the stream (HTTP/2).
 *
 * Server-independent: APR and POSIX only (TLS through comet_tls.h).
 *
 * Threads: functions marked "any thread" lock what they touch; all others
 * run on the hub thread (inside comet_hub_run), which is the only one that
 * touches subscriber records.
 */
#ifndef COMET_HUB_H
#define COMET_HUB_H

#include <apr_pools.h>

#include "comet_core.h"
#include "comet_render.h"
#include "comet_store.h"

struct ssl_st;

typedef struct comet_hub_t comet_hub_t;
typedef struct comet_hub_sub_t comet_hub_sub_t;

typedef struct comet_hub_config_t {
    comet_store_t *store;
    apr_uint32_t   slot;          /* this process's slot in the store     */
    int            wake_fd;       /* the slot's eventfd (not owned)       */
    apr_size_t     max_pending;   /* unsent bytes per subscriber before a
                                     write, past which it is dropped; also
                                     the long-poll answer's bound (0: 1M) */
    apr_size_t     max_batch;     /* bytes of frames one delivery hands a
                                     subscriber (at least one frame; 0:
                                     256K, never above max_pending)      */
    apr_uint32_t   max_subscribers; /* per process, 0: no limit           */
    int            sndbuf;        /* SO_SNDBUF for adopted sockets, 0: as
                                     the kernel has it                    */
    /* Kicks a process slot's wakeup fd (the store's re-kick of slots whose
     * wakeup was lost, in comet_store_maintain); may be NULL. */
    comet_wake_fn *wake;
    void          *wake_baton;
    /* Called on the hub thread about once a second (e.g. to publish the
     * hub's counters where other processes can read them); may be NULL. */
    void         (*tick)(comet_hub_t *hub, void *baton);
    void          *tick_baton;
    /* Called once on the hub thread when comet_hub_run's loop has ended,
     * before the hub ends its subscribers: the last moment at which code
     * sharing the hub's loop may still use it (remove its watchers and
     * timers).  May be NULL. */
    void         (*on_stop)(comet_hub_t *hub, void *baton);
    void          *on_stop_baton;
    /* Called on the hub thread when the hub has released the store
     * subscriptions of a subscriber adopted with a non-zero tag (so that
     * the code that counted them may uncount them).  May be NULL. */
    void         (*on_end)(void *baton, apr_uint32_t tag);
    void          *on_end_baton;
    /* Kept connections (see comet_hub_keep): a kept connection's next
     * request head has come whole; fd (blocking mode unchanged: non-
     * blocking) is the callee's on APR_SUCCESS, else the hub closes it.
     * served: requests answered on the connection so far.  Called on the
     * hub thread; must not block.  NULL: no connection is kept. */
    apr_status_t (*handback)(void *baton, int fd, apr_uint32_t served);
    void          *handback_baton;
    apr_uint32_t   max_kept;      /* kept (and draining) connections per
                                     process; 0: no limit                 */
    apr_time_t     keep_timeout;  /* a kept connection's idle time        */
    apr_time_t     head_timeout;  /* from a next request's first byte to
                                     its whole head                       */
    /* Where WebSocket clients' messages go when not into the store itself
     * (channels shared with other servers, which every publish must
     * reach first): hands msg (copying it) to the code that stores it,
     * without blocking; a failure (*why: a line for the client) is told
     * to the client.  Called on the hub thread.  May be NULL: the store. */
    apr_status_t (*publish)(void *baton, const comet_publish_t *msg,
                            const char **why);
    void          *publish_baton;
} comet_hub_config_t;

/* Code that writes a sink subscriber's bytes.
 *
 * write: take data[0, len) (len may be 0: only report) and say in *held
 * how many bytes the sink holds that its client has not taken yet, these
 * included.  flags: COMET_HUB_SINK_LAST, the stream ends after these
 * bytes; COMET_HUB_SINK_NOTIFY, the hub waits for room: if *held > 0,
 * call comet_hub_room once they have all left (once per such call; a
 * later call may ask again).  A non-success return drops the subscriber.
 * The hub decides how much to hand over (see above); the sink need not
 * bound it below twice max_pending.
 * close: the hub is done with the subscriber (after the last write, or on
 * drop, or at hub stop); the baton is never used again after it returns.
 * Both are called on the hub thread and must not block. */
#define COMET_HUB_SINK_LAST    0x1
#define COMET_HUB_SINK_NOTIFY  0x2

typedef struct comet_hub_sink_t {
    apr_status_t (*write)(void *baton, const char *data, apr_size_t len,
                          int flags, apr_size_t *held);
    void (*close)(void *baton);
} comet_hub_sink_t;

/* Where a subscriber's positions come from (comet_hub_spec_t.start). */
#define COMET_HUB_START_EXACT   0 /* the client's own id, or "now": what
                                     the store lost after it is missed  */
#define COMET_HUB_START_BACKLOG 1 /* the start of a backlog the client
                                     asked for: nothing it had is lost  */
#define COMET_HUB_START_LOST    2 /* an id of another store: the missed
                                     signal first, then all that is kept
                                     (positions 0)                      */

/* What a WebSocket subscriber (transport COMET_T_WS, always a socket) may
 * do besides listening.  The hub owns the connection's frames both ways:
 * it answers pings, pings every interval (and ends a client that has sent
 * nothing since its last ping), closes with the right code, and
 * publishes the client's text messages when publish is set. */
typedef struct comet_hub_ws_spec_t {
    int           publish;        /* text messages are published          */
    apr_uint32_t  rate;           /* publishes per second (0: no limit)   */
    apr_uint32_t  burst;          /* ... and the bucket's size (>= 1)     */
    apr_size_t    max_message;    /* largest message it may send (> 0)    */
    const char   *from;           /* identity stored with what it
                                     publishes (NULL: none)               */
    apr_size_t    from_len;       /* <= COMET_STORE_FROM_MAX              */
    const char   *preread;        /* bytes the client sent past its
                                     handshake, already read (copied)     */
    apr_size_t    preread_len;
} comet_hub_ws_spec_t;

/* A subscriber handed to the hub.  The caller has already subscribed it in
 * the store (comet_store_subscribe) and sent the response head; the hub
 * delivers everything after the positions (a backlog too, at the pace the
 * client reads), owns the subscriptions from adopt on and releases them
 * when it ends the subscriber. */
typedef struct comet_hub_spec_t {
    int           fd;             /* socket, or -1 for a sink             */
    struct ssl_st *ssl;           /* with fd: its TLS session, detached
                                     (comet_tls_detach), or NULL          */
    const comet_hub_sink_t *sink; /* when fd is -1                        */
    void         *sink_baton;
    int           transport;      /* COMET_T_*                            */
    int           chunked;        /* wrap output in HTTP/1.1 chunks       */
    apr_size_t    nchan;          /* 1 .. 1024                            */
    const comet_chanref_t *refs;  /* [nchan]                              */
    const char *const *ids;       /* [nchan] channel ids                  */
    const apr_uint64_t *seqs;     /* [nchan] positions: last id delivered */
    int           start;          /* COMET_HUB_START_*                    */
    const int    *later;          /* [nchan] or NULL: 1 where the position
                                     may be beyond what the store holds
                                     yet (a copy fed from elsewhere, not
                                     brought up to it): the member waits
                                     until the store reaches it, rather
                                     than being told it missed messages */
    apr_time_t    interval;       /* SSE/stream/WebSocket: keepalive
                                     period (0 none); long-poll: time left
                                     to wait                              */
    apr_uint32_t  tag;            /* the adopter's, for on_end; 0: none   */
    const comet_hub_ws_spec_t *ws;/* COMET_T_WS only                      */
    /* A long-poll on a plain socket (fd, no ssl) may leave its response
     * head to the hub (head_len <= COMET_HUB_HEAD_MAX): it goes out with
     * the answer, in the same send, so that the client wakes once per
     * poll.  NULL: the head has been sent. */
    const char   *head;
    apr_size_t    head_len;
    /* A long-poll on a plain socket whose head allowed keep-alive, with
     * chunked framing: after its answer the connection is kept (see
     * comet_hub_keep) when cfg.handback is set; the value is the requests
     * answered on the connection, this one included.  0: closed. */
    apr_uint32_t  keep;
    /* Long-poll: once news has come, wait this many ms for more before
     * answering, so that a burst leaves in one answer.  0: answer at
     * once. */
    apr_uint32_t  linger_ms;
} comet_hub_spec_t;

/* The largest head a long-poll may leave to the hub. */
#define COMET_HUB_HEAD_MAX 8192

/* Create a hub in p (which must outlive it).  Caller: the hub thread, or
 * the code that starts it (a child's start-up code), before it starts. */
apr_status_t comet_hub_create(comet_hub_t **hub,
                              const comet_hub_config_t *cfg, apr_pool_t *p);

/* Run until comet_hub_stop; then end every subscriber (streams get their
 * last chunk) and return.  The thread that calls it is the hub thread. */
apr_status_t comet_hub_run(comet_hub_t *hub);

/* Ask the hub to stop.  Any thread; returns at once. */
void comet_hub_stop(comet_hub_t *hub);

/* Hand a subscriber over (copied: the spec's arrays and head may go after
 * the call).  On success the hub owns fd (sets it non-blocking), its TLS
 * session and the store subscriptions, and *handle names the subscriber
 * for comet_hub_cancel until the sink's close callback has run.  On
 * failure (APR_EAGAIN: the hub has max_subscribers, or is stopping;
 * APR_EINVAL: a WebSocket without a socket or without its settings)
 * nothing changed hands.  Any thread; O(nchan), one short lock. */
apr_status_t comet_hub_adopt(comet_hub_t *hub, const comet_hub_spec_t *spec,
                             comet_hub_sub_t **handle);

/* Take a connection whose last response has left whole, to wait for its
 * next request (the client's keep-alive): idle for at most
 * cfg.keep_timeout, its next request head is handed to cfg.handback once
 * whole.  served: requests answered on it so far.  With drain, the
 * connection is closing instead (the caller has shut its sending side
 * down): what the client still sends is read and dropped until it closes,
 * at most 2 s, so that it reads the whole response rather than a reset.
 * APR_SUCCESS: the hub owns fd.  APR_EAGAIN (max_kept reached, the hub
 * stopping, or no handback to keep for): fd is still the caller's.  Any
 * thread; one short lock. */
apr_status_t comet_hub_keep(comet_hub_t *hub, int fd, apr_uint32_t served,
                            int drain);

/* End a sink subscriber (its client left): the hub releases it and calls
 * its close callback soon.  Any thread, until close has been called. */
void comet_hub_cancel(comet_hub_t *hub, comet_hub_sub_t *handle);

/* A sink subscriber's bytes have all left, as the hub asked
 * (COMET_HUB_SINK_NOTIFY): the hub hands it more soon.  Any thread, until
 * close has been called; one short lock, no allocation. */
void comet_hub_room(comet_hub_t *hub, comet_hub_sub_t *handle);

/* ---- work for the hub thread ----------------------------------------------
 * Code that shares the hub's loop (comet_hub_loop) may only touch it on the
 * hub thread; other threads hand it work as tasks.  A task is a record
 * of the caller's (no allocation): fn(hub, task, stopping) runs once on the
 * hub thread, tasks in the order they were posted.  stopping is 0 while
 * the loop runs; 1 once it has ended (the task must then not touch the
 * loop: watchers and timers are no longer served). */
typedef struct comet_hub_task_t comet_hub_task_t;
typedef void comet_hub_task_fn(comet_hub_t *hub, comet_hub_task_t *task,
                               int stopping);
struct comet_hub_task_t {
    comet_hub_task_t  *next;      /* the hub's                          */
    comet_hub_task_fn *fn;
    void              *baton;
};

/* Queue a task (not already queued).  APR_SUCCESS: fn will run, also when
 * the hub is stopping.  APR_EAGAIN: the hub thread has finished for
 * good and will touch nothing of the caller's any more (fn never runs).
 * Any thread; one short lock. */
apr_status_t comet_hub_post(comet_hub_t *hub, comet_hub_task_t *task);

/* Subscribers held now (adopted and not yet ended).  Any thread. */
apr_uint32_t comet_hub_count(comet_hub_t *hub);

typedef struct comet_hub_stats_t {
    apr_uint32_t subscribers;     /* now                                  */
    apr_uint32_t detached;        /* now: of them, on a socket of ours    */
    apr_uint32_t tls;             /* now: of those, with a TLS session    */
    apr_uint32_t by_transport[4]; /* now: sse, longpoll, stream,
                                     websocket                            */
    apr_uint64_t adopted;         /* since start                          */
    apr_uint64_t deliveries;      /* messages written to subscribers      */
    apr_uint64_t wakeups;         /* slot wakeups handled                 */
    apr_uint64_t dropped_slow;    /* ended for passing max_pending        */
    apr_uint64_t catchup_reads;   /* reads of a subscriber's own (behind)  */
    apr_uint64_t closed_by_client;
    apr_uint64_t ws_published;    /* WebSocket client messages published  */
    apr_uint64_t ws_refused;      /* closed for policy (1003, 1008)       */
    apr_uint64_t ws_errors;       /* closed for protocol (1002/1007/1009) */
    apr_uint64_t ws_timeouts;     /* ended: silent since our last ping    */
    apr_uint32_t kept;            /* now: kept and draining connections  */
    apr_uint64_t kept_total;      /* connections kept after an answer     */
    apr_uint64_t handed_back;     /* next requests handed to httpd        */
} comet_hub_stats_t;

/* A snapshot of the counters.  Any thread (values are read one by one,
 * not as one atomic snapshot). */
void comet_hub_stats(comet_hub_t *hub, comet_hub_stats_t *out);

/* The hub's event loop, so that other code of the process can watch
 * descriptors and arm timers on the hub thread (the suspended subscribers
 * do).  Use the loop only on the hub thread (tasks get there, see
 * comet_hub_post), or before comet_hub_run.  The pointer itself: any
 * thread. */
struct comet_loop_t *comet_hub_loop(comet_hub_t *hub);

#endif /* COMET_HUB_H */
