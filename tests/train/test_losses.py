"""torchcompress.train.losses: logits, the default loss, causal language models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchcompress.errors import DataError
from torchcompress.train import default_loss, extract_logits, is_causal_lm

from .conftest import bert_config, gpt2, llama, mlp


def test_extract_logits_forms():
    t = torch.zeros(2, 3)
    assert extract_logits(t) is t
    assert extract_logits([(t, 1)]) is t
    assert extract_logits({"logits": t}) is t
    assert extract_logits({"x": t}) is None
    assert extract_logits("text") is None


# --- default_loss: what criteria use without a loss_fn ---------------------------------------------


def test_default_loss_is_the_cross_entropy_of_the_logits():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 4), torch.randint(0, 4, (6,))
    for output in (logits, (logits, "aux"), {"logits": logits}):
        assert torch.equal(default_loss(output, target), F.cross_entropy(logits, target))
    seq, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    labels[0, :3] = -100
    assert torch.allclose(
        default_loss(seq, labels), F.cross_entropy(seq.reshape(-1, 7), labels.reshape(-1))
    )
    seg, masks = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))  # class-second
    assert torch.allclose(default_loss(seg, masks), F.cross_entropy(seg, masks))
    soft = torch.softmax(torch.randn(6, 4), 1)
    assert torch.allclose(default_loss(logits, soft), F.cross_entropy(logits, soft))
    # causal: position t predicts the label at t + 1
    shifted = F.cross_entropy(seq[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1))
    assert torch.allclose(default_loss(seq, labels, causal=True), shifted)


def test_default_loss_without_target_is_the_models_own_loss():
    loss = torch.tensor(1.25)
    assert default_loss(type("Out", (), {"loss": loss, "logits": None})(), None) is loss
    assert default_loss({"loss": loss}, None) is loss
    with pytest.raises(DataError, match=r"has none and the model returned no \.loss"):
        default_loss(torch.randn(2, 3), None)


def test_default_loss_errors_name_the_problem():
    with pytest.raises(DataError, match="Cannot find logits"):
        default_loss({"hidden": torch.randn(2, 3)}, torch.zeros(2, dtype=torch.long))
    with pytest.raises(DataError, match="must be tensors"):
        default_loss(torch.randn(2, 3), [0, 1])
    with pytest.raises(DataError, match="cross-entropy"):
        default_loss(torch.randn(2, 3), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(DataError, match=r"the label 3, but the model's output has 3 classes"):
        default_loss(torch.randn(2, 3), torch.tensor([0, 3]))
    with pytest.raises(DataError, match=r"the label -2, .* 0\.\.2, or -100"):
        default_loss(torch.randn(2, 3), torch.tensor([-2, -100]))


# --- causal language models ------------------------------------------------------------------------


def test_plain_modules_are_not_causal_lms():
    assert not is_causal_lm(nn.Linear(2, 2))
    assert not is_causal_lm(mlp())


@pytest.mark.hf
def test_hf_causal_lms_are_detected_by_hf_s_own_notion():
    transformers = pytest.importorskip("transformers")
    g, lm = gpt2(), llama()
    assert is_causal_lm(g) and is_causal_lm(lm)
    # a user's subclass with another name is still one (the class hierarchy, not the name)
    renamed = type("MyModel", (transformers.GPT2LMHeadModel,), {})(g.config)
    assert is_causal_lm(renamed) and is_causal_lm(nn.DataParallel(renamed))
    # BERT built as a decoder is in HF's causal-LM mapping and shifts its labels
    assert is_causal_lm(transformers.BertLMHeadModel(bert_config(is_decoder=True)))
    # encoders and their heads are not
    assert not is_causal_lm(transformers.BertForSequenceClassification(bert_config()))
    assert not is_causal_lm(transformers.BertForTokenClassification(bert_config()))
    assert not is_causal_lm(transformers.BertForMaskedLM(bert_config()))
    assert not is_causal_lm(transformers.BertModel(bert_config()))
