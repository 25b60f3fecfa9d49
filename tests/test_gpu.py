"""CUDA checks: run with ``python -m pytest -m gpu`` on a machine with a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import BlobSlide
from tests.synthetic import random_points
from wsidet.evaluation.metrics import match_points
from wsidet.inference.detector import Detector
from wsidet.inference.pipeline import detect_slide
from wsidet.methods import get_method, list_methods

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("name", list_methods())
def test_decoding_on_cuda_equals_cpu(name: str) -> None:
    method = get_method(name)
    if not method.trainable:
        pytest.skip("decoding of a fixed network is covered by the pipeline test")
    rng = np.random.default_rng(0)
    shape = (150, 170)
    points = random_points(rng, shape, 30, min_sep=26, margin=3)
    ideal = {
        k: torch.from_numpy(np.asarray(v))
        for k, v in method.ideal_outputs(method.encode(points, shape)).items()
    }
    cpu_points, _ = method.decode(ideal)
    gpu_points, _ = method.decode({k: v.cuda() for k, v in ideal.items()})
    assert gpu_points.is_cuda
    pairs, _ = match_points(gpu_points.cpu().numpy(), cpu_points.numpy(), 1e-3)
    assert len(pairs) == len(cpu_points) == len(gpu_points)


@pytest.mark.parametrize("name", list_methods())
def test_detector_on_cuda_matches_cpu(name: str) -> None:
    method = get_method(name)
    torch.manual_seed(0)
    network = method.build_network()
    image = (np.random.default_rng(1).random((300, 340, 3)) * 255).astype(np.uint8)
    cpu = Detector(method, network=network, device="cpu").predict(image)
    gpu = Detector(method, network=network, device="cuda", precision="fp32").predict(image)
    for key, value in cpu.items():
        torch.testing.assert_close(gpu[key].cpu(), value, atol=1e-3, rtol=1e-3)


def test_pipeline_on_cuda_with_amp(blob_slide: BlobSlide) -> None:
    cpu = detect_slide(blob_slide.path, "log", device="cpu")
    gpu = detect_slide(blob_slide.path, "log", device="cuda")
    pairs, _ = match_points(gpu[["x", "y"]].to_numpy(), cpu[["x", "y"]].to_numpy(), 1.0)
    assert len(pairs) >= 0.99 * len(cpu)
