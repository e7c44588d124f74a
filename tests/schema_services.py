"""A typed, documented service that the OpenRPC tests (tests/test_schema.py) serve in real nodes."""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import framework


@dataclasses.dataclass
class Item:
    name: str
    quantity: int = 0


@framework.service
class Inventory(framework.Service):
    """Stock of named items, kept in memory."""

    def __init__(self):
        self.stock: Dict[str, int] = {}

    @framework.idempotent
    def count(self, name: str, *, default: Optional[int] = None) -> Optional[int]:
        """How many of an item are in stock.

        :param name: the item's name
        :param default: what to answer for an unknown item
        """
        return self.stock.get(name, default)

    def add(self, items: List[Item], tags: Dict[str, int] = {}) -> List[str]:
        """Add items to the stock.

        Args:
            items: what arrived
            tags: counters to keep with them
        Returns:
            the names now in stock
        """
        for item in items:
            self.stock[item["name"]] = self.stock.get(item["name"], 0) + item.get("quantity", 0)
        return sorted(self.stock)
