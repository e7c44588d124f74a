"""Serves only Back (tests/chain_services.py)."""
import framework
from tests.chain_services import Back


@framework.service("Back")
class BackOnly(Back):
    pass
