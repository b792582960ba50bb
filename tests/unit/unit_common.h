/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Shared by the unit tests.  Each tests/unit/test_<name>.c tests <name>.c
 * and defines  Suite *test_<name>_suite(void);  the Makefile finds it by
 * its file name and main.c runs it. */
#ifndef COMET_UNIT_COMMON_H
#define COMET_UNIT_COMMON_H

#include <check.h>
#include <apr_pools.h>

#include "comet_buf.h"

/* A fresh pool for every test (checked fixture: set up in the forked test
 * process). */
extern apr_pool_t *comet_test_pool;
void comet_test_pool_setup(void);
void comet_test_pool_teardown(void);

/* Printable form of bytes for failure messages: escapes what is not
 * printable ASCII, cut at 200 bytes.  Two results may be used at once. */
const char *comet_test_show(const char *s, apr_size_t len);

/* A buffer of at most max bytes in comet_test_pool. */
comet_buf_t *comet_test_buf(apr_size_t max);

/* Fails the test unless b holds exactly want[0, want_len); line: the
 * caller's, for the message.  COMET_ASSERT_BUF takes a string literal. */
void comet_test_assert_bytes(const comet_buf_t *b, const char *want,
                             apr_size_t want_len, int line);
#define COMET_ASSERT_BUF(b, lit) \
    comet_test_assert_bytes((b), (lit), sizeof(lit) - 1, __LINE__)

#endif
