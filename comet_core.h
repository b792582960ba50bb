/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * comet_core.h -- conventions shared by every server-independent file.
 *
 * Files named comet_*.c include APR (and libc/POSIX) only: never an httpd
 * header.  They build into the unit tests without a server.  The httpd glue
 * (mod_comet*.c, event_bridge.c) installs a log callback at start-up; the
 * core never logs any other way.
 *
 * Every header says which thread may call each function, with the names
 * defined once in event_bridge.h (the glue that makes the threads):
 * request thread, MPM callback, hub thread, publish thread, any thread.
 */
#ifndef COMET_CORE_H
#define COMET_CORE_H

#include <stdarg.h>
#include <apr.h>
#include <apr_errno.h>
#include <apr_time.h>

/* Error codes of the core, in APR's user range so that they travel in an
 * apr_status_t next to APR's own.  comet_strerror() names them. */
#define COMET_ETOOBIG     (APR_OS_START_USERERR + 1)  /* message > max size   */
#define COMET_EFULL       (APR_OS_START_USERERR + 2)  /* store has no room    */
#define COMET_EBADCHAN    (APR_OS_START_USERERR + 3)  /* channel id refused   */
#define COMET_EBADID      (APR_OS_START_USERERR + 4)  /* message id garbage   */
#define COMET_ENOCHAN     (APR_OS_START_USERERR + 5)  /* no such channel      */
#define COMET_ECORRUPT    (APR_OS_START_USERERR + 6)  /* segment not ours     */
#define COMET_ENOSLOT     (APR_OS_START_USERERR + 7)  /* no free process slot */
#define COMET_EPROTO      (APR_OS_START_USERERR + 8)  /* peer broke protocol  */
#define COMET_ERESERVED   (APR_OS_START_USERERR + 9)  /* name is the server's */
#define COMET_EQUOTA      (APR_OS_START_USERERR + 10) /* share or quota used  */
#define COMET_ESTALE      (APR_OS_START_USERERR + 11) /* position moved on    */

/* True for the codes above: httpd's log would call them "APR does not
 * understand this error code", so the glue logs comet_strerror's text. */
#define COMET_IS_ERROR(rv) ((rv) > APR_OS_START_USERERR \
                            && (rv) <= APR_OS_START_USERERR + 99)

/* A short English text for a core error code (a constant), or APR's text
 * otherwise.  Any thread; buf holds the result when it is not a
 * constant. */
const char *comet_strerror(apr_status_t rv, char *buf, apr_size_t len);

/* Log levels: the same numbers as httpd's APLOG_* so the glue passes them
 * through unchanged. */
#define COMET_LOG_ERR      3
#define COMET_LOG_WARNING  4
#define COMET_LOG_NOTICE   5
#define COMET_LOG_INFO     6
#define COMET_LOG_DEBUG    7
#define COMET_LOG_TRACE1   8

typedef void comet_log_fn(void *baton, int level, const char *file, int line,
                          apr_status_t rv, const char *fmt, va_list ap);

/* Install the log sink (NULL restores the default, which writes ERR and
 * WARNING to stderr).  The process's start-up code, before any other
 * thread of it starts (the sink is read without a lock); the glue calls it
 * from its configuration hooks. */
void comet_log_set(comet_log_fn *fn, void *baton, int max_level);

/* True when a message at this level would be written: lets callers skip
 * building arguments for a disabled level.  Any thread. */
int comet_log_enabled(int level);

/* Write one message through the sink (use the comet_log macro).  Any
 * thread: the glue's sink must be thread-safe. */
void comet_log_(const char *file, int line, int level, apr_status_t rv,
                const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

#define comet_log(level, rv, ...) \
    do { if (comet_log_enabled(level)) \
             comet_log_(__FILE__, __LINE__, (level), (rv), __VA_ARGS__); \
    } while (0)

/* A clock that never steps back, the same in every process of the machine
 * (CLOCK_MONOTONIC), in microseconds.  Ages and timeouts use it; wall-clock
 * time (apr_time_now) is only ever shown to people.  Any thread. */
apr_time_t comet_now_mono(void);

#endif /* COMET_CORE_H */
