"""A tiny HTTP responder standing in for a pod's containers, one listener per containerPort.

It runs inside the pod's network namespace and answers every GET/HEAD with 200 and a JSON body
naming the pod, the port and the client address, so tests can see who answered whom.
"""

from __future__ import annotations

import argparse
import json
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _handler(pod: str, port: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "spiderpool-lab-responder"

        def _reply(self, with_body: bool) -> None:
            client = self.client_address[0].removeprefix("::ffff:")
            body = json.dumps({"pod": pod, "port": port, "path": self.path, "client": client}).encode() + b"\n"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            self._reply(True)

        def do_HEAD(self) -> None:
            self._reply(False)

        def log_message(self, format: str, *args: object) -> None:  # quiet by default
            return

    return Handler


def serve(pod: str, ports: list[int]) -> None:
    servers: list[socketserver.BaseServer] = []
    for port in ports:
        try:
            srv: socketserver.BaseServer = _DualStackServer(("::", port), _handler(pod, port))
        except OSError:  # no IPv6 in this namespace
            srv = ThreadingHTTPServer(("0.0.0.0", port), _handler(pod, port))
        servers.append(srv)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pod", required=True, help="namespace/name, echoed in replies")
    parser.add_argument("--port", type=int, action="append", default=[], help="TCP port (repeatable)")
    args = parser.parse_args()
    serve(args.pod, args.port)


if __name__ == "__main__":
    main()
