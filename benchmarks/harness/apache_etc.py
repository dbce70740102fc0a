"""Leaves the system Apache's configuration as the benchmark found it.

Installing ``libapache2-mod-php`` runs Debian's maintainer scripts, which enable
``php8.2`` and switch the enabled MPM from event to prefork in ``/etc/apache2``: a host
whose Apache served HTTP/2 would no longer do so after its next restart. The benchmark
never reads ``/etc/apache2`` (every Apache it runs has its own generated configuration),
so ``benchmarks/compare`` saves the directory before it installs any package that could
change it, restores it right after installing, and checks at exit that it is
byte-identical (every path, type, mode, owner, symlink target and content), restoring it
again if anything changed meanwhile. Standard library only: it runs before the benchmark's
virtual environment exists.

    python3 benchmarks/harness/apache_etc.py save SNAPSHOT      # before apt-get install
    python3 benchmarks/harness/apache_etc.py restore SNAPSHOT   # exit 0 if identical now
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ETC_APACHE: Final = Path("/etc/apache2")


def manifest(root: Path) -> dict[str, list[object]] | None:
    """Describes every entry under a directory.

    Args:
        root: the directory (``/etc/apache2``).

    Returns:
        relative path -> [type, mode, uid, gid, sha256 of a file or target of a symlink],
        or None when ``root`` does not exist.
    """
    if not root.exists():
        return None
    entries: dict[str, list[object]] = {}
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in [".", *sorted(dirnames), *sorted(filenames)]:
            path = Path(directory) if name == "." else Path(directory, name)
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                kind, detail = "link", os.readlink(path)
            elif stat.S_ISDIR(info.st_mode):
                kind, detail = "dir", ""
            else:
                kind, detail = "file", hashlib.sha256(path.read_bytes()).hexdigest()
            mode = stat.S_IMODE(info.st_mode)
            entries[str(path.relative_to(root))] = [kind, mode, info.st_uid, info.st_gid, detail]
    return entries


@dataclass(frozen=True)
class EtcSnapshot:
    """A saved copy of a directory: its manifest (``.json``) and a tar archive (``.tar``).

    Attributes:
        path: the snapshot's path without suffix.
        root: the directory it is a copy of.
    """

    path: Path
    root: Path = ETC_APACHE

    @classmethod
    def save(cls, path: Path, root: Path = ETC_APACHE) -> EtcSnapshot:
        """Saves ``root`` as it is now.

        Args:
            path: where the snapshot goes (``.json`` and ``.tar`` are added).
            root: the directory.

        Returns:
            The snapshot.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        snapshot = cls(path, root)
        data = {"root": str(root), "entries": manifest(root)}
        if root.exists():
            with tarfile.open(snapshot.tar, "w") as archive:
                archive.add(root, arcname=root.name)
        snapshot.json.write_text(json.dumps(data))
        return snapshot

    @classmethod
    def load(cls, path: Path) -> EtcSnapshot:
        """Opens a saved snapshot. Returns: it."""
        data = json.loads(path.with_suffix(".json").read_text())
        return cls(path, Path(data["root"]))

    @property
    def json(self) -> Path:
        """The manifest file."""
        return self.path.with_suffix(".json")

    @property
    def tar(self) -> Path:
        """The archive file."""
        return self.path.with_suffix(".tar")

    def differences(self) -> list[str]:
        """Lists the entries that differ between the snapshot and the directory now.

        Returns:
            Relative paths (added, removed or changed), sorted; empty when identical.
        """
        saved = json.loads(self.json.read_text())["entries"]
        now = manifest(self.root)
        if saved is None or now is None:
            return [] if saved == now else [str(self.root)]
        keys = set(saved) | set(now)
        return sorted(key for key in keys if saved.get(key) != now.get(key))

    def restore(self) -> list[str]:
        """Puts the saved directory back if it differs, and checks again.

        Returns:
            What still differs afterwards (empty: byte-identical).
        """
        if not self.differences():
            return []
        if self.tar.exists():
            shutil.rmtree(self.root, ignore_errors=True)
            with tarfile.open(self.tar) as archive:
                # Our own archive of /etc/apache2: keep owners, modes and symlinks as they
                # were (Python 3.11.4+ asks for a filter; Debian 12 has 3.11.2).
                if hasattr(tarfile, "fully_trusted_filter"):
                    archive.extractall(self.root.parent, filter="fully_trusted")
                else:
                    archive.extractall(self.root.parent)
        return self.differences()


def main(argv: list[str]) -> int:
    """``save SNAPSHOT`` or ``restore SNAPSHOT``; see the module docstring.

    Args:
        argv: the arguments without the program name.

    Returns:
        0 on success; 1 when /etc/apache2 still differs after restoring; 2 on bad usage.
    """
    if len(argv) != 2 or argv[0] not in ("save", "restore"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "save":
        EtcSnapshot.save(Path(argv[1]))
        return 0
    snapshot = Path(argv[1])
    if not snapshot.with_suffix(".json").exists():
        return 0
    left = EtcSnapshot.load(snapshot).restore()
    if left:
        print(f"benchmarks/compare: {ETC_APACHE} still differs: {', '.join(left)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
