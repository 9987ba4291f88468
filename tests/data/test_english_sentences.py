"""English sentences from the documentation bundled with Python."""

from __future__ import annotations

import pytest

from torchcompress.data import (
    english_sentences,
)
from torchcompress.errors import ConfigError


def test_english_sentences():
    s = english_sentences(20, seed=1)
    assert len(s) == 20 and len(set(s)) == 20
    assert s == english_sentences(20, seed=1)
    assert all(8 <= len(x.split()) <= 40 and x[0].isupper() for x in s)
    with pytest.raises(ConfigError):
        english_sentences(10**6)
