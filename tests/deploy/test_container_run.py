"""deploy/container: the image, built with rootful podman, runs confined, gets its address by DHCP.

What this does, every run, as root on Debian 12 (it fails, never skips, when a
tool is missing or a step goes wrong):

1. A Debian base image (``python3``, ``python3-venv``) made with mmdebstrap from
   Debian's package archive and ``podman import``-ed, tagged by a hash of the
   mmdebstrap arguments and kept between runs (no image registry is reachable).
2. Wheels of vend's dependencies and of hatchling fetched on the host (kept
   between runs, by a hash of pyproject.toml's requirements); the image built
   from the working tree and ``deploy/container/Containerfile`` with
   ``--network none``, that base as ``PYTHON_IMAGE`` and the wheels as the
   ``wheels`` build context: vend itself is built from source in the image.
3. The container run with no network, a read-only root, no capabilities, the
   two sample content mounts bind-mounted read-only; its process runs as UID 10001.
4. ``deploy/netplumb`` gives it a macvlan on a bridge port and a DHCP lease from
   dnsmasq, which reserves an address for its client identifier; a client on
   another subnet fetches files byte for byte; ``podman healthcheck run`` exits 0;
   restarted, the container gets the same address again.
5. The container and image removed, the host compared with before step 1:
   links, addresses, routes, named namespaces, nftables and iptables rules,
   mounts, processes, cgroups, podman's containers and images (a new base image
   excepted), netplumb's state.

The lab, in namespaces the test creates (as in test_netplumb.py)::

    fw 10.231.2.2 --veth-- router 10.231.2.1 | br 10.231.1.1 (dnsmasq)
                                                |
                           host: uplink (stands in for eth1.500)
                                   \\__ macvlan "eth1" in the container's namespace

The kernel here has no 802.1q module, so the parent is an untagged veth.
podman keeps its images under /var/cache/vend-tests/podman and its run state
under /run/vend-tests, apart from the machine's default store.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.netlab import DEPLOY, REPO, SAMPLE_MOUNT, Lab, clean_env, needs_root
from tests.deploy.test_netplumb import (
    FW_ADDRESS,
    RESERVED_ADDRESS,
    RESERVED_ID,
    Net,
    build_net,
    is_alive,
    read,
)
from tests.support import wait_until

CONTAINERFILE = DEPLOY / "container" / "Containerfile"
IGNOREFILE = DEPLOY / "container" / "Containerfile.dockerignore"
NETPLUMB = DEPLOY / "netplumb"
NETPLUMB_STATE = Path("/run/netplumb")  # netplumb's default: what production uses

#: podman's image store for these tests (the base image stays here between runs)
#: and its run state; both apart from the machine's default store. Wheels of
#: vend's dependencies are kept beside.
PODMAN_ROOT = Path("/var/cache/vend-tests/podman")
PODMAN_RUN = Path("/run/vend-tests")
WHEEL_CACHE = Path("/var/cache/vend-tests/wheels")
#: Wheels that suit the image's Python (Debian 12: CPython 3.11, glibc 2.36).
WHEEL_TAGS = [
    "--only-binary=:all:",
    "--python-version=3.11",
    "--implementation=cp",
    "--abi=cp311",
    f"--platform=manylinux_2_28_{platform.machine()}",
    f"--platform=manylinux2014_{platform.machine()}",
]
PODMAN_GLOBAL = [
    f"--root={PODMAN_ROOT}",
    f"--runroot={PODMAN_RUN / 'storage'}",
    f"--tmpdir={PODMAN_RUN / 'libpod'}",
    # crun refuses this machine's hybrid cgroup layout; runc works.
    "--runtime=runc",
    "--cgroup-manager=cgroupfs",
    "--events-backend=file",
]
#: Raising resource limits is refused here, so every container gets these.
ULIMITS = ["--ulimit=nofile=1024:1024", "--ulimit=nproc=1000:1000"]

#: How the base image is made; its tag is a hash of these.
MMDEBSTRAP_OPTIONS = ["--variant=minbase", "--include=python3,python3-venv"]
MMDEBSTRAP_SUITE = "bookworm"
MMDEBSTRAP_MIRRORS = [
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
]
IMPORT_CHANGES = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]

VEND_UID = 10001
VEND_PORT = 8000
#: Content mounts inside the container, in lookup order, and the host directories bound there.
CONTENT = {
    "/srv/vend/server1": SAMPLE_MOUNT,
    "/srv/vend/server2": SAMPLE_MOUNT.with_name("server2"),
}
#: Fetched from the container: in both mounts (the first serves), and in the second only.
FILES = ["about.html", "images/logo.png", "readme.txt", "docs/manual.pdf"]
#: Debian packages providing the commands this test runs (tests/apt-packages.txt).
TOOLS = {
    "podman": "podman",
    "runc": "runc",
    "mmdebstrap": "mmdebstrap",
    "dnsmasq": "dnsmasq-base",
    "busybox": "busybox",
    "curl": "curl",
    "nsenter": "util-linux",
    "nft": "nftables",
    "iptables-save": "iptables",
    "ip6tables-save": "iptables",
}

pytestmark = [pytest.mark.netns, pytest.mark.podman, needs_root]


def podman(
    *args: str, timeout: float = 120, check: bool = True, netns: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run podman with this test's store, runtime and cgroup settings.

    Args:
        args: the podman command and its arguments (global options first, if any).
        timeout: seconds before the command is killed.
        check: fail the test when podman exits non-zero.
        netns: a named network namespace to run podman in (``nsenter --net``), which
            then stands in for the host's network: interfaces podman's CNI plugins look
            up (a macvlan's parent) are found there. None: the caller's own.

    Returns:
        The completed process, with text output.

    Raises:
        pytest.fail.Exception: with ``check``, podman exited non-zero.
        subprocess.TimeoutExpired: podman ran longer than ``timeout`` seconds.
    """
    enter = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
    proc = subprocess.run(
        [*enter, "podman", *PODMAN_GLOBAL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=clean_env(),
    )
    if check and proc.returncode != 0:
        pytest.fail(f"podman {' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


def base_image_tag() -> str:
    """Return the base image's name: a hash of the mmdebstrap arguments and import changes."""
    recipe = json.dumps([MMDEBSTRAP_OPTIONS, MMDEBSTRAP_SUITE, MMDEBSTRAP_MIRRORS, IMPORT_CHANGES])
    return f"localhost/vend-test-base:{hashlib.sha256(recipe.encode()).hexdigest()[:16]}"


def ensure_base_image(tmp: Path) -> str:
    """Return the base image's name, making it with mmdebstrap and podman import if missing.

    Args:
        tmp: a directory for the root file system tarball (about 220 MB, deleted after).

    Returns:
        The image name, ``localhost/vend-test-base:<hash>``.

    Raises:
        AssertionError: mmdebstrap failed (within 600 s).
        pytest.fail.Exception: podman import failed.
    """
    tag = base_image_tag()
    if podman("image", "exists", tag, check=False).returncode == 0:
        return tag
    tarball = tmp / "rootfs.tar"
    made = subprocess.run(
        ["mmdebstrap", *MMDEBSTRAP_OPTIONS, MMDEBSTRAP_SUITE, str(tarball), *MMDEBSTRAP_MIRRORS],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert made.returncode == 0, f"mmdebstrap failed:\n{made.stderr[-3000:]}"
    changes = [arg for change in IMPORT_CHANGES for arg in ("--change", change)]
    podman("import", *changes, str(tarball), tag, timeout=300)
    tarball.unlink()
    return tag


def dependency_wheels() -> Path:
    """Return a directory of wheels for vend's dependencies and build backend, made if missing.

    vend itself is built from the working tree inside the image build; only
    what pyproject.toml requires is fetched here, as wheels for the image's
    CPython 3.11 and glibc whatever the host's Python (WHEEL_TAGS), once per
    distinct list of requirements: the directory's name is a hash of them, under
    /var/cache/vend-tests/wheels. Other lists' directories are removed.

    Returns:
        The directory holding the wheels.

    Raises:
        pytest.fail.Exception: pip download failed (within 300 s).
    """
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    requirements = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    recipe = json.dumps([requirements, WHEEL_TAGS])
    directory = WHEEL_CACHE / hashlib.sha256(recipe.encode()).hexdigest()[:16]
    if directory.is_dir():
        return directory
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    partial = WHEEL_CACHE / f"{directory.name}.{os.getpid()}.partial"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(partial)),
            *WHEEL_TAGS,
            *requirements,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=clean_env(),
    )
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        pytest.fail(f"pip download failed:\n{done.stderr[-3000:]}")
    for old in WHEEL_CACHE.iterdir():
        if old != partial:
            shutil.rmtree(old, ignore_errors=True)
    partial.rename(directory)
    return directory


def build_image(image: str, tmp: Path) -> str:
    """Build vend's image from the working tree as ``image``; return the base image's name.

    The base image is made first if missing (``ensure_base_image``); the wheels of
    vend's dependencies come from the host (``dependency_wheels``); the build itself
    has no network (``--network none``, ``PIP_NO_INDEX=1``).

    Args:
        image: the name to tag the new image with, e.g. ``localhost/vend-test:abc12``.
        tmp: a directory for the base image's root file system tarball.

    Returns:
        The base image's name, ``localhost/vend-test-base:<hash>`` (kept between runs).

    Raises:
        AssertionError: mmdebstrap failed.
        pytest.fail.Exception: pip download, podman import or podman build failed.
    """
    base = ensure_base_image(tmp)
    wheels = dependency_wheels()
    podman(
        "build",
        "--format=docker",  # OCI images have no HEALTHCHECK
        "--network=none",
        "--pull=never",
        "--layers=false",
        *ULIMITS,
        f"--file={CONTAINERFILE}",
        f"--ignorefile={IGNOREFILE}",
        f"--build-arg=PYTHON_IMAGE={base}",
        "--build-arg=PIP_NO_INDEX=1",
        f"--build-context=wheels={wheels}",
        f"--tag={image}",
        str(REPO),
        timeout=600,
    )
    return base


def netplumb(lab: Lab, net: Net, *args: str) -> subprocess.CompletedProcess[str]:
    """Run deploy/netplumb in the lab's host namespace, with its default state directory."""
    return lab.run(net.host, str(NETPLUMB), *args, timeout=40, check=False)


@dataclass(frozen=True)
class Plumbed:
    """What ``netplumb status`` reports for a plumbed container.

    Attributes:
        address: the leased address with its prefix length, e.g. ``10.231.1.123/24``.
        pids: the PIDs of netplumb's supervisor and of udhcpc.
    """

    address: str
    pids: tuple[int, int]


def plumb(lab: Lab, net: Net, pid: int) -> Plumbed:
    """Plumb the container whose main process is ``pid`` by DHCP; return what netplumb reports.

    Raises:
        AssertionError: ``netplumb up`` (20 s for a lease) or ``netplumb status`` failed.
    """
    up = netplumb(
        lab,
        net,
        "up",
        "--pid",
        str(pid),
        "--parent",
        net.uplink,
        "--dhcp",
        "--hostname",
        RESERVED_ID,
        "--timeout",
        "20",
    )
    assert up.returncode == 0, up.stderr
    status = netplumb(lab, net, "status", "--pid", str(pid))
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    return Plumbed(report["lease"]["address"], (report["supervisor_pid"], report["udhcpc_pid"]))


def gone(pids: tuple[int, int]) -> bool:
    """Return True when none of these processes is running any more."""
    return not any(is_alive(pid) for pid in pids)


def container_pid(name: str) -> int:
    """Return the host PID of the container's main process.

    Raises:
        AssertionError: the container is not running (its log is in the message).
    """
    pid = int(podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip())
    assert pid > 0, f"{name} is not running:\n{podman('logs', name, check=False).stdout[-3000:]}"
    return pid


def fetch_files(lab: Lab, client: str, address: str, name: str) -> None:
    """Wait (at most 30 s) for vend at ``address``, then fetch FILES byte for byte.

    Args:
        lab: the lab whose namespace ``client`` is.
        client: the namespace the requests are made from.
        address: the container's IPv4 address (vend listens on VEND_PORT there).
        name: the container's name, whose log is shown when vend does not answer.

    Raises:
        pytest.fail.Exception: vend did not answer within 30 s.
        AssertionError: a file's status or bytes differ from the content on the host.
    """
    base = f"http://{address}:{VEND_PORT}"
    deadline = time.monotonic() + 30
    while lab.curl(client, f"{base}/.well-known/vend/health", timeout_s=2)[0] != 200:
        if time.monotonic() > deadline:
            logs = podman("logs", name, check=False)
            pytest.fail(f"vend did not answer at {base}:\n{(logs.stdout + logs.stderr)[-3000:]}")
        time.sleep(0.2)
    for path in FILES:
        source = next(d / path for d in CONTENT.values() if (d / path).is_file())
        assert lab.curl(client, f"{base}/{path}") == (200, source.read_bytes()), path


def proc_status(pid: int) -> dict[str, str]:
    """Return /proc/PID/status as a dict of field name to value text."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def mount_options(pid: int) -> dict[str, set[str]]:
    """Return each mount point seen by process ``pid`` with its per-mount options."""
    mounts = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        mounts[fields[4]] = set(fields[5].split(","))
    return mounts


# --- the host, before and after ----------------------------------------------------


def command_lines(*cmd: str) -> list[str]:
    """Return a command's output lines (failing the test if it fails)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}"
    return proc.stdout.splitlines()


def ip_json(*args: str) -> list[dict[str, Any]]:
    """Return ``ip -j ARGS`` for the host's own network namespace, parsed."""
    out = "\n".join(command_lines("ip", "-j", *args)).strip()
    parsed: list[dict[str, Any]] = json.loads(out or "[]")
    return parsed


@dataclass
class Ours:
    """What identifies this test's things among other users' on a shared machine.

    Attributes:
        lab_tag: the Lab's tag: namespaces named ``vdt<tag>-*`` are ours.
        tmp: this test's temporary directory.
        markers: strings in a process's command line that make it ours.
        containers: the IDs of this test's containers, added as they are made: only
            their cgroups, and the processes in them, are ours. None: every
            container's are (other sessions share the machine, and run containers too).
    """

    lab_tag: str
    tmp: Path
    markers: list[str] = field(default_factory=list)
    containers: set[str] | None = None

    def our_container(self, cgroup_path: str) -> bool:
        """Return True when a container's cgroup path names one of this test's containers."""
        return self.containers is None or any(cid in cgroup_path for cid in self.containers)

    def foreign_mount(self, point: str) -> bool:
        """Return True for a mount that comes and goes with others' work, not this test's.

        Other tests on the machine mount FUSE file systems in their own temporary
        directories and make ``vdt*`` namespaces; podman, runc and netplumb mount
        nothing under /tmp. containers-storage bind-mounts its overlay directory
        on itself while any podman process uses the store, and unmounts it when the
        last one ends with no layer mounted: other sessions share the tests' store,
        so whether it is mounted at a given moment says nothing about this test
        (a container's own layer, ``overlay/<id>/merged``, still counts).
        """
        if point == f"{PODMAN_ROOT}/overlay":
            return True
        if point.startswith("/run/netns/vdt"):
            return not point.startswith(f"/run/netns/vdt{self.lab_tag}-")
        return point.startswith("/tmp/") and not point.startswith(f"{self.tmp}/")


def cgroup(proc: Path) -> str:
    """Return the text of /proc/PID/cgroup ('' once the process is gone)."""
    try:
        return (proc / "cgroup").read_text()
    except OSError:
        return ""


def our_processes(ours: Ours) -> list[str]:
    """Return ``PID START COMMAND`` for live processes that podman, vend or netplumb started.

    A process counts when it runs as vend's UID, is in a container's cgroup, or
    its command line names the container, podman's store for these tests, or
    netplumb's state directory.
    Zombies are left out: they hold nothing but a PID until init reaps them.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            uid = int(proc_status(int(entry.name))["Uid"].split()[0])
        except (OSError, KeyError, ValueError):
            continue  # exited meanwhile
        if stat[0] in ("Z", "X"):
            continue
        if (
            uid == VEND_UID
            or any(marker in cmdline for marker in ours.markers)
            or ("/libpod-" in (where := cgroup(entry)) and ours.our_container(where))
        ):
            found.append(f"{entry.name} {stat[19]} {cmdline.strip()}")
    return sorted(found)


def host_snapshot(ours: Ours) -> dict[str, list[str]]:
    """Describe everything on the host that running a container could leave behind.

    Args:
        ours: what tells this test's namespaces, mounts and processes from others'.

    Returns:
        One sorted list of lines per kind of thing; equal snapshots mean nothing
        was left (packet counters and other tests' namespaces are ignored).
    """
    links = [
        f"{li['ifname']} {li.get('linkinfo', {}).get('info_kind')}" for li in ip_json("-d", "link")
    ]
    addresses = [
        f"{li['ifname']} {a['local']}/{a['prefixlen']}"
        for li in ip_json("addr")
        for a in li.get("addr_info", [])
    ]
    route_keys = ("dst", "gateway", "dev", "table", "protocol", "scope", "type", "prefsrc")
    routes = [
        json.dumps({k: r.get(k) for k in route_keys})
        for family in ("-4", "-6")
        for r in ip_json(family, "route", "show", "table", "all")
    ]
    namespaces = [
        line.split()[0]
        for line in command_lines("ip", "netns", "list")
        if not line.startswith("vdt") or line.startswith(f"vdt{ours.lab_tag}-")
    ]
    nft = [
        re.sub(r"counter packets \d+ bytes \d+", "counter", line)
        for line in command_lines("nft", "list", "ruleset")
    ]
    iptables = [
        re.sub(r"\[\d+:\d+\]", "", line)
        for cmd in ("iptables-save", "ip6tables-save")
        for line in command_lines(cmd)
        if not line.startswith("#")
    ]
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point, rest = fields[4], fields[fields.index("-") + 1 :]
        if not ours.foreign_mount(point):
            mounts.append(f"{point} {rest[0]} {rest[1]}")
    cgroups = [
        str(p)
        for p in Path("/sys/fs/cgroup").glob("*/libpod_parent/*")
        if p.is_dir() and ours.our_container(str(p)) and not _podman_own_cgroup(p)
    ]
    state = [str(p) for p in NETPLUMB_STATE.rglob("*")] if NETPLUMB_STATE.exists() else []
    podman_things = podman("ps", "--all", "--format", "{{.ID}} {{.Names}}").stdout.splitlines()
    podman_things += podman(
        "images", "--all", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"
    ).stdout.splitlines()
    snapshot = {
        "links": links,
        "addresses": addresses,
        "routes": routes,
        "netns": namespaces,
        "nftables": nft,
        "iptables": iptables,
        "mounts": mounts,
        "processes": our_processes(ours),
        "cgroups": cgroups,
        "netplumb state": state,
        "podman containers and images": podman_things,
    }
    return {kind: sorted(lines) for kind, lines in snapshot.items()}


def _podman_own_cgroup(path: Path) -> bool:
    """podman's shared ``conmon`` cgroup, with no process in it: podman makes it on its
    first container on this host and keeps it (on a fresh machine the first run of this
    test would count it as left behind). A conmon process left in it still counts, under
    processes and here."""
    procs = path / "cgroup.procs"
    return path.name == "conmon" and (not procs.exists() or not procs.read_text().strip())


def differences(before: dict[str, list[str]], after: dict[str, list[str]]) -> list[str]:
    """Return ``+ kind: line`` / ``- kind: line`` for each line only in one snapshot."""
    lines = []
    for kind in before:
        lines += [f"- {kind}: {x}" for x in before[kind] if x not in after[kind]]
        lines += [f"+ {kind}: {x}" for x in after[kind] if x not in before[kind]]
    return lines


# --- fixture and test ---------------------------------------------------------------


@dataclass
class Run:
    """One test's lab network, names, and the host as it was before the container."""

    lab: Lab
    net: Net
    name: str
    image: str
    ours: Ours


STORE_LOCK = PODMAN_RUN / "store.lock"
"""Held (flock(2)) while a test uses the podman store: another run of the suite on the same
machine would otherwise add and remove podman's mounts and processes in the middle of
this test's before-and-after comparison of the host."""
STORE_LOCK_WAIT_S = 300.0
"""How long a test waits for another run's container test to finish, in seconds (that
takes about 2 minutes on a busy machine)."""


@contextlib.contextmanager
def store_lock() -> Iterator[None]:
    """Hold ``STORE_LOCK`` exclusively for the block, waiting for it at most
    ``STORE_LOCK_WAIT_S`` seconds.

    Raises:
        pytest.fail.Exception: another run held the store for longer than that.
    """
    PODMAN_RUN.mkdir(parents=True, exist_ok=True)
    with open(STORE_LOCK, "a") as handle:
        deadline = time.monotonic() + STORE_LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test run held {STORE_LOCK} for {STORE_LOCK_WAIT_S} s")
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture
def container_run(tmp_path: Path) -> Iterator[Run]:
    """Yield the lab and names; afterwards remove the container, image, lab, and check they went.

    The podman store is this test's alone meanwhile (``store_lock``)."""
    missing = [f"{cmd} ({pkg})" for cmd, pkg in TOOLS.items() if not shutil.which(cmd)]
    assert not missing, f"not installed: {', '.join(missing)}; see tests/apt-packages.txt"
    with store_lock():
        yield from _container_run(tmp_path)


def _container_run(tmp_path: Path) -> Iterator[Run]:
    """``container_run`` once the store is held."""
    lab = Lab(tmp_path)
    name = f"vend-test-{lab.tag}"
    image = f"localhost/vend-test:{lab.tag}"
    ours = Ours(lab.tag, tmp_path, [name, str(PODMAN_ROOT), str(PODMAN_RUN), str(NETPLUMB_STATE)])
    errors: list[str] = []
    try:
        net = build_net(lab)
        yield Run(lab, net, name, image, ours)
    finally:
        # Normally all gone already; after a failure, this removes what is left.
        for args in (("rm", "--force", "--time=5", name), ("rmi", "--force", image)):
            podman(*args, check=False)
        with contextlib.suppress(OSError, ValueError):
            for state in NETPLUMB_STATE.glob("pid-*"):  # supervisors of a killed container
                config = json.loads((state / "config.json").read_text())
                if config.get("parent", "").startswith(lab.tag):
                    subprocess.run(
                        [str(NETPLUMB), "down", "--pid", str(config["ref"])], check=False
                    )
        errors += lab.close()
        if podman("container", "exists", name, check=False).returncode == 0:
            errors.append(f"container {name} still exists")
        if podman("image", "exists", image, check=False).returncode == 0:
            errors.append(f"image {image} still exists")
        left = [
            ns for ns in command_lines("ip", "netns", "list") if ns.startswith(f"vdt{lab.tag}-")
        ]
        if errors or left:
            pytest.fail(f"teardown incomplete: {errors} {left}")


@pytest.mark.timeout(900)  # 2 minutes making the base image first, + STORE_LOCK_WAIT_S
def test_image_builds_runs_confined_on_a_dhcp_address_and_leaves_nothing(
    container_run: Run, tmp_path: Path
) -> None:
    """The image builds from the tree, runs confined, serves at its DHCP address, and leaves nothing."""
    lab, net, name, image = (
        container_run.lab,
        container_run.net,
        container_run.name,
        container_run.image,
    )
    before = host_snapshot(container_run.ours)
    base = build_image(image, tmp_path)

    # Run confined: no network, read-only root and content, no capabilities, UID 10001.
    podman(
        "run",
        "--detach",
        f"--name={name}",
        f"--hostname={RESERVED_ID}",
        "--network=none",
        "--read-only",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        *ULIMITS,
        *(f"--volume={source}:{target}:ro" for target, source in CONTENT.items()),
        f"--env=VEND_MOUNTS={json.dumps(list(CONTENT))}",
        image,
    )
    pid = container_pid(name)
    status = proc_status(pid)
    assert status["Uid"].split() == [str(VEND_UID)] * 4
    assert status["Gid"].split() == [str(VEND_UID)] * 4
    assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == 0
    assert status["NoNewPrivs"] == "1"
    mounts = mount_options(pid)
    assert all("ro" in mounts[point] for point in ["/", *CONTENT])
    links = command_lines("nsenter", f"--net=/proc/{pid}/ns/net", "ip", "-o", "link")
    assert [line.split(":")[1].strip() for line in links] == ["lo"]

    # Plumbed by netplumb: the reserved address by DHCP, served to a client elsewhere.
    first = plumb(lab, net, pid)
    assert first.address == f"{RESERVED_ADDRESS}/24"
    client_id = ":".join(f"{b:02x}" for b in b"\0" + RESERVED_ID.encode())
    assert f" {RESERVED_ADDRESS} {RESERVED_ID} {client_id}" in read(net.leases)
    fetch_files(lab, net.fw, RESERVED_ADDRESS, name)
    # vend writes its access log in batches, at most 0.1 s after each request.
    (line,) = wait_until(
        lambda: [x for x in podman("logs", name).stdout.splitlines() if "GET /about.html " in x],
        10,
        "the access log line of the fetch",
    )
    assert line.startswith(f"{FW_ADDRESS} "), f"vend should see the client's own address: {line}"
    health = podman("healthcheck", "run", name, check=False)
    assert health.returncode == 0, health.stdout + health.stderr

    # Restarted: netplumb's supervisor goes with the old namespace; re-plumbed, same address.
    podman("restart", "--time=10", name)
    wait_until(lambda: gone(first.pids), 10, "netplumb's supervisor and udhcpc exit")
    new_pid = container_pid(name)
    assert new_pid != pid
    second = plumb(lab, net, new_pid)
    assert second.address == f"{RESERVED_ADDRESS}/24"
    fetch_files(lab, net.fw, RESERVED_ADDRESS, name)

    # Removed: netplumb stops by itself, the lease is released, the host is as before.
    podman("stop", "--time=10", name)
    podman("rm", name)
    wait_until(lambda: gone(second.pids), 10, "netplumb's supervisor and udhcpc exit")
    wait_until(lambda: read(net.dnsmasq_log).count("DHCPRELEASE") >= 2, 10, "both leases released")
    podman("rmi", image)
    assert sorted(lab.links(net.host)) == sorted(["lo", net.uplink])
    after = host_snapshot(container_run.ours)
    images = "podman containers and images"  # the base image may be new: it is kept
    after[images] = [x for x in after[images] if x in before[images] or not x.endswith(base)]
    assert differences(before, after) == []
