#!/usr/bin/env python3
"""Dev reference: Wanda and SparseGPT on a BERT sentence-transformer in PyTorch, timed
end to end, and scored as `shears eval` scores.

The algorithms follow the papers (Sun et al. 2023, Frantar & Alistarh 2023) as their
authors' code runs them on a transformer: the calibration sentences pass through the
encoder one layer at a time; each layer's linear inputs are observed (forward hooks) with
the layers before it already pruned; Wanda prunes |W| * ||X_j|| within each output row
(N:M within each group of M inputs); SparseGPT accumulates H = 2 X Xᵀ / n, dampens it by
1% of its mean diagonal, and prunes and updates column by column in blocks of 128 with
the upper Cholesky factor of H⁻¹. The pruned model is saved (`save_pretrained`), then its
embeddings of the held-out sentences are compared with the dense model's (mean cosine,
5th percentile, top-10 neighbour overlap).

Usage:
  python python/reference_prune.py --model ../shared/data/minilm --method wanda \
      --sparsity 0.5 [--pattern 2:4] --calib data/sentences/calibration.txt \
      --heldout data/sentences/heldout.txt --out /tmp/ref-wanda [--threads 2]
Prints one JSON line: method, pattern, seconds (calibrate + prune + save, loading
included), and the agreement on the held-out sentences.
"""

import argparse
import json
import math
import time

import torch
import torch.nn as nn


def read_lines(path, limit):
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[:limit]


def wanda_prune(layer, norms, sparsity, n_m):
    w = layer.weight.data
    score = w.abs() * norms.reshape(1, -1)
    mask = torch.zeros_like(w, dtype=torch.bool)  # True = pruned
    if n_m:
        n, m = n_m
        for start in range(0, w.shape[1], m):
            block = score[:, start:start + m]
            k = block.shape[1] - n
            if k > 0:
                idx = torch.topk(block, k, dim=1, largest=False)[1]
                mask.scatter_(1, start + idx, True)
    else:
        k = int(w.shape[1] * sparsity)
        idx = torch.sort(score, dim=-1, stable=True)[1][:, :k]
        mask.scatter_(1, idx, True)
    w[mask] = 0


def sparsegpt_prune(layer, H, sparsity, n_m, blocksize=128, percdamp=0.01):
    W = layer.weight.data.clone().float()
    rows, cols = W.shape
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    H += damp * torch.eye(cols, dtype=H.dtype)
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if n_m is None:
            tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if n_m is not None and i % n_m[1] == 0:
                n, m = n_m
                tmp = W1[:, i:(i + m)] ** 2 / (torch.diag(Hinv1)[i:(i + m)].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, m - n, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    layer.weight.data = W.to(layer.weight.dtype)


def prune(model, batch, method, sparsity, n_m):
    enc = model.encoder
    with torch.no_grad():
        x = model.embeddings(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"])
        # The additive padding mask BERT's attention takes: 0 on tokens, the dtype's
        # minimum on padding.
        mask4 = (1.0 - batch["attention_mask"][:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        keep = batch["attention_mask"].bool()
        for layer in enc.layer:
            linears = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
            stats = {}

            def hook(name):
                def run(module, inputs, output):
                    inp = inputs[0][keep].float()  # real tokens only, as the papers' per-token stats
                    if method == "wanda":
                        stats[name] = stats.get(name, 0) + (inp ** 2).sum(0)
                    else:
                        stats[name] = stats.get(name, 0) + 2 * inp.t() @ inp
                return run

            handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
            layer(x, attention_mask=mask4)
            for h in handles:
                h.remove()
            tokens = int(keep.sum())
            for name, lin in linears.items():
                if method == "wanda":
                    wanda_prune(lin, torch.sqrt(stats[name] / tokens), sparsity, n_m)
                else:
                    sparsegpt_prune(lin, stats[name] / tokens, sparsity, n_m)
            out = layer(x, attention_mask=mask4)
            x = out[0] if isinstance(out, tuple) else out


def embed(model, tok, texts):
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            b = tok(texts[i:i + 64], padding=True, truncation=True, max_length=256, return_tensors="pt")
            h = model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1))
    return torch.cat(out)


def agreement(a, b):
    cos = (a * b).sum(-1)
    n = len(cos)
    s = torch.sort(cos)[0]
    p5 = float(s[max(math.ceil(0.05 * n), 1) - 1])
    # As shears eval: never all the others, which any two models share.
    k = min(10, n - 2)
    if k <= 0:
        return {"mean_cosine": float(cos.mean()), "p5_cosine": p5, "neighbour_overlap": None}

    def nearest(e):
        sim = e @ e.t()
        sim.fill_diagonal_(-float("inf"))
        return torch.topk(sim, k, dim=1)[1]

    na, nb = nearest(a), nearest(b)
    shared = sum(len(set(na[i].tolist()) & set(nb[i].tolist())) for i in range(n))
    return {"mean_cosine": float(cos.mean()), "p5_cosine": p5, "neighbour_overlap": shared / (n * k)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--method", choices=["wanda", "sparsegpt"], required=True)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--pattern", default="unstructured")
    p.add_argument("--calib", required=True)
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--heldout")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from transformers import AutoModel, AutoTokenizer

    n_m = tuple(int(v) for v in a.pattern.split(":")) if ":" in a.pattern else None
    sparsity = 1 - n_m[0] / n_m[1] if n_m else a.sparsity
    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModel.from_pretrained(a.model).eval()
    calib = read_lines(a.calib, a.calib_samples)
    batch = tok(calib, padding=True, truncation=True, max_length=a.max_len, return_tensors="pt")
    prune(model, batch, a.method, sparsity, n_m)
    model.save_pretrained(a.out)
    tok.save_pretrained(a.out)
    seconds = time.perf_counter() - start
    result = {"method": a.method, "pattern": a.pattern, "sparsity": sparsity, "seconds": seconds,
              "calibration_tokens": int(batch["attention_mask"].sum()),
              "padded_tokens": int(batch["attention_mask"].numel())}
    if a.heldout:
        texts = read_lines(a.heldout, 100000)
        dense = AutoModel.from_pretrained(a.model).eval()
        result.update(agreement(embed(dense, tok, texts), embed(model, tok, texts)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
