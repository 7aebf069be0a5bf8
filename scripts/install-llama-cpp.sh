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
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
  echo "llama-cpp-python already in $VENV: $("$VENV/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)')"
  exit 0
fi
has() { grep -qw "$1" /proc/cpuinfo 2>/dev/null; }
ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_CURL=OFF"
has avx512f && ARGS="$ARGS -DGGML_AVX512=ON"
has avx512_vnni && ARGS="$ARGS -DGGML_AVX512_VNNI=ON"
has avx512_bf16 && ARGS="$ARGS -DGGML_AVX512_BF16=ON"
has avx_vnni && ARGS="$ARGS -DGGML_AVX_VNNI=ON"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
started=$(date +%s)
# --no-cache-dir: a cached wheel may be a build for other flags
CMAKE_ARGS="$ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
  "$VENV/bin/python" -m pip install --no-cache-dir "llama-cpp-python[server]==$VERSION"
echo "llama-cpp-python $VERSION built and installed into $VENV in $(( $(date +%s) - started )) s"
