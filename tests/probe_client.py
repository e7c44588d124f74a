"""Run as ``python tests/probe_client.py ETCD FLAG [--patched]``: a caller that only sleeps.

Prints one JSON line per cache change seen by a discovery listener while the main thread is blocked in
``time.sleep`` (polling for FLAG to appear), then calls from 8 threads and prints the results.
"""
import sys

if "--patched" in sys.argv:
    from gevent import monkey
    monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import framework  # noqa: E402
from framework.testing import Load  # noqa: E402


def main():
    endpoint, flag = sys.argv[1], sys.argv[2]
    client = framework.Client(etcd=endpoint, timeout=10)

    def on_change(service, added, removed, snapshot):
        print(json.dumps({"service": service, "added": [n.address for n in added],
                          "removed": [n.address for n in removed], "at": time.time()}), flush=True)

    client.discovery.subscribe(on_change)
    print(json.dumps({"ready": client.nodes("HelloService")}), flush=True)
    while not os.path.exists(flag):
        time.sleep(0.05)   # the caller does nothing but sleep; the cache must stay current anyway
    load = Load(client.HelloService.Pid, callers=8, per_caller=50, join_timeout=None).run()
    print(json.dumps({"pids": sorted(load.by_result), "calls": len(load.ok),
                      "errors": [e.value for e in load.errors],
                      "nodes": client.nodes("HelloService")}), flush=True)
    client.close()


main()
