"""Where the server URL and the API token come from: flags, then the environment
(`EDGEFLEET_URL`, `EDGEFLEET_TOKEN`), then the file `edgefleet login` wrote
(`$XDG_CONFIG_HOME/edgefleet/config.json`, else `~/.config/edgefleet/config.json`,
mode 0600 in a 0700 directory)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from . import BAD_INPUT, CliError


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgefleet" / "config.json"


def load_file() -> dict:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}", BAD_INPUT) from None
    return data if isinstance(data, dict) else {}


def save_file(url: str, token: str) -> Path:
    """Write the login atomically, readable by the user only."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".config-")  # created 0600
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"url": url, "token": token}, fh)
        tmp.chmod(0o600)
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def remove_file() -> bool:
    try:
        config_path().unlink()
    except FileNotFoundError:
        return False
    return True


def check_url(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise CliError(f"the server URL must look like https://host[:port], not {url!r}", BAD_INPUT)
    return url.rstrip("/")


@dataclass
class Settings:
    url: str
    token: str | None


def resolve(url_flag: str | None, token_flag: str | None) -> Settings:
    saved = load_file()
    url = url_flag or os.environ.get("EDGEFLEET_URL") or saved.get("url")
    if not url:
        raise CliError(
            "no server: pass --url, set EDGEFLEET_URL or run `edgefleet login`", BAD_INPUT
        )
    url = check_url(url)
    token = token_flag or os.environ.get("EDGEFLEET_TOKEN")
    if not token and saved.get("url") == url:  # a saved token goes only to its own server
        token = saved.get("token")
    return Settings(url, token or None)
