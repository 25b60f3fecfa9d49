"""The default network under torch, ONNX Runtime and OpenVINO on the same input, as JSON.

Each runtime runs the bundled VOCA network (batch norms folded, as wsidet runs it) on the
same random 1456 x 1456 input (a 1280 px model tile with its margins), interleaved round by
round, medians over ``--repeat`` rounds; the maps are compared with torch's (max absolute
difference). Torch runs as ``wsidet run`` does: channels-last, heap configured
(:mod:`wsidet.inference.heap`). ONNX Runtime and OpenVINO are optional (``pip install onnxruntime
openvino``); a missing one is reported, not an error.

    python benchmarks/bench_runtimes.py --repeat 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def main() -> None:
    from wsidet.inference.heap import configure_heap

    configure_heap()
    import torch

    from wsidet.inference.detector import Detector
    from wsidet.weights import resolve_method

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1456)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    method, weights = resolve_method("voca")
    network = Detector(method, weights=weights, device="cpu").network
    names = ("conf", "loc", "wt")

    class Outputs(torch.nn.Module):  # ONNX export wants a tuple of outputs
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.net(x)
            return tuple(out[n] for n in names)

    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        reference = [t.numpy().copy() for t in Outputs(network)(x_cl)]
    runners: dict[str, Any] = {"torch (eager, channels-last)": lambda: network(x_cl)}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "voca.onnx"
        plain = Outputs(network.to(memory_format=torch.contiguous_format)).eval()
        axes = {"x": {2: "h", 3: "w"}, **{n: {2: "h", 3: "w"} for n in names}}
        torch.onnx.export(
            plain, (x[:, :, :256, :256],), str(onnx_path), input_names=["x"],
            output_names=list(names), dynamic_axes=axes, opset_version=17, dynamo=False,
        )  # fmt: skip
        network.to(memory_format=torch.channels_last)
        x_np = x.numpy()
        outputs: dict[str, list[np.ndarray]] = {}
        try:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            session = ort.InferenceSession(str(onnx_path), options, ["CPUExecutionProvider"])
            runners["onnxruntime " + ort.__version__] = lambda: session.run(None, {"x": x_np})
            outputs["onnxruntime " + ort.__version__] = session.run(None, {"x": x_np})
        except ImportError as exc:
            skipped["onnxruntime"] = str(exc)
        try:
            import openvino as ov

            compiled = ov.Core().compile_model(
                str(onnx_path), "CPU",
                {"INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY",
                 "INFERENCE_PRECISION_HINT": "f32"},
            )  # fmt: skip
            request = compiled.create_infer_request()
            key = "openvino " + ov.__version__.split("-")[0] + " (f32)"

            def openvino_run() -> list[np.ndarray]:
                request.infer({0: x_np})
                return [request.get_output_tensor(i).data.copy() for i in range(len(names))]

            runners[key] = openvino_run
            outputs[key] = openvino_run()
        except ImportError as exc:
            skipped["openvino"] = str(exc)

        times: dict[str, list[float]] = {name: [] for name in runners}
        with torch.inference_mode():
            for run in runners.values():
                run()  # warm-up
            for _ in range(args.repeat):
                for name, run in runners.items():
                    started = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - started)
    mpx = args.size * args.size / 1e6
    torch_s = statistics.median(times["torch (eager, channels-last)"])
    result = {
        "input": [args.size, args.size],
        "threads": args.threads,
        "repeat": args.repeat,
        "runtimes": {
            name: {
                "seconds": round(statistics.median(ts), 3),
                "mpx_per_s": round(mpx / statistics.median(ts), 3),
                "speed_vs_torch": round(torch_s / statistics.median(ts), 2),
                "max_abs_diff": None
                if name not in outputs
                else {
                    n: float(np.abs(np.asarray(o) - r).max())
                    for n, o, r in zip(names, outputs[name], reference, strict=True)
                },
            }
            for name, ts in times.items()
        },
        "skipped": skipped,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
