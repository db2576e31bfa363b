# The MQTT codec and client, and the protocol core the device speaks over
# them (JSON out: wire, JSON in: wire_in). Other links go beside them.

# What every link does alike: its bounded queue, its backoff, its tasks'
# failures ending the session.


def enqueue(items, msg, qos, size, stats):
    """Append msg (a tuple whose last item is its qos) to the queue items of at
    most size; False if it was full and something was dropped to bound memory
    (QoS 0 before QoS 1, oldest first; a QoS 0 item finding only QoS 1
    ones is itself dropped)."""
    ok = True
    if len(items) >= size:
        ok = False
        stats["dropped"] += 1
        victim = -1
        for i in range(len(items)):
            if items[i][-1] == 0:
                victim = i
                break
        if victim < 0 and qos == 0:
            return False
        items.pop(max(victim, 0))
    items.append(msg)
    return ok


def backoff_ms(attempt, backoff_min_ms, backoff_max_ms):
    """Milliseconds to wait before the next attempt: the least doubled for
    each one, at most the most, then jittered down to half of that."""
    from ..compat import rand_below

    cap = min(backoff_min_ms << min(attempt, 12), backoff_max_ms)
    return cap // 2 + rand_below(cap // 2 + 1)


async def guard(coro, end, failure):
    """Run coro, a task of a link's session: its exception goes to the list
    failure (the session raises it), and either way, unless it was
    cancelled, the event end is set."""
    from ..compat import asyncio

    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - handed to the session, which re-raises
        failure.append(exc)
    end.set()
