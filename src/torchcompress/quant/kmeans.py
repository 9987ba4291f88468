"""Non-uniform (codebook) weight quantization: :func:`kmeans_quantize`.

Each layer's weights are clustered into ``2^bits`` centroids by k-means (Lloyd's algorithm with
k-means++ or linear initialisation, as in Han et al. 2016, "Deep Compression"); the layer stores the
cluster index of every weight, packed (two 4-bit or four 2-bit indices per byte), plus its codebook.
With ``weighted="activation"`` the clustering minimises the error weighted by each weight's
importance to the layer output, ``E[x_j^2]`` of its input feature (the diagonal of the layer's
Hessian ``X^T X``), as in SqueezeLLM's sensitivity-weighted k-means (Kim et al. 2023).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import forms, io
from ..calibration import collect
from ..errors import ConfigError, DataError, SelectionError
from ..layers import Geometry, canonical_weight, check_finite
from ..layers import forward as layer_forward
from ..progress import progress_bar
from ..select import replace_modules, snapshot_modules
from . import functional as QF
from .build import refuse_if_done, select_quant_targets, source_name
from .geometry import geometry_of
from .modules import QuantizedModule

__all__ = ["KMeansLayer", "kmeans_1d", "kmeans_quantize"]


def kmeans_1d(
    x: Tensor,
    k: int,
    *,
    weights: Tensor | None = None,
    init: str = "kmeans++",
    iters: int = 100,
    tol: float = 1e-7,
    seed: int = 0,
    init_sample: int = 1 << 17,
) -> tuple[Tensor, Tensor]:
    """Weighted k-means of scalars, vectorised (assignments by binary search on sorted centroids).

    Args:
        x: the values (any shape; flattened).
        k: number of centroids.
        weights: non-negative importance of each value (default: all equal).
        init: ``"kmeans++"`` (D² sampling, Arthur & Vassilvitskii 2007, on at most ``init_sample``
            values) or ``"linear"`` (evenly spaced between min and max).
        iters: maximum Lloyd iterations.
        tol: stop when no centroid moves by more than ``tol * (max - min)``.
        seed: random seed of the initialisation.
        init_sample: values sampled for the k-means++ initialisation.

    Returns:
        ``(centroids, labels)``: the sorted centroids ``[k]`` and each value's centroid index.

    Example:
        >>> import torch
        >>> c, lab = kmeans_1d(torch.tensor([0.0, 0.1, 5.0, 5.2]), 2)
        >>> [round(v, 2) for v in c.tolist()], lab.tolist()
        ([0.05, 5.1], [0, 0, 1, 1])
    """
    v = x.detach().reshape(-1).float()
    w = torch.ones_like(v) if weights is None else weights.detach().reshape(-1).float().clamp(min=0)
    if v.numel() == 0:
        raise ConfigError("kmeans_1d needs at least one value.")
    uniq = torch.unique(v)
    if uniq.numel() <= k:
        cent = torch.cat([uniq, uniq[-1:].expand(k - uniq.numel())])
        return cent, torch.searchsorted(uniq, v).clamp_(max=uniq.numel() - 1)
    lo, hi = float(v.min()), float(v.max())
    gen = torch.Generator(device="cpu").manual_seed(seed)
    if init == "linear":
        cent = torch.linspace(lo, hi, k, device=v.device)
    elif init == "kmeans++":
        if v.numel() > init_sample:
            idx = torch.randint(0, v.numel(), (init_sample,), generator=gen).to(v.device)
            sv, sw = v[idx], w[idx]
        else:
            sv, sw = v, w
        sw = sw + 1e-12
        first = torch.multinomial(sw.cpu(), 1, generator=gen).to(v.device)
        chosen = [sv[first]]
        d2 = (sv - chosen[0]) ** 2
        for _ in range(k - 1):
            p = (sw * d2).cpu()
            if float(p.sum()) <= 0:
                break
            i = torch.multinomial(p, 1, generator=gen).to(v.device)
            chosen.append(sv[i])
            d2 = torch.minimum(d2, (sv - sv[i]) ** 2)
        cent = torch.cat(chosen)
        if cent.numel() < k:
            cent = torch.cat([cent, torch.linspace(lo, hi, k - cent.numel(), device=v.device)])
        cent = cent.sort().values
    else:
        raise ConfigError(f"init={init!r} must be 'kmeans++' or 'linear'.")
    span = max(hi - lo, 1e-30)
    for _ in range(iters):
        bounds = (cent[1:] + cent[:-1]) / 2
        lab = torch.searchsorted(bounds, v)
        sums = torch.bincount(lab, weights=w * v, minlength=k)
        cnts = torch.bincount(lab, weights=w, minlength=k)
        new = torch.where(cnts > 0, sums / cnts.clamp(min=1e-30), cent).float()
        new = new.sort().values
        moved = float((new - cent).abs().max())
        cent = new
        if moved <= tol * span:
            break
    bounds = (cent[1:] + cent[:-1]) / 2
    return cent, torch.searchsorted(bounds, v)


class KMeansLayer(QuantizedModule):
    """A layer (Linear, convolution, any registered layer kind) whose weights are indices into a
    per-layer codebook.

    State: ``indices`` (packed, ``bits`` per index), ``codebook`` (``2^bits`` float32 centroids) and
    ``bias``. The weights are looked up from the codebook on the fly at every forward (no integer
    kernel multiplies codebook indices; the saving is in storage).

    Args:
        geometry: the dense map (:class:`~torchcompress.layers.Geometry`; weights in its canonical
            layout, a bias if ``geometry.bias``).
        bits: bits per index.
        source: the class name of the layer it replaced.
        dtype: the bias's dtype.
        device: where the state is allocated.
    """

    def __init__(
        self,
        geometry: Geometry,
        bits: int,
        *,
        source: str = "",
        runtime: str = "cache",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.geometry = geometry
        self.bits = int(bits)
        #: ``"cache"``: look the weights up on the first call and keep them (float speed, float
        #: weights in memory at run time); ``"lowbit"``: look them up at every call
        self.runtime = "lowbit" if runtime == "lowbit" else "cache"
        self._cached: dict[tuple[torch.device, torch.dtype], tuple[tuple[int, ...], Tensor]] = {}
        self.source = source or geometry.kind
        numel = 1
        for s in self.weight_shape:
            numel *= s
        self.numel = numel
        per = 8 // QF.storage_bits(self.bits)
        self.register_buffer(
            "indices", torch.zeros((numel + per - 1) // per, dtype=torch.uint8, device=device)
        )
        self.register_buffer("codebook", torch.zeros(2**self.bits, device=device))
        self.register_buffer(
            "bias",
            torch.zeros(geometry.out_features, dtype=dtype, device=device)
            if geometry.bias
            else None,
        )

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """The canonical weight shape ``(out, in / groups, *kernel)``."""
        return self.geometry.weight_shape

    @property
    def weight(self) -> Tensor:
        """The weights looked up from the codebook."""
        idx = QF.unpack_int(self.indices, self.bits, 0, self.numel).long()
        return self.codebook[idx].reshape(self.weight_shape)

    def set_runtime(self, runtime: str) -> None:
        """``"cache"`` or ``"lowbit"`` (``"w4a8"`` has no codebook kernel: cached)."""
        self.runtime = "lowbit" if runtime == "lowbit" else "cache"
        self._cached = {}

    def _float_weight(self, dtype: torch.dtype) -> Tensor:
        if self.runtime == "lowbit":
            return self.weight.to(dtype)
        b = self._buffers  # (not the module's attribute lookup: this runs at every call)
        idx, cb = b["indices"], b["codebook"]
        key = (id(idx), idx._version, id(cb), cb._version)
        where = (idx.device, dtype)
        hit = self._cached.get(where)
        if hit is None or hit[0] != key:
            with torch.no_grad():
                hit = self._cached[where] = (key, self.weight.to(dtype).contiguous())
        return hit[1]

    def runtime_bytes(self) -> int:
        """Bytes held in memory once the layer has run (its state plus a cached float weight)."""
        state = sum(t.numel() * t.element_size() for t in self.state_dict().values())
        return state + sum(w.numel() * w.element_size() for _, w in self._cached.values())

    def forward(self, x: Tensor) -> Tensor:
        w = self._float_weight(x.dtype)
        b = self._buffers.get("bias")
        if b is not None and b.dtype != x.dtype:
            b = b.to(x.dtype)
        return layer_forward(self.geometry, x, w, b)

    def _apply(self, fn: Any, recurse: bool = True) -> KMeansLayer:
        self._cached = {}
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cached"] = {}
        return state

    def runtime_note(self) -> str:
        """How the weights are looked up at run time."""
        if self.runtime == "lowbit":
            return "dequantized on the fly at every call (codebook lookup; runtime='lowbit')"
        return (
            "dequantized on the fly once, then cached in float (codebook lookup; runtime='cache')"
        )

    def extra_repr(self) -> str:
        return (
            f"{self.source} {tuple(self.weight_shape)}, {self.bits}-bit codebook "
            f"({2**self.bits} centroids): {self.runtime_note()}"
        )


def _kmeans_keeping_zeros(
    w: Tensor, k: int, *, weights: Tensor | None, **options: Any
) -> tuple[Tensor, Tensor]:
    """:func:`kmeans_1d` of a weight that keeps its exact zeros (pruned weights): one centroid is
    exactly zero and holds every zero; the other ``k - 1`` cluster the non-zero values."""
    v = w.detach().reshape(-1)
    zero = v == 0
    if not bool(zero.any()) or int(torch.unique(v).numel()) <= k:
        return kmeans_1d(w, k, weights=weights, **options)
    nonzero = ~zero
    cent = torch.zeros(k, dtype=torch.float32, device=v.device)
    lab = torch.zeros(v.numel(), dtype=torch.long, device=v.device)
    if bool(nonzero.any()):
        sub = None if weights is None else weights.detach().reshape(-1)[nonzero]
        c, sub_lab = kmeans_1d(v[nonzero], k - 1, weights=sub, **options)
        cent, order = torch.sort(torch.cat([c.float(), cent[:1]]))
        rank = torch.empty_like(order)
        rank[order] = torch.arange(k, device=v.device)
        lab[nonzero] = rank[sub_lab]
        lab[zero] = rank[k - 1]
    return cent, lab


def _feature_weights(e: Tensor, geometry: Geometry) -> Tensor:
    """Each weight's importance: ``E[x^2]`` of the input channel it multiplies (``e``, one value
    per input channel), in the canonical weight shape."""
    per_tap = e.reshape(-1, *([1] * geometry.spatial_dims)).expand(geometry.feature_shape)
    return geometry.expand_features(per_tap)


def kmeans_quantize(
    model: nn.Module,
    bits: int = 4,
    *,
    weighted: bool | str = False,
    calib_data: Any = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    init: str = "kmeans++",
    iters: int = 100,
    seed: int = 0,
    max_batches: int | None = None,
    progress: bool | None = None,
    runtime: str = "cache",
) -> nn.Module:
    """Replace each layer's weights by a per-layer codebook of ``2^bits`` centroids (k-means).

    Args:
        model: the model; modified in place.
        bits: 1 to 8 bits per index (``2^bits`` centroids).
        weighted: ``False`` (plain k-means), ``"activation"`` or ``True`` (weight each value by
            ``E[x^2]`` of its input feature, from ``calib_data``), or ``"magnitude"`` (by ``|w|``).
        calib_data: batches for ``weighted="activation"``.
        include: glob patterns of layers to quantize (default: every layer of a registered kind:
            Linear, convolutions, HF Conv1D, ...).
        exclude: glob patterns of layers to keep.
        init: ``"kmeans++"`` or ``"linear"``.
        iters: Lloyd iterations at most.
        seed: initialisation seed.
        max_batches: calibration batches used at most.
        progress: show a progress bar.
        runtime: ``"cache"`` (look the weights up once and keep them: float speed, float weights
            in memory at run time) or ``"lowbit"`` (look them up at every call); the file keeps
            the indices either way. Switch later with
            :func:`torchcompress.quant.set_runtime`.

    Returns:
        ``model``, with :class:`KMeansLayer` s.

    Raises:
        ConfigError: ``bits`` out of range, unknown ``weighted``, or weighting without data.
        NumericalError: NaN or Inf in a weight.

    Example:
        >>> import torch, torchcompress as tc
        >>> m = tc.kmeans_quantize(torch.nn.Sequential(torch.nn.Linear(32, 8)), bits=2)
        >>> int(m[0].weight.unique().numel()) <= 4
        True
    """
    forms.check(model, "kmeans_quantize", include=include, exclude=exclude)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ConfigError(f"kmeans_quantize: bits={bits!r} must be an int from 1 to 8.")
    if runtime not in ("cache", "lowbit"):
        raise ConfigError(f"kmeans_quantize: runtime={runtime!r} must be 'cache' or 'lowbit'.")
    if weighted is True:
        weighted = "activation"
    if weighted not in (False, "activation", "magnitude"):
        raise ConfigError(f"weighted={weighted!r} must be False, True/'activation' or 'magnitude'.")
    if weighted == "activation" and calib_data is None:
        raise DataError(
            "weighted='activation' weighs each weight by its input's E[x^2]: pass calib_data."
        )
    targets = select_quant_targets(model, include, exclude, "k-means quantization")
    if not targets:
        refuse_if_done(model, "kmeans_quantize", exclude)
        raise SelectionError(f"{type(model).__name__} has no layer for k-means quantization.")
    names = [n for n, _ in targets]
    check_finite(targets, "k-means quantized")
    imp = {}
    if weighted == "activation":
        stats = collect(
            model,
            calib_data,
            {n: ["channel_sq"] for n in names},
            max_batches=max_batches,
            progress=progress,
            desc="k-means importance",
        )
        imp = {n: stats[n]["channel_sq"] for n in names}

    def build(old: nn.Module, name: str) -> KMeansLayer:
        geo = geometry_of(old, name)
        w = canonical_weight(old, name=name).detach()
        weights = None
        if weighted == "activation":
            weights = _feature_weights(imp[name], geo)
        elif weighted == "magnitude":
            weights = w.abs()
        cent, lab = _kmeans_keeping_zeros(
            w, 2**bits, weights=weights, init=init, iters=iters, seed=seed
        )
        bias = getattr(old, "bias", None)
        layer = KMeansLayer(
            dataclasses.replace(geo, bias=isinstance(bias, Tensor)),
            bits,
            source=source_name(old),
            runtime=runtime,
            dtype=w.dtype,
            device=w.device,
        )
        with torch.no_grad():
            layer.indices.copy_(QF.pack_int(lab, bits, 0))
            layer.codebook.copy_(cent)
            if layer.bias is not None:
                layer.bias.copy_(bias.detach())
        return layer

    built = {
        n: build(model.get_submodule(n), n)
        for n in progress_bar(names, desc="k-means", total=len(names), enabled=progress)
    }
    with snapshot_modules(model):
        replace_modules(model, {n: (lambda old, n=n: built[n]) for n in names})
    io.add_history(
        model,
        "kmeans_quantize",
        {"bits": bits, "weighted": weighted, "init": init, "iters": iters, "seed": seed},
        include=include,
        exclude=exclude,
    )
    return model
