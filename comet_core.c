/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

#include <stdio.h>
#include <time.h>

#include <apr_strings.h>

#include "comet_core.h"

static comet_log_fn *log_fn;
static void *log_baton;
static int log_max_level = COMET_LOG_WARNING;

void comet_log_set(comet_log_fn *fn, void *baton, int max_level)
{
    log_fn = fn;
    log_baton = baton;
    log_max_level = fn ? max_level : COMET_LOG_WARNING;
}

int comet_log_enabled(int level)
{
    return level <= log_max_level;
}

void comet_log_(const char *file, int line, int level, apr_status_t rv,
                const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    if (log_fn) {
        log_fn(log_baton, level, file, line, rv, fmt, ap);
    }
    else {
        char ebuf[128];

        fprintf(stderr, "comet: ");
        vfprintf(stderr, fmt, ap);
        if (rv != APR_SUCCESS) {
            fprintf(stderr, ": %s", comet_strerror(rv, ebuf, sizeof(ebuf)));
        }
        fputc('\n', stderr);
    }
    va_end(ap);
}

const char *comet_strerror(apr_status_t rv, char *buf, apr_size_t len)
{
    switch (rv) {
    case COMET_ETOOBIG:  return "message larger than the maximum message size";
    case COMET_EFULL:    return "shared memory store is full";
    case COMET_EBADCHAN: return "invalid channel id";
    case COMET_EBADID:   return "invalid message id";
    case COMET_ENOCHAN:  return "no such channel";
    case COMET_ECORRUPT: return "shared memory segment is not a valid store";
    case COMET_ENOSLOT:  return "no free process slot in the store";
    case COMET_EPROTO:   return "protocol error";
    case COMET_ERESERVED:
        return "event types starting with comet- are reserved for the "
               "server's own signals";
    case COMET_EQUOTA:
        return "the subscribers' share of the store is used up (the rest "
               "is kept for publishers)";
    case COMET_ESTALE:
        return "the channel's position is not the one expected";
    default:
        if (COMET_IS_ERROR(rv)) {
            return "unknown mod_comet error code";
        }
        return apr_strerror(rv, buf, len);
    }
}

apr_time_t comet_now_mono(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (apr_time_t)ts.tv_sec * APR_USEC_PER_SEC + ts.tv_nsec / 1000;
}
