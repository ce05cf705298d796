# The engine on NVIDIA GPUs: `fleetlm serve` with torch's CUDA build and Triton (the wheel torch
# depends on). The operator runs it as `fleetlm serve MODEL ...`.
#   docker build -f docker/engine-cuda.Dockerfile -t ghcr.io/fleetlm/engine-cuda:0.1.0 .
# The torch wheels bring the CUDA libraries (cuBLAS, cuDNN, NCCL, ...) as pip packages, so the
# base is nvidia/cuda's small "base" flavour (the container-toolkit settings, no libraries);
# CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 works too, ~2 GB larger. Both stages use
# the same image, so the virtual environment's python is the same /usr/bin/python3.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
# cu128: CUDA 12.8 wheels (drivers >= 570).
ARG TORCH_CUDA=cu128
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install "torch==${TORCH_VERSION}" \
    --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" \
    --extra-index-url https://pypi.org/simple
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fleetlm fleetlm
COPY engine engine
COPY kernels kernels
COPY operator operator
COPY router router
RUN pip install ".[engine]" \
    && python -c "import torch, triton; assert torch.version.cuda, 'torch without CUDA'; print(torch.__version__, torch.version.cuda, triton.__version__)"

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# Triton compiles its small launcher with the C compiler and Python's headers at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --create-home fleetlm
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["fleetlm"]
CMD ["serve", "--help"]
