"""Optional TLS on the RPC port (the node's certificate verified by clients; optionally mutual) and
optional shared-token auth for calls. Both are off by default; here they are on, against real node
processes, with certificates made in the test.
"""
import itertools
import json
import os
import ssl
import time
import urllib.request

import pytest

from framework import protocol
from framework.devetcd import make_certs
from framework.errors import RpcError, Unauthorized
from framework.etcd import Etcd
from framework.testing import Load, RawConnection
from framework.tls import client_tls_context


@pytest.fixture
def certs(tmp_path):
    return make_certs(str(tmp_path / "pki"))


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
    numbers = itertools.count(1)

    def echo():
        j = next(numbers)
        payload = f"{j}-" + "x" * (1000 * (j % 64))
        assert client.HelloService.Echo(payload) == {"args": [payload], "kwargs": {}}
        return len(payload)

    t0 = time.monotonic()
    load = Load(echo, callers=16, join_timeout=60).run(3.0)
    done = load.values()
    print(f"\nTLS RPC: {len(done)} calls ({sum(done) / 1e6:.0f} MB each way) by 16 threads in "
          f"{time.monotonic() - t0:.2f}s, {len(load.errors)} failed")
    assert load.errors == [] and len(done) > 16 * 20

    # no plaintext is answered on a TLS port
    with RawConnection(node.address, timeout=3) as conn:
        conn.send(protocol.request(1, "HelloService.Hello", ["x"]))
        frames, _ = conn.read_frames(timeout=3, want=1)
    assert frames == []   # closed, or silent until the timeout: either way no answer
    # a client that does not trust the node's CA never sends the call (5 s: in a loaded suite run
    # a 1.5 s deadline once ran out during the handshake, before the verification could fail)
    other = make_certs(os.path.join(os.path.dirname(certs.ca), "other"))
    distrustful = make_client(tls=other.ca, timeout=5)
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
    with RawConnection(node.address, timeout=3) as conn:
        conn.send(protocol.request(7, "Ledger.Charge", [ledger]))
        frames, _ = conn.read_frames(timeout=3, want=1)
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
