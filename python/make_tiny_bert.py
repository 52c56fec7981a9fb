#!/usr/bin/env python3
"""Makes the tiny BERT fixture of shears-models' tests, and PyTorch's outputs for it.

A sentence-transformer folder as Hugging Face writes one (config.json,
model.safetensors, tokenizer.json, modules.json, 1_Pooling/config.json), with random
weights of a BERT small enough to commit (hidden 32, 4 heads, 2 layers, a 176-token
WordPiece vocabulary), and the expected-outputs file: what `transformers` computes for a
few sentences (token ids, last hidden states, mean-pooled normalised embeddings), so
shears' encoder is checked against PyTorch without Python at test time.

Usage: python python/make_tiny_bert.py data/tiny-bert \
           crates/shears-models/tests/fixtures/tiny-bert-expected.safetensors
Needs torch, transformers, tokenizers, safetensors (python/requirements.txt).
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, decoders
from transformers import BertConfig, BertModel

SENTENCES = [
    "The cat sat on the mat.",
    "Pruning removes weights that matter least!",
    "A café in München serves naïve coffee?",
    "short",
    "Sparse models run faster, and they keep what the dense model knew; mostly.",
    "",
]

WORDS = (
    "the cat sat on mat pruning remove ##s weight that matter least a cafe in munchen "
    "serve coffee naive short sparse model run fast ##er and they keep what dense knew "
    "most ##ly ##ing ##ed is are was be to of it this for with as at by from or not "
    "dog bird fish tree house car road city river sea sun moon star cold hot big small "
    "new old good bad red blue green one two three four five time day year way man "
    "woman child people world life hand part place case week company system program "
    "question work number night point home water room mother area money story fact"
).split()


def build_vocab():
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz.,!?;'")
    vocab = special + chars + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    for w in WORDS:
        if w not in vocab:
            vocab.append(w)
    return vocab


def build_tokenizer(vocab):
    ids = {t: i for i, t in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def main():
    out, expected = sys.argv[1], sys.argv[2]
    os.makedirs(os.path.join(out, "1_Pooling"), exist_ok=True)
    vocab = build_vocab()
    tok = build_tokenizer(vocab)
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_act="gelu",
        max_position_embeddings=64,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        pad_token_id=0,
    )
    torch.manual_seed(20261128)
    model = BertModel(config).eval()
    with torch.no_grad():
        # Larger than the default init (std 0.02), so every part of the network moves the
        # output and a wrong piece cannot hide under the layer norms.
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    model.config.architectures = ["BertModel"]
    model.save_pretrained(out, safe_serialization=True)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "tokenizer_class": "BertTokenizer", "model_max_length": 64}, f, indent=2)
    with open(os.path.join(out, "modules.json"), "w") as f:
        json.dump(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ],
            f,
            indent=2,
        )
    with open(os.path.join(out, "1_Pooling", "config.json"), "w") as f:
        json.dump(
            {
                "word_embedding_dimension": 32,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            },
            f,
            indent=2,
        )
    with open(os.path.join(out, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": 16, "do_lower_case": False}, f, indent=2)

    # PyTorch's outputs: sentences truncated at 16 tokens, padded to the longest.
    tok.enable_truncation(16)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(SENTENCES)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
    types = torch.tensor([e.type_ids for e in enc], dtype=torch.long)
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    embeddings = torch.nn.functional.normalize(pooled, p=2, dim=1)
    save_file(
        {
            "input_ids": ids.contiguous(),
            "attention_mask": mask.contiguous(),
            "last_hidden_state": hidden.contiguous(),
            "embeddings": embeddings.contiguous(),
        },
        expected,
        metadata={"sentences": json.dumps(SENTENCES)},
    )
    print(f"wrote {out}: {sum(p.numel() for p in model.parameters())} parameters")


if __name__ == "__main__":
    main()
