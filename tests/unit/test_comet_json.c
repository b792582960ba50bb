/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* Unit tests of comet_json.c: the client publishing envelope, accepted and
 * refused, with the reason. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unit_common.h"
#include "comet_json.h"

static char scratch[1 << 16];

/* Parse a NUL-terminated text; the reason, or NULL when accepted. */
static const char *env_of(const char *text, comet_json_envelope_t *env)
{
    const char *why = NULL;
    apr_status_t rv = comet_json_envelope(text, strlen(text), scratch, env,
                                          &why);

    if (rv == APR_SUCCESS) {
        ck_assert_ptr_null(why);
        return NULL;
    }
    ck_assert_int_eq(rv, APR_EINVAL);
    ck_assert_ptr_nonnull(why);
    return why;
}

#define ASSERT_FIELD(ptr, len, lit)                                         \
    do {                                                                    \
        ck_assert_uint_eq((len), sizeof(lit) - 1);                          \
        ck_assert_msg(memcmp((ptr), (lit), (len)) == 0, "got '%s'",         \
                      comet_test_show((ptr), (len)));                       \
    } while (0)

START_TEST(envelope_gives_channel_event_and_string_data_unescaped)
{
    comet_json_envelope_t e;

    ck_assert_ptr_null(env_of(" {\"channel\":\"room1\", \"event\" : \"typing\","
                              "\n\"data\":\"a\\\"b\\\\c\\/d\\n\\u00e9"
                              "\\ud83d\\ude00\"}\r\n", &e));
    ASSERT_FIELD(e.channel, e.channel_len, "room1");
    ASSERT_FIELD(e.event, e.event_len, "typing");
    ASSERT_FIELD(e.data, e.data_len, "a\"b\\c/d\n\xc3\xa9\xf0\x9f\x98\x80");
    /* Any order; no event; empty data. */
    ck_assert_ptr_null(env_of("{\"data\":\"\",\"channel\":\"c\"}", &e));
    ASSERT_FIELD(e.channel, e.channel_len, "c");
    ck_assert_ptr_null(e.event);
    ck_assert_uint_eq(e.data_len, 0);
    ck_assert_ptr_nonnull(e.data);
    /* \u0000 is a character like any other. */
    ck_assert_ptr_null(env_of("{\"channel\":\"c\",\"data\":\"\\u0000x\"}", &e));
    ASSERT_FIELD(e.data, e.data_len, "\0x");
}
END_TEST

START_TEST(envelope_data_of_another_type_is_its_json_text)
{
    comet_json_envelope_t e;

    ck_assert_ptr_null(env_of("{\"channel\":\"c\",\"data\": {\"x\": [1, -2.5e+3,"
                              " true, false, null, {}, [], \"s\\\"}\"]} }",
                              &e));
    ASSERT_FIELD(e.data, e.data_len,
                 "{\"x\": [1, -2.5e+3, true, false, null, {}, [], "
                 "\"s\\\"}\"]}");
    ck_assert_ptr_null(env_of("{\"channel\":\"c\",\"data\":0}", &e));
    ASSERT_FIELD(e.data, e.data_len, "0");
    ck_assert_ptr_null(env_of("{\"channel\":\"c\",\"data\":null}", &e));
    ASSERT_FIELD(e.data, e.data_len, "null");
    ck_assert_ptr_null(env_of("{\"channel\":\"c\",\"data\":[[[]]]}", &e));
    ASSERT_FIELD(e.data, e.data_len, "[[[]]]");
}
END_TEST

START_TEST(envelope_refuses_what_is_not_strict_json_with_a_reason)
{
    static const struct { const char *text, *why; } bad[] = {
        { "", "not a JSON object" },
        { "[]", "not a JSON object" },
        { "\"x\"", "not a JSON object" },
        { "{", "member name expected" },
        { "{\"channel\":\"c\",\"data\":\"x\"", "comma or close expected" },
        { "{\"channel\":\"c\",\"data\":\"x\"} x", "bytes after the object" },
        { "{\"channel\":\"c\",\"data\":\"x\"}{}", "bytes after the object" },
        { "{\"channel\":\"c\",}", "member name expected" },
        { "{'channel':\"c\"}", "member name expected" },
        { "{\"channel\" \"c\"}", "colon expected" },
        { "{\"channel\":\"c\",\"data\":\"a\nb\"}",
          "control character in a string" },
        { "{\"channel\":\"c\",\"data\":\"\\x\"}", "bad escape in a string" },
        { "{\"channel\":\"c\",\"data\":\"\\u12\"}", "bad \\u escape" },
        { "{\"channel\":\"c\",\"data\":\"\\ud800\"}",
          "lone high surrogate in a \\u escape" },
        { "{\"channel\":\"c\",\"data\":\"\\ud800\\u0041\"}",
          "lone high surrogate in a \\u escape" },
        { "{\"channel\":\"c\",\"data\":\"\\udc00\"}",
          "lone low surrogate in a \\u escape" },
        { "{\"channel\":\"c\",\"data\":\"x", "unterminated string" },
        { "{\"channel\":\"c\",\"data\":01}", "comma or close expected" },
        { "{\"channel\":\"c\",\"data\":-}", "bad number" },
        { "{\"channel\":\"c\",\"data\":1.}", "bad number" },
        { "{\"channel\":\"c\",\"data\":1e}", "bad number" },
        { "{\"channel\":\"c\",\"data\":+1}", "value expected" },
        { "{\"channel\":\"c\",\"data\":-x}", "bad number" },
        { "{\"channel\":\"c\",\"data\":tru}", "unexpected character" },
        { "{\"channel\":\"c\",\"data\":x}", "value expected" },
        { "{\"channel\":\"c\",\"data\":[1,]}", "value expected" },
        { "{\"channel\":\"c\",\"data\":[1 2]}", "comma or close expected" },
        { "{\"channel\":\"c\",\"data\":{\"a\"}}", "colon expected" },
        { "{\"channel\":\"c\",\"data\":{\"a\":1]}", "comma or close expected" },
        { "{\"channel\":\"c\",\"data\":[", "value expected" },
        { "{\"channel\":\"c\",\"data\":[1", "unterminated array or object" },
        { "{\"channel\":1,\"data\":\"x\"}", "\"channel\" must be a string" },
        { "{\"channel\":\"c\",\"event\":[],\"data\":\"x\"}",
          "\"event\" must be a string" },
        { "{\"channel\":\"c\",\"channel\":\"d\",\"data\":\"x\"}",
          "\"channel\" given twice" },
        { "{\"channel\":\"c\",\"data\":\"x\",\"data\":\"y\"}",
          "\"data\" given twice" },
        { "{\"channel\":\"c\",\"data\":\"x\",\"from\":\"admin\"}",
          "unknown member (only channel, event and data)" },
        { "{\"data\":\"x\"}", "\"channel\" missing" },
        { "{\"channel\":\"c\"}", "\"data\" missing" },
        { "{}", "\"channel\" missing" },
        { "{\"channel\":\"c\",\"data\":\"\xff\"}", "not UTF-8" },
    };
    comet_json_envelope_t e;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *why = env_of(bad[i].text, &e);

        ck_assert_msg(why && !strcmp(why, bad[i].why),
                      "'%s': wanted '%s', got '%s'", bad[i].text, bad[i].why,
                      why ? why : "(accepted)");
        ck_assert_ptr_null(e.channel);
    }
}
END_TEST

START_TEST(envelope_nesting_is_bounded_without_recursion)
{
    char *text = malloc(600000);
    comet_json_envelope_t e;
    size_t n = 0;
    int depth;

    /* Exactly the bound is fine. */
    n = (size_t)sprintf(text, "{\"channel\":\"c\",\"data\":");
    for (depth = 0; depth < COMET_JSON_MAX_DEPTH; depth++) {
        text[n++] = '[';
    }
    for (depth = 0; depth < COMET_JSON_MAX_DEPTH; depth++) {
        text[n++] = ']';
    }
    strcpy(text + n, "}");
    ck_assert_ptr_null(env_of(text, &e));
    /* One more is refused, and so are 90,000 (no stack is used up). */
    n = (size_t)sprintf(text, "{\"channel\":\"c\",\"data\":");
    for (depth = 0; depth < 90000; depth++) {
        text[n++] = depth & 1 ? '[' : '{';
        if (!(depth & 1)) {
            memcpy(text + n, "\"k\":", 4);
            n += 4;
        }
    }
    text[n] = '\0';
    ck_assert_str_eq(env_of(text, &e), "nested too deeply");
    free(text);
}
END_TEST

Suite *test_comet_json_suite(void)
{
    Suite *s = suite_create("comet_json");
    TCase *tc = tcase_create("envelope");

    tcase_add_checked_fixture(tc, comet_test_pool_setup,
                              comet_test_pool_teardown);
    tcase_add_test(tc, envelope_gives_channel_event_and_string_data_unescaped);
    tcase_add_test(tc, envelope_data_of_another_type_is_its_json_text);
    tcase_add_test(tc,
                   envelope_refuses_what_is_not_strict_json_with_a_reason);
    tcase_add_test(tc, envelope_nesting_is_bounded_without_recursion);
    suite_add_tcase(s, tc);
    return s;
}
