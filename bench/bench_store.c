/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * bench_store -- figures for the shared-memory channel store.
 *
 *   make bench-store            (QUICK=1 or --quick for a short run)
 *
 * Publishes per second from one process and from two contending ones, the
 * time from a publish until a subscribed process (woken through a pipe,
 * as the hub thread is) has read the message, the cost of a read, the
 * shared memory a channel and a 100-byte message take, and how long the
 * lock is held by the rare whole-table passes (maintain, sweep, repair).
 * Prints a table; BENCHMARKS.md keeps the figures.
 */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <apr_general.h>
#include <apr_pools.h>

#include "comet_store.h"

#define SEG_SIZE (64 * 1024 * 1024)

static int quick;
static int wake_fd[2];

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static apr_int64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (apr_int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what, apr_status_t rv)
{
    char buf[128];

    fprintf(stderr, "bench_store: %s: %s\n", what,
            comet_strerror(rv, buf, sizeof(buf)));
    exit(1);
}

static comet_store_t *make_store(apr_pool_t *p, apr_uint32_t buffer_length)
{
    comet_store_config_t cfg;
    comet_store_t *st;
    void *seg;
    apr_status_t rv;

    comet_store_config_default(&cfg, SEG_SIZE);
    cfg.max_procs = 16;
    if (buffer_length) {
        cfg.buffer_length = buffer_length;
    }
    seg = mmap(NULL, SEG_SIZE, PROT_READ | PROT_WRITE,
               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (seg == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    if ((rv = comet_store_format(&st, seg, &cfg, p)) != APR_SUCCESS) {
        die("format", rv);
    }
    return st;
}

static void pipe_wake(void *baton, apr_uint32_t slot)
{
    char c = 1;

    (void)baton;
    (void)slot;
    (void)!write(wake_fd[1], &c, 1);
}

/* n publishes of 100 bytes, round robin over nchan channels. */
static double publish_loop(comet_store_t *st, long n, int nchan, int base)
{
    char data[100], name[32];
    comet_publish_t m;
    double t0 = now_s();
    long i;
    apr_status_t rv;

    memset(data, 'x', sizeof(data));
    memset(&m, 0, sizeof(m));
    m.data = data;
    m.data_len = sizeof(data);
    m.channel = name;
    for (i = 0; i < n; i++) {
        m.channel_len = (apr_size_t)snprintf(name, sizeof(name), "bench/%d",
                                             base + (int)(i % nchan));
        rv = comet_store_publish(st, &m, comet_now_mono(), pipe_wake, NULL,
                                 NULL);
        if (rv != APR_SUCCESS) {
            die("publish", rv);
        }
    }
    return (double)n / (now_s() - t0);
}

/* Two processes publishing at once: the aggregate rate. */
static double publish_two(comet_store_t *st, long n, int nchan, int same)
{
    int go[2], i;
    pid_t pid[2];
    double t0;
    char c;

    if (pipe(go) != 0) {
        exit(1);
    }
    for (i = 0; i < 2; i++) {
        pid[i] = fork();
        if (pid[i] == 0) {
            close(go[1]);
            if (read(go[0], &c, 1) != 0) {
                _exit(1);
            }
            publish_loop(st, n, nchan, same ? 0 : 1000 * (i + 1));
            _exit(0);
        }
    }
    close(go[0]);
    t0 = now_s();
    close(go[1]);
    for (i = 0; i < 2; i++) {
        waitpid(pid[i], NULL, 0);
    }
    return 2.0 * (double)n / (now_s() - t0);
}

static int cmp_i64(const void *a, const void *b)
{
    apr_int64_t x = *(const apr_int64_t *)a, y = *(const apr_int64_t *)b;

    return x < y ? -1 : x > y;
}

/* A subscribed process waits on the wake pipe, drains, reads; the
 * publisher stamps the payload and waits for the ack before the next.
 * Latency: publish call start to message in the reader's hands. */
static void read_latency(comet_store_t *st, apr_pool_t *p, int rounds,
                         double *p50, double *p99)
{
    apr_int64_t *lat = mmap(NULL, sizeof(apr_int64_t) * (apr_size_t)rounds,
                            PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int ack[2], ready[2], i;
    pid_t reader;
    char c;

    if (pipe(wake_fd) != 0 || pipe(ack) != 0 || pipe(ready) != 0) {
        exit(1);
    }
    reader = fork();
    if (reader == 0) {
        comet_chanref_t ref, got[8];
        comet_msgid_t last;
        apr_uint32_t slot;
        int overflow, seen = 0;

        if (comet_store_proc_attach(st, getpid(), &slot) != APR_SUCCESS
            || comet_store_subscribe(st, slot, "lat", 3, comet_now_mono(),
                                     &ref, &last) != APR_SUCCESS) {
            _exit(1);
        }
        (void)!write(ready[1], "r", 1);
        while (seen < rounds) {
            struct pollfd pf = { wake_fd[0], POLLIN, 0 };
            apr_size_t n, k;

            poll(&pf, 1, -1);
            (void)!read(wake_fd[0], &c, 1);
            n = comet_store_proc_drain(st, slot, got, 8, &overflow);
            for (k = 0; k < n; k++) {
                comet_read_t r;
                int j;

                apr_pool_clear(p);
                comet_store_read(st, &got[k], last, 0, 0, comet_now_mono(),
                                 p, &r);
                for (j = 0; j < r.msgs->nelts; j++) {
                    comet_msg_t *m = &APR_ARRAY_IDX(r.msgs, j, comet_msg_t);
                    apr_int64_t stamp;

                    memcpy(&stamp, m->data, sizeof(stamp));
                    lat[seen++] = now_ns() - stamp;
                    last = m->id;
                }
            }
            (void)!write(ack[1], "a", 1);
        }
        _exit(0);
    }
    (void)!read(ready[0], &c, 1);
    for (i = 0; i < rounds; i++) {
        char data[100];
        comet_publish_t m = { "lat", 3, data, sizeof(data), NULL, 0 };
        apr_int64_t stamp = now_ns();

        memset(data, 'y', sizeof(data));
        memcpy(data, &stamp, sizeof(stamp));
        comet_store_publish(st, &m, comet_now_mono(), pipe_wake, NULL, NULL);
        if (read(ack[0], &c, 1) != 1) {
            break;
        }
    }
    waitpid(reader, NULL, 0);
    qsort(lat, (size_t)rounds, sizeof(lat[0]), cmp_i64);
    *p50 = (double)lat[rounds / 2] / 1000.0;
    *p99 = (double)lat[rounds * 99 / 100] / 1000.0;
    close(wake_fd[0]);
    close(wake_fd[1]);
}

static double read_cost(comet_store_t *st, apr_pool_t *p, long n)
{
    comet_read_t r;
    comet_msgid_t after;
    comet_publish_result_t res;
    comet_publish_t m = { "rc", 2, "0123456789012345678901234567890123456789"
                          "0123456789012345678901234567890123456789"
                          "01234567890123456789", 100, NULL, 0 };
    double t0;
    long i;

    comet_store_publish(st, &m, comet_now_mono(), NULL, NULL, &res);
    comet_store_publish(st, &m, comet_now_mono(), NULL, NULL, &res);
    after = res.id;
    after.seq--;
    t0 = now_s();
    for (i = 0; i < n; i++) {
        apr_pool_clear(p);
        comet_store_read_by_id(st, "rc", 2, after, 0, 0, comet_now_mono(), p,
                               &r);
    }
    return (now_s() - t0) / (double)n * 1e6;
}

static int walk_locks;

static void count_locks(int point)
{
    if (point == COMET_STORE_HOOK_LOCKED) {
        walk_locks++;
    }
}

/* PUBSUB CHANNELS on a full store: a forked process walks the table
 * (comet_store_channels) with a costly pattern while this one publishes to
 * another channel and times each publish.  Returns the walk's duration;
 * the longest and the 99.9th percentile publish during it (a publish waits
 * for the lock as long as the walk holds it at a stretch). */
static double walk_stall(apr_pool_t *p, double *pub_max, double *pub_p999,
                         int *nchan, double *hold_mean, int *holds)
{
    enum { IDLEN = 200, MAXLAT = 1 << 20 };
    comet_store_t *st = make_store(p, 0);
    comet_chanref_t ref;
    comet_msgid_t newest;
    comet_publish_t m = { "bench/pub", 9, "x", 1, NULL, 0 };
    apr_int64_t *lat = malloc(MAXLAT * sizeof(*lat));
    apr_uint32_t slot;
    char id[IDLEN + 16], pattern[48];
    double walk = 0;
    int res[2], i, n = 0;
    pid_t pid;

    if (!lat || comet_store_proc_attach(st, getpid(), &slot) != APR_SUCCESS
        || pipe(res) != 0) {
        exit(1);
    }
    /* As many subscribed channels with 200-byte ids as the segment holds. */
    memset(id, 'a', IDLEN);
    for (i = 0;; i++) {
        int len = IDLEN + snprintf(id + IDLEN, 16, "%d", i);

        if (comet_store_subscribe(st, slot, id, (apr_size_t)len, 1, &ref,
                                  &newest) != APR_SUCCESS) {
            break;
        }
    }
    *nchan = i;
    /* Without a pattern the walk is almost all copying under the lock:
     * its time over its lock holds is the mean hold. */
    {
        apr_pool_t *wp;
        double t0;

        apr_pool_create(&wp, NULL);
        walk_locks = 0;
        comet_store_test_hook = count_locks;
        t0 = now_s();
        comet_store_channels(st, NULL, APR_SIZE_MAX, wp);
        *hold_mean = (now_s() - t0) * 1e3 / (walk_locks ? walk_locks : 1);
        comet_store_test_hook = NULL;
        *holds = walk_locks;
        apr_pool_destroy(wp);
    }
    /* "*aaa...ab": matches nothing, and costs the glob its worst case,
     * O(pattern x id), per channel. */
    pattern[0] = '*';
    memset(pattern + 1, 'a', sizeof(pattern) - 3);
    strcpy(pattern + sizeof(pattern) - 2, "b");
    comet_store_publish(st, &m, comet_now_mono(), NULL, NULL, NULL);
    pid = fork();
    if (pid == 0) {
        apr_pool_t *wp;
        double t0;

        apr_pool_create(&wp, NULL);
        t0 = now_s();
        comet_store_channels(st, pattern, APR_SIZE_MAX, wp);
        t0 = now_s() - t0;
        (void)!write(res[1], &t0, sizeof(t0));
        _exit(0);
    }
    close(res[1]);
    fcntl(res[0], F_SETFL, O_NONBLOCK);
    for (;;) {
        apr_int64_t t0 = now_ns();

        comet_store_publish(st, &m, comet_now_mono(), NULL, NULL, NULL);
        if (n < MAXLAT) {
            lat[n++] = now_ns() - t0;
        }
        if (read(res[0], &walk, sizeof(walk)) == sizeof(walk)) {
            break;
        }
    }
    waitpid(pid, NULL, 0);
    close(res[0]);
    qsort(lat, (size_t)n, sizeof(*lat), cmp_i64);
    *pub_max = (double)lat[n - 1] / 1e6;
    *pub_p999 = (double)lat[(apr_int64_t)n * 999 / 1000] / 1e3;
    free(lat);
    return walk * 1e3;
}

/* Kill a process holding the lock, time the next locker's repair. */
static void crash_hook(int point)
{
    if (point == COMET_STORE_HOOK_LINKED) {
        raise(SIGKILL);
    }
}

static double repair_ms(comet_store_t *st)
{
    comet_store_stats_t s;
    pid_t pid = fork();
    double t0;

    if (pid == 0) {
        comet_publish_t m = { "bench/0", 7, "x", 1, NULL, 0 };

        comet_store_test_hook = crash_hook;
        comet_store_publish(st, &m, comet_now_mono(), NULL, NULL, NULL);
        _exit(1);
    }
    waitpid(pid, NULL, 0);
    t0 = now_s();
    comet_store_stats(st, &s);
    return (now_s() - t0) * 1e3;
}

int main(int argc, char **argv)
{
    apr_pool_t *p, *rp;
    comet_store_t *st;
    comet_store_stats_t s0, s1;
    comet_store_config_t cfg;
    comet_chanref_t ref;
    comet_msgid_t newest;
    apr_uint32_t slot;
    long n;
    int i, nchan;
    double one, one_many, two_same, two_diff, p50, p99, rc, t0, maint, sweep;
    double per_chan, per_msg, per_sub, rep, fixed_mb;
    double walk, walk_max, walk_p999, walk_hold;
    int walk_chans, walk_holds;
    char name[32];

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            quick = 1;
        }
    }
    n = quick ? 200000 : 2000000;
    apr_initialize();
    apr_pool_create(&p, NULL);
    apr_pool_create(&rp, NULL);
    if (pipe(wake_fd) != 0) {
        return 1;
    }
    fcntl(wake_fd[1], F_SETFL, O_NONBLOCK);

    /* Throughput: 100-byte messages, buffer 100, 64 MB. */
    st = make_store(p, 0);
    one = publish_loop(st, n, 1, 0);
    one_many = publish_loop(st, n, 1000, 0);
    two_same = publish_two(st, n, 1, 1);
    two_diff = publish_two(st, n, 1000, 0);
    rc = read_cost(st, rp, n / 4);
    close(wake_fd[0]);
    close(wake_fd[1]);
    read_latency(st, rp, quick ? 2000 : 20000, &p50, &p99);

    /* Memory, on a fresh store: channels without messages, then one
     * 100-byte message each, then one subscribed slot each. */
    st = make_store(p, 0);
    nchan = 10000;
    comet_store_get_config(st, &cfg);
    comet_store_stats(st, &s0);
    if (comet_store_proc_attach(st, getpid(), &slot) != APR_SUCCESS) {
        return 1;
    }
    for (i = 0; i < nchan; i++) {
        char data[100];
        comet_publish_t m = { name, 0, data, sizeof(data), NULL, 0 };

        memset(data, 'z', sizeof(data));
        m.channel_len = (apr_size_t)snprintf(name, sizeof(name), "user/%d", i);
        comet_store_publish(st, &m, comet_now_mono(), NULL, NULL, NULL);
    }
    comet_store_stats(st, &s1);
    per_msg = (double)(s1.bytes_used - s0.bytes_used) / nchan;
    /* Everything outside the block area: header, slots, hash, records,
     * repair scratch; most of it is the channel table. */
    per_chan = (double)(SEG_SIZE - s0.bytes_free) / s0.channels_max;
    fixed_mb = (double)(SEG_SIZE - s0.bytes_free) / (1024.0 * 1024.0);
    for (i = 0; i < nchan; i++) {
        snprintf(name, sizeof(name), "user/%d", i);
        comet_store_subscribe(st, slot, name, strlen(name), comet_now_mono(),
                              &ref, &newest);
    }
    comet_store_stats(st, &s0);
    per_sub = (double)(s0.bytes_used - s1.bytes_used) / nchan;

    /* Whole-table passes on that store (10000 channels of 65536). */
    t0 = now_s();
    comet_store_maintain(st, comet_now_mono(), NULL, NULL);
    maint = (now_s() - t0) * 1e3;
    {
        /* A full sweep: what a publish to a full segment costs, at most
         * once per expiry instant. */
        comet_store_config_t c2 = cfg;

        c2.message_timeout = 1;
        comet_store_set_limits(st, &c2);
        t0 = now_s();
        for (i = 0; i < 16; i++) {
            comet_store_maintain(st, comet_now_mono(), NULL, NULL);
        }
        sweep = (now_s() - t0) * 1e3;
        comet_store_set_limits(st, &cfg);
    }
    for (i = 0; i < nchan; i++) {
        char data[100];
        comet_publish_t m = { name, 0, data, sizeof(data), NULL, 0 };

        memset(data, 'z', sizeof(data));
        m.channel_len = (apr_size_t)snprintf(name, sizeof(name), "user/%d", i);
        comet_store_publish(st, &m, comet_now_mono(), NULL, NULL, NULL);
    }
    rep = repair_ms(st);
    walk = walk_stall(p, &walk_max, &walk_p999, &walk_chans, &walk_hold,
                      &walk_holds);

    printf("store benchmark (%s run; 64 MB segment, 100-byte messages, "
           "buffer 100)\n", quick ? "quick" : "full");
    printf("  %-52s %12.0f /s\n", "publish, 1 process, 1 channel", one);
    printf("  %-52s %12.0f /s\n", "publish, 1 process, 1000 channels",
           one_many);
    printf("  %-52s %12.0f /s\n", "publish, 2 processes, same channel",
           two_same);
    printf("  %-52s %12.0f /s\n", "publish, 2 processes, 1000 channels each",
           two_diff);
    printf("  %-52s %12.2f us\n", "read of 1 new message (call)", rc);
    printf("  %-52s %12.1f us\n", "publish -> woken reader has it, median",
           p50);
    printf("  %-52s %12.1f us\n", "publish -> woken reader has it, p99", p99);
    printf("  %-52s %12.1f MB\n",
           "fixed part of the segment (table, slots, ...)", fixed_mb);
    printf("  %-52s %12.0f B\n", "  that is, per channel record",
           per_chan);
    printf("  %-52s %12.0f B\n", "shm per stored 100-byte message", per_msg);
    printf("  %-52s %12.0f B\n", "shm per channel with a subscribed process",
           per_sub);
    printf("  %-52s %12d\n", "channel records in 64 MB", (int)s0.channels_max);
    printf("  %-52s %12.3f ms\n", "maintain call (lock held)", maint);
    printf("  %-52s %12.3f ms\n", "16 maintain calls = all records, expiring",
           sweep);
    printf("  %-52s %12.2f ms\n", "repair after a crash, 10000 channels",
           rep);
    printf("  PUBSUB CHANNELS <costly pattern>, %d subscribed channels:\n",
           walk_chans);
    printf("  %-52s %12.3f ms\n", "  mean lock hold (walk without pattern)",
           walk_hold);
    printf("  %-52s %12d\n", "  lock holds per walk", walk_holds);
    printf("  %-52s %12.1f ms\n", "  the walk (another process)", walk);
    printf("  %-52s %12.3f ms\n", "  longest publish during the walk",
           walk_max);
    printf("  %-52s %12.2f us\n", "  publish p99.9 during the walk",
           walk_p999);
    return 0;
}
