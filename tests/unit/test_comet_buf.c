/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

#include <string.h>

#include "unit_common.h"
#include "comet_buf.h"

START_TEST(created_buffer_grows_up_to_its_limit_and_no_further)
{
    comet_buf_t *b;
    char block[100];
    int i;

    memset(block, 'x', sizeof(block));
    ck_assert_int_eq(comet_buf_create(&b, comet_test_pool, 0, 1000),
                     APR_SUCCESS);
    for (i = 0; i < 10; i++) {
        ck_assert_int_eq(comet_buf_append(b, block, sizeof(block)),
                         APR_SUCCESS);
    }
    ck_assert_uint_eq(b->len, 1000);
    ck_assert_uint_le(b->cap, 1000);
    ck_assert_int_eq(comet_buf_putc(b, 'y'), APR_ENOSPC);
    ck_assert_uint_eq(b->len, 1000);
    ck_assert_int_eq(comet_buf_reserve(b, (apr_size_t)-1), APR_ENOSPC);
}
END_TEST

START_TEST(append_that_does_not_fit_writes_nothing)
{
    comet_buf_t *b;

    ck_assert_int_eq(comet_buf_create(&b, comet_test_pool, 4, 8),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_buf_puts(b, "abcdef"), APR_SUCCESS);
    ck_assert_int_eq(comet_buf_puts(b, "ghi"), APR_ENOSPC);
    ck_assert_uint_eq(b->len, 6);
    ck_assert_int_eq(memcmp(b->data, "abcdef", 6), 0);
    ck_assert_int_eq(comet_buf_create(&b, comet_test_pool, 9, 8),
                     APR_EINVAL);
}
END_TEST

START_TEST(wrapped_array_never_grows)
{
    comet_buf_t b;
    char mem[8];

    comet_buf_wrap(&b, mem, sizeof(mem));
    ck_assert_int_eq(comet_buf_puts(&b, "12345678"), APR_SUCCESS);
    ck_assert_ptr_eq(b.data, mem);
    ck_assert_int_eq(comet_buf_putc(&b, '9'), APR_ENOSPC);
    comet_buf_release(&b);              /* not ours: must not free */
    ck_assert_ptr_eq(b.data, mem);
}
END_TEST

START_TEST(printf_formats_short_and_long_texts)
{
    comet_buf_t *b;
    char big[300];

    memset(big, 'z', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    ck_assert_int_eq(comet_buf_create(&b, comet_test_pool, 0, 4096),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_buf_printf(b, "n=%d;", 42), APR_SUCCESS);
    ck_assert_int_eq(comet_buf_printf(b, "%s", big), APR_SUCCESS);
    ck_assert_uint_eq(b->len, 5 + 299);
    ck_assert_int_eq(memcmp(b->data, "n=42;zzz", 8), 0);
}
END_TEST

START_TEST(printf_may_fill_the_buffer_to_the_last_byte)
{
    comet_buf_t *b;
    char big[201];

    memset(big, 'q', 200);
    big[200] = '\0';
    ck_assert_int_eq(comet_buf_create(&b, comet_test_pool, 0, 200),
                     APR_SUCCESS);
    ck_assert_int_eq(comet_buf_printf(b, "%s", big), APR_SUCCESS);
    ck_assert_uint_eq(b->len, 200);
    ck_assert_int_eq(comet_buf_printf(b, "x"), APR_ENOSPC);
}
END_TEST

START_TEST(consume_and_truncate_keep_the_rest)
{
    comet_buf_t *b;

    ck_assert_int_eq(comet_buf_create(&b, comet_test_pool, 0, 64),
                     APR_SUCCESS);
    comet_buf_puts(b, "hello world");
    comet_buf_consume(b, 6);
    ck_assert_uint_eq(b->len, 5);
    ck_assert_int_eq(memcmp(b->data, "world", 5), 0);
    comet_buf_truncate(b, 3);
    ck_assert_uint_eq(b->len, 3);
    comet_buf_truncate(b, 10);          /* never lengthens */
    ck_assert_uint_eq(b->len, 3);
    comet_buf_consume(b, 100);
    ck_assert_uint_eq(b->len, 0);
}
END_TEST

START_TEST(released_buffer_can_be_used_again)
{
    comet_buf_t *b;

    ck_assert_int_eq(comet_buf_create(&b, comet_test_pool, 16, 64),
                     APR_SUCCESS);
    comet_buf_puts(b, "abc");
    comet_buf_release(b);
    ck_assert_ptr_null(b->data);
    ck_assert_uint_eq(b->len, 0);
    ck_assert_int_eq(comet_buf_puts(b, "def"), APR_SUCCESS);
    ck_assert_int_eq(memcmp(b->data, "def", 3), 0);
}
END_TEST

Suite *test_comet_buf_suite(void)
{
    Suite *s = suite_create("comet_buf");
    TCase *tc = tcase_create("buf");

    tcase_add_checked_fixture(tc, comet_test_pool_setup,
                              comet_test_pool_teardown);
    tcase_add_test(tc, created_buffer_grows_up_to_its_limit_and_no_further);
    tcase_add_test(tc, append_that_does_not_fit_writes_nothing);
    tcase_add_test(tc, wrapped_array_never_grows);
    tcase_add_test(tc, printf_formats_short_and_long_texts);
    tcase_add_test(tc, printf_may_fill_the_buffer_to_the_last_byte);
    tcase_add_test(tc, consume_and_truncate_keep_the_rest);
    tcase_add_test(tc, released_buffer_can_be_used_again);
    suite_add_tcase(s, tc);
    return s;
}
