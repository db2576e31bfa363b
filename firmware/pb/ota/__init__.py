# The update path in order: offer and download (download, transfer), staging
# (files), verification (trust, ed25519, sha512), install, trial and commit (the
# boot's choice of the set: firmware/loader.py); flash owns every path and the active-set pointer.
