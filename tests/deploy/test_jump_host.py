"""deploy/ssh: vend serves a content export mounted with sshfs through an SSH jump host.

Three namespaces this test creates; the operator has no route to the content
network, and the jump host does not forward IP, so SSH's ProxyJump is the only
way through::

    operator 10.231.3.2 --veth-- 10.231.3.1 jump 10.231.4.1 --veth-- 10.231.4.2 content

sshd runs in ``jump`` and ``content`` with host keys and a client key made
here; each sshd gets a private /run (a tmpfs in its own mount namespace), so
nothing under /etc/ssh or /run on the machine is touched. The ssh client uses
deploy/ssh/ssh_config.example with only the host names, user and key paths
overridden, and the export is mounted with the line in deploy/ssh/fstab.example.
vend runs on loopback and reads the mount.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.netlab import DEPLOY, Lab, clean_env, needs_fuse, needs_root

OPERATOR, JUMP_OUTER, JUMP_INNER, CONTENT = "10.231.3.2", "10.231.3.1", "10.231.4.1", "10.231.4.2"
#: The fail-fast options as deploy/ssh/fstab.example documents them, and the
#: shorter ones this test uses so that a dead host is declared dead in ~2 s.
DOCUMENTED_KEEPALIVE = "ServerAliveInterval=5,ServerAliveCountMax=3,ConnectTimeout=5"
TEST_KEEPALIVE = "ServerAliveInterval=1,ServerAliveCountMax=2,ConnectTimeout=3"
PAGE = b"<html><body>served from behind the jump host</body></html>\n"

pytestmark = [pytest.mark.netns, pytest.mark.fuse, needs_root, needs_fuse]


@dataclass
class Site:
    """The three hosts of the lab and the files the client side uses."""

    operator: str
    jump: str
    content: str
    content_link: str
    ssh_config: Path
    export: Path
    content_log: Path


def keygen(path: Path, comment: str) -> str:
    """Make an ed25519 key pair without passphrase at ``path``; return the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        timeout=30,
    )
    return path.with_suffix(".pub").read_text().strip()


def start_sshd(lab: Lab, ns: str, name: str, address: str, extra: list[str]) -> tuple[str, Path]:
    """Start sshd in ``ns`` listening on ``address``; return (host public key, log path)."""
    host_key = lab.tmp / f"{name}_host_ed25519"
    public = keygen(host_key, name)
    config = lab.tmp / f"sshd_{name}.conf"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {address}",
                f"HostKey {host_key}",
                f"PidFile {lab.tmp / f'sshd_{name}.pid'}",
                f"AuthorizedKeysFile {lab.tmp / 'authorized_keys'}",
                # The key files live under /tmp, which is world-writable.
                "StrictModes no",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "PermitTTY no",
                "Subsystem sftp internal-sftp",
                "LogLevel VERBOSE",
                *extra,
            ]
        )
        + "\n"
    )
    log = lab.tmp / f"sshd_{name}.log"
    # sshd insists on /run/sshd; a tmpfs over /run, private to this sshd's mount
    # namespace (ip netns exec makes one), provides it without touching the machine.
    script = 'mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -m 0755 /run/sshd && exec "$0" -D -e -f "$1"'
    proc = lab.spawn(
        ["ip", "netns", "exec", ns, "sh", "-c", script, "/usr/sbin/sshd", str(config)], log
    )
    deadline = time.monotonic() + 10
    while "Server listening on" not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"sshd in {ns} did not start: {log.read_text()}"
        time.sleep(0.05)
    return public, log


def build_site(lab: Lab) -> Site:
    """Create the operator, jump and content hosts, start both sshds, write the client config."""
    operator, jump, content = (lab.netns(r) for r in ("op", "jump", "content"))
    lab.veth(operator, lab.ifname("oj"), jump, lab.ifname("jo"))
    content_link = lab.ifname("cj")
    lab.veth(jump, lab.ifname("jc"), content, content_link)
    lab.ip(operator, "addr", "add", f"{OPERATOR}/24", "dev", lab.ifname("oj"))
    lab.ip(jump, "addr", "add", f"{JUMP_OUTER}/24", "dev", lab.ifname("jo"))
    lab.ip(jump, "addr", "add", f"{JUMP_INNER}/24", "dev", lab.ifname("jc"))
    lab.ip(content, "addr", "add", f"{CONTENT}/24", "dev", content_link)

    client_key = lab.tmp / "id_ed25519"
    (lab.tmp / "authorized_keys").write_text(keygen(client_key, "vend@operator") + "\n")
    # The jump host relays SSH to the content host's port 22 and does nothing else;
    # the content host offers read-only SFTP and nothing else (deploy/ssh/README.md).
    jump_key, _ = start_sshd(
        lab, jump, "jump", JUMP_OUTER,
        ["AllowTcpForwarding yes", f"PermitOpen {CONTENT}:22", "ForceCommand /usr/sbin/nologin"],
    )  # fmt: skip
    content_key, content_log = start_sshd(
        lab, content, "content", CONTENT,
        ["AllowTcpForwarding no", "ForceCommand internal-sftp -R"],
    )  # fmt: skip
    known_hosts = lab.tmp / "known_hosts"
    known_hosts.write_text(
        f"{JUMP_OUTER} {' '.join(jump_key.split()[:2])}\n"
        f"{CONTENT} {' '.join(content_key.split()[:2])}\n"
    )
    # ssh keeps the first value it reads for each option: these lines, put before
    # the example, replace its host names, users and key paths, and nothing else.
    overrides = (
        f"Host jump1\n    HostName {JUMP_OUTER}\n    User root\n"
        f"Host content1\n    HostName {CONTENT}\n    User root\n"
        f"Host *\n    IdentityFile {client_key}\n    UserKnownHostsFile {known_hosts}\n\n"
    )
    ssh_config = lab.tmp / "ssh_config"
    ssh_config.write_text(overrides + (DEPLOY / "ssh" / "ssh_config.example").read_text())
    export = lab.tmp / "export"
    (export / "legacy").mkdir(parents=True)
    (export / "legacy" / "page.html").write_bytes(PAGE)
    return Site(operator, jump, content, content_link, ssh_config, export, content_log)


def fstab_line(site: Site, mountpoint: Path, *, keepalive: str) -> str:
    """Return deploy/ssh/fstab.example's mount line with this lab's paths and ``keepalive``."""
    (line,) = [
        x for x in (DEPLOY / "ssh" / "fstab.example").read_text().splitlines()
        if x and not x.startswith("#")
    ]  # fmt: skip
    remote, target, fstype, options, *rest = line.split()
    assert (remote, target, fstype) == ("content1:/export/www", "/srv/vend/content1", "fuse.sshfs")
    assert DOCUMENTED_KEEPALIVE in options
    options = options.replace(DOCUMENTED_KEEPALIVE, keepalive)
    options = options.replace("/etc/vend/ssh_config", str(site.ssh_config))
    return " ".join([f"content1:{site.export}", str(mountpoint), fstype, options, *rest])


def mount_export(lab: Lab, site: Site, *, keepalive: str) -> Path:
    """Mount the export as an operator would, with ``mount`` reading the fstab line."""
    mountpoint = lab.tmp / "content1"
    mountpoint.mkdir()
    fstab = lab.tmp / "fstab"
    fstab.write_text(fstab_line(site, mountpoint, keepalive=keepalive) + "\n")
    lab.track_mount(mountpoint)
    # Only the network namespace is the operator's: the mount lands in this
    # machine's mount namespace, where vend (on loopback) can read it.
    proc = subprocess.run(
        ["nsenter", f"--net=/run/netns/{site.operator}", "mount", "--fstab", str(fstab),
         str(mountpoint)],
        capture_output=True, text=True, timeout=30, check=False, env=clean_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert os.path.ismount(mountpoint)
    return mountpoint


def test_content_host_is_reachable_only_through_the_jump_host(lab: Lab) -> None:
    """Without ProxyJump the operator cannot reach the content host; with it, SFTP works."""
    site = build_site(lab)
    direct = lab.run(
        site.operator, "ssh", "-F", str(site.ssh_config), "-o", "ProxyJump=none", "content1",
        check=False,
    )  # fmt: skip
    assert direct.returncode == 255
    assert "unreachable" in direct.stderr
    batch = lab.tmp / "sftp.batch"
    batch.write_text(f"ls {site.export}/legacy\n")
    listing = lab.run(
        site.operator, "sftp", "-F", str(site.ssh_config), "-b", str(batch), "content1",
        check=False,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    assert "page.html" in listing.stdout
    assert f"Accepted publickey for root from {JUMP_INNER}" in site.content_log.read_text()


def test_vend_serves_a_file_from_an_sshfs_mount_behind_the_jump_host(
    lab: Lab, start_vend: Any
) -> None:
    """A file on the content host comes back byte for byte from vend through the sshfs mount."""
    site = build_site(lab)
    mountpoint = mount_export(lab, site, keepalive=DOCUMENTED_KEEPALIVE)
    vend = start_vend(mounts=[mountpoint])
    with httpx.Client(base_url=vend.url, trust_env=False, timeout=30) as client:
        response = client.get("/legacy/page.html")
        assert (response.status_code, response.content) == (200, PAGE)
        health = client.get("/.well-known/vend/health").json()
        assert [m["state"] for m in health["mounts"]] == ["up"]
    assert f"Accepted publickey for root from {JUMP_INNER}" in site.content_log.read_text()


def test_dead_content_host_fails_fast_and_recovers(lab: Lab, start_vend: Any) -> None:
    """Content host cut off: 503 within seconds and the mount reported down while a local
    second mount keeps serving; once the link is back, the sshfs mount serves again."""
    site = build_site(lab)
    mountpoint = mount_export(lab, site, keepalive=TEST_KEEPALIVE)
    (site.export / "legacy" / "later.html").write_bytes(PAGE)
    local = lab.tmp / "local"
    local.mkdir()
    for i in range(20):
        (local / f"local-{i}.html").write_bytes(b"local %d" % i)
    # vend's own per-operation limit is set far above sshfs's, so the quick
    # answer below comes from the mount options, not from vend's timeout.
    vend = start_vend(mounts=[mountpoint, local], settings={"timeouts": {"fs_op_s": 60}})
    with httpx.Client(base_url=vend.url, trust_env=False, timeout=60) as client:
        assert client.get("/legacy/page.html").status_code == 200
        lab.ip(site.content, "link", "set", site.content_link, "down")
        started = time.monotonic()
        response = client.get("/legacy/later.html")
        elapsed = time.monotonic() - started
        assert response.status_code == 503
        assert "retry-after" in response.headers
        assert elapsed < 15, f"took {elapsed:.1f} s"
        health = client.get("/.well-known/vend/health")
        assert health.status_code == 200  # the local mount is still usable
        assert [m["state"] for m in health.json()["mounts"]] == ["down", "up"]
        for i in range(20):  # the other mount keeps serving, without waiting on sshfs
            started = time.monotonic()
            other = client.get(f"/local-{i}.html")
            assert (other.status_code, other.content) == (200, b"local %d" % i)
            assert time.monotonic() - started < 2

        lab.ip(site.content, "link", "set", site.content_link, "up")
        deadline = time.monotonic() + 30
        while (response := client.get("/legacy/later.html")).status_code != 200:
            if time.monotonic() > deadline:
                health = client.get("/.well-known/vend/health").text
                pytest.fail(
                    f"not served again within 30 s: {response.status_code}, health {health},"
                    f" mounted {os.path.ismount(mountpoint)}\n{vend.output()[-3000:]}"
                )
            time.sleep(0.5)
        assert response.content == PAGE
