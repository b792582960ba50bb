/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet.c -- the module record and its lifecycle: every hook of the
 * module is registered here, and every start and stop of a per-child
 * thread is called from here.  The other glue files export what this file
 * calls.  In the order httpd runs them:
 *
 *   register_hooks  the hooks below; the suspended subscribers' connection
 *                   hooks and filter; mod_ssl's pre_handshake hook and the
 *                   guard filter of TLS takeovers; the server-status
 *                   section.
 *   (pre_config)    none: nothing must exist before the configuration is
 *                   read.
 *   check_config    settings that contradict each other are refused
 *                   (comet_config_check), also by `apache2 -t`.
 *   post_config     the parent: the event MPM is checked; the store and
 *                   the slots' wakeup eventfds (kept across graceful
 *                   restarts); the suspended subscribers' bound; the
 *                   statistics segment; the publish socket; a notice for
 *                   comet locations that HTTP/2 may serve.
 *   child_init      each child: its slot in the store; its hub thread and
 *                   publish thread, with the publish socket's server and
 *                   its server-status record, then started.
 *   child_stopping  suspended subscribers told; both threads stopped and
 *                   joined (every parked subscriber gets its end); what
 *                   suspended subscribers the hub ended is finished.
 *   pool cleanups   the child pool's pre-cleanup stops the threads if
 *                   child_stopping did not, then writes the last numbers
 *                   of the process; its cleanup, last, gives the slot back.
 *
 * Lifetimes (see README, "Internals"):
 * - The store segment, the per-slot wakeup eventfds and the record that
 *   finds them again live in the parent's process pool: they survive a
 *   graceful restart (the module's code is unloaded and loaded again, so
 *   nothing of ours may be a cleanup of that pool) and go at full stop.
 * - Each child claims a process slot of the store in child_init and gives
 *   it back in a cleanup of the child pool; a child killed outright has its
 *   slot reclaimed by whoever next looks (comet_store_proc_reap).
 */

#include <errno.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <unistd.h>

#include <apr_shm.h>
#include <apr_strings.h>
#include <httpd.h>
#include <http_config.h>
#include <http_connection.h>
#include <http_core.h>
#include <http_log.h>
#include <http_protocol.h>
#include <http_request.h>
#include <ap_mpm.h>
#include <mpm_common.h>
#include <mod_status.h>

#include "mod_comet.h"
#include "comet_redis.h"
#include "mod_comet_config.h"
#include "mod_comet_sub.h"
#include "mod_comet_pub.h"
#include "mod_comet_susp.h"
#include "mod_comet_status.h"
#include "mod_comet_pubsock.h"
#include "mod_comet_quota.h"
#include "mod_comet_takeover.h"
#include "mod_comet_redis.h"
#include "event_bridge.h"
#include "mod_comet_keep.h"

#define COMET_SUBSCRIBER_HANDLER "comet-subscriber"
#define COMET_PUBLISHER_HANDLER  "comet-publisher"
/* In r->notes: the request's <Location> sets a comet handler (the URI it
 * was seen for). */
#define COMET_LOCATION_NOTE      "comet-location"


/* This process's share of the store (see mod_comet.h): set in the parent
 * by post_config (inherited by every child at fork), completed in each
 * child by child_init. */
static struct {
    server_rec    *server;         /* main server of this generation     */
    comet_store_t *store;          /* NULL: module loaded but unused     */
    int           *wake_fds;       /* eventfd per process slot           */
    apr_uint32_t   nslots;
    apr_uint32_t   slot;           /* this child's slot ...              */
    int            in_child;       /* ... while it holds it              */
    apr_uint32_t   pub_slot;       /* its publish thread's slot ...      */
    int            pub_in_child;   /* ... while it holds it              */
} proc;

comet_store_t *comet_proc_store(void)
{
    return proc.store;
}

int comet_proc_slot(apr_uint32_t *slot)
{
    if (!proc.store || !proc.in_child) {
        return 0;
    }
    if (slot) {
        *slot = proc.slot;
    }
    return 1;
}

int comet_proc_pub_slot(apr_uint32_t *slot, int *wake_fd)
{
    if (!proc.store || !proc.pub_in_child) {
        return 0;
    }
    *slot = proc.pub_slot;
    *wake_fd = proc.wake_fds[proc.pub_slot];
    return 1;
}

apr_uint32_t comet_proc_nslots(void)
{
    return proc.nslots;
}

/* What must outlive a graceful restart, kept as user data of the process
 * pool.  Plain data only: no function of this module may be reachable from
 * it after the module is unloaded. */
typedef struct comet_persist_t {
    /* First, so that any version of the module can read it: the module
     * that made this record.  Another one (an upgrade followed by a
     * graceful restart) must not use the handles below. */
    char           version[32];
    apr_shm_t     *shm;
    comet_store_t *store;
    apr_size_t     size;
    int           *wake_fds;
    apr_uint32_t   nslots;
} comet_persist_t;

#define COMET_PERSIST_KEY "mod_comet.persist"

/* ---- fault injection (test builds only) ---------------------------------- */

#ifdef COMET_FAULT_INJECTION
/* Compiled only into the module the integration tests build for their
 * fault tests (make: -DCOMET_FAULT_INJECTION); a module built for use has
 * none of it.  The store's kill points (comet_store_test_hook), armed
 * through files: with COMET_FAULT_DIR=<dir> in apache2's environment, the
 * first process to reach kill point P (COMET_STORE_HOOK_*) while
 * <dir>/kill-<P> exists removes the file and dies of SIGKILL right there,
 * holding the store lock.  The test creates the file, makes one request,
 * and sees the next locker repair the store. */
static char fault_dir[256];

static void fault_store_hook(int point)
{
    char path[300];

    apr_snprintf(path, sizeof(path), "%s/kill-%d", fault_dir, point);
    if (unlink(path) == 0) {
        kill(getpid(), SIGKILL);
    }
}

static void fault_child_init(server_rec *s)
{
    const char *dir = getenv("COMET_FAULT_DIR");

    if (dir && *dir && strlen(dir) < sizeof(fault_dir)) {
        apr_cpystrn(fault_dir, dir, sizeof(fault_dir));
        comet_store_test_hook = fault_store_hook;
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, COMET_LOGNO(0099)
                     "fault injection build: store kill points armed "
                     "from %s", fault_dir);
    }
}
#endif

/* ---- logging from the core ---------------------------------------------- */

static void log_line(const char *file, int line, int module_index,
                     int level, apr_status_t rv, const server_rec *s,
                     const request_rec *r, const char *fmt, va_list ap)
{
    char msg[1024], eb[160];

    apr_vsnprintf(msg, sizeof(msg), fmt, ap);
    if (COMET_IS_ERROR(rv)) {
        /* httpd would call it "APR does not understand this error
         * code": the core's own text goes at the end instead. */
        apr_cpystrn(msg + strlen(msg), ": ", sizeof(msg) - strlen(msg));
        apr_cpystrn(msg + strlen(msg), comet_strerror(rv, eb, sizeof(eb)),
                    sizeof(msg) - strlen(msg));
        rv = 0;
    }
    else if (rv >= COMET_REDIS_EDOWN && rv < COMET_REDIS_EDOWN + 100) {
        /* The Redis client's and the bus's codes: their lines say what
         * happened already. */
        rv = 0;
    }
    if (r) {
        ap_log_rerror_(file, line, module_index, level, rv, r, "%s", msg);
    }
    else {
        ap_log_error_(file, line, module_index, level, rv, s, "%s", msg);
    }
}

void comet_log_error_(const char *file, int line, int module_index,
                      int level, apr_status_t rv, const server_rec *s,
                      const request_rec *r, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    log_line(file, line, module_index, level, rv, s, r, fmt, ap);
    va_end(ap);
}

static void core_log(void *baton, int level, const char *file, int line,
                     apr_status_t rv, const char *fmt, va_list ap)
{
    log_line(file, line, APLOG_MODULE_INDEX, level, rv, proc.server, NULL,
             fmt, ap);
}

static void install_core_log(server_rec *s)
{
    proc.server = s;
    comet_log_set(core_log, NULL,
                  ap_get_server_module_loglevel(s, APLOG_MODULE_INDEX));
}

comet_conn_t *comet_conn(conn_rec *c, int make)
{
    comet_conn_t *cc = ap_get_module_config(c->conn_config, &comet_module);

    if (!cc && make) {
        cc = apr_pcalloc(c->pool, sizeof(*cc));
        ap_set_module_config(c->conn_config, &comet_module, cc);
    }
    return cc;
}

/* ---- wakeups -------------------------------------------------------------- */

void comet_wake_slot(void *baton, apr_uint32_t slot)
{
    apr_uint64_t one = 1;

    if (slot < proc.nslots && proc.wake_fds[slot] >= 0) {
        /* EAGAIN means the counter is saturated: the slot is woken anyway. */
        if (write(proc.wake_fds[slot], &one, sizeof(one)) < 0
            && errno != EAGAIN) {
            comet_log(COMET_LOG_WARNING, APR_FROM_OS_ERROR(errno),
                      "cannot wake process slot %u", slot);
        }
    }
}

/* ---- configuration checks and the store's life ------------------------------ */

static int check_mpm(server_rec *s)
{
    int async = 0;

    if (ap_mpm_query(AP_MPMQ_IS_ASYNC, &async) != APR_SUCCESS || !async) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, COMET_LOGNO(0001)
                     "mod_comet needs the event MPM (an asynchronous MPM); "
                     "this server runs the %s MPM: load mpm_event instead "
                     "(a2dismod mpm_%s && a2enmod mpm_event)",
                     ap_show_mpm(), ap_show_mpm());
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    return OK;
}

static apr_status_t create_persist(comet_persist_t **out, server_rec *s,
                                   const comet_store_config_t *cfg)
{
    apr_pool_t *pp = s->process->pool;
    comet_persist_t *ps = apr_pcalloc(pp, sizeof(*ps));
    apr_status_t rv;
    char *base;
    apr_uint32_t i;

    if (cfg->size < comet_store_min_size(cfg)) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, COMET_LOGNO(0002)
                     "CometSharedMemorySize %" APR_SIZE_T_FMT " is too small "
                     "for %u process slots: at least %" APR_SIZE_T_FMT
                     " bytes are needed", cfg->size, cfg->max_procs,
                     comet_store_min_size(cfg));
        return APR_EINVAL;
    }
    /* The store wants its base on a cache line; APR keeps a small header
     * in front of the memory it hands out. */
    rv = apr_shm_create(&ps->shm, cfg->size + 64, NULL, pp);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_EMERG, rv, s, COMET_LOGNO(0003)
                     "cannot create %" APR_SIZE_T_FMT " bytes of shared "
                     "memory (CometSharedMemorySize)", cfg->size);
        return rv;
    }
    base = (char *)apr_shm_baseaddr_get(ps->shm);
    base += (64 - ((apr_uintptr_t)base & 63)) & 63;
    rv = comet_store_format(&ps->store, base, cfg, pp);
    if (rv != APR_SUCCESS) {
        comet_log_serror(APLOG_EMERG, rv, s, COMET_LOGNO(0004) "cannot set "
                         "up the channel store in shared memory");
        return rv;
    }
    apr_cpystrn(ps->version, COMET_MODULE_VERSION, sizeof(ps->version));
    ps->size = cfg->size;
    ps->nslots = cfg->max_procs;
    ps->wake_fds = apr_palloc(pp, sizeof(int) * ps->nslots);
    for (i = 0; i < ps->nslots; i++) {
        /* Closed by the kernel at exit: no cleanup of ours on this pool. */
        ps->wake_fds[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (ps->wake_fds[i] < 0) {
            rv = APR_FROM_OS_ERROR(errno);
            ap_log_error(APLOG_MARK, APLOG_EMERG, rv, s, COMET_LOGNO(0005)
                         "cannot create the wakeup eventfd of slot %u", i);
            return rv;
        }
    }
    *out = ps;
    return APR_SUCCESS;
}

static int comet_check_config(apr_pool_t *pconf, apr_pool_t *plog,
                              apr_pool_t *ptemp, server_rec *s)
{
    const char *err = comet_config_check(s, ptemp);

    if (err) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_EMERG, 0, s,
                     COMET_LOGNO(0011) "%s", err);
        return !OK;
    }
    return OK;
}

static int comet_post_config(apr_pool_t *pconf, apr_pool_t *plog,
                             apr_pool_t *ptemp, server_rec *s)
{
    comet_store_config_t cfg;
    comet_persist_t *ps = NULL;
    int rc, limit = 0;
    apr_status_t rv;

    if ((rc = check_mpm(s)) != OK) {
        return rc;
    }
    /* httpd reads its configuration twice at start; the first pass only
     * checks it.  Make nothing that would have to be torn down again. */
    if (ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_CREATE_PRE_CONFIG) {
        return OK;
    }
    install_core_log(s);

    /* Two slots per process httpd may run at once (the hub's, and the
     * publish thread's for the socket's subscribers); the doubling leaves
     * room for children of an old generation still finishing after a
     * graceful restart while the new generation starts. */
    ap_mpm_query(AP_MPMQ_HARD_LIMIT_DAEMONS, &limit);
    comet_config_store(s, &cfg, ((apr_uint32_t)(limit > 0 ? limit : 16)
                                 * 2 + 2) * 2);

    {
        const char *err = comet_config_check_redis(s, ptemp);

        if (err) {
            ap_log_error(APLOG_MARK, APLOG_EMERG, 0, s, COMET_LOGNO(0013)
                         "%s", err);
            return HTTP_INTERNAL_SERVER_ERROR;
        }
    }
    apr_pool_userdata_get((void **)&ps, COMET_PERSIST_KEY, s->process->pool);
    if (ps && (cfg.epoch == COMET_BUS_EPOCH)
              != (comet_store_epoch(ps->store) == COMET_BUS_EPOCH)) {
        /* CometRedis came or went: ids are of another kind now. */
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, COMET_LOGNO(0014)
                     "CometRedis %s on a graceful restart: starting a new "
                     "channel store (clients are told they missed "
                     "messages)", cfg.epoch ? "set" : "removed");
        ps = NULL;
    }
    if (ps && strcmp(ps->version, COMET_MODULE_VERSION)) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, COMET_LOGNO(0006)
                     "mod_comet %s replaces %s on a graceful restart: "
                     "starting a new channel store (messages of the old "
                     "one are not kept; clients are told they missed "
                     "some)", COMET_MODULE_VERSION, ps->version);
        ps = NULL;
    }
    if (!ps) {
        if ((rv = create_persist(&ps, s, &cfg)) != APR_SUCCESS) {
            return HTTP_INTERNAL_SERVER_ERROR;
        }
        apr_pool_userdata_set(ps, COMET_PERSIST_KEY, NULL, s->process->pool);
        ap_log_error(APLOG_MARK, APLOG_INFO, 0, s, COMET_LOGNO(0007)
                     "channel store created: %" APR_SIZE_T_FMT " bytes, "
                     "%u process slots, epoch %08x", cfg.size, ps->nslots,
                     comet_store_epoch(ps->store));
    }
    else {
        if (cfg.size != ps->size) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, COMET_LOGNO(0008)
                         "CometSharedMemorySize changed from %" APR_SIZE_T_FMT
                         " to %" APR_SIZE_T_FMT " bytes: a graceful restart "
                         "keeps the store and its messages at the old size; "
                         "the new size takes effect at the next full "
                         "restart", ps->size, cfg.size);
        }
        comet_store_set_limits(ps->store, &cfg);
    }

    proc.store = ps->store;
    proc.wake_fds = ps->wake_fds;
    proc.nslots = ps->nslots;
    comet_susp_post_config(s);
    comet_takeover_post_config(ptemp, s);
    if ((rc = comet_status_post_config(pconf, s)) != OK) {
        return rc;
    }
    return comet_pubsock_post_config(pconf, ptemp, s);
}

/* ---- child processes -------------------------------------------------------- */

static apr_status_t child_threads_exit(void *hub);
static apr_status_t child_slot_exit(void *data);

/* Every subscriber is a descriptor: use all the process may have. */
static void raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void hub_config(comet_hub_config_t *cfg, server_rec *s)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->store = proc.store;
    cfg->slot = proc.slot;
    cfg->wake_fd = proc.wake_fds[proc.slot];
    cfg->max_pending = comet_config_max_pending(s);
    cfg->max_subscribers = comet_config_max_subscribers(s);
    /* A subscriber that does not read must not hold megabytes of kernel
     * memory; what does not fit waits in our bounded queue instead. */
    cfg->sndbuf = 64 * 1024;
    cfg->wake = comet_wake_slot;
    cfg->tick = comet_status_tick;
    cfg->on_stop = comet_susp_hub_stopping;
    /* What a subscriber counted against CometMaxNewChannelsPerClient. */
    cfg->on_end = comet_quota_release;
    /* With CometRedis, clients' messages go through Redis as all others. */
    if (comet_config_redis(s)) {
        cfg->publish = comet_shared_hub_publish;
    }
}

static void comet_child_init(apr_pool_t *pchild, server_rec *s)
{
    comet_hub_config_t cfg;
    comet_hub_t *hub;
    comet_loop_t *pub_loop;
    apr_pool_t *pub_pool;
    apr_status_t rv;

    if (!proc.store) {
        return;
    }
    install_core_log(s);
#ifdef COMET_FAULT_INJECTION
    fault_child_init(s);
#endif
    comet_susp_child_init(pchild);
    rv = comet_store_proc_attach(proc.store, (apr_int32_t)getpid(),
                                 &proc.slot);
    if (rv == COMET_ENOSLOT) {
        /* Slots of dead processes may be waiting to be reaped. */
        comet_store_proc_reap(proc.store);
        rv = comet_store_proc_attach(proc.store,
                                     (apr_int32_t)getpid(),
                                     &proc.slot);
    }
    if (rv != APR_SUCCESS) {
        comet_log_serror(APLOG_CRIT, rv, s, COMET_LOGNO(0009) "child %"
                         APR_PID_T_FMT " has no process slot in the channel "
                         "store: it will refuse subscribers", getpid());
        return;
    }
    proc.in_child = 1;
    /* The publish thread drains a slot of its own, so that the socket's
     * subscribers are counted and woken like any others. */
    rv = comet_store_proc_attach_ex(proc.store, (apr_int32_t)getpid(),
                                    COMET_STORE_SLOT_EXTRA, &proc.pub_slot);
    if (rv == APR_SUCCESS) {
        proc.pub_in_child = 1;
    }
    else {
        comet_log_serror(APLOG_WARNING, rv, s, COMET_LOGNO(0012) "child %"
                         APR_PID_T_FMT " has no second process slot in the "
                         "channel store: its publish socket connections "
                         "cannot SUBSCRIBE", getpid());
    }
    /* Registered first so that it runs last: the threads (stopped in a
     * pre-cleanup) are gone before the slot goes. */
    apr_pool_cleanup_register(pchild, NULL, child_slot_exit,
                              apr_pool_cleanup_null);

    raise_fd_limit();
    hub_config(&cfg, s);
    comet_keep_child_init(pchild, s, &cfg);
    if (comet_bridge_create(pchild, s, &cfg, &hub, &pub_loop, &pub_pool)
        != APR_SUCCESS) {
        return;
    }
    /* Before the publish socket, which publishes through it. */
    comet_shared_child_init(s);
    comet_pubsock_child_init(pub_pool, s, pub_loop);
    comet_status_child_init();
    /* A pre-cleanup: the threads' pools are children of pchild. */
    apr_pool_pre_cleanup_register(pchild, hub, child_threads_exit);
    comet_bridge_start(s);
}

static void comet_child_stopping(apr_pool_t *pchild, int graceful)
{
    comet_susp_stopping(graceful);
    /* End every parked subscriber now, and wait for it: the process may
     * exit right after this hook, and must not do so while the hub thread
     * is inside the store. */
    comet_bridge_stop();
    /* Suspended subscribers the hub has ended: on an ungraceful stop no
     * callback may run any more; they are finished here. */
    comet_susp_stopped(graceful);
}

/* ---- the child pool's cleanups ------------------------------------------------ */

static apr_status_t child_threads_exit(void *hub)
{
    comet_bridge_stop();
    /* After the join, while the hub is still there to read. */
    comet_status_child_exit(hub);
    return APR_SUCCESS;
}

static apr_status_t child_slot_exit(void *data)
{
    if (proc.store && proc.pub_in_child) {
        comet_store_proc_detach(proc.store, proc.pub_slot);
        proc.pub_in_child = 0;
    }
    if (proc.store && proc.in_child) {
        comet_store_proc_detach(proc.store, proc.slot);
        proc.in_child = 0;
    }
    return APR_SUCCESS;
}

/* ---- handlers ----------------------------------------------------------------- */

static int comet_handler(request_rec *r)
{
    int sub;

    if (!r->handler) {
        return DECLINED;
    }
    sub = !strcmp(r->handler, COMET_SUBSCRIBER_HANDLER);
    if (!sub && strcmp(r->handler, COMET_PUBLISHER_HANDLER)) {
        return DECLINED;
    }
    if (!apr_table_get(r->notes, COMET_LOCATION_NOTE)) {
        /* Set from somewhere the location walk does not see: a
         * <Directory> or <Files> section, AddHandler, or a .htaccess
         * file, whose author must not reach every channel of every
         * virtual host. */
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, COMET_LOGNO(0010)
                      "refused: handler %s was not set by SetHandler in a "
                      "<Location> or <LocationMatch> of the server's "
                      "configuration (set from .htaccess, <Directory>, "
                      "<Files> or AddHandler, it is refused)", r->handler);
        return HTTP_FORBIDDEN;
    }
    return sub ? comet_subscriber_handler(r) : comet_publisher_handler(r);
}

/* Comet locations are not files: skip httpd's walk of the file system for
 * them (a stat() per path component of a path that does not exist, about
 * a fifth of the CPU of a publish or a subscribe).  As with mod_proxy,
 * <Directory> and .htaccess then do not apply; <Location> does.
 *
 * translate_name runs after the first location walk, so SetHandler of the
 * request's <Location> is known there: the first hook notes it (and the
 * URI it was seen for).  The last hook, after mod_rewrite and mod_alias
 * had their say but before core's, names no file: core would map the URL
 * onto DocumentRoot, and refuse (403, AH00127) a path longer than a file
 * name may be, which a list of channels easily is.  map_to_storage
 * (which walks the file system) comes next. */
/* Note r as a comet location when the location walk (of r->uri as it is
 * now) gives it a comet handler. */
static int mark_comet_location(request_rec *r)
{
    core_dir_config *d = ap_get_core_module_config(r->per_dir_config);
    const char *handler, *err = NULL;

    apr_table_unset(r->notes, COMET_LOCATION_NOTE);
    if (!d->expr_handler) {
        return 0;
    }
    handler = ap_expr_str_exec(r, d->expr_handler, &err);
    if (!err && handler
        && (!strcmp(handler, COMET_SUBSCRIBER_HANDLER)
            || !strcmp(handler, COMET_PUBLISHER_HANDLER))) {
        apr_table_setn(r->notes, COMET_LOCATION_NOTE, r->uri);
        return 1;
    }
    return 0;
}

static int comet_translate_name(request_rec *r)
{
    /* The URI the walk saw, to tell a rewritten one later. */
    ap_set_module_config(r->request_config, &comet_module, (void *)r->uri);
    mark_comet_location(r);
    return DECLINED;
}

static int comet_translate_name_last(request_rec *r)
{
    const char *seen = ap_get_module_config(r->request_config,
                                            &comet_module);

    if (seen != r->uri && (!seen || strcmp(seen, r->uri))) {
        /* Rewritten since (mod_rewrite [PT], mod_alias): walk the
         * locations of the new URI from the server's defaults, as httpd
         * does again after map_to_storage anyway. */
        r->per_dir_config = r->server->lookup_defaults;
        if (ap_location_walk(r) != OK || ap_if_walk(r) != OK) {
            apr_table_unset(r->notes, COMET_LOCATION_NOTE);
            return DECLINED;
        }
        mark_comet_location(r);
    }
    if (!apr_table_get(r->notes, COMET_LOCATION_NOTE)) {
        return DECLINED;
    }
    /* As mod_proxy does: a name that no file can have. */
    r->filename = apr_pstrcat(r->pool, "comet:", r->uri, NULL);
    return OK;
}

static int comet_map_to_storage(request_rec *r)
{
    return apr_table_get(r->notes, COMET_LOCATION_NOTE) ? OK : DECLINED;
}

/* ---- every hook of the module -------------------------------------------------- */

static void comet_register_hooks(apr_pool_t *p)
{
    /* The lifecycle (see the top of this file). */
    ap_hook_check_config(comet_check_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_config(comet_post_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_init(comet_child_init, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_stopping(comet_child_stopping, NULL, NULL, APR_HOOK_MIDDLE);

    /* Requests. */
    ap_hook_translate_name(comet_translate_name, NULL, NULL,
                           APR_HOOK_REALLY_FIRST);
    /* After mod_rewrite and mod_alias, before core (REALLY_LAST). */
    ap_hook_translate_name(comet_translate_name_last, NULL, NULL,
                           APR_HOOK_LAST);
    ap_hook_map_to_storage(comet_map_to_storage, NULL, NULL,
                           APR_HOOK_FIRST);
    ap_hook_handler(comet_handler, NULL, NULL, APR_HOOK_MIDDLE);
    /* mod_authz_core's authz_some_auth_required (mod_comet_pub.c). */
    ap_hook_optional_fn_retrieve(comet_pub_optional_fns, NULL, NULL,
                                 APR_HOOK_MIDDLE);

    /* Suspended subscribers (mod_comet_susp.c): every MPM connection
     * counted, the gate, and the non-blocking filter. */
    ap_hook_pre_connection(comet_susp_pre_connection, NULL, NULL,
                           APR_HOOK_REALLY_FIRST);
    ap_hook_resume_connection(comet_susp_resume_connection, NULL, NULL,
                              APR_HOOK_MIDDLE);
    /* Last: after it, nothing of ours is in the hook chain. */
    ap_hook_suspend_connection(comet_susp_suspend_connection, NULL, NULL,
                               APR_HOOK_REALLY_LAST);
    comet_susp_register_filter();
    comet_sub_register_filter();

    /* TLS subscribers detached (mod_comet_takeover.c): the SSL of every
     * TLS connection from mod_ssl, and the filter below it. */
    comet_takeover_register_hooks();

    /* mod_comet's section of server-status (mod_comet_status.c). */
    APR_OPTIONAL_HOOK(ap, status_hook, comet_status_hook, NULL, NULL,
                      APR_HOOK_MIDDLE);
}

AP_DECLARE_MODULE(comet) = {
    STANDARD20_MODULE_STUFF,
    comet_create_dir_conf,
    comet_merge_dir_conf,
    comet_create_srv_conf,
    comet_merge_srv_conf,
    comet_cmds,
    comet_register_hooks,
    AP_MODULE_FLAG_NONE
};
