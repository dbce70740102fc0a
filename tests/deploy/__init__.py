"""Tests of deploy/: the systemd unit, the container files, netplumb, and SSH jump hosts."""
