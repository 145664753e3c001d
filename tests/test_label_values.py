"""Label values as stored <-> class indices, and ``labels`` given as a name -> value map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emlabel.data.label_values import ClassIndicesd, to_class_indices, to_stored_values
from emlabel.errors import SettingsError
from emlabel.settings import parse_settings


def test_labels_as_a_value_map_give_names_and_stored_values():
    s = parse_settings({"labels": '{"liver": 5, "spleen": 1}'})
    assert s.labels == ("liver", "spleen") and s.stored_values == (5, 1)
    assert s.label_map == {"liver": 1, "spleen": 2}  # class indices: the network's channels
    assert s.stored_label_map == {"liver": 5, "spleen": 1}
    with pytest.raises(SettingsError, match="labels"):
        parse_settings({"labels": '{"liver": "five"}'})
    with pytest.raises(SettingsError, match="label_values"):
        parse_settings({"labels": "liver,spleen", "label_values": "3,3"})


def test_the_users_labels_replace_the_planned_ones_and_their_values():
    planned = {"labels": ["label_1", "label_52"], "label_values": [1, 52]}
    assert parse_settings({}, planned=planned).stored_values == (1, 52)
    mine = parse_settings({"labels": "liver"}, planned=planned)
    assert mine.labels == ("liver",) and mine.stored_values == (1,)


def test_unlisted_values_are_background_and_the_map_inverts():
    s = parse_settings({"labels": '{"liver": 5, "spleen": 1}'})
    stored = np.array([0, 1, 5, 52, 5])
    indices = to_class_indices(stored, s)
    assert indices.tolist() == [0, 2, 1, 0, 1]
    assert to_stored_values(indices, s).tolist() == [0, 1, 5, 0, 5]


def test_one_structure_reads_0_255_masks_and_keeps_0_1_maps():
    s = parse_settings({"labels": "lungs"})
    assert to_class_indices(np.array([0, 127, 128, 255]), s).tolist() == [0, 0, 1, 1]
    assert to_class_indices(np.array([0, 1, 1]), s).tolist() == [0, 1, 1]
    two = parse_settings({"labels": "a,b"})  # several structures: values are class numbers
    assert to_class_indices(np.array([0, 2, 255]), two).tolist() == [0, 2, 255]


def test_the_transform_converts_tensors():
    s = parse_settings({"labels": '{"liver": 5}'})
    out = ClassIndicesd(keys="label", settings=s)({"label": torch.tensor([[0.0, 5.0, 7.0]])})
    assert out["label"].tolist() == [[0.0, 1.0, 0.0]]
