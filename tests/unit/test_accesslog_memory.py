"""Memory the access log's remembered line parts can be made to hold by hostile fields."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from app.ops.accesslog import AccessLog

LINES = 128


def test_long_forwarded_clients_are_not_remembered(tmp_path: Path) -> None:
    """128 lines whose client (a trusted X-Forwarded-For) has 8,000 bytes each hold under 2 MiB."""
    log = AccessLog(str(tmp_path / "access.log"))
    try:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(LINES):
            client = "\xff" * 7990 + f"{i:010d}"  # latin-1 decoded field: escaped 8x longer
            log.record_line(client, b"GET /a.css HTTP/1.1", 200, 10, None, b"ua", "m1", None)
        log.close()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        log.close()
    assert held < 2 * 1024 * 1024, held  # remembered, they held 9 MiB (74 MiB at 1,024)
    assert (tmp_path / "access.log").read_text().count("\n") == LINES
