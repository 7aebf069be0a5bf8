"""Shared fixtures: the default model (converted once into TANDEM_HOME), a tiny random-weight
model of the same architecture for fast engine tests, and real servers on real sockets."""

from __future__ import annotations

import atexit
import itertools
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx
import pytest
import uvicorn

from dialog.service import DialogConfig
from scripts.services import Postgres, Redis
from server import models
from server.audit import AuditConfig
from server.engine import EngineConfig
from server.settings import tandem_home
from tests.scripted_engine import ScriptedEngine
from tests.waiting import eventually

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    from server.engine import Engine

# torch, transformers and the app (which holds the engine) are imported by the fixtures that
# need them, so that the tests of the parts that never touch a model (guard, audit, the chat
# store, the language server's pieces) collect and run without loading torch.

ROOT = Path(__file__).resolve().parent.parent

# Every `tandem serve` the tests start (directly, or through the language server's auto-start)
# keeps the eager decode step: compiling takes a minute of CPU that would slow every other test
# on a 2-core machine. The compiled step has its own test (tests/engine/test_engine.py), in-process.
os.environ["TANDEM_COMPILE"] = "0"

# The whole run's TANDEM_HOME is a temporary folder (no test writes into the developer's: auto-start
# locks and logs, keys, stores), sharing only the model cache that `make test` prepared there.
_MODELS = tandem_home() / "models"
_MODELS.mkdir(parents=True, exist_ok=True)
RUN_HOME = Path(tempfile.mkdtemp(prefix="tandem-home-"))
(RUN_HOME / "models").symlink_to(_MODELS, target_is_directory=True)
os.environ["TANDEM_HOME"] = str(RUN_HOME)
atexit.register(shutil.rmtree, RUN_HOME, ignore_errors=True)  # (the link goes, not the cache it points at)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """Debian's PostgreSQL, one cluster for the run in a temporary folder on a loopback port
    (scripts/services.py); each test that needs it makes its own database."""
    with Postgres() as pg:
        yield pg


@pytest.fixture(scope="session")
def redis() -> Iterator[Redis]:
    """Debian's redis-server for the run, on a loopback port (scripts/services.py)."""
    with Redis() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def chat_db(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where a test's chat store lives, once on each engine: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "chat.db"
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.create_database(f"chat_{abs(hash(request.node.nodeid)):x}_{next(_DATABASES)}")


_DATABASES = itertools.count()


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The default model's safetensors cache (converted here on a machine that lacks it)."""
    _, path, _ = models.resolve(None)
    return Path(path)


@pytest.fixture(scope="session")
def tokenizer(default_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(default_model_dir))


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """A random-weight Llama (SmolLM2's architecture) small enough to build in a second."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, **TINY, tie_word_embeddings=True, bos_token_id=1)).eval()


def tiny_qwen2(vocab_size: int) -> Qwen2ForCausalLM:
    """The same tiny shape as a Qwen2 (the family of the R1-distilled reasoning models)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab_size, **TINY)).eval()


TINY: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "eos_token_id": 2,
    "pad_token_id": 2,
}


@pytest.fixture(scope="session")
def tiny_model(tokenizer):  # type: ignore[no-untyped-def]
    return tiny_llama(len(tokenizer))


@pytest.fixture
def engine_factory(tiny_model, tokenizer):  # type: ignore[no-untyped-def]
    """Builds started engines on the tiny model and closes them after the test."""
    from server.engine import Engine

    engines: list[Engine] = []

    def make(**config: object) -> Engine:
        engine = Engine(tiny_model, tokenizer, EngineConfig(**config)).start()  # type: ignore[arg-type]
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def tiny_loaded(model, tokenizer, fim: tuple[str, str, str] | None = None) -> models.LoadedModel:  # type: ignore[no-untyped-def]
    return models.LoadedModel(
        "tiny-llama", model, tokenizer, "none", int(model.get_memory_footprint()), int(model.config.max_position_embeddings), fim, 0.0
    )


class ThreadedServer:
    """The real app under uvicorn on a real loopback socket, in a background thread."""

    audit_dir: Path  # set by the fixtures that start one: where its audit log, chat store and engine are
    dialog_dir: Path
    engine: Any

    def __init__(self, app, port: int) -> None:  # type: ignore[no-untyped-def]
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        eventually(lambda: self.server.started or not self.thread.is_alive(), "the threaded server starting", 60)
        if not self.server.started:
            raise RuntimeError("server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


ADMIN_TOKEN = "test-admin-token-4f1c"


@pytest.fixture
def tiny_server(tiny_model, tokenizer, tmp_path):  # type: ignore[no-untyped-def]
    """Start a server on the tiny model's tokenizer and template with the given settings: `with
    tiny_server(...) as s`. Its engine is scripted (`s.engine`, a ScriptedEngine: protocol tests
    above the engine need exact output, not a model) unless the test asks for the real engine on
    the tiny random-weight model with `engine="tiny"` (and EngineConfig fields), or hands in an
    engine of its own. Its audit log lives in `s.audit_dir` (a fresh directory per server)."""
    count = [0]

    def start(
        api_key: str | None = None,
        fim: tuple[str, str, str] | None = None,
        model=None,
        tok=None,  # type: ignore[no-untyped-def]
        checkpoint_every: int = 256,
        content_days: int = 30,
        dialog: dict | None = None,
        dialog_dir: Path | None = None,
        audit_max_queue: int = 4096,
        audit_database_url: str | None = None,
        engine: Any = "scripted",
        **engine_config: Any,
    ) -> ThreadedServer:
        from server.app import ServerConfig, create_app

        count[0] += 1
        loaded = tiny_loaded(model or tiny_model, tok or tokenizer, fim)
        audit_dir = tmp_path / f"audit-{count[0]}"
        dialog_dir = dialog_dir or tmp_path / f"dialog-{count[0]}"
        config = ServerConfig(
            api_key=api_key,
            engine=EngineConfig(**engine_config),
            audit=AuditConfig(
                audit_dir,
                checkpoint_every=checkpoint_every,
                content_days=content_days,
                max_queue=audit_max_queue,
                database_url=audit_database_url,
            ),
            admin_token=ADMIN_TOKEN,
            dialog=DialogConfig(directory=dialog_dir, **(dialog or {})),  # type: ignore[arg-type]
        )
        if engine == "tiny":
            server = ThreadedServer(create_app(config, loader=lambda: loaded), free_port())
        else:
            assert not engine_config and model is None, "a model and EngineConfig fields are for the real engine (engine='tiny')"
            if engine == "scripted":
                engine = ScriptedEngine(context_length=loaded.context_length)
            server = ThreadedServer(create_app(config, loader=lambda: loaded, engine_factory=lambda *_: engine), free_port())
            server.engine = engine
        server.audit_dir, server.dialog_dir = audit_dir, dialog_dir
        return server

    return start


def metric(url: str, name: str, labels: str = "") -> float:
    """The sum of a metric's samples on a server's /metrics whose labels contain `labels`
    (0 when none: a labelled counter appears only once it is first counted)."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if (line.startswith(name + " ") or line.startswith(name + "{")) and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float, name: str) -> None:
    """Until `url`/healthz answers 200; a process that exits or a timeout fails with its log's tail."""

    def up() -> bool:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        return proc.poll() is not None  # it exited: stop waiting

    try:
        eventually(up, f"{name} answering /healthz", timeout)
        if proc.poll() is None:
            return
    except AssertionError:
        pass
    proc.kill()
    raise RuntimeError(f"{name} did not come up:\n{log_path.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it has not exited 30 s later."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


class DefaultServer(NamedTuple):
    url: str
    guard_log: Path  # off-machine connection attempts (must stay empty)
    audit_dir: Path
    log_path: Path  # everything the server printed
    admin_token: str
    dialog_dir: Path


@pytest.fixture(scope="session")
def default_server(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DefaultServer]:
    """`tandem serve` on the default model, in its own process, with every off-machine
    connection refused and recorded."""
    port = free_port()
    guard_log = tmp_path_factory.mktemp("netguard") / "attempts.log"
    guard_log.touch()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'netguard'}{os.pathsep}{ROOT}", "TANDEM_NETGUARD_LOG": str(guard_log)}
    env.pop("HF_HUB_OFFLINE", None)  # the server must stay offline by itself
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    audit_dir = tmp_path_factory.mktemp("audit")
    dialog_dir = tmp_path_factory.mktemp("dialog")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--port",
                str(port),
                "--max-batch-size",
                "32",
                "--audit-dir",
                str(audit_dir),
                "--admin-token",
                ADMIN_TOKEN,
                "--audit-checkpoint-every",
                "50",
                "--dialog-dir",
                str(dialog_dir),
                "--log-level",
                "debug",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, log_path, 300, "tandem serve")
    try:
        yield DefaultServer(url, guard_log, audit_dir, log_path, ADMIN_TOKEN, dialog_dir)
    finally:
        stop_process(proc)


ARTIFACTS = Path(os.environ.get("TANDEM_TEST_ARTIFACTS", ROOT / "test-artifacts"))  # screenshots kept after the run (git-ignored)


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Path:
    """Where a browser test saves its screenshots: test-artifacts/<module>/<test>/, emptied first."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
    folder = ARTIFACTS / request.node.module.__name__.rsplit(".", 1)[-1] / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


CHROMIUM = os.environ.get("TANDEM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    """Debian's headless Chromium driven by Playwright (installed by `make test`). Module-scoped:
    Playwright's sync API keeps an event loop running in this thread while it is open, which
    would break the asyncio tests of other modules."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
