"""The device simulator: virtual devices running the firmware's own runtime
(firmware.pb, imported under CPython) against simulated physics."""
