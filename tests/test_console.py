"""The operator console (``GET /ui`` on the gateway) in a real headless Chromium.

Debian's ``chromium`` and ``chromium-driver``, driven by selenium, load the page from a real
``python -m framework gateway`` in front of real ``tests.services`` nodes on a real etcd: the page
sees the nodes, sees one leave after it is killed and another join - each within a second of the
registry - and calls ``HelloService.Hello`` through its form. A missing browser fails, never skips.

``CONSOLE_SCREENSHOT=docs/console.png`` saves the screenshot the README shows.
"""
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

import framework
from framework import Client
from framework.console import Console
from framework.etcd import EtcdConfig
from framework.gateway import Gateway
from framework.testing import ProcessGroup, wait_until
from tests.fake_etcd import FakeEtcd

TOKEN = "console-s3cret"
WAIT = 10.0   # seconds any one thing may take to show on the page


class Chromium:
    """Headless Chromium with a fresh profile (``--no-sandbox``: the tests may run as root),
    driven through Debian's chromedriver; ``close()`` quits it."""

    def __init__(self):
        self.binary, self.driver_path = shutil.which("chromium"), shutil.which("chromedriver")
        if not self.binary or not self.driver_path:
            pytest.fail("the console test needs Debian's chromium and chromium-driver (found "
                        f"chromium={self.binary}, chromedriver={self.driver_path}): "
                        "run `make install`", pytrace=False)
        self.profile = tempfile.mkdtemp(prefix="framework-chromium-")
        self.driver = None

    def start(self) -> "Chromium":
        options = webdriver.ChromeOptions()
        options.binary_location = self.binary
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--user-data-dir={self.profile}", "--window-size=1280,1000",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking"):
            options.add_argument(arg)
        # the driver named explicitly: selenium never looks for (or downloads) one of its own
        self.driver = webdriver.Chrome(options=options, service=ChromeService(
            executable_path=self.driver_path, log_output=subprocess.DEVNULL))
        self.driver.set_page_load_timeout(WAIT)
        self.driver.set_script_timeout(WAIT)
        return self

    def close(self):
        if self.driver is not None:
            self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def world():
    """One etcd; node ``a`` (killed by a test: a short lease) and node ``b`` (labelled); a gateway,
    and a second gateway with a token, in front of them; and the browser."""
    group = ProcessGroup()
    try:
        chromium = group.add(Chromium())   # no browser: fail now, before starting anything
        etcd = group.start_etcd()
        with ThreadPoolExecutor(5) as pool:   # they need only etcd: started side by side
            starting = {
                "a": pool.submit(group.start_node, "tests.services", etcd.endpoint, ttl=2),
                "b": pool.submit(group.start_node, "tests.services", etcd.endpoint,
                                 extra_args=["--label", "zone=eu-1"]),
                "gateway": pool.submit(group.start_gateway, etcd.endpoint),
                "locked": pool.submit(group.start_gateway, etcd.endpoint, "--token", TOKEN),
                "chromium": pool.submit(chromium.start)}
            world = {name: future.result(timeout=30) for name, future in starting.items()}
        world.update(etcd=etcd, group=group,
                     registry=group.add(EtcdConfig.coerce(etcd.endpoint).client()))
        yield world
    finally:
        group.close()


@pytest.fixture
def browser(world):
    return world["chromium"].driver


def open_console(driver, gateway):
    driver.get(f"http://{gateway.address}/ui")
    WebDriverWait(driver, WAIT).until(
        lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "live")


def assert_no_page_errors(driver):
    """No script error, no request the page's policy blocked, no failed request (but the favicon
    the gateway does not serve)."""
    errors = [entry["message"] for entry in driver.get_log("browser")
              if entry["level"] == "SEVERE" and "/favicon.ico" not in entry["message"]]
    assert not errors, errors


def page_nodes(driver, service):
    """The addresses the page lists for ``service`` right now (read in one go: rows are redrawn)."""
    return set(driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(row => row.dataset.node)",
        f'[data-service="{service}"] tr[data-node]'))


def registry_nodes(world, service):
    _, kvs = world["registry"].get_prefix(f"/services/{service}/")
    return {kv.key.rsplit("/", 1)[1] for kv in kvs}


def page_lag(driver, world, service, wanted, timeout=WAIT):
    """Seconds from the registry's nodes of ``service`` meeting ``wanted`` to the page's."""
    seen = {}
    deadline = time.monotonic() + timeout
    while len(seen) < 2:
        now = time.monotonic()
        assert now < deadline, f"{service}: registry/page never showed the change ({seen})"
        if "registry" not in seen and wanted(registry_nodes(world, service)):
            seen["registry"] = now
        if "page" not in seen and wanted(page_nodes(driver, service)):
            seen["page"] = time.monotonic()
        time.sleep(0.01)
    return seen["page"] - seen["registry"]


def text(driver, selector):
    return driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e && e.textContent", selector)


def counter(driver, service, role):
    value = text(driver, f'[data-service="{service}"] [data-role="{role}"] .v')
    return int(value) if value is not None else None


# ---- the page and its routes, over plain HTTP ----------------------------------------------------

def test_the_page_and_its_files_are_served_with_a_strict_policy(world):
    gateway = world["gateway"]
    for path, kind in (("/ui", "text/html"), ("/ui/console.js", "text/javascript"),
                       ("/ui/console.css", "text/css")):
        status, headers, body = gateway.request("GET", path)
        assert status == 200 and headers["Content-Type"].startswith(kind), (path, headers)
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
    _, _, page = gateway.request("GET", "/ui")
    assert b"http" not in page.replace(b"http-equiv", b"")   # nothing from another origin
    assert gateway.request("POST", "/ui", b"{}")[0] == 405   # read-only


def test_state_lists_every_registered_service_with_nodes_and_counts(world):
    gateway = world["gateway"]
    status, answer = gateway.post({"jsonrpc": "2.0", "method": "HelloService.Hello",
                                   "params": ["x"], "id": 1})
    assert status == 200

    def hello():
        state = json.loads(gateway.request("GET", "/ui/state")[2])
        found = [s for s in state["services"] if s["name"] == "HelloService"]
        return found and found[0]["calls"] >= 1 and found[0]["node_count"] >= 2 and state
    state = wait_until(hello, timeout=WAIT, message="HelloService's nodes and calls in /ui/state")
    names = {s["name"] for s in state["services"]}
    assert {"HelloService", "Ledger", "WorkService", "GreeterService", "Burn"} <= names
    node = next(n for s in state["services"] if s["name"] == "HelloService" for n in s["nodes"]
                if n["address"] == world["b"].address)
    assert node["labels"] == {"zone": "eu-1"} and node["health"] == "ok"
    assert node["version"] == framework.__version__ and node["uptime_s"] >= 0
    assert node["pid"] == world["b"].pid
    assert state["gateway"]["token_required"] is False


def test_browser_calls_need_the_gateway_token(world):
    """With a token, a request from a browser page (it carries ``Origin``) must bring it; a
    program's call (no ``Origin``) is served as before; without a token nothing changes."""
    call = json.dumps({"jsonrpc": "2.0", "method": "HelloService.Hello", "params": ["t"], "id": 7})
    locked, gateway = world["locked"], world["gateway"]
    origin = {"Origin": f"http://{locked.address}", "Content-Type": "application/json"}
    cases = [(locked, {}, 200), (locked, origin, 403),
             (locked, {**origin, "Authorization": "Bearer wrong"}, 403),
             (locked, {**origin, "Authorization": f"Bearer {TOKEN}"}, 200),
             (gateway, {"Origin": "http://elsewhere.example"}, 200)]
    for target, headers, expected in cases:
        status, _, body = target.request("POST", "/", call, headers)
        answer = json.loads(body)
        assert status == expected, (headers, answer)
        if expected == 403:
            assert answer["error"]["code"] == framework.Unauthorized.code
        else:
            assert answer["result"] == "hello:t"


# ---- in the browser ------------------------------------------------------------------------------

def test_the_page_follows_nodes_leaving_and_joining_within_a_second(world, browser):
    a, b = world["a"], world["b"]
    open_console(browser, world["gateway"])
    WebDriverWait(browser, WAIT).until(
        lambda d: page_nodes(d, "HelloService") == {a.address, b.address})
    row = f'[data-service="HelloService"] tr[data-node="{b.address}"]'
    assert text(browser, f"{row} .label") == "zone=eu-1"
    assert text(browser, f"{row} .health") == "ok"
    assert text(browser, f'{row} [data-role="version"]') == framework.__version__
    assert re.fullmatch(r"\d+s|\d+m \d+s", text(browser, f'{row} [data-role="uptime"]'))
    assert text(browser, '[data-service="Ledger"] [data-role="node-count"]') == "2 nodes"

    a.kill()   # SIGKILL: its key goes when its 2 s lease runs out
    lag = page_lag(browser, world, "HelloService", lambda nodes: a.address not in nodes)
    print(f"node left: on the page {lag:.3f}s after the registry")
    assert lag < 1.0, f"the page showed the node leaving {lag:.2f}s after the registry"

    c = world["group"].start_node("tests.services", world["etcd"].endpoint,
                                  extra_args=["--label", "zone=eu-2"])
    lag = page_lag(browser, world, "HelloService", lambda nodes: c.address in nodes)
    print(f"node joined: on the page {lag:.3f}s after the registry")
    assert lag < 1.0, f"the page showed the node joining {lag:.2f}s after the registry"
    assert page_nodes(browser, "HelloService") == {b.address, c.address}
    assert_no_page_errors(browser)


def fill_params(driver, method, values):
    """Choose ``method`` and fill its parameters: the fields built from ``/openrpc.json`` when the
    gateway serves it (then they must be there), else the free-form JSON field."""
    WebDriverWait(driver, WAIT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f'#method option[value="{method}"]'))
    Select(driver.find_element(By.ID, "method")).select_by_value(method)
    schema = serves_openrpc(driver)
    if schema:
        WebDriverWait(driver, WAIT).until(
            lambda d: d.find_element(By.ID, "call-form").get_attribute("data-schema") == "openrpc")
        for name, value in values.items():
            field = WebDriverWait(driver, WAIT).until(
                lambda d: d.find_element(By.CSS_SELECTOR, f'#params [data-param="{name}"]'))
            field.clear()
            field.send_keys(value)
    else:
        field = WebDriverWait(driver, WAIT).until(lambda d: d.find_element(By.ID, "params-json"))
        field.clear()
        field.send_keys(json.dumps(list(values.values())))


def serves_openrpc(driver):
    """True when the page's gateway serves ``/openrpc.json``."""
    return driver.execute_script(
        "return fetch('/openrpc.json', {cache: 'no-store'}).then(r => r.ok)")


def call_and_wait(driver, outcome):
    driver.find_element(By.ID, "call-button").click()
    WebDriverWait(driver, WAIT).until(
        lambda d: d.find_element(By.ID, "call-status").get_attribute("data-outcome") == outcome)
    return text(driver, "#call-status"), text(driver, "#call-result")


def test_the_call_form_calls_hello_and_shows_errors(world, browser):
    open_console(browser, world["gateway"])
    WebDriverWait(browser, WAIT).until(
        lambda d: counter(d, "HelloService", "calls-total") is not None)
    calls = counter(browser, "HelloService", "calls-total")
    errors = counter(browser, "HelloService", "errors-total")

    fill_params(browser, "HelloService.Hello", {"request": "world"})
    status, result = call_and_wait(browser, "ok")
    assert status.startswith("200") and json.loads(result) == "hello:world"

    fill_params(browser, "HelloService.Fail", {"message": "boom <b>"})
    status, result = call_and_wait(browser, "error")
    assert "-32000" in status and "boom <b>" in result   # shown as text, never as markup
    assert not browser.find_elements(By.CSS_SELECTOR, "#call-result b")
    WebDriverWait(browser, WAIT).until(
        lambda d: counter(d, "HelloService", "calls-total") >= calls + 2
        and counter(d, "HelloService", "errors-total") >= errors + 1)
    assert_no_page_errors(browser)
    screenshot(browser, world)


def test_the_call_form_obeys_the_gateway_token(world, browser):
    open_console(browser, world["locked"])
    WebDriverWait(browser, WAIT).until(lambda d: d.find_element(By.ID, "token").is_displayed())
    fill_params(browser, "HelloService.Hello", {"request": "locked"})
    status, _ = call_and_wait(browser, "error")
    assert status.startswith("403") and str(framework.Unauthorized.code) in status
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    status, result = call_and_wait(browser, "ok")
    assert json.loads(result) == "hello:locked"


def screenshot(driver, world):
    """With ``CONSOLE_SCREENSHOT=path``: the page with some traffic, saved as a PNG."""
    path = os.environ.get("CONSOLE_SCREENSHOT")
    if not path:
        return
    gateway, until = world["gateway"], time.monotonic() + 2.0
    while time.monotonic() < until:   # a few calls a second, so the rates are not all zero
        gateway.post({"jsonrpc": "2.0", "method": "HelloService.Hello", "params": ["x"], "id": 1})
        gateway.post({"jsonrpc": "2.0", "method": "Ledger.Charge", "params": [], "id": 2})
        time.sleep(0.05)
    fill_params(driver, "HelloService.Hello", {"request": "world"})
    call_and_wait(driver, "ok")
    assert driver.save_screenshot(path), path


# ---- the state's bounds and cache, over an in-memory registry ------------------------------------

def test_the_state_is_bounded_cached_and_outlives_a_registry_outage():
    etcd = FakeEtcd()
    for service in ("A", "B", "C"):
        for host in (1, 2, 3):
            address = f"10.0.0.{host}:9000"
            etcd.put(f"/services/{service}/{address}", json.dumps(
                {"address": address, "labels": {"zone": "z"}, "started": time.time() - 5}))
    client = Client(etcd_client=etcd)
    try:
        console = Console(Gateway(client=client))
        console.max_services, console.max_nodes, console.names_refresh = 2, 2, 0.0
        for outcome in ("ok", "ok", "error"):
            console.gateway.metrics.observe("A", "m", outcome, 0.001)
        state = json.loads(console.state_json())
        assert [s["name"] for s in state["services"]] == ["A", "B"] and state["service_count"] == 3
        a = state["services"][0]
        assert (a["node_count"], len(a["nodes"]), a["calls"], a["errors"]) == (3, 2, 3, 1)
        assert a["nodes"][0]["labels"] == {"zone": "z"} and a["nodes"][0]["uptime_s"] >= 5

        started, builds = time.monotonic(), console.builds
        while time.monotonic() - started < 0.5:   # many consoles polling at once
            console.state_json()
        assert console.builds - builds <= 0.5 / console.max_age + 1

        etcd.delete("/services/A/10.0.0.1:9000")   # a change shows on the next request
        wait_until(lambda: json.loads(console.state_json())["services"][0]["node_count"] == 2,
                   timeout=2, message="the node leaving")
        etcd.down = True   # the names cannot be listed: the watched services stay, with the error

        def registry_error():
            state = json.loads(console.state_json())
            return not state["registry"]["ok"] and state
        state = wait_until(registry_error, timeout=2, message="the registry error")
        assert [s["name"] for s in state["services"]] == ["A", "B"]
        assert "unreachable" in state["registry"]["error"]
    finally:
        client.close()
