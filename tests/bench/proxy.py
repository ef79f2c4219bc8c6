"""A counting TCP proxy for the benchmarks: forwards a local port to the S3 emulator and counts
the bytes each way (requests up, responses down), headers included. Byte counts in the layered
benchmark come from here, never from s3dock's own report."""

import socket
import socketserver
import threading


class Counter:
    def __init__(self):
        self.lock = threading.Lock()
        self.up = 0
        self.down = 0

    def add(self, up=0, down=0):
        with self.lock:
            self.up += up
            self.down += down

    def take(self):
        """The counts since the last call, and a reset."""
        with self.lock:
            out = (self.up, self.down)
            self.up = self.down = 0
            return out


def start(upstream_host, upstream_port):
    """Starts the proxy on 127.0.0.1 (a free port); returns (port, counter, server)."""
    counter = Counter()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            try:
                up = socket.create_connection((upstream_host, upstream_port))
            except OSError:
                return
            client = self.request

            def pump(src, dst, is_up):
                try:
                    while True:
                        data = src.recv(1 << 16)
                        if not data:
                            break
                        dst.sendall(data)
                        counter.add(up=len(data)) if is_up else counter.add(down=len(data))
                except OSError:
                    pass
                finally:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass

            t = threading.Thread(target=pump, args=(up, client, False), daemon=True)
            t.start()
            pump(client, up, True)
            t.join()
            up.close()

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1], counter, server
