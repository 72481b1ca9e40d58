# syntax=docker/dockerfile:1
# The serving image (the trainer has its own file, deploy/trainer.Dockerfile, so that no builder
# ever builds torch on the way to this one). One slim Python base for CPU and GPU:
#   docker build -t causerec:serving-cpu-0.1.0 .                               CPU serving (no torch)
#   docker build --build-arg ORT=gpu -t causerec:serving-gpu-0.1.0 .           onnxruntime-gpu + NVIDIA's
#       CUDA/cuDNN pip wheels; needs only the host driver (--gpus all); without a GPU it serves on
#       the CPU and logs a warning
# Wheels put in deploy/wheels/ are offered to pip first (an offline mirror, a pinned wheel).
# Proven by `make docker-smoke` (deploy/smoke.sh); its last output is in loadtests/results/.

ARG PYTHON=python:3.11-slim-bookworm

FROM ${PYTHON} AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY export ./export
COPY service ./service
COPY causerec ./causerec
COPY loadtests ./loadtests
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON} AS serving
ARG ORT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY deploy/wheels/ /local-wheels/
COPY --from=wheels /wheels /wheels
# ORT=gpu: onnxruntime-gpu's own extras bring the CUDA runtime, cuFFT, cuRAND, NVRTC and cuDNN of the
# CUDA major it was built for (13 for 1.31; CUDA 12 wheels beside it leave the provider unloadable
# and the replica silently on the CPU); cuBLAS is not among them. Loaded by onnxruntime.preload_dlls().
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --find-links /local-wheels \
      "causerec[${ORT}] @ file://$(ls /wheels/causerec-*.whl)" \
    && if [ "$ORT" = gpu ]; then /opt/venv/bin/pip install --find-links /local-wheels \
         "nvidia-cublas~=13.0"; fi \
    && rm -rf /wheels /local-wheels \
    && /opt/venv/bin/python -c "import service.app, sys; assert 'torch' not in sys.modules"
ENV PATH=/opt/venv/bin:$PATH
RUN useradd --create-home --uid 10001 causerec && mkdir /bundles && chown causerec /bundles
USER causerec
WORKDIR /home/causerec
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"
ENTRYPOINT ["causerec", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--bundle", "/bundles/current"]
