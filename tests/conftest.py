import pytest

pytest_plugins = ["framework.testing"]

#: files whose tests measure time or throughput under load (deadlines, goodput, freezes) or change
#: the host's network: `make test` runs them one at a time, after the others ran four at a time
SERIAL = {"test_overload", "test_network", "test_lifecycle", "test_gray", "test_green_calls",
          "test_hostile"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rpartition(".")[2] in SERIAL:
            item.add_marker(pytest.mark.serial)
