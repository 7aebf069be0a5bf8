"""`tandem serve --config FILE` (or TANDEM_CONFIG): the serve options in a TOML file, for an
operator who deploys the same settings to every replica. Keys are the options' names
(`database-url = "postgresql+asyncpg://…"`, `upstream = ["http://…"]`); a key the command does
not have, or a value of the wrong kind, stops the server with an error naming it. The command
line wins over the environment, which wins over the file, which wins over the defaults."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from .settings import set_in_environment


class SettingsError(ValueError):
    pass


def _value(action: argparse.Action, key: str, value: Any) -> Any:
    """The file's value as the command line would have given it."""
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise SettingsError(f"{key} is true or false, not {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise SettingsError(f"{key} is a list of strings, not {value!r}")
        return values
    if isinstance(value, (dict, list, bool)):
        raise SettingsError(f"{key} is one value, not {value!r}")
    try:
        converted = action.type(str(value)) if callable(action.type) else str(value)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{key} = {value!r}: {exc}") from None
    if action.choices is not None and converted not in action.choices:
        raise SettingsError(f"{key} is one of {', '.join(map(str, action.choices))}, not {value!r}")
    return converted


def read(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The defaults the file sets for `parser`'s options, less those the environment sets."""
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"cannot read the settings file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path} is not valid TOML: {exc}") from None
    options = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")}
    defaults: dict[str, Any] = {}
    for key, value in table.items():
        dest = key.replace("-", "_")
        if dest not in options:
            known = ", ".join(sorted(d.replace("_", "-") for d in options))
            raise SettingsError(f"{path}: no setting {key!r} (the settings are: {known})")
        if set_in_environment(dest):
            continue  # the environment wins over the file
        defaults[dest] = _value(options[dest], key, value)
    return defaults
