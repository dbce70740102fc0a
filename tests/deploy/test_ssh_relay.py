"""deploy/ssh relay: serverA reaches serverB through jumpA, the workstation and jumpB.

Five namespaces this test creates, sshd in all but the workstation, no
forwarding anywhere::

    serverA 10.231.72.2 -- jumpA 10.231.70.1 -- workstation -- 10.231.71.1 jumpB -- 10.231.73.2 serverB

The workstation runs ssh with deploy/ssh/relay_ssh_config.example (host names,
user and key paths substituted) and ssh-relay.service's ExecStart arguments.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.deploy.netlab import DEPLOY, Lab, needs_root, stop_group
from tests.deploy.test_jump_host import keygen, start_sshd

JA, JB, SA, SB = "10.231.70.1", "10.231.71.1", "10.231.72.2", "10.231.73.2"

pytestmark = [pytest.mark.netns, needs_root]


def link(lab: Lab, a: str, a_addr: str, b: str, b_addr: str, name: str) -> None:
    """Join namespaces ``a`` and ``b`` with a veth pair carrying these /24 addresses."""
    lab.veth(a, lab.ifname(f"{name}a"), b, lab.ifname(f"{name}b"))
    lab.ip(a, "addr", "add", f"{a_addr}/24", "dev", lab.ifname(f"{name}a"))
    lab.ip(b, "addr", "add", f"{b_addr}/24", "dev", lab.ifname(f"{name}b"))


#: sshd options of a jump host: relay TCP only (PermitOpen added per host), no shell.
JUMP_ONLY = ["AllowTcpForwarding yes", "ForceCommand /usr/sbin/nologin"]


def pin_host_keys(lab: Lab, keys: dict[str, str]) -> Path:
    """Write a known_hosts file of address -> host public key line; return its path."""
    known = lab.tmp / "known_hosts"
    known.write_text("".join(f"{a} {' '.join(k.split()[:2])}\n" for a, k in keys.items()))
    return known


def relay_command() -> list[str]:
    """Return ssh-relay.service's ExecStart as an argv list."""
    (line,) = [
        x
        for x in (DEPLOY / "ssh" / "ssh-relay.service").read_text().splitlines()
        if x.startswith("ExecStart=")
    ]
    return line.removeprefix("ExecStart=").split()


def test_server_a_reaches_server_b_only_through_the_relay(lab: Lab) -> None:
    """No path without the relay; with it ssh and a 1 MiB copy work; stopped, the path closes."""
    ws, ja, jb, sa, sb = (lab.netns(r) for r in ("ws", "ja", "jb", "sa", "sb"))
    link(lab, ja, JA, ws, "10.231.70.2", "wa")
    link(lab, jb, JB, ws, "10.231.71.2", "wb")
    link(lab, ja, "10.231.72.1", sa, SA, "as")
    link(lab, jb, "10.231.73.1", sb, SB, "bs")
    ws_key, sa_key = lab.tmp / "ws_key", lab.tmp / "sa_key"
    (lab.tmp / "authorized_keys").write_text(
        keygen(ws_key, "relay@ws") + "\n" + keygen(sa_key, "user@serverA") + "\n"
    )
    fwd = JUMP_ONLY
    keys = {
        JA: start_sshd(lab, ja, "ja", JA, [*fwd, f"PermitOpen {SA}:22"])[0],
        JB: start_sshd(lab, jb, "jb", JB, [*fwd, f"PermitOpen {SB}:22"])[0],
        SA: start_sshd(
            lab, sa, "sa", SA, ["AllowTcpForwarding yes", "PermitListen 127.0.0.1:2201"]
        )[0],
        SB: start_sshd(lab, sb, "sb", SB, ["AllowTcpForwarding no"])[0],
    }
    known = pin_host_keys(lab, keys)
    text = (DEPLOY / "ssh" / "relay_ssh_config.example").read_text()
    for old, new in {
        "jumpA.example.net": JA, "serverA.a.example.net": SA, "jumpB.example.net": JB,
        "/etc/ssh-relay/id_ed25519": str(ws_key), "/etc/ssh-relay/known_hosts": str(known),
        "User relay": "User root",
    }.items():  # fmt: skip
        text = text.replace(old, new)
    ws_config = lab.tmp / "relay_ssh_config"
    ws_config.write_text(text)
    sa_config = lab.tmp / "sa_ssh_config"
    sa_config.write_text(
        f"Host jumpB-relay\n  HostName 127.0.0.1\n  Port 2201\n  HostKeyAlias {JB}\n"
        f"Host serverB\n  HostName {SB}\n  ProxyJump jumpB-relay\n"
        f"Host *\n  User root\n  IdentityFile {sa_key}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n  BatchMode yes\n"
        "  ConnectTimeout 5\n"
    )
    payload = os.urandom(1 << 20)
    (lab.tmp / "payload").write_bytes(payload)

    def to_b(*cmd: str, timeout: float = 30) -> tuple[int, bytes]:
        """Run ``ssh serverB CMD`` from serverA; return (exit status, stdout bytes)."""
        done = subprocess.run(
            ["ip", "netns", "exec", sa, "ssh", "-F", str(sa_config), "serverB", *cmd],
            capture_output=True, timeout=timeout, check=False,
        )  # fmt: skip
        return done.returncode, done.stdout

    assert to_b("true")[0] == 255  # no relay, no path
    direct = lab.run(sa, "ssh", "-F", str(sa_config), "-o", "ProxyJump=none", "serverB",
                     "true", check=False)  # fmt: skip
    assert direct.returncode == 255 and "unreachable" in direct.stderr, direct.stderr

    argv = relay_command()
    argv[argv.index("/etc/ssh-relay/ssh_config")] = str(ws_config)
    relay = lab.spawn(["ip", "netns", "exec", ws, *argv], lab.tmp / "relay.log")
    deadline = time.monotonic() + 30
    while (result := to_b("ip", "-o", "-4", "addr"))[0] != 0:
        assert relay.poll() is None, (lab.tmp / "relay.log").read_text()
        assert time.monotonic() < deadline, (lab.tmp / "relay.log").read_text()
        time.sleep(0.2)
    assert f" {SB}/24 " in result[1].decode()  # the shell answering is serverB's
    assert to_b("cat", str(lab.tmp / "payload"), timeout=60) == (0, payload)

    stop_group(relay)
    started = time.monotonic()
    assert to_b("true", timeout=15)[0] == 255
    assert time.monotonic() - started < 10
