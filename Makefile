# mod_comet -- build, test, run.
#
#   make            build the module (.libs/mod_comet.so)
#   make test       install missing packages, build, run unit + integration tests
#   make run        start a demo server on 127.0.0.1:$(PORT) (make stop ends it)
#   make install    install the module, the Debian-style comet.load/comet.conf,
#                   and comet.js with the demo chat page in $(DATADIR)
#   make bench      benchmarks (see BENCHMARKS.md)
#   make asan       unit + integration tests under AddressSanitizer
#   make fuzz       each libFuzzer target for FUZZ_SECONDS (tests/fuzz)
#   make clean

APXS        ?= $(shell command -v apxs 2>/dev/null || echo /usr/bin/apxs)
CC          ?= cc
PORT        ?= 8080
BUILD       := build
DESTDIR     ?=
# comet.js and the demo page (conf-samples/comet.conf's Alias points here).
DATADIR     ?= /usr/share/mod_comet

APR_CFLAGS   = $(shell apr-1-config --cflags --cppflags --includes 2>/dev/null)
APR_LIBS     = $(shell apr-1-config --link-ld --libs 2>/dev/null)
CHECK_CFLAGS = $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS   = $(shell pkg-config --libs check 2>/dev/null)
# OpenSSL: the core's TLS sessions (comet_tls.c), so the module, the unit
# tests and the benchmark client; the integration tests' TLS client.
SSL_LIBS     = $(shell pkg-config --libs openssl 2>/dev/null || echo -lssl -lcrypto)

WARN        := -Wall -Wextra -Werror -Wno-unused-parameter
STD         := -std=gnu99
SANITIZE    ?=
OPT         ?= -O2 -g

# Server-independent core: APR/POSIX only, linked into the unit tests too.
CORE_SRC    := $(sort $(wildcard comet_*.c))
CORE_HDR    := $(sort $(wildcard comet_*.h))
# httpd glue.
GLUE_SRC    := mod_comet.c $(sort $(filter-out mod_comet.c,$(wildcard mod_comet_*.c))) \
               $(wildcard event_bridge.c)
GLUE_HDR    := mod_comet.h $(sort $(wildcard mod_comet_*.h)) $(wildcard event_bridge.h)

UNIT_SRC    := $(sort $(wildcard tests/unit/*.c))
UNIT_SUITES := $(patsubst tests/unit/test_%.c,%,$(sort $(wildcard tests/unit/test_*.c)))
IT_SRC      := $(sort $(wildcard tests/integration/*.c))
IT_SUITES   := $(patsubst tests/integration/test_%.c,%,$(sort $(wildcard tests/integration/test_*.c)))

MODULE      := .libs/mod_comet.so
APXS_FLAGS  := -Wc,$(STD) $(foreach w,$(WARN) $(SANITIZE),-Wc,$(w)) \
               $(if $(SANITIZE),-Wl,$(SANITIZE))

.PHONY: all deps test unit integration run stop install clean clean-objs asan bench bench-store bench-redis \
        bench-tls-mem fuzz fuzz-build

all: $(MODULE)

$(MODULE): $(GLUE_SRC) $(CORE_SRC) $(GLUE_HDR) $(CORE_HDR) Makefile
	$(APXS) -c -o mod_comet.la $(APXS_FLAGS) $(GLUE_SRC) $(CORE_SRC) $(SSL_LIBS)
	@test -f $@

deps:
	@sh tests/deps.sh

# ---- tests -------------------------------------------------------------

$(BUILD)/unit_suites.h: Makefile $(UNIT_SRC) | $(BUILD)
	@{ for s in $(UNIT_SUITES); do echo "COMET_SUITE($$s)"; done; } > $@.tmp && mv $@.tmp $@

$(BUILD)/integration_suites.h: Makefile $(IT_SRC) | $(BUILD)
	@{ for s in $(IT_SUITES); do echo "COMET_SUITE($$s)"; done; } > $@.tmp && mv $@.tmp $@

$(BUILD):
	@mkdir -p $(BUILD)

TEST_CFLAGS = $(STD) $(WARN) $(OPT) $(SANITIZE) -I. -I$(BUILD) -Itests $(APR_CFLAGS) $(CHECK_CFLAGS)
TEST_LIBS   = $(SANITIZE) $(CHECK_LIBS) $(APR_LIBS) -laprutil-1 -lpthread

$(BUILD)/unit_tests: $(UNIT_SRC) $(CORE_SRC) $(CORE_HDR) $(wildcard tests/unit/*.h) $(BUILD)/unit_suites.h
	$(CC) $(TEST_CFLAGS) -o $@ $(UNIT_SRC) $(CORE_SRC) $(TEST_LIBS) $(SSL_LIBS)

$(BUILD)/integration_tests: $(IT_SRC) $(CORE_SRC) $(CORE_HDR) $(wildcard tests/integration/*.h) $(BUILD)/integration_suites.h
	$(CC) $(TEST_CFLAGS) -o $@ $(IT_SRC) $(CORE_SRC) $(TEST_LIBS) $(SSL_LIBS)

# The module once more, with the fault injection of the integration tests'
# fault suite compiled in (mod_comet.c, COMET_FAULT_INJECTION): built apart,
# in $(BUILD)/faults, and never installed.
FAULT_MODULE := $(BUILD)/faults/.libs/mod_comet.so
$(FAULT_MODULE): $(GLUE_SRC) $(CORE_SRC) $(GLUE_HDR) $(CORE_HDR) Makefile
	@rm -rf $(BUILD)/faults && mkdir -p $(BUILD)/faults
	@cp $(GLUE_SRC) $(CORE_SRC) $(GLUE_HDR) $(CORE_HDR) $(BUILD)/faults/
	@echo "$(APXS) -c -DCOMET_FAULT_INJECTION ... ($@)"
	@cd $(BUILD)/faults && $(APXS) -c -o mod_comet.la -Wc,-DCOMET_FAULT_INJECTION \
	    $(APXS_FLAGS) $(notdir $(GLUE_SRC) $(CORE_SRC)) $(SSL_LIBS) >/dev/null
	@test -f $@

unit: $(BUILD)/unit_tests
	$(BUILD)/unit_tests

integration: $(MODULE) $(FAULT_MODULE) $(BUILD)/integration_tests
	COMET_MODULE=$(CURDIR)/$(MODULE) COMET_FAULT_MODULE=$(CURDIR)/$(FAULT_MODULE) \
	    $(BUILD)/integration_tests

test: deps
	@$(MAKE) --no-print-directory all $(FAULT_MODULE) $(BUILD)/unit_tests \
	    $(BUILD)/integration_tests
	@rc=0; \
	$(BUILD)/unit_tests || rc=1; \
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(FUZZ_SMOKE_SECONDS) || rc=1; \
	COMET_MODULE=$(CURDIR)/$(MODULE) COMET_FAULT_MODULE=$(CURDIR)/$(FAULT_MODULE) \
	    $(BUILD)/integration_tests || rc=1; \
	exit $$rc

# The sanitizer build goes to build-asan/ (tests) and build-asan/.libs
# (module), so the normal build is left alone.
ASAN_BUILD := build-asan
asan: deps
	@rm -rf $(ASAN_BUILD) && mkdir -p $(ASAN_BUILD)
	@cp $(GLUE_SRC) $(CORE_SRC) $(GLUE_HDR) $(CORE_HDR) $(ASAN_BUILD)/
	@cd $(ASAN_BUILD) && $(APXS) -c -o mod_comet.la -Wc,$(STD) \
	    $(foreach w,$(WARN) -fsanitize=address -fno-omit-frame-pointer -O1,-Wc,$(w)) \
	    -Wl,-fsanitize=address $(notdir $(GLUE_SRC) $(CORE_SRC)) $(SSL_LIBS) >/dev/null
	@mkdir -p $(ASAN_BUILD)/faults && cp $(GLUE_SRC) $(CORE_SRC) $(GLUE_HDR) $(CORE_HDR) \
	    $(ASAN_BUILD)/faults/
	@cd $(ASAN_BUILD)/faults && $(APXS) -c -o mod_comet.la -Wc,$(STD) -Wc,-DCOMET_FAULT_INJECTION \
	    $(foreach w,$(WARN) -fsanitize=address -fno-omit-frame-pointer -O1,-Wc,$(w)) \
	    -Wl,-fsanitize=address $(notdir $(GLUE_SRC) $(CORE_SRC)) $(SSL_LIBS) >/dev/null
	@$(MAKE) --no-print-directory BUILD=$(ASAN_BUILD) SANITIZE=-fsanitize=address \
	    OPT="-O1 -g -fno-omit-frame-pointer" $(ASAN_BUILD)/unit_tests $(ASAN_BUILD)/integration_tests
	@rc=0; \
	CK_TIMEOUT_MULTIPLIER=4 ASAN_OPTIONS=detect_leaks=1 $(ASAN_BUILD)/unit_tests || rc=1; \
	COMET_MODULE=$(CURDIR)/$(ASAN_BUILD)/.libs/mod_comet.so \
	    COMET_FAULT_MODULE=$(CURDIR)/$(ASAN_BUILD)/faults/.libs/mod_comet.so \
	    COMET_ASAN=$$($(CC) -print-file-name=libasan.so) \
	    $(ASAN_BUILD)/integration_tests || rc=1; \
	exit $$rc

# ---- fuzzing ---------------------------------------------------------------
#
# One libFuzzer target per parser of untrusted input: tests/fuzz/fuzz_<name>.c,
# seeds in tests/fuzz/corpus/<name>/.  Each target links the core built with
# coverage, AddressSanitizer and UndefinedBehaviorSanitizer (any report is
# fatal).  What a run finds goes to build/fuzz/corpus/<name>/ (the seeds are
# left alone); a crash is written to build/fuzz/crash-<name>-*.
#
#   make fuzz                      each target FUZZ_SECONDS (30) seconds
#   make fuzz FUZZ_SECONDS=600     a long run
#   make fuzz FUZZ_TARGETS=resp    one target
#
# make test runs each for FUZZ_SMOKE_SECONDS (3).  Without clang's fuzzer
# runtime (Debian: clang, libclang-rt-14-dev) the targets are skipped with a
# message.

FUZZ_CC            ?= $(shell command -v clang-14 2>/dev/null || command -v clang 2>/dev/null || echo clang)
FUZZ_SECONDS       ?= 30
FUZZ_SMOKE_SECONDS ?= 3
FUZZ_MAX_LEN       ?= 8192
FUZZ_BUILD         := $(BUILD)/fuzz
FUZZ_ALL           := $(patsubst tests/fuzz/fuzz_%.c,%,$(sort $(wildcard tests/fuzz/fuzz_*.c)))
FUZZ_TARGETS       ?= $(FUZZ_ALL)
FUZZ_SAN           := -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_CFLAGS         = $(STD) $(WARN) -g -O1 -fno-omit-frame-pointer $(FUZZ_SAN) \
                      -I. $(APR_CFLAGS)
FUZZ_CORE_OBJ      := $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(CORE_SRC))

$(FUZZ_BUILD)/obj/%.o: %.c $(CORE_HDR) Makefile
	@mkdir -p $(dir $@)
	@echo "$(FUZZ_CC) [fuzz] $<"
	@$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

# A target links the core files it needs: comet_x.c for every comet_x.h
# that it, or a core file already taken, includes (to a fixed point).
FUZZ_DEPS = deps() { $(FUZZ_CC) -MM -I. $(APR_CFLAGS) "$$@" | tr ' \\' '\n\n' \
	    | sed -n 's/^\(comet_[a-z0-9_]*\)\.h$$/\1.c/p'; }; \
	srcs=""; next=$$(deps $<); \
	while [ "$$next" != "$$srcs" ]; do \
	    srcs=$$next; \
	    next=$$( { echo "$$srcs"; for f in $$srcs; do [ -f $$f ] && deps $$f; done; } \
	        | sort -u | while read f; do [ -f "$$f" ] && echo $$f; done); \
	done

.SECONDARY: $(FUZZ_CORE_OBJ)
$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(CORE_SRC) $(CORE_HDR) Makefile
	@$(FUZZ_DEPS); \
	objs=$$(for f in $$srcs; do echo $(FUZZ_BUILD)/obj/$${f%.c}.o; done); \
	$(MAKE) -s --no-print-directory $$objs && \
	echo $(FUZZ_CC) ... -o $@ $< $$objs && \
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $$objs \
	    $(APR_LIBS) -laprutil-1 -lpthread

# Can this clang link a libFuzzer program?  (prints yes or the reason)
FUZZ_PROBE = printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n)\n{ return 0; }\n' \
	> $(FUZZ_BUILD)/probe.c && $(FUZZ_CC) -fsanitize=fuzzer,address,undefined \
	-o $(FUZZ_BUILD)/probe $(FUZZ_BUILD)/probe.c >/dev/null 2>&1

fuzz-build:
	@mkdir -p $(FUZZ_BUILD)
	@if ! ($(FUZZ_PROBE)); then \
	    echo "make fuzz: SKIPPED: $(FUZZ_CC) cannot link -fsanitize=fuzzer" \
	         "(Debian: apt-get install clang libclang-rt-14-dev)"; \
	    exit 0; \
	fi; \
	$(MAKE) --no-print-directory $(patsubst %,$(FUZZ_BUILD)/fuzz_%,$(FUZZ_TARGETS))

fuzz: fuzz-build
	@if [ ! -x $(FUZZ_BUILD)/probe ]; then exit 0; fi; \
	rc=0; \
	for t in $(FUZZ_TARGETS); do \
	    mkdir -p $(FUZZ_BUILD)/corpus/$$t; \
	    echo "fuzz_$$t: $(FUZZ_SECONDS) s ..."; \
	    $(FUZZ_BUILD)/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) \
	        -max_len=$(FUZZ_MAX_LEN) -timeout=10 -rss_limit_mb=1024 \
	        -print_final_stats=1 -artifact_prefix=$(FUZZ_BUILD)/crash-$$t- \
	        $(FUZZ_BUILD)/corpus/$$t tests/fuzz/corpus/$$t \
	        > $(FUZZ_BUILD)/$$t.log 2>&1; \
	    st=$$?; \
	    runs=$$(sed -n 's/^stat::number_of_executed_units: *//p' $(FUZZ_BUILD)/$$t.log); \
	    secs=$$(sed -n 's/^stat::average_exec_per_sec: *//p' $(FUZZ_BUILD)/$$t.log); \
	    cov=$$(grep -o 'cov: [0-9]*' $(FUZZ_BUILD)/$$t.log | tail -n 1); \
	    if [ $$st -eq 0 ]; then \
	        echo "fuzz_$$t: ok: $${runs:-?} executions in $(FUZZ_SECONDS) s" \
	             "($${secs:-?}/s, $$cov)"; \
	    else \
	        rc=1; \
	        echo "fuzz_$$t: FAILED after $${runs:-?} executions" \
	             "(log: $(FUZZ_BUILD)/$$t.log)"; \
	        grep -E '^(==[0-9]+==ERROR|SUMMARY|fuzz_.*check failed|artifact_prefix|Test unit written)' \
	            $(FUZZ_BUILD)/$$t.log | head -n 20; \
	    fi; \
	done; \
	exit $$rc

# ---- demo server --------------------------------------------------------

run: deps all
	@sh tests/run-demo.sh start "$(CURDIR)" "$(PORT)"

stop:
	@sh tests/run-demo.sh stop "$(CURDIR)" "$(PORT)"

# ---- install --------------------------------------------------------------

install: all
	install -d $(DESTDIR)$(shell $(APXS) -q LIBEXECDIR)
	$(APXS) -i -S LIBEXECDIR=$(DESTDIR)$(shell $(APXS) -q LIBEXECDIR) -n comet mod_comet.la
	install -d $(DESTDIR)$(shell $(APXS) -q SYSCONFDIR)/mods-available
	install -m 644 conf-samples/comet.load conf-samples/comet.conf \
	    $(DESTDIR)$(shell $(APXS) -q SYSCONFDIR)/mods-available/
	install -d $(DESTDIR)$(DATADIR)/demo
	install -m 644 client/comet.js $(DESTDIR)$(DATADIR)/comet.js
	install -m 644 demo/index.html $(DESTDIR)$(DATADIR)/demo/index.html

# ---- benchmarks -----------------------------------------------------------

BENCH_CFLAGS = $(STD) $(WARN) -O2 -g -I. $(APR_CFLAGS)

$(BUILD)/bench_store: bench/bench_store.c $(CORE_SRC) $(CORE_HDR) | $(BUILD)
	$(CC) $(BENCH_CFLAGS) -o $@ bench/bench_store.c $(CORE_SRC) $(APR_LIBS) -laprutil-1 -lpthread $(SSL_LIBS)

$(BUILD)/cometbench: bench/cometbench.c | $(BUILD)
	$(CC) $(STD) $(WARN) -O2 -g -o $@ bench/cometbench.c -lm $(SSL_LIBS)

# Where an idle, detached TLS session's memory goes (BENCHMARKS.md).
$(BUILD)/tls_session_mem: bench/tls_session_mem.c comet_tls.c comet_tls.h | $(BUILD)
	$(CC) $(BENCH_CFLAGS) -o $@ bench/tls_session_mem.c comet_tls.c $(SSL_LIBS) $(APR_LIBS)

bench-tls-mem: $(BUILD)/tls_session_mem
	$(BUILD)/tls_session_mem 500 3
	$(BUILD)/tls_session_mem 500 2

bench-redis: all $(BUILD)/cometbench
	@sh bench/redis.sh $(if $(QUICK),quick,full)

bench-store: $(BUILD)/bench_store
	$(BUILD)/bench_store $(if $(QUICK),--quick)

bench: deps all $(BUILD)/bench_store $(BUILD)/cometbench $(BUILD)/tls_session_mem
	@$(BUILD)/tls_session_mem 500 3 | head -n 1
	@sh bench/run.sh $(if $(QUICK),quick,full)

clean-objs:
	rm -rf .libs *.o *.lo *.slo *.la $(BUILD)/unit_tests $(BUILD)/integration_tests

clean: clean-objs
	rm -rf $(BUILD) build-asan
