/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "unit_common.h"
#include "comet_loop.h"

/* Each test runs in its own forked process under check's timeout, so a
 * loop that never stops fails the test instead of hanging the run.  Tests
 * wait on conditions; where a test must show that something does NOT
 * happen, a guard timer bounds how long it looks. */

static comet_loop_t *new_loop(apr_size_t max_timers)
{
    comet_loop_t *loop;

    ck_assert_int_eq(comet_loop_create(&loop, max_timers, comet_test_pool),
                     APR_SUCCESS);
    return loop;
}

static void stop_timer_cb(comet_loop_t *loop, comet_timer_t *t, void *baton)
{
    int *fired = baton;

    if (fired) {
        (*fired)++;
    }
    comet_loop_stop(loop);
}

/* Spin (yielding) until *flag is set, at most about 5 s. */
static int wait_flag(const apr_uint32_t *flag)
{
    apr_time_t until = comet_now_mono() + 5 * APR_USEC_PER_SEC;

    while (!__atomic_load_n(flag, __ATOMIC_SEQ_CST)) {
        if (comet_now_mono() > until) {
            return 0;
        }
        sched_yield();
    }
    return 1;
}

/* ---- fd watchers -------------------------------------------------------- */

typedef struct io_probe_t {
    comet_loop_io_t io;
    int             calls;
    int             events;
    char            got;
    int             stop;       /* stop the loop on the first call */
} io_probe_t;

static void probe_read_cb(comet_loop_t *loop, int fd, int events, void *baton)
{
    io_probe_t *p = baton;

    p->calls++;
    p->events |= events;
    if (events & COMET_LOOP_READ) {
        ck_assert_int_eq(read(fd, &p->got, 1), 1);
    }
    if (p->stop) {
        comet_loop_stop(loop);
    }
}

START_TEST(readable_pipe_calls_its_watcher)
{
    comet_loop_t *loop = new_loop(16);
    io_probe_t p = { .stop = 1 };
    int fds[2];

    ck_assert_int_eq(pipe(fds), 0);
    ck_assert_int_eq(comet_loop_io_add(loop, &p.io, fds[0], COMET_LOOP_READ,
                                       probe_read_cb, &p), APR_SUCCESS);
    ck_assert_int_eq(write(fds[1], "x", 1), 1);
    ck_assert_int_eq(comet_loop_run(loop), APR_SUCCESS);
    ck_assert_int_eq(p.calls, 1);
    ck_assert_int_eq(p.events, COMET_LOOP_READ);
    ck_assert_int_eq(p.got, 'x');
    comet_loop_io_remove(loop, &p.io);
    close(fds[0]);
    close(fds[1]);
}
END_TEST

typedef struct writer_t {
    comet_loop_io_t io;
    int             writable;
} writer_t;

static void writer_cb(comet_loop_t *loop, int fd, int events, void *baton)
{
    writer_t *w = baton;

    if (events & COMET_LOOP_WRITE) {
        w->writable++;
        /* Nothing more to write: drop WRITE, or level-triggered epoll
         * would call again on every turn. */
        ck_assert_int_eq(comet_loop_io_modify(loop, &w->io, COMET_LOOP_READ),
                         APR_SUCCESS);
    }
}

START_TEST(write_interest_reports_room_until_dropped)
{
    comet_loop_t *loop = new_loop(16);
    writer_t w = { .writable = 0 };
    comet_timer_t guard;
    int sv[2];

    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    ck_assert_int_eq(comet_loop_io_add(loop, &w.io, sv[0],
                                       COMET_LOOP_READ | COMET_LOOP_WRITE,
                                       writer_cb, &w), APR_SUCCESS);
    comet_timer_init(&guard, stop_timer_cb, NULL);
    comet_timer_arm_in(loop, &guard, 30 * 1000);
    ck_assert_int_eq(comet_loop_run(loop), APR_SUCCESS);
    ck_assert_int_eq(w.writable, 1);
    /* Unchanged interest costs nothing and succeeds. */
    ck_assert_int_eq(comet_loop_io_modify(loop, &w.io, COMET_LOOP_READ),
                     APR_SUCCESS);
    comet_loop_io_remove(loop, &w.io);
    close(sv[0]);
    close(sv[1]);
}
END_TEST

START_TEST(peer_close_is_reported_as_hup)
{
    comet_loop_t *loop = new_loop(16);
    io_probe_t p = { .stop = 1 };
    int sv[2];

    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    ck_assert_int_eq(write(sv[1], "z", 1), 1);
    close(sv[1]);
    ck_assert_int_eq(comet_loop_io_add(loop, &p.io, sv[0], COMET_LOOP_READ,
                                       probe_read_cb, &p), APR_SUCCESS);
    ck_assert_int_eq(comet_loop_run(loop), APR_SUCCESS);
    ck_assert_int_eq(p.events & (COMET_LOOP_READ | COMET_LOOP_HUP),
                     COMET_LOOP_READ | COMET_LOOP_HUP);
    ck_assert_int_eq(p.got, 'z');
    comet_loop_io_remove(loop, &p.io);
    close(sv[0]);
}
END_TEST

typedef struct edge_t {
    comet_loop_io_t io;
    comet_timer_t   poke;
    comet_timer_t   end;
    int             calls;
    int             wfd;
} edge_t;

static void edge_cb(comet_loop_t *loop, int fd, int events, void *baton)
{
    edge_t *e = baton;

    e->calls++;     /* deliberately does not read */
}

static void edge_poke_cb(comet_loop_t *loop, comet_timer_t *t, void *baton)
{
    edge_t *e = baton;

    ck_assert_int_eq(write(e->wfd, "y", 1), 1);
}

START_TEST(edge_triggered_watcher_hears_each_change_once)
{
    comet_loop_t *loop = new_loop(16);
    edge_t e = { .calls = 0 };
    int fds[2];

    ck_assert_int_eq(pipe(fds), 0);
    e.wfd = fds[1];
    ck_assert_int_eq(write(fds[1], "x", 1), 1);
    ck_assert_int_eq(comet_loop_io_add(loop, &e.io, fds[0],
                                       COMET_LOOP_READ | COMET_LOOP_EDGE,
                                       edge_cb, &e), APR_SUCCESS);
    comet_timer_init(&e.poke, edge_poke_cb, &e);
    comet_timer_arm_in(loop, &e.poke, 20 * 1000);
    comet_timer_init(&e.end, stop_timer_cb, NULL);
    comet_timer_arm_in(loop, &e.end, 40 * 1000);
    ck_assert_int_eq(comet_loop_run(loop), APR_SUCCESS);
    /* Level-triggered, the unread byte would have called it every turn. */
    ck_assert_int_eq(e.calls, 2);
    comet_loop_io_remove(loop, &e.io);
    close(fds[0]);
    close(fds[1]);
}
END_TEST

/* Two watchers ready in the same batch: whichever runs first removes and
 * frees the other (and itself).  The second must not be called: its record
 * is freed memory (AddressSanitizer would say so). */
typedef struct pair_t {
    comet_loop_io_t io;
    struct pair_t **self;
    struct pair_t **other;
    int            *calls;
    int             fd;
} pair_t;

static void pair_cb(comet_loop_t *loop, int fd, int events, void *baton)
{
    pair_t *me = baton;

    (*me->calls)++;
    if (*me->other) {
        comet_loop_io_remove(loop, &(*me->other)->io);
        free(*me->other);
        *me->other = NULL;
    }
    comet_loop_io_remove(loop, &me->io);
    *me->self = NULL;
    free(me);
}

START_TEST(removing_another_watcher_of_the_same_batch_is_safe)
{
    comet_loop_t *loop = new_loop(16);
    pair_t *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
    comet_timer_t guard;
    int fa[2], fb[2], calls = 0;

    ck_assert_int_eq(pipe(fa), 0);
    ck_assert_int_eq(pipe(fb), 0);
    ck_assert_int_eq(write(fa[1], "a", 1), 1);
    ck_assert_int_eq(write(fb[1], "b", 1), 1);
    a->self = &a; a->other = &b; a->calls = &calls;
    b->self = &b; b->other = &a; b->calls = &calls;
    ck_assert_int_eq(comet_loop_io_add(loop, &a->io, fa[0], COMET_LOOP_READ,
                                       pair_cb, a), APR_SUCCESS);
    ck_assert_int_eq(comet_loop_io_add(loop, &b->io, fb[0], COMET_LOOP_READ,
                                       pair_cb, b), APR_SUCCESS);
    comet_timer_init(&guard, stop_timer_cb, NULL);
    comet_timer_arm_in(loop, &guard, 20 * 1000);
    ck_assert_int_eq(comet_loop_run(loop), APR_SUCCESS);
    ck_assert_int_eq(calls, 1);
    ck_assert_ptr_null(a);
    ck_assert_ptr_null(b);
    close(fa[0]); close(fa[1]); close(fb[0]); close(fb[1]);
}
END_TEST

typedef struct closer_t {
    comet_loop_io_t io;
    int             calls;
} closer_t;

static void close_self_cb(comet_loop_t *loop, int fd, int events, void *baton)
{
    closer_t *c = baton;

    c->calls++;
    comet_loop_io_remove(loop, &c->io);
    close(fd);
}

START_TEST(watcher_may_remove_itself_and_close_its_fd)
{
    comet_loop_t *loop = new_loop(16);
    closer_t c = { .calls = 0 };
    comet_timer_t guard;
    int fds[2];

    ck_assert_int_eq(pipe(fds), 0);
    ck_assert_int_eq(write(fds[1], "x", 1), 1);
    ck_assert_int_eq(comet_loop_io_add(loop, &c.io, fds[0], COMET_LOOP_READ,
                                       close_self_cb, &c), APR_SUCCESS);
    comet_timer_init(&guard, stop_timer_cb, NULL);
    comet_timer_arm_in(loop, &guard, 20 * 1000);
    ck_assert_int_eq(comet_loop_run(loop), APR_SUCCESS);
    ck_assert_int_eq(c.calls, 1);
    close(fds[1]);
}
END_TEST

/* ---- wakeups ------------------------------------------------------------ */

typedef struct waker_t {
    comet_loop_t *loop;
    pthread_t     loop_thread;
    apr_uint32_t  posted;       /* work items posted by other threads     */
    apr_uint32_t  seen;         /* how many on_wake saw, on the loop      */
    apr_uint32_t  callbacks;
    apr_uint32_t  target;
    apr_uint32_t  cb_started;   /* handshake flags for the ordered test  */
    apr_uint32_t  burst_done;
    int           wrong_thread;
} waker_t;

static void count_wake_cb(comet_loop_t *loop, void *baton)
{
    waker_t *w = baton;

    if (!pthread_equal(pthread_self(), w->loop_thread)) {
        w->wrong_thread = 1;
    }
    w->callbacks++;
    w->seen = __atomic_load_n(&w->posted, __ATOMIC_SEQ_CST);
    if (w->seen >= w->target) {
        comet_loop_stop(loop);
    }
}

static void *post_work_thread(void *arg)
{
    waker_t *w = arg;
    int i;

    for (i = 0; i < 250; i++) {
        __atomic_add_fetch(&w->posted, 1, __ATOMIC_SEQ_CST);
        comet_loop_wake(w->loop);
    }
    return NULL;
}

START_TEST(wakes_from_other_threads_run_on_the_loop_and_none_is_lost)
{
    waker_t w = { .target = 1000 };
    pthread_t th[4];
    int i;

    w.loop = new_loop(16);
    w.loop_thread = pthread_self();
    comet_loop_on_wake(w.loop, count_wake_cb, &w);
    for (i = 0; i < 4; i++) {
        ck_assert_int_eq(pthread_create(&th[i], NULL, post_work_thread, &w),
                         0);
    }
    /* Returns only once on_wake has seen all 1000 posts. */
    ck_assert_int_eq(comet_loop_run(w.loop), APR_SUCCESS);
    for (i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
    }
    ck_assert_uint_eq(w.seen, 1000);
    ck_assert_uint_ge(w.callbacks, 1);
    ck_assert_uint_le(w.callbacks, 1000);
    ck_assert_int_eq(w.wrong_thread, 0);
}
END_TEST

static void once_then_stop_cb(comet_loop_t *loop, void *baton)
{
    waker_t *w = baton;
    comet_timer_t *t = apr_palloc(comet_test_pool, sizeof(*t));

    w->callbacks++;
    /* Due at once: runs in this turn's timers, after the wake's event. */
    comet_timer_init(t, stop_timer_cb, NULL);
    comet_timer_arm(loop, t, 0);
}

START_TEST(many_wakes_before_the_loop_runs_cost_one_callback)
{
    waker_t w = { .target = 0 };
    int i;

    w.loop = new_loop(16);
    comet_loop_on_wake(w.loop, once_then_stop_cb, &w);
    for (i = 0; i < 1000; i++) {
        comet_loop_wake(w.loop);
    }
    ck_assert_int_eq(comet_loop_run(w.loop), APR_SUCCESS);
    ck_assert_uint_eq(w.callbacks, 1);
}
END_TEST

/* The first on_wake holds still while another thread wakes 1000 times:
 * those wakes came after the callback began, so exactly one more callback
 * must follow, and only one. */
static void held_wake_cb(comet_loop_t *loop, void *baton)
{
    waker_t *w = baton;

    w->callbacks++;
    if (w->callbacks == 1) {
        __atomic_store_n(&w->cb_started, 1, __ATOMIC_SEQ_CST);
        ck_assert(wait_flag(&w->burst_done));
    }
    else {
        comet_loop_stop(loop);
    }
}

static void *burst_after_start_thread(void *arg)
{
    waker_t *w = arg;
    int i;

    comet_loop_wake(w->loop);
    if (!wait_flag(&w->cb_started)) {
        return NULL;
    }
    for (i = 0; i < 1000; i++) {
        comet_loop_wake(w->loop);
    }
    __atomic_store_n(&w->burst_done, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

START_TEST(wake_after_on_wake_began_brings_exactly_one_more_call)
{
    waker_t w = { .target = 0 };
    comet_timer_t guard;
    int fired = 0;
    pthread_t th;

    w.loop = new_loop(16);
    comet_loop_on_wake(w.loop, held_wake_cb, &w);
    ck_assert_int_eq(pthread_create(&th, NULL, burst_after_start_thread, &w),
                     0);
    ck_assert_int_eq(comet_loop_run(w.loop), APR_SUCCESS);
    pthread_join(th, NULL);
    ck_assert_uint_eq(w.callbacks, 2);

    /* Nothing is pending any more: a further turn brings no callback. */
    comet_timer_init(&guard, stop_timer_cb, &fired);
    comet_timer_arm_in(w.loop, &guard, 20 * 1000);
    ck_assert_int_eq(comet_loop_run(w.loop), APR_SUCCESS);
    ck_assert_int_eq(fired, 1);
    ck_assert_uint_eq(w.callbacks, 2);
}
END_TEST

typedef struct stopper_t {
    comet_loop_t   *loop;
    comet_loop_io_t io;
    apr_uint32_t    running;
    int             wfd;
} stopper_t;

static void mark_running_cb(comet_loop_t *loop, int fd, int events,
                            void *baton)
{
    stopper_t *s = baton;
    char c;

    ck_assert_int_eq(read(fd, &c, 1), 1);
    __atomic_store_n(&s->running, 1, __ATOMIC_SEQ_CST);
}

static void *stop_when_running_thread(void *arg)
{
    stopper_t *s = arg;

    if (write(s->wfd, "r", 1) != 1 || !wait_flag(&s->running)) {
        return NULL;
    }
    comet_loop_stop(s->loop);
    return NULL;
}

START_TEST(stop_from_another_thread_ends_a_blocked_run)
{
    stopper_t s = { .running = 0 };
    pthread_t th;
    int fds[2];

    s.loop = new_loop(16);
    ck_assert_int_eq(pipe(fds), 0);
    s.wfd = fds[1];
    comet_loop_io_add(s.loop, &s.io, fds[0], COMET_LOOP_READ,
                      mark_running_cb, &s);
    /* No timer: without the stop, epoll would wait forever. */
    ck_assert_int_eq(pthread_create(&th, NULL, stop_when_running_thread, &s),
                     0);
    ck_assert_int_eq(comet_loop_run(s.loop), APR_SUCCESS);
    pthread_join(th, NULL);
    ck_assert_uint_eq(s.running, 1);
    comet_loop_io_remove(s.loop, &s.io);
    close(fds[0]);
    close(fds[1]);
}
END_TEST

START_TEST(stop_before_run_makes_run_return_at_once)
{
    comet_loop_t *loop = new_loop(16);

    comet_loop_stop(loop);
    ck_assert_int_eq(comet_loop_run(loop), APR_SUCCESS);
}
END_TEST

/* ---- timers ------------------------------------------------------------- */

typedef struct order_t {
    comet_timer_t timer;
    int           tag;
    int           early;    /* fired before its deadline */
    int          *log;
    int          *n;
    int           last;
} order_t;

static void order_cb(comet_loop_t *loop, comet_timer_t *t, void *baton)
{
    order_t *o = baton;

    if (comet_now_mono() < t->when) {
        o->early = 1;
    }
    o->log[(*o->n)++] = o->tag;
    if (o->last) {
        comet_loop_stop(loop);
    }
}

START_TEST(timers_fire_in_deadline_order_never_early)
{
    comet_loop_t *loop = new_loop(16);
    static const int delay_ms[] = { 40, 10, 30, 20, 10 };
    order_t o[5];
    int log[8], n = 0, i;
    apr_time_t now = comet_now_mono();

    for (i = 0; i < 5; i++) {
        o[i].tag = i;
        o[i].early = 0;
        o[i].log = log;
        o[i].n = &n;
        o[i].last = (i == 0);
        comet_timer_init(&o[i].timer, order_cb, &o[i]);
        ck_assert_int_eq(comet_timer_arm(loop, &o[i].timer,
                                         now + delay_ms[i] * 1000),
                         APR_SUCCESS);
    }
    ck_assert_uint_eq(comet_loop_timer_count(loop), 5);
    ck_assert_int_eq(comet_loop_run(loop), APR_SUCCESS);
    ck_assert_int_eq(n, 5);
    /* Equal deadlines (1 and 4) fire in the order they were armed. */
    ck_assert_int_eq(log[0], 1);
    ck_assert_int_eq(log[1], 4);
    ck_assert_int_eq(log[2], 3);
    ck_assert_int_eq(log[3], 2);
    ck_assert_int_eq(log[4], 0);
    for (i = 0; i < 5; i++) {
        ck_assert_int_eq(o[i].early, 0);
        ck_assert(!comet_timer_armed(&o[i].timer));
    }
    ck_assert_uint_eq(comet_loop_timer_count(loop), 0);
}
END_TEST

typedef struct canceller_t {
    comet_timer_t  timer;
    comet_timer_t *victim;
    int            fired;
} canceller_t;

static void cancel_other_cb(comet_loop_t *loop, comet_timer_t *t, void *baton)
{
    canceller_t *c = baton;

    c->fired++;
    if (c->victim) {
        comet_timer_cancel(loop, c->victim);
    }
}

START_TEST(cancelled_timer_never_fires)
{
    comet_loop_t *loop = new_loop(16);
    canceller_t a = { .fired = 0 }, c = { .fired = 0 }, d = { .fired = 0 };
    comet_timer_t end;
    apr_time_t now = comet_now_mono();
    int ended = 0;

    comet_timer_init(&a.timer, cancel_other_cb, &a);
    comet_timer_init(&c.timer, cancel_other_cb, &c);
    comet_timer_init(&d.timer, cancel_other_cb, &d);
    comet_timer_init(&end, stop_timer_cb, &ended);
    comet_timer_arm(loop, &a.timer, now + 5000);
    /* c and d are due together; c, armed first, cancels d from its
     * callback, in the same sweep. */
    comet_timer_arm(loop, &c.timer, now + 10000);
    comet_timer_arm(loop, &d.timer, now + 10000);
    c.victim = &d.timer;
    comet_timer_arm(loop, &end, now + 30000);
    comet_timer_cancel(loop, &a.timer);
    comet_timer_cancel(loop, &a.timer);         /* twice: harmless */
    ck_assert(!comet_timer_armed(&a.timer));
    ck_assert_int_eq(comet_loop_run(loop), APR_SUCCESS);
    ck_assert_int_eq(a.fired, 0);
    ck_assert_int_eq(c.fired, 1);
    ck_assert_int_eq(d.fired, 0);
    ck_assert_int_eq(ended, 1);
}
END_TEST

START_TEST(rearming_moves_the_deadline_both_ways)
{
    comet_loop_t *loop = new_loop(16);
    comet_timer_t sooner, later, end;
    int sooner_fired = 0, later_fired = 0, ended = 0;

    comet_timer_init(&sooner, stop_timer_cb, &sooner_fired);
    comet_timer_init(&later, stop_timer_cb, &later_fired);
    comet_timer_init(&end, stop_timer_cb, &ended);

    /* An hour away, brought forward to 5 ms: the loop stops soon. */
    comet_timer_arm_in(loop, &sooner, 3600 * APR_USEC_PER_SEC);
    comet_timer_arm_in(loop, &sooner, 5 * 1000);
    ck_assert_uint_eq(comet_loop_timer_count(loop), 1);
    ck_assert_int_eq(comet_loop_run(loop), APR_SUCCESS);
    ck_assert_int_eq(sooner_fired, 1);

    /* 5 ms away, pushed back an hour: the 20 ms timer ends the run. */
    comet_timer_arm_in(loop, &later, 5 * 1000);
    comet_timer_arm_in(loop, &end, 20 * 1000);
    comet_timer_arm_in(loop, &later, 3600 * APR_USEC_PER_SEC);
    ck_assert_int_eq(comet_loop_run(loop), APR_SUCCESS);
    ck_assert_int_eq(ended, 1);
    ck_assert_int_eq(later_fired, 0);
    ck_assert(comet_timer_armed(&later));
    comet_timer_cancel(loop, &later);
    ck_assert_uint_eq(comet_loop_timer_count(loop), 0);
}
END_TEST

typedef struct heap_probe_t {
    comet_timer_t timer;
    int           fired;
    int           expected;     /* armed when the loop ran */
    apr_time_t   *last_when;
    int          *out_of_order;
} heap_probe_t;

static void heap_probe_cb(comet_loop_t *loop, comet_timer_t *t, void *baton)
{
    heap_probe_t *h = baton;

    h->fired++;
    if (t->when < *h->last_when) {
        *h->out_of_order = 1;
    }
    *h->last_when = t->when;
}

START_TEST(heap_keeps_order_through_random_arms_and_cancels)
{
    enum { N = 3000 };
    comet_loop_t *loop = new_loop(N + 1);
    heap_probe_t *h = calloc(N, sizeof(*h));
    comet_timer_t end;
    apr_time_t base = comet_now_mono() - 10 * APR_USEC_PER_SEC, last = 0;
    int i, out_of_order = 0, ended = 0;

    srand(4242);
    for (i = 0; i < N; i++) {
        h[i].last_when = &last;
        h[i].out_of_order = &out_of_order;
        comet_timer_init(&h[i].timer, heap_probe_cb, &h[i]);
        comet_timer_arm(loop, &h[i].timer, base + rand() % 1000000);
        h[i].expected = 1;
    }
    /* Shuffle: re-arm a third, cancel a third (all still in the past). */
    for (i = 0; i < N; i++) {
        int j = rand() % N;

        if (i % 3 == 0) {
            comet_timer_arm(loop, &h[j].timer, base + rand() % 1000000);
            h[j].expected = 1;
        }
        else if (i % 3 == 1) {
            comet_timer_cancel(loop, &h[j].timer);
            h[j].expected = 0;
        }
    }
    comet_timer_init(&end, stop_timer_cb, &ended);
    comet_timer_arm_in(loop, &end, 1000);
    ck_assert_int_eq(comet_loop_run(loop), APR_SUCCESS);
    ck_assert_int_eq(out_of_order, 0);
    for (i = 0; i < N; i++) {
        ck_assert_int_eq(h[i].fired, h[i].expected);
        ck_assert(!comet_timer_armed(&h[i].timer));
    }
    ck_assert_uint_eq(comet_loop_timer_count(loop), 0);
    free(h);
}
END_TEST

static void rearm_now_cb(comet_loop_t *loop, comet_timer_t *t, void *baton)
{
    int *fired = baton;

    (*fired)++;
    comet_timer_arm(loop, t, 0);
}

START_TEST(timer_rearming_in_the_past_cannot_starve_others)
{
    comet_loop_t *loop = new_loop(16);
    io_probe_t p = { .stop = 0 };
    comet_timer_t busy, other, end;
    int fds[2], fired = 0, other_fired = 0, ended = 0;

    ck_assert_int_eq(pipe(fds), 0);
    comet_timer_init(&busy, rearm_now_cb, &fired);
    comet_timer_init(&other, stop_timer_cb, &other_fired);
    comet_timer_init(&end, stop_timer_cb, &ended);
    /* busy sorts before other and keeps re-arming at 0. */
    comet_timer_arm(loop, &busy, 0);
    comet_timer_arm(loop, &other, 1);
    ck_assert_int_eq(comet_loop_io_add(loop, &p.io, fds[0], COMET_LOOP_READ,
                                       probe_read_cb, &p), APR_SUCCESS);
    ck_assert_int_eq(write(fds[1], "x", 1), 1);
    ck_assert_int_eq(comet_loop_run(loop), APR_SUCCESS);
    ck_assert_int_eq(other_fired, 1);
    ck_assert_int_eq(p.calls, 1);
    /* Once per turn, and the first turn ended the run. */
    ck_assert_int_eq(fired, 1);

    /* With nothing else due, it fires on every turn, no more. */
    comet_timer_arm_in(loop, &end, 20 * 1000);
    ck_assert_int_eq(comet_loop_run(loop), APR_SUCCESS);
    ck_assert_int_eq(ended, 1);
    ck_assert_int_gt(fired, 1);
    comet_loop_io_remove(loop, &p.io);
    close(fds[0]);
    close(fds[1]);
}
END_TEST

START_TEST(max_timers_bounds_the_heap)
{
    comet_loop_t *loop = new_loop(3);
    comet_timer_t t[4];
    int i;

    for (i = 0; i < 4; i++) {
        comet_timer_init(&t[i], stop_timer_cb, NULL);
    }
    for (i = 0; i < 3; i++) {
        ck_assert_int_eq(comet_timer_arm_in(loop, &t[i], 1000000),
                         APR_SUCCESS);
    }
    ck_assert_int_eq(comet_timer_arm_in(loop, &t[3], 1000000), APR_ENOSPC);
    ck_assert(!comet_timer_armed(&t[3]));
    /* Moving an armed one needs no room. */
    ck_assert_int_eq(comet_timer_arm_in(loop, &t[0], 5), APR_SUCCESS);
}
END_TEST

START_TEST(destroyed_loops_leave_no_descriptors_behind)
{
    struct rlimit saved, low;
    int i;

    /* This test runs in a process of its own: lower its descriptor limit
     * so that a leak of two per loop runs out well within the loop. */
    ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &saved), 0);
    low = saved;
    low.rlim_cur = 64;
    ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
    for (i = 0; i < 200; i++) {
        comet_loop_t *loop = new_loop(4);

        comet_loop_destroy(loop);
        comet_loop_destroy(loop);               /* twice: harmless */
    }
    ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &saved), 0);
}
END_TEST

Suite *test_comet_loop_suite(void)
{
    Suite *s = suite_create("comet_loop");
    TCase *tio = tcase_create("io");
    TCase *twk = tcase_create("wake");
    TCase *ttm = tcase_create("timers");

    tcase_add_checked_fixture(tio, comet_test_pool_setup,
                              comet_test_pool_teardown);
    tcase_add_test(tio, readable_pipe_calls_its_watcher);
    tcase_add_test(tio, write_interest_reports_room_until_dropped);
    tcase_add_test(tio, peer_close_is_reported_as_hup);
    tcase_add_test(tio, edge_triggered_watcher_hears_each_change_once);
    tcase_add_test(tio, removing_another_watcher_of_the_same_batch_is_safe);
    tcase_add_test(tio, watcher_may_remove_itself_and_close_its_fd);
    tcase_add_test(tio, destroyed_loops_leave_no_descriptors_behind);
    suite_add_tcase(s, tio);

    tcase_add_checked_fixture(twk, comet_test_pool_setup,
                              comet_test_pool_teardown);
    tcase_add_test(twk,
                   wakes_from_other_threads_run_on_the_loop_and_none_is_lost);
    tcase_add_test(twk, many_wakes_before_the_loop_runs_cost_one_callback);
    tcase_add_test(twk, wake_after_on_wake_began_brings_exactly_one_more_call);
    tcase_add_test(twk, stop_from_another_thread_ends_a_blocked_run);
    tcase_add_test(twk, stop_before_run_makes_run_return_at_once);
    suite_add_tcase(s, twk);

    tcase_add_checked_fixture(ttm, comet_test_pool_setup,
                              comet_test_pool_teardown);
    tcase_add_test(ttm, timers_fire_in_deadline_order_never_early);
    tcase_add_test(ttm, cancelled_timer_never_fires);
    tcase_add_test(ttm, rearming_moves_the_deadline_both_ways);
    tcase_add_test(ttm, heap_keeps_order_through_random_arms_and_cancels);
    tcase_add_test(ttm, timer_rearming_in_the_past_cannot_starve_others);
    tcase_add_test(ttm, max_timers_bounds_the_heap);
    suite_add_tcase(s, ttm);
    return s;
}
