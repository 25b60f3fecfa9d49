from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tests.synthetic import blob_image, random_points
from wsidet.errors import DeviceError, WeightsError
from wsidet.inference.detector import (
    QUANTUM,
    Detector,
    DetectorSpec,
    load_weights,
    resolve_device,
    weights_hash,
)
from wsidet.methods import get_method
from wsidet.methods.base import Method
from wsidet.nets.heads import DictOutput
from wsidet.ops.peaks import local_maxima, support


@dataclasses.dataclass(frozen=True)
class Tiny(Method):
    """A trainable two-layer method for engine tests (not registered)."""

    name: ClassVar[str] = "tiny-test"

    @property
    def receptive_radius(self) -> int:
        return 2

    @property
    def decoder_radius(self) -> int:
        return support(2)

    def build_network(self) -> nn.Module:
        torch.manual_seed(0)
        body = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1)
        )
        return DictOutput(body, "score")

    def _decode(self, outputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return local_maxima(outputs["score"][0], min_distance=2, threshold=0.0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(5)
    pts = random_points(rng, (300, 410), 40, min_sep=25, margin=9)
    return blob_image((300, 410), pts, 7.0, rng=rng)


@pytest.mark.parametrize("tile", [16, 50, 128, 1024])
def test_tiled_prediction_equals_whole_network(image: np.ndarray, tile: int) -> None:
    method = get_method("log")
    detector = Detector(method, device="cpu", tile=tile, batch_size=3)
    maps = detector.predict(image)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        whole = detector.network(x)
    torch.testing.assert_close(maps["response"], whole["response"][0], atol=2e-5, rtol=1e-4)
    found = detector.detect(image)
    ref_pts, _ = method.decode({"response": whole["response"][0]})
    np.testing.assert_allclose(found.points_yx, ref_pts.numpy(), atol=QUANTUM)
    assert found.points_yx.dtype == np.float64 and found.scores.dtype == np.float32
    assert np.all(np.remainder(found.points_yx / QUANTUM, 1) == 0)


def test_detector_checks_its_input() -> None:
    detector = Detector(get_method("log"), device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((10, 10, 3), np.float32))  # type: ignore[arg-type]


def test_spec_is_a_picklable_cache_key(tmp_path: Path) -> None:
    spec = DetectorSpec(get_method("log"), device="cpu", tile=256)
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert spec.get() is spec.get()
    assert DetectorSpec(get_method("log", threshold=0.5), device="cpu").get() is not spec.get()
    assert spec.weights_hash is None


def test_threads_share_one_resident_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads of a worker arriving before the model is cached still get one model."""
    import threading
    import time

    from wsidet.inference import detector as engine

    built = []
    real = engine.Detector

    class SlowDetector(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            time.sleep(0.2)  # widen the window in which threads race for the cache
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(engine, "Detector", SlowDetector)
    engine.clear_resident_detectors()
    spec = DetectorSpec(get_method("log", threshold=0.123), device="cpu")
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(spec.get())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.clear_resident_detectors()
    assert len(built) == 1 and len({id(d) for d in got}) == 1


def test_devices() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    for name in ("tpu-please", "mps", "meta", "cpu:1"):
        with pytest.raises(DeviceError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
            resolve_device(name)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device"):
            resolve_device("cuda")


def test_weights_round_trip_and_mismatches(tmp_path: Path) -> None:
    method = Tiny()
    with pytest.raises(WeightsError, match="needs trained weights"):
        Detector(method, device="cpu")
    trained = method.build_network()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    good = tmp_path / "tiny.safetensors"
    save_file(trained.state_dict(), str(good), metadata={"wsidet.method": "tiny-test"})
    detector = Detector(method, weights=good, device="cpu")
    for a, b in zip(
        detector.network.state_dict().values(), trained.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b)
    assert weights_hash(good).startswith("sha256:")  # type: ignore[union-attr]

    other = tmp_path / "other.safetensors"
    save_file(trained.state_dict(), str(other), metadata={"wsidet.method": "voca"})
    with pytest.raises(WeightsError, match="trained for method 'voca'"):
        Detector(method, weights=other, device="cpu")

    wrong = tmp_path / "wrong.safetensors"
    save_file({"body.0.weight": torch.zeros(2, 3, 3, 3), "extra": torch.zeros(1)}, str(wrong))
    with pytest.raises(
        WeightsError, match=r"do not match method 'tiny-test'.*missing.*unexpected.*wrong shape"
    ):
        Detector(method, weights=wrong, device="cpu")

    pt = tmp_path / "tiny.pt"
    torch.save(trained.state_dict(), pt)
    # A torch file is a pickle: refused unless asked for, then read with weights_only.
    with pytest.raises(WeightsError, match=r"torch pickle file.*--allow-pickle"):
        Detector(method, weights=pt, device="cpu")
    Detector(method, weights=pt, device="cpu", allow_pickle=True)

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="not a safetensors file"):
        Detector(method, weights=junk, device="cpu")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightsError, match="corrupt safetensors file"):
        Detector(method, weights=corrupt, device="cpu")
    with pytest.raises(WeightsError, match="not found"):
        Detector(method, weights=tmp_path / "absent.safetensors", device="cpu")
    with pytest.raises(WeightsError, match="takes no weights"):
        load_weights(get_method("log").build_network(), good, get_method("log"))
