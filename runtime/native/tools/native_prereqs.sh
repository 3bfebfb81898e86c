#!/usr/bin/env bash
# Make sure the native build's prerequisites are present: a C++17 compiler, CMake, OpenCV's C++ files,
# nlohmann-json, libzip and GoogleTest.  Installs what is missing when it can (root with apt-get, i.e.
# Debian/Ubuntu/JetPack); otherwise stops with one line naming the packages.
set -euo pipefail

missing=()
have_header() {  # header path relative to an include folder
  for dir in /usr/include /usr/local/include /usr/include/opencv4 /usr/local/include/opencv4 \
             /usr/include/x86_64-linux-gnu /usr/include/aarch64-linux-gnu; do
    [[ -f "$dir/$1" ]] && return 0
  done
  return 1
}
have_lib() {
  for dir in /usr/lib /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/local/lib; do
    compgen -G "$dir/$1*" > /dev/null && return 0
  done
  return 1
}

command -v cmake > /dev/null || missing+=(cmake)
command -v g++ > /dev/null || command -v c++ > /dev/null || missing+=(g++)
have_header opencv2/core.hpp || missing+=(libopencv-dev)
have_header nlohmann/json.hpp || missing+=(nlohmann-json3-dev)
{ have_header zip.h && have_lib libzip.so; } || missing+=(libzip-dev)
{ have_header gtest/gtest.h && have_lib libgtest; } || missing+=(libgtest-dev)

[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get > /dev/null; then
  echo "native prerequisites: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq > /dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
  exit 0
fi
echo "native runtime prerequisites missing: ${missing[*]} (Debian/Ubuntu: sudo apt-get install ${missing[*]})" >&2
exit 1
