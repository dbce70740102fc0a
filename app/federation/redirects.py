"""The redirect map: old names of renamed content, answered with a 301 to the new name.

The map is a text file of ``old-name new-name`` lines, as Apache's ``RewriteMap`` (type
``txt``) reads them: fields separated by blanks, ``#`` starts a comment, blank lines are
skipped. Both names are request paths (``/docs/old.html`` or ``docs/old.html``, percent-
encoded where needed) and must pass the name rules and the whitelist, as a request would.

A request for an old name that no mount holds gets ``301`` with a relative ``Location``
(RFC 9110 section 10.2.2 allows a relative reference) to the new name, query kept. While
a mount that may hold the old name is down the answer stays 503, as for any name: the
map is consulted only after a definite 404. A map is refused, with one line naming the
entry, when a line is malformed, a name is refused, an old name repeats, an entry maps
a name to itself, a target is itself an old name (chains are refused: one hop only), or
a target does not resolve to a file on the mounts.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote

from app.federation.lookup import Miss, find_file
from app.federation.mount import Mount
from app.federation.open import OpenFile
from app.http.names import NameRefused, request_candidates

CHECK_CONCURRENCY: Final = 16
"""Targets looked up at once when a map is checked against the mounts."""
_SAFE: Final = "/!$&'()*+,;=:@-._~"
"""Characters kept as they are in a ``Location`` (RFC 3986 section 3.3's pchar, and ``/``)."""


class RedirectMapError(Exception):
    """The redirect map is unusable; the message is one line naming the file and entry."""


@dataclass(frozen=True, slots=True)
class RedirectMap:
    """Old names and the names they moved to.

    Attributes:
        source: the file it was read from ("" for an empty map).
        targets: old decoded name → new decoded name (both without leading ``/``).
        lines: old decoded name → line number in ``source``, for messages.
    """

    source: str = ""
    targets: Mapping[str, str] = field(default_factory=dict)
    lines: Mapping[str, int] = field(default_factory=dict)

    def location(self, name: str, query: bytes = b"") -> bytes | None:
        """The ``Location`` of the 301 for an old name, or None when the map lacks it.

        Args:
            name: a decoded name that no mount holds.
            query: the request's query string (without ``?``), kept on the target.

        Returns:
            ``/new/name`` percent-encoded, with ``?query`` when there was one.
        """
        target = self.targets.get(name)
        if target is None:
            return None
        location = ("/" + quote(target, safe=_SAFE)).encode("ascii")
        return location + b"?" + query if query else location


def _name(text: str, pattern: re.Pattern[str], where: str) -> str:
    """A map field as a validated decoded name, or ``RedirectMapError``."""
    raw = text if text.startswith("/") else "/" + text
    try:
        request, candidates = request_candidates(raw.encode("ascii"), pattern, ())
    except UnicodeEncodeError:
        raise RedirectMapError(f"{where}: {text!r} is not ASCII (percent-encode it)") from None
    except NameRefused as refusal:
        raise RedirectMapError(f"{where}: {text!r} is refused ({refusal.rule})") from None
    if request.wants_index or not candidates:
        raise RedirectMapError(f"{where}: {text!r} names a directory, not a file")
    return candidates[0]


def parse_redirect_map(source: str, text: str, pattern: re.Pattern[str]) -> RedirectMap:
    """Parse and check a map's text, without touching the mounts.

    Args:
        source: the file's path, for messages.
        text: its contents.
        pattern: the compiled whitelist.

    Returns:
        The map.

    Raises:
        RedirectMapError: the first bad entry, named by ``source:line``.
    """
    targets: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"redirect map {source}:{number}"
        if len(fields) != 2:
            raise RedirectMapError(f"{where}: expected 'old-name new-name'")
        old, new = (_name(f, pattern, where) for f in fields)
        if old == new:
            raise RedirectMapError(f"{where}: {fields[0]!r} redirects to itself")
        if old in targets:
            raise RedirectMapError(f"{where}: {fields[0]!r} is listed before, line {lines[old]}")
        targets[old] = new
        lines[old] = number
    for old, new in targets.items():
        if new in targets:
            raise RedirectMapError(
                f"redirect map {source}:{lines[old]}: {new!r} is itself redirected "
                f"(line {lines[new]}); chains are refused, map {old!r} to the final name"
            )
    return RedirectMap(source=source, targets=targets, lines=lines)


def read_redirect_map(path: str, pattern: re.Pattern[str]) -> RedirectMap:
    """Read and parse a map file (blocking; small files, read at start and on SIGHUP).

    Args:
        path: the file; "" for no map.
        pattern: the compiled whitelist.

    Returns:
        The map (empty for "").

    Raises:
        RedirectMapError: the file cannot be read, is not UTF-8, or has a bad entry.
    """
    if not path:
        return RedirectMap()
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise RedirectMapError(f"redirect map {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise RedirectMapError(f"redirect map {path}: not UTF-8 text") from None
    return parse_redirect_map(path, text, pattern)


async def check_targets(redirects: RedirectMap, mounts: Sequence[Mount]) -> None:
    """Require every target to resolve to a file on the mounts, as a request would.

    Args:
        redirects: the parsed map.
        mounts: the mounts, in priority order.

    Raises:
        RedirectMapError: the first target (in file order) that is not found, forbidden,
            or on a mount that is failing, named by ``file:line``.
    """
    gate = asyncio.Semaphore(CHECK_CONCURRENCY)

    async def resolve(target: str) -> Miss | None:
        async with gate:
            found = await find_file(mounts, [target], redirect_directories=False)
        if isinstance(found, OpenFile):
            found.close()
        return found if isinstance(found, Miss) else None

    olds = list(redirects.targets)
    outcomes = await asyncio.gather(*(resolve(redirects.targets[old]) for old in olds))
    for old, miss in zip(olds, outcomes, strict=True):
        if miss is not None:
            why = {
                Miss.NOT_FOUND: "is on no mount",
                Miss.FORBIDDEN: "is not readable",
                Miss.UNAVAILABLE: "cannot be checked: a mount is failing",
            }[miss]
            raise RedirectMapError(
                f"redirect map {redirects.source}:{redirects.lines[old]}: target "
                f"{redirects.targets[old]!r} {why}"
            )


async def load_redirect_map(
    path: str, pattern: re.Pattern[str], mounts: Sequence[Mount]
) -> RedirectMap:
    """Read, parse and check a map against the mounts (start and SIGHUP).

    Args:
        path: the file; "" for no map.
        pattern: the compiled whitelist.
        mounts: the mounts targets must resolve on.

    Returns:
        The checked map.

    Raises:
        RedirectMapError: see ``read_redirect_map`` and ``check_targets``.
    """
    redirects = await asyncio.to_thread(read_redirect_map, path, pattern)
    await check_targets(redirects, mounts)
    return redirects


def save_snapshot(redirects: RedirectMap, path: str) -> None:
    """Write a checked map where other workers find it (atomically; errors ignored).

    With ``--workers N`` a worker restarted by SIGHUP reads the map file anew; when that
    file has turned bad, it falls back to the last map a worker checked (``load_snapshot``),
    so the map in force stays, as with one worker.

    Args:
        redirects: a map that passed ``check_targets``.
        path: the snapshot file (in the workers' shared directory).
    """
    data = {"source": redirects.source, "targets": redirects.targets, "lines": redirects.lines}
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(temporary, path)
    except (OSError, TypeError):
        return


def load_snapshot(path: str) -> RedirectMap | None:
    """The last map a worker checked (``save_snapshot``), or None when there is none."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return RedirectMap(data["source"], dict(data["targets"]), dict(data["lines"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


SNAPSHOT_NAME: Final = "vend-redirects.json"
"""The last checked map's file name in the workers' shared directory."""


async def refresh_redirect_map(
    current: RedirectMap,
    path: str,
    pattern: re.Pattern[str],
    mounts: Sequence[Mount],
    shared_dir: str | None = None,
) -> tuple[RedirectMap, str | None]:
    """Read the map anew (start, SIGHUP); on failure keep the one in force.

    Args:
        current: the map in force ("" source and no targets in a fresh worker).
        path: the configured file; "" for none.
        pattern: the compiled whitelist.
        mounts: the mounts targets must resolve on.
        shared_dir: with ``--workers N``, the directory where the last checked map is
            kept for workers that start after the file turned bad; None with one process.

    Returns:
        The map now in force, and None, or the one-line reason the new one was refused.
    """
    snapshot = os.path.join(shared_dir, SNAPSHOT_NAME) if shared_dir else None
    try:
        fresh = await load_redirect_map(path, pattern, mounts)
    except RedirectMapError as exc:
        if snapshot and not current.targets:  # a worker that just (re)started
            current = load_snapshot(snapshot) or current
        return current, str(exc)
    if snapshot:
        save_snapshot(fresh, snapshot)
    return fresh, None
