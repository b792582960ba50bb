/* Licensed under the Apache License, Version 2.0 (the "License"); you may
 * not use this file except in compliance with the License.
 */

/* The integration test runner.  Every apache2 the tests start is listed in
 * a file (COMET_IT_LIST); at the end the runner kills whatever of them is
 * left, fails the run when a child crashed ("exit signal" in an error log)
 * or AddressSanitizer reported anything, prints the tail of each error log
 * when a test failed, and removes the temporary directories. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define COMET_SUITE(name) Suite *test_##name##_suite(void);
#include "integration_suites.h"
#undef COMET_SUITE

/* Reports AddressSanitizer left in a server directory (make asan). */
static int asan_reports(const char *dir)
{
    char cmd[700], out[16384];

    snprintf(cmd, sizeof(cmd), "cat '%s'/asan.* 2>/dev/null | head -n 60",
             dir);
    it_run(cmd, out, sizeof(out), 10000);
    if (!out[0]) {
        return 0;
    }
    fprintf(stderr, "---- AddressSanitizer in %s ----\n%s----\n", dir, out);
    return 1;
}

/* A child that died of a signal (the parent logs "exit signal"). */
static int crashed_children(const char *dir)
{
    char cmd[1200], out[8192];

    /* Children a test killed on purpose (it_kill_child) are not crashes. */
    snprintf(cmd, sizeof(cmd), "grep -h 'exit signal' '%s'/error_log "
             "2>/dev/null | { if [ -f '%s'/expected-kills ]; then "
             "grep -v -F -f '%s'/expected-kills; else cat; fi; } "
             "| head -n 20", dir, dir, dir);
    it_run(cmd, out, sizeof(out), 10000);
    if (!out[0]) {
        return 0;
    }
    fprintf(stderr, "---- a child crashed in %s ----\n%s----\n", dir, out);
    /* Its core, when the system writes one there and gdb is at hand. */
    snprintf(cmd, sizeof(cmd), "for c in '%s'/cores/core*; do [ -f \"$c\" ] "
             "&& command -v gdb >/dev/null && gdb -batch -ex bt "
             "\"$(command -v apache2)\" \"$c\" 2>/dev/null | grep '^#'; "
             "done | head -n 40", dir);
    it_run(cmd, out, sizeof(out), 60000);
    if (out[0]) {
        fprintf(stderr, "backtrace:\n%s----\n", out);
    }
    return 1;
}

static int sweep(const char *list, int failed)
{
    int bad = 0;

    FILE *f = fopen(list, "r");
    char line[600], cmd[700], out[256];
    int pid;

    if (!f) {
        return 0;
    }
    while (fgets(line, sizeof(line), f)) {
        it_server_t srv;

        memset(&srv, 0, sizeof(srv));
        if (sscanf(line, "%d %255s", &pid, srv.dir) != 2) {
            continue;
        }
        if (pid > 0 && kill(-pid, 0) == 0) {
            fprintf(stderr, "killing leftover apache2 group %d\n", pid);
            kill(-pid, SIGKILL);
        }
        bad |= asan_reports(srv.dir);
        bad |= crashed_children(srv.dir);
        if (failed) {
            it_server_log_tail(&srv, 25);
        }
        if (!getenv("COMET_KEEP") && strncmp(srv.dir, "/tmp/comet-it.", 14)
            == 0) {
            snprintf(cmd, sizeof(cmd), "rm -rf '%s'", srv.dir);
            it_run(cmd, out, sizeof(out), 10000);
        }
    }
    fclose(f);
    unlink(list);
    return bad;
}

int main(void)
{
    char list[64];
    SRunner *sr;
    int failed, fd;

    strcpy(list, "/tmp/comet-it-list.XXXXXX");
    fd = mkstemp(list);
    if (fd < 0) {
        perror("mkstemp");
        return EXIT_FAILURE;
    }
    close(fd);
    setenv("COMET_IT_LIST", list, 1);
    signal(SIGPIPE, SIG_IGN);

    sr = srunner_create(NULL);
#define COMET_SUITE(name) srunner_add_suite(sr, test_##name##_suite());
#include "integration_suites.h"
#undef COMET_SUITE
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (sweep(list, failed)) {
        fprintf(stderr, "AddressSanitizer reported errors in the server, or "
                "a child process crashed\n");
        failed++;
    }
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
