"""The server: vend's HTTP/1.1 connection, its limits and zero-copy sends."""
