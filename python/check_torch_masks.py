#!/usr/bin/env python3
"""Dev check: the masks `shears prune --masks-out` writes are what PyTorch expects.

1. `torch.nn.utils.prune.custom_from_mask` loads every mask onto its module, and the
   masked weights are exactly the weights shears wrote.
2. On the same weights, shears' magnitude masks are PyTorch's own
   `l1_unstructured` masks (same counting rule, same weights pruned: random weights
   have no ties), layer by layer.
3. With a model folder (`--minilm DIR`, a sentence-transformer), `transformers` loads
   the folder shears writes, and the pruned model's embeddings stay close to the
   dense model's at 30% sparsity.

Usage: python python/check_torch_masks.py --shears target/release/shears [--minilm DIR]
Needs torch, safetensors (and transformers for --minilm): python/requirements.txt.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn as nn
import torch.nn.utils.prune as prune
from safetensors.torch import load_file, save_file


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3)  # an input convolution: not pruned by default
        self.conv2 = nn.Conv2d(16, 32, 3)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 10)  # an output head: not pruned by default


def run(shears, *args):
    done = subprocess.run([shears, *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"shears {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def check_masks(shears, work):
    torch.manual_seed(0)
    net = Net()
    model = os.path.join(work, "net.safetensors")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, model)
    pruned = os.path.join(work, "pruned.safetensors")
    masks = os.path.join(work, "masks.safetensors")
    run(shears, "prune", model, "-o", pruned, "-s", "0.6", "--masks-out", masks, "--quiet")
    weights, mask_file = load_file(pruned), load_file(masks)
    names = sorted(mask_file)
    expected = ["conv2.weight_mask", "fc1.weight_mask", "fc2.weight_mask"]
    assert names == expected, f"masks for {names}, expected {expected}"
    for name in names:
        module_name = name[: -len(".weight_mask")]
        module = getattr(net, module_name)
        mask = mask_file[name]
        assert mask.dtype == torch.uint8 and mask.shape == module.weight.shape, name
        reference = module.weight.detach().clone()
        # PyTorch's own magnitude pruning of the same weights, at the same amount.
        ref_module = getattr(Net(), module_name)
        with torch.no_grad():
            ref_module.weight.copy_(reference)
        prune.l1_unstructured(ref_module, "weight", amount=0.6)
        assert torch.equal(ref_module.weight_mask.to(torch.uint8), mask), (
            f"{name}: shears and l1_unstructured prune different weights"
        )
        prune.custom_from_mask(module, "weight", mask)
        assert torch.equal(module.weight, weights[f"{module_name}.weight"]), (
            f"{module_name}: masked weights differ from the pruned checkpoint"
        )
        kept = int(mask.sum())
        print(f"{name}: {tuple(mask.shape)}, {kept}/{mask.numel()} kept, matches l1_unstructured")
    for name in ["conv1.weight", "head.weight", "fc1.bias"]:
        assert torch.equal(weights[name], net.state_dict()[name]), f"{name} was changed"
    print("masks: torch.nn.utils.prune loads every mask; magnitude masks match PyTorch's")


def check_minilm(shears, folder, work):
    from transformers import AutoModel, AutoTokenizer

    out = os.path.join(work, "minilm-pruned")
    run(shears, "prune", folder, "-o", out, "-s", "0.3", "--quiet")
    tok = AutoTokenizer.from_pretrained(out)
    sentences = ["Pruning removes weights.", "A cat sat on the mat.", "Sparse models run faster."]
    batch = tok(sentences, padding=True, return_tensors="pt")

    def embed(path):
        model = AutoModel.from_pretrained(path).eval()
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(pooled, dim=-1)

    dense, sparse = embed(folder), embed(out)
    cosine = (dense * sparse).sum(-1)
    print(f"minilm: transformers loads the pruned folder; cosine to dense {cosine.tolist()}")
    assert bool((cosine > 0.9).all()), "30% magnitude pruning moved the embeddings too far"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shears", required=True, help="the shears binary")
    parser.add_argument("--minilm", help="a sentence-transformer folder (all-MiniLM-L6-v2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        check_masks(args.shears, work)
        if args.minilm:
            check_minilm(args.shears, args.minilm, work)
        else:
            print("minilm: skipped (no --minilm folder given)")


if __name__ == "__main__":
    main()
