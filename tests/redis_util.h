/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Real redis-server processes for the Redis client's tests (unit and
 * integration): each on a free 127.0.0.1 port (and ::1 when the machine
 * has it) and a Unix socket, in a temporary directory, no persistence,
 * in the foreground.  They are stopped by PID: by the test, and in any
 * case when the test process ends, however it ends (the kernel's
 * parent-death signal: check ends a failed test with _exit()).  Their
 * directories are named after the runner process, and the tcase's
 * unchecked teardown, which runs in the runner after the forked tests,
 * removes what a failed test left (redis_util_sweep). */
#ifndef COMET_REDIS_UTIL_H
#define COMET_REDIS_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <apr.h>

#include "comet_loop.h"

#define REDIS_UTIL_MAX 16

typedef struct redis_util_server_t {
    pid_t pid;
    int   port;
    char  dir[128];
    char  sock[192];
    char  extra[512];       /* more redis-server arguments, space-separated */
} redis_util_server_t;

static redis_util_server_t *redis_util_all[REDIS_UTIL_MAX];
static int redis_util_atexit_set;
static pid_t redis_util_owner;

/* Unchecked fixture: setup in the runner (the tests it forks inherit the
 * owner), teardown removes every directory of the runner's tests. */
static APR_INLINE void redis_util_sweep_setup(void)
{
    redis_util_owner = getpid();
}

static APR_INLINE void redis_util_sweep(void)
{
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf /tmp/comet-redis-%ld-*",
             (long)redis_util_owner);
    if (system(cmd) != 0) {
        fprintf(stderr, "%s failed\n", cmd);
    }
}

static APR_INLINE long long redis_util_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static APR_INLINE int redis_util_free_port(void)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0
        && getsockname(fd, (struct sockaddr *)&sa, &len) == 0) {
        port = ntohs(sa.sin_port);
    }
    if (fd >= 0) {
        close(fd);
    }
    return port;
}

static APR_INLINE int redis_util_bindable(int port)
{
    struct sockaddr_in sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0), ok, one = 1;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    ok = fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    if (fd >= 0) {
        close(fd);
    }
    return ok;
}

/* A port for a cluster node: its bus port (port + 10000) must be free
 * too, so both come from below the ephemeral range. */
static APR_INLINE int redis_util_free_cluster_port(void)
{
    static unsigned seed;
    int i;

    if (!seed) {
        seed = (unsigned)getpid() * 2654435761u ^ (unsigned)redis_util_ms();
    }
    for (i = 0; i < 1000; i++) {
        int port;

        seed = seed * 1103515245u + 12345u;
        port = 15000 + (int)((seed >> 8) % 10000);
        if (redis_util_bindable(port) && redis_util_bindable(port + 10000)) {
            return port;
        }
    }
    return -1;
}

static APR_INLINE int redis_util_can_connect(int port)
{
    struct sockaddr_in sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0), ok;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    if (fd >= 0) {
        close(fd);
    }
    return ok;
}

/* Stop by PID (sig: SIGTERM to stop, SIGKILL to crash it) and reap. */
static APR_INLINE void redis_util_kill(redis_util_server_t *s, int sig)
{
    int status;

    if (s->pid <= 0) {
        return;
    }
    kill(s->pid, sig);
    if (sig != SIGKILL) {
        long long until = redis_util_ms() + 5000;

        while (waitpid(s->pid, &status, WNOHANG) == 0) {
            if (redis_util_ms() > until) {
                kill(s->pid, SIGKILL);
                waitpid(s->pid, &status, 0);
                break;
            }
            poll(NULL, 0, 5);
        }
    }
    else {
        waitpid(s->pid, &status, 0);
    }
    s->pid = 0;
}

static APR_INLINE void redis_util_atexit(void)
{
    int i;

    for (i = 0; i < REDIS_UTIL_MAX; i++) {
        redis_util_server_t *s = redis_util_all[i];

        if (s) {
            char cmd[200];

            redis_util_kill(s, SIGKILL);
            snprintf(cmd, sizeof(cmd), "rm -rf '%s'", s->dir);
            if (s->dir[0] && system(cmd) != 0) {
                fprintf(stderr, "cannot remove %s\n", s->dir);
            }
            redis_util_all[i] = NULL;
        }
    }
}

/* (Re)start s: on s->port (a free one when 0), in s->dir (a new temporary
 * one when empty).  Returns 0 once it accepts connections, -1 otherwise. */
static APR_INLINE int redis_util_start(redis_util_server_t *s)
{
    char port[16], logf[200];
    const char *argv[64];
    char extra[512];
    long long until;
    int argc = 0, i;

    if (!s->dir[0]) {
        snprintf(s->dir, sizeof(s->dir), "/tmp/comet-redis-%ld-XXXXXX",
                 (long)(redis_util_owner ? redis_util_owner : getpid()));
        if (!mkdtemp(s->dir)) {
            return -1;
        }
        snprintf(s->sock, sizeof(s->sock), "%s/redis.sock", s->dir);
        for (i = 0; i < REDIS_UTIL_MAX && redis_util_all[i]; i++) {
        }
        if (i < REDIS_UTIL_MAX) {
            redis_util_all[i] = s;
        }
        if (!redis_util_atexit_set) {
            atexit(redis_util_atexit);
            redis_util_atexit_set = 1;
        }
    }
    if (!s->port) {
        s->port = redis_util_free_port();
    }
    snprintf(port, sizeof(port), "%d", s->port);
    snprintf(logf, sizeof(logf), "%s/redis.log", s->dir);
    argv[argc++] = "redis-server";
    argv[argc++] = "--port";
    argv[argc++] = port;
    argv[argc++] = "--bind";
    argv[argc++] = "127.0.0.1";
    argv[argc++] = "-::1";
    argv[argc++] = "--unixsocket";
    argv[argc++] = s->sock;
    argv[argc++] = "--unixsocketperm";
    argv[argc++] = "700";
    argv[argc++] = "--save";
    argv[argc++] = "";
    argv[argc++] = "--appendonly";
    argv[argc++] = "no";
    argv[argc++] = "--daemonize";
    argv[argc++] = "no";
    argv[argc++] = "--dir";
    argv[argc++] = s->dir;
    argv[argc++] = "--logfile";
    argv[argc++] = logf;
    snprintf(extra, sizeof(extra), "%s", s->extra);
    for (char *tok = strtok(extra, " "); tok && argc < 62;
         tok = strtok(NULL, " ")) {
        argv[argc++] = tok;
    }
    argv[argc] = NULL;

    s->pid = fork();
    if (s->pid < 0) {
        return -1;
    }
    if (s->pid == 0) {
        int null = open("/dev/null", O_RDWR);

        /* Gone with the test process, however it ends. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(null, 0);
        dup2(null, 1);
        execvp("redis-server", (char *const *)argv);
        _exit(127);
    }
    until = redis_util_ms() + 10000;
    while (!redis_util_can_connect(s->port)) {
        int status;

        if (waitpid(s->pid, &status, WNOHANG) == s->pid
            || redis_util_ms() > until) {
            s->pid = 0;
            return -1;
        }
        poll(NULL, 0, 5);
    }
    return 0;
}

/* Stop and remove its directory. */
static APR_INLINE void redis_util_stop(redis_util_server_t *s)
{
    int i;

    for (i = 0; i < REDIS_UTIL_MAX; i++) {
        if (redis_util_all[i] == s) {
            redis_util_all[i] = NULL;
        }
    }
    redis_util_kill(s, SIGTERM);
    if (s->dir[0]) {
        char cmd[200];

        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", s->dir);
        if (system(cmd) != 0) {
            fprintf(stderr, "cannot remove %s\n", s->dir);
        }
        s->dir[0] = '\0';
    }
}

/* Run a shell command (redis-cli ...), its output in out; the exit
 * status, or -1. */
static APR_INLINE int redis_util_sh(char *out, size_t outlen,
                                    const char *fmt, ...)
{
    char cmd[2048];
    size_t len = 0;
    va_list ap;
    FILE *f;
    int rc;

    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    f = popen(cmd, "r");
    if (!f) {
        return -1;
    }
    if (out && outlen) {
        out[0] = '\0';
        while (len + 1 < outlen) {
            size_t n = fread(out + len, 1, outlen - 1 - len, f);

            if (n == 0) {
                break;
            }
            len += n;
        }
        out[len] = '\0';
    }
    else {
        char sink[4096];

        while (fread(sink, 1, sizeof(sink), f) > 0) {
        }
    }
    rc = pclose(f);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* ---- running a comet_loop until something happened ---------------------- */

typedef int cond_fn(void *baton);

typedef struct waiter_t {
    cond_fn       *cond;
    void          *baton;
    comet_timer_t  poll;
    comet_timer_t  guard;
    int            timed_out;
} waiter_t;

static APR_INLINE void waiter_poll(comet_loop_t *loop, comet_timer_t *t,
                                   void *baton)
{
    waiter_t *w = baton;

    if (w->cond(w->baton)) {
        comet_loop_stop(loop);
        return;
    }
    comet_timer_arm_in(loop, t, 2000);
}

static APR_INLINE void waiter_guard(comet_loop_t *loop, comet_timer_t *t,
                                    void *baton)
{
    waiter_t *w = baton;

    w->timed_out = 1;
    comet_loop_stop(loop);
}

/* Run loop until cond holds (checked every 2 ms) or ms pass; cond's value. */
static APR_INLINE int run_until(comet_loop_t *loop, cond_fn *cond,
                                void *baton, int ms)
{
    waiter_t w;

    memset(&w, 0, sizeof(w));
    w.cond = cond;
    w.baton = baton;
    if (cond(baton)) {
        return 1;
    }
    comet_timer_init(&w.poll, waiter_poll, &w);
    comet_timer_init(&w.guard, waiter_guard, &w);
    comet_timer_arm_in(loop, &w.poll, 2000);
    comet_timer_arm_in(loop, &w.guard, (apr_interval_time_t)ms * 1000);
    comet_loop_run(loop);
    comet_timer_cancel(loop, &w.poll);
    comet_timer_cancel(loop, &w.guard);
    return cond(baton);
}

typedef struct count_wait_t {
    const int *count;
    int        want;
} count_wait_t;

static APR_INLINE int count_reached(void *baton)
{
    count_wait_t *w = baton;

    return *w->count >= w->want;
}

/* Run the loop until *count >= want, at most ms. */
static APR_INLINE int wait_count(comet_loop_t *loop, int *count, int want,
                                 int ms)
{
    count_wait_t w = { count, want };

    return run_until(loop, count_reached, &w, ms);
}

static APR_INLINE int never(void *baton)
{
    return 0;
}

/* Let the loop run a while (between checks of a counter kept elsewhere). */
static APR_INLINE void run_for(comet_loop_t *loop, int ms)
{
    run_until(loop, never, NULL, ms);
}

#endif /* COMET_REDIS_UTIL_H */
