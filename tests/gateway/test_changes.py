"""What an update changes, as its owner is shown it (gateway/changes.py):
features added, changed and removed, the permissions granted anew and no
longer, what is not known of the factory set, and the hardware lacking."""

from __future__ import annotations

from typing import Any

from gateway.changes import FeatureSet, compare, of_hello, of_release


def _feature(version: str, reads: list[str], drives: list[str], publishes: list[str]) -> dict[str, Any]:
    return {"version": version, "permissions": {"reads": reads, "drives": drives, "publishes": publishes}}


TODAY = {
    "features": {
        "thermostat": _feature("1.0.0", ["temperature"], ["relay"], ["setpoint", "heating"]),
        "eco": _feature("1.0.0", ["temperature"], [], ["price"]),
    }
}
UPDATE = {
    "features": {
        "thermostat": _feature("1.1.0", ["temperature", "humidity"], ["relay"], ["setpoint", "heating"]),
        "comfort": _feature("0.1.0", ["humidity"], [], ["comfort"]),
    },
    "requires": ["humidity", "relay", "temperature"],
}


def test_features_added_changed_and_removed_and_the_permissions_new_and_no_longer() -> None:
    c = compare(of_release(TODAY), of_release(UPDATE), UPDATE["requires"], ["relay", "temperature"])
    assert c.added == (("comfort", "0.1.0"),)
    assert c.changed == (("thermostat", "1.0.0", "1.1.0"),)
    assert c.removed == (("eco", "1.0.0"),)
    assert c.new == {"reads": ("humidity",), "drives": (), "publishes": ("comfort",)}
    assert c.no_longer == {"reads": (), "drives": (), "publishes": ("price",)}
    assert c.lacks == ("humidity",) and c.unknown == ()
    assert c.summary() == "new: reads humidity; publishes comfort. no longer: publishes price"
    d = c.to_dict()
    assert d["features"]["changed"] == [{"name": "thermostat", "from": "1.0.0", "to": "1.1.0"}]
    assert d["permissions"]["reads"] == {"new": ["humidity"], "no_longer": []}


def test_a_permission_another_feature_has_already_is_not_new() -> None:
    # eco reads temperature today; a new feature that reads it too grants nothing new
    update = {"features": {**TODAY["features"], "log": _feature("1.0.0", ["temperature"], [], [])}}
    c = compare(of_release(TODAY), of_release(update), [], [])
    assert c.added == (("log", "1.0.0"),) and c.changed == () and c.removed == ()
    assert c.summary() == "no new permissions"


def test_the_factory_set_takes_the_permissions_of_the_shipped_manifests_of_its_versions() -> None:
    hello = {"thermostat": {"version": "1.0.0", "enabled": True}, "vent": {"version": "0.9.0"}}
    manifests = {
        "thermostat": {"version": "1.0.0", "permissions": {"reads": ["temperature"], "drives": ["relay"]}},
        "vent": {"version": "1.0.0", "permissions": {"drives": ["servo"]}},  # another version
    }
    now = of_hello(hello, manifests)
    assert now.versions == {"thermostat": "1.0.0", "vent": "0.9.0"}
    c = compare(now, of_release(UPDATE), [], [])
    assert c.unknown == ("vent",)
    assert c.new["drives"] == () and c.new["reads"] == ("humidity",)


def test_odd_manifests_cost_nothing_but_what_they_lack() -> None:
    odd = {"features": {"x": {"version": "1", "permissions": {"reads": ["a", 3], "drives": "b"}}, "y": 4}}
    c = compare(FeatureSet({}, {}), of_release(odd), [], [])
    assert c.added == (("x", "1"),) and c.new["reads"] == ("a",) and c.new["drives"] == ()
