#!/usr/bin/env bash
# Compile admpff's TensorRT backend against a TensorRT header folder, without linking or running anything:
#
#   runtime/native/tools/check_tensorrt_headers.sh HEADER_DIR [CUDA_INCLUDE]
#
# HEADER_DIR holds NvInfer.h (a TensorRT install's include/, JetPack's /usr/include/aarch64-linux-gnu, or the
# include/ folder of a release of the public NVIDIA/TensorRT repository).  CUDA_INCLUDE defaults to
# $CUDA_HOME/include or /usr/local/cuda/include.  OpenCV's headers come from pkg-config (opencv4) or
# /usr/include/opencv4 (override with OPENCV_INCLUDE).  Warnings in admpff's own code are errors.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
headers=$1
cuda=${2:-${CUDA_HOME:-/usr/local/cuda}/include}
here=$(cd "$(dirname "$0")/.." && pwd)
cxx=${CXX:-g++}

[[ -f "$headers/NvInfer.h" ]] || { echo "check_tensorrt_headers: no NvInfer.h in $headers" >&2; exit 2; }
[[ -f "$cuda/cuda_runtime_api.h" ]] || { echo "check_tensorrt_headers: no cuda_runtime_api.h in $cuda (pass CUDA_INCLUDE)" >&2; exit 2; }
opencv=${OPENCV_INCLUDE:-$(pkg-config --variable=includedir opencv4 2>/dev/null || true)}
[[ -n "$opencv" && -d "$opencv/opencv2" ]] || opencv=/usr/include/opencv4
[[ -n "$opencv" && -d "$opencv/opencv2" ]] || { echo "check_tensorrt_headers: OpenCV headers not found (set OPENCV_INCLUDE)" >&2; exit 2; }

version=$(awk '
  /#define[ \t]+(NV_TENSORRT|TRT)_(MAJOR|MINOR|PATCH)(_ENTERPRISE)?[ \t]+[0-9]+/ {
    part = $2; sub(/^(NV_TENSORRT|TRT)_/, "", part); sub(/_ENTERPRISE$/, "", part)
    if (!(part in v)) v[part] = $3
  }
  END { printf "%s.%s.%s", v["MAJOR"], v["MINOR"], v["PATCH"] }' "$headers/NvInferVersion.h")

"$cxx" -std=c++17 -fsyntax-only -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wno-sign-conversion -Werror \
  -DADMPFF_HAVE_TENSORRT=1 -I"$here/include" -I"$here/src" \
  -isystem "$headers" -isystem "$cuda" -isystem "$opencv" \
  "$here/src/tensorrt_backend.cpp"
echo "TensorRT $version headers ($headers): tensorrt_backend.cpp compiles (g++ -std=c++17 -fsyntax-only -Werror)"
