"""Services the integration tests serve in real node processes."""
import os
import time

import framework


@framework.service
class HelloService(framework.Service):
    @framework.idempotent
    def Hello(self, request):
        return "hello:" + request

    @framework.idempotent
    def Pid(self):
        return os.getpid()

    @framework.idempotent
    def Big(self, payload):
        """A large request (the network tests send 1 MB) and a small answer: which node ran it."""
        return os.getpid()

    @framework.idempotent
    def Sleep(self, seconds):
        time.sleep(seconds)
        return os.getpid()

    def Fail(self, message):
        raise ValueError(message)

    def Echo(self, *args, **kwargs):
        return {"args": list(args), "kwargs": kwargs}

    def _private(self):
        return "never reachable"


@framework.service("Ledger")
class LedgerService(framework.Service):
    """Side effects are appended to a file, so tests can count how often a call really ran."""

    def Charge(self, path, die_once=None):
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
        if die_once and not os.path.exists(die_once):
            open(die_once, "w").close()
            os.kill(os.getpid(), 9)   # the node dies after receiving (and running) the call
        return os.getpid()

    @framework.idempotent
    def Record(self, path, die_once=None):
        return self.Charge(path, die_once)


@framework.service
class GreeterService(framework.Service):
    """Calls HelloService through self.client: services find each other like callers do."""

    @framework.idempotent
    def Greet(self, name):
        return "greeter->" + self.client.HelloService.Hello(name)


@framework.service
class WorkService(framework.Service):
    def Work(self, ms):
        """Not idempotent: a rolling restart must still lose none of these calls."""
        time.sleep(ms / 1000.0)
        return os.getpid()

    @framework.idempotent
    def Read(self, ms):
        time.sleep(ms / 1000.0)
        return os.getpid()


@framework.service("Burn")
class BurnService(framework.Service):
    """CPU-bound calls, for the overload scenario."""

    @framework.idempotent
    def Cpu(self, ms):
        end = time.process_time() + ms / 1000.0   # CPU time: the same work however busy the host
        while time.process_time() < end:
            pass
        return os.getpid()
