/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* The store with many processes and threads on one segment, a random
 * operation sequence run across processes against a reference model, and
 * processes killed inside the store's critical section. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "store_util.h"

#define MB (1024 * 1024)

/* ---- process helpers ---------------------------------------------------- */

/* One pipe per process slot: the wake function writes a byte to it. */
#define MP_SLOTS 8
static int wake_pipe[MP_SLOTS][2];

static void pipes_open(void)
{
    int i;

    for (i = 0; i < MP_SLOTS; i++) {
        ck_assert_int_eq(pipe(wake_pipe[i]), 0);
        fcntl(wake_pipe[i][0], F_SETFL, O_NONBLOCK);
        fcntl(wake_pipe[i][1], F_SETFL, O_NONBLOCK);
    }
}

static void pipe_wake(void *baton, apr_uint32_t slot)
{
    char c = 1;

    (void)baton;
    if (slot < MP_SLOTS) {
        (void)!write(wake_pipe[slot][1], &c, 1);
    }
}

/* Wait for pid's exit status for up to ms; -1 (and the child killed) on
 * timeout. */
static int wait_exit(pid_t pid, int ms)
{
    int status, i;

    for (i = 0; i < ms; i++) {
        pid_t r = waitpid(pid, &status, WNOHANG);

        if (r == pid) {
            return WIFEXITED(status) ? WEXITSTATUS(status)
                                     : 128 + WTERMSIG(status);
        }
        poll(NULL, 0, 1);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

/* Wait until pid sleeps in the kernel (blocked on the store lock), so the
 * kill that follows hits a real waiter. */
static void wait_sleeping(pid_t pid)
{
    char path[64], buf[256];
    int i;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    for (i = 0; i < 2000; i++) {
        FILE *f = fopen(path, "r");
        char *p;

        if (!f) {
            return;
        }
        buf[0] = '\0';
        if (!fgets(buf, sizeof(buf), f)) {
            buf[0] = '\0';
        }
        fclose(f);
        p = strrchr(buf, ')');
        if (p && p[1] == ' ' && p[2] == 'S') {
            return;
        }
        poll(NULL, 0, 1);
    }
}

/* Wait for one byte on fd, up to ms. */
static int wait_byte(int fd, int ms)
{
    struct pollfd pf = { fd, POLLIN, 0 };
    char c;

    if (poll(&pf, 1, ms) != 1) {
        return 0;
    }
    return read(fd, &c, 1) == 1;
}

/* ---- writers and readers ------------------------------------------------ */

#define WR_CHANNELS   3
#define WR_WRITERS    3         /* writer 0: a process; 1 and 2: threads */
#define WR_PER_CHAN   1500
#define WR_READERS    2

static const char *const wr_names[WR_CHANNELS] = {
    "room/a", "room/b", "a-channel-id-longer-than-the-inline-part-of-a-record"
};

static apr_uint32_t wr_tag(int w, int c, int n)
{
    return ((apr_uint32_t)w << 24) | ((apr_uint32_t)c << 16) | (apr_uint32_t)n;
}

typedef struct wr_writer_t {
    comet_store_t *st;
    int w;
    int failed;
} wr_writer_t;

static void *wr_write(void *arg)
{
    wr_writer_t *wr = arg;
    char buf[600];
    unsigned seed = 77u + (unsigned)wr->w;
    int n, c;

    for (n = 0; n < WR_PER_CHAN; n++) {
        for (c = 0; c < WR_CHANNELS; c++) {
            comet_publish_t m;
            apr_size_t len = 8 + (apr_size_t)(rand_r(&seed) % 500);
            apr_status_t rv;

            store_util_fill(buf, len, wr_tag(wr->w, c, n));
            memset(&m, 0, sizeof(m));
            m.channel = wr_names[c];
            m.channel_len = strlen(wr_names[c]);
            m.data = buf;
            m.data_len = len;
            if (n % 3 == 0) {
                m.event = "tick";
                m.event_len = 4;
            }
            rv = comet_store_publish(wr->st, &m, comet_now_mono(), pipe_wake,
                                     NULL, NULL);
            if (rv != APR_SUCCESS) {
                fprintf(stderr, "writer %d: publish: %d\n", wr->w, rv);
                wr->failed = 1;
                return NULL;
            }
        }
    }
    return NULL;
}

/* Subscribe to every channel, tell the parent, then follow the wakeups
 * until every writer's every message was seen: exactly once, in the
 * writer's order, never torn, never missed. */
static int wr_reader(comet_store_t *st, int ready_fd)
{
    comet_chanref_t refs[WR_CHANNELS], got[64];
    comet_msgid_t last[WR_CHANNELS];
    int next[WR_WRITERS][WR_CHANNELS];
    apr_uint64_t seen = 0, total = (apr_uint64_t)WR_WRITERS * WR_CHANNELS
                                   * WR_PER_CHAN;
    apr_time_t deadline = comet_now_mono() + STORE_UTIL_SEC(40);
    apr_pool_t *p;
    apr_uint32_t slot;
    int c, overflow;
    char ch = 'r';

    memset(next, 0, sizeof(next));
    if (comet_store_proc_attach(st, getpid(), &slot) != APR_SUCCESS
        || slot >= MP_SLOTS) {
        return 10;
    }
    for (c = 0; c < WR_CHANNELS; c++) {
        if (comet_store_subscribe(st, slot, wr_names[c], strlen(wr_names[c]),
                                  comet_now_mono(), &refs[c], &last[c])
            != APR_SUCCESS) {
            return 11;
        }
    }
    apr_pool_create(&p, NULL);
    if (write(ready_fd, &ch, 1) != 1) {
        return 12;
    }
    while (seen < total) {
        apr_size_t n, i;

        if (comet_now_mono() > deadline) {
            fprintf(stderr, "reader %u: timeout, %" APR_UINT64_T_FMT
                    " of %" APR_UINT64_T_FMT " seen\n", slot, seen, total);
            return 13;
        }
        wait_byte(wake_pipe[slot][0], 100);
        while (wait_byte(wake_pipe[slot][0], 0))
            ;
        do {
            n = comet_store_proc_drain(st, slot, got, 64, &overflow);
            for (i = 0; i < n || (overflow && i < WR_CHANNELS); i++) {
                comet_read_t r;
                int k;

                for (c = 0; c < WR_CHANNELS; c++) {
                    if (overflow ? (apr_size_t)c == i
                                 : got[i].index == refs[c].index) {
                        break;
                    }
                }
                if (c == WR_CHANNELS) {
                    return 14;
                }
                apr_pool_clear(p);
                if (comet_store_read(st, &refs[c], last[c], 0, 0,
                                     comet_now_mono(), p, &r) != APR_SUCCESS) {
                    return 15;
                }
                if (r.missed || r.deleted) {
                    fprintf(stderr, "reader: missed/deleted on %d\n", c);
                    return 16;
                }
                for (k = 0; k < r.msgs->nelts; k++) {
                    comet_msg_t *m = &APR_ARRAY_IDX(r.msgs, k, comet_msg_t);
                    long tag = store_util_verify(m->data, m->data_len);
                    int w = (int)(tag >> 24), tc = (int)((tag >> 16) & 0xff);

                    if (tag < 0 || w >= WR_WRITERS || tc != c
                        || m->id.seq <= last[c].seq
                        || (int)(tag & 0xffff) != next[w][c]
                        || ((next[w][c] % 3 == 0)
                            != (m->event && strcmp(m->event, "tick") == 0))) {
                        fprintf(stderr, "reader: bad message %ld on %d "
                                "(want %d)\n", tag, c,
                                w < WR_WRITERS ? next[w][c] : -1);
                        return 17;
                    }
                    next[w][c]++;
                    last[c] = m->id;
                    seen++;
                }
            }
        } while (n == 64);
    }
    for (c = 0; c < WR_CHANNELS; c++) {
        comet_store_unsubscribe(st, slot, &refs[c], comet_now_mono());
    }
    comet_store_proc_detach(st, slot);
    return 0;
}

START_TEST(writers_and_readers_see_every_message_once_in_order)
{
    comet_store_t *st = store_util_make(16 * MB, 5000, 0, 0, MP_SLOTS);
    pid_t readers[WR_READERS], writers[2];
    int ready[2], go[2], i;
    comet_store_stats_t s;
    char c;

    pipes_open();
    ck_assert_int_eq(pipe(ready), 0);
    ck_assert_int_eq(pipe(go), 0);
    for (i = 0; i < WR_READERS; i++) {
        readers[i] = fork();
        ck_assert_int_ge(readers[i], 0);
        if (readers[i] == 0) {
            close(go[1]);   /* writers start when the parent closes it */
            _exit(wr_reader(st, ready[1]));
        }
    }
    for (i = 0; i < WR_READERS; i++) {
        ck_assert(wait_byte(ready[0], 10000));
    }
    for (i = 0; i < 2; i++) {
        writers[i] = fork();
        ck_assert_int_ge(writers[i], 0);
        if (writers[i] == 0) {
            wr_writer_t a = { st, 0, 0 }, b = { st, 1, 0 }, d = { st, 2, 0 };
            pthread_t t1, t2;

            close(go[1]);
            if (read(go[0], &c, 1) != 0) {
                _exit(20);
            }
            if (i == 0) {
                wr_write(&a);
                _exit(a.failed ? 21 : 0);
            }
            pthread_create(&t1, NULL, wr_write, &b);
            pthread_create(&t2, NULL, wr_write, &d);
            pthread_join(t1, NULL);
            pthread_join(t2, NULL);
            _exit(b.failed || d.failed ? 22 : 0);
        }
    }
    close(go[1]);   /* all writers start at once */
    for (i = 0; i < 2; i++) {
        ck_assert_int_eq(wait_exit(writers[i], 40000), 0);
    }
    for (i = 0; i < WR_READERS; i++) {
        ck_assert_int_eq(wait_exit(readers[i], 40000), 0);
    }
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.published, WR_WRITERS * WR_CHANNELS * WR_PER_CHAN);
    ck_assert_uint_eq(s.messages, WR_WRITERS * WR_CHANNELS * WR_PER_CHAN);
    ck_assert_uint_eq(s.subscribers, 0);
    ck_assert_uint_eq(s.recoveries, 0);
    store_util_check(st);
}
END_TEST

/* ---- the reference model ------------------------------------------------ */

enum {
    M_PUB, M_SUB, M_UNSUB, M_READ_ID, M_READ_REF, M_DELETE, M_MAINTAIN,
    M_STATS, M_QUIT
};

#define M_CHANNELS  6
#define M_BUFLEN    8
#define M_TIMEOUT   STORE_UTIL_SEC(20)
#define M_IDLE      STORE_UTIL_SEC(10)
#define M_MAXSUBS   64
#define M_MAXINC    4096

typedef struct m_op_t {
    int type, chan, k, event;
    apr_uint32_t len, opno;
    apr_size_t max_msgs;
    comet_msgid_t after;
    apr_time_t now;
} m_op_t;

typedef struct m_res_t {
    apr_status_t rv;
    apr_uint32_t receivers, n32;
    apr_uint64_t seq, digest, n64a, n64b;
    int nmsgs, missed, deleted, more;
} m_res_t;

static const char *m_name(int c)
{
    static const char *const names[M_CHANNELS] = {
        "m0", "m1", "m/2", "m3",
        "a-long-channel-name-beyond-twenty-four-bytes", "m5"
    };
    return names[c];
}

static void m_payload(char *buf, apr_uint32_t opno, apr_uint32_t len)
{
    apr_uint32_t i;

    for (i = 0; i < len; i++) {
        buf[i] = (char)('a' + (opno * 7 + i) % 26);
    }
}

static apr_uint64_t m_mix(apr_uint64_t h, const void *p, apr_size_t n)
{
    const unsigned char *b = p;

    while (n--) {
        h = (h ^ *b++) * APR_UINT64_C(0x100000001b3);
    }
    return h;
}

static apr_uint64_t m_digest(apr_uint64_t h, apr_uint64_t seq,
                             const char *ev, apr_size_t evlen,
                             const char *data, apr_size_t len)
{
    h = m_mix(h, &seq, sizeof(seq));
    h = m_mix(h, &evlen, sizeof(evlen));
    h = m_mix(h, ev, evlen);
    h = m_mix(h, &len, sizeof(len));
    return m_mix(h, data, len);
}

static void m_event(char *ev, apr_uint32_t opno)
{
    snprintf(ev, 8, "ev%u", opno % 10);
}

/* A worker: one process, one slot, its own list of subscriptions. */
static void m_worker(comet_store_t *st, int in, int out)
{
    comet_chanref_t subs[M_MAXSUBS];
    int nsubs = 0;
    apr_uint32_t slot;
    apr_pool_t *p;
    m_op_t op;
    char buf[512], ev[8];

    apr_pool_create(&p, NULL);
    if (comet_store_proc_attach(st, getpid(), &slot) != APR_SUCCESS) {
        _exit(30);
    }
    while (read(in, &op, sizeof(op)) == sizeof(op)) {
        m_res_t res;
        comet_read_t r;
        comet_store_stats_t s;
        const char *name = m_name(op.chan);
        int i;

        memset(&res, 0, sizeof(res));
        apr_pool_clear(p);
        switch (op.type) {
        case M_PUB: {
            comet_publish_t m = { name, strlen(name), buf, op.len, NULL, 0,
                                  NULL, 0 };
            comet_publish_result_t pr;

            memset(&pr, 0, sizeof(pr));
            m_payload(buf, op.opno, op.len);
            if (op.event) {
                m_event(ev, op.opno);
                m.event = ev;
                m.event_len = strlen(ev);
            }
            res.rv = comet_store_publish(st, &m, op.now, NULL, NULL, &pr);
            res.seq = pr.id.seq;
            res.receivers = pr.receivers;
            break;
        }
        case M_SUB: {
            comet_msgid_t newest;

            res.rv = comet_store_subscribe(st, slot, name, strlen(name),
                                           op.now, &subs[nsubs], &newest);
            res.seq = newest.seq;
            if (res.rv == APR_SUCCESS) {
                nsubs++;
            }
            break;
        }
        case M_UNSUB:
            comet_store_unsubscribe(st, slot, &subs[op.k], op.now);
            memmove(&subs[op.k], &subs[op.k + 1],
                    sizeof(subs[0]) * (apr_size_t)(nsubs - op.k - 1));
            nsubs--;
            break;
        case M_READ_ID:
        case M_READ_REF:
            if (op.type == M_READ_ID) {
                res.rv = comet_store_read_by_id(st, name, strlen(name),
                                                op.after, op.max_msgs, 0,
                                                op.now, p, &r);
            }
            else {
                res.rv = comet_store_read(st, &subs[op.k], op.after,
                                          op.max_msgs, 0, op.now, p, &r);
            }
            if (res.rv == APR_SUCCESS) {
                res.nmsgs = r.msgs->nelts;
                res.missed = r.missed;
                res.deleted = r.deleted;
                res.more = r.more;
                res.seq = r.newest.seq;
                for (i = 0; i < r.msgs->nelts; i++) {
                    comet_msg_t *m = &APR_ARRAY_IDX(r.msgs, i, comet_msg_t);

                    res.digest = m_digest(res.digest, m->id.seq, m->event,
                                          m->event_len, m->data, m->data_len);
                }
            }
            break;
        case M_DELETE:
            res.rv = comet_store_delete(st, name, strlen(name), NULL, NULL,
                                        &res.receivers);
            break;
        case M_MAINTAIN:
            res.n32 = comet_store_maintain(st, op.now, NULL, NULL);
            break;
        case M_STATS:
            comet_store_stats(st, &s);
            res.n32 = s.channels;
            res.seq = s.messages;
            res.n64a = s.subscribers;
            res.n64b = s.published;
            res.receivers = (apr_uint32_t)comet_store_proc_subscribers(st,
                                                                       slot);
            break;
        default:
            _exit(0);
        }
        if (write(out, &res, sizeof(res)) != sizeof(res)) {
            _exit(31);
        }
    }
    _exit(0);
}

typedef struct m_msg_t {
    apr_uint64_t seq;
    apr_time_t mono;
    apr_uint32_t len, opno;
    int event;
} m_msg_t;

typedef struct m_inc_t {
    int deleted;
    int subs[2];
    apr_uint64_t floor, evicted, last_seq;
    apr_time_t touched;
    m_msg_t msgs[M_BUFLEN];
    int nmsgs;
} m_inc_t;

typedef struct m_model_t {
    m_inc_t incs[M_MAXINC];
    int ninc;
    int cur[M_CHANNELS];            /* incarnation index or -1 */
    int subs[2][M_MAXSUBS];         /* worker's subscriptions: incarnations */
    int nsubs[2];
    apr_uint64_t seq, reclaimed, published;
    apr_uint32_t epoch;
} m_model_t;

static void m_evict(m_model_t *md, m_inc_t *in)
{
    (void)md;
    in->evicted = in->msgs[0].seq;
    memmove(&in->msgs[0], &in->msgs[1], sizeof(in->msgs[0])
            * (apr_size_t)(in->nmsgs - 1));
    in->nmsgs--;
}

static void m_expire(m_model_t *md, m_inc_t *in, apr_time_t now, int keep)
{
    while (in->nmsgs) {
        if (in->nmsgs > keep) {
            m_evict(md, in);
        }
        else if (now - in->msgs[0].mono >= M_TIMEOUT) {
            apr_time_t end = in->msgs[0].mono + M_TIMEOUT;

            m_evict(md, in);
            if (!in->nmsgs && end > in->touched) {
                in->touched = end;
            }
        }
        else {
            break;
        }
    }
}

static int m_create(m_model_t *md, int chan, apr_time_t now)
{
    m_inc_t *in;

    ck_assert_int_lt(md->ninc, M_MAXINC);
    in = &md->incs[md->ninc];
    memset(in, 0, sizeof(*in));
    in->floor = md->reclaimed;
    in->touched = now;
    md->cur[chan] = md->ninc;
    return md->ninc++;
}

static void m_gone(m_model_t *md, m_inc_t *in)
{
    if (in->last_seq > md->reclaimed) {
        md->reclaimed = in->last_seq;
    }
}

static void m_expect_read(m_model_t *md, m_inc_t *in, const m_op_t *op,
                          m_res_t *want)
{
    apr_uint64_t from;
    int i;
    char buf[512], ev[8];

    want->rv = APR_SUCCESS;
    want->seq = in->last_seq;
    if (in->deleted) {
        want->deleted = 1;
        return;
    }
    m_expire(md, in, op->now, M_BUFLEN);
    if (op->after.epoch == 0 && op->after.seq == 0) {
        from = 0;
    }
    else if (op->after.epoch != md->epoch || op->after.seq > md->seq) {
        want->missed = 1;
        from = 0;
    }
    else {
        from = op->after.seq;
        if (from && from < in->floor) {
            want->missed = 1;
        }
    }
    if (in->evicted > from) {
        want->missed = 1;
    }
    for (i = 0; i < in->nmsgs; i++) {
        m_msg_t *m = &in->msgs[i];

        if (m->seq <= from) {
            continue;
        }
        if (op->max_msgs && (apr_size_t)want->nmsgs >= op->max_msgs) {
            want->more = 1;
            break;
        }
        m_payload(buf, m->opno, m->len);
        ev[0] = '\0';
        if (m->event) {
            m_event(ev, m->opno);
        }
        want->digest = m_digest(want->digest, m->seq, m->event ? ev : NULL,
                                strlen(ev), buf, m->len);
        want->nmsgs++;
    }
}

/* Apply op to the model; fill what the store must answer. */
static void m_apply(m_model_t *md, int w, const m_op_t *op, m_res_t *want)
{
    m_inc_t *in = NULL;
    int idx, i;

    memset(want, 0, sizeof(*want));
    idx = md->cur[op->chan];
    if (idx >= 0) {
        in = &md->incs[idx];
    }
    switch (op->type) {
    case M_PUB:
        if (!in) {
            in = &md->incs[m_create(md, op->chan, op->now)];
        }
        m_expire(md, in, op->now, INT32_MAX);
        m_expire(md, in, op->now, M_BUFLEN - 1);
        in->msgs[in->nmsgs].seq = ++md->seq;
        in->msgs[in->nmsgs].mono = op->now;
        in->msgs[in->nmsgs].len = op->len;
        in->msgs[in->nmsgs].opno = op->opno;
        in->msgs[in->nmsgs].event = op->event;
        in->nmsgs++;
        in->last_seq = md->seq;
        in->touched = op->now;
        md->published++;
        want->seq = md->seq;
        want->receivers = (apr_uint32_t)(in->subs[0] + in->subs[1]);
        break;
    case M_SUB:
        if (!in) {
            idx = m_create(md, op->chan, op->now);
            in = &md->incs[idx];
        }
        in->subs[w]++;
        in->touched = op->now;
        md->subs[w][md->nsubs[w]++] = idx;
        want->seq = in->last_seq;
        break;
    case M_UNSUB:
        in = &md->incs[md->subs[w][op->k]];
        memmove(&md->subs[w][op->k], &md->subs[w][op->k + 1],
                sizeof(int) * (apr_size_t)(md->nsubs[w] - op->k - 1));
        md->nsubs[w]--;
        in->subs[w]--;
        in->touched = op->now;
        /* Never published to: it goes with its last subscriber. */
        if (!in->deleted && !in->subs[0] && !in->subs[1] && !in->last_seq
            && !in->nmsgs) {
            for (i = 0; i < M_CHANNELS; i++) {
                if (md->cur[i] >= 0 && &md->incs[md->cur[i]] == in) {
                    md->cur[i] = -1;
                }
            }
        }
        break;
    case M_READ_ID:
        if (!in) {
            want->rv = COMET_ENOCHAN;
            break;
        }
        m_expect_read(md, in, op, want);
        break;
    case M_READ_REF:
        m_expect_read(md, &md->incs[md->subs[w][op->k]], op, want);
        break;
    case M_DELETE:
        if (!in) {
            want->rv = COMET_ENOCHAN;
            break;
        }
        m_gone(md, in);
        md->cur[op->chan] = -1;
        in->nmsgs = 0;
        in->deleted = 1;
        want->receivers = (apr_uint32_t)(in->subs[0] + in->subs[1]);
        break;
    case M_MAINTAIN:
        for (i = 0; i < M_CHANNELS; i++) {
            if (md->cur[i] < 0) {
                continue;
            }
            in = &md->incs[md->cur[i]];
            m_expire(md, in, op->now, INT32_MAX);
            if (!in->subs[0] && !in->subs[1] && !in->nmsgs
                && op->now - in->touched >= M_IDLE) {
                m_gone(md, in);
                md->cur[i] = -1;
                want->n32++;
            }
        }
        break;
    case M_STATS:
        for (i = 0; i < md->ninc; i++) {
            m_inc_t *x = &md->incs[i];
            int live = 0, k;

            for (k = 0; k < M_CHANNELS; k++) {
                live |= md->cur[k] == i;
            }
            if (live || (x->deleted && x->subs[0] + x->subs[1])) {
                want->n32++;
                want->seq += (apr_uint64_t)x->nmsgs;
            }
            want->n64a += (apr_uint64_t)(x->subs[0] + x->subs[1]);
            want->receivers += (apr_uint32_t)x->subs[w];
        }
        want->n64b = md->published;
        break;
    }
}

static void m_expect_eq(const m_res_t *got, const m_res_t *want, int opno,
                        int type)
{
    ck_assert_msg(got->rv == want->rv && got->receivers == want->receivers
                  && got->n32 == want->n32 && got->seq == want->seq
                  && got->digest == want->digest && got->n64a == want->n64a
                  && got->n64b == want->n64b && got->nmsgs == want->nmsgs
                  && got->missed == want->missed
                  && got->deleted == want->deleted && got->more == want->more,
                  "op %d (type %d): store rv=%d recv=%u n32=%u seq=%"
                  APR_UINT64_T_FMT " n=%d missed=%d del=%d more=%d; model "
                  "rv=%d recv=%u n32=%u seq=%" APR_UINT64_T_FMT
                  " n=%d missed=%d del=%d more=%d", opno, type, got->rv,
                  got->receivers, got->n32, got->seq, got->nmsgs,
                  got->missed, got->deleted, got->more, want->rv,
                  want->receivers, want->n32, want->seq, want->nmsgs,
                  want->missed, want->deleted, want->more);
}

START_TEST(random_operations_across_processes_match_a_reference_model)
{
    comet_store_t *st = store_util_make(2 * MB, M_BUFLEN, M_TIMEOUT, M_IDLE,
                                        4);
    static m_model_t md;
    int to[2][2], from[2][2], w, opno;
    pid_t pids[2];
    unsigned seed = 20240601u + (unsigned)_i;
    apr_time_t now = STORE_UTIL_SEC(1);
    comet_store_stats_t s;

    memset(&md, 0, sizeof(md));
    for (w = 0; w < M_CHANNELS; w++) {
        md.cur[w] = -1;
    }
    md.epoch = comet_store_epoch(st);
    comet_store_stats(st, &s);
    ck_assert_uint_le(s.channels_max, 4096);   /* maintain sees them all */
    for (w = 0; w < 2; w++) {
        ck_assert_int_eq(pipe(to[w]), 0);
        ck_assert_int_eq(pipe(from[w]), 0);
        pids[w] = fork();
        ck_assert_int_ge(pids[w], 0);
        if (pids[w] == 0) {
            m_worker(st, to[w][0], from[w][1]);
        }
    }

    for (opno = 0; opno < 4000; opno++) {
        m_op_t op;
        m_res_t got, want;
        int r = rand_r(&seed) % 100;

        memset(&op, 0, sizeof(op));
        w = rand_r(&seed) % 2;
        if (rand_r(&seed) % 4 == 0) {
            now += STORE_UTIL_SEC(rand_r(&seed) % 4);
        }
        op.now = now;
        op.opno = (apr_uint32_t)opno;
        op.chan = rand_r(&seed) % M_CHANNELS;
        if (r < 35) {
            op.type = M_PUB;
            op.len = (apr_uint32_t)(rand_r(&seed) % 300);
            op.event = rand_r(&seed) % 3 == 0;
        }
        else if (r < 45 && md.nsubs[w] < M_MAXSUBS) {
            op.type = M_SUB;
        }
        else if (r < 55 && md.nsubs[w]) {
            op.type = M_UNSUB;
            op.k = rand_r(&seed) % md.nsubs[w];
        }
        else if (r < 80 || (r < 88 && !md.nsubs[w])) {
            int a = rand_r(&seed) % 4;

            op.type = M_READ_ID;
            op.max_msgs = (apr_size_t)(rand_r(&seed) % 4) * 2;
            if (a == 1) {
                op.after.epoch = md.epoch;
                op.after.seq = (apr_uint64_t)rand_r(&seed)
                               % (md.seq + 3);
            }
            else if (a == 2) {
                op.after.epoch = md.epoch ^ 0x10;
                op.after.seq = 1;
            }
            else if (a == 3 && md.cur[op.chan] >= 0) {
                op.after.epoch = md.epoch;
                op.after.seq = md.incs[md.cur[op.chan]].last_seq;
            }
        }
        else if (r < 88) {
            op.type = M_READ_REF;
            op.k = rand_r(&seed) % md.nsubs[w];
            op.after.epoch = md.epoch;
            op.after.seq = (apr_uint64_t)rand_r(&seed) % (md.seq + 3);
        }
        else if (r < 91) {
            op.type = M_DELETE;
        }
        else if (r < 97) {
            op.type = M_MAINTAIN;
        }
        else {
            op.type = M_STATS;
        }
        m_apply(&md, w, &op, &want);
        ck_assert_int_eq(write(to[w][1], &op, sizeof(op)), sizeof(op));
        ck_assert_int_eq(read(from[w][0], &got, sizeof(got)), sizeof(got));
        m_expect_eq(&got, &want, opno, op.type);
    }
    for (w = 0; w < 2; w++) {
        m_op_t quit;

        memset(&quit, 0, sizeof(quit));
        quit.type = M_QUIT;
        ck_assert_int_eq(write(to[w][1], &quit, sizeof(quit)), sizeof(quit));
        ck_assert_int_eq(wait_exit(pids[w], 10000), 0);
    }
    store_util_check(st);
}
END_TEST

/* ---- crashes inside the critical section -------------------------------- */

/* In the victim: at the nth call of the hook at point, tell the parent and
 * wait to be killed, holding the store lock. */
static int crash_point, crash_nth, crash_count, crash_fd;

static void crash_hook(int point)
{
    char c = 'k';

    if (point == crash_point && ++crash_count == crash_nth) {
        (void)!write(crash_fd, &c, 1);
        for (;;) {
            pause();
        }
    }
}

enum {
    ACT_PUBLISH, ACT_PUBLISH_NEW, ACT_DELETE_SUBSCRIBED, ACT_DELETE_IDLE,
    ACT_SUBSCRIBE, ACT_UNSUBSCRIBE_LAST, ACT_READ, ACT_MAINTAIN
};

typedef struct crash_case_t {
    const char *name;
    int point, nth, action;
    int linked;         /* the victim's message survives the repair */
} crash_case_t;

static const crash_case_t crash_cases[] = {
    { "lock taken",          COMET_STORE_HOOK_LOCKED, 1, ACT_READ, 0 },
    { "evict: seq raised",   COMET_STORE_HOOK_EVICT_SEQ, 1, ACT_PUBLISH, 0 },
    { "evict: unlinked",     COMET_STORE_HOOK_EVICT_UNLINK, 1,
                             ACT_PUBLISH, 0 },
    { "blocks taken",        COMET_STORE_HOOK_ALLOC, 1, ACT_PUBLISH, 0 },
    { "append: 1st block",   COMET_STORE_HOOK_COPY, 1, ACT_PUBLISH, 0 },
    { "append: 5th block",   COMET_STORE_HOOK_COPY, 5, ACT_PUBLISH, 0 },
    { "append: linked",      COMET_STORE_HOOK_LINKED, 1, ACT_PUBLISH, 1 },
    { "wakeup queued",       COMET_STORE_HOOK_QUEUED, 1, ACT_PUBLISH, 1 },
    { "channel created",     COMET_STORE_HOOK_CREATED, 1, ACT_PUBLISH_NEW, 0 },
    { "delete: marked",      COMET_STORE_HOOK_DELETE, 1,
                             ACT_DELETE_SUBSCRIBED, 0 },
    { "delete: freed",       COMET_STORE_HOOK_RECLAIM, 1, ACT_DELETE_IDLE, 0 },
    { "subscribe: counted",  COMET_STORE_HOOK_SUBSCRIBE, 1, ACT_SUBSCRIBE, 0 },
    { "reclaim: freed",      COMET_STORE_HOOK_RECLAIM, 1, ACT_MAINTAIN, 0 },
    { "last subscriber of an unpublished channel: freed",
                             COMET_STORE_HOOK_RECLAIM, 1,
                             ACT_UNSUBSCRIBE_LAST, 0 },
};

#define CRASH_VICTIM_TAG   0xaaaa
#define CRASH_SURVIVOR_TAG 0xbbbb
#define CRASH_MSG_LEN      400      /* 8 blocks: "5th block" is mid-copy */

static void crash_victim(comet_store_t *st, const crash_case_t *cc)
{
    char buf[CRASH_MSG_LEN];
    comet_chanref_t ref;
    comet_msgid_t newest = { 0, 0 };
    comet_read_t r;
    apr_pool_t *p;
    apr_uint32_t slot;

    apr_pool_create(&p, NULL);
    store_util_fill(buf, sizeof(buf), CRASH_VICTIM_TAG);
    if ((cc->action == ACT_SUBSCRIBE || cc->action == ACT_UNSUBSCRIBE_LAST)
        && comet_store_proc_attach(st, getpid(), &slot) != APR_SUCCESS) {
        _exit(40);
    }
    comet_store_test_hook = crash_hook;
    switch (cc->action) {
    case ACT_PUBLISH:
        store_util_pub(st, "c", buf, sizeof(buf), STORE_UTIL_SEC(2), NULL);
        break;
    case ACT_PUBLISH_NEW:
        store_util_pub(st, "new", buf, sizeof(buf), STORE_UTIL_SEC(2), NULL);
        break;
    case ACT_DELETE_SUBSCRIBED:
        comet_store_delete(st, "c", 1, NULL, NULL, NULL);
        break;
    case ACT_DELETE_IDLE:
        comet_store_delete(st, "idle", 4, NULL, NULL, NULL);
        break;
    case ACT_SUBSCRIBE:
        comet_store_subscribe(st, slot, "c", 1, STORE_UTIL_SEC(2), &ref,
                              &newest);
        break;
    case ACT_UNSUBSCRIBE_LAST:
        if (comet_store_subscribe(st, slot, "fresh", 5, STORE_UTIL_SEC(2),
                                  &ref, &newest) != APR_SUCCESS) {
            _exit(42);
        }
        comet_store_unsubscribe(st, slot, &ref, STORE_UTIL_SEC(2));
        break;
    case ACT_READ:
        comet_store_read_by_id(st, "c", 1, newest, 0, 0, STORE_UTIL_SEC(2), p,
                               &r);
        break;
    case ACT_MAINTAIN:
        comet_store_maintain(st, STORE_UTIL_SEC(1000), NULL, NULL);
        break;
    }
    _exit(41);      /* the hook was never reached */
}

/* Blocks on the lock the victim holds; once the victim is dead it must get
 * through (repairing), publish, and read back sound messages. */
static int crash_survivor(comet_store_t *st)
{
    char buf[100];
    comet_read_t r;
    apr_pool_t *p;
    int i;

    apr_pool_create(&p, NULL);
    store_util_fill(buf, sizeof(buf), CRASH_SURVIVOR_TAG);
    if (store_util_pub(st, "c", buf, sizeof(buf), STORE_UTIL_SEC(3), NULL)
        != APR_SUCCESS) {
        return 50;
    }
    if (comet_store_read_by_id(st, "c", 1, (comet_msgid_t){ 0, 0 }, 0, 0,
                               STORE_UTIL_SEC(3), p, &r) != APR_SUCCESS) {
        return 51;
    }
    for (i = 0; i < r.msgs->nelts; i++) {
        comet_msg_t *m = &APR_ARRAY_IDX(r.msgs, i, comet_msg_t);

        if (store_util_verify(m->data, m->data_len) < 0) {
            return 52;
        }
    }
    return 0;
}

START_TEST(a_process_killed_inside_the_lock_is_repaired_after)
{
    const crash_case_t *cc = &crash_cases[_i];
    comet_store_t *st = store_util_make(MB, 3, STORE_UTIL_SEC(100),
                                        STORE_UTIL_SEC(10), 4);
    comet_chanref_t ref, dref, got[4];
    comet_msgid_t newest;
    comet_store_stats_t s;
    comet_read_t r;
    apr_uint32_t slot, dslot;
    pid_t victim, survivor;
    int hook[2], i, victim_seen = 0, survivor_seen = 0, overflow;
    char buf[200];
    apr_uint64_t prev = 0;

    /* "idle" first (the maintain pass reaches it before "c"), published
     * to once, unsubscribed: it goes once its message has expired; a full
     * buffer of three on "c" with a subscriber; "d" subscribed by a slot
     * that will stay. */
    ck_assert_int_eq(store_util_pub(st, "idle", "x", 1, 0, NULL),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, slot, "c", 1, 0, &ref, &newest),
                     APR_SUCCESS);
    for (i = 0; i < 3; i++) {
        store_util_fill(buf, sizeof(buf), (apr_uint32_t)i);
        ck_assert_int_eq(store_util_pub(st, "c", buf, sizeof(buf), 0, NULL),
                         APR_SUCCESS);
    }
    ck_assert_uint_eq(comet_store_proc_drain(st, slot, got, 4, &overflow), 1);
    ck_assert_int_eq(comet_store_proc_attach(st, getppid(), &dslot),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, dslot, "d", 1, 0, &dref,
                                           &newest), APR_SUCCESS);
    store_util_check(st);

    ck_assert_int_eq(pipe(hook), 0);
    crash_point = cc->point;
    crash_nth = cc->nth;
    crash_fd = hook[1];
    victim = fork();
    ck_assert_int_ge(victim, 0);
    if (victim == 0) {
        crash_victim(st, cc);
    }
    ck_assert_msg(wait_byte(hook[0], 5000), "%s: hook not reached", cc->name);

    survivor = fork();
    ck_assert_int_ge(survivor, 0);
    if (survivor == 0) {
        _exit(crash_survivor(st));
    }
    wait_sleeping(survivor);
    kill(victim, SIGKILL);
    ck_assert_int_eq(wait_exit(victim, 5000), 128 + SIGKILL);
    ck_assert_msg(wait_exit(survivor, 10000) == 0, "%s: survivor failed",
                  cc->name);

    comet_store_stats(st, &s);
    ck_assert_msg(s.recoveries == 1, "%s: %" APR_UINT64_T_FMT " recoveries",
                  cc->name, s.recoveries);
    store_util_check(st);

    r.msgs = NULL;
    ck_assert_int_eq(comet_store_read(st, &ref, (comet_msgid_t){ 0, 0 }, 0, 0,
                                      STORE_UTIL_SEC(4), comet_test_pool, &r),
                     APR_SUCCESS);
    if (cc->action == ACT_DELETE_SUBSCRIBED) {
        ck_assert(r.deleted);
    }
    for (i = 0; i < r.msgs->nelts; i++) {
        comet_msg_t *m = &APR_ARRAY_IDX(r.msgs, i, comet_msg_t);
        long tag = store_util_verify(m->data, m->data_len);

        ck_assert_msg(tag >= 0, "%s: torn message %d", cc->name, i);
        ck_assert(m->id.seq > prev);
        prev = m->id.seq;
        victim_seen += tag == CRASH_VICTIM_TAG;
        survivor_seen += tag == CRASH_SURVIVOR_TAG;
    }
    if (cc->action != ACT_DELETE_SUBSCRIBED) {
        ck_assert_int_eq(r.msgs->nelts, 3);
        ck_assert_int_eq(survivor_seen, 1);
        ck_assert(r.missed);
        ck_assert_msg(victim_seen == cc->linked, "%s: victim's message %s",
                      cc->name, victim_seen ? "kept" : "lost");
    }
    if (cc->action == ACT_SUBSCRIBE) {
        /* The dead victim's subscription goes with its slot. */
        ck_assert_uint_eq(s.subscribers, 3);
        ck_assert_uint_eq(comet_store_proc_reap(st), 1);
        comet_store_stats(st, &s);
        ck_assert_uint_eq(s.subscribers, 2);
    }
    if (cc->action == ACT_PUBLISH_NEW) {
        ck_assert_int_eq(comet_store_read_by_id(st, "new", 3,
                                                (comet_msgid_t){ 0, 0 }, 0, 0,
                                                STORE_UTIL_SEC(4),
                                                comet_test_pool, &r),
                         APR_SUCCESS);
        ck_assert_int_eq(r.msgs->nelts, 0);
    }
    if (cc->action == ACT_UNSUBSCRIBE_LAST) {
        ck_assert_int_eq(comet_store_read_by_id(st, "fresh", 5,
                                                (comet_msgid_t){ 0, 0 }, 0, 0,
                                                STORE_UTIL_SEC(4),
                                                comet_test_pool, &r),
                         COMET_ENOCHAN);
        ck_assert_uint_eq(s.subscribers, 2);
    }
    if (cc->action == ACT_DELETE_IDLE || cc->action == ACT_MAINTAIN) {
        ck_assert_int_eq(comet_store_read_by_id(st, "idle", 4,
                                                (comet_msgid_t){ 0, 0 }, 0, 0,
                                                STORE_UTIL_SEC(4),
                                                comet_test_pool, &r),
                         COMET_ENOCHAN);
    }
    store_util_check(st);
}
END_TEST

START_TEST(a_repair_cut_short_by_another_kill_is_done_again)
{
    comet_store_t *st = store_util_make(MB, 3, 0, 0, 4);
    comet_store_stats_t s;
    pid_t victim, repairer;
    int hook[2];
    char buf[200];

    store_util_fill(buf, sizeof(buf), 1);
    ck_assert_int_eq(store_util_pub(st, "c", buf, sizeof(buf), 0, NULL),
                     APR_SUCCESS);
    ck_assert_int_eq(store_util_pub(st, "e", buf, sizeof(buf), 0, NULL),
                     APR_SUCCESS);
    ck_assert_int_eq(pipe(hook), 0);
    crash_fd = hook[1];

    crash_point = COMET_STORE_HOOK_LINKED;
    crash_nth = 1;
    victim = fork();
    if (victim == 0) {
        comet_store_test_hook = crash_hook;
        store_util_pub(st, "c", buf, sizeof(buf), 1, NULL);
        _exit(41);
    }
    ck_assert(wait_byte(hook[0], 5000));
    kill(victim, SIGKILL);
    ck_assert_int_eq(wait_exit(victim, 5000), 128 + SIGKILL);

    /* The next locker dies in the middle of its repair. */
    crash_point = COMET_STORE_HOOK_REPAIR;
    crash_nth = 1;
    repairer = fork();
    if (repairer == 0) {
        comet_store_test_hook = crash_hook;
        store_util_pub(st, "c", buf, sizeof(buf), 1, NULL);
        _exit(41);
    }
    ck_assert(wait_byte(hook[0], 5000));
    kill(repairer, SIGKILL);
    ck_assert_int_eq(wait_exit(repairer, 5000), 128 + SIGKILL);

    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.recoveries, 1);
    ck_assert_uint_eq(s.messages, 3);
    store_util_check(st);
}
END_TEST

START_TEST(after_a_repair_slots_with_queued_channels_are_kicked_again)
{
    comet_store_t *st = store_util_make(MB, 0, 0, 0, 4);
    comet_chanref_t ref, got[4];
    comet_msgid_t newest;
    apr_uint32_t slot;
    pid_t victim;
    int hook[2], overflow;

    pipes_open();
    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, slot, "c", 1, 0, &ref, &newest),
                     APR_SUCCESS);
    ck_assert_int_eq(pipe(hook), 0);
    crash_fd = hook[1];
    crash_point = COMET_STORE_HOOK_QUEUED;
    crash_nth = 1;
    victim = fork();
    if (victim == 0) {
        comet_publish_t m = { "c", 1, "x", 1, NULL, 0, NULL, 0 };

        comet_store_test_hook = crash_hook;
        comet_store_publish(st, &m, 1, pipe_wake, NULL, NULL);
        _exit(41);
    }
    ck_assert(wait_byte(hook[0], 5000));
    kill(victim, SIGKILL);
    ck_assert_int_eq(wait_exit(victim, 5000), 128 + SIGKILL);
    /* The victim marked the slot woken but died before kicking it. */
    ck_assert(!wait_byte(wake_pipe[slot][0], 0));
    comet_store_maintain(st, 2, pipe_wake, NULL);
    ck_assert(wait_byte(wake_pipe[slot][0], 0));
    ck_assert_uint_eq(comet_store_proc_drain(st, slot, got, 4, &overflow), 1);
    ck_assert_uint_eq(got[0].index, ref.index);
    /* Only once. */
    comet_store_maintain(st, 3, pipe_wake, NULL);
    ck_assert(!wait_byte(wake_pipe[slot][0], 0));
    store_util_check(st);
}
END_TEST

/* A busy process killed at random instants, again and again, while another
 * keeps working: the store stays consistent and never hands out a torn
 * message. */
#define RK_ROUNDS 150

static void rk_busy(comet_store_t *st, unsigned seed, volatile int *stop,
                    int can_delete, int ready_fd)
{
    static const char *const names[] = { "k0", "k1", "k/2", "k3" };
    comet_chanref_t refs[16];
    int nrefs = 0;
    apr_uint32_t slot;
    apr_pool_t *p;
    char buf[700];

    apr_pool_create(&p, NULL);
    if (comet_store_proc_attach(st, getpid(), &slot) != APR_SUCCESS) {
        _exit(60);
    }
    if (ready_fd >= 0 && write(ready_fd, "r", 1) != 1) {
        _exit(63);
    }
    while (!*stop) {
        const char *name = names[rand_r(&seed) % 4];
        int r = rand_r(&seed) % 100;
        comet_read_t rd;
        comet_msgid_t newest;
        int i;

        apr_pool_clear(p);
        if (r < 50) {
            apr_size_t len = 8 + (apr_size_t)(rand_r(&seed) % 690);
            apr_status_t rv;

            store_util_fill(buf, len, (apr_uint32_t)rand_r(&seed));
            rv = store_util_pub(st, name, buf, len, comet_now_mono(), NULL);
            if (rv != APR_SUCCESS && rv != COMET_EFULL) {
                _exit(61);
            }
        }
        else if (r < 80) {
            if (comet_store_read_by_id(st, name, strlen(name),
                                       (comet_msgid_t){ 0, 0 }, 0, 0,
                                       comet_now_mono(), p, &rd)
                == APR_SUCCESS) {
                for (i = 0; i < rd.msgs->nelts; i++) {
                    comet_msg_t *m = &APR_ARRAY_IDX(rd.msgs, i, comet_msg_t);

                    if (store_util_verify(m->data, m->data_len) < 0) {
                        _exit(62);
                    }
                }
            }
        }
        else if (r < 90 && nrefs < 16) {
            if (comet_store_subscribe(st, slot, name, strlen(name),
                                      comet_now_mono(), &refs[nrefs], &newest)
                == APR_SUCCESS) {
                nrefs++;
            }
        }
        else if (r < 97 && nrefs) {
            comet_store_unsubscribe(st, slot, &refs[--nrefs],
                                    comet_now_mono());
        }
        else if (can_delete) {
            comet_store_delete(st, name, strlen(name), NULL, NULL, NULL);
        }
    }
    _exit(0);
}

START_TEST(random_kills_never_leave_a_torn_or_inconsistent_store)
{
    comet_store_t *st = store_util_make(2 * MB, 20, 0, 0, 8);
    volatile int *stop = store_util_segment(4096);
    comet_store_stats_t s;
    pid_t other;
    unsigned seed = 4242;
    int round, ready[2];

    ck_assert_int_eq(pipe(ready), 0);
    other = fork();
    ck_assert_int_ge(other, 0);
    if (other == 0) {
        rk_busy(st, 1, stop, 0, -1);
    }
    for (round = 0; round < RK_ROUNDS; round++) {
        pid_t victim = fork();
        const char *names[] = { "k0", "k1", "k/2", "k3" };
        int i, k;

        ck_assert_int_ge(victim, 0);
        if (victim == 0) {
            rk_busy(st, (unsigned)round + 100, stop, 1, ready[1]);
        }
        /* A random instant in the victim's busy life. */
        ck_assert(wait_byte(ready[0], 5000));
        poll(NULL, 0, rand_r(&seed) % 3);
        kill(victim, SIGKILL);
        ck_assert_int_eq(wait_exit(victim, 5000), 128 + SIGKILL);
        store_util_check(st);
        for (i = 0; i < 4; i++) {
            comet_read_t r;

            if (comet_store_read_by_id(st, names[i], strlen(names[i]),
                                       (comet_msgid_t){ 0, 0 }, 0, 0,
                                       comet_now_mono(), comet_test_pool, &r)
                != APR_SUCCESS) {
                continue;
            }
            for (k = 0; k < r.msgs->nelts; k++) {
                comet_msg_t *m = &APR_ARRAY_IDX(r.msgs, k, comet_msg_t);

                ck_assert_msg(store_util_verify(m->data, m->data_len) >= 0,
                              "round %d: torn message", round);
            }
        }
        comet_store_proc_reap(st);
    }
    *stop = 1;
    ck_assert_int_eq(wait_exit(other, 10000), 0);
    comet_store_proc_reap(st);
    comet_store_stats(st, &s);
    ck_assert_msg(s.recoveries > 0, "no kill landed inside the lock");
    if (getenv("COMET_TEST_VERBOSE")) {
        fprintf(stderr, "random kills: %" APR_UINT64_T_FMT " of %d inside "
                "the lock\n", s.recoveries, RK_ROUNDS);
    }
    ck_assert_uint_eq(s.subscribers, 0);
    store_util_check(st);
}
END_TEST

/* ---- crashes inside a feed ------------------------------------------------ */

#define FEED_CRASH_EPOCH 0xfeedbeefu

typedef struct feed_crash_case_t {
    const char  *name;
    int          point, nth;
    apr_uint64_t seq;           /* the victim's: 4 follows, 10 is a gap  */
    int          linked;        /* the victim's message survives          */
} feed_crash_case_t;

static const feed_crash_case_t feed_crash_cases[] = {
    { "gap: moved",          COMET_STORE_HOOK_FEED_MOVED, 1, 10, 0 },
    { "gap: 1st block",      COMET_STORE_HOOK_COPY, 1, 10, 0 },
    { "in order: 5th block", COMET_STORE_HOOK_COPY, 5, 4, 0 },
    { "in order: linked",    COMET_STORE_HOOK_LINKED, 1, 4, 1 },
};

static apr_status_t feed_tagged(comet_store_t *st, apr_uint64_t seq,
                                apr_uint64_t expect, apr_uint32_t tag,
                                apr_size_t len)
{
    comet_store_feed_t f;
    char buf[CRASH_MSG_LEN];

    store_util_fill(buf, len, tag);
    memset(&f, 0, sizeof(f));
    f.channel = "f";
    f.channel_len = 1;
    f.has_msg = 1;
    f.seq = seq;
    f.data = buf;
    f.data_len = len;
    f.expect_fed = 1;
    f.expect_last = expect;
    return comet_store_feed(st, &f, STORE_UTIL_SEC(2), NULL, NULL, NULL);
}

/* After the victim's death: feed the next message where the channel is
 * now, as a feeder of another process would. */
static int feed_crash_survivor(comet_store_t *st)
{
    comet_store_pos_t pos;

    if (comet_store_position(st, 0, "f", 1, &pos) != APR_SUCCESS
        || !pos.fed) {
        return 60;
    }
    return feed_tagged(st, pos.last + 1, pos.last, CRASH_SURVIVOR_TAG, 100)
           == APR_SUCCESS ? 0 : 61;
}

START_TEST(a_process_killed_inside_a_feed_is_repaired_after)
{
    const feed_crash_case_t *cc = &feed_crash_cases[_i];
    comet_store_config_t cfg;
    comet_store_t *st;
    comet_chanref_t ref;
    comet_msgid_t newest, after = { FEED_CRASH_EPOCH, 3 };
    comet_store_stats_t s;
    comet_read_t r;
    apr_uint32_t slot;
    apr_uint64_t prev = 3;
    pid_t victim, survivor;
    int hook[2], i, victim_seen = 0, survivor_seen = 0;

    comet_store_config_default(&cfg, MB);
    cfg.epoch = FEED_CRASH_EPOCH;
    cfg.buffer_length = 3;
    cfg.max_procs = 4;
    st = store_util_make_cfg(&cfg);
    ck_assert_int_eq(comet_store_proc_attach(st, getpid(), &slot),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_store_subscribe(st, slot, "f", 1, 0, &ref,
                                           &newest), APR_SUCCESS);
    for (i = 1; i <= 3; i++) {
        comet_store_feed_t f;

        memset(&f, 0, sizeof(f));
        f.channel = "f";
        f.channel_len = 1;
        f.has_msg = 1;
        f.seq = (apr_uint64_t)i;
        f.data = "seed0000";
        f.data_len = 8;
        f.expect_fed = i > 1;
        f.expect_last = (apr_uint64_t)i - 1;
        ck_assert_int_eq(comet_store_feed(st, &f, 0, NULL, NULL, NULL),
                         APR_SUCCESS);
    }
    store_util_check(st);

    ck_assert_int_eq(pipe(hook), 0);
    crash_point = cc->point;
    crash_nth = cc->nth;
    crash_fd = hook[1];
    victim = fork();
    ck_assert_int_ge(victim, 0);
    if (victim == 0) {
        comet_store_test_hook = crash_hook;
        feed_tagged(st, cc->seq, 3, CRASH_VICTIM_TAG, CRASH_MSG_LEN);
        _exit(41);
    }
    ck_assert_msg(wait_byte(hook[0], 5000), "%s: hook not reached", cc->name);
    survivor = fork();
    ck_assert_int_ge(survivor, 0);
    if (survivor == 0) {
        _exit(feed_crash_survivor(st));
    }
    wait_sleeping(survivor);
    kill(victim, SIGKILL);
    ck_assert_int_eq(wait_exit(victim, 5000), 128 + SIGKILL);
    ck_assert_msg(wait_exit(survivor, 10000) == 0, "%s: survivor failed",
                  cc->name);
    comet_store_stats(st, &s);
    ck_assert_uint_eq(s.recoveries, 1);
    store_util_check(st);

    ck_assert_int_eq(comet_store_read(st, &ref, after, 0, 0,
                                      STORE_UTIL_SEC(3), comet_test_pool, &r),
                     APR_SUCCESS);
    for (i = 0; i < r.msgs->nelts; i++) {
        comet_msg_t *m = &APR_ARRAY_IDX(r.msgs, i, comet_msg_t);
        long tag = store_util_verify(m->data, m->data_len);

        ck_assert_msg(tag >= 0, "%s: torn message %d", cc->name, i);
        ck_assert_msg(m->id.seq == prev + 1 || (i == 0 && r.missed),
                      "%s: seq %" APR_UINT64_T_FMT " after %"
                      APR_UINT64_T_FMT, cc->name, m->id.seq, prev);
        prev = m->id.seq;
        victim_seen += tag == CRASH_VICTIM_TAG;
        survivor_seen += tag == CRASH_SURVIVOR_TAG;
    }
    ck_assert_int_eq(survivor_seen, 1);
    ck_assert_msg(victim_seen == cc->linked, "%s: victim's message %s",
                  cc->name, victim_seen ? "kept" : "lost");
    /* A gap was announced before the crash: whoever reads from before it
     * is told. */
    ck_assert_int_eq(r.missed, cc->seq != 4);
}
END_TEST

Suite *test_comet_store_mp_suite(void)
{
    Suite *s = suite_create("comet_store_mp");
    TCase *mp = tcase_create("processes");
    TCase *crash = tcase_create("crashes");

    tcase_add_checked_fixture(mp, store_util_setup,
                              store_util_teardown);
    tcase_set_timeout(mp, 60);
    tcase_add_test(mp, writers_and_readers_see_every_message_once_in_order);
    tcase_add_loop_test(mp,
                        random_operations_across_processes_match_a_reference_model,
                        0, 3);
    suite_add_tcase(s, mp);

    tcase_add_checked_fixture(crash, store_util_setup,
                              store_util_teardown);
    tcase_set_timeout(crash, 60);
    tcase_add_loop_test(crash,
                        a_process_killed_inside_the_lock_is_repaired_after,
                        0, (int)(sizeof(crash_cases)
                                 / sizeof(crash_cases[0])));
    tcase_add_loop_test(crash, a_process_killed_inside_a_feed_is_repaired_after,
                        0, (int)(sizeof(feed_crash_cases)
                                 / sizeof(feed_crash_cases[0])));
    tcase_add_test(crash, a_repair_cut_short_by_another_kill_is_done_again);
    tcase_add_test(crash,
                   after_a_repair_slots_with_queued_channels_are_kicked_again);
    tcase_add_test(crash,
                   random_kills_never_leave_a_torn_or_inconsistent_store);
    suite_add_tcase(s, crash);
    return s;
}
