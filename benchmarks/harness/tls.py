"""A throw-away certificate authority and server certificate for the HTTPS peers.

Made at run time with trustme, for 127.0.0.1 and localhost, and written under
``<work>/run/tls``; nothing is added to the system's trust store.
"""

from __future__ import annotations

from pathlib import Path

import trustme

from harness.configs import TlsFiles


def make_certificates(directory: Path) -> tuple[TlsFiles, Path]:
    """Writes a fresh CA, a server certificate signed by it, and the server's key.

    Args:
        directory: where the PEM files go (created if missing).

    Returns:
        (the server's certificate and key files, the CA certificate file for clients).

    Raises:
        OSError: when the files cannot be written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    cert_path = directory / "server.pem"
    key_path = directory / "server.key"
    ca_path = directory / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in issued.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_path), append=True)
    issued.private_key_pem.write_to_path(str(key_path))
    key_path.chmod(0o600)
    authority.cert_pem.write_to_path(str(ca_path))
    return TlsFiles(cert_path=cert_path, key_path=key_path), ca_path
