"""The demo service: ``python -m framework serve demo_hello.service``."""
import framework


@framework.service
class HelloService(framework.Service):
    @framework.idempotent
    def Hello(self, request):
        return "hello:" + request
