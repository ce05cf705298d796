# The operator: `fleetlm operator` (kopf), without torch.
#   docker build -f docker/operator.Dockerfile -t ghcr.io/fleetlm/operator:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fleetlm fleetlm
COPY engine engine
COPY kernels kernels
COPY operator operator
COPY router router
RUN pip install ".[operator]" \
    && python -c "import kopf, fleetlm.operator" \
    && if python -c "import torch" 2>/dev/null; then echo "torch must not be in the operator image" >&2; exit 1; fi

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --user-group --create-home fleetlm
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# The chart runs it with a read-only root filesystem and an emptyDir at /tmp.
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["fleetlm", "operator"]
CMD ["--all-namespaces", "--liveness", "http://0.0.0.0:8080/healthz"]
