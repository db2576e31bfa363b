# A small synchronous event bus between the runtime and the features.
# Handlers run in the order they subscribed; one that raises is reported to
# on_error with its owner, and the others still run.


class Bus:
    def __init__(self, on_error):
        self._subs = {}  # event -> [(owner, handler), ...]
        self._on_error = on_error

    def on(self, event, handler, owner):
        self._subs.setdefault(event, []).append((owner, handler))

    def drop(self, owner):
        """Remove every handler an owner subscribed."""
        for event in list(self._subs):
            kept = [s for s in self._subs[event] if s[0] != owner]
            if kept:
                self._subs[event] = kept
            else:
                del self._subs[event]

    def emit(self, event, *args):
        subs = self._subs.get(event)
        if not subs:
            return
        failed = None
        for owner, handler in list(subs):
            if failed is not None and owner in failed:
                continue
            try:
                handler(*args)
            except MemoryError:
                raise  # the device is short of RAM, not the feature at fault: reset
            except Exception as exc:  # noqa: BLE001 - feature code: isolate and report
                failed = failed or []
                failed.append(owner)
                self._on_error(owner, exc)

    def owners(self, event):
        return [s[0] for s in self._subs.get(event, ())]
