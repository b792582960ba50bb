/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Helpers shared by the store tests: a shared anonymous segment (inherited
 * by forked children, like httpd's), a store on it, and self-verifying
 * payloads (a torn or mixed-up message cannot pass store_util_verify). */
#ifndef COMET_STORE_UTIL_H
#define COMET_STORE_UTIL_H

#include <string.h>
#include <sys/mman.h>

#include "unit_common.h"
#include "comet_store.h"

#define STORE_UTIL_SEC(s)   ((apr_time_t)(s) * APR_USEC_PER_SEC)

/* Fixture: a pool, and the store's log kept off the test output (the
 * tests provoke refusals and repairs on purpose). */
static void store_util_quiet(void *baton, int level, const char *file,
                             int line, apr_status_t rv, const char *fmt,
                             va_list ap)
{
    (void)baton; (void)level; (void)file; (void)line; (void)rv; (void)fmt;
    (void)ap;
}

static APR_INLINE void store_util_setup(void)
{
    comet_test_pool_setup();
    comet_log_set(store_util_quiet, NULL, COMET_LOG_ERR);
}

static APR_INLINE void store_util_teardown(void)
{
    comet_log_set(NULL, NULL, 0);
    comet_test_pool_teardown();
}

/* The segment of the last store_util_make, for tests that look inside. */
static char *store_util_last_base;

static APR_INLINE void *store_util_segment(apr_size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);

    ck_assert_ptr_ne(p, MAP_FAILED);
    return p;
}

/* A store formatted with cfg on a fresh segment. */
static APR_INLINE comet_store_t *store_util_make_cfg(
    const comet_store_config_t *cfg)
{
    comet_store_t *st = NULL;

    store_util_last_base = store_util_segment(cfg->size);
    ck_assert_int_eq(comet_store_format(&st, store_util_last_base, cfg,
                                        comet_test_pool), APR_SUCCESS);
    return st;
}

/* A store of size bytes with the given limits (0: the default). */
static APR_INLINE comet_store_t *store_util_make(apr_size_t size,
                                                 apr_uint32_t buffer_length,
                                                 apr_time_t timeout,
                                                 apr_time_t idle,
                                                 apr_uint32_t procs)
{
    comet_store_config_t cfg;

    comet_store_config_default(&cfg, size);
    if (buffer_length) {
        cfg.buffer_length = buffer_length;
    }
    if (timeout) {
        cfg.message_timeout = timeout;
    }
    if (idle) {
        cfg.channel_idle = idle;
    }
    if (procs) {
        cfg.max_procs = procs;
    }
    return store_util_make_cfg(&cfg);
}

/* Payload of len >= 8 bytes: tag, len, then bytes derived from both. */
static APR_INLINE void store_util_fill(char *buf, apr_size_t len,
                                       apr_uint32_t tag)
{
    apr_uint32_t l32 = (apr_uint32_t)len;
    apr_size_t i;

    memcpy(buf, &tag, 4);
    memcpy(buf + 4, &l32, 4);
    for (i = 8; i < len; i++) {
        buf[i] = (char)((tag * 31u + i * 7u + (i >> 8)) & 0xff);
    }
}

/* The tag of a payload made by store_util_fill, or -1 when it is not one. */
static APR_INLINE long store_util_verify(const char *buf, apr_size_t len)
{
    apr_uint32_t tag, l32;
    apr_size_t i;

    if (len < 8) {
        return -1;
    }
    memcpy(&tag, buf, 4);
    memcpy(&l32, buf + 4, 4);
    if (l32 != len) {
        return -1;
    }
    for (i = 8; i < len; i++) {
        if (buf[i] != (char)((tag * 31u + i * 7u + (i >> 8)) & 0xff)) {
            return -1;
        }
    }
    return (long)tag;
}

static APR_INLINE void store_util_check(comet_store_t *st)
{
    char why[256];
    apr_status_t rv = comet_store_check(st, why, sizeof(why));

    ck_assert_msg(rv == APR_SUCCESS, "store check: %s", why);
}

static APR_INLINE apr_status_t store_util_pub(comet_store_t *st,
                                              const char *chan,
                                              const char *data,
                                              apr_size_t len, apr_time_t now,
                                              comet_publish_result_t *res)
{
    comet_publish_t m;

    memset(&m, 0, sizeof(m));
    m.channel = chan;
    m.channel_len = strlen(chan);
    m.data = data;
    m.data_len = len;
    return comet_store_publish(st, &m, now, NULL, NULL, res);
}

#endif
