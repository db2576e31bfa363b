"""The rollouts' part of the HTTP API (docs/protocol.md 10, docs/rollouts.md 4):
create, list, show, and pause, resume, abort or revert one."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .api import GATEWAY, error_response, json_body, ota_error
from .errors import CohortError, GatewayError, MetricsError, OtaServiceError, RolloutError
from .rollout_plan import (
    DEFAULT_MAX_FAILURE_RATE,
    DEFAULT_SOAK_S,
    DEFAULT_STAGES,
    parse_duration,
    parse_percent,
    parse_stages,
)

_STATUS = {
    "unknown_rollout": 404,
    "in_rollout": 409,
    "wrong_state": 409,
}
_FIELDS = {
    "release": str,
    "cohort": str,
    "stages": str,
    "soak": str,
    "max_failure_rate": str,
    "metrics": list,
    "revert": list,
    "no_revert": bool,
    "seed": int,
}
_COMMANDS = ("pause", "resume", "abort", "revert")


def routes() -> list[web.RouteDef]:
    return [
        web.post("/api/v1/rollouts", _create),
        web.get("/api/v1/rollouts", _list),
        web.get("/api/v1/rollouts/{id}", _show),
        web.post("/api/v1/rollouts/{id}/{command}", _command),
    ]


def _rollout_error(exc: GatewayError) -> web.Response:
    if isinstance(exc, (CohortError, MetricsError)):
        return error_response(422, exc.code, str(exc))
    if isinstance(exc, RolloutError):
        return error_response(_STATUS.get(exc.code, 422), exc.code, str(exc))
    if isinstance(exc, OtaServiceError):
        return ota_error(exc)
    return error_response(500, "internal", str(exc))


def _options(body: dict[str, Any]) -> dict[str, Any]:
    """RolloutService.create's arguments from a request body. Raises RolloutError."""
    for key, value in body.items():
        if key not in _FIELDS:
            raise RolloutError(f"unknown field {key[:40]!r} (known: {', '.join(_FIELDS)})", "bad_request")
        kind = _FIELDS[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise RolloutError(f"{key!r} must be a {kind.__name__}", "bad_request")
    if not body.get("release"):
        raise RolloutError("'release' names the release to roll out", "bad_request")
    for key in ("metrics", "revert"):
        if not all(isinstance(x, str) for x in body.get(key, [])):
            raise RolloutError(f"{key!r} must be a list of strings", "bad_request")
    seed = body.get("seed")
    if seed is not None and not 0 <= seed < 2**63:
        raise RolloutError("'seed' must be within 0 and 2**63 - 1", "bad_request")
    return {
        "release_ref": body["release"],
        "cohort": body.get("cohort", "all"),
        "stages": parse_stages(body["stages"]) if "stages" in body else DEFAULT_STAGES,
        "soak_s": parse_duration(body["soak"]) if "soak" in body else DEFAULT_SOAK_S,
        "max_failure_rate": (
            parse_percent(body["max_failure_rate"], "the failure rate")
            if "max_failure_rate" in body
            else DEFAULT_MAX_FAILURE_RATE
        ),
        "metrics": tuple(body.get("metrics") or ("default",)),
        "reverts": tuple(body.get("revert", ())),
        "no_revert": body.get("no_revert", False),
        "seed": seed,
    }


async def _create(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    body = await json_body(request)
    if not isinstance(body, dict):
        return error_response(400, "bad_request", "body must be a JSON object")
    try:
        r = gw.rollouts.create(**_options(body))
    except RolloutError as exc:
        if exc.code == "bad_request":
            return error_response(400, exc.code, str(exc))
        return _rollout_error(exc)
    except GatewayError as exc:
        return _rollout_error(exc)
    return web.json_response(gw.rollouts.status(r), status=201)


async def _list(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return web.json_response([r.to_dict() for r in gw.rollouts.table.all()])


async def _show(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    try:
        r = gw.rollouts.table.find(request.match_info["id"])
    except GatewayError as exc:
        return _rollout_error(exc)
    return web.json_response(gw.rollouts.status(r))


async def _command(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    command = request.match_info["command"]
    if command not in _COMMANDS:
        return error_response(
            404, "not_found", f"a rollout takes {', '.join(_COMMANDS)}, not {command[:40]!r}"
        )
    try:
        r = await gw.rollouts.command(request.match_info["id"], command)
    except GatewayError as exc:
        return _rollout_error(exc)
    return web.json_response(gw.rollouts.status(r))
