"""podman's own macvlan network with DHCP IPAM, on VLAN 500: the vend image seen on the wire.

The lab, all in network namespaces this test creates (VLAN 500 is 10.231.50.0/24,
the client's subnet 10.231.51.0/24, routed by the router without NAT)::

    client 10.231.51.2 --veth-- router 10.231.51.1
                                router 10.231.50.1 on its VLAN 500 side (dnsmasq: DHCP)
                                  | trunk
    untagged (udhcpc) --------- wire: bridge (the switch); tcpdump -e on the host's port
                                  | trunk
                                host: its VLAN 500 side is the parent of podman's network
                                  \\__ macvlan eth0 of each container (podman's CNI netns)

"host" stands in for the machine's own network: podman and the CNI ``dhcp``
plugin's daemon run in it (``nsenter --net``), so podman's macvlan plugin finds
its parent there and nothing is added to the machine's own network namespace.
VLAN 500 is the kernel's ``vlan`` link (``<trunk>.500``) on both trunk ends
where the kernel can make one (8021q), else deploy/container/vlan500.bpf.c
(tc eBPF: push 500 on egress; drop all but 500, then pop, on ingress) on both
trunk ends, as in test_vlan_tagging_ebpf.py.

What it checks, with the image tests/deploy/test_container_run.py builds, run
with the same confinement:

1. ``podman network create -d macvlan -o parent=... --ipam-driver dhcp``; two
   containers started with ``--mac-address`` each get the address dnsmasq reserves
   for that MAC (``dhcp-host=MAC,IP``), seen by podman, inside the container, and
   in dnsmasq's lease file.
2. A client on the other subnet fetches files byte for byte from each; vend's
   access log names the client's own address (no NAT).
3. An untagged client on the same switch gets no lease (its requests are on the
   wire; dnsmasq never sees them).
4. ``podman restart`` keeps the address; vend serves there again.
5. ``podman rm``: dnsmasq logs DHCPRELEASE for the address and MAC and drops the lease.
6. ``tcpdump -e`` on the host's trunk port: every frame is tagged VLAN 500, except
   the untagged client's own.
7. The host compared before and after (links, addresses, routes, namespaces,
   nftables, iptables, mounts, processes, cgroups, podman's containers, images and
   networks, CNI state): nothing differs.

It fails, never skips, when a tool is missing. The network's configuration lives in
this test's own directory (``--network-config-dir``), and its ``dhcp`` daemon
listens on a socket there (the CNI option ``daemonSocketPath``), so other podman
users of the machine, and their ``/run/cni/dhcp.sock``, are untouched.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.netlab import SAMPLE_MOUNT, Lab, needs_root, stop_group
from tests.deploy.test_container_run import (
    CONTENT,
    ULIMITS,
    VEND_UID,
    Ours,
    build_image,
    command_lines,
    container_pid,
    differences,
    fetch_files,
    host_snapshot,
    podman,
    proc_status,
)
from tests.deploy.test_netplumb import read
from tests.deploy.test_vlan_tagging_ebpf import compile_object, dhcp, tag
from tests.support import free_port, wait_until

VLAN_ID = 500
ROUTER_VLAN = "10.231.50.1"
ROUTER_CLIENT = "10.231.51.1"
CLIENT = "10.231.51.2"
#: Each container's role, MAC address (pinned with --mac-address) and the address
#: dnsmasq reserves for that MAC; outside the dynamic range, so only the reservation gives it.
RESERVED = {
    "web1": ("02:19:00:00:05:01", "10.231.50.41"),
    "web2": ("02:19:00:00:05:02", "10.231.50.42"),
}
CNI_PLUGINS = Path("/usr/lib/cni")
#: Debian packages providing what this test runs (tests/apt-packages.txt).
TOOLS = {
    "podman": "podman",
    "runc": "runc",
    "mmdebstrap": "mmdebstrap",
    "dnsmasq": "dnsmasq-base",
    "tcpdump": "tcpdump",
    "clang": "clang",
    "ip": "iproute2",
    "tc": "iproute2",
    "nsenter": "util-linux",
    "busybox": "busybox",
    "curl": "curl",
    "nft": "nftables",
    "iptables-save": "iptables",
    "ip6tables-save": "iptables",
}
FILES_NEEDED = {
    CNI_PLUGINS / "macvlan": "containernetworking-plugins",
    CNI_PLUGINS / "dhcp": "containernetworking-plugins",
    Path("/usr/include/bpf/bpf_helpers.h"): "libbpf-dev",
}
#: Where the machine's CNI plugins keep state (results cache, host-local's address
#: records, the dhcp daemon's default socket).
CNI_STATE = [Path("/var/lib/cni"), Path("/run/cni")]
#: Folders under CNI_STATE that CNI makes on its first use on a host and never removes.
CNI_KEPT_FOLDERS = frozenset({Path("/var/lib/cni/results")})
#: Forwarding switches a CNI bridge network turns on (``isGateway``) and never turns off.
FORWARDING = ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"]

pytestmark = [pytest.mark.netns, pytest.mark.podman, needs_root]


def missing_tools() -> list[str]:
    """Return ``command (package)`` for each command or file this test needs that is missing."""
    missing = [f"{cmd} ({pkg})" for cmd, pkg in TOOLS.items() if not shutil.which(cmd)]
    return missing + [f"{path} ({pkg})" for path, pkg in FILES_NEEDED.items() if not path.exists()]


def vlan_side(lab: Lab, ns: str, trunk: str, mode: str | None) -> tuple[str, str]:
    """Make VLAN 500's side of ``trunk`` in ``ns``; return (its interface, "8021q" or "ebpf").

    Args:
        lab: the lab ``ns`` belongs to.
        ns: the namespace holding ``trunk``.
        trunk: the interface that carries VLAN 500 tagged.
        mode: "8021q" or "ebpf" to insist on one (the other trunk end's), None to detect:
            the kernel's ``vlan`` link ``<trunk>.500`` where it can make one, else
            vlan500.bpf.c loaded on ``trunk`` itself.

    Raises:
        AssertionError: ``mode`` is "8021q" and the kernel cannot make the vlan link.
        subprocess.CalledProcessError: clang or tc failed.
    """
    if mode != "ebpf":
        sub = f"{trunk}.{VLAN_ID}"
        made = subprocess.run(
            ["ip", "-n", ns, "link", "add", "link", trunk, "name", sub,
             "type", "vlan", "id", str(VLAN_ID)],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if made.returncode == 0:
            lab.ip(ns, "link", "set", sub, "up")
            return sub, "8021q"
        assert mode is None, f"the other trunk end has a vlan link, this one not: {made.stderr}"
    obj = lab.tmp / f"vlan{VLAN_ID}.bpf.o"
    if not obj.exists():
        obj = compile_object(lab.tmp, VLAN_ID)
    tag(lab, ns, trunk, obj)
    return trunk, "ebpf"


def host_state(ours: Ours, netdir: Path | None = None) -> dict[str, list[str]]:
    """Describe the host: host_snapshot plus podman's networks, CNI state and IP forwarding.

    Args:
        ours: what tells this test's namespaces, mounts and processes from others'.
        netdir: a podman network config directory of the test's own, whose files are
            listed too (``cni.lock``, podman's lock for the directory, left out).

    Returns:
        One sorted list of lines per kind of thing; equal descriptions mean nothing was left.
    """
    shot = host_snapshot(ours)
    networks = podman("network", "ls", "--format", "{{.Name}} {{.Driver}}").stdout.split("\n")
    if netdir is not None and netdir.is_dir():
        networks += [f"{netdir}: {p.name}" for p in netdir.iterdir() if p.name != "cni.lock"]
    shot["podman networks"] = sorted(n for n in networks if n)
    # CNI makes its own state folders on its first use on a host and keeps them: those
    # are not left behind by a test; anything else under CNI_STATE is.
    shot["CNI state"] = sorted(
        str(p)
        for d in CNI_STATE
        if d.exists()
        for p in d.rglob("*")
        if not (p in CNI_KEPT_FOLDERS and p.is_dir())
    )
    shot["sysctl"] = [f"{k} {(Path('/proc/sys') / k).read_text().strip()}" for k in FORWARDING]
    return shot


@dataclass(frozen=True)
class Image:
    """vend's image, built for this module's tests.

    Attributes:
        name: the image's name, ``localhost/vend-test:<tag>``.
        base: the base image it was built on (kept between runs).
    """

    name: str
    base: str


@pytest.fixture(scope="module")
def vend_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    """Build vend's image from the working tree once; remove it afterwards, failing if it stays."""
    missing = missing_tools()
    assert not missing, f"not installed: {', '.join(missing)}; see tests/apt-packages.txt"
    name = f"localhost/vend-test:{secrets.token_hex(3)}"
    try:
        yield Image(name, build_image(name, tmp_path_factory.mktemp("image")))
    finally:
        podman("rmi", "--force", name, check=False)
        if podman("image", "exists", name, check=False).returncode == 0:
            pytest.fail(f"image {name} still exists")


class VlanLab:
    """The lab, podman's network and the containers of one test, and their removal.

    ``__init__`` only names things and describes the host (the "before" snapshot);
    ``build`` makes them; ``finish`` removes them all, once, and compares the host
    with before.

    Args:
        tmp: the test's temporary directory (logs, leases, capture, network config).
        image: the name of vend's image to run.
    """

    def __init__(self, tmp: Path, image: str) -> None:
        self.lab = Lab(tmp)
        self.tmp = tmp
        self.names = {role: f"vend-test-{self.lab.tag}-{role}" for role in RESERVED}
        self.image = image
        self.network = f"vend-test-{self.lab.tag}-vlan{VLAN_ID}"
        self.netdir = tmp / "net.d"
        self.socket = tmp / "cni-dhcp.sock"
        self.leases = tmp / "dnsmasq.leases"
        self.dnsmasq_log = tmp / "dnsmasq.log"
        self.pcap = tmp / "trunk.pcap"
        self.mode = ""
        self.host = ""  # the lab's host namespace, once made
        self.capture: subprocess.Popen[bytes] | None = None
        # Processes are ours when their command line names our containers or tmp
        # (dnsmasq, tcpdump, the dhcp daemon, podman and conmon for our containers).
        self.ours = Ours(self.lab.tag, tmp, [*self.names.values(), str(tmp)], containers=set())
        self.before = self.snapshot()
        self.problems: list[str] | None = None
        self.netdir.mkdir()

    # --- the host, before and after ---------------------------------------------

    def snapshot(self) -> dict[str, list[str]]:
        """Describe the host (host_state), this lab's network config directory included."""
        return host_state(self.ours, self.netdir)

    def finish(self) -> list[str]:
        """Remove containers, network and lab (once); return what failed or was left.

        Returns:
            Errors of the removal steps, then ``+ kind: line`` / ``- kind: line`` for
            every difference between the host now and before ``build``; [] when
            everything went.
        """
        if self.problems is not None:
            return self.problems
        errors = []
        for name in self.names.values():
            self.podman("rm", "--force", "--time=10", name, check=False)
        self.podman("network", "rm", "--force", self.network, check=False)
        errors += self.lab.close()
        self.problems = errors + differences(self.before, self.snapshot())
        return self.problems

    # --- building it ----------------------------------------------------------------

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run podman in the lab's host namespace with this test's network config directory."""
        return podman(
            f"--network-config-dir={self.netdir}", *args, netns=self.host or None, check=check
        )

    def build(self) -> None:
        """Build the lab, the capture, dnsmasq, the dhcp daemon and podman's network.

        Raises:
            AssertionError: a step did not complete (within its bound) or a tool failed.
        """
        lab = self.lab
        roles = ("wire", "router", "host", "client", "untag")
        self.wire, self.router, self.host, self.client, self.untag = map(lab.netns, roles)
        for ns in (self.wire, self.router, self.host, self.client, self.untag):
            # No IPv6 chatter of the lab's own: only the containers' frames are on the trunk.
            lab.run(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1")  # fmt: skip
        # The switch, a plain one: with multicast snooping, a Linux bridge joins the
        # all-snoopers group and sends IGMP reports of its own onto every port.
        lab.ip(self.wire, "link", "add", "name", "sw", "type", "bridge", "mcast_snooping", "0")
        lab.ip(self.wire, "link", "set", "sw", "up")
        ends = {}
        for role, ns in (("r", self.router), ("h", self.host), ("u", self.untag)):
            port, end = lab.ifname(f"p{role}"), lab.ifname(f"{role}t")
            lab.veth(self.wire, port, ns, end)
            lab.ip(self.wire, "link", "set", port, "master", "sw")
            ends[role] = (port, end)
        self.host_port, self.host_trunk = ends["h"]
        self.untag_dev = ends["u"][1]
        self.parent, self.mode = vlan_side(lab, self.host, self.host_trunk, None)
        router_vlan, _ = vlan_side(lab, self.router, ends["r"][1], self.mode)
        self.router_vlan = router_vlan
        lab.ip(self.router, "addr", "add", f"{ROUTER_VLAN}/24", "dev", router_vlan)
        rc, cl = lab.ifname("rc"), lab.ifname("cl")
        lab.veth(self.router, rc, self.client, cl)
        lab.ip(self.router, "addr", "add", f"{ROUTER_CLIENT}/24", "dev", rc)
        lab.ip(self.client, "addr", "add", f"{CLIENT}/24", "dev", cl)
        lab.ip(self.client, "route", "add", "default", "via", ROUTER_CLIENT)
        lab.run(self.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")

        tlog = self.tmp / "tcpdump.log"
        self.capture = lab.spawn(["ip", "netns", "exec", self.wire, "tcpdump", "-i",
                                  self.host_port, "-n", "-U", "-w", str(self.pcap)], tlog)  # fmt: skip
        wait_until(lambda: "listening on" in read(tlog) or self.capture.poll() is not None,
                   30, "tcpdump listens")  # fmt: skip
        assert self.capture.poll() is None, read(tlog)

        dnsmasq = lab.spawn(
            ["ip", "netns", "exec", self.router, "dnsmasq", "--keep-in-foreground",
             "--conf-file=/dev/null", "--port=0", f"--interface={router_vlan}",
             "--bind-interfaces", "--user=root", "--no-ping", "--log-dhcp",
             "--dhcp-range=10.231.50.100,10.231.50.150,255.255.255.0,2m",
             f"--dhcp-option=option:router,{ROUTER_VLAN}",
             *(f"--dhcp-host={mac},{ip}" for mac, ip in RESERVED.values()),
             f"--dhcp-leasefile={self.leases}", f"--log-facility={self.dnsmasq_log}",
             f"--pid-file={self.tmp / 'dnsmasq.pid'}"],
            self.tmp / "dnsmasq.out",
        )  # fmt: skip
        wait_until(lambda: "DHCP, IP range" in read(self.dnsmasq_log) or dnsmasq.poll() is not None,
                   30, "dnsmasq serves DHCP")  # fmt: skip
        assert dnsmasq.poll() is None, read(self.tmp / "dnsmasq.out")

        # The CNI dhcp plugin's daemon (systemd's cni-dhcp.socket where systemd is PID 1).
        dlog = self.tmp / "cni-dhcp.log"
        daemon = lab.spawn(["nsenter", f"--net=/run/netns/{self.host}", str(CNI_PLUGINS / "dhcp"),
                            "daemon", "-socketpath", str(self.socket)], dlog)  # fmt: skip
        wait_until(lambda: self.socket.is_socket() or daemon.poll() is not None,
                   30, "the CNI dhcp daemon listens")  # fmt: skip
        assert daemon.poll() is None, read(dlog)

        self.podman("network", "create", "--driver=macvlan", f"--opt=parent={self.parent}",
                    "--ipam-driver=dhcp", self.network)  # fmt: skip
        conflist = self.netdir / f"{self.network}.conflist"
        config = json.loads(conflist.read_text())
        (plugin,) = config["plugins"]
        assert (plugin["type"], plugin["master"], plugin["ipam"]) == (
            "macvlan",
            self.parent,
            {"type": "dhcp"},
        ), config
        plugin["ipam"]["daemonSocketPath"] = str(self.socket)
        conflist.write_text(json.dumps(config, indent=2))

    # --- looking at it ---------------------------------------------------------------

    def run_container(self, role: str) -> None:
        """Start the image as ``role`` on the VLAN network with its reserved MAC, confined."""
        mac, _ = RESERVED[role]
        run = self.podman(
            "run", "--detach", f"--name={self.names[role]}", f"--hostname=vend-{role}",
            f"--network={self.network}", f"--mac-address={mac}",
            "--read-only", "--cap-drop=all", "--security-opt=no-new-privileges", *ULIMITS,
            *(f"--volume={source}:{target}:ro" for target, source in CONTENT.items()),
            f"--env=VEND_MOUNTS={json.dumps(list(CONTENT))}", self.image,
        )  # fmt: skip
        assert self.ours.containers is not None
        self.ours.containers.add(run.stdout.strip())

    def check_address(self, role: str) -> int:
        """Check ``role`` has its reserved address (podman, its netns, dnsmasq); return its PID.

        Raises:
            AssertionError: the address, MAC, default route or lease differ from the reservation.
        """
        mac, address = RESERVED[role]
        name = self.names[role]
        wait_until(lambda: f" {mac} {address} " in read(self.leases), 30,
                   f"dnsmasq's lease for {mac}")  # fmt: skip
        networks = json.loads(
            podman("inspect", "--format", "{{json .NetworkSettings.Networks}}", name).stdout
        )
        seen = networks[self.network]
        assert (seen["IPAddress"], seen["IPPrefixLen"], seen["MacAddress"]) == (address, 24, mac)
        pid = container_pid(name)
        inside: list[dict[str, Any]] = json.loads(
            self.nsexec(pid, "ip", "-j", "addr", "show", "dev", "eth0")
        )
        assert inside[0]["address"] == mac
        ipv4 = [
            (a["local"], a["prefixlen"]) for a in inside[0]["addr_info"] if a["family"] == "inet"
        ]
        assert ipv4 == [(address, 24)], inside
        routes = json.loads(self.nsexec(pid, "ip", "-j", "-4", "route", "show", "default"))
        assert [r["gateway"] for r in routes] == [ROUTER_VLAN], routes
        status = proc_status(pid)
        assert status["Uid"].split() == [str(VEND_UID)] * 4
        assert int(status["CapEff"], 16) == 0 and status["NoNewPrivs"] == "1"
        return pid

    @staticmethod
    def nsexec(pid: int, *cmd: str) -> str:
        """Run ``cmd`` in the network namespace of process ``pid``; return its stdout."""
        return "\n".join(command_lines("nsenter", f"--net=/proc/{pid}/ns/net", *cmd))

    def releases(self, role: str) -> int:
        """Return how many DHCPRELEASE lines dnsmasq logged for ``role``'s address and MAC."""
        mac, address = RESERVED[role]
        return sum(
            1
            for line in read(self.dnsmasq_log).splitlines()
            if "DHCPRELEASE" in line and f" {address} {mac}" in line
        )

    def mac(self, ns: str, dev: str) -> str:
        """Return the MAC address of ``dev`` in ``ns``."""
        return self.lab.ip(ns, "-br", "link", "show", dev).split()[2]


@pytest.fixture
def vlan_lab(tmp_path: Path, vend_image: Image) -> Iterator[VlanLab]:
    """Yield a built VlanLab; afterwards remove everything and fail if anything was left."""
    made = VlanLab(tmp_path, vend_image.name)
    try:
        made.build()
        yield made
    finally:
        problems = made.finish()
        if problems:
            pytest.fail("teardown incomplete or host changed:\n" + "\n".join(problems))


@pytest.mark.timeout(600)  # about 3 minutes when the base image must be made first
def test_containers_get_reserved_vlan_500_leases_serve_untranslated_and_leave_nothing(
    vlan_lab: VlanLab, record_property: Any
) -> None:
    """Reserved leases on tagged VLAN 500, served unNATed, kept on restart, released on rm."""
    vl, lab = vlan_lab, vlan_lab.lab
    record_property("vlan", vl.mode)
    pids = {}
    for role in RESERVED:
        vl.run_container(role)
        pids[role] = vl.check_address(role)

    # A client on the other subnet, routed without NAT: the bytes, and its own address logged.
    for role, (_, address) in RESERVED.items():
        fetch_files(lab, vl.client, address, vl.names[role])
        lines = wait_until(
            lambda name=vl.names[role]: [  # type: ignore[misc]
                x for x in podman("logs", name).stdout.splitlines() if "GET /about.html " in x
            ],
            10,
            f"the access log line of the fetch from {role}",
        )
        assert all(x.startswith(f"{CLIENT} ") for x in lines), lines

    # An untagged client on the same switch: its requests go unanswered.
    untag_mac = vl.mac(vl.untag, vl.untag_dev)
    refused = dhcp(lab, vl.untag, vl.untag_dev)
    assert refused.returncode != 0, f"the untagged client got a lease: {refused.stdout}"
    assert untag_mac not in read(vl.dnsmasq_log) + read(vl.leases)

    # Restarted: a new process and namespace, the same address, served again.
    vl.podman("restart", "--time=10", vl.names["web1"])
    assert vl.check_address("web1") != pids["web1"]
    fetch_files(lab, vl.client, RESERVED["web1"][1], vl.names["web1"])

    # Removed: the lease is released (dnsmasq logs it and drops it).
    for role, (mac, address) in RESERVED.items():
        released = vl.releases(role)
        vl.podman("stop", "--time=10", vl.names[role])
        vl.podman("rm", vl.names[role])
        wait_until(lambda r=role, n=released: vl.releases(r) > n, 10,  # type: ignore[misc]
                   f"DHCPRELEASE of {address} by {mac}")  # fmt: skip
        wait_until(lambda m=mac: m not in read(vl.leases), 10,  # type: ignore[misc]
                   f"the lease of {mac} dropped")  # fmt: skip
    assert sorted(lab.links(vl.host)) == sorted({"lo", vl.host_trunk, vl.parent})

    # On the trunk: every frame VLAN 500 but the untagged client's own.
    assert vl.capture is not None
    stop_group(vl.capture)
    frames = command_lines("tcpdump", "-r", str(vl.pcap), "-e", "-n")
    untagged = [f for f in frames if untag_mac in f]
    assert any("BOOTP/DHCP, Request" in f for f in untagged), frames
    assert not [f for f in untagged if "vlan" in f], untagged
    assert [f for f in frames if untag_mac not in f and f"vlan {VLAN_ID}," not in f] == []
    router_mac = vl.mac(vl.router, vl.router_vlan)
    assert any(router_mac in f and "BOOTP/DHCP, Reply" in f for f in frames), frames
    for mac, address in RESERVED.values():
        assert any(f"Request from {mac}" in f for f in frames), mac
        assert any(f"{address}.8000 >" in f for f in frames), address

    assert vl.finish() == []


@pytest.mark.timeout(300)
def test_quick_look_on_the_host_network_leaves_nothing(vend_image: Image, tmp_path: Path) -> None:
    """deploy/container/README.md's quick look (``--network host``) serves, and leaves nothing.

    On the machine's own network namespace, on a loopback port: no CNI network is
    set up, so no bridge, no firewall chain, no forwarding switch is left (unlike
    ``podman run -p`` on the default network, which the README says how to undo).
    """
    tag = secrets.token_hex(3)
    name = f"vend-test-{tag}-look"
    ours = Ours(tag, tmp_path, [name], containers=set())
    before = host_state(ours)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        run = podman("run", "--detach", "--rm", f"--name={name}", "--network=host",
               "--env=VEND_HOST=127.0.0.1", f"--env=VEND_PORT={port}", *ULIMITS,
               f"--volume={SAMPLE_MOUNT}:/srv/vend/server1:ro",
               '--env=VEND_MOUNTS=["/srv/vend/server1"]', vend_image.name)  # fmt: skip
        assert ours.containers is not None
        ours.containers.add(run.stdout.strip())

        def health() -> bool:
            try:
                answer = httpx.get(f"{base}/.well-known/vend/health", timeout=2, trust_env=False)
                return answer.status_code == 200
            except httpx.TransportError:
                return False

        wait_until(health, 30, f"vend answers at {base}", poll_s=0.2)
        got = httpx.get(f"{base}/about.html", timeout=10, trust_env=False)  # no proxy
        assert (got.status_code, got.content) == (200, (SAMPLE_MOUNT / "about.html").read_bytes())
        podman("stop", "--time=10", name)
        wait_until(
            lambda: podman("container", "exists", name, check=False).returncode == 1,
            30,
            "--rm removes the stopped container",
        )
    finally:
        podman("rm", "--force", "--time=5", name, check=False)
    assert differences(before, host_state(ours)) == []
