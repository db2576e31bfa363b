# The MQTT codec and client, and the protocol core the device speaks over
# them (JSON out: wire, JSON in: wire_in). Other links go beside them.
