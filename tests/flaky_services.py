"""A service whose node fails inside the framework on every N-th call, set per node process by
``$FLAKY_EVERY`` (0, never, by default): such calls return a result msgpack cannot encode, so the
node answers -32603, a node-level failure, not a handler's error. Failures are spread out, never two
in a row, so only a failure *rate* can tell this node from its peers."""
import itertools
import os

import framework

EVERY = int(os.environ.get("FLAKY_EVERY", "0"))
_calls = itertools.count(1)


@framework.service
class Flaky(framework.Service):
    @framework.idempotent
    def Work(self):
        if EVERY and next(_calls) % EVERY == 0:
            return object()   # not encodable: the node answers InternalError
        return os.getpid()
