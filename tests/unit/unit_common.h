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

/* A fresh pool for every test (checked fixture: set up in the forked test
 * process). */
extern apr_pool_t *comet_test_pool;
void comet_test_pool_setup(void);
void comet_test_pool_teardown(void);

/* Printable form of bytes for failure messages: escapes what is not
 * printable ASCII, cut at 200 bytes.  Two results may be used at once. */
const char *comet_test_show(const char *s, apr_size_t len);

#endif
