"""The demo caller: ``python demo_hello/client.py [--etcd HOST:PORT] [--count N] [--interval S]``.

Calls HelloService.Hello in a loop, prints each answer, and prints the live nodes whenever they change.
"""
import argparse
import time

import framework


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--etcd", default=None, help="etcd endpoints (default $ETCD_ENDPOINTS)")
    p.add_argument("--count", type=int, default=0, help="stop after N calls (default: run forever)")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between calls")
    args = p.parse_args()
    failures = 0
    with framework.Client(etcd=args.etcd, timeout=5.0) as client:
        seen = None
        i = 0
        while not args.count or i < args.count:
            i += 1
            nodes = client.nodes("HelloService")
            if nodes != seen:
                print(f"live nodes: {nodes}", flush=True)
                seen = nodes
            try:
                print(f"#{i} {client.HelloService.Hello(f'world-{i}')}", flush=True)
            except framework.RpcError as exc:
                failures += 1
                print(f"#{i} failed: {exc!r}", flush=True)
            time.sleep(args.interval)
    print(f"done: {i} calls, {failures} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
