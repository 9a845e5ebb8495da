"""Starts moto's S3-compatible server on a free loopback port, prints the port, and runs until
stdin closes. Used by the S3 tests (`pip install 'moto[server]'`)."""
import sys

from moto.server import ThreadedMotoServer

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server._server.server_port, flush=True)
sys.stdin.read()
server.stop()
