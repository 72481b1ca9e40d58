# syntax=docker/dockerfile:1
# Two targets:
#   serving (default): causerec serve on onnxruntime-gpu (CUDA runtime base) or onnxruntime (ORT=cpu); no torch.
#   trainer:           torch (CPU wheel) to run train + export into a shared volume.
# Build: docker build -t causerec:serving .                       (GPU serving image)
#        docker build --build-arg ORT=cpu --build-arg BASE=python:3.11-slim-bookworm -t causerec:serving-cpu .
#        docker build --target trainer -t causerec:trainer .
# Not built or run in this repository's CI: there is no Docker engine there (see README "Deployment").

ARG BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
ARG ORT=gpu

FROM python:3.11-slim-bookworm AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY export ./export
COPY service ./service
COPY causerec ./causerec
COPY loadtests ./loadtests
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${BASE} AS serving
ARG ORT
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# The CUDA base ships no Python 3.11; the slim base does. Install it only where missing.
RUN if ! command -v python3.11 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends software-properties-common curl \
      && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
      && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
      && rm -rf /var/lib/apt/lists/*; fi \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY --from=wheels /wheels /wheels
RUN pip install "causerec[${ORT}] @ file://$(ls /wheels/causerec-*.whl)" \
    && python -c "import service.app, sys; assert 'torch' not in sys.modules"
RUN useradd --create-home --uid 10001 causerec
USER causerec
WORKDIR /home/causerec
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"
ENTRYPOINT ["causerec", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--bundle", "/bundles/current"]

FROM python:3.11-slim-bookworm AS trainer
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY --from=wheels /wheels /wheels
RUN pip install "causerec[train,cpu] @ file://$(ls /wheels/causerec-*.whl)"
RUN useradd --create-home --uid 10001 causerec
USER causerec
WORKDIR /home/causerec
ENTRYPOINT ["causerec"]
