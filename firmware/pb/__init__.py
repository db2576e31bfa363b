# The device runtime. What the whole firmware agrees on lives here.
VERSION = "0.1.0"  # of the runtime, reported in every hello
API = 1  # the runtime API features are written against
