"""Every numeric train option has a maximum; requests above it (or NaN/inf) are a 400."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest

from emlabel.bounds import REQUEST_MAXIMA, check_maxima
from emlabel.errors import InvalidRequestError
from emlabel.methods.aide.options import AIDEOptions
from emlabel.methods.cgs.options import CGSOptions
from emlabel.methods.em.options import EMOptions
from emlabel.methods.stats.options import StatsOptions
from emlabel.monailabel.aide import AIDETrainer3D
from emlabel.monailabel.cgs import CGSTrainTask
from emlabel.monailabel.em import EMTrainTask
from emlabel.monailabel.stats import StatsTrainTask
from emlabel.monailabel.tasks import OptionsTrainTask
from emlabel.monailabel.train import SegmentationTrainer
from emlabel.monailabel.verifier import VerifierTrainTask
from emlabel.settings import AppSettings
from emlabel.verify.learned import LearnedVerifierOptions

OPTION_CLASSES = (AIDEOptions, CGSOptions, EMOptions, StatsOptions, LearnedVerifierOptions)
TRAINER_CLASSES = (
    SegmentationTrainer,
    AIDETrainer3D,
    CGSTrainTask,
    EMTrainTask,
    StatsTrainTask,
    VerifierTrainTask,
)


def is_numeric(hint: Any) -> bool:
    """int or float (not bool), or a tuple of them."""
    if typing.get_origin(hint) is tuple:
        return all(is_numeric(a) for a in typing.get_args(hint) if a is not Ellipsis)
    return hint in (int, float)


def numeric_fields(cls: type) -> list[str]:
    hints = typing.get_type_hints(cls)
    return [f.name for f in dataclasses.fields(cls) if is_numeric(hints[f.name])]


def trainer(cls: type[OptionsTrainTask], tmp_path: Path) -> OptionsTrainTask:
    kwargs: dict[str, Any] = {
        "model_path": str(tmp_path / "model.pt"),
        "settings": AppSettings(),
        "description": "test",
    }
    if cls is AIDETrainer3D:
        kwargs["segmentation_model_path"] = str(tmp_path / "segmentation.pt")
    return cls(**kwargs)


@pytest.mark.parametrize("cls", OPTION_CLASSES, ids=lambda c: c.__name__)
def test_every_numeric_option_field_has_a_maximum(cls):
    missing = [name for name in numeric_fields(cls) if name not in REQUEST_MAXIMA]
    assert not missing, f"{cls.__name__}: add {missing} to emlabel.bounds.REQUEST_MAXIMA"


@pytest.mark.parametrize("cls", TRAINER_CLASSES, ids=lambda c: c.__name__)
def test_every_numeric_request_key_has_a_maximum(cls, tmp_path):
    defaults = trainer(cls, tmp_path)._defaults
    numeric = set(numeric_fields(type(defaults)))
    keys = [k for k in cls.REQUEST_KEYS if k in numeric]
    assert keys, "every trainer takes numeric options"
    missing = [k for k in keys if k not in REQUEST_MAXIMA]
    assert not missing, f"{cls.__name__}: add {missing} to emlabel.bounds.REQUEST_MAXIMA"


@pytest.mark.parametrize("cls", TRAINER_CLASSES, ids=lambda c: c.__name__)
def test_defaults_are_within_the_maxima(cls, tmp_path):
    defaults = trainer(cls, tmp_path)._defaults
    check_maxima(defaults, "test", cls.REQUEST_KEYS)  # the served defaults
    for options in (c() for c in OPTION_CLASSES):  # the library's own defaults
        check_maxima(options, "test")


def test_segmentation_request_above_its_maximum_is_refused(tmp_path):
    seg = trainer(SegmentationTrainer, tmp_path)
    with pytest.raises(InvalidRequestError) as e:
        seg.parse_request({"max_epochs": 1_000_000_000})
    assert e.value.message == "train option 'max_epochs' is 1000000000; the maximum is 10000"
    assert e.value.status_code == 400
    assert seg.parse_request({"max_epochs": 10_000}).max_epochs == 10_000
    with pytest.raises(InvalidRequestError, match="'train_batch_size' is 65; the maximum is 64"):
        seg.parse_request({"train_batch_size": 65})
    with pytest.raises(InvalidRequestError, match="'seed' is 2147483648"):
        seg.parse_request({"seed": 2**31})
    with pytest.raises(InvalidRequestError, match="the maximum is 1"):
        seg.parse_request({"learning_rate": 2.5})


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", float("nan"), float("inf")])
def test_non_finite_floats_are_refused(raw, tmp_path):
    for cls, key in ((SegmentationTrainer, "learning_rate"), (CGSTrainTask, "lambda_max")):
        with pytest.raises(InvalidRequestError, match=f"'{key}' is .*finite number"):
            trainer(cls, tmp_path).parse_request({key: raw})


@pytest.mark.parametrize(
    ("cls", "key", "value", "what"),
    [
        (AIDETrainer3D, "max_epochs", 10**9, "aide"),
        (AIDETrainer3D, "warmup_epochs", 10**6, "aide"),
        (AIDETrainer3D, "batch_size", 1000, "aide"),
        (CGSTrainTask, "max_iterations", 10**12, "cgs"),
        (CGSTrainTask, "unlabeled_batch_size", 65, "cgs"),
        (StatsTrainTask, "max_epochs", 10**9, "stats"),
        (StatsTrainTask, "lambda_stat", 1e9, "stats"),
        (EMTrainTask, "epochs", 10**9, "em"),
        (EMTrainTask, "iterations", 10**9, "em"),
    ],
)
def test_every_trainer_refuses_values_above_the_maximum(cls, key, value, what, tmp_path):
    with pytest.raises(InvalidRequestError) as e:
        trainer(cls, tmp_path).parse_request({key: value})
    assert e.value.message.startswith(f"{what} option '{key}' is ")
    assert f"the maximum is {REQUEST_MAXIMA[key]:g}" in e.value.message


def test_only_the_keys_a_request_set_are_judged(tmp_path):
    """A server configured above a maximum still trains; its requests are judged alone."""
    seg = SegmentationTrainer(
        model_path=str(tmp_path / "m.pt"),
        settings=AppSettings(max_epochs=50_000),
        description="test",
    )
    assert seg.parse_request({"seed": 3}).max_epochs == 50_000
    with pytest.raises(InvalidRequestError, match="maximum"):
        seg.parse_request({"max_epochs": 50_000})


def test_the_minimums_stay(tmp_path):
    for cls, request in (
        (SegmentationTrainer, {"max_epochs": 0}),
        (AIDETrainer3D, {"max_epochs": -1}),
        (CGSTrainTask, {"unlabeled_batch_size": 1}),
        (EMTrainTask, {"iterations": 0}),
        (StatsTrainTask, {"learning_rate": 0}),
    ):
        with pytest.raises(InvalidRequestError, match=r"bad .* option"):
            trainer(cls, tmp_path).parse_request(request)


def test_check_maxima_checks_tuples_and_skips_the_rest():
    check_maxima(CGSOptions(cutmix_area=(0.1, 0.5)), "cgs")
    with pytest.raises(InvalidRequestError, match=r"'cutmix_area' is 2\.0"):
        check_maxima(CGSOptions(cutmix_area=(0.1, 2.0)), "cgs")
    # booleans and strings have no maximum
    check_maxima(AIDEOptions(filter_criterion="ce", train_augment=True), "aide")
