"""deploy/ssh: a content export two jump hosts away, mounted with sshfs (ProxyJump jump1,jump2).

Four namespaces in series, sshd in the last three, no forwarding::

    operator 10.231.80.2 -- 10.231.80.1 jump1 10.231.81.1 -- 10.231.81.2 jump2 10.231.82.1
        -- 10.231.82.2 content
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.deploy.netlab import DEPLOY, Lab, clean_env, needs_fuse, needs_root
from tests.deploy.test_jump_host import keygen, start_sshd
from tests.deploy.test_ssh_relay import JUMP_ONLY, link, pin_host_keys

J1, J2, CONTENT = "10.231.80.1", "10.231.81.2", "10.231.82.2"

pytestmark = [pytest.mark.netns, pytest.mark.fuse, needs_root, needs_fuse]


def test_sshfs_through_two_jump_hosts_in_series(lab: Lab) -> None:
    """The export mounted through jump1,jump2 reads back a 1 MiB file byte for byte."""
    op, j1, j2, ct = (lab.netns(r) for r in ("op", "j1", "j2", "ct"))
    link(lab, op, "10.231.80.2", j1, J1, "oj")
    link(lab, j1, "10.231.81.1", j2, J2, "jj")
    link(lab, j2, "10.231.82.1", ct, CONTENT, "jc")
    key = lab.tmp / "id_ed25519"
    (lab.tmp / "authorized_keys").write_text(keygen(key, "vend@operator") + "\n")
    fwd = JUMP_ONLY
    keys = {
        J1: start_sshd(lab, j1, "j1", J1, [*fwd, f"PermitOpen {J2}:22"])[0],
        J2: start_sshd(lab, j2, "j2", J2, [*fwd, f"PermitOpen {CONTENT}:22"])[0],
        CONTENT: start_sshd(
            lab, ct, "ct", CONTENT, ["AllowTcpForwarding no", "ForceCommand internal-sftp -R"]
        )[0],
    }
    known = pin_host_keys(lab, keys)
    # First value wins in ssh_config: these lines replace the example's names and paths.
    config = lab.tmp / "ssh_config"
    config.write_text(
        f"Host jump1\n  HostName {J1}\n  User root\nHost jump2\n  HostName {J2}\n  User root\n"
        f"Host content1\n  HostName {CONTENT}\n  User root\n  ProxyJump jump1,jump2\n"
        f"Host *\n  IdentityFile {key}\n  UserKnownHostsFile {known}\n\n"
        + (DEPLOY / "ssh" / "ssh_config.example").read_text()
    )
    export = lab.tmp / "export"
    export.mkdir()
    payload = os.urandom(1 << 20)
    (export / "big.bin").write_bytes(payload)
    direct = lab.run(op, "ssh", "-F", str(config), "-o", "ProxyJump=jump1", "content1",
                     check=False)  # fmt: skip
    assert direct.returncode == 255  # one jump is not enough: jump1 may open only jump2:22
    mountpoint = lab.tmp / "content1"
    mountpoint.mkdir()
    lab.track_mount(mountpoint)
    done = subprocess.run(
        ["nsenter", f"--net=/run/netns/{op}", "sshfs", "-F", str(config),
         f"content1:{export}", str(mountpoint), "-o", "ro,reconnect,ServerAliveInterval=5"],
        capture_output=True, text=True, timeout=60, check=False, env=clean_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert os.path.ismount(mountpoint)
    assert (mountpoint / "big.bin").read_bytes() == payload
    assert "Accepted publickey for root from 10.231.82.1" in (lab.tmp / "sshd_ct.log").read_text()
