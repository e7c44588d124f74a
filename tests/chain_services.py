"""Two services that call each other, for interceptors, tracing and lanes: Front calls Back
through ``self.client``, and Back reports what the call it is running carries."""
import os
import time

import framework


def _seen() -> dict:
    call = framework.current_call()
    md = call.metadata
    return {"pid": os.getpid(), "metadata": dict(md), "remaining": call.remaining(),
            "peer": list(call.peer) if call.peer else None,
            "trace_id": md.get("traceparent", "--").split("-")[1] if "traceparent" in md else None}


@framework.service
class Back(framework.Service):
    @framework.idempotent
    def Seen(self):
        """What this call carries: metadata, trace id, time left, caller."""
        return _seen()

    @framework.idempotent
    def Sleep(self, seconds):
        time.sleep(seconds)
        return os.getpid()

    def Touch(self, path):
        """A side effect a test can look for: an interceptor that rejects the call prevents it."""
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
        return os.getpid()


@framework.service
class Front(framework.Service):
    @framework.idempotent
    def Chain(self):
        """Calls Back.Seen: both hops' view."""
        return {"front": _seen(), "back": self.client.Back.Seen()}

    def Slow(self, seconds):
        """Calls Back.Sleep: a slow downstream must not outlive this call's own deadline."""
        started = time.monotonic()
        try:
            self.client.Back.Sleep(seconds)
            return {"outcome": "ok", "took": time.monotonic() - started}
        except framework.Timeout:
            return {"outcome": "timeout", "took": time.monotonic() - started}
