"""`tandem serve --config FILE` (or TANDEM_CONFIG): serve's options from a TOML file, under the
environment and the command line; a key serve does not have, or a value of the wrong kind, is an
error that names it, never a silent default."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.cli import build_parser, parse, subcommand
from server.settings_file import SettingsError, read
from tests.conftest import ROOT

SETTINGS = """\
database-url = "postgresql+asyncpg://tandem@db/chat"
redis_url = "redis://cache:6379/0"
upstream = ["http://10.0.0.5:8000", "http://10.0.0.6:8000"]
port = 9090
drain-seconds = 12.5
no-demo-site = true
quant = "none"
visitor-messages-per-minute = 5
"""


def settings_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tandem.toml"
    path.write_text(text)
    return path


def test_the_files_values_become_serves_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TANDEM_DATABASE_URL", raising=False)
    monkeypatch.delenv("TANDEM_REDIS_URL", raising=False)
    args = parse(["serve", "--config", str(settings_file(tmp_path, SETTINGS))])
    assert args.database_url == "postgresql+asyncpg://tandem@db/chat" and args.redis_url == "redis://cache:6379/0"
    assert args.upstream == ["http://10.0.0.5:8000", "http://10.0.0.6:8000"]
    assert (args.port, args.drain_seconds, args.no_demo_site, args.quant, args.visitor_messages_per_minute) == (9090, 12.5, True, "none", 5)
    assert args.host == "127.0.0.1"  # what the file leaves out keeps its default


def test_the_command_line_wins_over_the_environment_which_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = settings_file(tmp_path, SETTINGS)
    monkeypatch.setenv("TANDEM_REDIS_URL", "redis://from-the-environment/0")
    monkeypatch.setenv("TANDEM_CONFIG", str(path))  # (the file named by the environment)
    args = parse(["serve", "--port", "7070", "--database-url", "postgresql+asyncpg://from-the-command-line/chat"])
    assert args.port == 7070 and args.database_url == "postgresql+asyncpg://from-the-command-line/chat"
    assert args.redis_url is None  # left to the environment, which serve reads next
    assert args.drain_seconds == 12.5


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("databse-url = 'postgresql://x'", "'databse-url'"),
        ("port = 'eighty'", "port"),
        ("port = [1, 2]", "port"),
        ("quant = 'q9'", "quant"),
        ("no-demo-site = 'yes'", "no-demo-site"),
        ("upstream = [1]", "upstream"),
        ("port = 80\nport = 81", "not valid TOML"),
        ("[serve]\nport = 80", "'serve'"),
    ],
)
def test_a_wrong_key_or_value_is_an_error_naming_it(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(SettingsError, match=named.replace("[", r"\[")):
        parse(["serve", "--config", str(settings_file(tmp_path, text))])


def test_a_file_that_is_not_text_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "tandem.toml"
    path.write_bytes(b"port = 80\n\xff\xfe")
    with pytest.raises(SettingsError, match="not UTF-8"):
        parse(["serve", "--config", str(path)])


def test_serve_refuses_to_start_on_a_bad_file_and_says_why(tmp_path: Path) -> None:
    path = settings_file(tmp_path, "redis = 'redis://cache'\n")
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--config", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "no setting 'redis'" in done.stderr and "redis-url" in done.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--config", str(tmp_path / "nowhere.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "cannot read the settings file" in missing.stderr


def serve_parser() -> argparse.ArgumentParser:
    return subcommand(build_parser(), "serve")


OPTIONS = sorted(a.option_strings[0].removeprefix("--") for a in serve_parser()._actions if a.option_strings and a.dest != "help")
TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)
VALUES = st.one_of(TEXT, st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.lists(TEXT, max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.one_of(st.sampled_from(OPTIONS), TEXT), VALUES, max_size=6), st.sampled_from(["", "garbage", "= 1\n"]))
def test_any_file_is_read_or_refused_with_a_settings_error(table: dict[str, object], tail: str) -> None:
    text = "".join(f"{json.dumps(key)} = {json.dumps(value)}\n" for key, value in table.items()) + tail
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.toml"
        path.write_text(text, encoding="utf-8")
        try:
            defaults = read(path, serve_parser())
        except SettingsError:
            return
    assert set(defaults) <= {key.replace("-", "_") for key in OPTIONS}
