# The worker image for `celebhpo launch k8s` (or any GPU machine): the official CUDA build of
# PyTorch, with celebhpo and its PostgreSQL driver on top. Not built or run in this project's
# CI (no Docker, no GPU there): see README, "Many workers, many GPUs".
#
#   docker build -t registry.example.com/celebhpo:0.1 .
#   docker run --rm --gpus all registry.example.com/celebhpo:0.1 \
#       python -c "import torch; print(torch.cuda.get_device_name())"
#   docker push registry.example.com/celebhpo:0.1
#
# The base image's torch and torchvision are kept (pip is held to them), so its CUDA build is
# the one that runs; pick another with --build-arg BASE=pytorch/pytorch:<tag> (torch 2.4 or
# newer, pyproject.toml's range).
ARG BASE=pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/celebhpo
COPY pyproject.toml README.md ./
COPY celebhpo ./celebhpo
RUN pip freeze | grep -iE '^(torch|torchvision)==' > /tmp/keep.txt || true; \
    pip install -c /tmp/keep.txt '.[postgres]' \
 && python -c "import torch, torchvision, celebhpo; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" \
 && useradd --create-home --uid 1000 celebhpo

# Not root. The data's decode cache goes to [data] cache_dir (default: beside the data), so
# mount the data writable or point cache_dir at a writable volume.
USER 1000
WORKDIR /home/celebhpo
ENV TORCH_HOME=/home/celebhpo/.cache/torch
# The Job gives the command: celebhpo optimize --study NAME --device cuda
CMD ["celebhpo", "--help"]
