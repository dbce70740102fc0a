"""The ``vend`` command: ``serve``, ``check``, ``locate``, ``verify`` and ``shadows``.

This is the only module that exits the process. Exit statuses: 0 success; 1 a mount is
unusable (``check``) or no mount holds the name (``locate``); 2 invalid settings (a file
or directory a setting names included, for ``serve``), invalid usage, or a name the
whitelist refuses (``locate``); 3 the server could not start (an address it cannot
listen on). Each error is one ``vend: ...`` line on stderr, never a traceback.
Options left out on the command line fall through to the settings (environment, then
the TOML file, then the defaults), so each default is written once, in ``app.settings``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
import os
import signal
import ssl
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote

import click

from app import __version__
from app.federation.redirects import RedirectMapError
from app.http.names import NameRefused, compile_pattern, is_allowed_name, parse_request_path
from app.ops.check import check_mounts, check_redirect_map, locate_name
from app.ops.shadows import Shadow, shadows_of
from app.ops.sources import OldLinks, read_source
from app.ops.suggest import MissingNames, write_suggestions
from app.ops.verify import Sink, Tally, UserError, switch_user, verify_offline
from app.settings import SAMPLE_MOUNTS_DIR, Settings, SettingsError
from app.settings_load import load_settings

if TYPE_CHECKING:
    from app.ops.report import ReportFormat

# httpx (for ``verify --url``) and tqdm are imported by the commands that use them:
# every ``vend serve`` worker would otherwise hold them, about 4 MiB.

_config_option = click.option(
    "--config",
    "config_file",
    default=None,  # checked by load_settings, which says what is wrong in one line
    help="TOML settings file (default: $VEND_CONFIG, if set).",
)


def _load(config_file: str | None, *, serving: bool = False, **overrides: object) -> Settings:
    try:
        return load_settings(config_file, serving=serving, **overrides)
    except SettingsError as exc:
        click.echo(f"vend: {exc}", err=True)
        sys.exit(2)


class _OneLineErrors(click.Group):
    """click's command group, whose usage errors are one ``vend: ...`` line (exit 2)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Run the command as ``click.Group.main`` does, with one-line usage errors.

        Returns:
            click's exit status after ``--help`` or ``--version`` (0); every command
            exits by itself.

        Raises:
            SystemExit: 2 with one line on stderr for a usage error (an option that
                does not exist, a value of the wrong type); 1 when interrupted.
        """
        try:
            return super().main(*args, **{**kwargs, "standalone_mode": False})
        except click.exceptions.NoArgsIsHelpError as exc:  # plain ``vend``: the help
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            click.echo(f"vend: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "-V", "--version", prog_name="vend", message="%(prog)s %(version)s"
)
def main() -> None:
    """vend: serve old links from the first of several mounts that holds them."""


@main.command()
@_config_option
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="TCP port (default 8000).")
@click.option("--workers", type=int, default=None, help="Worker processes (default 1).")
def serve(config_file: str | None, host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the configured mounts over HTTP until SIGINT or SIGTERM."""
    # SIGHUP reloads once the server runs; until then it must not end the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from app.logs import log_config
    from app.server.listen import ListenError
    from app.server.serve import serve as run_server

    overrides = {
        k: v for k, v in {"host": host, "port": port, "workers": workers}.items() if v is not None
    }
    settings = _load(config_file, serving=True, **overrides)
    logging.config.dictConfig(log_config(settings.log_level))
    log = logging.getLogger("vend.serve")
    try:
        asyncio.run(check_redirect_map(settings))
    except RedirectMapError as exc:
        _fail(str(exc))
    host_part = f"[{settings.host}]" if ":" in settings.host else settings.host
    base = f"http://{host_part}:{settings.port}"

    def announce() -> None:
        names = ", ".join(m.name for m in settings.mounts)
        where = f"unix:{settings.unix_socket}" if settings.unix_socket else f"{base}/"
        log.info("vend %s serving mounts %s on %s", __version__, names, where)
        if not settings.unix_socket and all(
            m.path.is_relative_to(SAMPLE_MOUNTS_DIR) for m in settings.mounts
        ):
            log.info("sample content, try %s/about.html", base)

    # uvicorn raises the stop signal again once it has shut down cleanly; without these
    # handlers SIGTERM would then kill vend (status 143) and SIGINT end in click's
    # "Aborted!" (status 1). The supervisor of --workers N takes the signals itself.
    signal.signal(signal.SIGTERM, _stopped)
    signal.signal(signal.SIGINT, _stopped)
    try:
        status = run_server(
            settings, config_file or os.environ.get("VEND_CONFIG"), overrides, announce
        )
    except ListenError as exc:
        click.echo(f"vend: {exc}", err=True)
        sys.exit(3)
    sys.exit(status)


def _stopped(signum: int, frame: object) -> NoReturn:
    """End ``vend serve`` with status 0 on SIGTERM or SIGINT outside uvicorn's own handlers.

    Args:
        signum: the signal's number.
        frame: the interrupted frame (unused).

    Raises:
        SystemExit: always, with status 0: the operator asked vend to stop.
    """
    raise SystemExit(0)


@main.command()
@_config_option
def check(config_file: str | None) -> None:
    """Probe each mount: exists, directory, readable, filesystem type."""
    settings = _load(config_file)
    reports = asyncio.run(check_mounts(settings))
    for index, report in enumerate(reports, 1):
        r = report.facts
        verdict = "ok" if r.usable else f"UNUSABLE ({r.error})"
        click.echo(
            f"{index}. {report.name}: {report.path}\n"
            f"   exists={_yn(r.exists)} directory={_yn(r.is_directory)} readable={_yn(r.readable)} "
            f"mount-point={_yn(r.is_mount_point)} filesystem={r.fs_type or '?'}: {verdict}"
        )
    sys.exit(0 if all(report.facts.usable for report in reports) else 1)


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


@main.command()
@_config_option
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--url",
    default=None,
    help="Online: request the links from this site, e.g. https://legacy.example.org.",
)
@click.option("--ca-file", type=click.Path(dir_okay=False), help="CA to trust (PEM), online.")
@click.option("--connect-to", metavar="HOST:PORT", help="Connect here, keeping --url's host.")
@click.option(
    "--method",
    type=click.Choice(["head", "range"]),
    default="head",
    show_default=True,
    help="Online: HEAD, or GET with Range: bytes=0-0.",
)
@click.option("--user", default=None, help="Check access as this user (default: yourself).")
@click.option(
    "--jobs",
    type=click.IntRange(1, 256),
    default=16,
    show_default=True,
    help="Links checked at once.",
)
@click.option("--report", type=click.Path(dir_okay=False), help="Write every link not served here.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default="jsonl",
    show_default=True,
    help="Report format.",
)
@click.option("--suggest", type=click.Path(dir_okay=False), help="Write redirect map lines here.")
@click.option("--all", "every_link", is_flag=True, help="Report working links too.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def verify(
    config_file: str | None,
    sources: tuple[str, ...],
    url: str | None,
    ca_file: str | None,
    connect_to: str | None,
    method: str,
    user: str | None,
    jobs: int,
    report: str | None,
    fmt: ReportFormat,
    suggest: str | None,
    every_link: bool,
    no_progress: bool,
) -> None:
    """Say which old links (access logs, lists, listings, misses) vend serves.

    Exit status: 0 every link is served; 1 some are not, or differ from the listing;
    2 unusable input or settings.
    """
    from tqdm import tqdm

    from app.ops.online import verify_online
    from app.ops.report import Report, summarize

    settings = _load(config_file)
    if url is None and (ca_file or connect_to):
        _fail("--ca-file and --connect-to need --url")
    if url is not None and (suggest or user):
        _fail("--suggest and --user work offline only (without --url)")
    links = OldLinks()
    with tqdm(unit="line", unit_scale=True, desc="reading", disable=no_progress or None) as bar:

        def read_more(lines: int) -> None:
            bar.update(lines)

        links.stats.progress = read_more
        for source in sources:
            try:
                read_source(source, links)
            except OSError as exc:
                _fail(f"cannot read {source}: {exc.strerror}")
    if not links.hits:
        click.echo(summarize(links.stats, Tally()), nl=False)
        _fail("no usable links in the input")
    try:
        handle = open(report, "w", encoding="utf-8", newline="") if report else None  # noqa: SIM115
        proposals = open(suggest, "w", encoding="utf-8") if suggest else None  # noqa: SIM115
    except OSError as exc:
        _fail(f"cannot write {exc.filename}: {exc.strerror}")
    # Logs and the report are read and written as the invoking user; then access is
    # checked as the user vend serves as.
    if url is None:
        try:
            who = switch_user(user)
        except UserError as exc:
            _fail(str(exc))
        if who == "root":
            click.echo(
                "vend: warning: checking access as root, who can read every file; "
                "use --user with the user vend serves as",
                err=True,
            )
    try:
        with Report(
            handle, fmt, len(links.hits), progress=not no_progress, every_link=every_link
        ) as results:
            if url is None:
                sink: Sink = results.add
                if suggest:
                    wanted = MissingNames()
                    sink = wanted.collecting(results.add)
                mounts_state = asyncio.run(verify_offline(settings, links, sink, jobs=jobs))
                if proposals is not None:
                    count = asyncio.run(write_suggestions(settings, wanted, proposals))
                    click.echo(f"vend: {count} redirect map lines proposed in {suggest}", err=True)
            else:
                mounts_state = []
                asyncio.run(
                    verify_online(
                        url,
                        links,
                        results.add,
                        jobs=jobs,
                        ca_file=ca_file,
                        connect_to=connect_to,
                        method=method,
                    )
                )
    except (RedirectMapError, ValueError, OSError, ssl.SSLError) as exc:
        _fail(str(exc))
    finally:
        for opened in (handle, proposals):
            if opened is not None:
                opened.close()
    click.echo(summarize(links.stats, results.tally), nl=False)
    for name, error in mounts_state:
        if error:
            click.echo(f"vend: mount {name} was down at the end: {error}", err=True)
    sys.exit(0 if results.tally.all_work else 1)


@main.command()
@_config_option
@click.option("--hash", "hash_content", is_flag=True, help="Compare contents (SHA-256) too.")
@click.option("--report", type=click.Path(dir_okay=False), help="Write every group (JSON lines).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def shadows(
    config_file: str | None, hash_content: bool, report: str | None, no_progress: bool
) -> None:
    """List names held by more than one mount: which copy wins, which differ or are newer.

    Exit status: 0 no differing copies; 1 some; 2 invalid settings; 3 a mount was not
    fully walked (hung or failing).
    """
    from tqdm import tqdm

    settings = _load(config_file)
    handle = open(report, "w", encoding="utf-8") if report else None  # noqa: SIM115
    counts = {"names": 0, "differ": 0, "newer": 0}
    differing: list[Shadow] = []
    bar = tqdm(unit="file", desc="walking", disable=no_progress or None)

    def found(group: Shadow) -> None:
        counts["names"] += 1
        counts["differ"] += group.differs
        counts["newer"] += group.newer
        if group.differs and len(differing) < 20:
            differing.append(group)
        if handle is not None:
            handle.write(json.dumps(group.as_json(), ensure_ascii=True) + "\n")

    def walked() -> None:
        bar.update(1)

    try:
        run = asyncio.run(shadows_of(settings, found, hash_content=hash_content, on_file=walked))
    finally:
        bar.close()
        if handle is not None:
            handle.close()
    for name, state in run.walks:
        verdict = f"not fully walked ({state.error})" if state.error else "walked"
        click.echo(f"{name}: {verdict}, {state.files:,} files in {state.directories:,} directories")
    for name, error in run.failed.items():
        click.echo(f"{name}: failed ({error}): results involving it are incomplete")
    click.echo(
        f"{counts['names']:,} names on more than one mount; {counts['differ']:,} with differing "
        f"copies; {counts['newer']:,} where a shadowed copy is newer than the one served"
    )
    for group in differing:
        others = ", ".join(c.mount for c in group.shadowed)
        flag = " (a shadowed copy is newer)" if group.newer else ""
        click.echo(f"  {group.name!r}: served from {group.winner.mount}, differs on {others}{flag}")
    sys.exit(3 if not run.complete else 1 if counts["differ"] else 0)


def _fail(message: str) -> NoReturn:
    click.echo(f"vend: {message}", err=True)
    sys.exit(2)


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


if __name__ == "__main__":
    main()
