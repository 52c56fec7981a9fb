#!/usr/bin/env python3
"""Makes what sentence-transformers computes for all-MiniLM-L6-v2 on a few sentences.

shears-models' MiniLM test (run where the real folder exists) holds shears' dense
embeddings to these, so the check needs no Python at test time. The sentences are the
first 32 lines of data/sentences/validation.txt; the file stores them (metadata
`sentences`, JSON) with their normalised embeddings (`embeddings`, F32, 32 x 384).

Usage: python python/make_minilm_expected.py ../shared/data/minilm \
           crates/shears-models/tests/fixtures/minilm-expected.safetensors
Needs sentence-transformers and safetensors (python/requirements.txt).
"""

import json
import sys

import torch
from safetensors.torch import save_file
from sentence_transformers import SentenceTransformer


def main():
    folder, out = sys.argv[1], sys.argv[2]
    with open("data/sentences/validation.txt", encoding="utf-8") as f:
        sentences = [line.rstrip("\n") for line in f][:32]
    torch.manual_seed(0)
    model = SentenceTransformer(folder, device="cpu")
    with torch.no_grad():
        embeddings = model.encode(sentences, convert_to_tensor=True, normalize_embeddings=False)
    save_file(
        {"embeddings": embeddings.float().contiguous()},
        out,
        metadata={"sentences": json.dumps(sentences), "max_seq_length": str(model.max_seq_length)},
    )
    print(f"wrote {out}: {tuple(embeddings.shape)}")


if __name__ == "__main__":
    main()
