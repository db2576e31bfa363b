# The trial of a newly activated feature set (docs/ota.md 4.6): commit when
# healthy, roll back when not. Loaded only while a set is on trial, or at
# the first boot after a commit whose report the power cut short.
import json

from .compat import forget, format_exception, sleep_ms, ticks_diff, ticks_ms
from .store import read_bytes, write_atomic
from .updates import LAST_STATUS

POINTER = "ota/active.json"


def committed_unsaid(u):
    """The power went between the commit and its report: say it now."""
    p = u.boot.pointer
    data = read_bytes(u.dev.base + "/" + LAST_STATUS)
    try:
        last = json.loads(data) if data else None
    except ValueError:
        last = None
    if last and last.get("id") == p["update"] and last.get("state") in ("activating", "trial"):
        u.status({"v": 1, "id": p["update"], "state": "committed", "counter": p["counter"]})


async def run(u):
    """The trial: every feature started and passes its self-test, and the
    device stays up (and connected) for the trial's length: commit."""
    d = u.dev
    f = d.features
    t0 = ticks_ms()
    try:
        status = f.status()
        for name in sorted(status):
            err = status[name].get("error")
            if err:
                rollback(u, "%s did not start: %s" % (name, err))
                return
        bad = f.selftest()
        forget(("pb.configure",))
        if bad:
            name = sorted(bad)[0]
            rollback(u, "self-test of %s failed: %s" % (name, bad[name]))
            return
        d.hal.fault_point("trial-checked")
        while u.boot.trial and (not d.client.up or ticks_diff(ticks_ms(), t0) < u.trial_s * 1000):
            await sleep_ms(200)
        if u.boot.trial:
            commit(u)
    except Exception as exc:  # noqa: BLE001 - the trial itself failing is a failed trial
        if u.boot.trial:
            rollback(u, "trial: " + format_exception(exc))
        else:
            d.log("after the commit: " + format_exception(exc))
    finally:
        forget(("pb.trial",))


def commit(u):
    d = u.dev
    p = u.boot.pointer
    d.hal.fault_point("commit")
    q = dict(p)
    q["state"] = "committed"
    q.pop("boots", None)
    q.pop("error", None)
    write_atomic(d.base + "/" + POINTER, json.dumps(q).encode("utf-8"))
    u.boot.pointer = q
    u.boot.trial = False
    d.hal.fault_point("committed")
    u.status({"v": 1, "id": p.get("update") or "-", "state": "committed", "counter": p["counter"]})
    d.republish_hello()


def rollback(u, reason):
    d = u.dev
    p = u.boot.pointer
    if not u.boot.trial:
        return
    d.spare(True)  # the guard's code is loaded for this, on a heap the trial has used
    try:
        from .guard import rollback as back

        restored = back(d.base, p, reason)
    except MemoryError:
        # the set is still on trial: the next boot, on a fresh heap, tries
        # it again and rolls back then (or the boot guard does, after its
        # trial boots)
        d.log("rollback: out of RAM; resetting to roll back")
        try:  # kept for the reason of the boot guard's rollback
            q = dict(p)
            q["error"] = ("ended in rollback: " + reason)[:150]  # (pb/guard.py reports it)
            write_atomic(d.base + "/" + POINTER, json.dumps(q).encode("utf-8"))
        except Exception:  # noqa: BLE001 - a note lost, the reset still due
            pass
        d.stop("rollback")
        return
    u.boot.trial = False
    if restored is None:
        d.log("no usable previous set: the next boots end in safe mode")
    st = {"v": 1, "id": p.get("update") or "-", "state": "rolled_back", "counter": p["counter"]}
    st["reason"] = reason
    u.status(st)
    d.stop("rollback")
