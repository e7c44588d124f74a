"""Run as ``python tests/gray_probe.py ETCD``: calls to a node that never reads (``Deaf``, see
tests/fake_nodes.py), from a gevent-patched client. Prints one JSON line per call: what it raised
and how long it took."""
from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import framework  # noqa: E402

BIG = "x" * (12 << 20)   # more than the kernel buffers between the two ends


def main():
    client = framework.Client(etcd=sys.argv[1], timeout=0.5)
    for method, payload in (("Deaf.Put", BIG), ("Deaf.Put", "small"), ("Deaf.Get", BIG)):
        t0 = time.monotonic()
        try:
            client.call(method, [payload])
            kind = "ok"
        except framework.RpcError as exc:
            kind = type(exc).__name__
        print(json.dumps({"method": method, "kind": kind, "took": time.monotonic() - t0}),
              flush=True)
    client.close()


if __name__ == "__main__":
    main()
