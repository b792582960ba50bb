/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* The unit test runner: every suite of tests/unit, exit status = failures. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

comet_buf_t *comet_test_buf(apr_size_t max)
{
    comet_buf_t *b;

    ck_assert_int_eq(comet_buf_create(&b, comet_test_pool, 0, max),
                     APR_SUCCESS);
    return b;
}

void comet_test_assert_bytes(const comet_buf_t *b, const char *want,
                             apr_size_t want_len, int line)
{
    ck_assert_msg(b->len == want_len && memcmp(b->data, want, want_len) == 0,
                  "line %d: got \"%s\" (%lu bytes), want \"%s\" (%lu bytes)",
                  line, comet_test_show(b->data, b->len), (unsigned long)b->len,
                  comet_test_show(want, want_len), (unsigned long)want_len);
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
