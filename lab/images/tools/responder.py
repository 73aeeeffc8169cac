"""The tests' workload: answer every GET/HEAD with 200 and a JSON body naming the pod
(``namespace/name``: its service account's namespace and its host name), the port and the client
address, so a test sees who answered whom.

Ports: $RESPONDER_PORTS (comma-separated), 80 by default. Stops on SIGTERM.
"""

import json
import os
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def handler(pod, port):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "spiderpool-lab-responder"

        def reply(self, with_body):
            client = self.client_address[0].removeprefix("::ffff:")
            body = json.dumps({"pod": pod, "port": port, "path": self.path, "client": client}).encode() + b"\n"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_GET(self):
            self.reply(True)

        def do_HEAD(self):
            self.reply(False)

        def log_message(self, format, *args):  # quiet
            return

    return Handler


def main():
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            namespace = f.read().strip()
    except OSError:
        namespace = "?"
    pod = f"{namespace}/{socket.gethostname()}"
    ports = [int(p) for p in os.environ.get("RESPONDER_PORTS", "80").split(",") if p.strip()]
    servers = []
    for port in ports:
        try:
            servers.append(DualStackServer(("::", port), handler(pod, port)))
        except OSError:  # no IPv6 in this pod
            servers.append(ThreadingHTTPServer(("0.0.0.0", port), handler(pod, port)))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    signal.pause()


if __name__ == "__main__":
    main()
