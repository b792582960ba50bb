/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* The unit test runner: every suite of tests/unit, exit status = failures. */
#include <stdio.h>
#include <stdlib.h>

#include <apr_general.h>

#include "unit_common.h"

#define COMET_SUITE(name) Suite *test_##name##_suite(void);
#include "unit_suites.h"
#undef COMET_SUITE

apr_pool_t *comet_test_pool;

void comet_test_pool_setup(void)
{
    ck_assert_int_eq(apr_pool_create(&comet_test_pool, NULL), APR_SUCCESS);
}

void comet_test_pool_teardown(void)
{
    apr_pool_destroy(comet_test_pool);
    comet_test_pool = NULL;
}

const char *comet_test_show(const char *s, apr_size_t len)
{
    static char out[2][1024];
    static int which;
    char *o = out[which ^= 1];
    apr_size_t i, n = 0;

    for (i = 0; i < len && i < 200; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c >= 0x20 && c < 0x7f && c != '\\') {
            o[n++] = (char)c;
        }
        else {
            n += (apr_size_t)sprintf(o + n, "\\x%02x", c);
        }
    }
    o[n] = '\0';
    return o;
}

int main(void)
{
    SRunner *sr;
    int failed;

    apr_initialize();
    sr = srunner_create(NULL);
#define COMET_SUITE(name) srunner_add_suite(sr, test_##name##_suite());
#include "unit_suites.h"
#undef COMET_SUITE
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    apr_terminate();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
