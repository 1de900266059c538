# GPU image: vLLM 0.26.0 (CUDA, PyTorch) + oai-server, both models in one process on one GPU.
#   docker build -t oai-server .
#   docker run --gpus all -p 8080:8080 -e HF_TOKEN -v hf-cache:/data/hf oai-server
FROM vllm/vllm-openai:v0.26.0

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/data/hf \
    MALLOC_ARENA_MAX=2 \
    OAI_SERVER_ENGINE=vllm \
    OAI_SERVER_HOST=0.0.0.0 \
    PORT=8080

WORKDIR /opt/oai-server
COPY pyproject.toml README.md ./
COPY oai_server ./oai_server
# vLLM is already in the base image at the pinned version; this adds our package and its pins beside it.
# Versions are pinned by pyproject.toml (the local package), hence DL3013 does not apply.
# hadolint ignore=DL3013
RUN python3 -m pip install '.[vllm,redis]' \
    && useradd --system --uid 10001 --create-home --home-dir /home/oai oai \
    && mkdir -p /data/hf \
    && chown -R oai:oai /data/hf

USER 10001:10001
VOLUME ["/data/hf"]
EXPOSE 8080

# Model loading takes minutes on a cold cache: the start period keeps the container "starting" until then.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('PORT', '8080'), timeout=4)"]

# The base image's entrypoint is `vllm serve`; ours is the oai-server CLI.
ENTRYPOINT []
CMD ["oai-server", "serve"]
