"""One SuperLink connection in Flower's ``$FLWR_HOME/config.toml``, written so it can be repeated.

``flwr`` 1.42 reads its SuperLink connections from ``[superlink.NAME]`` tables in
``$FLWR_HOME/config.toml`` (``~/.flwr`` without ``FLWR_HOME``). Appending a table with ``cat >>``
breaks every connection the second time (a TOML file may not define a table twice); this module
replaces the one named entry and keeps every other key, then swaps the file in atomically (a
temporary file in the same folder, fsynced, ``os.replace``), so an interrupted write leaves the
old file. Imports neither Flower nor torch: ``accute-fl deploy connection`` starts at once.
"""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from schema.errors import InvalidInputError

CONFIG_FILE = "config.toml"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ADDRESS = re.compile(r"(?P<host>\[[0-9A-Fa-f:]+\]|[A-Za-z0-9._-]+):(?P<port>\d{1,5})")


def flwr_home(environ: Mapping[str, str] | None = None) -> Path:
    """Flower's rule (``flwr.supercore.utils.get_flwr_home``): ``$FLWR_HOME``, else ``~/.flwr``."""
    home = (os.environ if environ is None else environ).get("FLWR_HOME")
    return Path(home) if home else Path.home() / ".flwr"


def _check(name: str, address: str, root_certificates: Path | None, insecure: bool) -> None:
    if not _NAME.fullmatch(name):
        raise InvalidInputError(f"connection name '{name}' may use letters, digits, '_' and '-' (at most 64)")
    match = _ADDRESS.fullmatch(address)
    if match is None or not 0 < int(match.group("port")) < 65536:
        raise InvalidInputError(f"address '{address}' is not HOST:PORT (e.g. link.example.com:9093)")
    if insecure and root_certificates is not None:
        raise InvalidInputError("--insecure and --root-certificates exclude each other; pick one")
    if root_certificates is not None and not root_certificates.is_file():
        raise InvalidInputError(f"root certificates file {root_certificates} does not exist")


def read_config(path: Path) -> dict[str, Any]:
    """The config file as a dict ({} when it does not exist); a broken file is refused, not replaced."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path} is not valid TOML ({exc}); fix or move it, then run again") from None


def write_connection(
    name: str,
    address: str,
    *,
    root_certificates: Path | None = None,
    insecure: bool = False,
    make_default: bool = False,
    home: Path | None = None,
) -> Path:
    """Create or replace ``[superlink.NAME]``; make it the default when asked or when none is set.

    Returns the config file's path. Other connections and keys are kept as they were.
    """
    _check(name, address, root_certificates, insecure)
    home = home or flwr_home()
    path = home / CONFIG_FILE
    config = read_config(path)
    superlink = config.setdefault("superlink", {})
    if not isinstance(superlink, dict):
        raise InvalidInputError(f"{path}: 'superlink' is not a table; fix or move the file, then run again")
    entry: dict[str, Any] = {"address": address}
    if root_certificates is not None:
        entry["root-certificates"] = str(root_certificates.resolve())
    if insecure:
        entry["insecure"] = True
    superlink[name] = entry
    if make_default or not isinstance(superlink.get("default"), str):
        superlink["default"] = name
    # ``default`` first, as Flower writes it.
    config["superlink"] = {"default": superlink.pop("default"), **superlink}
    home.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".config-", suffix=".toml", dir=home)
    try:
        with os.fdopen(handle, "wb") as out:
            tomli_w.dump(config, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
