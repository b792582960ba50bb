/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* comet.js (client/) in a real browser.  The scenarios are written in
 * JavaScript, in tests/browser/run.mjs (Node, playwright-core, Debian's
 * chromium); each test case here runs one of them and serves the server
 * commands it sends, so that every apache2 a scenario uses is started,
 * stopped and started again by this harness like any other test's.
 *
 * The line protocol: the script writes a command on its descriptor 3 and
 * reads the answer on its standard input.
 *   start <file>   start a server with the config snippet in <file> added
 *                  -> "ok <port> <dir> <publish socket>"
 *   stop           graceful stop -> "ok"
 *   again          start the stopped server again, same port -> "ok"
 *   graceful       graceful restart -> "ok"
 * Anything that fails answers "err <why>". */

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

/* Serve the script's commands until it exits; returns its exit status. */
static int serve(pid_t pid, FILE *cmds, int answers)
{
    it_server_t srv;
    char line[1024];
    int status = -1;

    memset(&srv, 0, sizeof(srv));
    while (fgets(line, sizeof(line), cmds)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!strncmp(line, "start ", 6)) {
            static char extra[65536];
            it_opts_t o;

            it_server_stop(&srv);
            memset(&o, 0, sizeof(o));
            if (it_read_file(line + 6, extra, sizeof(extra)) < 0) {
                dprintf(answers, "err cannot read %s\n", line + 6);
                continue;
            }
            o.extra = extra;
            if (it_server_start(&srv, &o) == 0) {
                dprintf(answers, "ok %d %s %s\n", srv.port, srv.dir,
                        srv.socket_path);
            }
            else {
                dprintf(answers, "err apache2 did not start\n");
            }
        }
        else if (!strcmp(line, "stop")) {
            it_server_stop(&srv);
            dprintf(answers, "ok\n");
        }
        else if (!strcmp(line, "again")) {
            int rc = srv.dir[0] && !srv.pid ? it_server_start_again(&srv) : -1;

            dprintf(answers, rc == 0 ? "ok\n" : "err again\n");
        }
        else if (!strcmp(line, "graceful")) {
            int rc = srv.pid ? it_server_graceful(&srv) : -1;

            dprintf(answers, rc == 0 ? "ok\n" : "err graceful\n");
        }
        else {
            dprintf(answers, "err unknown command %s\n", line);
        }
    }
    it_server_stop(&srv);
    if (waitpid(pid, &status, 0) != pid) {
        return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int run_scenario(const char *name)
{
    const char *srcdir = getenv("COMET_SRCDIR") ? getenv("COMET_SRCDIR") : ".";
    const char *list = getenv("COMET_IT_LIST");
    char script[600], tmp[64];
    int cmd[2], ans[2], rc;
    pid_t pid;
    FILE *f;

    snprintf(script, sizeof(script), "%s/tests/browser/run.mjs", srcdir);
    /* The script's scratch space (its browser profile among others); the
     * runner removes it. */
    strcpy(tmp, "/tmp/comet-it.XXXXXX");
    if (!mkdtemp(tmp) || pipe(cmd) != 0 || pipe(ans) != 0) {
        return -1;
    }
    pid = fork();
    if (pid == 0) {
        /* Its own process group: the runner can kill the script and the
         * browser it started, whatever happens here. */
        setsid();
        dup2(ans[0], 0);
        dup2(cmd[1], 3);
        close(ans[0]);
        close(ans[1]);
        close(cmd[0]);
        close(cmd[1]);
        setenv("COMET_TEST_TMP", tmp, 1);
        execlp("node", "node", script, name, (char *)NULL);
        fprintf(stderr, "cannot run node: %s\n", strerror(errno));
        _exit(127);
    }
    close(ans[0]);
    close(cmd[1]);
    if (pid < 0) {
        close(ans[1]);
        close(cmd[0]);
        return -1;
    }
    if (list && (f = fopen(list, "a"))) {
        fprintf(f, "%d %s\n", (int)pid, tmp);
        fclose(f);
    }
    f = fdopen(cmd[0], "r");
    rc = serve(pid, f, ans[1]);
    fclose(f);
    close(ans[1]);
    kill(-pid, SIGKILL);
    return rc;
}

#define SCENARIO(name)                                                      \
    START_TEST(comet_js_##name)                                             \
    {                                                                       \
        int rc = run_scenario(#name);                                       \
                                                                            \
        ck_assert_msg(rc == 0, "browser scenario '%s' failed (exit %d); "   \
                      "its output is above", #name, rc);                    \
    }                                                                       \
    END_TEST

/* The size budget and the README's publish snippets need no browser. */
SCENARIO(size)
SCENARIO(snippets)
SCENARIO(exchange)
SCENARIO(restart)
SCENARIO(badid)
SCENARIO(proxy)
SCENARIO(share)
SCENARIO(demo)
SCENARIO(wspublish)

/* One case per scenario, so that CK_RUN_CASE=<scenario> runs one. */
#define ADD_SCENARIO(s, name)                                               \
    do {                                                                    \
        TCase *tc = tcase_create(#name);                                    \
                                                                            \
        tcase_set_timeout(tc, 120);                                         \
        tcase_add_test(tc, comet_js_##name);                                \
        suite_add_tcase(s, tc);                                             \
    } while (0)

Suite *test_client_suite(void)
{
    Suite *s = suite_create("client");

    ADD_SCENARIO(s, size);
    ADD_SCENARIO(s, snippets);
    ADD_SCENARIO(s, exchange);
    ADD_SCENARIO(s, restart);
    ADD_SCENARIO(s, badid);
    ADD_SCENARIO(s, proxy);
    ADD_SCENARIO(s, share);
    ADD_SCENARIO(s, wspublish);
    ADD_SCENARIO(s, demo);
    return s;
}
