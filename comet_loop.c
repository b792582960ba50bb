/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#include "comet_loop.h"

struct comet_loop_t {
    apr_pool_t         *pool;
    int                 epfd;
    int                 wakefd;         /* eventfd                         */
    comet_loop_io_t     wake_io;

    /* Shared with other threads: only touched through __atomic builtins. */
    apr_uint32_t        wake_pending;
    apr_uint32_t        stopping;

    comet_loop_wake_fn *on_wake;
    void               *on_wake_baton;

    /* The batch being dispatched: events[0, batch).  A removed watcher's
     * later event in it is cleared (data.ptr = NULL) through io->slot. */
    struct epoll_event *events;
    int                 batch;

    /* Timers: a binary min-heap of (when, seq), heap[0] the earliest. */
    comet_timer_t     **heap;
    apr_size_t          heap_len;
    apr_size_t          heap_cap;
    apr_size_t          max_timers;
    apr_uint64_t        seq;
    apr_time_t          sweep_now;      /* while firing timers, else 0    */
};

/* ---- timer heap --------------------------------------------------------- */

static int timer_before(const comet_timer_t *a, const comet_timer_t *b)
{
    return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

static void heap_set(comet_loop_t *loop, apr_size_t pos, comet_timer_t *t)
{
    loop->heap[pos] = t;
    t->index = pos + 1;
}

static void heap_sift_up(comet_loop_t *loop, apr_size_t pos)
{
    comet_timer_t *t = loop->heap[pos];

    while (pos > 0) {
        apr_size_t parent = (pos - 1) / 2;

        if (!timer_before(t, loop->heap[parent])) {
            break;
        }
        heap_set(loop, pos, loop->heap[parent]);
        pos = parent;
    }
    heap_set(loop, pos, t);
}

static void heap_sift_down(comet_loop_t *loop, apr_size_t pos)
{
    comet_timer_t *t = loop->heap[pos];
    apr_size_t n = loop->heap_len;

    for (;;) {
        apr_size_t child = 2 * pos + 1;

        if (child >= n) {
            break;
        }
        if (child + 1 < n
            && timer_before(loop->heap[child + 1], loop->heap[child])) {
            child++;
        }
        if (!timer_before(loop->heap[child], t)) {
            break;
        }
        heap_set(loop, pos, loop->heap[child]);
        pos = child;
    }
    heap_set(loop, pos, t);
}

/* After the key of the entry at pos changed, or a new entry came there. */
static void heap_fix(comet_loop_t *loop, apr_size_t pos)
{
    if (pos > 0 && timer_before(loop->heap[pos], loop->heap[(pos - 1) / 2])) {
        heap_sift_up(loop, pos);
    }
    else {
        heap_sift_down(loop, pos);
    }
}

static void heap_remove(comet_loop_t *loop, comet_timer_t *t)
{
    apr_size_t pos = t->index - 1;
    comet_timer_t *last = loop->heap[--loop->heap_len];

    t->index = 0;
    if (last != t) {
        heap_set(loop, pos, last);
        heap_fix(loop, pos);
    }
}

static apr_status_t heap_grow(comet_loop_t *loop)
{
    apr_size_t cap = loop->heap_cap ? loop->heap_cap * 2 : 64;
    comet_timer_t **heap;

    if (loop->heap_len >= loop->max_timers) {
        return APR_ENOSPC;
    }
    if (cap > loop->max_timers) {
        cap = loop->max_timers;
    }
    /* The old array stays in the pool: the sum of all of them is below
     * the final size, and max_timers bounds that. */
    heap = apr_palloc(loop->pool, cap * sizeof(*heap));
    if (!heap) {
        return APR_ENOMEM;
    }
    if (loop->heap_len) {
        memcpy(heap, loop->heap, loop->heap_len * sizeof(*heap));
    }
    loop->heap = heap;
    loop->heap_cap = cap;
    return APR_SUCCESS;
}

void comet_timer_init(comet_timer_t *timer, comet_timer_fn *fn, void *baton)
{
    timer->when = 0;
    timer->seq = 0;
    timer->index = 0;
    timer->fn = fn;
    timer->baton = baton;
}

apr_status_t comet_timer_arm(comet_loop_t *loop, comet_timer_t *timer,
                             apr_time_t deadline)
{
    apr_status_t rv;

    /* Armed from a timer callback and already due: it waits for the next
     * turn, or a timer that keeps re-arming itself in the past would keep
     * the sweep (and the loop) from ever getting past it. */
    if (loop->sweep_now && deadline <= loop->sweep_now) {
        deadline = loop->sweep_now + 1;
    }
    timer->when = deadline;
    timer->seq = loop->seq++;
    if (timer->index) {
        heap_fix(loop, timer->index - 1);
        return APR_SUCCESS;
    }
    if (loop->heap_len == loop->heap_cap
        && (rv = heap_grow(loop)) != APR_SUCCESS) {
        return rv;
    }
    heap_set(loop, loop->heap_len++, timer);
    heap_sift_up(loop, loop->heap_len - 1);
    return APR_SUCCESS;
}

apr_status_t comet_timer_arm_in(comet_loop_t *loop, comet_timer_t *timer,
                                apr_interval_time_t delay)
{
    return comet_timer_arm(loop, timer, comet_now_mono() + delay);
}

void comet_timer_cancel(comet_loop_t *loop, comet_timer_t *timer)
{
    if (timer->index) {
        heap_remove(loop, timer);
    }
}

int comet_timer_armed(const comet_timer_t *timer)
{
    return timer->index != 0;
}

apr_size_t comet_loop_timer_count(const comet_loop_t *loop)
{
    return loop->heap_len;
}

/* Fire the timers due now.  Timers armed meanwhile are due after now (see
 * comet_timer_arm), so the sweep ends. */
static void run_timers(comet_loop_t *loop)
{
    apr_time_t now = comet_now_mono();

    loop->sweep_now = now;
    while (loop->heap_len) {
        comet_timer_t *t = loop->heap[0];

        if (t->when > now) {
            break;
        }
        heap_remove(loop, t);
        t->fn(loop, t, t->baton);
    }
    loop->sweep_now = 0;
}

/* Milliseconds epoll may wait: until the earliest deadline, rounded up so
 * that the loop does not wake just before it and spin; -1 without timers. */
static int wait_timeout(comet_loop_t *loop)
{
    apr_time_t left;

    if (!loop->heap_len) {
        return -1;
    }
    left = loop->heap[0]->when - comet_now_mono();
    if (left <= 0) {
        return 0;
    }
    if (left >= (apr_time_t)INT_MAX * 1000) {
        return INT_MAX;
    }
    return (int)((left + 999) / 1000);
}

/* ---- fd watchers -------------------------------------------------------- */

static apr_uint32_t epoll_interest(int interest)
{
    apr_uint32_t ev = 0;

    if (interest & COMET_LOOP_READ) {
        ev |= EPOLLIN | EPOLLRDHUP;
    }
    if (interest & COMET_LOOP_WRITE) {
        ev |= EPOLLOUT;
    }
    if (interest & COMET_LOOP_EDGE) {
        ev |= EPOLLET;
    }
    return ev;
}

static int reported_events(apr_uint32_t ev)
{
    int events = 0;

    if (ev & EPOLLIN) {
        events |= COMET_LOOP_READ;
    }
    if (ev & EPOLLOUT) {
        events |= COMET_LOOP_WRITE;
    }
    if (ev & (EPOLLHUP | EPOLLRDHUP)) {
        events |= COMET_LOOP_HUP;
    }
    if (ev & EPOLLERR) {
        events |= COMET_LOOP_ERROR;
    }
    return events;
}

apr_status_t comet_loop_io_add(comet_loop_t *loop, comet_loop_io_t *io,
                               int fd, int interest, comet_loop_io_fn *fn,
                               void *baton)
{
    struct epoll_event ev;

    io->fd = fd;
    io->interest = interest;
    io->slot = -1;
    io->fn = fn;
    io->baton = baton;
    ev.events = epoll_interest(interest);
    ev.data.ptr = io;
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        return APR_FROM_OS_ERROR(errno);
    }
    return APR_SUCCESS;
}

apr_status_t comet_loop_io_modify(comet_loop_t *loop, comet_loop_io_t *io,
                                  int interest)
{
    struct epoll_event ev;

    if (interest == io->interest) {
        return APR_SUCCESS;
    }
    ev.events = epoll_interest(interest);
    ev.data.ptr = io;
    if (epoll_ctl(loop->epfd, EPOLL_CTL_MOD, io->fd, &ev) < 0) {
        return APR_FROM_OS_ERROR(errno);
    }
    io->interest = interest;
    return APR_SUCCESS;
}

void comet_loop_io_remove(comet_loop_t *loop, comet_loop_io_t *io)
{
    struct epoll_event ev = { 0 };   /* kernels before 2.6.9 want one */

    /* Failure means the fd is already gone from the set (closed): the
     * record must be forgotten all the same. */
    (void)epoll_ctl(loop->epfd, EPOLL_CTL_DEL, io->fd, &ev);
    if (io->slot >= 0 && io->slot < loop->batch
        && loop->events[io->slot].data.ptr == io) {
        loop->events[io->slot].data.ptr = NULL;
    }
    io->slot = -1;
}

/* ---- wakeups ------------------------------------------------------------ */

static void kick(comet_loop_t *loop)
{
    apr_uint64_t one = 1;

    /* EAGAIN would mean the counter is near 2^64: the loop is awake
     * already.  Nothing else can fail on a valid eventfd. */
    while (write(loop->wakefd, &one, sizeof(one)) < 0 && errno == EINTR) {
    }
}

void comet_loop_wake(comet_loop_t *loop)
{
    if (__atomic_exchange_n(&loop->wake_pending, 1, __ATOMIC_SEQ_CST) == 0) {
        kick(loop);
    }
}

void comet_loop_stop(comet_loop_t *loop)
{
    __atomic_store_n(&loop->stopping, 1, __ATOMIC_SEQ_CST);
    kick(loop);
}

void comet_loop_on_wake(comet_loop_t *loop, comet_loop_wake_fn *fn,
                        void *baton)
{
    loop->on_wake = fn;
    loop->on_wake_baton = baton;
}

static void wake_ready(comet_loop_t *loop, int fd, int events, void *baton)
{
    apr_uint64_t count;

    (void)events;
    (void)baton;
    /* Reset the counter first and the flag second: a wake between the two
     * finds the flag still set and writes nothing, but the on_wake below
     * runs after it and sees its work; a wake after the flag is cleared
     * writes again and brings another turn. */
    while (read(fd, &count, sizeof(count)) < 0 && errno == EINTR) {
    }
    if (__atomic_exchange_n(&loop->wake_pending, 0, __ATOMIC_SEQ_CST)
        && loop->on_wake) {
        loop->on_wake(loop, loop->on_wake_baton);
    }
}

/* ---- the loop ----------------------------------------------------------- */

static apr_status_t loop_cleanup(void *data)
{
    comet_loop_t *loop = data;

    if (loop->wakefd >= 0) {
        close(loop->wakefd);
        loop->wakefd = -1;
    }
    if (loop->epfd >= 0) {
        close(loop->epfd);
        loop->epfd = -1;
    }
    loop->heap_len = 0;
    return APR_SUCCESS;
}

apr_status_t comet_loop_create(comet_loop_t **loopp, apr_size_t max_timers,
                               apr_pool_t *p)
{
    comet_loop_t *loop = apr_pcalloc(p, sizeof(*loop));
    apr_status_t rv;

    loop->pool = p;
    loop->max_timers = max_timers;
    loop->events = apr_pcalloc(p, COMET_LOOP_BATCH * sizeof(*loop->events));
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (loop->epfd < 0) {
        return APR_FROM_OS_ERROR(errno);
    }
    loop->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (loop->wakefd < 0) {
        rv = APR_FROM_OS_ERROR(errno);
        close(loop->epfd);
        return rv;
    }
    apr_pool_cleanup_register(p, loop, loop_cleanup, apr_pool_cleanup_null);
    rv = comet_loop_io_add(loop, &loop->wake_io, loop->wakefd,
                           COMET_LOOP_READ, wake_ready, NULL);
    if (rv != APR_SUCCESS) {
        apr_pool_cleanup_run(p, loop, loop_cleanup);
        return rv;
    }
    *loopp = loop;
    return APR_SUCCESS;
}

void comet_loop_destroy(comet_loop_t *loop)
{
    apr_pool_cleanup_run(loop->pool, loop, loop_cleanup);
}

static void dispatch(comet_loop_t *loop, int n)
{
    int i;

    for (i = 0; i < n; i++) {
        ((comet_loop_io_t *)loop->events[i].data.ptr)->slot = i;
    }
    loop->batch = n;
    for (i = 0; i < n; i++) {
        comet_loop_io_t *io = loop->events[i].data.ptr;

        if (!io) {
            continue;   /* removed by an earlier callback of this batch */
        }
        io->slot = -1;
        io->fn(loop, io->fd, reported_events(loop->events[i].events),
               io->baton);
    }
    loop->batch = 0;
}

apr_status_t comet_loop_run(comet_loop_t *loop)
{
    apr_status_t rv = APR_SUCCESS;

    while (!__atomic_load_n(&loop->stopping, __ATOMIC_SEQ_CST)) {
        int n = epoll_wait(loop->epfd, loop->events, COMET_LOOP_BATCH,
                           wait_timeout(loop));

        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            rv = APR_FROM_OS_ERROR(errno);
            comet_log(COMET_LOG_ERR, rv, "event loop: epoll_wait failed");
            break;
        }
        dispatch(loop, n);
        run_timers(loop);
    }
    __atomic_store_n(&loop->stopping, 0, __ATOMIC_SEQ_CST);
    return rv;
}
