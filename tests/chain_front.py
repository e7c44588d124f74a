"""Serves only Front (tests/chain_services.py), so lanes can put Front and Back on different nodes."""
import framework
from tests.chain_services import Front


@framework.service("Front")
class FrontOnly(Front):
    pass
