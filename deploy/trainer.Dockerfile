# The trainer image: torch + the training extras; `causerec train` / `causerec export`.
#   docker build -f deploy/trainer.Dockerfile -t causerec:trainer-0.1.0 .       CPU torch (TORCH_INDEX)
#   docker build -f deploy/trainer.Dockerfile --build-arg TORCH_INDEX= -t causerec:trainer-cuda-0.1.0 .
#       the package index's default torch: the multi-GB CUDA build, for training on a GPU
# Wheels put in deploy/wheels/ are offered to pip first (e.g. an offline CPU torch wheel).
ARG PYTHON=python:3.11-slim-bookworm
FROM ${PYTHON}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY deploy/wheels/ /local-wheels/
COPY pyproject.toml README.md /src/
COPY model /src/model
COPY export /src/export
COPY service /src/service
COPY causerec /src/causerec
COPY loadtests /src/loadtests
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --find-links /local-wheels \
      ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} "/src[train,cpu]" \
    && rm -rf /src /local-wheels
ENV PATH=/opt/venv/bin:$PATH
# /bundles owned by the user: a fresh named volume mounted there inherits it, so the trainer can write.
RUN useradd --create-home --uid 10001 causerec && mkdir /bundles && chown causerec /bundles
USER causerec
WORKDIR /home/causerec
ENTRYPOINT ["causerec"]
