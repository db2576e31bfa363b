# Device, feature and command ids: the one rule for all of them, in a module
# small enough for the boot to load before anything else.
MAX_ID = 32  # characters


# (A string's characters are read as its UTF-8 bytes: MicroPython interns
# each character it takes out of a string, and a new interned string can
# need a large block of a cut-up heap.)


def _is_id_char(c):
    return 97 <= c <= 122 or 48 <= c <= 57 or c == 45 or c == 95  # a-z 0-9 - _


def valid_id(s):
    """True for 1-32 characters of a-z, 0-9, '-' and '_', starting with a
    letter or digit: safe in a topic level, a file name and a URL."""
    if not isinstance(s, str) or not 0 < len(s) <= MAX_ID:
        return False
    b = s.encode("utf-8", "replace")  # (CPython: a lone surrogate becomes "?")
    if b[0] == 45 or b[0] == 95:  # - _
        return False
    for c in b:
        if not _is_id_char(c):
            return False
    return True
