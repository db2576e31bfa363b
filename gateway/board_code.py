"""The code provisioning runs on a board through its raw REPL: the common
subset of MicroPython and CPython, small in RAM (files are read in 512-byte
chunks), its names starting with _pb so that they stay clear of the board's
own. HELPERS is sent once per session; the others call it."""

from __future__ import annotations

HELPERS = """
import os, sys, gc, json, hashlib, binascii
def _pbh(p, b=bytearray(512)):
    h = hashlib.sha256()
    n = 0
    with open(p, 'rb') as f:
        k = f.readinto(b)
        while k:
            n += k
            h.update(memoryview(b)[:k])
            k = f.readinto(b)
    return n, binascii.hexlify(h.digest()).decode()
def _pbls(d, deep):
    try:
        es = [(e[0], e[1]) for e in os.ilistdir(d or '.')]
    except OSError:
        return
    for name, kind in es:
        p = d + '/' + name if d else name
        if kind & 0x4000:
            if deep:
                _pbls(p, deep)
        else:
            n, x = _pbh(p)
            print('%s\\t%d\\t%s' % (p, n, x))
def _pbmk(p):
    c = ''
    for s in p.split('/')[:-1]:
        c = c + '/' + s if c else s
        try:
            os.mkdir(c)
        except OSError:
            pass
def _pbmv(a, b):
    try:
        os.rename(a, b)
    except OSError:
        os.remove(b)
        os.rename(a, b)
def _pbrm(p):
    try:
        m = os.stat(p)[0]
    except OSError:
        return
    if m & 0x4000:
        for e in [e[0] for e in os.ilistdir(p)]:
            _pbrm(p + '/' + e)
        os.rmdir(p)
    else:
        os.remove(p)
def _pbj(p):
    try:
        with open(p) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None
"""


def scan(deep: tuple[str, ...], shallow: tuple[str, ...]) -> str:
    """Print path, size and SHA-256 of every file under the folders deep
    (recursively) and in the folders shallow ("" is the root), a line each."""
    return "".join(f"_pbls({d!r}, 1)\n" for d in deep) + "".join(f"_pbls({d!r}, 0)\n" for d in shallow)


# What is on the board, as one line of JSON: never the broker password.
INSPECT = """
_r = {'platform': sys.platform, 'mpy': getattr(sys.implementation, '_mpy', 0),
      'micropython': '.'.join(str(v) for v in sys.implementation.version[:3])}
_c = _pbj('config.json')
if isinstance(_c, dict):
    _r['config'] = {'device': _c.get('device'), 'model': _c.get('model'), 'board': _c.get('board'),
                    'hal': _c.get('hal')}
_p = _pbj('ota/active.json')
_r['pointer'] = _p
if isinstance(_p, dict) and isinstance(_p.get('set'), str) and _p['set'] != 'features':
    try:
        _m = json.loads(_pbj(_p['set'] + '/manifest.json')['signed'])
        _r['set'] = {'version': _m.get('version'), 'counter': _m.get('counter'),
                     'features': {n: _m['features'][n].get('version') for n in _m['features']}}
        del _m
    except (TypeError, KeyError, ValueError):
        _r['set'] = None
_f = {}
try:
    for _e in [e[0] for e in os.ilistdir('features')]:
        _m = _pbj('features/' + _e + '/manifest.json')
        if isinstance(_m, dict):
            _f[_e] = _m.get('version')
except OSError:
    pass
_r['factory'] = _f
_h = _pbj('data/hello.json')
_r['runtime'] = _h.get('runtime') if isinstance(_h, dict) else None
if _r['runtime'] is None:
    try:
        import pb
        _r['runtime'] = pb.VERSION
        del sys.modules['pb']
    except (ImportError, AttributeError, ValueError, KeyError):
        pass
try:
    os.stat('provisioning.json')
    _r['interrupted'] = True
except OSError:
    _r['interrupted'] = False
try:
    _s = os.statvfs('.')
    _r['flash_free'] = _s[0] * _s[3]
    _r['flash_total'] = _s[0] * _s[2]
except (AttributeError, OSError):
    pass
gc.collect()
_r['mem_free'] = gc.mem_free() if hasattr(gc, 'mem_free') else None
print(json.dumps(_r))
del _r, _c, _p, _f, _h
gc.collect()
"""

# The broker password a board holds, for a provisioning of the same device
# again that is given none: the device keeps the credentials it has.
PASSWORD = """
_c = _pbj('config.json')
print(json.dumps(_c.get('broker', {}).get('password') if isinstance(_c, dict) else None))
del _c
"""
