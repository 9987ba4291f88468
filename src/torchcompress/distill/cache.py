"""Teacher outputs kept per sample, keyed by the sample's content: :class:`TeacherCache`.

On a fixed data set (no random augmentation) the frozen teacher computes the same outputs every
epoch; the cache keeps them after the first pass. Each sample's key is a hash of its own input
values (every tensor input's row, its dtype and shape), so a shuffled loader, which regroups the
samples into different batches every epoch, always gets each sample's own teacher outputs, and two
identical samples share one entry (the teacher, in eval mode, gives them the same outputs).

Example:
    >>> import torch
    >>> from torchcompress.batches import Batch
    >>> cache = TeacherCache()
    >>> x = torch.arange(6.0).reshape(3, 2)
    >>> keys = cache.keys(Batch(args=(x,)))
    >>> cache.put(keys, {"logits": 10 * x})
    >>> shuffled = cache.keys(Batch(args=(x[[2, 0]],)))
    >>> cache.get(shuffled)["logits"].tolist()
    [[40.0, 50.0], [0.0, 10.0]]
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..batches import Batch, batch_size
from ..errors import ConfigError

__all__ = ["TeacherCache"]

log = logging.getLogger(__name__)


def _rows_bytes(t: Tensor, n: int) -> list[bytes]:
    flat = t.detach().reshape(n, -1).cpu().contiguous()
    if flat.shape[1] == 0:
        return [b""] * n
    raw = flat.view(torch.uint8).numpy()
    return [raw[i].tobytes() for i in range(n)]


def _whole_bytes(t: Tensor) -> bytes:
    return t.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes()


class TeacherCache:
    """Teacher outputs (named tensors with the batch first) per sample, keyed by content.

    Args:
        device: where the kept tensors live (``"cpu"`` by default, so a long run does not grow
            accelerator memory); they are moved to the student's device when read.
        max_samples: stop adding entries beyond this many samples (``None``: no limit); a warning
            says so once.

    Attributes:
        hits: samples served from the cache.
        misses: samples the teacher had to run for.
    """

    def __init__(self, device: torch.device | str = "cpu", max_samples: int | None = None) -> None:
        if max_samples is not None and (
            isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1
        ):
            raise ConfigError(f"TeacherCache.max_samples={max_samples!r} must be an int >= 1.")
        self.device = torch.device(device)
        self.max_samples = max_samples
        self._entries: dict[bytes, dict[str, Tensor]] = {}
        self.hits = 0
        self.misses = 0
        self._full_warned = False

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every entry and reset the counters."""
        self._entries.clear()
        self.hits = self.misses = 0
        self._full_warned = False

    def keys(self, batch: Batch) -> list[bytes]:
        """One key per sample of ``batch``: a hash of the sample's input values.

        Tensor inputs whose first dimension is the batch contribute the sample's row; other
        inputs (tensors without the batch first, numbers, strings) contribute their whole value to
        every key.
        """
        n = batch_size(batch)
        parts: list[list[bytes]] = []
        shared: list[bytes] = []
        items: list[tuple[str, Any]] = [(str(i), a) for i, a in enumerate(batch.args)]
        items += sorted(batch.kwargs.items())
        for name, value in items:
            if isinstance(value, Tensor):
                head = f"{name}:{value.dtype}:{tuple(value.shape[1:])}".encode()
                if value.dim() > 0 and value.shape[0] == n:
                    parts.append([head + r for r in _rows_bytes(value, n)])
                else:
                    shared.append(
                        head + tuple(value.shape).__repr__().encode() + _whole_bytes(value)
                    )
            else:
                shared.append(f"{name}={value!r}".encode())
        common = b"\x00".join(shared)
        out = []
        for i in range(n):
            h = hashlib.blake2b(common, digest_size=20)
            for p in parts:
                h.update(b"\x01")
                h.update(p[i])
            out.append(h.digest())
        return out

    def get(self, keys: Sequence[bytes]) -> dict[str, Tensor] | None:
        """The kept outputs of these samples, stacked in order, or ``None`` if any is missing."""
        rows = [self._entries.get(k) for k in keys]
        if any(r is None for r in rows):
            self.misses += len(keys)
            return None
        self.hits += len(keys)
        names = rows[0].keys()  # type: ignore[union-attr]
        return {n: torch.stack([r[n] for r in rows]) for n in names}  # type: ignore[index]

    def put(self, keys: Sequence[bytes], outputs: Mapping[str, Tensor]) -> None:
        """Keep ``outputs`` (tensors with the batch first) row by row under ``keys``.

        Raises:
            ConfigError: an output whose first dimension is not the batch.
        """
        for name, t in outputs.items():
            if not isinstance(t, Tensor) or t.dim() == 0 or t.shape[0] != len(keys):
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ConfigError(
                    f"The teacher cache keeps outputs per sample, but the teacher's {name!r} is "
                    f"{shape} for a batch of {len(keys)}; distil without cache=True."
                )
        moved = {n: t.detach().to(self.device) for n, t in outputs.items()}
        for i, k in enumerate(keys):
            if k in self._entries:
                continue
            if self.max_samples is not None and len(self._entries) >= self.max_samples:
                if not self._full_warned:
                    log.warning(
                        "teacher cache: full at max_samples=%d; further samples run the teacher",
                        self.max_samples,
                    )
                    self._full_warned = True
                return
            self._entries[k] = {n: t[i].clone() for n, t in moved.items()}

    def __repr__(self) -> str:
        return (
            f"TeacherCache({len(self)} samples, {self.hits} hits, {self.misses} misses, "
            f"device={self.device})"
        )
