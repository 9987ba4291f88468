"""Real English sentences from the documentation that ships with Python (``pydoc_data``).

Example:
    >>> from torchcompress.data import english_sentences
    >>> len(english_sentences(5))
    5
"""

from __future__ import annotations

import random
import re

from ..errors import ConfigError

__all__ = ["english_sentences"]

_SKIP_CHARS = set("*()[]{}=_`<>|\\$#@~^")


def english_sentences(
    n: int | None = 256, *, seed: int = 0, min_words: int = 8, max_words: int = 40
) -> list[str]:
    """Real English sentences taken from the Python documentation bundled with the interpreter.

    Sentences with code-like characters are dropped; whitespace is normalised. About 950 are
    available with the default length limits.

    Args:
        n: how many (sampled without replacement, reproducibly); ``None`` for all.
        seed: sampling seed.
        min_words: shortest sentence kept, in words.
        max_words: longest sentence kept, in words.

    Raises:
        ConfigError: more sentences asked for than are available.

    Example:
        >>> from torchcompress.data import english_sentences
        >>> s = english_sentences(3)
        >>> len(s), all(isinstance(x, str) for x in s)
        (3, True)
    """
    from pydoc_data.topics import topics

    text = " ".join(topics[k] for k in sorted(topics))
    out: list[str] = []
    seen: set[str] = set()
    for raw in re.split(r"(?<=[.!?])\s+", text):
        s = " ".join(raw.split())
        words = s.split(" ")
        if not (min_words <= len(words) <= max_words) or _SKIP_CHARS & set(s) or not s[0].isupper():
            continue
        if s in seen:
            continue
        seen.add(s)
        out.append(s)
    if n is None:
        return out
    if n > len(out):
        raise ConfigError(f"english_sentences(n={n}): only {len(out)} sentences are available.")
    return random.Random(seed).sample(out, n)
