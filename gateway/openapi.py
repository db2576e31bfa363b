"""The HTTP API described as OpenAPI 3.1 (docs/protocol.md 10), served at
GET /api/v1/openapi.json.

Every route of the app has its entry in OPERATIONS: what it takes (path
and query parameters, the body's schema) and what it answers (the schema
of each success; any other status is the error object). A route added to
the app is added here too: the tests check that the document and the app
name the same routes, and that real answers fit their schemas. The least
role comes from ACCESS (gateway/api_accounts.py) as `x-permabeta-role`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import __version__

Schema = dict[str, Any]

_STR, _NUM, _INT, _BOOL = {"type": "string"}, {"type": "number"}, {"type": "integer"}, {"type": "boolean"}
_OBJ: Schema = {"type": "object"}
_ANY: Schema = {}
_NONE: Schema = {"not": {}}  # no body (a redirect)


def _opt(schema: Schema) -> Schema:
    """schema, or null."""
    return {"anyOf": [schema, {"type": "null"}]}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _list(item: Schema) -> Schema:
    return {"type": "array", "items": item}


def _object(
    required: dict[str, Schema], optional: dict[str, Schema] | None = None, closed: bool = False
) -> Schema:
    """A JSON object with these fields (closed: and no others)."""
    s: Schema = {"type": "object", "properties": required | (optional or {}), "required": list(required)}
    if closed:
        s["additionalProperties"] = False
    return s


SCHEMAS: dict[str, Schema] = {
    "Error": _object({"error": _object({"code": _STR, "message": _STR})}),
    "Health": _object({"ok": _BOOL}),
    "Stats": _object(
        {
            "connected": _BOOL,
            "broker": _STR,
            "devices": _INT,
            "online": _INT,
            "counters": _OBJ,
            "rejects": _OBJ,
            "pending_commands": _INT,
            "ota": _OBJ,
            "time": _OBJ,
        }
    ),
    "DeviceSummary": _object(
        {
            "id": _STR,
            "model": _opt(_STR),
            "board": _opt(_STR),
            "online": _BOOL,
            "runtime": _opt(_STR),
            "features": _OBJ,
            "last_seen": _opt(_NUM),
        }
    ),
    "Device": _object(
        {
            "id": _STR,
            "model": _opt(_STR),
            "board": _opt(_STR),
            "runtime": _opt(_STR),
            "platform": _opt(_STR),
            "online": _BOOL,
            "features": _OBJ,
            "first_seen": _opt(_NUM),
            "last_seen": _opt(_NUM),
            "boot_count": _opt(_INT),
            "reset_cause": _opt(_STR),
            "ota": _opt(_OBJ),
        },
        {
            "state_reason": _opt(_STR),
            "state_changed": _opt(_NUM),
            "heap_free": _opt(_INT),
            "keepalive": _opt(_NUM),
            "telemetry_s": _opt(_NUM),
            "last_telemetry": _opt(_OBJ),
        },
    ),
    "TelemetryRow": _object({"received": _NUM, "ts": _opt(_NUM), "seq": _opt(_INT)}),
    "CommandReply": _object({"reply": _OBJ}),
    "Settings": _object(
        {
            "channel": _STR,
            "tags": _list(_STR),
            "policy": _STR,
            "window": _opt(_STR),
            "updated": _opt(_NUM),
        }
    ),
    "Update": _object(
        {
            "id": _STR,
            "device": _STR,
            "release": _STR,
            "model": _STR,
            "counter": _INT,
            "version": _STR,
            "state": _STR,
            "started": _NUM,
            "deadline": _NUM,
            "ended": _BOOL,
            "success": _BOOL,
        },
        {"reason": _opt(_STR), "bytes": _INT, "total": _opt(_INT), "finished": _opt(_NUM)},
    ),
    "UpdateWithSteps": {"allOf": [_ref("Update"), _object({"steps": _list(_OBJ)})]},
    "UpdateOfRelease": {"allOf": [_ref("Update"), _object({"ref": _STR})]},
    "Gain": _object(
        {
            "feature": _STR,
            "version": _STR,
            "description": _STR,
            "release": _object({"id": _STR, "ref": _STR, "version": _STR, "counter": _INT}),
            "requires": _list(_STR),
            "text": _STR,
        },
        {"addons": _list(_STR), "needs": _list(_STR)},
    ),
    "Gains": _object(
        {
            "device": _STR,
            "gains": _list(_ref("Gain")),
            "waiting": _list(_object({"feature": _STR, "version": _STR, "needs": _list(_STR), "text": _STR})),
            "with_addons": _list(_ref("Gain")),
        }
    ),
    "Decision": _object(
        {
            "device": _STR,
            "release": _STR,
            "ref": _STR,
            "decision": {"enum": ["now", "later", "never"]},
            "until": _opt(_NUM),
            "at": _NUM,
        }
    ),
    "Changes": _object(
        {
            "features": _object({k: _list(_OBJ) for k in ("added", "changed", "removed", "unchanged")}),
            "permissions": _object(
                {
                    k: _object({"new": _list(_STR), "no_longer": _list(_STR)})
                    for k in ("reads", "drives", "publishes")
                }
            ),
            "unknown": _list(_STR),
            "lacks": _list(_STR),
            "summary": _STR,
        }
    ),
    "Described": _object(
        {
            "release": _ref("ReleaseSummary"),
            "notes": _opt(_STR),
            "changes": _ref("Changes"),
            "descriptions": _OBJ,
        }
    ),
    "Offer": {
        "allOf": [
            _ref("Described"),
            _object({"state": _STR, "decision": _opt(_OBJ), "rollout": _opt(_STR), "update": _opt(_STR)}),
        ]
    },
    "Preview": _object(
        {
            "device": _STR,
            "release": _OBJ,
            "state": {"enum": ["computing", "ready", "insufficient", "failed"]},
        },
        {
            "reason": _opt(_STR),
            "metrics": _OBJ,
            "series": _OBJ,
            "fit": _OBJ,
            "record": _OBJ,
            "withheld": _list(
                _object({"stream": _STR, "choice": {"enum": ["local", "off"]}, "gives": _STR}, closed=True)
            ),
        },
    ),
    "OwnRetention": {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"const": "forever"}]},
    "Footprint": _object(
        {
            "device": _STR,
            "choices_known": _BOOL,
            "retention_days": _opt(_NUM),
            "streams": _list(
                _object(
                    {
                        "path": _STR,
                        "kind": {"enum": ["runtime", "sensor", "actuator", "feature"]},
                        "doc": _STR,
                        "sensitivity": {"enum": ["low", "personal", "sensitive"]},
                        "default": {"enum": ["share", "local"]},
                        "operational": _BOOL,
                        "needed": _BOOL,
                        "feature": _opt(_STR),
                        "choice": {"enum": ["share", "local", "off"]},
                        "costs": _object({"local": _list(_STR), "off": _list(_STR)}, closed=True),
                        "stored": _INT,
                        "oldest": _opt(_NUM),
                        "retention_days": _opt(_NUM),
                        "retention_own": _opt(_ref("OwnRetention")),
                    },
                    closed=True,
                )
            ),
        },
        closed=True,
    ),
    "Offers": _object(
        {
            "device": _STR,
            "runs": _object(
                {
                    "counter": _INT,
                    "release": _opt(_ref("ReleaseSummary")),
                    "state": _opt(_STR),
                    "features": _OBJ,
                }
            ),
            "policy": _STR,
            "window": _opt(_STR),
            "offers": _list(_ref("Offer")),
            "rollback": _opt(_ref("Described")),
        }
    ),
    "ReleaseSummary": _object(
        {
            "id": _STR,
            "ref": _STR,
            "model": _STR,
            "counter": _INT,
            "version": _STR,
            "features": _OBJ,
            "files": _INT,
            "size": _INT,
            "zsize": _INT,
            "added": _NUM,
        },
        {"api": _ANY, "requires": _list(_ANY), "image": _opt(_STR), "created": _ANY},
    ),
    "ReleaseAdded": {"allOf": [_ref("ReleaseSummary"), _object({"new": _BOOL})]},
    "Release": {"allOf": [_ref("ReleaseSummary"), _object({"files_list": _list(_OBJ)})]},
    "RolloutStatus": _object(
        {
            "rollout": _object({"id": _STR, "ref": _STR, "state": _STR, "stages": _list(_NUM)}),
            "now": _NUM,
            "stages": _list(_object({"stage": _INT, "fraction": _NUM, "counts": _OBJ})),
            "judgement": _opt(_OBJ),
            "decisions": _list(_OBJ),
        }
    ),
    "Rollout": _object({"id": _STR, "ref": _STR, "release": _STR, "state": _STR, "stage": _INT}),
    "Account": _object(
        {"name": _STR, "role": {"enum": ["owner", "maker", "admin"]}, "created": _NUM, "devices": _list(_STR)}
    ),
    "Token": _object({"id": _STR, "label": _STR, "created": _NUM, "last_used": _opt(_NUM)}),
    "NewToken": _object({"account": _STR, "token": _STR}),
    "Login": _object({"account": _STR, "role": _STR, "token": _STR}),
    "Session": _object({"account": _STR, "role": _STR, "csrf": _STR}, {"idle_s": _NUM, "expires": _NUM}),
    "SessionEnded": _object({"account": _STR, "ended": {"const": True}}),
    "Owner": _object({"device": _STR, "owner": _opt(_STR)}),
    "Export": _object(
        {
            "device": _STR,
            "exported_at": _NUM,
            "schema": _INT,
            "since": _opt(_NUM),
            "retention": _object(
                {
                    "days": _opt(_NUM),
                    "streams": {"type": "object", "additionalProperties": _ref("OwnRetention")},
                }
            ),
            "tables": {"type": "object", "additionalProperties": _list(_OBJ)},
        }
    ),
    "Forgotten": _object(
        {
            "device": _STR,
            "removed": {"type": "object", "additionalProperties": _INT},
            "retained_cleared": _BOOL,
        }
    ),
    "HomeAssistantLink": _object(
        {
            "device": _STR,
            "linked": _BOOL,
            "since": _opt(_NUM),
            "entities": _list(
                _object(
                    {
                        "component": {"enum": ["sensor", "climate", "update"]},
                        "key": _STR,
                        "name": _STR,
                        "unique_id": _STR,
                        "streams": _list(_STR),
                    }
                )
            ),
        }
    ),
    "Registration": _object(
        {"device": _STR, "model": _STR, "board": _STR, "registered": _NUM, "revoked": _opt(_NUM)},
        {"link_key": _BOOL, "cluster": _BOOL},
    ),
    "ClaimCode": _object({"device": _STR, "claim_code": {"const": "registered"}}),
    "Revoked": _object({"revoked": _STR}),
    "OpenApi": _object({"openapi": _STR, "info": _OBJ, "paths": _OBJ}),
}

_RELEASE_REF = _object({"release": _STR}, {"force": _BOOL}, closed=True)
_CODE = _object({"code": _STR}, closed=True)
_LOGIN = _object({"name": _STR, "password": _STR}, {"label": _STR}, closed=True)
_LIMIT = {"limit": {"type": "integer", "minimum": 1}}


@dataclass(frozen=True)
class Op:
    """One operation: what it is, what it answers (status -> schema), what it takes."""

    summary: str
    answers: dict[int, Schema]
    body: Schema | None = None
    body_type: str = "application/json"
    query: dict[str, Schema] = field(default_factory=dict)
    answer_type: str = "application/json"  # of the successes: the web app's files are not JSON
    other_types: tuple[str, ...] = ()  # other media types a success may have (not JSON), as asked


# (method, route) -> the operation; every route of the app, and only those
OPERATIONS: dict[tuple[str, str], Op] = {
    ("GET", "/api/v1/health"): Op("the gateway answers", {200: _ref("Health")}),
    ("GET", "/api/v1/openapi.json"): Op("this document", {200: _ref("OpenApi")}),
    ("GET", "/api/v1/stats"): Op("connection, counters, rejects, updates", {200: _ref("Stats")}),
    ("GET", "/api/v1/devices"): Op("every device (an owner: its own)", {200: _list(_ref("DeviceSummary"))}),
    ("GET", "/api/v1/devices/{id}"): Op("one device", {200: _ref("Device")}),
    ("GET", "/api/v1/devices/{id}/telemetry"): Op(
        "the newest telemetry, oldest first", {200: _list(_ref("TelemetryRow"))}, query=_LIMIT
    ),
    ("POST", "/api/v1/devices/{id}/commands"): Op(
        "send a command, answer its reply",
        {200: _ref("CommandReply")},
        _object(
            {"op": _STR},
            {
                "args": _OBJ,
                "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 120},
                "force": _BOOL,
            },
        ),
    ),
    ("POST", "/api/v1/devices/{id}/update"): Op("start an update", {201: _ref("Update")}, _RELEASE_REF),
    ("GET", "/api/v1/devices/{id}/updates"): Op(
        "the device's updates, newest first", {200: _list(_ref("Update"))}, query=_LIMIT
    ),
    ("GET", "/api/v1/devices/{id}/settings"): Op("channel, tags, policy, window", {200: _ref("Settings")}),
    ("PATCH", "/api/v1/devices/{id}/settings"): Op(
        "change settings (an owner: policy and window)",
        {200: _ref("Settings")},
        _object(
            {},
            {"channel": _STR, "tag": _list(_STR), "untag": _list(_STR), "policy": _STR, "window": _STR},
            closed=True,
        ),
    ),
    ("POST", "/api/v1/devices/{id}/approve"): Op(
        "the owner's yes to a release: the decision now",
        {200: _ref("Decision")},
        _object({"release": _STR}, closed=True),
    ),
    ("GET", "/api/v1/devices/{id}/offers"): Op(
        "what waits for the owner's say: offers, what each changes, a rollback", {200: _ref("Offers")}
    ),
    ("POST", "/api/v1/devices/{id}/decision"): Op(
        "the owner's decision on a release: now, later (until), never",
        {200: _ref("Decision")},
        _object(
            {"release": _STR, "decision": {"enum": ["now", "later", "never"]}}, {"until": {}}, closed=True
        ),
    ),
    ("POST", "/api/v1/devices/{id}/preview"): Op(
        "the twin preview of a release on the device (docs/twin.md): computing, or as cached",
        {200: _ref("Preview"), 202: _ref("Preview")},
        _object({"release": _STR}, {"heater_w": _NUM, "refresh": _BOOL}, closed=True),
    ),
    ("GET", "/api/v1/devices/{id}/preview/{ref}"): Op(
        "a release's preview on the device", {200: _ref("Preview")}
    ),
    ("GET", "/api/v1/devices/{id}/previews"): Op(
        "the device's previews, newest first",
        {200: _list(_object({"release": _OBJ, "state": _STR, "requested": _NUM}, {"reason": _opt(_STR)}))},
    ),
    ("GET", "/api/v1/devices/{id}/gains"): Op(
        "what the device could gain: features its hardware runs now, those waiting for hardware, "
        "those an add-on would let run (docs/protocol.md 13)",
        {200: _ref("Gains")},
    ),
    ("POST", "/api/v1/devices/{id}/gains"): Op(
        "the owner asks for a feature the device could gain: its release goes out with the owner's yes",
        {201: _ref("UpdateOfRelease"), 202: _ref("Decision")},
        _object({"feature": _STR}, closed=True),
    ),
    ("POST", "/api/v1/devices/{id}/rollback"): Op(
        "an update to the revert release the maker signed for the device's set",
        {201: _ref("UpdateOfRelease")},
        _object({}, closed=True),
    ),
    ("GET", "/api/v1/devices/{id}/streams"): Op(
        "the device's streams: what each tells, the owner's choice, what keeping it back costs, "
        "how long the gateway keeps it and how much it holds",
        {200: _ref("Footprint")},
    ),
    ("PUT", "/api/v1/devices/{id}/streams"): Op(
        "the owner's choices (share, local, off), applied by the device before they are answered, "
        "and how long the gateway keeps what it shares: the device's period and streams' own",
        {200: _ref("Footprint")},
        _object(
            {},
            {
                "streams": {"type": "object", "additionalProperties": {"enum": ["share", "local", "off"]}},
                "retention_days": _opt(_NUM),
                "retention": {"type": "object", "additionalProperties": _opt(_ref("OwnRetention"))},
            },
            closed=True,
        ),
    ),
    ("PUT", "/api/v1/devices/{id}/claim-code"): Op("register a claim code", {200: _ref("ClaimCode")}, _CODE),
    ("GET", "/api/v1/devices/{id}/registration"): Op(
        "what provisioning recorded of the device", {200: _ref("Registration")}
    ),
    ("PUT", "/api/v1/devices/{id}/registration"): Op(
        "record a provisioned device: the broker lets it in before its first hello",
        {200: _ref("Registration")},
        _object(
            {"model": _STR, "board": _STR, "password_hash": _STR},
            {"link_key": _STR, "cluster_hash": _STR},
            closed=True,
        ),
    ),
    ("POST", "/api/v1/devices/{id}/revoke"): Op(
        "cut the device off: refused by the gateway now, by the broker within seconds",
        {200: _ref("Registration")},
    ),
    ("POST", "/api/v1/devices/{id}/restore"): Op("let a revoked device back in", {200: _ref("Registration")}),
    ("DELETE", "/api/v1/devices/{id}/owner"): Op("give the device up", {200: _ref("Owner")}),
    ("GET", "/api/v1/devices/{id}/export"): Op(
        "everything stored about the device (an owner: since its claim): JSON, or with format=csv "
        "a zip of one CSV file per table",
        {200: _ref("Export")},
        query={"format": {"enum": ["json", "csv"]}},
        other_types=("application/zip",),
    ),
    ("POST", "/api/v1/devices/{id}/forget"): Op(
        "delete everything stored about the device, and its retained messages",
        {200: _ref("Forgotten")},
        _object({"confirm": _STR}, closed=True),
    ),
    ("GET", "/api/v1/devices/{id}/homeassistant"): Op(
        "whether the device is linked to Home Assistant, and the entities it is shown there",
        {200: _ref("HomeAssistantLink")},
    ),
    ("PUT", "/api/v1/devices/{id}/homeassistant"): Op(
        "the owner links the device to Home Assistant, or unlinks it (its entities are removed)",
        {200: _ref("HomeAssistantLink")},
        _object({"linked": _BOOL}, closed=True),
    ),
    ("POST", "/api/v1/claims"): Op("claim a device by its code", {201: _ref("Owner")}, _CODE),
    ("GET", "/api/v1/updates/{uid}"): Op("one update with its steps", {200: _ref("UpdateWithSteps")}),
    ("POST", "/api/v1/releases"): Op(
        "store a signed release (a tar of its folder)",
        {200: _ref("ReleaseAdded"), 201: _ref("ReleaseAdded")},
        {"type": "string", "contentMediaType": "application/x-tar"},
        "application/x-tar",
    ),
    ("GET", "/api/v1/releases"): Op(
        "the stored releases", {200: _list(_ref("ReleaseSummary"))}, query={"model": _STR}
    ),
    ("GET", "/api/v1/releases/{ref}"): Op("one release with its files", {200: _ref("Release")}),
    ("POST", "/api/v1/rollouts"): Op(
        "start a rollout",
        {201: _ref("RolloutStatus")},
        _object(
            {"release": _STR},
            {
                "cohort": _STR,
                "stages": _STR,
                "soak": _STR,
                "max_failure_rate": _STR,
                "metrics": _list(_STR),
                "revert": _list(_STR),
                "no_revert": _BOOL,
                "seed": _INT,
            },
            closed=True,
        ),
    ),
    ("GET", "/api/v1/rollouts"): Op("every rollout, oldest first", {200: _list(_ref("Rollout"))}),
    ("GET", "/api/v1/rollouts/{id}"): Op("a rollout's status", {200: _ref("RolloutStatus")}),
    ("POST", "/api/v1/rollouts/{id}/{command}"): Op(
        "pause, resume, abort or revert", {200: _ref("RolloutStatus")}
    ),
    ("POST", "/api/v1/login"): Op("a new token for a name and password", {201: _ref("Login")}, _LOGIN),
    ("POST", "/api/v1/session"): Op(
        "log in a browser: a session cookie",
        {201: _ref("Session")},
        _object({"name": _STR, "password": _STR}, closed=True),
    ),
    ("GET", "/api/v1/session"): Op("the cookie's session and its CSRF token", {200: _ref("Session")}),
    ("DELETE", "/api/v1/session"): Op("log out: the session ends", {200: _ref("SessionEnded")}),
    ("GET", "/api/v1/me"): Op("the caller's account", {200: _ref("Account")}),
    ("GET", "/api/v1/accounts"): Op("every account", {200: _list(_ref("Account"))}),
    ("POST", "/api/v1/accounts"): Op(
        "a new account",
        {201: _ref("Account")},
        _object(
            {"name": _STR, "role": {"enum": ["owner", "maker", "admin"]}}, {"password": _STR}, closed=True
        ),
    ),
    ("GET", "/api/v1/accounts/{name}/tokens"): Op("an account's tokens", {200: _list(_ref("Token"))}),
    ("POST", "/api/v1/accounts/{name}/tokens"): Op(
        "a new token (shown once)", {201: _ref("NewToken")}, _object({}, {"label": _STR}, closed=True)
    ),
    ("DELETE", "/api/v1/accounts/{name}/tokens/{tid}"): Op("revoke a token", {200: _ref("Revoked")}),
    ("GET", "/api/v1/events"): Op(
        "server-sent events of the devices the caller may see (docs/app.md)",
        {200: _STR},
        answer_type="text/event-stream",
    ),
    # the web app (gateway/webapp.py)
    ("GET", "/"): Op("to the web app", {302: _NONE}),
    ("GET", "/app"): Op("to the web app", {302: _NONE}),
    ("GET", "/app/"): Op("the web app's page", {200: _STR}, answer_type="text/html"),
    ("GET", "/app/{name}"): Op("a file of the web app (JavaScript, CSS)", {200: _STR}, answer_type="*/*"),
    ("GET", "/app/vendor/{name}"): Op(
        "a file of the app's chart and UI packages", {200: _STR}, answer_type="text/javascript"
    ),
}

_SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "an account's pbt_ token, or the gateway's own",
    },
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": "pb_session",
        "description": "a browser's session (over HTTPS named __Host-pb_session)",
    },
    "csrf": {
        "type": "apiKey",
        "in": "header",
        "name": "X-CSRF-Token",
        "description": "the session's CSRF token: with the cookie, on every method but GET, HEAD, OPTIONS",
    },
}


def _operation_name(route: str) -> str:
    """devices_id_telemetry of /api/v1/devices/{id}/telemetry; root of /, app_index of /app/."""
    name = re.sub(r"\W+", "_", route.removeprefix("/api/v1/")).strip("_") or "root"
    return name + "_index" if route.endswith("/") and route != "/" else name


def _operation(method: str, route: str, op: Op) -> dict[str, Any]:
    from .api_accounts import ACCESS

    rule = ACCESS[(method, route)]
    out: dict[str, Any] = {
        "operationId": f"{method.lower()}_{_operation_name(route)}",
        "summary": op.summary,
        "x-permabeta-role": rule.role or "anyone",
        "x-permabeta-device": rule.device,
    }
    params = [
        {"name": p, "in": "path", "required": True, "schema": _STR} for p in re.findall(r"\{(\w+)\}", route)
    ]
    params += [{"name": q, "in": "query", "required": False, "schema": s} for q, s in op.query.items()]
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {op.body_type: {"schema": op.body}}}
    if rule.role is None:
        out["security"] = []
    else:
        session: dict[str, list[str]] = {"session": [], "csrf": []} if method != "GET" else {"session": []}
        out["security"] = [{"bearer": []}, session]
    others = {t: {"schema": {"type": "string", "contentMediaType": t}} for t in op.other_types}
    responses: dict[str, Any] = {
        str(status): {"description": "done", "content": {op.answer_type: {"schema": schema}} | others}
        if schema is not _NONE
        else {"description": "a redirect"}
        for status, schema in op.answers.items()
    }
    responses["default"] = {
        "description": "an error: its code and message (docs/protocol.md 10)",
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    out["responses"] = responses
    return out


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI document of the API."""
    paths: dict[str, dict[str, Any]] = {}
    for (method, route), op in OPERATIONS.items():
        paths.setdefault(route, {})[method.lower()] = _operation(method, route, op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "permabeta gateway API",
            "version": __version__,
            "description": "docs/protocol.md 10; errors are {error: {code, message}}",
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": _SECURITY_SCHEMES},
    }


def routes() -> list[web.RouteDef]:
    return [web.get("/api/v1/openapi.json", _serve)]


async def _serve(request: web.Request) -> web.Response:
    return web.json_response(document())
