"""Dev check: shears' ONNX exports load in ONNX Runtime and compute what shears computes.

For each model it runs `shears export`, checks the file with onnx.checker (full check),
runs it in ONNX Runtime on CPU and compares:
- an MLP checkpoint (made by `shears demo`, dense and pruned with `shears prune`): the
  logits against the network's forward pass computed here from the checkpoint's tensors
  (the same formula shears-nn's `Mlp::forward` is tested against);
- BERT-family folders (data/tiny-bert, and all-MiniLM-L6-v2 with --minilm, dense and
  pruned): the sentence embeddings against `shears embed --json`, with the tokenizer.json
  of the folder encoding the same sentences.
Max abs difference must be <= 1e-4.

    python python/check_onnx_export.py --shears target/release/shears [--minilm DIR]
"""

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file
from tokenizers import Tokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4


def run(*args):
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True).stdout


def session(path):
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_mlp(shears, work):
    run(shears, "demo", "--model", work / "demo.safetensors", "--plot", work / "demo.svg")
    run(shears, "prune", work / "demo.safetensors", "-o", work / "pruned.safetensors", "--sparsity", "0.8")
    rng = np.random.default_rng(0)
    for name in ["demo", "pruned"]:
        checkpoint = work / f"{name}.safetensors"
        onnx_path = work / f"{name}.onnx"
        run(shears, "export", checkpoint, "-o", onnx_path)
        tensors = load_file(str(checkpoint))
        layers = sorted({int(k.split(".")[1]) for k in tensors if k.startswith("layers.")})
        x = rng.random((16, tensors["layers.0.weight"].shape[1]), dtype=np.float32)
        expected = x.astype(np.float64)
        for i in layers:
            w = tensors[f"layers.{i}.weight"].astype(np.float64)
            expected = expected @ w.T + tensors[f"layers.{i}.bias"]
            if i != layers[-1]:
                expected = np.maximum(expected, 0.0)
        (logits,) = session(onnx_path).run(None, {"input": x})
        diff = float(np.abs(logits - expected).max())
        zeros = sum(int((t == 0).sum()) for k, t in tensors.items() if k.endswith("weight"))
        print(f"mlp {name}: max abs difference {diff:.2e} ({zeros} zero weights)")
        assert diff <= TOLERANCE, f"{name}: {diff}"


def check_encoder(shears, folder, texts, work, label, opsets=(17,)):
    sentences = [line for line in texts.read_text().splitlines() if line.strip()][:32]
    (work / "texts.txt").write_text("\n".join(sentences) + "\n")
    out = json.loads(run(shears, "embed", folder, "--texts", work / "texts.txt", "--json"))
    expected = np.array(out["embeddings"], dtype=np.float64)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0)
    config = folder / "sentence_bert_config.json"
    max_len = json.loads(config.read_text())["max_seq_length"] if config.exists() else 128
    tokenizer.enable_truncation(max_length=max_len)
    encodings = tokenizer.encode_batch(sentences)
    feeds = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }
    for opset in opsets:
        onnx_path = work / f"{label}-{opset}.onnx"
        run(shears, "export", folder, "-o", onnx_path, "--opset", opset)
        _, embeddings = session(onnx_path).run(None, feeds)
        diff = float(np.abs(embeddings - expected).max())
        print(f"{label}, opset {opset}: {len(sentences)} sentences, max abs difference {diff:.2e}")
        assert diff <= TOLERANCE, f"{label}, opset {opset}: {diff}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shears", required=True, type=pathlib.Path)
    parser.add_argument("--minilm", type=pathlib.Path)
    args = parser.parse_args()
    shears = args.shears.resolve()
    texts = ROOT / "data/sentences/validation.txt"
    calib = ROOT / "data/sentences/calibration.txt"
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        check_mlp(shears, work)
        folders = [("tiny-bert", ROOT / "data/tiny-bert")]
        if args.minilm:
            folders.append(("minilm", args.minilm.resolve()))
        for mode in ["cls", "max"]:
            # The tiny model with another pooling and no normalisation.
            variant = work / f"tiny-bert-{mode}"
            shutil.copytree(ROOT / "data/tiny-bert", variant)
            pooling = json.loads((variant / "1_Pooling/config.json").read_text())
            pooling["pooling_mode_mean_tokens"] = False
            pooling[f"pooling_mode_{mode}_tokens" if mode == "max" else "pooling_mode_cls_token"] = True
            (variant / "1_Pooling/config.json").write_text(json.dumps(pooling))
            modules = json.loads((variant / "modules.json").read_text())
            (variant / "modules.json").write_text(json.dumps(modules[:2]))
            check_encoder(shears, variant, texts, work, f"tiny-bert-{mode}", (17, 18))
        for label, folder in folders:
            opsets = range(17, 22) if label == "tiny-bert" else (17,)
            check_encoder(shears, folder, texts, work, label, opsets)
            pruned = work / f"{label}-2-4"
            run(shears, "prune", folder, "-o", pruned, "--pattern", "2:4", "--method", "sparsegpt", "--calib", calib)
            check_encoder(shears, pruned, texts, work, f"{label}-2-4-sparsegpt")
    print("ONNX exports match shears")


if __name__ == "__main__":
    sys.exit(main())
