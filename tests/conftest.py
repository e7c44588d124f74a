import pytest

pytest_plugins = ["framework.testing"]

#: files whose tests measure time or throughput under load (goodput, deadlines on a faulty network)
#: or change the host's network: `make test` runs them one at a time, after the others
SERIAL = {"test_overload", "test_network", "test_lifecycle"}
#: files whose tests measure deadlines or bounds but leave a core free: `make test` runs them two
#: at a time (one stream per group). Measured: their assertions hold with the other stream beside
#: them, which the SERIAL ones' do not (a lossy link's p99; a frozen node's calls, whose backups
#: were refused by nodes busy with the other stream)
PAIRED = {"test_hostile": "a", "test_green_calls": "a", "test_gray": "b"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.module.__name__.rpartition(".")[2]
        if name in SERIAL:
            item.add_marker(pytest.mark.serial)
        elif name in PAIRED:
            item.add_marker(pytest.mark.paired)
            item.add_marker(pytest.mark.xdist_group(PAIRED[name]))
