"""A small synchronous client of the gateway's API, for the CLI."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .errors import ApiError, ApiRequestError
from .store import Store


class ApiClient:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token

    @classmethod
    def from_db(cls, db: Path) -> ApiClient:
        """Find the running gateway that owns db. Raises ApiError if none."""
        with Store(db, readonly=True) as store:
            raw = store.get_meta("api")
        if raw is None:
            raise ApiError(f"no gateway is running on {db} (start one: permabeta gateway run --db {db})")
        info = json.loads(raw)
        return cls(info["url"], info["token"])

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        """The decoded JSON answer. Raises ApiError (ApiRequestError, with
        the API's code, when it answered with an error)."""
        data = None if body is None else json.dumps(body).encode()
        return self._send(method, path, data, "application/json", timeout)

    def upload(self, path: str, data: bytes, content_type: str, timeout: float = 120) -> Any:
        """POST raw bytes; the decoded JSON answer. Raises ApiError."""
        return self._send("POST", path, data, content_type, timeout)

    def _send(self, method: str, path: str, data: bytes | None, content_type: str, timeout: float) -> Any:
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": content_type},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read())["error"]
                message, code = str(err["message"]), str(err["code"])
            except (ValueError, KeyError, TypeError):
                raise ApiError(f"gateway answered HTTP {exc.code}") from None
            raise ApiRequestError(message, code, exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ApiError(f"cannot reach the gateway at {self.url}: {exc}") from exc

    def send(
        self, dev: str, op: str, args: dict[str, Any], timeout: float = 10, force: bool = False
    ) -> dict[str, Any]:
        """The device's reply message."""
        body = {"op": op, "args": args, "timeout": timeout, "force": force}
        answer = self.request("POST", f"/api/v1/devices/{dev}/commands", body, timeout=timeout + 5)
        reply: dict[str, Any] = answer["reply"]
        return reply
