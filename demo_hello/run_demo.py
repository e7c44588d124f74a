"""``make demo``: a dev etcd, two HelloService nodes, the HTTP gateway and the demo client; a curl
call goes through the gateway; one node is SIGKILLed while the client keeps getting answers;
everything is cleaned up at the end."""
import os
import shutil
import subprocess
import sys
import threading
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from framework.testing import (EtcdProcess, GatewayProcess, NodeProcess,  # noqa: E402
                               ProcessGroup, wait_until)


def http(url: str, body: str = None) -> str:
    with urllib.request.urlopen(url, body.encode() if body else None, timeout=10) as resp:
        return resp.read().decode().strip()


def main() -> int:
    group = ProcessGroup()
    try:
        etcd = group.add(EtcdProcess().start())
        print(f"[demo] etcd on {etcd.endpoint}")
        nodes = [group.add(NodeProcess("demo_hello.service", etcd.endpoint, ttl=3).start())
                 for _ in range(2)]
        for n in nodes:
            print(f"[demo] HelloService node pid {n.pid} on {n.address}")
        gw = group.add(GatewayProcess(etcd.endpoint).start()).address
        body = '{"jsonrpc":"2.0","id":1,"method":"HelloService.Hello","params":["curl"]}'
        print(f"[demo] gateway on {gw}:\n  $ curl -s {gw} -d '{body}'")
        if shutil.which("curl"):
            out = subprocess.run(["curl", "-s", gw, "-d", body], capture_output=True, text=True,
                                 timeout=10).stdout.strip()
        else:  # the same request, for machines without curl
            out = http(f"http://{gw}/", body)
        print(f"  {out}")
        print(f"  $ curl -s http://{nodes[1].address}/healthz   # every node speaks HTTP too")
        print("  " + http(f"http://{nodes[1].address}/healthz"))
        client = subprocess.Popen(
            [sys.executable, "demo_hello/client.py", "--etcd", etcd.endpoint, "--count", "60",
             "--interval", "0.1"], stdout=subprocess.PIPE, text=True, start_new_session=True)
        group.add(type("Kill", (), {"close": lambda self: client.kill()})())
        answers = []

        def relay():
            for line in client.stdout:
                print("  client | " + line, end="", flush=True)
                answers.append(line)

        threading.Thread(target=relay, daemon=True).start()
        wait_until(lambda: sum("hello:" in a for a in answers) >= 15, timeout=30)
        print(f"[demo] SIGKILL node pid {nodes[0].pid} ({nodes[0].address}); the client keeps going")
        nodes[0].kill()
        code = client.wait(60)
        print(f"[demo] client exited {code}; stopping everything")
        return code
    finally:
        group.close()


if __name__ == "__main__":
    raise SystemExit(main())
