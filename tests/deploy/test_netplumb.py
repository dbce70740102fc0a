"""deploy/netplumb: a namespace gets its own DHCP-leased address on a host network, and loses it.

The lab, all inside namespaces this test creates (no traffic leaves them)::

    fw  10.231.2.2 --veth-- router 10.231.2.1 | br 10.231.1.1 (dnsmasq DHCP)
                                                 |
                                               veth
                                                 |
              host: uplink (the parent, standing in for eth1.500)
                      \\__ macvlan "eth1", created by netplumb inside ctr

The kernel here has no 802.1q module, so the parent is an untagged veth on a
bridge instead of a VLAN sub-interface; macvlan behaves the same on either.
The router forwards between the two subnets without NAT, so vend in ``ctr``
sees the firewall's own address.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.netlab import (
    DEPLOY,
    SAMPLE_MOUNT,
    Lab,
    needs_root,
    vend_command,
    write_vend_config,
)
from tests.support import wait_until

NETPLUMB = DEPLOY / "netplumb"
RESERVED_ID = "vend-web1"
RESERVED_ADDRESS = "10.231.1.123"  # outside the dynamic range: only the reservation gives it
ROUTER_LAN = "10.231.1.1"
FW_ADDRESS = "10.231.2.2"
VEND_PORT = 8080

pytestmark = [pytest.mark.netns, needs_root]


@dataclass
class Net:
    """The namespaces and names of one lab network."""

    router: str
    host: str
    ctr: str
    fw: str
    uplink: str
    state_dir: Path
    dnsmasq_log: Path
    leases: Path


def build_net(lab: Lab, *, dhcp: bool = True) -> Net:
    """Create router, host, container and firewall namespaces; start dnsmasq when ``dhcp``."""
    router, host, ctr, fw = (lab.netns(r) for r in ("router", "host", "ctr", "fw"))
    bridge, rport, uplink = lab.ifname("br"), lab.ifname("rp"), lab.ifname("up")
    rfw, fw0 = lab.ifname("rfw"), lab.ifname("fw")
    lab.ip(router, "link", "add", bridge, "type", "bridge")
    lab.ip(router, "link", "set", bridge, "up")
    lab.ip(router, "addr", "add", f"{ROUTER_LAN}/24", "dev", bridge)
    lab.veth(router, rport, host, uplink)
    lab.ip(router, "link", "set", rport, "master", bridge)
    lab.veth(router, rfw, fw, fw0)
    lab.ip(router, "addr", "add", "10.231.2.1/24", "dev", rfw)
    lab.ip(fw, "addr", "add", f"{FW_ADDRESS}/24", "dev", fw0)
    lab.ip(fw, "route", "add", "default", "via", "10.231.2.1")
    lab.run(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    net = Net(
        router,
        host,
        ctr,
        fw,
        uplink,
        lab.tmp / "state",
        lab.tmp / "dnsmasq.log",
        lab.tmp / "leases",
    )
    if dhcp:
        start_dnsmasq(lab, net, bridge)
    return net


def start_dnsmasq(lab: Lab, net: Net, bridge: str) -> None:
    """Run dnsmasq as DHCP server only (no DNS) on the router's bridge, with one reservation."""
    proc = lab.spawn(
        [
            "ip",
            "netns",
            "exec",
            net.router,
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            f"--interface={bridge}",
            "--bind-interfaces",
            "--user=root",
            "--dhcp-range=10.231.1.100,10.231.1.150,255.255.255.0,2m",
            f"--dhcp-option=option:router,{ROUTER_LAN}",
            # Reservation by client identifier: the MAC of a macvlan changes every time.
            f"--dhcp-host=id:{RESERVED_ID},{RESERVED_ADDRESS}",
            f"--dhcp-leasefile={net.leases}",
            f"--pid-file={lab.tmp / 'dnsmasq.pid'}",
            "--log-dhcp",
            # No ICMP probe before an offer: it costs seconds, and nothing else is here.
            "--no-ping",
            f"--log-facility={net.dnsmasq_log}",
        ],
        lab.tmp / "dnsmasq.out",
    )
    deadline = time.monotonic() + 10
    while "DHCP, IP range" not in read(net.dnsmasq_log):
        assert proc.poll() is None, read(lab.tmp / "dnsmasq.out")
        assert time.monotonic() < deadline, "dnsmasq did not start"
        time.sleep(0.05)


def read(path: Path) -> str:
    """Return a text file's content, or '' if it does not exist yet."""
    return path.read_text(errors="replace") if path.exists() else ""


def netplumb(
    lab: Lab, net: Net, *args: str, timeout: float = 40
) -> subprocess.CompletedProcess[str]:
    """Run deploy/netplumb in the host namespace (where the parent interface lives)."""
    return lab.run(
        net.host,
        str(NETPLUMB),
        "--state-dir",
        str(net.state_dir),
        *args,
        timeout=timeout,
        check=False,
    )


def addresses(lab: Lab, ns: str, ifname: str) -> list[dict[str, Any]]:
    """Return the IPv4 addresses of an interface, as ``ip -j addr`` describes them."""
    (link,) = json.loads(lab.ip(ns, "-j", "-4", "addr", "show", "dev", ifname))
    return [a for a in link["addr_info"] if a["family"] == "inet"]


def default_gateway(lab: Lab, ns: str) -> str | None:
    """Return the default route's gateway in ``ns``, or None."""
    routes = json.loads(lab.ip(ns, "-j", "-4", "route", "show", "default"))
    return routes[0].get("gateway") if routes else None


def is_alive(pid: int | None) -> bool:
    """Return True when a process with this PID exists and has not exited (zombies have)."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def test_dhcp_address_serves_vend_to_the_firewall_without_nat(lab: Lab) -> None:
    """The reserved address comes by DHCP; vend serves the firewall there, logging its address."""
    net = build_net(lab)
    lab.on_close(lambda: netplumb(lab, net, "down", "--netns", net.ctr))

    up = netplumb(
        lab,
        net,
        "up",
        "--netns",
        net.ctr,
        "--parent",
        net.uplink,
        "--dhcp",
        "--hostname",
        RESERVED_ID,
        "--timeout",
        "20",
    )
    assert up.returncode == 0, up.stderr
    assert f"eth1 {RESERVED_ADDRESS}/24 router {ROUTER_LAN}" in up.stdout
    status = json.loads(netplumb(lab, net, "status", "--netns", net.ctr).stdout)

    # The address came from dnsmasq: its lease names our client id and host name, and
    # the kernel holds the address only for the lease time (not "forever").
    (addr,) = addresses(lab, net.ctr, "eth1")
    assert (addr["local"], addr["prefixlen"]) == (RESERVED_ADDRESS, 24)
    assert 0 < int(addr["valid_life_time"]) <= 120
    assert default_gateway(lab, net.ctr) == ROUTER_LAN
    client_id = ":".join(f"{b:02x}" for b in b"\0" + RESERVED_ID.encode())
    assert f" {RESERVED_ADDRESS} {RESERVED_ID} {client_id}" in read(net.leases)
    assert f"DHCPACK({lab.ifname('br')}) {RESERVED_ADDRESS}" in read(net.dnsmasq_log)
    assert sorted(lab.links(net.host)) == sorted(["lo", net.uplink]), "nothing new on the host"

    # vend in the container namespace, reached by the firewall at the leased address.
    log = lab.tmp / "vend.log"
    access_log = lab.tmp / "access.log"
    config = write_vend_config(lab.tmp / "vend.toml", SAMPLE_MOUNT, access_log)
    vend = lab.spawn(
        [
            "ip",
            "netns",
            "exec",
            net.ctr,
            *vend_command(),
            "serve",
            "--config",
            str(config),
            "--host",
            "0.0.0.0",
            "--port",
            str(VEND_PORT),
        ],
        log,
    )
    base = f"http://{RESERVED_ADDRESS}:{VEND_PORT}"
    lab.wait_http(net.fw, f"{base}/.well-known/vend/health", vend, log)
    status_code, body = lab.curl(net.fw, f"{base}/about.html")
    assert (status_code, body) == (200, (SAMPLE_MOUNT / "about.html").read_bytes())
    wait_until(lambda: "/about.html" in read(access_log), 5, "access log line for /about.html")
    (line,) = [x for x in read(access_log).splitlines() if "GET /about.html " in x]
    assert line.startswith(f"{FW_ADDRESS} "), line

    # Teardown: the lease is released, the processes stop, the interface is gone.
    down = netplumb(lab, net, "down", "--netns", net.ctr)
    assert down.returncode == 0, down.stderr
    assert lab.links(net.ctr) == ["lo"]
    assert sorted(lab.links(net.host)) == sorted(["lo", net.uplink])
    assert not is_alive(status["udhcpc_pid"]) and not is_alive(status["supervisor_pid"])
    assert not (net.state_dir / f"netns-{net.ctr}-eth1").exists()
    wait_until(lambda: "DHCPRELEASE" in read(net.dnsmasq_log), 5, "DHCPRELEASE at dnsmasq")

    # Plumbed again with a new random MAC, the client id gets the same address back.
    again = netplumb(
        lab,
        net,
        "up",
        "--netns",
        net.ctr,
        "--parent",
        net.uplink,
        "--dhcp",
        "--hostname",
        RESERVED_ID,
        "--timeout",
        "20",
    )
    assert again.returncode == 0, again.stderr
    assert [a["local"] for a in addresses(lab, net.ctr, "eth1")] == [RESERVED_ADDRESS]
    assert netplumb(lab, net, "down", "--netns", net.ctr).returncode == 0
    assert lab.links(net.ctr) == ["lo"]


def test_supervisor_lets_the_namespace_go_when_the_process_exits(lab: Lab) -> None:
    """Plumbed by PID, the lease is released and the namespace freed soon after the process dies."""
    net = build_net(lab)
    container = lab.spawn(["unshare", "--net", "sleep", "120"], lab.tmp / "ctr.out")
    ours = os.stat("/proc/self/ns/net").st_ino
    ns_file = f"/proc/{container.pid}/ns/net"
    wait_until(lambda: os.stat(ns_file).st_ino != ours, 5, "unshare --net")
    ns_inode = os.stat(ns_file).st_ino
    lab.on_close(lambda: netplumb(lab, net, "down", "--pid", str(container.pid)))

    up = netplumb(
        lab,
        net,
        "up",
        "--pid",
        str(container.pid),
        "--parent",
        net.uplink,
        "--dhcp",
        "--hostname",
        "pid-test",
        "--timeout",
        "20",
    )
    assert up.returncode == 0, up.stderr
    status = json.loads(netplumb(lab, net, "status", "--pid", str(container.pid)).stdout)
    assert status["lease"]["address"].startswith("10.231.1.1")
    pids = [status["udhcpc_pid"], status["supervisor_pid"]]
    assert all(is_alive(p) for p in pids)

    container.send_signal(signal.SIGKILL)
    container.wait(timeout=5)
    wait_until(lambda: not any(is_alive(p) for p in pids), 10, "udhcpc and supervisor exit")
    assert not (net.state_dir / f"pid-{container.pid}-eth1").exists()
    assert not namespace_users(ns_inode), "something still holds the namespace"
    wait_until(lambda: "DHCPRELEASE" in read(net.dnsmasq_log), 5, "DHCPRELEASE at dnsmasq")


def namespace_users(inode: int) -> list[int]:
    """Return the PIDs whose network namespace has this inode."""
    users = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns" / "net").st_ino == inode:
                    users.append(int(entry.name))
            except OSError:
                continue
    return users


def test_static_address_and_default_route(lab: Lab) -> None:
    """--address/--gateway configure the interface, the router reaches it, and down removes it."""
    net = build_net(lab, dhcp=False)
    lab.on_close(lambda: netplumb(lab, net, "down", "--netns", net.ctr))
    up = netplumb(
        lab,
        net,
        "up",
        "--netns",
        net.ctr,
        "--parent",
        net.uplink,
        "--address",
        "10.231.1.50/24",
        "--gateway",
        ROUTER_LAN,
    )
    assert up.returncode == 0, up.stderr
    (addr,) = addresses(lab, net.ctr, "eth1")
    assert (addr["local"], addr["prefixlen"]) == ("10.231.1.50", 24)
    assert default_gateway(lab, net.ctr) == ROUTER_LAN
    ping = lab.run(net.router, "busybox", "ping", "-c", "1", "-W", "2", "10.231.1.50", check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert netplumb(lab, net, "down", "--netns", net.ctr).returncode == 0
    assert lab.links(net.ctr) == ["lo"]
    assert list(net.state_dir.iterdir()) == []


def test_failed_dhcp_leaves_nothing_behind(lab: Lab) -> None:
    """With no DHCP server, up fails after --timeout and removes the interface and udhcpc."""
    net = build_net(lab, dhcp=False)
    started = time.monotonic()
    up = netplumb(
        lab, net, "up", "--netns", net.ctr, "--parent", net.uplink, "--dhcp", "--timeout", "2"
    )
    assert up.returncode == 1
    assert "no DHCP lease within 2 s" in up.stderr
    assert time.monotonic() - started < 15
    assert lab.links(net.ctr) == ["lo"]
    assert list(net.state_dir.iterdir()) == []
    assert lab.pids(net.ctr) == [], "udhcpc left running"


def test_refuses_a_missing_parent_and_a_second_up(lab: Lab) -> None:
    """up fails cleanly for a missing parent, and refuses to plumb the same interface twice."""
    net = build_net(lab, dhcp=False)
    lab.on_close(lambda: netplumb(lab, net, "down", "--netns", net.ctr))
    missing = netplumb(
        lab, net, "up", "--netns", net.ctr, "--parent", "nosuch0", "--address", "10.231.1.51/24"
    )
    assert missing.returncode == 1 and "nosuch0" in missing.stderr
    assert lab.links(net.ctr) == ["lo"]
    first = netplumb(
        lab, net, "up", "--netns", net.ctr, "--parent", net.uplink, "--address", "10.231.1.51/24"
    )
    assert first.returncode == 0, first.stderr
    second = netplumb(
        lab, net, "up", "--netns", net.ctr, "--parent", net.uplink, "--address", "10.231.1.52/24"
    )
    assert second.returncode == 1 and "plumbed already" in second.stderr
    assert [a["local"] for a in addresses(lab, net.ctr, "eth1")] == ["10.231.1.51"]
