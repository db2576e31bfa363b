# Which files of a release this device takes (docs/ota.md 2.3). A release
# carries each module in two forms, source (.py) and compiled (.mpy): the
# interpreter decides which one runs, since CPython cannot import .mpy and
# a small board has no RAM to compile source. Loaded only while a release's
# file list is read: by the download agent, the install.
from ..compat import MICROPYTHON
from ..errors import TrustError

FORM = "mpy" if MICROPYTHON else "py"  # the form of module this interpreter imports


def device_files(files, form=FORM, whole=True):
    """The files of a release this device downloads and installs (docs/ota.md
    2): of each module only its form (MicroPython: compiled .mpy; CPython:
    source .py), every other file as it is. Raises TrustError wrong_form if a
    module of the release lacks this device's form. whole=False (the
    download's first, unverified look at a manifest): a module lacking it
    is left out, and only a release with no module of this form is refused
    (the install, after the signatures and the manifest's rules, refuses
    the rest)."""
    mine = "." + form
    other = ".py" if form == "mpy" else ".mpy"
    paths = {}
    for f in files:
        paths[f["path"]] = True
    out = []
    lacking = None
    held = False  # a module of this form is there
    for f in files:
        p = f["path"]
        if p.endswith(other):
            if lacking is None and p[: -len(other)] + mine not in paths:
                lacking = p
            continue
        held = held or p.endswith(mine)
        out.append(f)
    if lacking is not None and (whole or not held):
        who = "MicroPython" if form == "mpy" else "CPython"
        raise TrustError(
            "wrong_form", "%s has no %s form, which this device (%s) runs" % (lacking, mine, who)
        )
    return out
