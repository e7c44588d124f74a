"""Interceptors the tests load into real nodes with ``serve --interceptor tests.interceptors:NAME``."""
import framework


def outer(call, proceed):
    call.metadata["x-order"] = call.metadata.get("x-order", "") + "outer,"
    return proceed(call)


def inner(call, proceed):
    call.metadata["x-order"] = call.metadata.get("x-order", "") + "inner,"
    return proceed(call)


def deny_mallory(call, proceed):
    """Rejects mallory before the handler runs."""
    if call.metadata.get("x-user") == "mallory":
        raise framework.Unauthorized(f"{call.method}: mallory may not call")
    return proceed(call)


def tag_result(call, proceed):
    """Wraps the result, as an interceptor may."""
    result = proceed(call)
    return {"wrapped": result} if call.method == "Sleep" else result
