# The trial of a newly activated feature set (docs/ota.md 4.5): commit when
# healthy, roll back when not. Loaded only while a set is on trial.
from ..compat import forget, format_exception, sleep_ms, ticks_diff, ticks_ms
from ..store import write_atomic

# A commit loads little (the statuses' small module): the pointer it writes
# was prepared when the trial started (Updates.commit_to). The new set runs
# on what is left, and the heap it has used may lack the blocks a larger
# module needs to load.


async def run(u):
    """The trial: every feature started and passes its self-test, and the
    device stays up (and connected) for the trial's length: commit."""
    d = u.dev
    f = d.features
    t0 = ticks_ms()
    try:
        states = f.status()
        for name in sorted(states):
            err = states[name].get("error")
            if err:
                rollback(u, "%s did not start: %s" % (name, err))
                return
        bad = _selftests(f)
        if bad:
            name = sorted(bad)[0]
            rollback(u, "self-test of %s failed: %s" % (name, bad[name]))
            return
        states = bad = None  # (not held through the trial: its heap is the tightest)
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
        forget(("pb.ota.trial",))
        u.idle()
        if u.boot.pointer.get("state") == "committed" and u.commit_to is None:
            d.republish_hello()  # what runs is now committed: with the RAM the trial used


def commit(u):
    d = u.dev
    p = u.boot.pointer
    d.hal.fault_point("commit")
    from .report import status

    path, data = u.commit_to
    write_atomic(path, data)  # the pointer, as pb/ota/flash.py commit_of made it
    u.boot.pointer = q = dict(p)
    q["state"] = "committed"
    q.pop("boots", None)
    q.pop("error", None)
    u.boot.trial = False
    d.hal.fault_point("committed")
    if p.get("image"):
        # the new image, once the set is committed: a reset before this
        # takes the image back, and the boot loader the set with it; never
        # a valid image under the old set (docs/ota.md 4.11)
        try:
            d.hal.image_valid()
        except OSError as exc:
            d.log("the new image could not be marked valid (%s): the next reset takes it back" % exc)
        d.hal.fault_point("image-valid")
    u.status(status(p.get("update") or "-", "committed", p["counter"]))
    u.commit_to = None


def rollback(u, reason):
    d = u.dev
    p = u.boot.pointer
    if not u.boot.trial:
        return
    d.spare(True)  # the boot loader's code is loaded for this, on a heap the trial has used
    try:
        from .flash import boot_loader
        from .report import status  # (before the set changes: what it says must go out)

        restored = boot_loader().rollback(d.base, p, reason)
    except MemoryError:
        # the set is still on trial: the next boot, on a fresh heap, tries
        # it again and rolls back then (or the boot loader does, after its
        # trial boots)
        d.log("rollback: out of RAM; resetting to roll back")
        try:  # kept for the reason of the boot loader's rollback
            from . import flash

            q = dict(p)
            q["error"] = ("ended in rollback: " + reason)[:150]  # (firmware/loader.py reports it)
            flash.boot_loader().write_pointer(d.base, q)
        except Exception:  # noqa: BLE001 - a note lost (no RAM for it either), the reset still due
            pass
        d.stop("rollback")
        return
    u.boot.trial = False
    if restored is None:
        d.log("no usable previous set: the next boots end in safe mode")
    st = status(p.get("update") or "-", "rolled_back", p["counter"], reason)
    try:
        u.status(st)
    except MemoryError:
        from . import flash  # (loaded with the loader)

        flash.boot_loader().add_report(d.base, st)  # said by the next boot, on a fresh heap
    finally:
        d.stop("rollback")


def _selftests(host):
    """Run each running feature's selftest(); {name: error} for failures."""
    bad = {}
    for name in list(host.running):
        obj = host.running[name]
        if hasattr(obj, "selftest"):
            try:
                if obj.selftest() is False:
                    bad[name] = "self-test returned False"
            except Exception as exc:  # noqa: BLE001 - feature code
                bad[name] = format_exception(exc)
    return bad
