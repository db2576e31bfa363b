# The other ends of the device's links, for the gateway, the simulator and
# the tests: the full validation of every message and the broker's half of
# MQTT. Never provisioned to a board.
