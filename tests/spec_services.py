"""Services for the JSON-RPC 2.0 spec examples (section 7), served by real nodes in the HTTP tests."""
import framework


@framework.service
class Spec(framework.Service):
    """The methods the specification's examples call, under the service name ``Spec``."""

    def __init__(self):
        self.notified = []

    @framework.idempotent
    def subtract(self, minuend, subtrahend):
        return minuend - subtrahend

    @framework.idempotent
    def sum(self, *numbers):
        return sum(numbers)

    @framework.idempotent
    def get_data(self):
        return ["hello", 5]

    def update(self, *args):
        self.notified.append(["update", list(args)])

    def notify_hello(self, *args):
        self.notified.append(["notify_hello", list(args)])

    def notify_sum(self, *args):
        self.notified.append(["notify_sum", list(args)])

    @framework.idempotent
    def notifications(self):
        """What the notifications above recorded, so a test can see that they ran."""
        return self.notified

    @framework.idempotent
    def echo_id(self, value):
        return value

    def fail(self, message):
        raise KeyError(message)

    @framework.idempotent
    def binary(self):
        return b"\xff\x00"

    @framework.idempotent
    def nan(self):
        return float("nan")
