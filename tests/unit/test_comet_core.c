/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

#include <stdio.h>
#include <string.h>

#include "unit_common.h"
#include "comet_core.h"

static int seen_level;
static char seen_text[256];

static void capture(void *baton, int level, const char *file, int line,
                    apr_status_t rv, const char *fmt, va_list ap)
{
    (void)baton; (void)file; (void)line; (void)rv;
    seen_level = level;
    vsnprintf(seen_text, sizeof(seen_text), fmt, ap);
}

START_TEST(log_goes_to_installed_sink_up_to_its_level)
{
    seen_level = -1;
    comet_log_set(capture, NULL, COMET_LOG_INFO);
    comet_log(COMET_LOG_INFO, APR_SUCCESS, "channel=%s", "room1");
    ck_assert_int_eq(seen_level, COMET_LOG_INFO);
    ck_assert_str_eq(seen_text, "channel=room1");
    seen_level = -1;
    comet_log(COMET_LOG_DEBUG, APR_SUCCESS, "not shown");
    ck_assert_int_eq(seen_level, -1);
    comet_log_set(NULL, NULL, 0);
}
END_TEST

START_TEST(strerror_names_core_errors_and_falls_back_to_apr)
{
    char buf[128];

    ck_assert_str_eq(comet_strerror(COMET_EFULL, buf, sizeof(buf)),
                     "shared memory store is full");
    ck_assert_ptr_nonnull(strstr(comet_strerror(APR_ENOENT, buf, sizeof(buf)),
                                 "No such file"));
    /* Every code of the core has a text of its own, never APR's "does not
     * understand this error code". */
    for (apr_status_t rv = COMET_ETOOBIG; rv <= COMET_EQUOTA; rv++) {
        const char *t = comet_strerror(rv, buf, sizeof(buf));

        ck_assert(COMET_IS_ERROR(rv));
        ck_assert_msg(!strstr(t, "does not understand"), "code %d: %s",
                      (int)(rv - APR_OS_START_USERERR), t);
    }
    ck_assert_ptr_nonnull(strstr(comet_strerror(COMET_ERESERVED, buf,
                                                sizeof(buf)), "comet-"));
    ck_assert(!COMET_IS_ERROR(APR_ENOENT));
    ck_assert(!COMET_IS_ERROR(APR_SUCCESS));
}
END_TEST

START_TEST(monotonic_clock_moves_forward)
{
    apr_time_t a = comet_now_mono(), b = comet_now_mono();

    ck_assert(a > 0);
    ck_assert(b >= a);
}
END_TEST

Suite *test_comet_core_suite(void)
{
    Suite *s = suite_create("comet_core");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, log_goes_to_installed_sink_up_to_its_level);
    tcase_add_test(tc, strerror_names_core_errors_and_falls_back_to_apr);
    tcase_add_test(tc, monotonic_clock_moves_forward);
    suite_add_tcase(s, tc);
    return s;
}
