/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet_pubsock.c -- the publish socket's life in httpd: made by the
 * parent before the children fork, served by every child's publish
 * thread on its own loop (comet_pubsrv.c speaks the protocol).
 *
 * Threads: post_config in the parent, child_init before the publish
 * thread starts; the server then runs on the publish thread; stats and
 * path from any thread.
 *
 * Lifetimes.  The listening socket belongs to one configuration
 * generation: made in post_config, closed and its file removed by a
 * cleanup of pconf.  A graceful restart clears pconf (the old socket file
 * goes; the old children keep their inherited descriptor, finish the
 * connections they have, and can get no new ones) and then makes a new
 * socket at the same path for the new children.  Nothing is registered on
 * the process pool: the module's code is unloaded at every restart.
 *
 * The pconf cleanup also runs in every child when it exits (httpd destroys
 * all pools at exit); only the process that made the socket file removes
 * it, and only while the file is still the one it made.
 *
 * Who may publish is who may connect: the file's owner (httpd's User when
 * started as root), group and CometPublishSocketMode decide.
 */

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <apr_strings.h>
#include <ap_mpm.h>
#include <httpd.h>
#include <http_config.h>
#include <http_log.h>
#include <unixd.h>

#include "mod_comet.h"
#include "mod_comet_config.h"
#include "mod_comet_pubsock.h"
#include "mod_comet_redis.h"

APLOG_USE_MODULE(comet);

#define PUBSOCK_BACKLOG 511

typedef struct pubsock_t {
    int          fd;
    const char  *path;
    pid_t        creator;
    dev_t        dev;            /* the socket file we made */
    ino_t        ino;
    /* The children serving this socket, one record each, so that a full
     * child leaves new connections to one with room: an anonymous shared
     * mapping of this generation, inherited at fork. */
    comet_pubsrv_peers_t *peers;
    apr_size_t   peers_size;
} pubsock_t;

/* This generation's socket: set in the parent by post_config, inherited by
 * the children at fork. */
static pubsock_t *pubsock;

/* This child's server (on the publish thread's loop). */
static comet_pubsrv_t *pubsrv;

static apr_status_t pubsock_cleanup(void *data)
{
    pubsock_t *ps = data;
    struct stat st;

    if (ps->fd >= 0) {
        close(ps->fd);
        ps->fd = -1;
    }
    if (ps->peers) {
        munmap(ps->peers, ps->peers_size);
        ps->peers = NULL;
    }
    if (ps->creator == getpid() && lstat(ps->path, &st) == 0
        && S_ISSOCK(st.st_mode) && st.st_dev == ps->dev
        && st.st_ino == ps->ino) {
        unlink(ps->path);
    }
    if (pubsock == ps) {
        pubsock = NULL;
    }
    return APR_SUCCESS;
}

/* Is something listening on the socket file at path? */
static int socket_alive(const struct sockaddr_un *sa)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int alive;

    if (fd < 0) {
        return 0;
    }
    /* Non-blocking: a live listener with a full backlog says EAGAIN. */
    alive = connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0
            || errno == EAGAIN || errno == EINPROGRESS;
    close(fd);
    return alive;
}

static int pubsock_fail(server_rec *s, apr_status_t rv, const char *path,
                        const char *what)
{
    ap_log_error(APLOG_MARK, APLOG_EMERG, rv, s, COMET_LOGNO(0201)
                 "CometPublishSocket: %s %s (choose a path in a directory "
                 "httpd may write to, or CometPublishSocket off)", what,
                 path);
    return HTTP_INTERNAL_SERVER_ERROR;
}

int comet_pubsock_post_config(apr_pool_t *pconf, apr_pool_t *ptemp,
                              server_rec *s)
{
    int mode = comet_config_socket_mode(s);
    const char *path = comet_config_publish_socket(s, pconf);
    struct sockaddr_un sa;
    struct stat st;
    pubsock_t *ps;
    mode_t old_umask;
    apr_status_t rv;
    int rc;

    const char *err;
    int limit = 0;

    pubsock = NULL;
    if (path && !*path) {
        return OK;                                  /* off */
    }
    if ((err = comet_config_check_socket(s, ptemp))) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, COMET_LOGNO(0204)
                     "%s", err);
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    if (!path || strlen(path) >= sizeof(sa.sun_path)) {
        return pubsock_fail(s, APR_ENAMETOOLONG, path ? path : "(none)",
                            "path too long for a Unix socket:");
    }
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));

    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            return pubsock_fail(s, 0, path, "refusing to replace a file "
                                "that is not a socket:");
        }
        if (socket_alive(&sa)) {
            return pubsock_fail(s, 0, path, "another process is listening "
                                "on");
        }
        /* Left behind by a server that did not stop cleanly. */
        if (unlink(path) != 0) {
            return pubsock_fail(s, APR_FROM_OS_ERROR(errno), path,
                                "cannot remove the stale socket");
        }
    }

    ps = apr_pcalloc(pconf, sizeof(*ps));
    ps->path = apr_pstrdup(pconf, path);
    ps->creator = getpid();
    ps->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (ps->fd < 0) {
        return pubsock_fail(s, APR_FROM_OS_ERROR(errno), path,
                            "cannot create a socket for");
    }
    apr_pool_cleanup_register(pconf, ps, pubsock_cleanup,
                              apr_pool_cleanup_null);
    /* The file gets its mode from the umask at bind(): no moment with
     * looser permissions, and no chmod() that could follow a symlink put
     * in its place. */
    old_umask = umask((mode_t)(~mode & 0777));
    rc = bind(ps->fd, (struct sockaddr *)&sa, sizeof(sa));
    rv = APR_FROM_OS_ERROR(errno);
    umask(old_umask);
    if (rc != 0) {
        return pubsock_fail(s, rv, path, "cannot bind");
    }
    if (lstat(path, &st) != 0) {
        return pubsock_fail(s, APR_FROM_OS_ERROR(errno), path,
                            "socket file vanished:");
    }
    ps->dev = st.st_dev;
    ps->ino = st.st_ino;
    if (geteuid() == 0
        && lchown(path, ap_unixd_config.user_id,
                  ap_unixd_config.group_id) != 0) {
        return pubsock_fail(s, APR_FROM_OS_ERROR(errno), path,
                            "cannot give httpd's User and Group");
    }
    if (listen(ps->fd, PUBSOCK_BACKLOG) != 0) {
        return pubsock_fail(s, APR_FROM_OS_ERROR(errno), path,
                            "cannot listen on");
    }
    /* Twice the children a generation may have: records of children that
     * died are taken over, but one that is slow to exit still holds its
     * own. */
    ap_mpm_query(AP_MPMQ_HARD_LIMIT_DAEMONS, &limit);
    limit = (limit > 0 ? limit : 16) * 2;
    ps->peers_size = comet_pubsrv_peers_size((apr_uint32_t)limit);
    ps->peers = mmap(NULL, ps->peers_size, PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (ps->peers == MAP_FAILED) {
        /* Each child then fills up on its own: refusals may come while
         * another has room, as the log will say. */
        ps->peers = NULL;
        ap_log_error(APLOG_MARK, APLOG_WARNING, APR_FROM_OS_ERROR(errno), s,
                     COMET_LOGNO(0205) "no shared memory for the publish "
                     "socket's table of children: a full child will refuse "
                     "connections that another could take");
    }
    else {
        comet_pubsrv_peers_format(ps->peers, (apr_uint32_t)limit);
    }
    pubsock = ps;
    ap_log_error(APLOG_MARK, APLOG_INFO, 0, s, COMET_LOGNO(0202)
                 "publish socket %s (mode %04o%s%s)", path, mode,
                 geteuid() == 0 ? ", owner " : "",
                 geteuid() == 0 ? ap_unixd_config.user_name : "");
    return OK;
}

void comet_pubsock_child_init(apr_pool_t *p, server_rec *s,
                              comet_loop_t *loop)
{
    comet_pubsrv_config_t cfg;
    apr_status_t rv;

    pubsrv = NULL;
    if (!pubsock || pubsock->fd < 0) {
        return;
    }
    memset(&cfg, 0, sizeof(cfg));
    cfg.store = comet_proc_store();
    cfg.listen_fd = pubsock->fd;
    cfg.max_message = comet_config_max_message(s);
    cfg.max_clients = comet_config_socket_clients(s);
    cfg.max_input = comet_config_socket_max_input(s);
    cfg.idle_timeout = comet_config_socket_timeout(s);
    cfg.command_timeout = comet_config_socket_cmd_timeout(s);
    cfg.peers = pubsock->peers;
    cfg.wake = comet_wake_slot;
    cfg.version = COMET_MODULE_VERSION;
    /* Subscribers of the socket: bounded as HTTP subscribers are. */
    cfg.max_pending = comet_config_max_pending(s);
    if (!comet_proc_pub_slot(&cfg.slot, &cfg.wake_fd)) {
        cfg.wake_fd = -1;
    }
    if (comet_shared_enabled()) {
        cfg.publish = comet_shared_pubsock_publish;
        cfg.follow = comet_shared_follow;
    }
    rv = comet_pubsrv_create(&pubsrv, loop, &cfg, p);
    if (rv != APR_SUCCESS) {
        pubsrv = NULL;
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, COMET_LOGNO(0203)
                     "process %" APR_PID_T_FMT " cannot serve the publish "
                     "socket %s", getpid(), pubsock->path);
    }
}

int comet_pubsock_stats(comet_pubsrv_stats_t *out)
{
    comet_pubsrv_t *srv = pubsrv;

    if (!srv) {
        memset(out, 0, sizeof(*out));
        return 0;
    }
    comet_pubsrv_stats(srv, out);
    return 1;
}

const char *comet_pubsock_path(void)
{
    return pubsock ? pubsock->path : NULL;
}
