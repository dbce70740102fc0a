"""Loading the settings: the sources in order, one-line errors, and the paths checked
before ``vend serve`` uses them.

``load_settings`` reads the command-line options, the environment and an optional TOML
file into ``app.settings.Settings`` (the sources' order and each setting's meaning are
there), and turns a validation error into a ``SettingsError`` of one line that names the
field and where its value came from: the option (``--port``), the environment variable
(``VEND_PORT``), or the file and key. ``check_paths`` checks the files and directories
the settings name, mounts aside (a missing or hung mount is served as down, never a
reason to refuse the settings). Nothing here touches a mount.
"""

from __future__ import annotations

import os
import stat
import tomllib
from typing import Any, Final

from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from app.settings import ENV_PREFIX, Settings, SettingsError

COMMAND_LINE_OPTIONS: Final = frozenset({"host", "port", "workers"})
"""The settings ``vend serve`` also takes as options (``--port``)."""


def _describe(
    error: ValidationError, config_file: str | None, file_data: dict[str, Any], overrides: set[str]
) -> str:
    """One line naming the first invalid field and where its value came from.

    Args:
        error: the validation error.
        config_file: the TOML file read, or None.
        file_data: what that file holds (parsed), or {}.
        overrides: the fields given on the command line.

    Returns:
        ``invalid option --port: ...``, ``invalid VEND_PORT: ...``, ``invalid setting
        port in FILE: ...``, or ``invalid setting port: ...`` when no source is known
        (a default, or a check across fields: ``invalid settings: ...``).
    """
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    field = ".".join(loc)
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    message = first["msg"].removeprefix("Value error, ")
    if not field:
        return f"invalid settings: {message}{more}"
    return f"invalid {_source_of(loc, config_file, file_data, overrides)}: {message}{more}"


def _source_of(
    loc: list[str], config_file: str | None, file_data: dict[str, Any], overrides: set[str]
) -> str:
    """Where the value at ``loc`` came from, in the order the sources take precedence."""
    field = ".".join(loc)
    if loc[0] in overrides:
        return f"option --{loc[0]}" if loc[0] in COMMAND_LINE_OPTIONS else f"setting {field}"
    environment = {key.upper() for key in os.environ}
    for depth in range(len(loc), 0, -1):
        variable = ENV_PREFIX + "__".join(loc[:depth]).upper()
        if variable in environment:
            inside = f" ({field})" if depth < len(loc) else ""
            return f"{variable}{inside}"
    if config_file is not None and loc[0] in file_data:
        return f"setting {field} in {config_file}"
    return f"setting {field}"


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    *,
    serving: bool = False,
    **overrides: Any,
) -> Settings:
    """Load settings from the command line, the environment and a TOML file.

    Args:
        config_file: the TOML file; when None, ``VEND_CONFIG`` is used if set.
        serving: also check the paths the settings name (``check_paths``), as ``vend
            serve`` does at start and at every reload.
        **overrides: values given on the command line (None values are ignored).

    Returns:
        The validated settings.

    Raises:
        SettingsError: a file is missing or not TOML, or a value is invalid; the message
            is one line naming the field and where its value came from.
    """
    path = os.fspath(config_file or os.environ.get("VEND_CONFIG") or "") or None
    cls: type[Settings] = Settings
    file_data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as handle:
                file_data = tomllib.load(handle)
        except OSError as exc:
            raise SettingsError(f"config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path}: not valid TOML: {exc}") from None
        config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})
        cls = type("Settings", (Settings,), {"model_config": config})
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = cls(**kwargs)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, path, file_data, set(kwargs))) from None
    if serving:
        check_paths(settings)
    return settings


def check_paths(settings: Settings) -> None:
    """Check the files and directories the settings name, other than mounts.

    ``access_log`` (a file path) must be a regular file vend can append to, or be
    creatable in an existing, writable directory; ``redirect_map`` a readable regular
    file; ``unix_socket`` a path in an existing, writable directory (what is at the path
    is for ``vend serve`` to judge when it binds: a stale socket is replaced, anything
    else refused with exit 3, ``app.server.listen``). Mounts are not checked here: a
    missing or hung mount is served as down (503), never a reason to refuse the settings.

    Args:
        settings: validated settings.

    Raises:
        SettingsError: one line naming the setting, the path and what is wrong.
    """
    if settings.access_log not in ("off", "stdout"):
        _check_file("access_log", settings.access_log, os.W_OK, creatable=True)
    if settings.redirect_map:
        _check_file("redirect_map", settings.redirect_map, os.R_OK, creatable=False)
    if settings.unix_socket:
        _check_directory("unix_socket", settings.unix_socket)


def _check_file(setting: str, path: str, access: int, *, creatable: bool) -> None:
    """Raise ``SettingsError`` naming ``setting`` and ``path`` when ``path`` is unusable.

    Args:
        setting: the setting's name, for the message.
        path: an absolute path.
        access: ``os.R_OK`` or ``os.W_OK``: what vend does with the file.
        creatable: a missing file is fine if its directory exists and is writable.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise SettingsError(f"invalid setting {setting} {path}: {exc.strerror}") from None
    if mode is not None:
        if not stat.S_ISREG(mode):
            what = "a directory, " if stat.S_ISDIR(mode) else ""
            raise SettingsError(f"invalid setting {setting} {path}: {what}not a regular file")
        if not os.access(path, access):
            raise SettingsError(f"invalid setting {setting} {path}: permission denied")
        return
    if not creatable:
        raise SettingsError(f"invalid setting {setting} {path}: no such file")
    _check_directory(setting, path)


def _check_directory(setting: str, path: str) -> None:
    """Raise ``SettingsError`` unless ``path``'s directory exists and vend may create
    files in it (write and search permission)."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise SettingsError(
            f"invalid setting {setting} {path}: directory {directory} does not exist"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise SettingsError(
            f"invalid setting {setting} {path}: directory {directory} is not writable"
        )
