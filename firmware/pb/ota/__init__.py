# The update path in order: offer and download (download, transfer), staging
# (files), verification (trust, ed25519, sha512), install, the boot choice
# (guard), trial and commit; flash owns every path and the active-set pointer.
