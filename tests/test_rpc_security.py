"""Optional TLS on the RPC port (the node's certificate verified by clients; optionally mutual) and
optional shared-token auth for calls. Both are off by default; here they are on, against real node
processes, with certificates made in the test.
"""
import json
import os
import ssl
import threading
import time
import urllib.request

import pytest

from framework import protocol
from framework.devetcd import make_certs
from framework.errors import RpcError, Unauthorized
from framework.etcd import Etcd
from framework.tls import client_tls_context


@pytest.fixture
def certs(tmp_path):
    return make_certs(str(tmp_path / "pki"))


def _raw_call(address: str, obj: dict, timeout: float = 3.0):
    """One request over plain TCP; returns (frames, closed)."""
    import socket
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(protocol.pack(obj))
        reader, frames = protocol.FrameReader(), []
        try:
            while not frames:
                data = s.recv(65536)
                if not data:
                    return frames, True
                frames += [protocol.unpack_body(b) for b in reader.feed(data)]
        except OSError:
            return frames, True
        return frames, False


def test_tls_rpc_port_verified_by_clients(certs, etcd, serve_node, make_client):
    node = serve_node("tests.services",
                      extra_args=["--tls-cert", certs.server_cert, "--tls-key", certs.server_key,
                                  "--tls-ca", certs.ca])
    record = json.loads(Etcd(etcd.endpoint).get_prefix("/services/HelloService/")[1][0].value)
    assert record["tls"] is True
    client = make_client(tls=certs.ca, timeout=5)
    assert client.HelloService.Hello("tls") == "hello:tls"
    # a node calling another service (itself here) verifies it too (--tls-ca)
    assert client.GreeterService.Greet("x") == "greeter->hello:x"

    # 16 threads share the one TLS connection: one thread reads while the others write, with
    # records of up to 63 KB in both directions, so reads and writes overlap inside OpenSSL
    errors, done = [], []
    t0 = time.monotonic()
    end = t0 + 3.0

    def caller(i):
        j = 0
        while time.monotonic() < end:
            j += 1
            payload = f"{i}-{j}-" + "x" * (1000 * (j % 64))
            try:
                assert client.HelloService.Echo(payload) == {"args": [payload], "kwargs": {}}
                done.append(len(payload))
            except Exception as exc:  # counted: asserted below
                errors.append(repr(exc)[:200])
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    print(f"\nTLS RPC: {len(done)} calls ({sum(done) / 1e6:.0f} MB each way) by 16 threads in "
          f"{time.monotonic() - t0:.2f}s, {len(errors)} failed")
    assert errors == [] and len(done) > 16 * 20

    # no plaintext is answered on a TLS port
    frames, closed = _raw_call(node.address, protocol.request(1, "HelloService.Hello", ["x"]))
    assert frames == [] and closed
    # a client that does not trust the node's CA never sends the call
    other = make_certs(os.path.join(os.path.dirname(certs.ca), "other"))
    distrustful = make_client(tls=other.ca, timeout=1.5)
    with pytest.raises(RpcError, match="certificate verify failed"):
        distrustful.HelloService.Hello("x")
    # nor does a client that expects plaintext get an answer
    with pytest.raises(RpcError):
        make_client(timeout=1.5).HelloService.Hello("x")
    # HTTP on the same port is behind TLS as well
    ctx = ssl.create_default_context(cafile=certs.ca)
    with urllib.request.urlopen(f"https://{node.address}/healthz", context=ctx, timeout=5) as resp:
        assert resp.status == 200
    assert client.HelloService.Hello("still") == "hello:still"


def test_mutual_tls_requires_a_client_certificate(certs, serve_node, make_client):
    serve_node("tests.services",
               extra_args=["--tls-cert", certs.server_cert, "--tls-key", certs.server_key,
                           "--tls-client-ca", certs.ca])
    with pytest.raises(RpcError):
        make_client(tls=certs.ca, timeout=1.5).HelloService.Hello("anonymous")
    ctx = client_tls_context(certs.ca, certs.client_cert, certs.client_key)
    assert make_client(tls=ctx, timeout=5).HelloService.Hello("mtls") == "hello:mtls"


def test_shared_token_auth(tmp_path, serve_node, make_client):
    node = serve_node("tests.services", env={"FRAMEWORK_TOKEN": "t0ken"})
    ledger = str(tmp_path / "ledger")
    with pytest.raises(Unauthorized):
        make_client(timeout=3).Ledger.Charge(ledger)
    with pytest.raises(Unauthorized):
        make_client(token="wrong", timeout=3).Ledger.Charge(ledger)
    assert not os.path.exists(ledger), "an unauthorized call must not run"
    frames, closed = _raw_call(node.address, protocol.request(7, "Ledger.Charge", [ledger]))
    assert frames[0]["error"]["code"] == -32004 and not os.path.exists(ledger)
    client = make_client(token="t0ken", timeout=5)
    assert client.Ledger.Charge(ledger) == node.pid
    # the node's own client carries the token to the services it calls
    assert client.GreeterService.Greet("t") == "greeter->hello:t"
    with open(ledger) as f:
        assert f.read().split() == [str(node.pid)]


def test_token_flag_and_tls_together(certs, serve_node, make_client):
    serve_node("tests.services",
               extra_args=["--token", "both", "--tls-cert", certs.server_cert,
                           "--tls-key", certs.server_key, "--tls-ca", certs.ca])
    with pytest.raises(Unauthorized):
        make_client(tls=certs.ca, timeout=3).HelloService.Hello("x")
    client = make_client(tls=certs.ca, token="both", timeout=5)
    assert client.GreeterService.Greet("y") == "greeter->hello:y"
