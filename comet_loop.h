/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_loop.h -- a small epoll event loop for one thread.
 *
 * Each child process runs two: the hub thread's (comet_hub.h: the
 * detached subscriber sockets, the store's wakeup descriptor, the
 * suspended subscribers' watchers, keepalive and timeout timers) and the
 * publish thread's (comet_pubsrv.h: the publish socket's listener and
 * clients).  Other threads hand a loop work through comet_loop_wake().
 *
 * Threads.  "Loop thread" below means the thread inside comet_loop_run()
 * (in the module: the hub thread for the hub's loop, the publish thread
 * for the publish socket's), or, while no thread is inside it, the one
 * thread that owns the loop (setting up before that thread starts, tearing
 * down after it has returned).  Only comet_loop_wake() and
 * comet_loop_stop() may be called from any thread at any time.
 *
 * Memory.  The loop allocates from its pool once, at creation, except the
 * timer heap, which grows by doubling up to max_timers pointers.  Watchers
 * and timers are records embedded in the caller's own structures
 * (intrusive): a subscriber with a socket watcher and a keepalive timer
 * costs the loop no allocation and no lookup table.  Their fields are
 * the loop's (io->fd and timer->when may be read).
 *
 * Order within one turn of the loop: I/O callbacks of the batch epoll
 * returned (at most COMET_LOOP_BATCH), then the timers that were due when
 * the turn's timers began.  A timer armed from a timer callback with a
 * deadline already past is moved to just after that moment, so it fires
 * in the next turn: a timer that re-arms itself cannot starve I/O or the
 * other timers.
 */
#ifndef COMET_LOOP_H
#define COMET_LOOP_H

#include <apr_pools.h>

#include "comet_core.h"

typedef struct comet_loop_t comet_loop_t;

/* Events returned by one epoll_wait() at most. */
#define COMET_LOOP_BATCH 256

/* ---- interest and event flags ----------------------------------------------
 * READ, WRITE and EDGE are what a watcher asks for; READ, WRITE, HUP and
 * ERROR are what a callback is told.
 *
 * Level-triggered (the default): the callback is called again on every
 * turn while the condition holds, so it need not drain the fd but must
 * drop WRITE interest once it has nothing to write.  With EDGE the
 * callback is called once per change and must read or write until EAGAIN,
 * or it will not hear of that fd again.
 *
 * HUP and ERROR are reported even without READ or WRITE interest (epoll
 * always reports them), and level-triggered they repeat: a callback that
 * sees them should remove the watcher. */
#define COMET_LOOP_READ   0x01  /* data, EOF, or a peer's half-close     */
#define COMET_LOOP_WRITE  0x02  /* room to write                         */
#define COMET_LOOP_EDGE   0x04  /* interest only: edge-triggered          */
#define COMET_LOOP_HUP    0x08  /* reported: peer closed (or shut down
                                   its writing side, for sockets)         */
#define COMET_LOOP_ERROR  0x10  /* reported: error pending on the fd      */

/* ---- loop --------------------------------------------------------------- */

/* A loop in p: an epoll fd and an eventfd, both closed by a cleanup of p
 * (or comet_loop_destroy).  max_timers bounds the armed timers (and so the
 * heap's memory: 8 bytes a timer, up to twice that while it grows).
 * Any thread; once per loop. */
apr_status_t comet_loop_create(comet_loop_t **loop, apr_size_t max_timers,
                               apr_pool_t *p);

/* Close the loop's descriptors now rather than when its pool goes.  Loop
 * thread, after comet_loop_run() has returned, and only when no other
 * thread can still call comet_loop_wake/stop: the eventfd's number may be
 * reused at once.  Watchers need not be removed first; timers are
 * forgotten. */
void comet_loop_destroy(comet_loop_t *loop);

/* Run callbacks until comet_loop_stop().  Returns APR_SUCCESS after a
 * stop, or the error of a failed epoll_wait (after logging it).  A stop
 * that came before run was entered makes it return at once.  The thread
 * that calls it becomes the loop thread. */
apr_status_t comet_loop_run(comet_loop_t *loop);

/* Make comet_loop_run() return after the callbacks of the current turn.
 * Any thread; cost: an atomic store and at most one 8-byte write. */
void comet_loop_stop(comet_loop_t *loop);

/* ---- wakeups from other threads --------------------------------------------
 * The usual pattern: another thread puts work on a locked list and calls
 * comet_loop_wake(); on_wake, on the loop thread, takes the whole list
 * under the lock, releases it, then does the work.
 *
 * Wakes are coalesced: a pending flag is set by the first wake and cleared
 * by the loop just before it calls on_wake, so a burst of wakes costs one
 * write() and one callback.  None is lost: a wake that comes after on_wake
 * has begun causes another call of on_wake. */
typedef void comet_loop_wake_fn(comet_loop_t *loop, void *baton);

/* Set the callback (NULL: wakes only interrupt the wait).  Loop thread. */
void comet_loop_on_wake(comet_loop_t *loop, comet_loop_wake_fn *fn,
                        void *baton);

/* Any thread; cost: one atomic exchange, plus
 * one 8-byte write() to the eventfd when no wake was already pending. */
void comet_loop_wake(comet_loop_t *loop);

/* ---- fd watchers -------------------------------------------------------- */

typedef void comet_loop_io_fn(comet_loop_t *loop, int fd, int events,
                              void *baton);

typedef struct comet_loop_io_t {
    int               fd;       /* the owner may read it; the rest is ours */
    int               interest;
    int               slot;     /* in the batch being dispatched, or -1 */
    comet_loop_io_fn *fn;
    void             *baton;
} comet_loop_io_t;

/* Watch fd for interest (READ, WRITE, EDGE; 0 = only HUP/ERROR) through
 * the caller's record io, which must stay put until removed.  One watcher
 * per fd.  Loop thread; cost: one epoll_ctl. */
apr_status_t comet_loop_io_add(comet_loop_t *loop, comet_loop_io_t *io,
                               int fd, int interest, comet_loop_io_fn *fn,
                               void *baton);

/* Change the interest (e.g. add WRITE after a short write, drop it once
 * the queue is empty).  Loop thread; cost: one epoll_ctl, none when the
 * interest is unchanged. */
apr_status_t comet_loop_io_modify(comet_loop_t *loop, comet_loop_io_t *io,
                                  int interest);

/* Stop watching.  Safe inside any callback, also for a watcher whose event
 * is still waiting later in the same batch: that event is dropped, so the
 * caller may free io (and close the fd) as soon as this returns.  Remove
 * BEFORE closing: epoll watches the open file, not the number, and a
 * dup()ed descriptor would keep reporting events for a freed record.
 * Loop thread; cost: one epoll_ctl, O(1). */
void comet_loop_io_remove(comet_loop_t *loop, comet_loop_io_t *io);

/* ---- timers ----------------------------------------------------------------
 * Deadlines are comet_now_mono() microseconds; the loop's wait ends at the
 * earliest one (rounded up to the millisecond epoll counts in, so a timer
 * fires up to 1 ms late, never early).  Timers due at the same time fire
 * in the order they were armed.  A timer is disarmed before its callback,
 * which may arm it again (periodic) or free it. */
typedef struct comet_timer_t comet_timer_t;

typedef void comet_timer_fn(comet_loop_t *loop, comet_timer_t *timer,
                            void *baton);

struct comet_timer_t {
    apr_time_t      when;
    apr_uint64_t    seq;        /* arming order, breaks ties          */
    apr_size_t      index;      /* heap position + 1; 0: not armed    */
    comet_timer_fn *fn;
    void           *baton;
};

/* Prepare a record (not armed).  Any thread, before first use. */
void comet_timer_init(comet_timer_t *timer, comet_timer_fn *fn,
                      void *baton);

/* Arm at deadline, or move the deadline of an armed timer.  APR_ENOSPC
 * when max_timers are armed, APR_ENOMEM when the heap cannot grow.
 * Loop thread; O(log n). */
apr_status_t comet_timer_arm(comet_loop_t *loop, comet_timer_t *timer,
                             apr_time_t deadline);

/* The same, delay microseconds from now.  Loop thread; O(log n). */
apr_status_t comet_timer_arm_in(comet_loop_t *loop, comet_timer_t *timer,
                                apr_interval_time_t delay);

/* Disarm; nothing when not armed.  The record may be freed afterwards.
 * Loop thread; O(log n). */
void comet_timer_cancel(comet_loop_t *loop, comet_timer_t *timer);

/* Any thread that owns the record; O(1). */
int comet_timer_armed(const comet_timer_t *timer);

/* Armed timers (for tests and debugging).  Loop thread; O(1). */
apr_size_t comet_loop_timer_count(const comet_loop_t *loop);

#endif /* COMET_LOOP_H */
