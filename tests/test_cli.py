"""The operator CLI (``python -m framework call | ls | watch | --help``) against a real etcd and real
nodes: output, exit codes, and errors that are one line unless ``--debug``."""
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading

import pytest

from framework.testing import wait_until


def cli(*args, timeout=60, env=None):
    return subprocess.run([sys.executable, "-m", "framework", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, **(env or {})))


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    return lines[0]


def test_call_prints_the_json_result(serve_node, etcd):
    serve_node("tests.services")
    r = cli("call", "HelloService.Hello", "world", "--etcd", etcd.endpoint)
    assert (r.returncode, r.stdout, r.stderr) == (0, '"hello:world"\n', "")
    # each ARG is JSON where it parses, else a string
    r = cli("call", "HelloService.Echo", "1", '"2"', "true", "null", "[1,2]", '{"a":1}', "plain",
            "--etcd", etcd.endpoint)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"args": [1, "2", True, None, [1, 2], {"a": 1}, "plain"],
                                    "kwargs": {}}
    r = cli("call", "HelloService.Echo", "--kw", "a=1", "-k", "b=x", "--etcd", etcd.endpoint)
    assert json.loads(r.stdout) == {"args": [], "kwargs": {"a": 1, "b": "x"}}


def test_call_errors_are_one_line_with_exit_codes(serve_node, etcd):
    serve_node("tests.services")
    r = cli("call", "HelloService.Fail", "boom", "--etcd", etcd.endpoint)
    assert r.returncode == 1 and r.stdout == ""
    assert "ValueError: boom" in one_line_error(r)
    r = cli("call", "HelloService.Fail", "boom", "--etcd", etcd.endpoint, "--debug")
    assert r.returncode == 1 and "Traceback" in r.stderr and "ValueError: boom" in r.stderr
    r = cli("call", "HelloService.Nope", "--etcd", etcd.endpoint)
    assert r.returncode == 1 and "MethodNotFound" in one_line_error(r)
    r = cli("call", "HelloService.Pid", "1", "2", "--etcd", etcd.endpoint)
    assert r.returncode == 1 and "InvalidParams" in one_line_error(r)
    r = cli("call", "NoSuchService.Hello", "--etcd", etcd.endpoint, "--timeout", "2")
    assert r.returncode == 3 and "ServiceUnavailable" in one_line_error(r)
    r = cli("call", "no_dot", "--etcd", etcd.endpoint)
    assert r.returncode == 2 and "Service.method" in r.stderr
    r = cli("call", "HelloService.Echo", "1", "--kw", "a=1", "--etcd", etcd.endpoint)
    assert r.returncode == 2


def test_call_with_etcd_unreachable_says_so(etcd):
    r = cli("call", "HelloService.Hello", "x", "--etcd", f"127.0.0.1:{free_port()}",
            "--timeout", "1.5")
    assert r.returncode == 3
    assert "etcd did not answer" in one_line_error(r)


def test_ls_lists_services_nodes_and_metadata(serve_node, etcd):
    a = serve_node("tests.services")
    b = serve_node("tests.spec_services")
    r = cli("ls", "--etcd", etcd.endpoint)
    assert r.returncode == 0, r.stderr
    assert "HelloService  (1 node)" in r.stdout and "Spec  (1 node)" in r.stdout
    assert a.address in r.stdout and b.address in r.stdout
    assert f"pid={a.pid}" in r.stdout and "Hello*" in r.stdout   # * = idempotent
    r = cli("ls", "Spec", "--json", "--etcd", etcd.endpoint)
    listing = json.loads(r.stdout)
    assert list(listing) == ["Spec"]
    [node] = listing["Spec"]
    assert node["address"] == b.address and node["meta"]["pid"] == b.pid
    assert node["meta"]["methods"]["subtract"] == {"idempotent": True}
    r = cli("ls", "Nobody", "--etcd", etcd.endpoint)
    assert r.returncode == 1 and "no nodes of Nobody" in r.stdout
    r = cli("ls", "--etcd", f"127.0.0.1:{free_port()}")
    assert r.returncode == 3 and one_line_error(r)


class Watch:
    """A running ``watch`` whose stdout lines arrive on a queue."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, "-m", "framework", "watch", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.stderr: "list[str]" = []
        self.watching = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def _read_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line)
            if "watching" in line:
                self.watching.set()

    def wait_watching(self, timeout=20.0) -> None:
        """Blocks until the initial list is done: a node registered after this is a 'join'."""
        assert self.watching.wait(timeout), f"watch never started; stderr: {''.join(self.stderr)}"

    def next(self, timeout=20.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no watch line within {timeout}s; stderr: {''.join(self.stderr)}")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_watch_streams_joins_and_leaves(serve_node, etcd, processes):
    first = serve_node("tests.services")
    w = processes.add(Watch("HelloService", "--etcd", etcd.endpoint, "--log-level", "info"))
    line = w.next().split()
    assert line[1:4] == ["present", "HelloService", first.address]
    w.wait_watching()
    second = serve_node("tests.services")
    assert w.next().split()[1:4] == ["join", "HelloService", second.address]
    first.terminate()   # SIGTERM: deregisters at once
    assert w.next().split()[1:4] == ["leave", "HelloService", first.address]
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(timeout=10) == 0


def test_watch_all_services_as_json_picks_up_new_services(serve_node, etcd, processes):
    w = processes.add(Watch("--etcd", etcd.endpoint, "--json", "--interval", "0.2",
                            "--log-level", "info"))
    w.wait_watching()
    spec = serve_node("tests.spec_services")
    event = json.loads(w.next())
    assert (event["event"], event["service"], event["address"]) == ("join", "Spec", spec.address)
    assert event["meta"]["pid"] == spec.pid
    spec.kill()   # SIGKILL: the leave comes when the lease expires
    event = json.loads(w.next(timeout=20))
    assert (event["event"], event["service"]) == ("leave", "Spec")
    w.proc.send_signal(signal.SIGINT)
    assert w.proc.wait(timeout=10) == 0


@pytest.mark.parametrize("command,expected", [
    ([], ["serve", "gateway", "call", "ls", "watch", "etcd", "exit codes"]),
    (["serve"], ["GET /healthz", "--grace", "--ttl", "SIGTERM"]),
    (["gateway"], ["--max-body", "--max-batch", "--max-depth", "503", "413"]),
    (["call"], ["parsed as JSON", "--timeout", "--debug", "exit 1"]),
    (["ls"], ["--json", "SERVICE"]),
    (["watch"], ["join", "leave", "--json"]),
    (["etcd"], ["--data-dir"]),
])
def test_help_texts(command, expected):
    r = cli(*command, "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for word in expected:
        assert word in text, (command, word)


def test_json_logs_from_a_node(serve_node, etcd):
    node = serve_node("tests.services", extra_args=["--log-format", "json"])
    wait_until(lambda: "registered" in node.log(), timeout=10, message="registration logged")
    records = [json.loads(line) for line in node.log().splitlines() if line.strip()]
    registered = [r for r in records if r["msg"].startswith("registered ")]
    assert registered and registered[0]["level"] == "info"
    assert registered[0]["logger"] == "framework.registry" and registered[0]["pid"] == node.pid


def test_call_and_describe_carry_the_shared_token(serve_node, etcd):
    serve_node("tests.services", env={"FRAMEWORK_TOKEN": "t0ken"})
    refused = cli("call", "HelloService.Hello", "world", "--etcd", etcd.endpoint)
    assert refused.returncode == 1 and "Unauthorized" in one_line_error(refused)
    r = cli("call", "HelloService.Hello", "world", "--etcd", etcd.endpoint, "--token", "t0ken")
    assert r.returncode == 0 and json.loads(r.stdout) == "hello:world", r.stderr
    d = cli("describe", "HelloService", "--etcd", etcd.endpoint,
            env={"FRAMEWORK_TOKEN": "t0ken"})
    assert d.returncode == 0, d.stderr
    assert "HelloService.Hello" in {m["name"] for m in json.loads(d.stdout)["methods"]}
