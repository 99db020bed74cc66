# attnlm-server with the shipped default model.
#
#   docker build -t attnlm .
#   docker run --rm -p 8080:8080 attnlm
#
# The image also holds one model per attention mechanism, as BF16 files
# (/models/gru-MECHANISM.safetensors); to serve all five, list them after the default:
#   docker run --rm -p 8080:8080 -e ATTNLM_MODEL=/models/model.safetensors,/models/gru-additive.safetensors,/models/gru-dot.safetensors,/models/gru-cosine.safetensors,/models/gru-multihead.safetensors attnlm
# Another model: mount it over the default, or elsewhere and point ATTNLM_MODEL at it:
#   docker run --rm -p 8080:8080 -v "$PWD/my.safetensors:/models/model.safetensors:ro" attnlm
# Every flag of attnlm-server is an ATTNLM_* variable (-e ATTNLM_WORKERS=4) or an argument
# after the image name (docker run ... attnlm --workers 4).

ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev make pkg-config \
      libopenblas-dev libcjson-dev libmicrohttpd-dev libhiredis-dev python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY common/ common/
COPY model/ model/
COPY api/ api/
COPY server/ server/
# The inspector page and the generator that embeds it in the binary.
COPY tools/ tools/
COPY ui/ ui/
# -O2 without debug information; the runtime image has no debugger to use it.
RUN make build/attnlm-server OPT=-O2 && strip build/attnlm-server
# The mechanism models go in as BF16 files, half their size, to keep the image small: scores
# move by about 1e-5 nats/byte (tools/to_bf16.py rounds as train.py --export-dtype bf16 does).
COPY models/gru-*.safetensors models/
RUN mkdir -p build/models && for m in additive dot cosine multihead; do \
      python3 tools/to_bf16.py models/gru-$m.safetensors build/models/gru-$m.safetensors || exit 1; \
    done

FROM ${BASE}
# The server links libopenblas.so.0 alone: the package's separate LAPACK and reference-BLAS
# libraries are never loaded.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libopenblas0-pthread libcjson1 libmicrohttpd12 libhiredis0.14 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log \
 && rm -f /usr/lib/*/openblas-pthread/liblapack.so.3 \
      /usr/lib/*/openblas-pthread/libblas.so.3 \
 && groupadd --system --gid 10001 attnlm \
 && useradd --system --uid 10001 --gid attnlm --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin attnlm
COPY --from=build /src/build/attnlm-server /usr/local/bin/attnlm-server
COPY models/default.safetensors /models/model.safetensors
COPY --from=build /src/build/models/ /models/

# Each worker runs its own single-threaded BLAS calls: OpenBLAS's thread pool would sit idle.
ENV ATTNLM_HOST=0.0.0.0 \
    ATTNLM_PORT=8080 \
    ATTNLM_ADMIN_PORT=9090 \
    ATTNLM_MODEL=/models/model.safetensors \
    OPENBLAS_NUM_THREADS=1
USER 10001:10001
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
# The binary probes its own /health on the admin port (no curl or wget in the image).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 CMD ["attnlm-server", "--health"]
ENTRYPOINT ["attnlm-server"]
