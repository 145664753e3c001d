"""The typed settings parser: --conf strings and JSON files, errors naming the key."""

import json
from pathlib import Path

import pytest

from emlabel.errors import SettingsError
from emlabel.settings import AppSettings, parse_settings

REPO = Path(__file__).resolve().parents[1]


def test_defaults_when_no_conf():
    assert parse_settings({}) == AppSettings()


def test_sample_config_documents_exactly_the_defaults():
    parsed = parse_settings({"config": str(REPO / "sample-config.json")})
    assert parsed == AppSettings()
    keys = {
        k for k in json.loads((REPO / "sample-config.json").read_text()) if not k.startswith("_")
    }
    assert keys == {f for f in AppSettings.__dataclass_fields__}


def test_conf_strings_are_converted_to_types():
    s = parse_settings(
        {
            "max_epochs": "3",
            "learning_rate": "0.01",
            "roi_size": "32, 32, 16",
            "labels": '["a", "b"]',
            "target_spacing": "[1, 1, 2.5]",
        }
    )
    assert s.max_epochs == 3 and isinstance(s.max_epochs, int)
    assert s.learning_rate == pytest.approx(0.01)
    assert s.roi_size == (32, 32, 16)
    assert s.labels == ("a", "b")
    assert s.num_classes == 3 and s.label_map == {"a": 1, "b": 2}
    assert s.target_spacing == (1.0, 1.0, 2.5)


def test_conf_overrides_config_file(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"max_epochs": 7, "seed": 3}))
    s = parse_settings({"config": str(cfg), "max_epochs": "2"})
    assert (s.max_epochs, s.seed) == (2, 3)


def test_monai_label_keys_are_accepted():
    assert parse_settings({"server_mode": "true", "preload": "false"}) == AppSettings()


@pytest.mark.parametrize(
    ("conf", "key"),
    [
        ({"bogus": "1"}, "bogus"),
        ({"max_epochs": "ten"}, "max_epochs"),
        ({"max_epochs": "2.5"}, "max_epochs"),
        ({"max_epochs": "0"}, "max_epochs"),
        ({"roi_size": "32,32"}, "roi_size"),
        ({"roi_size": "32,x,32"}, "roi_size"),
        ({"intensity_window": "300,-200"}, "intensity_window"),
        ({"labels": '["a", "a"]'}, "labels"),
        ({"val_fraction": "1.5"}, "val_fraction"),
        ({"review_random_share": "1.5"}, "review_random_share"),
        ({"min_steps_per_epoch": "-1"}, "min_steps_per_epoch"),
        ({"min_steps_per_epoch": "20000"}, "min_steps_per_epoch"),
    ],
)
def test_bad_values_name_the_key(conf, key):
    with pytest.raises(SettingsError, match=f"'{key}'"):
        parse_settings(conf)


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(SettingsError, match="not found"):
        parse_settings({"config": str(tmp_path / "none.json")})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SettingsError, match="not valid JSON"):
        parse_settings({"config": str(bad)})


def test_settings_round_trip_through_a_dict():
    from emlabel.settings import settings_to_dict

    s = parse_settings({"roi_size": "32,32,16", "labels": "a,b"})
    assert parse_settings(settings_to_dict(s)) == s
