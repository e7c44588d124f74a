"""etcd TLS (CA, client certificate and key) and username/password auth, against real etcd processes
started with them. Certificates are made in the test (``framework.devetcd.make_certs``, openssl CLI).

Every etcd connection is exercised: the node's registration (grant, put, keepalive, revoke) and the
client's discovery (list and watch), through ``serve`` flags, environment variables and
``framework.EtcdConfig``.
"""
import time

import pytest

import framework
from framework.devetcd import EtcdProcess, make_certs
from framework.errors import EtcdError
from framework.testing import wait_until

PASSWORD = "s3cret-pw"


def _denied(config) -> str:
    with pytest.raises(EtcdError) as info:
        config.client().get_prefix("/services/")
    return str(info.value)


def test_tls_etcd_with_client_certificates(processes, tmp_path):
    certs = make_certs(str(tmp_path / "pki"))
    etcd = processes.start_etcd(tls=certs)
    assert etcd.client_url.startswith("https://")
    flags = ["--etcd-ca", certs.ca, "--etcd-cert", certs.client_cert, "--etcd-key", certs.client_key]
    a = processes.start_node("tests.services", etcd.client_url, extra_args=flags)
    config = framework.EtcdConfig(etcd.client_url, ca=certs.ca, cert=certs.client_cert,
                                  key=certs.client_key)
    client = processes.add(framework.Client(etcd=config, timeout=5))
    assert client.nodes("HelloService") == [a.address]
    assert client.HelloService.Hello("tls") == "hello:tls"

    # the watch runs over TLS too: a join and a SIGTERM (lease revoked over TLS) are both seen
    b = processes.start_node("tests.services", etcd.client_url, extra_args=flags)
    t0 = time.monotonic()
    wait_until(lambda: set(client.nodes("HelloService")) == {a.address, b.address}, timeout=10,
               message="join seen through the TLS watch")
    b.terminate()
    assert b.wait(15) == 0
    wait_until(lambda: client.nodes("HelloService") == [a.address], timeout=10,
               message="revoke over TLS seen through the TLS watch")
    print(f"TLS: join+leave observed in {time.monotonic() - t0:.2f}s")

    # what etcd refuses: no client certificate, a CA that did not sign etcd's cert, plain HTTP
    assert "certificate" in _denied(framework.EtcdConfig(etcd.client_url, ca=certs.ca)).lower()
    other = make_certs(str(tmp_path / "other"))
    assert "certificate verify failed" in _denied(framework.EtcdConfig(
        etcd.client_url, ca=other.ca, cert=certs.client_cert, key=certs.client_key))
    _denied(framework.EtcdConfig(etcd.endpoint))  # http:// to a TLS port: no answer
    assert client.HelloService.Hello("still") == "hello:still"


def _enable_auth(etcd: EtcdProcess) -> None:
    """root (required by etcd to turn auth on) plus a user limited to the registry prefix."""
    etcd.enable_auth(PASSWORD)
    etcd.etcdctl("role", "add", "registry")
    etcd.etcdctl("role", "grant-permission", "registry", "--prefix=true", "readwrite", "/services/")
    etcd.etcdctl("user", "add", "svc", "--new-user-password", PASSWORD)
    etcd.etcdctl("user", "grant-role", "svc", "registry")


def test_password_auth_and_reauthentication_after_etcd_restart(processes):
    etcd = processes.start_etcd()
    _enable_auth(etcd)
    # the password comes from the environment (flags show in ps); the user from a flag
    a = processes.start_node("tests.services", etcd.endpoint, extra_args=["--etcd-user", "svc"],
                             env={"ETCD_PASSWORD": PASSWORD})
    config = framework.EtcdConfig(etcd.endpoint, username="svc", password=PASSWORD)
    assert "svc" in repr(config) and PASSWORD not in repr(config)
    client = processes.add(framework.Client(etcd=config, timeout=5))
    assert client.nodes("HelloService") == [a.address]
    assert client.HelloService.Hello("auth") == "hello:auth"

    assert "user name is empty" in _denied(framework.EtcdConfig(etcd.endpoint))
    assert "authentication failed" in _denied(framework.EtcdConfig(
        etcd.endpoint, username="svc", password="wrong"))
    # the limited user cannot read outside its prefix
    with pytest.raises(EtcdError, match="permission denied"):
        config.client().get_prefix("/other/")

    # etcd forgets its simple tokens on restart: node and client must authenticate again by
    # themselves, and the node's lease must keep being renewed (its key outlives several TTLs)
    etcd.restart()
    restarted = time.monotonic()
    b = processes.start_node("tests.services", etcd.endpoint, extra_args=["--etcd-user", "svc"],
                             env={"ETCD_PASSWORD": PASSWORD})
    wait_until(lambda: set(client.nodes("HelloService")) == {a.address, b.address}, timeout=15,
               message="client to re-authenticate and see the new node")
    print(f"auth: re-authenticated and saw a new node {time.monotonic() - restarted:.2f}s "
          "after the etcd restart")
    root = framework.EtcdConfig(etcd.endpoint, username="root", password=PASSWORD).client()
    key = f"/services/HelloService/{a.address}"
    lease = {kv.key: kv.lease for kv in root.get_prefix("/services/HelloService/")[1]}[key]
    deadline = time.monotonic() + 3 + 1   # longer than the TTL
    while time.monotonic() < deadline:
        _, kvs = root.get_prefix("/services/HelloService/")
        assert key in {kv.key for kv in kvs}, "node A's registration lapsed after the restart"
        time.sleep(0.25)   # sampling an invariant over a window, not waiting for a condition
    assert {kv.key: kv.lease for kv in root.get_prefix("/services/HelloService/")[1]}[key] == lease
    b.terminate()
    wait_until(lambda: client.nodes("HelloService") == [a.address], timeout=10,
               message="revoke with a re-authenticated token")
    assert client.HelloService.Hello("again") == "hello:again"


def test_tls_and_auth_together_from_environment_variables(processes, tmp_path):
    # with auth on, etcd's JSON gateway refuses client certificates that carry a CommonName, so
    # make_certs issues a CN-less one; the user comes from the password
    certs = make_certs(str(tmp_path / "pki"))
    etcd = processes.start_etcd(tls=certs)
    _enable_auth(etcd)
    env = {"ETCD_CA": certs.ca, "ETCD_CERT": certs.client_cert, "ETCD_KEY": certs.client_key,
           "ETCD_USER": "svc", "ETCD_PASSWORD": PASSWORD}
    node = processes.start_node("tests.services", etcd.client_url, env=env)
    config = framework.EtcdConfig.from_env(env, endpoints=etcd.client_url)
    assert (config.ca, config.username, config.tls_enabled) == (certs.ca, "svc", True)
    client = processes.add(framework.Client(etcd=config, timeout=5))
    assert client.HelloService.Hello("both") == "hello:both"
    assert client.nodes("HelloService") == [node.address]
    # each credential is needed: certificate without password, password without certificate
    assert "permission denied" in _denied(framework.EtcdConfig(
        etcd.client_url, ca=certs.ca, cert=certs.client_cert, key=certs.client_key))
    assert "certificate" in _denied(framework.EtcdConfig(
        etcd.client_url, ca=certs.ca, username="svc", password=PASSWORD)).lower()
