"""Fixtures both test rings share."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    """A randomly initialised 2-layer BERT of width 32 saved as an encoder folder: the text types' stand-in for MiniLM in unit tests.

    Its vocabulary is characters and their word-piece continuations, so every lowercase text tokenises.
    """
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-encoder")
    characters = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,;:'()-/&")
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *characters, *(f"##{c}" for c in characters)]
    (folder / "vocab.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    assert tokenizer.convert_ids_to_tokens(tokenizer("ab, cd")["input_ids"]) == ["[CLS]", "a", "##b", ",", "c", "##d", "[SEP]"]
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocabulary), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return str(folder)
