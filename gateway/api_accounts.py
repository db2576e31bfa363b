"""Who may call what (docs/protocol.md 10.1): the principal of a request,
the rule of every route, and the accounts' own endpoints.

A request names its principal by `Authorization: Bearer TOKEN`: an account's
API token (`pbt_...`, gateway/accounts.py), or the gateway's own token that
it writes to its database for the command line on its machine (meta 'api'):
the admin of a gateway without accounts, and the way to make the first one.
A request without that header may name it by a browser's session cookie
(gateway/api_sessions.py), with the CSRF check its methods need; the
gateway's own token is never taken from a cookie.

Every route has a rule (ACCESS): the least role it needs, and whether it is
about one device (`{id}`): an owner reaches only the devices it claimed,
and another's is answered as one that does not exist (404 unknown_device),
so that its ids cannot be probed. A route without a rule is refused (the
tests check that every route has one).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from firmware.pb.ids import valid_id

from .accounts import ROLES, Account, AccountError, Accounts
from .api import GATEWAY, _utf8, error_response, json_body
from .api_sessions import SESSION, csrf_refusal, session_of

if TYPE_CHECKING:
    from .api import Handler
    from .service import Gateway

GATEWAY_ACCOUNT = Account(0, "gateway", "admin", 0.0)  # the principal of the gateway's own token
PRINCIPAL: web.RequestKey[Account] = web.RequestKey("principal", Account)
LOGIN_TRIES = 10  # failed logins of one account name ...
LOGIN_WINDOW_S = 600.0  # ... in this many seconds, then refused for the rest of it


@dataclass(frozen=True)
class Rule:
    role: str | None  # the least role; None: anyone, without a token
    device: bool = False  # about the device {id}: an owner only its own


_OWNER, _MAKER, _ADMIN = Rule("owner"), Rule("maker"), Rule("admin")
_OWN_DEVICE = Rule("owner", device=True)

# (method, route) -> rule; GET stands for HEAD too
ACCESS: dict[tuple[str, str], Rule] = {
    ("GET", "/api/v1/health"): Rule(None),
    ("POST", "/api/v1/login"): Rule(None),
    ("GET", "/api/v1/openapi.json"): Rule(None),
    ("POST", "/api/v1/session"): Rule(None),
    ("GET", "/api/v1/session"): _OWNER,  # the session's own
    ("DELETE", "/api/v1/session"): _OWNER,
    ("GET", "/api/v1/me"): _OWNER,
    ("GET", "/api/v1/stats"): _MAKER,
    ("GET", "/api/v1/devices"): _OWNER,  # an owner's own only
    ("GET", "/api/v1/devices/{id}"): _OWN_DEVICE,
    ("GET", "/api/v1/devices/{id}/telemetry"): _OWN_DEVICE,
    ("POST", "/api/v1/devices/{id}/commands"): _OWN_DEVICE,
    ("POST", "/api/v1/devices/{id}/update"): Rule("maker", device=True),
    ("GET", "/api/v1/devices/{id}/updates"): _OWN_DEVICE,
    ("GET", "/api/v1/devices/{id}/settings"): _OWN_DEVICE,
    ("PATCH", "/api/v1/devices/{id}/settings"): _OWN_DEVICE,  # an owner: policy and window only
    ("POST", "/api/v1/devices/{id}/approve"): _OWN_DEVICE,
    ("GET", "/api/v1/devices/{id}/offers"): _OWN_DEVICE,
    ("POST", "/api/v1/devices/{id}/decision"): _OWN_DEVICE,
    ("POST", "/api/v1/devices/{id}/rollback"): _OWN_DEVICE,
    ("GET", "/api/v1/devices/{id}/gains"): _OWN_DEVICE,
    ("POST", "/api/v1/devices/{id}/gains"): _OWN_DEVICE,
    ("GET", "/api/v1/devices/{id}/streams"): _OWN_DEVICE,
    ("PUT", "/api/v1/devices/{id}/streams"): _OWN_DEVICE,  # its owner's only, or its maker's before a claim
    ("POST", "/api/v1/devices/{id}/preview"): _OWN_DEVICE,
    ("GET", "/api/v1/devices/{id}/preview/{ref}"): _OWN_DEVICE,
    ("GET", "/api/v1/devices/{id}/previews"): _OWN_DEVICE,
    ("PUT", "/api/v1/devices/{id}/claim-code"): Rule("maker", device=True),
    ("PUT", "/api/v1/devices/{id}/registration"): _MAKER,
    ("GET", "/api/v1/devices/{id}/registration"): _MAKER,
    ("POST", "/api/v1/devices/{id}/revoke"): _MAKER,
    ("POST", "/api/v1/devices/{id}/restore"): _MAKER,
    ("DELETE", "/api/v1/devices/{id}/owner"): _OWN_DEVICE,
    ("GET", "/api/v1/devices/{id}/export"): _OWN_DEVICE,  # an owner: from its claim on
    ("POST", "/api/v1/devices/{id}/forget"): _OWN_DEVICE,  # a maker: a device without an owner
    ("GET", "/api/v1/devices/{id}/homeassistant"): _OWN_DEVICE,
    ("PUT", "/api/v1/devices/{id}/homeassistant"): _OWN_DEVICE,  # its owner's only
    ("POST", "/api/v1/claims"): _OWNER,
    ("GET", "/api/v1/updates/{uid}"): _OWNER,  # an owner: its devices' only
    ("POST", "/api/v1/releases"): _MAKER,
    ("GET", "/api/v1/releases"): _MAKER,
    ("GET", "/api/v1/releases/{ref}"): _MAKER,
    ("GET", "/api/v1/accounts"): _ADMIN,
    ("POST", "/api/v1/accounts"): _ADMIN,
    ("GET", "/api/v1/accounts/{name}/tokens"): _OWNER,  # its own, or an admin
    ("POST", "/api/v1/accounts/{name}/tokens"): _OWNER,
    ("DELETE", "/api/v1/accounts/{name}/tokens/{tid}"): _OWNER,
    ("POST", "/api/v1/rollouts"): _MAKER,
    ("GET", "/api/v1/rollouts"): _MAKER,
    ("GET", "/api/v1/rollouts/{id}"): _MAKER,
    ("POST", "/api/v1/rollouts/{id}/{command}"): _MAKER,
    ("GET", "/api/v1/events"): _OWNER,  # an owner: its devices' only
    # the web app's files (gateway/webapp.py): static, the same for everyone
    ("GET", "/"): Rule(None),
    ("GET", "/app"): Rule(None),
    ("GET", "/app/"): Rule(None),
    ("GET", "/app/{name}"): Rule(None),
    ("GET", "/app/vendor/{name}"): Rule(None),
}


error = error_response


def rule_of(request: web.Request) -> Rule | None:
    """The rule of the route the request matched (None: no route, or one without a rule)."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    method = "GET" if request.method == "HEAD" else request.method
    return ACCESS.get((method, resource.canonical))


def principal(request: web.Request) -> Account:
    return request[PRINCIPAL]


def accounts_of(request: web.Request) -> Accounts:
    return Accounts(request.app[GATEWAY].store)


def may_see(request: web.Request, device: str) -> bool:
    """Whether the request's principal may see and act on device."""
    return accounts_of(request).may_see(principal(request), device)


def auth_middleware(gw: Gateway, token: str) -> Any:
    """The middleware that names each request's principal and applies its route's rule."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        rule = rule_of(request)
        if rule is not None and rule.role is None:
            return await handler(request)
        given = request.headers.get("Authorization")
        who: Account | None = None
        if given is not None:  # a bearer token: no cookie is looked at
            raw = _utf8(given)
            if raw is not None and secrets.compare_digest(raw, expected):
                who = GATEWAY_ACCOUNT
            elif raw is not None and given.startswith("Bearer "):
                who = Accounts(gw.store).by_token(given[len("Bearer ") :], gw.clock.now())
        elif (session := session_of(request)) is not None:  # a browser's: never the gateway's token
            refused = csrf_refusal(request, session)
            if refused is not None:
                return refused
            who = session.account
            request[SESSION] = session
        if who is None:
            return error(401, "unauthorized", "missing or wrong bearer token, or no session")
        request[PRINCIPAL] = who
        if rule is None:
            if request.match_info.http_exception is not None:
                return await handler(request)  # no such route: aiohttp's 404 or 405
            return error(403, "forbidden", "this route has no access rule")
        if rule.role is not None and not who.may(rule.role):
            return error(403, "forbidden", f"this needs an account of role {rule.role} or above")
        if rule.device:
            dev = request.match_info.get("id", "")
            if not Accounts(gw.store).may_see(who, dev):
                return error(404, "unknown_device", f"no device {dev[:64]!r}")
        return await handler(request)

    return auth


# ---- the accounts' endpoints ------------------------------------------------------


def setup(app: web.Application) -> None:
    """Add the accounts' endpoints and their state to the API's app."""
    app[FAILED_LOGINS] = {}
    app[FAILED_UNKNOWN] = OrderedDict()
    app.add_routes(_routes())


def _routes() -> list[web.RouteDef]:
    return [
        web.post("/api/v1/login", _login),
        web.get("/api/v1/me", _me),
        web.get("/api/v1/accounts", _accounts),
        web.post("/api/v1/accounts", _create_account),
        web.get("/api/v1/accounts/{name}/tokens", _tokens),
        web.post("/api/v1/accounts/{name}/tokens", _issue_token),
        web.delete("/api/v1/accounts/{name}/tokens/{tid}", _revoke_token),
        web.post("/api/v1/claims", _claim),
        web.put("/api/v1/devices/{id}/claim-code", _register_claim),
        web.delete("/api/v1/devices/{id}/owner", _release),
    ]


def account_error(exc: AccountError) -> web.Response:
    status = {
        "exists": 409,
        "claimed": 409,
        "not_found": 404,
        "rate_limited": 429,
        "bad_claim_code": 422,
        "weak_password": 422,
    }.get(exc.code, 400)
    return error(status, exc.code, str(exc))


async def json_object(request: web.Request, fields: dict[str, type]) -> dict[str, Any] | web.Response:
    """The body as a JSON object of those fields (each optional here), or the error to answer."""
    body = await json_body(request)
    if not isinstance(body, dict):
        return error(400, "bad_request", "body must be a JSON object of " + ", ".join(fields))
    for key, value in body.items():
        if key not in fields:
            return error(400, "bad_request", f"unknown field {key[:40]!r} (known: {', '.join(fields)})")
        if not isinstance(value, fields[key]) or isinstance(value, bool):
            return error(400, "bad_request", f"{key!r} must be a {fields[key].__name__}")
    return body


def _account_dict(a: Account, accounts: Accounts) -> dict[str, Any]:
    return {"name": a.name, "role": a.role, "created": a.created, "devices": accounts.devices_of(a)}


async def _me(request: web.Request) -> web.Response:
    return web.json_response(_account_dict(principal(request), accounts_of(request)))


async def _accounts(request: web.Request) -> web.Response:
    accounts = accounts_of(request)
    return web.json_response([_account_dict(a, accounts) for a in accounts.all()])


async def _create_account(request: web.Request) -> web.Response:
    body = await json_object(request, {"name": str, "role": str, "password": str})
    if isinstance(body, web.Response):
        return body
    if "name" not in body or "role" not in body:
        return error(400, "bad_request", f"an account needs a name and a role ({', '.join(ROLES)})")
    accounts = accounts_of(request)
    try:
        now = request.app[GATEWAY].clock.now()
        a = accounts.create(body["name"], body["role"], body.get("password"), now)
    except AccountError as exc:
        return account_error(exc)
    return web.json_response(_account_dict(a, accounts), status=201)


def _named(request: web.Request) -> Account | web.Response:
    """The account of the route's {name}: the principal's own, or any for an admin."""
    who = principal(request)
    name = request.match_info["name"]
    if who.name == name and who.id != GATEWAY_ACCOUNT.id:
        return who
    if not who.may("admin"):
        return error(403, "forbidden", "an account's tokens are its own (or an admin's to manage)")
    a = accounts_of(request).get(name)
    return a if a is not None else error(404, "not_found", f"no account {name[:40]!r}")


async def _tokens(request: web.Request) -> web.Response:
    a = _named(request)
    if isinstance(a, web.Response):
        return a
    return web.json_response(accounts_of(request).tokens(a))


async def _issue_token(request: web.Request) -> web.Response:
    a = _named(request)
    if isinstance(a, web.Response):
        return a
    body = await json_object(request, {"label": str})
    if isinstance(body, web.Response):
        return body
    token = accounts_of(request).issue_token(a, body.get("label", ""), request.app[GATEWAY].clock.now())
    return web.json_response({"account": a.name, "token": token}, status=201)


async def _revoke_token(request: web.Request) -> web.Response:
    a = _named(request)
    if isinstance(a, web.Response):
        return a
    if not accounts_of(request).revoke_token(a, request.match_info["tid"]):
        return error(404, "not_found", "no such token")
    return web.json_response({"revoked": request.match_info["tid"]})


FAILED_LOGINS: web.AppKey[dict[str, deque[float]]] = web.AppKey("failed_logins")  # name -> when
FAILED_UNKNOWN: web.AppKey[OrderedDict[str, deque[float]]] = web.AppKey("failed_unknown")  # likewise
UNKNOWN_NAMES = 10_000  # names without an account whose failed logins are counted, the latest


async def _login(request: web.Request) -> web.Response:
    """A new token for an account's name and password."""
    body = await json_object(request, {"name": str, "password": str, "label": str})
    if isinstance(body, web.Response):
        return body
    a = checked_login(request, body)
    if isinstance(a, web.Response):
        return a
    token = accounts_of(request).issue_token(a, body.get("label", "login"), request.app[GATEWAY].clock.now())
    return web.json_response({"account": a.name, "role": a.role, "token": token}, status=201)


def checked_login(request: web.Request, body: dict[str, Any]) -> Account | web.Response:
    """The account whose name and password the body gives, or the error to
    answer. Failed logins of a name are limited (LOGIN_TRIES in
    LOGIN_WINDOW_S, kept in memory), for tokens and sessions together, and
    alike for names no account has (so that the limit does not tell which
    names exist): those in a table of their own, of at most UNKNOWN_NAMES,
    so that a spray of names cannot crowd an account's count out. A login
    is JSON, from no other site's page (415, 403 `csrf`)."""
    from .api_sessions import foreign_origin

    if request.content_type != "application/json":
        return error(415, "bad_request", "a login is a JSON body (Content-Type: application/json)")
    refused = foreign_origin(request)
    if refused is not None:
        return refused
    if "name" not in body or "password" not in body:
        return error(400, "bad_request", "log in with a name and a password")
    name, now = body["name"][:64], time.monotonic()
    accounts = accounts_of(request)
    known = accounts.get(name) is not None
    unknown = request.app[FAILED_UNKNOWN]
    table: dict[str, deque[float]] = request.app[FAILED_LOGINS] if known else unknown
    failed = table.setdefault(name, deque(maxlen=LOGIN_TRIES))
    while failed and failed[0] <= now - LOGIN_WINDOW_S:
        failed.popleft()
    if len(failed) >= LOGIN_TRIES:
        return error(429, "rate_limited", f"{LOGIN_TRIES} failed logins of {name!r}: try again later")
    a = accounts.login(name, body["password"][:1024])
    if a is None:
        failed.append(now)
        if not known:
            unknown.move_to_end(name)
            while len(unknown) > UNKNOWN_NAMES:
                unknown.popitem(last=False)
        return error(401, "unauthorized", "wrong name or password")
    if not failed:
        table.pop(name, None)
    return a


async def _claim(request: web.Request) -> web.Response:
    body = await json_object(request, {"code": str})
    if isinstance(body, web.Response):
        return body
    if "code" not in body:
        return error(400, "bad_request", "claim a device with its code: {'code': 'XXXX-XXXX-XXXX-XXXX'}")
    try:
        now = request.app[GATEWAY].clock.now()
        dev = accounts_of(request).claim(principal(request), body["code"][:64], now)
    except AccountError as exc:
        return account_error(exc)
    request.app[GATEWAY].claimed(dev)
    return web.json_response({"device": dev, "owner": principal(request).name}, status=201)


async def _register_claim(request: web.Request) -> web.Response:
    body = await json_object(request, {"code": str})
    if isinstance(body, web.Response):
        return body
    if "code" not in body:
        return error(400, "bad_request", "body must be {'code': the device's claim code}")
    dev = request.match_info["id"]
    if not valid_id(dev):
        return error(400, "bad_request", "a device id is 1-32 of a-z 0-9 - _, a letter or digit first")
    gw = request.app[GATEWAY]
    try:
        accounts_of(request).register_claim(dev, body["code"][:64], gw.clock.now())
    except AccountError as exc:
        return account_error(exc)
    return web.json_response({"device": dev, "claim_code": "registered"})


async def _release(request: web.Request) -> web.Response:
    """An owner gives its device up; an admin takes any device from its owner."""
    dev = request.match_info["id"]
    accounts = accounts_of(request)
    who = principal(request)
    owner = accounts.owner_of(dev)
    if owner is None:
        return error(404, "not_found", f"{dev[:64]} has no owner")
    if who.may("admin"):
        target = accounts.by_id(owner)
        if target is None:
            return error(404, "not_found", f"{dev[:64]} has no owner")
        who = target
    bridge = request.app[GATEWAY].homeassistant
    linked = bridge.links.get(dev) is not None
    try:
        accounts.release(who, dev)
    except AccountError as exc:
        return account_error(exc)
    if linked:  # (its link went with the owner's say: what Home Assistant was shown goes too)
        await bridge.clear(dev)
    return web.json_response({"device": dev, "owner": None})
