"""The weights that ship in the package: present for the default, loadable, small, documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import wsidet
from wsidet.inference.detector import Detector
from wsidet.methods import DEFAULT_METHOD, list_methods, method_class
from wsidet.weights import bundled_methods, bundled_names, bundled_weights, resolve_method
from wsidet.weights.files import read_weights

PACKAGE = Path(__file__).resolve().parent.parent / "wsidet" / "weights"


def test_the_default_runs_without_a_weights_argument() -> None:
    method, weights = resolve_method()
    assert method.name == DEFAULT_METHOD
    if method_class(DEFAULT_METHOD).trainable:
        # A trainable default without shipped weights would fail on every plain `wsidet run`.
        assert DEFAULT_METHOD in bundled_methods()
        assert weights is not None and weights == bundled_weights(DEFAULT_METHOD)
        Detector(method, weights=weights, device="cpu")
    else:
        assert weights is None


def test_some_weights_ship() -> None:
    # The test below is parametrised over these: with none it would pass by running nothing.
    assert bundled_methods()
    assert all(bundled_weights(name) is not None for name in bundled_methods())


def test_bundled_weights_stay_small() -> None:
    total = sum(p.stat().st_size for p in PACKAGE.glob("*.safetensors"))
    assert total <= 20 * 2**20


def test_variants_are_named_not_methods() -> None:
    assert set(bundled_methods()) < set(bundled_names())
    assert all("-" not in m for m in bundled_methods())
    assert bundled_weights("../voca") is None and bundled_weights("") is None


@pytest.mark.parametrize("name", bundled_names())
def test_bundled_weights_load_and_say_how_they_were_made(name: str) -> None:
    # By file name: a method's default weights (``voca``) and its variants (``voca-crchisto``).
    method, weights = resolve_method(weights=name)
    assert weights == bundled_weights(name)
    assert weights is not None
    if "-" not in name:
        assert resolve_method(name)[1] == weights
    # Strict loading: every tensor the network needs is in the file, and nothing else.
    detector = Detector(method, weights=weights, device="cpu")
    assert detector.method == method
    record = json.loads(weights.with_suffix(".json").read_text())
    assert record["method"] == name.split("-")[0] and record["params"] == method.params()
    for key in ("git_commit", "torch_version", "train", "data", "device_name", "minutes"):
        assert record[key] not in (None, "", {})
    assert record["made_with"]["command"].startswith(
        ("wsidet train", "python benchmarks/generalisation.py")
    )
    assert "research" in record["made_with"]["data_terms"]
    assert record["threshold"] == {method.threshold_param: getattr(method, method.threshold_param)}


def test_the_registry_lists_the_methods_that_ship_weights() -> None:
    pretrained = list_methods(pretrained=True)
    assert pretrained == bundled_methods() == wsidet.list_methods(pretrained=True)
    assert set(pretrained) <= set(list_methods())
    if method_class(DEFAULT_METHOD).trainable:
        assert DEFAULT_METHOD in pretrained


@pytest.mark.parametrize("name", list_methods())
def test_every_method_with_weights_loads_them(name: str) -> None:
    """Over the registry: a method listed as pretrained has weights its network takes as is."""
    method, weights = resolve_method(name)
    if name not in list_methods(pretrained=True):
        assert weights is None and bundled_weights(name) is None
        return
    assert weights is not None and weights == bundled_weights(name)
    tensors, _ = read_weights(weights)
    state = method.build_network().state_dict()
    assert tensors.keys() == state.keys()
    assert all(tensors[k].shape == state[k].shape for k in state)
    Detector(method, weights=weights, device="cpu")  # loads strictly
