"""The ``vend`` command: ``serve``, ``check`` and ``locate``.

This is the only module that exits the process. Exit statuses: 0 success; 1 a mount is
unusable (``check``) or no mount holds the name (``locate``); 2 invalid settings, invalid
usage, or a name the whitelist refuses (``locate``); 3 the server could not start.
Options left out on the command line fall through to the settings (environment, then
the TOML file, then the defaults), so each default is written once, in ``app.settings``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from urllib.parse import quote

import click

from app.http.names import NameRefused, compile_pattern, is_allowed_name, parse_request_path
from app.ops.check import check_mounts, locate_name
from app.settings import SAMPLE_MOUNTS_DIR, Settings, SettingsError, load_settings

_config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML settings file (default: $VEND_CONFIG, if set).",
)


def _load(config_file: str | None, **overrides: object) -> Settings:
    try:
        return load_settings(config_file, **overrides)
    except SettingsError as exc:
        click.echo(f"vend: {exc}", err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """vend: serve old links from the first of several mounts that holds them."""


@main.command()
@_config_option
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="TCP port (default 8000).")
@click.option("--workers", type=int, default=None, help="Worker processes (default 1).")
def serve(config_file: str | None, host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the configured mounts over HTTP until SIGINT or SIGTERM."""
    from app.server.serve import serve as run_server

    overrides = {
        k: v for k, v in {"host": host, "port": port, "workers": workers}.items() if v is not None
    }
    settings = _load(config_file, **overrides)
    host_part = f"[{settings.host}]" if ":" in settings.host else settings.host
    base = f"http://{host_part}:{settings.port}"
    names = ", ".join(m.name for m in settings.mounts)
    where = f"unix:{settings.unix_socket}" if settings.unix_socket else f"{base}/"
    click.echo(f"vend: serving mounts {names} on {where}", err=True)
    if not settings.unix_socket and all(
        m.path.is_relative_to(SAMPLE_MOUNTS_DIR) for m in settings.mounts
    ):
        click.echo(f"vend: sample content, try {base}/about.html", err=True)
    sys.exit(run_server(settings, config_file or os.environ.get("VEND_CONFIG"), overrides))


@main.command()
@_config_option
def check(config_file: str | None) -> None:
    """Probe each mount: exists, directory, readable, filesystem type."""
    settings = _load(config_file)
    reports = asyncio.run(check_mounts(settings))
    for index, r in enumerate(reports, 1):
        verdict = "ok" if r.usable else f"UNUSABLE ({r.error})"
        click.echo(
            f"{index}. {r.name}: {r.path}\n"
            f"   exists={_yn(r.exists)} directory={_yn(r.is_directory)} readable={_yn(r.readable)} "
            f"mount-point={_yn(r.is_mount_point)} filesystem={r.fs_type or '?'}: {verdict}"
        )
    sys.exit(0 if all(r.usable for r in reports) else 1)


@main.command()
@_config_option
@click.argument("name")
def locate(config_file: str | None, name: str) -> None:
    """Say which mount serves NAME (e.g. docs/manual.pdf) and which copies it shadows."""
    settings = _load(config_file)
    raw = "/" + quote(name.removeprefix("/"), safe="/")
    try:
        parsed = parse_request_path(raw.encode("ascii"))
    except NameRefused as refusal:
        click.echo(f"vend: {name!r} is refused: {refusal}", err=True)
        sys.exit(2)
    if parsed.wants_index or not is_allowed_name(
        parsed.name, compile_pattern(settings.name_pattern)
    ):
        click.echo(f"vend: {name!r} is refused by name_pattern {settings.name_pattern!r}", err=True)
        sys.exit(2)
    copies = asyncio.run(locate_name(settings, parsed.name))
    serving = next((c for c in copies if c.state == "file"), None)
    for copy in copies:
        if copy.state == "file":
            role = "serves" if copy is serving else "shadowed"
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime((copy.mtime_ns or 0) / 1e9))
            click.echo(f"{copy.mount}: {role} ({copy.size_bytes} bytes, modified {stamp} UTC)")
        else:
            click.echo(f"{copy.mount}: {copy.state}")
    sys.exit(0 if serving else 1)


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


if __name__ == "__main__":
    main()
