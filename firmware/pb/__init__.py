# The device runtime. What the whole firmware agrees on lives here.
VERSION = "0.2.0"  # of the runtime, reported in every hello
API = 1  # the runtime API features are written against
PROTOCOL = 2  # the protocol level the hello states (docs/protocol.md 3.1)
