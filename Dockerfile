# syntax=docker/dockerfile:1
# Reference image for a RunPod GPU pod (and, with CMD ["worker"], a serverless worker):
# ComfyUI pinned by tag + PodKit. Models are never baked in: they come from the network volume
# or the bootstrap manifest (PODKIT_MANIFEST) at start.
#   docker build -t podkit --build-arg COMFYUI_TAG=v0.3.64 --build-arg XFORMERS=1 .
ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_BASE} AS build
ARG COMFYUI_TAG=v0.3.64
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=2.8.0
ARG TORCHVISION_VERSION=0.23.0
ARG TORCHAUDIO_VERSION=2.8.0
ARG XFORMERS=0
ARG XFORMERS_VERSION=0.0.32.post2
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# the base image pins the distribution; its security updates are wanted, so apt packages float
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev git ca-certificates build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt
RUN git clone --depth 1 --branch "${COMFYUI_TAG}" https://github.com/comfyanonymous/ComfyUI.git /opt/ComfyUI \
 && rm -rf /opt/ComfyUI/.git
RUN pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
      "torchaudio==${TORCHAUDIO_VERSION}" --index-url "${TORCH_INDEX}" \
 && pip install -r /opt/ComfyUI/requirements.txt
COPY requirements.txt /opt/podkit-requirements.txt
RUN pip install -r /opt/podkit-requirements.txt \
 && if [ "${XFORMERS}" = "1" ]; then pip install "xformers==${XFORMERS_VERSION}" --index-url "${TORCH_INDEX}"; fi
COPY . /opt/ComfyUI/custom_nodes/podkit
RUN rm -rf /opt/ComfyUI/custom_nodes/podkit/.git /opt/ComfyUI/custom_nodes/podkit/tests /opt/ComfyUI/custom_nodes/podkit/bench

FROM ${CUDA_BASE}
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates curl libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 comfy \
 && mkdir -p /workspace && chown comfy:comfy /workspace
COPY --from=build --chown=comfy:comfy /opt/venv /opt/venv
COPY --from=build --chown=comfy:comfy /opt/ComfyUI /opt/ComfyUI
ENV PATH=/opt/venv/bin:$PATH \
    COMFYUI_PATH=/opt/ComfyUI \
    COMFYUI_PYTHON=/opt/venv/bin/python \
    PYTHONUNBUFFERED=1
USER 1000
WORKDIR /opt/ComfyUI
EXPOSE 8188
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
  CMD ["curl", "-fsS", "http://127.0.0.1:8188/podkit/health"]
ENTRYPOINT ["python", "/opt/ComfyUI/custom_nodes/podkit"]
CMD ["pod"]
