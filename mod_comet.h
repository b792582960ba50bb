/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * mod_comet.h -- what every httpd glue file needs: the module, and this
 * process's share of the store (set up by mod_comet.c, which runs the
 * module's lifecycle).  Each glue file has its own header for the rest.
 *
 * Threads: see event_bridge.h.
 */
#ifndef MOD_COMET_H
#define MOD_COMET_H

#include <httpd.h>
#include <http_config.h>

#include "comet_store.h"

/* Shown by HELLO/INFO, and kept with the store across graceful restarts:
 * a release that changes the store's layout or its handle must change it,
 * so that a graceful restart into it starts a new store. */
#define COMET_MODULE_VERSION     "0.2.1"

extern module AP_MODULE_DECLARE_DATA comet_module;

/* This process's share of the store, set up by mod_comet.c: in the
 * parent by post_config (inherited by every child at fork), completed in
 * each child by child_init.  Any thread. */

/* The channel store; NULL when the module is loaded but has none (the
 * configuration's dry pass, or a start that failed). */
comet_store_t *comet_proc_store(void);

/* 1, and this child's slot in the store (slot may be NULL), while it
 * holds one: from child_init until the child pool's cleanup.  0 in the
 * parent, and in a child that got no slot. */
int comet_proc_slot(apr_uint32_t *slot);

/* 1, and the second slot of this child, the publish thread's (for the
 * publish socket's subscribers), with its wakeup eventfd, while the child
 * holds one; else 0. */
int comet_proc_pub_slot(apr_uint32_t *slot, int *wake_fd);

/* How many process slots the store has (one wakeup eventfd each). */
apr_uint32_t comet_proc_nslots(void);

/* Numbered log messages, as httpd's APLOGNO: COMET_LOGNO(0123) ahead of
 * a message's text writes "CM0123: ", so that a line of a log leads to
 * one place in the source.  Each number is used once: the hundreds are
 * the file's (see README, "Internals"). */
#define COMET_LOGNO(n) "CM" #n ": "

/* A log line about one subscriber, through its request r: the number,
 * then "channel=<id> sub=<n>: " ahead of msg; n is the id of the
 * subscriber's connection (c->id), the same in every line about it. */
#define COMET_SUB_LOG(r, level, rv, no, channel, msg, ...)                  \
    ap_log_rerror(APLOG_MARK, (level), (rv), (r), COMET_LOGNO(no)           \
                  "channel=%s sub=%ld: " msg, (channel),                    \
                  (long)(r)->connection->id, ##__VA_ARGS__)

/* ap_log_error / ap_log_rerror for a line about a status rv that may be
 * a core code (COMET_E*), which httpd's log would call "APR does not
 * understand this error code": such a code is written as ": <text>" after
 * the message (comet_strerror), an APR code as httpd writes it.  Any
 * thread. */
#define comet_log_serror(level, rv, s, ...) \
    comet_log_error_(APLOG_MARK, (level), (rv), (s), NULL, __VA_ARGS__)
#define comet_log_rerror(level, rv, r, ...) \
    comet_log_error_(APLOG_MARK, (level), (rv), NULL, (r), __VA_ARGS__)
void comet_log_error_(const char *file, int line, int module_index,
                      int level, apr_status_t rv, const server_rec *s,
                      const request_rec *r, const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));
/* What mod_comet keeps per connection, in its conn_config slot (c->pool):
 * the suspended subscriber's record until the suspend hook takes it
 * (mod_comet_susp.c), the TLS session mod_ssl handed over
 * (mod_comet_takeover.c). */
typedef struct comet_conn_t {
    void *susp;
    void *takeover;
} comet_conn_t;

/* c's record; made when make is set, else NULL when there is none.  The
 * thread serving c (a request thread or connection hook). */
comet_conn_t *comet_conn(conn_rec *c, int make);

/* Store wakeup callback: kicks slot's eventfd.  Any thread. */
void comet_wake_slot(void *baton, apr_uint32_t slot);

#endif /* MOD_COMET_H */
