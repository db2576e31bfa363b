"""A real Home Assistant for the bridge's tests: `hass` of the virtual
environment `.venv-ha` (make homeassistant builds it from requirements.txt
beside this file) in a configuration folder of the test's own, on a free
loopback port, with nothing installed at its start (--skip-pip). Its owner
comes from onboarding, a token from /auth/token, and its MQTT integration
from the config-flow API, with the broker account Home Assistant has in
the project's Mosquitto configuration (gateway/broker.py HA_USER)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
HASS = Path(os.environ.get("PB_HASS", ROOT / ".venv-ha" / "bin" / "hass"))
START_S = 180.0  # its first start writes its storage and loads the frontend's files
CLIENT = "http://127.0.0.1/"  # the client id of the owner's token (any URL will do)
# what in its log fails a test: any error, and any warning of MQTT, its
# discovery or a template (Home Assistant accepts a bad discovery config
# with HTTP 200 and only logs it)
_BAD = re.compile(
    r"^\S+ \S+ (ERROR|CRITICAL) "
    r"|^\S+ \S+ WARNING \(\w+\) \[homeassistant\.(components\.mqtt|helpers\.template)"
)

CONFIGURATION = """\
homeassistant:
  name: permabeta test
  latitude: 52.5
  longitude: 13.4
  elevation: 34
  unit_system: metric
  time_zone: UTC
  currency: EUR
  country: DE
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
config:
onboarding:
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: info
"""


class HomeAssistant:
    """One Home Assistant process, and its REST and WebSocket APIs as its owner."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""
        self.session: aiohttp.ClientSession | None = None

    @property
    def log(self) -> Path:
        return self.folder / "home-assistant.log"

    async def start(self) -> None:
        """Start it and wait until its API answers. Raises AssertionError."""
        if not HASS.exists():
            raise AssertionError(f"no Home Assistant at {HASS}: `make homeassistant` builds .venv-ha")
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "configuration.yaml").write_text(CONFIGURATION.format(port=self.port))
        with (self.folder / "hass.out").open("ab") as out:
            self.proc = subprocess.Popen(
                [str(HASS), "-c", str(self.folder), "--skip-pip"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.session = aiohttp.ClientSession()
        deadline = time.monotonic() + START_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"Home Assistant stopped at its start: {self._tail()}")
            try:
                async with self.session.get(self.url + "/api/onboarding") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"Home Assistant did not answer within {START_S:g}s: {self._tail()}")
            await asyncio.sleep(0.5)

    def _tail(self) -> str:
        out = self.folder / "hass.out"
        return out.read_text(errors="replace")[-3000:] if out.exists() else ""

    async def onboard(self) -> None:
        """Its owner, made by onboarding, and a token of it."""
        assert self.session is not None
        user = {"client_id": CLIENT, "name": "Owner", "username": "owner", "password": "owner-pass-1"}
        async with self.session.post(self.url + "/api/onboarding/users", json=user | {"language": "en"}) as r:
            assert r.status == 200, await r.text()
            code = (await r.json())["auth_code"]
        form = {"grant_type": "authorization_code", "code": code, "client_id": CLIENT}
        async with self.session.post(self.url + "/auth/token", data=form) as r:
            assert r.status == 200, await r.text()
            self.token = (await r.json())["access_token"]

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A request to its REST API as its owner: (status, JSON answer or text)."""
        assert self.session is not None
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.session.request(method, self.url + path, json=body, headers=headers) as r:
            answer = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, answer

    async def set_up_mqtt(self, port: int, username: str, password: str) -> None:
        """The MQTT integration, through the config-flow API, as a person sets it up."""
        status, flow = await self.call(
            "POST", "/api/config/config_entries/flow", {"handler": "mqtt", "show_advanced_options": False}
        )
        assert status == 200 and flow.get("step_id") == "broker", flow
        broker = {"broker": "127.0.0.1", "port": port, "username": username, "password": password}
        status, done = await self.call("POST", f"/api/config/config_entries/flow/{flow['flow_id']}", broker)
        assert status == 200 and done.get("type") == "create_entry", done
        assert done["result"]["state"] == "loaded", done

    async def states(self) -> dict[str, dict[str, Any]]:
        """GET /api/states, by entity id."""
        status, answer = await self.call("GET", "/api/states")
        assert status == 200, answer
        return {s["entity_id"]: s for s in answer}

    async def registry(self) -> list[dict[str, Any]]:
        """Its entity registry (WebSocket `config/entity_registry/list`)."""
        assert self.session is not None
        async with self.session.ws_connect(self.url + "/api/websocket") as ws:
            assert (await ws.receive_json())["type"] == "auth_required"
            await ws.send_json({"type": "auth", "access_token": self.token})
            assert (await ws.receive_json())["type"] == "auth_ok"
            await ws.send_json({"id": 1, "type": "config/entity_registry/list"})
            answer = await ws.receive_json()
            assert answer.get("success"), answer
            return list(answer["result"])

    async def service(self, domain: str, service: str, data: dict[str, Any]) -> tuple[int, Any]:
        return await self.call("POST", f"/api/services/{domain}/{service}", data)

    def bad_lines(self) -> list[str]:
        """The errors, and the warnings of MQTT and templates, in its log."""
        if not self.log.exists():
            return []
        return [line for line in self.log.read_text(errors="replace").splitlines() if _BAD.match(line)]

    def mqtt_lines(self, text: str) -> list[str]:
        """Its log's lines that mention text."""
        if not self.log.exists():
            return []
        return [line for line in self.log.read_text(errors="replace").splitlines() if text in line]

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
