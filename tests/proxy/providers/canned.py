"""A local HTTP server that answers with whatever a test's codec produced (the real clients read it).

The SDKs and the agents (Gemini CLI, Claude Code) are pointed at it, so a test checks that
they accept our encoders' output byte for byte, with no gateway or provider in between.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

# (path, JSON body) -> (content type, bytes to answer)
Respond = Callable[[str, dict[str, Any]], tuple[str, bytes]]


@contextmanager
def serve(respond: Respond) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(base URL, the requests seen as {"path", "body"}) while the server runs; 127.0.0.1 only."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:  # Claude Code checks that the base URL answers
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            body = orjson.loads(raw) if raw else {}
            seen.append({"path": self.path, "body": body})
            content_type, payload = respond(self.path, body)
            self.send_response(200)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
