#!/usr/bin/env python3
"""Dev reference: all-MiniLM-L6-v2's forward pass timed in PyTorch (eager) and ONNX
Runtime, on the shapes `shears bench MODEL --texts FILE` times (sentences of 128 tokens,
1 and 32 at a time), with the same number of threads, so the ratios can be quoted side by
side.

Usage: python python/bench_minilm.py --model ../shared/data/minilm [--threads 2]
       [--seq-len 128] [--batch 1,32] [--onnx /tmp/minilm.onnx]
Prints one JSON line per engine and batch: median, min and max milliseconds.
"""

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch


def timed(run, budget=2.0, least=5):
    run()
    times = []
    start = time.perf_counter()
    while len(times) < least or time.perf_counter() - start < budget:
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "runs": len(times)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", default="1,32")
    p.add_argument("--onnx", default="/tmp/shears-minilm.onnx")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from transformers import AutoModel

    model = AutoModel.from_pretrained(a.model).eval()
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    class Keywords(torch.nn.Module):
        """The model called with keyword arguments, as ONNX export passes positions."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    if not os.path.exists(a.onnx):
        ids = torch.tensor(rng.integers(1000, vocab, (1, a.seq_len)))
        torch.onnx.export(
            Keywords(model),
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            a.onnx,
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "seq"} for n in ["input_ids", "attention_mask", "token_type_ids", "last_hidden_state"]},
            opset_version=17,
            dynamo=False,
        )
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = a.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(a.onnx, options, providers=["CPUExecutionProvider"])
    for batch in [int(b) for b in a.batch.split(",")]:
        ids = rng.integers(1000, vocab, (batch, a.seq_len)).astype(np.int64)
        mask, types = np.ones_like(ids), np.zeros_like(ids)
        t_ids, t_mask, t_types = (torch.from_numpy(x) for x in (ids, mask, types))

        def eager():
            with torch.no_grad():
                model(input_ids=t_ids, attention_mask=t_mask, token_type_ids=t_types)

        def onnx():
            session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})

        for engine, run in [("pytorch-eager", eager), ("onnxruntime", onnx)]:
            print(json.dumps({"engine": engine, "threads": a.threads, "sentences": batch, "seq_len": a.seq_len, "ms": timed(run)}))


if __name__ == "__main__":
    main()
