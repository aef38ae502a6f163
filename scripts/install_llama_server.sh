#!/usr/bin/env bash
# llama.cpp's server (llama-server), built from the source that the llama-cpp-python sdist vendors, into
# .llama-server/bin: the other engine the tests drive (a GGUF model on the CPU). ~7 min on 2 cores
# (cmake and a C++ compiler; no download but the sdist from the package registry).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.llama-server}
VERSION=0.3.36  # vendors llama.cpp b1-0c1e570
if [ -x "$DEST/bin/llama-server" ]; then
  "$DEST/bin/llama-server" --version 2>&1 | head -1
  exit 0
fi
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
pip download -q --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$SRC"
tar -xzf "$SRC"/llama_cpp_python-$VERSION.tar.gz -C "$SRC"
LLAMA="$SRC/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$LLAMA" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  -DGGML_NATIVE=ON > "$SRC/cmake.log"
cmake --build "$SRC/build" --target llama-server -j "$(nproc)" > "$SRC/build.log"
mkdir -p "$DEST/bin"
cp "$SRC/build/bin/llama-server" "$DEST/bin/"
"$DEST/bin/llama-server" --version 2>&1 | head -1
