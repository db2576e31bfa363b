"""The twin preview (docs/twin.md): what a release would do on one device,
predicted from what the gateway has of that device.

- history.py: the device's record as the gateway keeps it (telemetry, the
  data and settings it sent, the device's settings as it replied them);
- room.py, skin.py: a grey-box model of the device's plant fitted by least
  squares to that record, with the conditions nobody measured (weather,
  occupancy; a wearer's exertion) estimated as part of the fit, and the
  fit's quality on a held-out tail;
- plant.py: the fitted plants as the simulator's HAL drives them (pure
  Python: they run in the sandbox);
- runner.py: the closed loop, the firmware's own runtime with a feature set
  on the fitted plant, stepped as the device samples; run in the sandbox;
- sandbox.py: a separate process that reads only the release's files and the
  device's record, without the gateway's keys or database, within time and
  memory limits;
- code.py: a release's feature files, verified as a device verifies them;
- preview.py: one preview, end to end; service.py: the gateway's cache of
  previews and the background worker that computes them.
"""
