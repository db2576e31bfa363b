# Device, feature and command ids: the one rule for all of them, in a module
# small enough for the boot to load before anything else.
MAX_ID = 32  # characters


def _is_id_char(c):
    return ("a" <= c <= "z") or ("0" <= c <= "9") or c == "-" or c == "_"


def valid_id(s):
    """True for 1-32 characters of a-z, 0-9, '-' and '_', starting with a
    letter or digit: safe in a topic level, a file name and a URL."""
    if not isinstance(s, str) or not 0 < len(s) <= MAX_ID:
        return False
    if s[0] == "-" or s[0] == "_":
        return False
    for c in s:
        if not _is_id_char(c):
            return False
    return True
