pytest_plugins = ["framework.testing"]
