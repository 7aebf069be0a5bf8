#!/usr/bin/env bash
# llama.cpp's server through llama-cpp-python, with its OpenAI-compatible server (`python -m
# llama_cpp.server`): the upstream of the pool's tests (`make llama-server`) and the llama.cpp peer of
# `tandem bench-completion`. In a venv of its own, never the project's. PyPI has no
# prebuilt wheel for it (only the sdist), so pip compiles llama.cpp: minutes, once.
# AVX2 (plus the AVX-512 extensions this CPU has) rather than -march=native, as the Makefile's
# `bench` peer does: the native build turns on AMX kernels that die of SIGILL in VMs without AMX.
# Usage: scripts/install-llama-cpp.sh [VENV_DIR]   (default bench-out/llama-cpp-venv, git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-bench-out/llama-cpp-venv}"
VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
PY="${PYTHON:-python3}"
has() { grep -qw "$1" /proc/cpuinfo 2>/dev/null; }
ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_CURL=OFF"
has avx512f && ARGS="$ARGS -DGGML_AVX512=ON"
has avx512_vnni && ARGS="$ARGS -DGGML_AVX512_VNNI=ON"
has avx512_bf16 && ARGS="$ARGS -DGGML_AVX512_BF16=ON"
has avx_vnni && ARGS="$ARGS -DGGML_AVX_VNNI=ON"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
  echo "llama-cpp-python already in $VENV: $("$VENV/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)')"
else
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  started=$(date +%s)
  # --no-cache-dir: a cached wheel may be a build for other flags
  CMAKE_ARGS="$ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    "$VENV/bin/python" -m pip install --no-cache-dir "llama-cpp-python[server]==$VERSION"
  echo "llama-cpp-python $VERSION built and installed into $VENV in $(( $(date +%s) - started )) s"
fi

# llama.cpp's own server (`llama-server`: continuous batching over parallel slots, /infill, /slots,
# /metrics), built from the llama.cpp sources the same llama-cpp-python release vendors, so both
# upstreams run one llama.cpp. Linked statically into $VENV/llama.cpp/llama-server.
SERVER="$VENV/llama.cpp/llama-server"
if [ -x "$SERVER" ] && "$SERVER" --version >/dev/null 2>&1; then
  echo "llama-server already built: $SERVER"
  exit 0
fi
started=$(date +%s)
SRC="$VENV/llama.cpp/src"
rm -rf "$SRC" && mkdir -p "$SRC"
"$VENV/bin/python" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$SRC"
tar xzf "$SRC"/llama_cpp_python-"$VERSION".tar.gz -C "$SRC"
CMAKE=cmake
if ! command -v cmake >/dev/null; then
  "$VENV/bin/python" -m pip install -q cmake
  CMAKE="$VENV/bin/cmake"
fi
LLAMA="$SRC/llama_cpp_python-$VERSION/vendor/llama.cpp"
# shellcheck disable=SC2086  # ARGS is a list of flags
"$CMAKE" -S "$LLAMA" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF $ARGS >"$SRC/cmake.log" 2>&1 \
  || { tail -40 "$SRC/cmake.log"; echo "llama.cpp's cmake configure failed (log: $SRC/cmake.log)"; exit 1; }
"$CMAKE" --build "$SRC/build" --target llama-server -j "${CMAKE_BUILD_PARALLEL_LEVEL:-2}" >"$SRC/build.log" 2>&1 \
  || { tail -40 "$SRC/build.log"; echo "llama-server did not build (log: $SRC/build.log)"; exit 1; }
cp "$SRC/build/bin/llama-server" "$SERVER"
rm -rf "$SRC"
echo "llama-server (llama.cpp from llama-cpp-python $VERSION) built into $SERVER in $(( $(date +%s) - started )) s"
