"""A private test network built from Linux network namespaces, and real faults applied to it.

:class:`TestNetwork` makes a hub namespace holding a bridge, and one namespace per member (a node,
an etcd member, a client) joined to the bridge by a veth pair, with an address from 198.18.0.0/15
(RFC 2544 benchmarking range). Nothing is added to the host's own namespace, so no route leads off
the host and the host's interfaces are untouched. Processes run inside a member with
:meth:`TestNetwork.prefix` (``ip netns exec NAME``) or :meth:`TestNetwork.popen`.

Faults are tc qdiscs in the hub, where no sender can see them (a drop on a host's own interface is
reported to its TCP, which then retries every 0.5 s instead of backing off, and the fault looks
healed at once): traffic towards a member is dropped on the hub end of its veth, traffic from it on
an ifb that the hub end's ingress is redirected to. A drop is ``netem loss 100%`` where the kernel
has netem, else a ``tbf`` whose bucket is smaller than any packet. Delay and loss need netem
(:meth:`TestNetwork.lossy`); without it, :meth:`TestNetwork.relay` puts a userspace TCP relay
(:mod:`framework.testing.relay`) inside a member, in front of a node that advertises the relay.

It needs root and ``ip``/``tc`` from iproute2; when anything is missing it raises
:class:`NetworkUnavailable` naming it (tests that use it fail, never skip).
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..devetcd import EtcdProcess
from .processes import NodeProcess
from .relay import Relay

__all__ = ["TestNetwork", "NetworkUnavailable", "NetnsEtcd", "remove_leftovers"]

FAMILY = "fwt"            # every namespace this module creates is named fwt<pid>n<k>-<role>
SUBNET = "198.18.0"       # each network has its own bridge, so all of them can share one /24
_NAMES = re.compile(rf"^{FAMILY}(\d+)n\d+-")
_CLONE_NEWNET = 0x40000000
_counter = iter(range(1 << 30))
_libc = ctypes.CDLL(None, use_errno=True)


class NetworkUnavailable(RuntimeError):
    """Root, a tool or a kernel feature the test network needs is missing; the message names it."""


def _cmd(argv: Sequence[str], what: str = "", check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        err = proc.stderr.strip()[-500:]
        if what:
            raise NetworkUnavailable(f"cannot create {what}: `{' '.join(argv)}` said {err!r}")
        raise RuntimeError(f"`{' '.join(argv)}` failed: {err}")
    return proc


def require_tools() -> None:
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise NetworkUnavailable(f"the test network needs {' and '.join(missing)} from iproute2 "
                                 "on PATH (apt-get install iproute2)")
    if os.geteuid() != 0:
        raise NetworkUnavailable("the test network needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN "
                                 "for network namespaces); run the tests as root, e.g. in CI")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> List[str]:
    out = _cmd(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _delete_namespace(ns: str) -> None:
    # a process left in a namespace would keep it (and its veth) alive after the name is gone
    pids = _cmd(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _cmd(["ip", "netns", "delete", ns], check=False)


def remove_leftovers() -> List[str]:
    """Delete the namespaces of earlier runs killed before their teardown: only names of this
    module's family whose creating process is gone, so a run in progress elsewhere is left alone."""
    gone = [ns for ns in _namespaces()
            if (m := _NAMES.match(ns)) and not _alive(int(m.group(1)))]
    for ns in gone:
        _delete_namespace(ns)
    return gone


class TestNetwork:
    """A bridge in a hub namespace and members added with :meth:`add`; ``close()`` removes it all.

    Members are named by the caller ("etcd", "a", "client"); each gets ``198.18.0.<n>``. Processes
    started through :meth:`popen`, :meth:`start_node` or :meth:`start_etcd` are killed by
    ``close()`` before the namespaces go.
    """

    __test__ = False   # not a test class, whatever pytest's name pattern says

    def __init__(self) -> None:
        require_tools()
        remove_leftovers()
        self.name = f"{FAMILY}{os.getpid()}n{next(_counter)}"
        self.hub = f"{self.name}-hub"
        self.members: Dict[str, int] = {}
        self.faults: Dict[str, str] = {}
        self._owned: list = []
        self._namespaces: List[str] = []
        try:
            self._add_namespace(self.hub)
            self._ip(self.hub, "link", "add", "br0", "type", "bridge", what="a bridge")
            self._ip(self.hub, "link", "set", "br0", "up")
            self.netem = self._has_netem()
        except BaseException:
            self.close()
            raise

    # ---- building ------------------------------------------------------------------------------

    def _add_namespace(self, ns: str) -> None:
        _cmd(["ip", "netns", "add", ns], what=f"network namespace {ns}")
        self._namespaces.append(ns)
        self._ip(ns, "link", "set", "lo", "up")

    def _ip(self, ns: str, *args: str, what: str = "") -> None:
        _cmd(["ip", "-n", ns, *args], what=what)

    def _tc(self, *args: str, check: bool = True, what: str = "") -> subprocess.CompletedProcess:
        return _cmd(["tc", "-n", self.hub, *args], what=what, check=check)

    def _has_netem(self) -> bool:
        self._ip(self.hub, "link", "add", "probe0", "type", "ifb",
                 what="an ifb device (CONFIG_IFB)")
        try:
            return self._tc("qdisc", "add", "dev", "probe0", "root", "netem", "loss", "100%",
                            check=False).returncode == 0
        finally:
            self._ip(self.hub, "link", "del", "probe0")

    def namespace(self, member: str) -> str:
        self.members[member]   # KeyError for a member never added
        return f"{self.name}-{member}"

    def address(self, member: str) -> str:
        return f"{SUBNET}.{self.members[member]}"

    def add(self, *members: str) -> "TestNetwork":
        """Add members: a namespace each, a veth to the bridge, an address, and the ingress
        redirect to the member's ifb (installed once: faults then only change qdiscs)."""
        for member in members:
            if not re.fullmatch(r"[a-z0-9]{1,12}", member) or member in self.members:
                raise ValueError(f"member name {member!r}: 1-12 of [a-z0-9], not used yet")
            index = len(self.members) + 1
            self.members[member] = index
            ns = self.namespace(member)
            self._add_namespace(ns)
            veth, ifb = f"v{index}", f"i{index}"
            self._ip(self.hub, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                     "netns", ns, what="a veth pair (CONFIG_VETH)")
            self._ip(self.hub, "link", "set", veth, "master", "br0", "up")
            self._ip(ns, "addr", "add", f"{self.address(member)}/24", "dev", "eth0")
            self._ip(ns, "link", "set", "eth0", "up")
            self._ip(self.hub, "link", "add", ifb, "type", "ifb", what="an ifb device (CONFIG_IFB)")
            self._ip(self.hub, "link", "set", ifb, "up")
            self._tc("qdisc", "add", "dev", veth, "ingress", what="an ingress qdisc")
            self._tc("filter", "add", "dev", veth, "parent", "ffff:", "protocol", "all", "u32",
                     "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev",
                     ifb, what="a u32 filter with a mirred redirect (CONFIG_NET_CLS_U32, "
                     "CONFIG_NET_ACT_MIRRED)")
        return self

    # ---- running inside a member ---------------------------------------------------------------

    def prefix(self, member: str) -> List[str]:
        """The command prefix that runs a program inside ``member``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(member)]

    def popen(self, member: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
        """``subprocess.Popen`` inside ``member`` in a session of its own, killed by ``close()``."""
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen([*self.prefix(member), *argv], **kw)
        self._owned.append(proc)
        return proc

    def call_in(self, member: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in a thread that joined ``member``'s namespace (a thread's network
        namespace is its own); sockets it creates stay in that namespace."""
        result: dict = {}

        def run() -> None:
            try:
                with open(f"/run/netns/{self.namespace(member)}") as f:
                    if _libc.setns(f.fileno(), _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                result["value"] = fn(*args)
            except BaseException as exc:  # handed to the caller's thread below
                result["error"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["value"]

    def start_etcd(self, member: str) -> "NetnsEtcd":
        """A single-member etcd inside ``member``, healthy; its endpoint is ``<address>:2379``."""
        etcd = NetnsEtcd(self, member)
        self._owned.append(etcd)
        return etcd.start()

    def start_node(self, member: str, module: str, etcd: str, ttl: int = 3,
                   **kw: Any) -> NodeProcess:
        """``python -m framework serve module`` inside ``member``, bound to its address."""
        node = NodeProcess(module, etcd, ttl=ttl, host=self.address(member),
                           command_prefix=self.prefix(member), **kw)
        self._owned.append(node)
        return node.start()

    def relay(self, member: str, port: int, upstream: int, **kw: Any) -> Relay:
        """A :class:`~framework.testing.relay.Relay` inside ``member`` from its ``port`` to its
        ``upstream`` port (a node started with ``--port upstream --advertise address:port`` is
        then reached through it); ``kw`` go to :class:`Relay` (``delay``, ``loss``...). Closed by
        ``close()``, and by itself after its ``lifetime``."""
        relay = Relay((self.address(member), port), (self.address(member), upstream), **kw)
        self._owned.append(relay)
        return self.call_in(member, relay.start)

    # ---- faults --------------------------------------------------------------------------------

    def _drop(self) -> List[str]:
        if self.netem:
            return ["netem", "loss", "100%"]
        # a bucket smaller than any packet: tbf can never send, so it drops everything
        return ["tbf", "rate", "1kbit", "burst", "10", "limit", "10"]

    def _devices(self, member: str) -> tuple:
        index = self.members[member]
        return f"v{index}", f"i{index}"     # towards the member, from the member

    def _root(self, dev: str, *qdisc: str) -> None:
        self._tc("qdisc", "replace", "dev", dev, "root", *qdisc,
                 what=f"the qdisc `{' '.join(qdisc)}` (is its kernel module there?)")

    def blackhole(self, member: str) -> None:
        """Drop every packet to and from ``member``; neither end learns of a drop."""
        for dev in self._devices(member):
            self._root(dev, *self._drop())
        self.faults[member] = "blackhole"

    def thin(self, member: str, rate: str = "1mbit", burst: str = "16kb",
             latency: str = "200ms") -> None:
        """Limit ``member``'s link to ``rate`` each way (tbf; a full queue drops)."""
        for dev in self._devices(member):
            self._root(dev, "tbf", "rate", rate, "burst", burst, "latency", latency)
        self.faults[member] = f"thin {rate}"

    def lossy(self, member: str, delay: str = "100ms", loss: str = "5%") -> None:
        """Delay ``member``'s packets by ``delay`` and lose ``loss`` of them, each way (netem: a
        round trip gains twice ``delay``). Without netem it raises :class:`NetworkUnavailable`;
        put a :meth:`relay` in the path instead."""
        if not self.netem:
            raise NetworkUnavailable("delay and loss need sch_netem, which this kernel lacks "
                                     "(CONFIG_NET_SCH_NETEM); use TestNetwork.relay")
        for dev in self._devices(member):
            self._root(dev, "netem", "delay", delay, "loss", loss)
        self.faults[member] = f"lossy {delay} {loss}"

    def partition(self, member: str, *others: str) -> None:
        """Drop only the packets between ``member`` and each of ``others`` (u32 on addresses);
        the rest of ``member``'s traffic flows. Repeat to cut it from more members."""
        towards, away = self._devices(member)
        if self.faults.get(member) != "partition":
            for dev in (towards, away):
                self._root(dev, "handle", "1:", "htb", "default", "1")
                for cls in ("1:1", "1:2"):
                    self._tc("class", "add", "dev", dev, "parent", "1:", "classid", cls, "htb",
                             "rate", "10gbit", "quantum", "60000", what="an htb class")
                self._tc("qdisc", "add", "dev", dev, "parent", "1:2", *self._drop(),
                         what="a dropping qdisc under htb")
            self.faults[member] = "partition"
        for other in others:
            for dev, field in ((towards, "src"), (away, "dst")):
                self._tc("filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio",
                         "1", "u32", "match", "ip", field, f"{self.address(other)}/32",
                         "flowid", "1:2")

    def heal(self, member: Optional[str] = None) -> None:
        """Remove the faults of ``member`` (default: of every member)."""
        for name in [member] if member else list(self.faults):
            for dev in self._devices(name):
                # no root qdisc (never faulted) is fine: the default one is left
                self._tc("qdisc", "del", "dev", dev, "root", check=False)
            self.faults.pop(name, None)

    # ---- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill the processes started here, then delete every namespace (idempotent)."""
        while self._owned:
            item = self._owned.pop()
            try:
                if isinstance(item, subprocess.Popen):
                    if item.poll() is None:
                        item.kill()
                    item.wait(10)
                else:
                    item.close()
            except Exception:
                pass
        while self._namespaces:
            _delete_namespace(self._namespaces.pop())

    def __enter__(self) -> "TestNetwork":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class NetnsEtcd(EtcdProcess):
    """An :class:`EtcdProcess` inside a member of a :class:`TestNetwork`, on that member's address.

    The ports are fixed (2379/2380): nothing else listens in the member's namespace, and the
    parent's free-port search would bind in the host's namespace, where the address does not exist.
    """

    def __init__(self, net: TestNetwork, member: str, **kw: Any):
        self.net, self.member = net, member
        super().__init__(host=net.address(member), port=2379, peer_port=2380, name=member, **kw)

    def command(self) -> List[str]:
        return [*self.net.prefix(self.member), *super().command()]

    def healthy(self) -> bool:
        return self.net.call_in(self.member, super().healthy)

    def _port_open(self) -> bool:
        return self.net.call_in(self.member, super()._port_open)
