"""Correlating commands with the replies that answer them."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any


class Commander:
    """Pending commands by id; a reply resolves the one it names, provided it
    comes from the device the command went to."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(8)

    def expect(self, cmd_id: str, dev: str) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[cmd_id] = (dev, fut)
        return fut

    def resolve(self, dev: str, reply: dict[str, Any]) -> bool:
        """Deliver a reply; False if no command of that device awaits it
        (a late reply after a timeout, or a duplicate)."""
        entry = self._pending.get(reply["id"])
        if entry is None or entry[0] != dev:
            return False
        del self._pending[reply["id"]]
        if not entry[1].done():
            entry[1].set_result(reply)
        return True

    def forget(self, cmd_id: str) -> None:
        self._pending.pop(cmd_id, None)

    def __len__(self) -> int:
        return len(self._pending)
