/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* The unit test runner: every suite of tests/unit, exit status = failures. */
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
