"""Settings: what an operator configures, validated once at start.

Sources, highest priority first: command-line options (``vend serve --port``), the
environment (prefix ``VEND_``, nested fields with ``__``, lists and tables as JSON), then
an optional TOML file (``--config FILE`` or ``VEND_CONFIG``). Relative mount paths in the
file are taken from the file's directory. ``app.settings_load.load_settings`` reads them
and turns anything invalid into a ``SettingsError`` of one line naming where the value
came from: the command-line option (``--port``), the environment variable
(``VEND_MOUNTS``, with the shape it must have) or the file and key; the CLI prints it and
exits 2. ``app.settings_load.check_paths`` checks the other paths the settings name
(``access_log``, ``redirect_map``, ``unix_socket``) before ``vend serve`` uses them.

This module touches no mount (a hung NFS server must not hang ``vend check`` or start-up
while the settings are read).
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from app.http.names import compile_pattern

SAMPLE_MOUNTS_DIR: Final = Path(__file__).resolve().parent.parent / "examples" / "mounts"
"""The sample content shipped in the repository, served when no mount is configured."""


UNIX_PEER: Final = "unix"
"""The ``trusted_proxies`` entry that stands for a peer on vend's own Unix socket."""
UNIX_PATH_MAX_BYTES: Final = 107
"""Longest Unix socket path Linux accepts (``sun_path`` holds 108 bytes with its NUL)."""
MOUNT_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""What a mount name may be: 1-64 letters, digits, '_', '.', '-' (not first)."""
GENERIC_DIRECTORY: Final = "content"
"""A mount directory with this name is named after its parent (``/server1/content``)."""
ENV_PREFIX: Final = "VEND_"
"""The prefix of every settings environment variable."""
ENV_SHAPES: Final = {
    "mounts": """a JSON list, e.g. VEND_MOUNTS='["/srv/content"]'""",
    "trusted_proxies": """a JSON list, e.g. VEND_TRUSTED_PROXIES='["127.0.0.1", "10.0.0.0/8"]'""",
    "index_names": """a JSON list, e.g. VEND_INDEX_NAMES='["index.html"]'""",
    "mime_types": """a JSON object, e.g. VEND_MIME_TYPES='{".webp": "image/webp"}'""",
    "timeouts": "a JSON object, or one field at a time, e.g. VEND_TIMEOUTS__SEND_S=30",
    "cache": "a JSON object, or one field at a time, e.g. VEND_CACHE__TTL_S=1",
}
"""What each environment variable holding a list or a table must look like."""


class SettingsError(Exception):
    """Settings are invalid; the message is one line that names the field and its source."""


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source, whose parse errors name the variable."""

    def prepare_field_value(
        self, field_name: str, field: FieldInfo, value: Any, value_is_complex: bool
    ) -> Any:
        """Decode one field's value (JSON for lists and tables), as the base class does.

        Raises:
            SettingsError: the value is not what the variable must hold (not JSON, for
                example); the message names the variable and the shape it must have.
        """
        try:
            return super().prepare_field_value(field_name, field, value, value_is_complex)
        except ValueError:
            variable = f"{ENV_PREFIX}{field_name.upper()}"
            shape = ENV_SHAPES.get(field_name, "JSON")
            raise SettingsError(f"invalid {variable}: it must be {shape}") from None


class _TomlFile(TomlConfigSettingsSource):
    """pydantic-settings' TOML source; relative mount paths are taken from the file's
    directory, so a file works from any working directory."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        data = super()._read_file(file_path)
        base = Path(os.fspath(file_path)).parent
        mounts = data.get("mounts")
        if isinstance(mounts, list):
            data["mounts"] = [_from_directory(base, entry) for entry in mounts]
        return data


def _from_directory(base: Path, entry: Any) -> Any:
    """A mount entry (a path, or a table with ``path``) with a relative path joined to
    ``base`` (an absolute or ``~`` path unchanged); anything else unchanged (validation
    reports it)."""
    path = entry.get("path") if isinstance(entry, dict) else entry
    if not isinstance(path, str) or path.startswith("~"):
        return entry
    joined = str(base / path)
    return {**entry, "path": joined} if isinstance(entry, dict) else joined


class MountSettings(BaseModel):
    """One mount: a directory whose tree is served, typically an NFS export's mount point.

    Attributes:
        path: the directory (absolute; a relative one is taken from the working directory).
        name: the name operators see in logs, health and metrics (never a path). Defaults
            to the directory's name, or its parent's for a directory called ``content``
            (``/server1/content`` is ``server1``): it depends on the mount's own path
            only, so adding or removing other mounts never renames it.
        sendfile: send bodies with sendfile(2); off for filesystems that serve it badly.
        require_mountpoint: refuse to serve unless ``path`` is really a mount point
            (production NFS mounts), not the empty directory beneath an unmounted export.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    name: str = ""
    sendfile: bool = True
    require_mountpoint: bool = False

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return Path(os.path.abspath(value.expanduser()))

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if value and not MOUNT_NAME.fullmatch(value):
            raise ValueError("a mount name is 1-64 letters, digits, '_', '.', '-'")
        return value


def _coerce_mount(value: Any) -> Any:
    """Accept a bare path string as shorthand for ``{path = "..."}``."""
    if isinstance(value, (str, Path)):
        return {"path": value}
    return value


class Timeouts(BaseModel):
    """Time limits, in seconds.

    Attributes:
        fs_op_s: one filesystem operation (stat, open, read, one sendfile call) on a mount.
        send_s: a client that accepts no body bytes for this long is disconnected.
        keep_alive_s: an idle keep-alive connection is closed after this long.
        graceful_shutdown_s: on SIGTERM, in-flight requests get this long to finish.
        probe_interval_s: how often each mount's root is probed (health), in seconds.
        drain_s: on SIGTERM, keep serving this long with health 503 and
            ``Connection: close`` before shutting down, in seconds, so a load balancer
            (Apache's mod_proxy_hcheck) takes vend out first; 0: no drain.
        request_head_s: a request head must be complete this long after its first
            byte, and a new connection must send its first one within this long, in
            seconds; otherwise the connection is closed (Apache mod_reqtimeout's
            ``header=20``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    fs_op_s: float = Field(default=5.0, gt=0, le=3600)
    send_s: float = Field(default=60.0, gt=0, le=3600)
    keep_alive_s: float = Field(default=5.0, gt=0, le=3600)
    graceful_shutdown_s: float = Field(default=10.0, gt=0, le=3600)
    probe_interval_s: float = Field(default=2.0, gt=0, le=3600)
    drain_s: float = Field(default=0.0, ge=0, le=600)
    request_head_s: float = Field(default=20.0, gt=0, le=3600)


class LimitSettings(BaseModel):
    """Resource limits.

    Attributes:
        max_connections: most client connections open at once, per worker process (as
            nginx's ``worker_connections``); past it a new connection is closed at once.
            None: worked out from the descriptor limit at start
            (``app.server.limits.default_max_connections``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_connections: int | None = Field(default=None, ge=1, le=1_000_000)


class CacheSettings(BaseModel):
    """The name cache of the hot path (see ``app.federation.cache`` for the staleness bound).

    Attributes:
        ttl_s: how long a found name is served without looking at the mounts, in
            seconds; at most NFS's minimum attribute cache time (3 s); 0 turns the cache off.
        miss_ttl_s: how long "no mount has it" is remembered, in seconds.
        max_entries: most names remembered.
        max_bytes: most bytes of small files held in memory, in bytes.
        max_file_bytes: largest file held in memory, in bytes; larger ones use sendfile.
        remember_names: how many names the memory of where names live keeps for sure
            (``app.federation.memory``: a table of 16 bytes a name, sized at start).
        remember_s: how long it keeps a name after it was last served, in seconds.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttl_s: float = Field(default=2.0, ge=0, le=3)
    miss_ttl_s: float = Field(default=1.0, ge=0, le=3)
    max_entries: int = Field(default=50_000, ge=1)
    max_bytes: int = Field(default=32 * 1024 * 1024, ge=0)
    max_file_bytes: int = Field(default=256 * 1024, ge=0)
    remember_names: int = Field(default=500_000, ge=1, le=5_000_000)
    remember_s: float = Field(default=3600.0, gt=0, le=7 * 86400)


class Settings(BaseSettings):
    """All of vend's settings (see docs/settings.md for each env var).

    Raises:
        pydantic.ValidationError: on construction with invalid values; use
            ``app.settings_load.load_settings`` to get a one-line ``SettingsError`` instead.
    """

    model_config = SettingsConfigDict(
        env_prefix="VEND_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    # Not set: the sample mounts. Set to an empty list: an error, never the samples.
    mounts: list[Annotated[MountSettings, BeforeValidator(_coerce_mount)]] = Field(
        default_factory=list
    )
    name_pattern: str = "default"
    # Old links point at content that rarely changes, but a replaced file should reach
    # browsers within minutes; after that they revalidate cheaply with the strong ETag.
    cache_control: str = "public, max-age=300"
    mime_types: dict[str, str] = Field(default_factory=dict)
    index_names: list[str] = Field(default_factory=list)
    access_log: str = "off"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    # Not empty: vend listens on this Unix-domain socket instead of host:port.
    unix_socket: str = ""
    # "unix" stands for a peer on vend's own Unix socket (such a peer has no address).
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.1", "::1", "unix"])
    threads_per_mount: int = Field(default=8, ge=1, le=256)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # A name last served by a mount that is now down may have an older copy on a later
    # mount: "unavailable" answers 503 for it rather than serve the wrong version.
    down_mount_policy: Literal["unavailable", "skip"] = "unavailable"
    # Old names of renamed content (``old new`` lines), answered 301; "" for none.
    redirect_map: str = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Command line, then environment, then the TOML file (if any); no dotenv."""
        sources: tuple[PydanticBaseSettingsSource, ...] = (
            init_settings,
            _Environment(settings_cls),
        )
        if settings_cls.model_config.get("toml_file"):
            sources += (_TomlFile(settings_cls),)
        return sources

    @field_validator("name_pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            compile_pattern(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @field_validator("index_names")
    @classmethod
    def _plain_files(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name or "/" in name or name.startswith(".") or "\x00" in name:
                raise ValueError("index names are plain file names, like index.html")
        return value

    @field_validator("mime_types")
    @classmethod
    def _extensions(cls, value: dict[str, str]) -> dict[str, str]:
        for ext, media_type in value.items():
            if not re.fullmatch(r"\.[A-Za-z0-9_+-]+", ext):
                raise ValueError(f"{ext!r}: keys are extensions such as '.webp'")
            if not re.fullmatch(r"[\w.+-]+/[\w.+-]+(;.*)?", media_type):
                raise ValueError(f"{media_type!r} is not a media type")
        return value

    @field_validator("access_log")
    @classmethod
    def _log_target(cls, value: str) -> str:
        if value not in ("off", "stdout") and not os.path.isabs(value):
            raise ValueError("'off', 'stdout', or an absolute file path")
        return value

    @field_validator("redirect_map")
    @classmethod
    def _map_path(cls, value: str) -> str:
        if value and not os.path.isabs(value):
            raise ValueError("an absolute file path, or '' for none")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry in ("*", UNIX_PEER):
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address, a network, {UNIX_PEER!r} or '*'"
                ) from None
        return value

    @field_validator("unix_socket")
    @classmethod
    def _socket_path(cls, value: str) -> str:
        if not value:
            return value
        if not os.path.isabs(value):
            raise ValueError("an absolute path, such as /run/vend/vend.sock")
        if len(os.fsencode(value)) > UNIX_PATH_MAX_BYTES:
            raise ValueError(f"at most {UNIX_PATH_MAX_BYTES} bytes (the kernel's sun_path)")
        return value

    @field_validator("cache_control")
    @classmethod
    def _header_safe(cls, value: str) -> str:
        if not re.fullmatch(r"[\x20-\x7e]*", value):
            raise ValueError("printable ASCII only")
        return value

    @model_validator(mode="after")
    def _name_mounts(self) -> Settings:
        if "mounts" in self.model_fields_set and not self.mounts:
            raise ValueError("mounts is empty: name at least one directory")
        mounts = self.mounts or [
            MountSettings(path=SAMPLE_MOUNTS_DIR / "server1", name="server1"),
            MountSettings(path=SAMPLE_MOUNTS_DIR / "server2", name="server2"),
        ]
        places: dict[Path, int] = {}
        for number, mount in enumerate(mounts, 1):
            first = places.setdefault(mount.path, number)
            if first != number:
                raise ValueError(
                    f"mount {mount.path} is listed twice (mounts {first} and {number}"
                    " are the same directory): remove one"
                )
        named = [m if m.name else m.model_copy(update={"name": default_name(m)}) for m in mounts]
        seen: dict[str, MountSettings] = {}
        for mount in named:
            other = seen.setdefault(mount.name, mount)
            if other is not mount:
                raise ValueError(
                    f"mount names must be unique: {other.path} and {mount.path} are both"
                    f" named {mount.name!r}; set name for one of them"
                )
        object.__setattr__(self, "mounts", named)
        return self


def default_name(mount: MountSettings) -> str:
    """A mount's default name, from its own path only (see ``MountSettings.name``).

    Raises:
        ValueError: the directory's name is not a valid mount name (set ``name``).
    """
    path = mount.path
    name = path.parent.name if path.name == GENERIC_DIRECTORY and path.parent.name else path.name
    if not MOUNT_NAME.fullmatch(name):
        raise ValueError(f"mount {path} has no usable default name: set its name")
    return name
