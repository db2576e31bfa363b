"""The device's filesystem, as copied to a board.

Under CPython this folder is also a package, so the gateway and the simulator
import the very same device code (``firmware.pb``) rather than a second copy.
This file itself is not copied to devices.
"""
