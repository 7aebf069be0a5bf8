"""Real serving engines nobody here wrote, started as an operator would: llama.cpp's server through
llama-cpp-python (`python -m llama_cpp.server`) and llama.cpp's own `llama-server`, both built once
by scripts/install-llama-cpp.sh into the cache folder `make test` names (TANDEM_LLAMA_SERVER_VENV),
on the default model's own GGUF file; and `tandem serve` itself, in front of them or behind
another Tandem."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from server.models import DEFAULT_MODEL_NAME, default_gguf_path
from tests.conftest import ADMIN_TOKEN, ROOT, free_port, stop_process
from tests.waiting import eventually

LLAMA_VERSION = "0.3.36"


def _llama_venv() -> Path:
    default = Path.home() / ".cache" / "tandem" / f"llama-cpp-server-{LLAMA_VERSION}"
    return Path(os.environ.get("TANDEM_LLAMA_SERVER_VENV") or default)


def llama_server_python() -> Path:
    """The llama-cpp-python venv's interpreter; a missing one fails the test with how to build it."""
    python = _llama_venv() / "bin" / "python"
    if not python.exists():
        pytest.fail(f"llama-cpp-python's server is not built in {_llama_venv()}: `make llama-server` (part of `make test`) builds it, once")
    return python


def llama_cpp_binary() -> Path:
    """llama.cpp's own `llama-server`; a missing one fails the test with how to build it."""
    binary = _llama_venv() / "llama.cpp" / "llama-server"
    if not binary.exists():
        pytest.fail(f"llama.cpp's llama-server is not built at {binary}: `make llama-server` (part of `make test`) builds it, once")
    return binary


class LlamaServer:
    """One llama.cpp server on the default model, on a fixed port so that it can be killed and
    started again where the pool expects it."""

    def __init__(self, python: Path, log_dir: Path, name: str) -> None:
        self.python, self.name = python, name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"llama-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LlamaServer:
        args = [
            str(self.python), "-m", "llama_cpp.server",
            "--model", str(default_gguf_path()), "--model_alias", DEFAULT_MODEL_NAME,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", "2048", "--n_threads", "1", "--n_threads_batch", "1",
            "--interrupt_requests", "False",  # its default cuts a running answer when another request arrives
            "--verbose", "False",
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        eventually(self._answers, f"llama.cpp server {self.name} answering", 120)
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"llama.cpp server {self.name} exited:\n{self.log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: no goodbye, connections cut mid-answer."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc)


class LlamaCppServer(LlamaServer):
    """llama.cpp's own server: continuous batching over `parallel` slots, /infill, /slots."""

    def __init__(
        self, binary: Path, log_dir: Path, name: str, parallel: int = 4, gguf: Path | None = None, alias: str = DEFAULT_MODEL_NAME
    ) -> None:
        super().__init__(binary, log_dir, name)
        self.parallel, self.gguf, self.alias = parallel, gguf or default_gguf_path(), alias

    def start(self) -> LlamaServer:
        args = [
            str(self.python), "--model", str(self.gguf), "--alias", self.alias,
            "--host", "127.0.0.1", "--port", str(self.port), "--ctx-size", str(1024 * self.parallel),
            "--parallel", str(self.parallel), "--threads", "1", "--threads-batch", "1", "--no-webui",
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        eventually(self._answers, f"llama-server {self.name} answering", 120)
        return self

    def slots(self) -> list[dict[str, object]]:
        return list(httpx.get(f"{self.url}/slots", timeout=5).json())


class TandemProcess:
    """`tandem serve` in its own process (as `make run` starts it), with the given arguments."""

    def __init__(self, log_dir: Path, name: str, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.audit_dir = log_dir / f"{name}-audit"
        self.dialog_dir = log_dir / f"{name}-dialog"
        self.log = log_dir / f"{name}.log"
        command = [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port), "--admin-token", ADMIN_TOKEN]
        command += ["--audit-dir", str(self.audit_dir), "--dialog-dir", str(self.dialog_dir), *args]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def wait_ready(self, timeout: float = 300) -> TandemProcess:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tandem serve exited:\n{self.log.read_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        eventually(ready, "tandem serve ready", timeout)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
