"""Times shears' ONNX exports of a sentence encoder in ONNX Runtime (CPU), beside ONNX
Runtime's own dynamic quantization of the f32 export, alternating the models in one run.

    shears export MODEL -o f32.onnx
    shears export MODEL -o int8-tensor.onnx --quantize int8
    shears export MODEL -o int8-token.onnx --quantize int8 --activations per-token
    python python/bench_onnx.py f32.onnx int8-tensor.onnx int8-token.onnx [--threads 2]
"""

import argparse
import statistics
import tempfile
import time

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        reference = f"{tmp}/ort-dynamic.onnx"
        quantize_dynamic(args.models[0], reference, weight_type=QuantType.QInt8)
        models = args.models + [reference]
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        sessions = [ort.InferenceSession(m, options, providers=["CPUExecutionProvider"]) for m in models]
        rng = np.random.default_rng(0)
        for batch, seq in [(1, 128), (32, 128)]:
            ids = rng.integers(1000, 20000, (batch, seq)).astype(np.int64)
            feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
            times = [[] for _ in sessions]
            for s in sessions:
                s.run(None, feeds)
            for _ in range(args.reps if batch == 1 else max(3, args.reps // 3)):
                for s, t in zip(sessions, times):
                    start = time.perf_counter()
                    s.run(None, feeds)
                    t.append(time.perf_counter() - start)
            for m, t in zip(models, times):
                name = "ORT quantize_dynamic of the first" if m == reference else m
                print(f"batch {batch}x{seq} {name}: median {1e3 * statistics.median(t):.1f} ms "
                      f"(range {1e3 * min(t):.1f}-{1e3 * max(t):.1f})")


if __name__ == "__main__":
    main()
