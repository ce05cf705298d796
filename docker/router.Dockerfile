# The router: `fleetlm router`, without torch (the base dependencies only).
#   docker build -f docker/router.Dockerfile -t ghcr.io/fleetlm/router:0.1.0 .
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
RUN pip install . \
    && python -c "import fleetlm.router.app" \
    && if python -c "import torch" 2>/dev/null; then echo "torch must not be in the router image" >&2; exit 1; fi

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --user-group --create-home fleetlm
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["fleetlm"]
CMD ["router", "--host", "0.0.0.0", "--port", "8000"]
