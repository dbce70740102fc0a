#!/usr/bin/env python3
# /// script
# requires-python = ">=3.11"
# dependencies = ["httpx>=0.27,<1", "tqdm>=4.66,<5"]
# ///
"""Load a vend (or Apache) URL with real old links and report what the server sustained.

For operators: replay a file of old links (or a few URLs) against a server for a bounded
time with a fixed number of concurrent connections, optionally asking for byte ranges in
a share of the requests, and print requests per second, MiB per second, latency
percentiles and the count of each status. ``--json`` prints the same as one JSON object.

    benchmarks/throughput.py --links old-links.txt --base-url http://127.0.0.1:8000 \\
        --concurrency 32 --duration 30 --range-mix 0.2

The links file has one link per line: an absolute URL or a path ("/docs/a.pdf"); blank
lines and lines starting with "#" are skipped. With ``--base-url`` every link's path and
query are sent to that server instead (old links keep pointing at the legacy hostname);
without it, paths are refused and absolute URLs are used as they are.

Latency is measured from sending the request to receiving the last byte of the body;
percentiles come from a histogram with 1% wide buckets, so they are exact to about 1%.
It is one Python process: past a few thousand requests per second the client, not the
server, is the limit (benchmarks/compare uses wrk for that reason).

Needs httpx and tqdm (benchmarks/requirements.txt; benchmarks/compare installs both into
benchmarks/work/venv).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
from tqdm import tqdm

MAX_CONCURRENCY: Final = 1024
MAX_DURATION_S: Final = 3600.0
# Latency histogram: bucket i holds latencies in [GROWTH**i, GROWTH**(i+1)) microseconds.
GROWTH: Final = 1.01
PROGRESS_INTERVAL_S: Final = 0.25
READ_CHUNK_BYTES: Final = 64 * 1024
RANGE_BYTES_MAX: Final = 64 * 1024


class LinkFileError(Exception):
    """The links could not be read or one of them is not usable."""


@dataclass
class LatencyHistogram:
    """Counts latencies in logarithmic buckets 1% wide; memory does not grow with count.

    Attributes:
        buckets: bucket index -> count.
        max_s: the largest latency seen, in seconds.
    """

    buckets: Counter[int] = field(default_factory=Counter)
    max_s: float = 0.0

    def add(self, latency_s: float) -> None:
        """Records one latency.

        Args:
            latency_s: seconds from request sent to last body byte received.
        """
        micros = max(latency_s * 1e6, 1.0)
        self.buckets[int(math.log(micros, GROWTH))] += 1
        self.max_s = max(self.max_s, latency_s)

    def percentile(self, fraction: float) -> float | None:
        """Returns the latency below which ``fraction`` of the recorded ones fall.

        Args:
            fraction: between 0 and 1, e.g. 0.99.

        Returns:
            The latency in seconds (the upper edge of its bucket, capped at the maximum
            seen), or None when nothing was recorded.
        """
        total = sum(self.buckets.values())
        if total == 0:
            return None
        rank = max(1, math.ceil(fraction * total))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(GROWTH ** (index + 1) / 1e6, self.max_s)
        return self.max_s


@dataclass
class Tally:
    """Everything counted during a load.

    Attributes:
        started: requests sent or about to be sent (for ``--max-requests``).
        requests: completed exchanges (any status), transport errors excluded.
        bytes_read: body bytes received, in bytes.
        statuses: status code or "error:<ExceptionName>" -> count.
        latency: latencies of completed exchanges.
    """

    started: int = 0
    requests: int = 0
    bytes_read: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)


def read_links(path: Path | None, urls: list[str], base_url: str | None) -> list[str]:
    """Builds the list of URLs to request.

    Args:
        path: file with one link per line, or None.
        urls: links given on the command line.
        base_url: when set, each link's path and query are joined to it.

    Returns:
        Absolute http(s) URLs, in file order then command-line order.

    Raises:
        LinkFileError: if the file cannot be read, no link is given, or a link is a bare
            path while ``base_url`` is not set.
    """
    links = list(urls)
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as error:
            raise LinkFileError(f"cannot read {path}: {error.strerror}") from error
        links += [line.strip() for line in text.splitlines()]
    links = [link for link in links if link and not link.startswith("#")]
    if not links:
        raise LinkFileError("no links: give URLs or --links FILE")
    resolved = []
    for link in links:
        parts = urllib.parse.urlsplit(link)
        if base_url is not None:
            target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
            resolved.append(base_url.rstrip("/") + target)
        elif parts.scheme in ("http", "https") and parts.netloc:
            resolved.append(link)
        else:
            raise LinkFileError(f"{link!r} is not an absolute URL; give --base-url")
    return resolved


def choose_range(known_size: int | None, rng: random.Random) -> str | None:
    """Picks a byte range inside a body of known size (RFC 9110 section 14.1.2).

    Args:
        known_size: the body length in bytes, learnt from an earlier full response, or
            None when not yet known.
        rng: the random source.

    Returns:
        A Range header value "bytes=FIRST-LAST" (inclusive, at most ``RANGE_BYTES_MAX``
        bytes), or None when the size is unknown or zero.
    """
    if not known_size:
        return None
    length = rng.randint(1, min(known_size, RANGE_BYTES_MAX))
    first = rng.randint(0, known_size - length)
    return f"bytes={first}-{first + length - 1}"


async def _worker(
    client: httpx.AsyncClient,
    links: list[str],
    sizes: dict[str, int],
    tally: Tally,
    *,
    deadline: float,
    range_mix: float,
    max_requests: int | None,
    rng: random.Random,
) -> None:
    while time.monotonic() < deadline:
        if max_requests is not None and tally.started >= max_requests:
            return
        tally.started += 1
        url = rng.choice(links)
        headers = {}
        if range_mix > 0 and rng.random() < range_mix:
            byte_range = choose_range(sizes.get(url), rng)
            if byte_range:
                headers["Range"] = byte_range
        started = time.monotonic()
        try:
            async with client.stream("GET", url, headers=headers) as response:
                received = 0
                async for chunk in response.aiter_raw(READ_CHUNK_BYTES):
                    received += len(chunk)
        except httpx.HTTPError as error:
            tally.statuses[f"error:{type(error).__name__}"] += 1
            continue
        tally.latency.add(time.monotonic() - started)
        tally.requests += 1
        tally.bytes_read += received
        tally.statuses[str(response.status_code)] += 1
        if response.status_code == 200 and "content-encoding" not in response.headers:
            sizes[url] = received


async def run_load(
    links: list[str],
    *,
    concurrency: int,
    duration_s: float,
    range_mix: float,
    max_requests: int | None = None,
    timeout_s: float = 30.0,
    verify: bool | str = True,
    show_progress: bool = True,
    seed: int | None = None,
) -> tuple[Tally, float]:
    """Drives the load and returns what was counted.

    Args:
        links: absolute URLs, picked at random for each request.
        concurrency: simultaneous requests (and at most that many connections).
        duration_s: how long to keep sending, in seconds; requests in flight then finish.
        range_mix: fraction (0 to 1) of requests that ask for a byte range, once the
            link's size is known.
        max_requests: stop after this many requests, or None for no count limit.
        timeout_s: per-request connect/read/write/pool timeout, in seconds.
        verify: TLS verification: True, False, or a CA bundle path.
        show_progress: draw a progress bar on stderr (only on a terminal).
        seed: random seed for link and range choice, for repeatable mixes.

    Returns:
        (the tally, the elapsed time in seconds).
    """
    tally = Tally()
    sizes: dict[str, int] = {}
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.monotonic()
    deadline = started + duration_s
    progress = tqdm(
        total=round(duration_s, 1),
        unit="s",
        file=sys.stderr,
        disable=None if show_progress else True,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s{postfix}",
    )
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s, verify=verify) as client:
        workers = [
            asyncio.create_task(
                _worker(
                    client,
                    links,
                    sizes,
                    tally,
                    deadline=deadline,
                    range_mix=range_mix,
                    max_requests=max_requests,
                    rng=rng,
                )
            )
            for _ in range(concurrency)
        ]
        pending = set(workers)
        while pending:
            _done, pending = await asyncio.wait(pending, timeout=PROGRESS_INTERVAL_S)
            elapsed = time.monotonic() - started
            progress.n = round(min(elapsed, duration_s), 1)
            progress.set_postfix_str(f"{tally.requests / max(elapsed, 1e-9):,.0f} req/s")
        for task in workers:
            task.result()  # re-raises anything unexpected
    progress.close()
    return tally, time.monotonic() - started


def summarize(
    tally: Tally, elapsed_s: float, *, concurrency: int, range_mix: float, links: int
) -> dict[str, Any]:
    """Turns a tally into the reported numbers.

    Args:
        tally: what was counted.
        elapsed_s: wall time of the load in seconds.
        concurrency: the concurrency used.
        range_mix: the range fraction used.
        links: how many distinct links were in the mix.

    Returns:
        A JSON-ready dict: requests, duration_s, requests_per_s, bytes, mib_per_s,
        latency_ms {p50, p90, p99, max}, status {code or error: count}, and the settings.
    """

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        "requests": tally.requests,
        "duration_s": round(elapsed_s, 3),
        "requests_per_s": round(tally.requests / elapsed_s, 1),
        "bytes": tally.bytes_read,
        "mib_per_s": round(tally.bytes_read / elapsed_s / 2**20, 2),
        "latency_ms": {
            "p50": ms(tally.latency.percentile(0.50)),
            "p90": ms(tally.latency.percentile(0.90)),
            "p99": ms(tally.latency.percentile(0.99)),
            "max": ms(tally.latency.max_s if tally.requests else None),
        },
        "status": dict(sorted(tally.statuses.items())),
        "concurrency": concurrency,
        "range_mix": range_mix,
        "links": links,
    }


def format_text(summary: dict[str, Any]) -> str:
    """Renders a summary for people.

    Args:
        summary: the output of ``summarize``.

    Returns:
        A few lines of text.
    """
    lat = summary["latency_ms"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.2f}"

    statuses = ", ".join(f"{key}: {count:,}" for key, count in summary["status"].items())
    return "\n".join(
        [
            f"{summary['links']:,} links, {summary['concurrency']} concurrent, "
            f"range mix {summary['range_mix']:.2f}, {summary['duration_s']:.1f} s",
            f"requests  {summary['requests']:,} ({summary['requests_per_s']:,.1f} req/s)",
            f"received  {summary['bytes'] / 2**20:,.1f} MiB ({summary['mib_per_s']:,.2f} MiB/s)",
            f"latency   p50 {ms(lat['p50'])} ms  p90 {ms(lat['p90'])} ms  "
            f"p99 {ms(lat['p99'])} ms  max {ms(lat['max'])} ms",
            f"status    {statuses or 'none'}",
        ]
    )


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parses the command line.

    Args:
        argv: arguments without the program name.

    Returns:
        The options.

    Raises:
        SystemExit: with status 2 on invalid arguments.
    """
    parser = argparse.ArgumentParser(
        prog="throughput.py",
        description="Replay old links against a vend or Apache URL and report throughput.",
    )
    parser.add_argument("urls", nargs="*", metavar="URL", help="links to request")
    parser.add_argument("--links", type=Path, metavar="FILE", help="file of links, one a line")
    parser.add_argument("--base-url", metavar="URL", help="send every link's path here")
    parser.add_argument("--concurrency", type=int, default=16, help="default 16")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds, default 10")
    parser.add_argument("--max-requests", type=int, metavar="N", help="stop after N requests")
    parser.add_argument(
        "--range-mix", type=_fraction, default=0.0, help="fraction of Range requests (0-1)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument("--cacert", metavar="FILE", help="CA bundle for https")
    parser.add_argument("--insecure", action="store_true", help="do not verify TLS")
    parser.add_argument("--seed", type=int, help="random seed for a repeatable mix")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    options = parser.parse_args(argv)
    if not 1 <= options.concurrency <= MAX_CONCURRENCY:
        parser.error(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
    if not 0 < options.duration <= MAX_DURATION_S:
        parser.error(f"--duration must be more than 0 and at most {MAX_DURATION_S:.0f} s")
    if options.max_requests is not None and options.max_requests < 1:
        parser.error("--max-requests must be at least 1")
    if options.timeout <= 0:
        parser.error("--timeout must be positive")
    if options.base_url is not None:
        base = urllib.parse.urlsplit(options.base_url)
        if base.scheme not in ("http", "https") or not base.netloc:
            parser.error("--base-url must be an http:// or https:// URL")
    return options


def main(argv: list[str]) -> int:
    """Runs the tool.

    Args:
        argv: arguments without the program name.

    Returns:
        0 after a load, 2 when the links cannot be used.
    """
    options = parse_args(argv)
    try:
        links = read_links(options.links, options.urls, options.base_url)
    except LinkFileError as error:
        print(f"throughput.py: {error}", file=sys.stderr)
        return 2
    verify: bool | str = False if options.insecure else (options.cacert or True)
    tally, elapsed = asyncio.run(
        run_load(
            links,
            concurrency=options.concurrency,
            duration_s=options.duration,
            range_mix=options.range_mix,
            max_requests=options.max_requests,
            timeout_s=options.timeout,
            verify=verify,
            show_progress=not options.json,
            seed=options.seed,
        )
    )
    summary = summarize(
        tally,
        elapsed,
        concurrency=options.concurrency,
        range_mix=options.range_mix,
        links=len(set(links)),
    )
    print(json.dumps(summary) if options.json else format_text(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
