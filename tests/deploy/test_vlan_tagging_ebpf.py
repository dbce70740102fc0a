"""deploy/container/vlan500.bpf.c: tc eBPF tags a trunk for VLAN 500 and drops everything else.

The kernel here has neither 8021q nor tc's act_vlan, so the stand-in for
``eth1.500`` is the eBPF object, compiled by clang from the repository's source
in the fixture. The lab, in namespaces this test creates::

    router (dnsmasq, trunk tagged 500) --- wire (bridge: the switch) --- tagged  (trunk tagged 500)
                                               |--- untagged (plain veth)
                                               |--- other    (trunk tagged 600)

It checks on the wire (``tcpdump -e`` on the router's switch port) that the
tagged client's DHCP exchange is all VLAN 500 and gets a lease, and that the
untagged and VLAN 600 clients' requests reach the wire but get no lease.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.deploy.netlab import DEPLOY, Lab, needs_root, stop_group

SOURCE = DEPLOY / "container" / "vlan500.bpf.c"
ROUTER = "10.231.60.1"
TOOLS = {"clang": "clang", "tc": "iproute2", "tcpdump": "tcpdump", "dnsmasq": "dnsmasq-base"}

pytestmark = [pytest.mark.netns, needs_root]


def compile_object(tmp: Path, vlan_id: int) -> Path:
    """Compile vlan500.bpf.c for ``vlan_id`` with clang; return the object file's path."""
    out = tmp / f"vlan{vlan_id}.bpf.o"
    subprocess.run(
        ["clang", "-O2", "-Wall", "-target", "bpf",
         f"-I/usr/include/{platform.machine()}-linux-gnu", f"-DVLAN_ID={vlan_id}",
         "-c", str(SOURCE), "-o", str(out)],
        check=True, timeout=120,
    )  # fmt: skip
    return out


def tag(lab: Lab, ns: str, dev: str, obj: Path) -> None:
    """Load the egress (push) and ingress (drop, pop) programs of ``obj`` on ``dev`` in ``ns``."""
    lab.run(ns, "tc", "qdisc", "add", "dev", dev, "clsact")
    for hook in ("egress", "ingress"):
        lab.run(ns, "tc", "filter", "add", "dev", dev, hook, "bpf", "da", "obj", str(obj),
                "sec", f"tc/{hook}")  # fmt: skip


def dhcp(lab: Lab, ns: str, dev: str) -> subprocess.CompletedProcess[str]:
    """Ask for a lease on ``dev`` with BusyBox udhcpc (at most 4 tries, 2 s apart)."""
    return lab.run(ns, "busybox", "udhcpc", "-i", dev, "-n", "-q", "-f", "-t", "4", "-T", "2",
                   "-s", "/bin/true", check=False, timeout=60)  # fmt: skip


def test_only_vlan_500_frames_cross_the_trunk(lab: Lab) -> None:
    """Tagged client: every frame VLAN 500, lease given; untagged and VLAN 600: no lease."""
    missing = [f"{c} ({p})" for c, p in TOOLS.items() if not shutil.which(c)]
    assert not missing, f"not installed: {', '.join(missing)}; see tests/apt-packages.txt"
    v500, v600 = compile_object(lab.tmp, 500), compile_object(lab.tmp, 600)
    wire = lab.netns("wire")
    lab.run(wire, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1")  # fmt: skip
    lab.ip(wire, "link", "add", "name", "sw", "type", "bridge")
    lab.ip(wire, "link", "set", "sw", "up")
    ends = {}
    for role in ("router", "tagged", "untag", "other"):
        ns = lab.netns(role)
        port, end = lab.ifname(f"p{role[:3]}"), lab.ifname(f"t{role[:3]}")
        lab.veth(wire, port, ns, end)
        lab.ip(wire, "link", "set", port, "master", "sw")
        ends[role] = (ns, end, port)
    router, rdev, rport = ends["router"]
    tag(lab, router, rdev, v500)
    tag(lab, ends["tagged"][0], ends["tagged"][1], v500)
    tag(lab, ends["other"][0], ends["other"][1], v600)
    lab.ip(router, "addr", "add", f"{ROUTER}/24", "dev", rdev)
    leases, dlog = lab.tmp / "leases", lab.tmp / "dnsmasq.log"
    leases.touch()
    lab.spawn(["ip", "netns", "exec", router, "dnsmasq", "--keep-in-foreground", "--port=0",
               f"--interface={rdev}", "--bind-interfaces", "--dhcp-authoritative",
               "--dhcp-range=10.231.60.100,10.231.60.150,255.255.255.0,2m",
               f"--dhcp-leasefile={leases}", f"--log-facility={dlog}", "--log-dhcp",
               f"--pid-file={lab.tmp / 'dnsmasq.pid'}"], lab.tmp / "dnsmasq.out")  # fmt: skip
    pcap, tlog = lab.tmp / "trunk.pcap", lab.tmp / "tcpdump.log"
    capture = lab.spawn(["ip", "netns", "exec", wire, "tcpdump", "-i", rport, "-n", "-U",
                         "-w", str(pcap)], tlog)  # fmt: skip
    deadline = time.monotonic() + 30
    while "listening on" not in tlog.read_text() or "DHCP, sockets bound" not in (
        dlog.read_text() if dlog.exists() else ""
    ):
        assert capture.poll() is None and time.monotonic() < deadline, tlog.read_text()
        time.sleep(0.05)

    got = dhcp(lab, ends["tagged"][0], ends["tagged"][1])
    assert got.returncode == 0, got.stdout + got.stderr
    for role in ("untag", "other"):
        refused = dhcp(lab, ends[role][0], ends[role][1])
        assert refused.returncode != 0, f"{role} got a lease: {refused.stdout}"
    stop_group(capture)
    frames = subprocess.run(["tcpdump", "-r", str(pcap), "-e", "-n"], capture_output=True,
                            text=True, check=True, timeout=30).stdout.splitlines()  # fmt: skip
    macs = {
        role: lab.ip(ns, "-br", "link", "show", dev).split()[2]
        for role, (ns, dev, _) in ends.items()
    }

    def of(role: str) -> list[str]:
        """Return the captured frames that carry ``role``'s MAC address."""
        return [f for f in frames if macs[role] in f]

    assert any("BOOTP/DHCP, Request" in f for f in of("tagged")), frames
    assert any("BOOTP/DHCP, Reply" in f for f in of("router")), frames
    for frame in of("tagged") + of("router"):
        assert "vlan 500," in frame, frame
    assert any("BOOTP/DHCP, Request" in f and "vlan" not in f for f in of("untag")), frames
    assert any("vlan 600," in f and "BOOTP/DHCP" in f for f in of("other")), frames
    lease_macs = [line.split()[1] for line in leases.read_text().splitlines()]
    assert lease_macs == [macs["tagged"]], lease_macs
    served = dlog.read_text()
    assert macs["untag"] not in served and macs["other"] not in served
