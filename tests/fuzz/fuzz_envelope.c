/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/*
 * fuzz_envelope.c -- libFuzzer target for the client publishing envelope
 * (comet_json.c).
 *
 * Input: the text a WebSocket client sends.  Checked:
 *   - a refusal has a reason and leaves the envelope empty;
 *   - an accepted envelope's strings lie inside the scratch or the text,
 *     and were never longer than the text;
 *   - written again as JSON (comet_frame_json_string for the strings,
 *     data as its text when it was not a string) and read back, it gives
 *     the same channel, event and data: what we read is what JSON means;
 *   - the same text cut short anywhere is never accepted unless the cut
 *     leaves only whitespace (an object cannot end early).
 *
 * Run: make fuzz FUZZ_TARGETS=envelope (seeds in tests/fuzz/corpus/envelope).
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comet_json.h"
#include "comet_frame.h"

#define CHECK(cond) do {                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "fuzz_envelope.c:%d: check failed: %s\n", __LINE__,\
                    #cond);                                                 \
            abort();                                                        \
        }                                                                   \
    } while (0)

static int inside(const char *p, apr_size_t n, const char *lo,
                  apr_size_t lo_len)
{
    return p >= lo && p + n <= lo + lo_len;
}

static int same(const char *a, apr_size_t alen, const char *b,
                apr_size_t blen)
{
    return alen == blen && (!alen || !memcmp(a, b, alen));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), *scratch = malloc(size + 1);
    comet_json_envelope_t e, e2;
    const char *why = NULL;
    apr_status_t rv;

    memcpy(text, data, size);
    rv = comet_json_envelope(text, size, scratch, &e, &why);
    if (rv != APR_SUCCESS) {
        CHECK(rv == APR_EINVAL && why && *why);
        CHECK(!e.channel && !e.data && !e.event);
        goto out;
    }
    CHECK(e.channel && e.data);
    CHECK(inside(e.channel, e.channel_len, scratch, size));
    CHECK(!e.event || inside(e.event, e.event_len, scratch, size));
    CHECK(inside(e.data, e.data_len, scratch, size)
          || inside(e.data, e.data_len, text, size));

    /* Write it again and read it back. */
    {
        char mem[3 * 65536];
        comet_buf_t b;
        char *scratch2;
        int data_is_text = inside(e.data, e.data_len, text, size);

        comet_buf_wrap(&b, mem, sizeof(mem));
        if (comet_buf_puts(&b, "{\"channel\":") == APR_SUCCESS
            && comet_frame_json_string(&b, e.channel, e.channel_len)
               == APR_SUCCESS
            && (!e.event
                || (comet_buf_puts(&b, ",\"event\":") == APR_SUCCESS
                    && comet_frame_json_string(&b, e.event, e.event_len)
                       == APR_SUCCESS))
            && comet_buf_puts(&b, ",\"data\":") == APR_SUCCESS
            && (data_is_text ? comet_buf_append(&b, e.data, e.data_len)
                             : comet_frame_json_string(&b, e.data,
                                                       e.data_len))
               == APR_SUCCESS
            && comet_buf_putc(&b, '}') == APR_SUCCESS) {
            scratch2 = malloc(b.len + 1);
            why = NULL;
            /* Our writer escapes bytes that are not UTF-8 as \u00XX; the
             * envelope's strings came from UTF-8 text, so there are none,
             * and the second reading must agree with the first. */
            CHECK(comet_json_envelope(b.data, b.len, scratch2, &e2, &why)
                  == APR_SUCCESS);
            CHECK(same(e.channel, e.channel_len, e2.channel,
                       e2.channel_len));
            CHECK(!e.event == !e2.event);
            CHECK(!e.event || same(e.event, e.event_len, e2.event,
                                   e2.event_len));
            CHECK(same(e.data, e.data_len, e2.data, e2.data_len));
            free(scratch2);
        }
    }

    /* Cut short, an accepted object is no longer one. */
    {
        size_t end = size;

        while (end && (text[end - 1] == ' ' || text[end - 1] == '\t'
                       || text[end - 1] == '\n' || text[end - 1] == '\r')) {
            end--;
        }
        for (size_t cut = 0; cut < end; cut += 1 + cut / 8) {
            why = NULL;
            CHECK(comet_json_envelope(text, cut, scratch, &e2, &why)
                  == APR_EINVAL);
        }
    }
out:
    free(text);
    free(scratch);
    return 0;
}
