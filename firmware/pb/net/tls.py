# TLS to the broker (docs/security.md 5.4): the MQTT client over TLS, for a
# device whose config.json names the broker's CA file. Only such a device
# loads this module: on a small heap a device on plain MQTT pays for no
# line of it, not even for the names it brings.
from ..compat import MICROPYTHON, format_exception
from ..errors import MqttError
from .mqtt_client import MQTTClient as Plain


class MQTTClient(Plain):
    """The MQTT client over TLS, named as the plain one: the modules that
    choose between them then bring no name of their own to the heap.

    ssl: the path of a CA certificate (DER), the one CA trusted; the
    broker's certificate must name host. The context is made at once, while
    the heap is still whole (it takes a block of 3 KB); failing that, at
    each connect: a CA file missing or broken, like a certificate refused,
    is a connection failure, said and retried with the backoff, never a
    crash and never plain MQTT."""

    def __init__(self, *args, **kwargs):
        Plain.__init__(self, *args, **kwargs)
        try:
            _context(self)
        except (MqttError, MemoryError):
            pass  # (tried again at each connect)

    async def _session(self):
        _context(self)
        try:
            return await Plain._session(self)
        except ValueError as exc:
            # how MicroPython's ssl refuses a certificate (another CA's, another name's)
            raise MqttError("TLS: " + str(exc).strip())

    def _backoff(self, attempt):
        # (asked once after every session that ended: why, and when the next comes)
        ms = Plain._backoff(self, attempt)
        print("pb[%s]: broker: %s; again in %d ms" % (self.client_id, self.last_error or "closed", ms))
        return ms


def _context(client):
    # client.ssl, the CA file's path, made the context that trusts it alone.
    # On MicroPython, its tls module itself: the ssl module wrapped around
    # it would cost a small heap 1.5 KB more. Its context checks nothing
    # unless told CERT_REQUIRED (then mbedTLS checks the chain and the name
    # given as server_hostname, as CPython's PROTOCOL_TLS_CLIENT does), and
    # takes its CA as DER, positionally.
    ca = client.ssl
    if not isinstance(ca, str):
        return
    if MICROPYTHON:
        import tls as ssl
    else:
        import ssl  # type: ignore[no-redef]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED  # type: ignore[attr-defined] # (the stubs lack it; the port has it)
    try:
        with open(ca, "rb") as f:
            der = f.read()
        if MICROPYTHON:
            ctx.load_verify_locations(der)
        else:
            ctx.load_verify_locations(cadata=der)
    except (OSError, ValueError) as exc:
        raise MqttError("TLS: cannot load the CA %s: %s" % (ca, format_exception(exc)))
    if MICROPYTHON:
        # this module stands for the context (wrap_socket below)
        import sys

        _ctx[0] = ctx
        client.ssl = sys.modules[__name__]
    else:
        client.ssl = ctx


_ctx = [None]  # type: list  # the context made on MicroPython


def wrap_socket(s, **kw):
    # The module as the context MicroPython's asyncio.open_connection uses
    # (only its wrap_socket): TCP_NODELAY set on the socket before wrapping
    # it, since the stream then holds the wrapper, which has no setsockopt,
    # and Nagle's algorithm would hold a request written after a status for
    # the broker's delayed ACK (40 ms). CPython's asyncio sets it itself.
    s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY (Linux, lwIP)
    return _ctx[0].wrap_socket(s, **kw)


def client_for(ca):
    """A maker of clients over TLS trusting the CA file at path ca, called
    as the plain client is (update mode's: pb/start.py), so that the module
    that calls it names nothing of TLS on a small heap."""

    def make(*args, **kwargs):
        kwargs["ssl"] = ca
        return MQTTClient(*args, **kwargs)

    return make
