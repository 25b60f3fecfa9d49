"""The Method contract's facts are pure: a halo needs no network and no torch.

Decoding takes only a method's decode parameters, and ``wsidet methods`` imports neither torch,
dask nor geopandas.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest

from wsidet.errors import ParameterError
from wsidet.methods import get_method, list_methods

METHODS = list_methods()
HEAVY = ("torch", "dask", "distributed", "geopandas")


def imported_after(code: str) -> list[str]:
    """The heavy packages a fresh interpreter has imported after running ``code``."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    found: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return found


@pytest.mark.parametrize("name", METHODS)
def test_halo_is_read_without_torch(name: str) -> None:
    code = (
        "from wsidet.methods import get_method\n"
        f"m = get_method({name!r})\n"
        "print(m.halo, m.stride, m.receptive_radius, m.decoder_radius)\n"
        "from wsidet.nets.geometry import FCRN_A, FCRN_B"
    )
    assert imported_after(code) == []


@pytest.mark.parametrize("name", METHODS)
def test_reading_the_halo_does_not_grow_a_pickled_method(name: str) -> None:
    method = get_method(name)
    size = len(pickle.dumps(method))
    assert method.halo > 0 and method.stride >= 1
    assert len(pickle.dumps(method)) == size


# Halo, stride and receptive radius of defaults and of configurations whose geometry differs;
# computed from networks built on torch's meta device before it came from pure functions.
GEOMETRY = [
    ("fcrn_a", {}, 96, 8, 90),
    ("fcrn_a", {"norm_window": 51}, 72, 8, 65),
    ("fcrn_a", {"min_distance": 7}, 104, 8, 90),
    ("fcrn_b", {}, 84, 4, 75),
    ("fcrn_b", {"norm_window": 201}, 132, 4, 125),
    ("log", {}, 26, 1, 18),
    ("log", {"sigmas": (2.5,), "truncate": 2.2}, 14, 1, 6),
    ("mapde", {}, 160, 16, 112),
    ("mapde", {"mode": "peak", "radius": 8}, 128, 16, 115),
    ("mapde", {"radius": 3, "width": 4}, 160, 16, 110),
    ("mapde", {"iterations": 5}, 192, 16, 112),
    ("micronet", {}, 88, 8, 76),
    ("micronet", {"width": 4, "min_distance": 6}, 88, 8, 76),
    ("proximity", {}, 40, 5, 32),
    ("proximity", {"scan_stride": 1}, 38, 1, 32),
    ("proximity", {"scan_stride": 7}, 42, 7, 32),
    ("voca", {}, 112, 16, 76),
    ("voca", {"width": 4, "nms_distance": 1}, 96, 16, 76),
    ("voca", {"radius": 20.0}, 112, 16, 76),
]


@pytest.mark.parametrize(("name", "params", "halo", "stride", "radius"), GEOMETRY)
def test_geometry_is_unchanged(
    name: str, params: dict[str, object], halo: int, stride: int, radius: int
) -> None:
    method = get_method(name, **params)
    assert (method.halo, method.stride, method.receptive_radius) == (halo, stride, radius)


@pytest.mark.parametrize(
    ("name", "params"), [pytest.param(n, {}, id=n) for n in METHODS] + [
        pytest.param("fcrn_b", {"norm_window": 51}, id="fcrn_b-window"),
        pytest.param("mapde", {"radius": 3, "width": 4}, id="mapde-r3"),
        pytest.param("proximity", {"scan_stride": 3}, id="proximity-ss3"),
    ]
)  # fmt: skip
def test_networks_take_their_geometry_from_the_same_configuration(
    name: str, params: dict[str, object]
) -> None:
    """A network's own radius and stride (from the same functions) match its method's."""
    import torch

    method = get_method(name, **params)
    with torch.device("meta"):
        net = method.build_network()
    assert getattr(net, "receptive_radius", method.receptive_radius) == method.receptive_radius
    assert getattr(net, "stride", 1) == method.stride


@pytest.mark.parametrize("name", METHODS)
def test_decode_takes_only_decode_parameters(name: str) -> None:
    method = get_method(name)
    known = ", ".join(type(method).decode_params)
    with pytest.raises(ParameterError, match=f"no decode parameter 'bogus'; .*: {known}$"):
        method.decode({}, bogus=1)
    # A parameter of the method that shapes its network or targets: the maps came from
    # another configuration, so changing it at decoding would be silently wrong.
    other = next(p for p in method.param_names() if p not in type(method).decode_params)
    with pytest.raises(ParameterError, match=f"no decode parameter {other!r}"):
        method.replace_decoding(**{other: getattr(method, other)})
    assert method.replace_decoding(**{method.threshold_param: 0.5}) == method.replace(
        **{method.threshold_param: 0.5}
    )


@pytest.fixture(scope="module")
def methods_command_imports() -> set[str]:
    """Top-level packages ``python -m wsidet.cli methods`` imports."""
    # The real entry, which leaves by os._exit: the interpreter's import log shows what it
    # imported.
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "wsidet.cli", "methods"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "voca" in proc.stdout
    return {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


@pytest.mark.parametrize(
    "package",
    [
        "torch",
        "geopandas",
        "dask",
        "distributed",
    ],
)
def test_wsidet_methods_does_not_import(package: str, methods_command_imports: set[str]) -> None:
    assert "wsidet" in methods_command_imports  # the log was read
    assert package not in methods_command_imports
