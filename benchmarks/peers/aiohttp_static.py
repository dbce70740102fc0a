"""Peer: aiohttp's ``web.static`` route over one root, the last mount.

aiohttp's static handler serves one directory, so this peer does not federate; it answers
from the mount that holds the probe files. Bodies go out with sendfile (aiohttp's default).

Usage:
    python aiohttp_static.py --host 127.0.0.1 --port 8080 --root /path/to/mount
"""

from __future__ import annotations

import argparse

from aiohttp import web


def main() -> None:
    """Parses the command line and serves until SIGINT or SIGTERM.

    Raises:
        SystemExit: on invalid arguments (argparse).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", required=True, help="directory to serve")
    args = parser.parse_args()
    app = web.Application()
    app.add_routes([web.static("/", args.root)])
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
