# syntax=docker/dockerfile:1
# The BitingLip image: every component (gateway, model worker, Prefect server, pool workers, the setup job)
# runs from it with its own command (deploy/compose.yaml, deploy/kubernetes/). It installs with
# deploy/install.sh, the script `make setup` runs: one install path.
#   docker build -t bitinglip:latest --build-arg VARIANT=cuda .   NVIDIA GPUs: CUDA torch, llama.cpp on CUDA
#   docker build -t bitinglip:cpu .                               CPU only (the default VARIANT)
# llama.cpp is built for any x86-64 CPU (GGML_NATIVE=OFF), not only the build machine's.
ARG VARIANT=cpu
ARG CUDA_VERSION=12.6.3

# -- the web console's build (Node is needed for the build only)
FROM node:20-bookworm-slim AS console
WORKDIR /src
COPY deploy/install.sh deploy/install.sh
COPY web web
RUN deploy/install.sh console

# -- per variant: a compiler for llama.cpp, where torch comes from, llama.cpp's flags
FROM python:3.11-slim-bookworm AS build-cpu
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
ENV PYTHON=python3 TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu CMAKE_ARGS="-DGGML_NATIVE=OFF"

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04 AS build-cuda
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    python3.11 python3.11-venv python3.11-dev build-essential cmake && rm -rf /var/lib/apt/lists/*
ENV PYTHON=python3.11 TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 \
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CUDA=on"

FROM build-${VARIANT} AS build
WORKDIR /app
COPY pyproject.toml README.md ./
COPY deploy/install.sh deploy/install.sh
COPY bitinglip bitinglip
COPY api api
COPY flows flows
RUN deploy/install.sh python /app/.venv

# -- per variant: what the programs need at run time (llama.cpp's OpenMP; CUDA's libraries)
FROM python:3.11-slim-bookworm AS runtime-cpu
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu22.04 AS runtime-cuda
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    python3.11 libgomp1 && rm -rf /var/lib/apt/lists/*

FROM runtime-${VARIANT}
# the home and the folders volumes mount on, owned by the user the programs run as (an empty named
# volume takes the ownership of the folder it is mounted on)
RUN useradd --system --create-home --uid 10001 bitinglip \
    && install -d -o bitinglip -g bitinglip -m 0700 /data /data/models /data/results /data/results/prefect
WORKDIR /app
COPY --from=build /app /app
COPY --from=console /src/web/dist web/dist
COPY prefect.yaml ./
COPY work-pools work-pools
ENV PATH=/app/.venv/bin:$PATH BITINGLIP_HOME=/data BITINGLIP_PROJECT_DIR=/app PYTHONUNBUFFERED=1
USER bitinglip
EXPOSE 8001 8002 4200
CMD ["bitinglip", "gateway"]
