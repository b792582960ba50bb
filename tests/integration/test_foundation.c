/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* The module loads into the real apache2 with the event MPM and two
 * children, refuses what it cannot work with, and survives graceful
 * restarts and stops without leaving anything behind. */

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static it_server_t srv;

static void start(void)
{
    ck_assert_int_eq(it_server_start(&srv, NULL), 0);
}

static void stop(void)
{
    it_server_stop(&srv);
}

START_TEST(runs_with_two_children_and_the_handlers_answer)
{
    it_response_t *res = malloc(sizeof(*res));
    pid_t kids[16];

    ck_assert_int_ge(it_server_children(&srv, kids, 16), 2);
    /* The publisher handler answers for an unknown channel... */
    ck_assert_int_eq(it_http(srv.port, "GET", "/pub/nothing-here", NULL,
                             NULL, 0, res, 5000), 0);
    ck_assert_int_eq(res->status, 404);
    ck_assert_ptr_nonnull(strstr(res->body, "no such channel"));
    /* ...and refuses methods it does not serve, saying which it does. */
    ck_assert_int_eq(it_http(srv.port, "PATCH", "/pub/x", NULL, NULL, 0,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 405);
    ck_assert_ptr_nonnull(strcasestr(res->head, "Allow:"));
    /* The subscriber handler refuses a request without a channel. */
    ck_assert_int_eq(it_http(srv.port, "GET", "/sub/", NULL, NULL, 0, res,
                             5000), 0);
    ck_assert_int_eq(res->status, 400);
    free(res);
}
END_TEST

START_TEST(a_bad_directive_value_is_refused_naming_it_and_the_line)
{
    char out[16384];
    it_opts_t o;

    memset(&o, 0, sizeof(o));
    o.extra = "CometSharedMemorySize 12Q\n";
    ck_assert_int_ne(it_server_try(&o, 0, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "CometSharedMemorySize: '12Q' is not a size"),
                  "output: %s", out);
    ck_assert_msg(strstr(out, "line "), "no line number in: %s", out);

    o.extra = "<Location /x>\nCometTransports sse carrier-pigeon\n"
              "</Location>\n";
    ck_assert_int_ne(it_server_try(&o, 0, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "unknown transport 'carrier-pigeon'"),
                  "output: %s", out);

    o.extra = "<VirtualHost 127.0.0.1:1>\nCometMessageBufferLength 5\n"
              "</VirtualHost>\n";
    ck_assert_int_ne(it_server_try(&o, 0, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "CometMessageBufferLength"), "output: %s",
                  out);

    o.extra = "CometMessageBufferLength 0\n";
    ck_assert_int_ne(it_server_try(&o, 0, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "CometMessageBufferLength: 0 is out of range"),
                  "output: %s", out);
}
END_TEST

START_TEST(a_non_async_mpm_is_refused_with_a_clear_error)
{
    char out[16384];
    it_opts_t o;

    memset(&o, 0, sizeof(o));
    o.mpm = "prefork";
    ck_assert_int_ne(it_server_try(&o, 1, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "mod_comet needs the event MPM"), "output: %s",
                  out);
    o.mpm = "worker";
    ck_assert_int_ne(it_server_try(&o, 1, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "mod_comet needs the event MPM"), "output: %s",
                  out);
}
END_TEST

START_TEST(graceful_restart_keeps_the_store_and_stop_leaves_nothing)
{
    it_server_t s;
    it_response_t *res = malloc(sizeof(*res));
    char id[64], id2[64];
    pid_t pid;

    ck_assert_int_eq(it_server_start(&s, NULL), 0);
    ck_assert_int_eq(it_http(s.port, "POST", "/pub/kept", NULL, "hello", 5,
                             res, 5000), 0);
    ck_assert_int_eq(res->status, 202);
    ck_assert_ptr_nonnull(it_header(res, "Comet-Message-Id", id,
                                    sizeof(id)));

    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(it_server_graceful(&s), 0);
    }
    /* A new size on a graceful restart keeps the store (and says so). */
    {
        char path[512], log[65536];
        FILE *f;

        snprintf(path, sizeof(path), "%s/httpd.conf", s.dir);
        f = fopen(path, "a");
        ck_assert_ptr_nonnull(f);
        fputs("CometSharedMemorySize 32M\n", f);
        fclose(f);
        ck_assert_int_eq(it_server_graceful(&s), 0);
        snprintf(path, sizeof(path), "%s/error_log", s.dir);
        ck_assert(it_read_file(path, log, sizeof(log)) > 0);
        ck_assert_msg(strstr(log, "CometSharedMemorySize changed from "
                             "67108864 to 33554432 bytes"), "log: %s", log);
    }
    ck_assert_int_eq(it_http(s.port, "GET", "/pub/kept", NULL, NULL, 0, res,
                             5000), 0);
    ck_assert_int_eq(res->status, 200);
    ck_assert_msg(strstr(res->body, "\"messages\":1"), "body: %s",
                  res->body);
    ck_assert_msg(strstr(res->body, id), "id %s not in %s", id, res->body);

    /* Ids go on increasing after the restarts. */
    ck_assert_int_eq(it_http(s.port, "POST", "/pub/kept", NULL, "again", 5,
                             res, 5000), 0);
    ck_assert_ptr_nonnull(it_header(res, "Comet-Message-Id", id2,
                                    sizeof(id2)));
    ck_assert_str_ne(id, id2);
    ck_assert(strtoull(strchr(id2, ':') + 1, NULL, 10)
              > strtoull(strchr(id, ':') + 1, NULL, 10));

    pid = s.pid;
    it_server_stop(&s);
    /* Nothing of the server's process group is left. */
    ck_assert_int_ne(kill(-pid, 0), 0);
    ck_assert_int_ne(access(s.socket_path, F_OK), 0);
    free(res);
}
END_TEST

/* conf-samples work as written: comet.conf with every directive
 * uncommented at its documented default, and the example site. */
START_TEST(the_sample_configs_parse_as_written)
{
    char cwd[400], path[512], line[1024], out[16384], extra[2048], tmp[64];
    /* Absolute: httpd reads Include paths relative to its ServerRoot. */
    const char *src = getenv("COMET_SRCDIR") ? getenv("COMET_SRCDIR")
                                             : getcwd(cwd, sizeof(cwd));
    FILE *in, *outf;
    it_opts_t o;
    int fd, directives = 0;

    snprintf(path, sizeof(path), "%s/conf-samples/comet.conf", src);
    in = fopen(path, "r");
    ck_assert_ptr_nonnull(in);
    strcpy(tmp, "/tmp/comet-conf.XXXXXX");
    fd = mkstemp(tmp);
    ck_assert_int_ge(fd, 0);
    outf = fdopen(fd, "w");
    while (fgets(line, sizeof(line), in)) {
        char *p = line;

        while (*p == ' ') {
            p++;
        }
        /* "#CometX value" is a directive shown at its default; the
         * example <Location> blocks are commented out as a whole, with
         * their own directives commented once more. */
        if (p[0] == '#') {
            char *q = p + 1;

            while (*q == ' ') {
                q++;
            }
            if (*q == '#' && !strncmp(q + 1, "Comet", 5)) {
                q++;
            }
            if (!strncmp(q, "Comet", 5)) {
                directives++;
            }
            if (!strncmp(q, "Comet", 5) || !strncmp(q, "<Location", 9)
                || !strncmp(q, "</Location>", 11)
                || !strncmp(q, "SetHandler", 10)
                || !strncmp(q, "Require", 7)) {
                fputs(q, outf);
                continue;
            }
        }
        fputs(line, outf);
    }
    fclose(in);
    fclose(outf);
    ck_assert_int_ge(directives, 16);

    memset(&o, 0, sizeof(o));
    snprintf(extra, sizeof(extra), "Include %s\nInclude %s/conf-samples/"
             "example-site.conf\n", tmp, src);
    o.extra = extra;
    ck_assert_msg(it_server_try(&o, 0, out, sizeof(out)) == 0, "output: %s",
                  out);
    ck_assert_msg(strstr(out, "Syntax OK"), "output: %s", out);
    unlink(tmp);
}
END_TEST

Suite *test_foundation_suite(void)
{
    Suite *s = suite_create("foundation");
    TCase *tc = tcase_create("running");
    TCase *cfg = tcase_create("config");

    tcase_add_unchecked_fixture(tc, start, stop);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, runs_with_two_children_and_the_handlers_answer);
    suite_add_tcase(s, tc);

    tcase_set_timeout(cfg, 120);
    tcase_add_test(cfg, a_bad_directive_value_is_refused_naming_it_and_the_line);
    tcase_add_test(cfg, a_non_async_mpm_is_refused_with_a_clear_error);
    tcase_add_test(cfg, the_sample_configs_parse_as_written);
    tcase_add_test(cfg, graceful_restart_keeps_the_store_and_stop_leaves_nothing);
    suite_add_tcase(s, cfg);
    return s;
}
