"""A Hello node for the balancer case: ``BENCH_DELAY_MS`` (default 0) delays every answer."""
import os
import time

import framework

_DELAY = float(os.environ.get("BENCH_DELAY_MS", "0")) / 1000.0


@framework.service("HelloService")
class HelloService(framework.Service):
    @framework.idempotent
    def Hello(self, request):
        if _DELAY:
            time.sleep(_DELAY)  # gevent-patched in a served node: only this call waits
        return "hello:" + request
