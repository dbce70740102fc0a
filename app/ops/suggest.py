"""``vend verify --suggest``: redirect map lines proposed for old links no mount holds.

For each name not found, in this order of preference:

1. another spelling of the extension: ``.htm`` / ``.html``, ``.jpeg`` / ``.jpg``
   (looked up directly, as a request would be);
2. the same name in other letter case (``Docs/Report.PDF`` for ``docs/report.pdf``);
3. the same file name in another folder, when exactly one such file exists.

2 and 3 need one walk over every mount (``app.ops.walk``); memory holds the missing
names only, never the mounts' files. Every proposed target is resolved with
``find_file`` before it is written, so the lines can go into the redirect map as they
are (after review: a person decides whether a rename is the same content).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Final
from urllib.parse import quote

from app.federation.lookup import find_file
from app.federation.mount import Mount, build_mounts
from app.federation.open import OpenFile, SmallFile
from app.http.names import NameRefused, compile_pattern, request_candidates
from app.ops.verify import Outcome, Sink, Verdict
from app.ops.walk import WalkState, walk_mount
from app.settings import Settings

_EXTENSIONS: Final = {".htm": ".html", ".html": ".htm", ".jpeg": ".jpg", ".jpg": ".jpeg"}
_SAFE: Final = "/!$&'()*+,;=:@-._~"


@dataclass
class MissingNames:
    """Names no mount holds, with their hits (only for ``--suggest``).

    Attributes:
        hits: decoded name → hits.
    """

    hits: dict[str, int] = field(default_factory=dict)

    def collecting(self, sink: Sink) -> Sink:
        """A sink that records not-found file names, then passes each verdict on."""

        def collect(target: bytes, hits: int, verdict: Verdict) -> None:
            if verdict.outcome is Outcome.NOT_FOUND and verdict.name and not target.endswith(b"/"):
                self.hits[verdict.name] = self.hits.get(verdict.name, 0) + hits
            sink(target, hits, verdict)

        return collect


def extension_variants(name: str) -> list[str]:
    """The other spellings of a name's extension (``a.htm`` → ``a.html``), any case."""
    stem, ext = posixpath.splitext(name)
    other = _EXTENSIONS.get(ext.lower())
    if other is None:
        return []
    return [stem + (other.upper() if ext.isupper() else other)]


async def _resolves(mounts: Sequence[Mount], name: str, pattern: re.Pattern[str]) -> bool:
    """Whether ``name`` passes the name rules and is served from the mounts."""
    try:
        _, candidates = request_candidates(("/" + quote(name, safe=_SAFE)).encode(), pattern, ())
    except NameRefused:
        return False
    found = await find_file(mounts, candidates, redirect_directories=False)
    if isinstance(found, OpenFile):
        found.close()
    return isinstance(found, (OpenFile, SmallFile))


async def suggest(settings: Settings, missing: MissingNames) -> list[tuple[str, str, str]]:
    """Propose a new name for each missing one that has a likely renamed copy.

    Args:
        settings: validated settings.
        missing: the names no mount holds.

    Returns:
        ``(old, new, reason)`` triples, most hits first.
    """
    mounts = build_mounts(
        settings.mounts, fs_op_s=settings.timeouts.fs_op_s, threads=settings.threads_per_mount
    )
    pattern = compile_pattern(settings.name_pattern)
    found: dict[str, tuple[str, str]] = {}
    try:
        for old in missing.hits:
            for variant in extension_variants(old):
                if await _resolves(mounts, variant, pattern):
                    found[old] = (variant, "other extension")
                    break
        by_lower: dict[str, list[str]] = {}
        by_base: dict[str, list[str]] = {}
        for old in missing.hits:
            if old not in found:
                by_lower.setdefault(old.lower(), []).append(old)
                by_base.setdefault(posixpath.basename(old), []).append(old)
        seen_elsewhere: dict[str, set[str]] = {}
        if by_lower:
            for mount in mounts:
                async for name in walk_mount(mount, WalkState()):
                    for old in by_lower.get(name.lower(), ()):
                        if old not in found and await _resolves(mounts, name, pattern):
                            found[old] = (name, "letter case")
                    for old in by_base.get(posixpath.basename(name), ()):
                        seen_elsewhere.setdefault(old, set()).add(name)
        for old, names in seen_elsewhere.items():
            if old not in found and len(names) == 1:
                (name,) = names
                if await _resolves(mounts, name, pattern):
                    found[old] = (name, "same file name in another folder")
    finally:
        for mount in mounts:
            mount.close()
    ordered = sorted(found.items(), key=lambda item: (-missing.hits[item[0]], item[0]))
    return [(old, new, reason) for old, (new, reason) in ordered]


async def write_suggestions(settings: Settings, missing: MissingNames, handle: IO[str]) -> int:
    """Write proposed redirect map lines.

    Args:
        settings: validated settings.
        missing: the names no mount holds.
        handle: the open file to write (redirect map format, each line after a comment).

    Returns:
        How many lines were proposed.

    Raises:
        OSError: the file cannot be written.
    """
    proposals = await suggest(settings, missing)
    handle.write("# proposed by vend verify --suggest: review each line before use\n")
    for old, new, reason in proposals:
        handle.write(f"# {reason}, {missing.hits[old]} hits\n")
        handle.write(f"/{quote(old, safe=_SAFE)} /{quote(new, safe=_SAFE)}\n")
    return len(proposals)
