"""Tests of the ota package: keys, releases, verification, inspection, CLI."""
