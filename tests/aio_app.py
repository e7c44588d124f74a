"""A FastAPI application calling services through :mod:`framework.aio`, as a user would write one.

``python -m tests.aio_app ETCD`` serves it with uvicorn on a free loopback port and prints
``ready <port>`` once the socket listens (the client is made in the app's lifespan, so on the
server's own event loop).

``GET /hello/{name}[?user=...]`` calls ``HelloService.Hello`` (with the user as metadata, if given)
and ``HelloService.Pid``, and says which user the app's async interceptor saw in the first call's
metadata ("anonymous" when none was given). A framework error becomes a JSON answer with the
error's HTTP status.
"""
from __future__ import annotations

import contextlib
import contextvars
import socket
import sys
from typing import Optional

import fastapi
import uvicorn
from fastapi.responses import JSONResponse

import framework
from framework.aio import Client


def create_app(etcd: str) -> fastapi.FastAPI:
    # the interceptor runs in the request's own task: what it sets, the endpoint reads
    seen_user: contextvars.ContextVar = contextvars.ContextVar("seen_user", default=None)

    async def tag_user(call, proceed):
        call.metadata.setdefault("x-user", "anonymous")
        seen_user.set(call.metadata["x-user"])
        return await proceed(call)

    @contextlib.asynccontextmanager
    async def lifespan(app: fastapi.FastAPI):
        async with Client(etcd=etcd, timeout=5.0, interceptors=[tag_user]) as client:
            app.state.client = client
            yield

    app = fastapi.FastAPI(lifespan=lifespan)

    @app.exception_handler(framework.RpcError)
    async def rpc_error(request: fastapi.Request, exc: framework.RpcError) -> JSONResponse:
        return JSONResponse({"error": type(exc).__name__, "message": str(exc)},
                            status_code=exc.http_status if exc.http_status != 200 else 502)

    @app.get("/hello/{name}")
    async def hello(name: str, request: fastapi.Request, user: Optional[str] = None) -> dict:
        client = request.app.state.client
        greeting = await client.call("HelloService.Hello", [name],
                                     metadata={"x-user": user} if user else None)
        return {"greeting": greeting, "user": seen_user.get(),
                "pid": await client.HelloService.Pid()}

    return app


def main(etcd: str) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    server = uvicorn.Server(uvicorn.Config(create_app(etcd), log_level="warning", lifespan="on",
                                           backlog=1024))
    print(f"ready {sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1])
