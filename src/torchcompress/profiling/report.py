"""The result of :func:`~torchcompress.profiling.profile`: :class:`Profile` and its rows.

Per-layer rows (:class:`LayerProfile`) and whole-model totals; readable tables in human units
(:func:`format_count`, :func:`format_bytes`), Markdown, dicts of exact integers, rows summed into
blocks at a depth of the module tree, and totals per layer type.

Example:
    >>> format_count(40_551_040), format_bytes(3 * 2**20)
    ('40.55M', '3.00 MiB')
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, SelectionError, did_you_mean

__all__ = ["LayerProfile", "Profile", "format_bytes", "format_count"]


def format_count(n: int | float) -> str:
    """A count in human units: ``950``, ``40.55M``, ``1.20G``."""
    n = float(n)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{int(n)}"


def format_bytes(n: int | float) -> str:
    """Bytes in binary units: ``512 B``, ``1.04 MiB``."""
    n = float(n)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


_FIELDS = ("params", "nonzero_params", "macs", "effective_macs", "flops", "bytes")


@dataclass(frozen=True)
class LayerProfile:
    """One row of a :class:`Profile`: a layer (or, with ``depth``, a block of layers).

    Attributes:
        name: qualified module name (``""`` is the model itself).
        type: the module's class name.
        params: parameters held.
        nonzero_params: non-zero parameters.
        macs: multiply-accumulates executed on the example inputs (dense kernels).
        effective_macs: MACs a sparsity-aware kernel would need.
        flops: floating-point operations (2 per MAC unless a registered cost says otherwise).
        bytes: bytes of its stored tensors (state_dict), tied tensors once.
        calls: how many times its forward ran.
        note: remarks (sparsity, no cost formula, not called, a family's note).
    """

    name: str
    type: str
    params: int = 0
    nonzero_params: int = 0
    macs: int = 0
    effective_macs: int = 0
    flops: int = 0
    bytes: int = 0
    calls: int = 0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The row as a dict of exact integers and strings."""
        return {
            "name": self.name,
            "type": self.type,
            "params": self.params,
            "nonzero_params": self.nonzero_params,
            "macs": self.macs,
            "effective_macs": self.effective_macs,
            "flops": self.flops,
            "bytes": self.bytes,
            "calls": self.calls,
            "note": self.note,
        }


class Profile:
    """The result of :func:`profile`: per-layer rows and whole-model totals.

    ``str(profile)`` is a readable table in human units; :meth:`to_dict` has exact integers;
    :meth:`to_markdown` a Markdown table; :meth:`by_type` a summary per layer type. Rows are indexed
    by name (``profile["layer1.0.conv1"]``) and iterate in model order. The ``total_*`` properties
    are always those of the whole model, whatever ``include``/``exclude``/``depth`` selected.
    """

    def __init__(
        self,
        rows: Sequence[LayerProfile],
        totals: Mapping[str, int],
        *,
        model: str,
        inputs: str,
        leaf_rows: Sequence[LayerProfile] | None = None,
        module_types: Mapping[str, str] | None = None,
    ) -> None:
        self.rows: tuple[LayerProfile, ...] = tuple(rows)
        self.totals: dict[str, int] = dict(totals)
        self.model = model
        self.inputs = inputs
        self._leaf_rows = tuple(leaf_rows if leaf_rows is not None else rows)
        self._module_types = dict(module_types or {r.name: r.type for r in self._leaf_rows})
        self._by_name = {r.name: r for r in self.rows}

    def at_depth(self, depth: int | None) -> Profile:
        """The same profile with rows summed into blocks at ``depth`` of the module tree.

        ``0`` gives one row for the whole model, ``1`` one per child of the model, ``None`` every
        layer.
        """
        _check_depth(depth)
        rows = (
            self._leaf_rows
            if depth is None
            else _aggregate(self._leaf_rows, depth, self._module_types)
        )
        return Profile(
            rows,
            self.totals,
            model=self.model,
            inputs=self.inputs,
            leaf_rows=self._leaf_rows,
            module_types=self._module_types,
        )

    # -- totals -----------------------------------------------------------------------------
    @property
    def total_params(self) -> int:
        """Parameters of the whole model (tied tensors once)."""
        return self.totals["params"]

    @property
    def total_nonzero_params(self) -> int:
        """Non-zero parameters of the whole model."""
        return self.totals["nonzero_params"]

    @property
    def total_macs(self) -> int:
        """Multiply-accumulates of one forward on the example inputs (dense kernels)."""
        return self.totals["macs"]

    @property
    def total_effective_macs(self) -> int:
        """MACs a sparsity-aware kernel would need."""
        return self.totals["effective_macs"]

    @property
    def total_flops(self) -> int:
        """Floating-point operations (2 per MAC unless a registered cost says otherwise)."""
        return self.totals["flops"]

    @property
    def total_bytes(self) -> int:
        """Bytes of the model's state_dict tensors as stored (tied tensors once)."""
        return self.totals["bytes"]

    # -- access -----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> LayerProfile:
        try:
            return self._by_name[name]
        except KeyError:
            raise SelectionError(
                f"The profile has no row {name!r}.{did_you_mean(name, self._by_name)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[LayerProfile]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def by_type(self) -> dict[str, dict[str, int]]:
        """Totals per layer type (``{"Conv2d": {"count": 19, "params": ..., "macs": ...}}``).

        Summarises the finest rows (each layer, not the ``depth`` blocks) that ``include`` and
        ``exclude`` selected, sorted by MACs.
        """
        out: dict[str, dict[str, int]] = {}
        for r in self._leaf_rows:
            d = out.setdefault(r.type, {"count": 0, **{f: 0 for f in _FIELDS}})
            d["count"] += 1
            for f in _FIELDS:
                d[f] += getattr(r, f)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["macs"]))

    def to_dict(self) -> dict[str, Any]:
        """``{"model", "inputs", "total": {...}, "layers": [...]}`` with exact integers."""
        return {
            "model": self.model,
            "inputs": self.inputs,
            "total": dict(self.totals),
            "layers": [r.to_dict() for r in self.rows],
        }

    # -- rendering --------------------------------------------------------------------------
    def _columns(self) -> list[tuple[str, str]]:
        # sparsity columns only where they say something: some layer's work could shrink
        sparse = any(r.effective_macs != r.macs for r in self._leaf_rows)
        cols = [("name", "name"), ("type", "type"), ("params", "params")]
        if sparse:
            cols.append(("nonzero", "nonzero_params"))
        cols.append(("MACs", "macs"))
        if sparse:
            cols.append(("eff. MACs", "effective_macs"))
        cols += [("FLOPs", "flops"), ("bytes", "bytes")]
        if any(r.calls > 1 for r in self.rows):
            cols.append(("calls", "calls"))
        cols.append(("note", "note"))
        return cols

    def _cells(self, human: bool) -> tuple[list[str], list[list[str]], list[str]]:
        cols = self._columns()

        def fmt(attr: str, v: Any) -> str:
            if attr in ("name", "type", "note"):
                return str(v)
            if attr == "calls":
                return str(v)
            if not human:
                return f"{int(v):,}"
            return format_bytes(v) if attr == "bytes" else format_count(v)

        body = []
        for r in self.rows:
            cells = []
            for _, attr in cols:
                v = getattr(r, attr)
                if attr == "name" and v == "":
                    v = f"({r.type})"
                cells.append(fmt(attr, v))
            body.append(cells)
        total = []
        for _, attr in cols:
            if attr == "name":
                total.append("total")
            elif attr in self.totals:
                total.append(fmt(attr, self.totals[attr]))
            else:
                total.append("")
        return [c for c, _ in cols], body, total

    def __str__(self) -> str:
        return self.table()

    def table(self, depth: int | None = None) -> str:
        """The readable table (``str(profile)``), optionally with rows at ``depth`` (see
        :meth:`at_depth`)."""
        if depth is not None:
            return self.at_depth(depth).table()
        head, body, total = self._cells(human=True)
        widths = [max(len(x) for x in col) for col in zip(head, *body, total)]
        numeric = [h not in ("name", "type", "note") for h in head]

        def line(cells: list[str]) -> str:
            parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
            return "  ".join(parts).rstrip()

        rule = "-" * len(line(head))
        out = [f"{self.model} on inputs {self.inputs}", line(head), rule]
        out += [line(b) for b in body]
        out += [rule, line(total)]
        return "\n".join(out)

    def __repr__(self) -> str:
        return (
            f"Profile({self.model}: {format_count(self.total_params)} params, "
            f"{format_count(self.total_macs)} MACs, {format_bytes(self.total_bytes)}, "
            f"{len(self.rows)} rows)"
        )

    def to_markdown(self, human: bool = True, depth: int | None = None) -> str:
        """A Markdown table of the rows and the totals (human units unless ``human=False``;
        rows at ``depth`` as in :meth:`at_depth`)."""
        if depth is not None:
            return self.at_depth(depth).to_markdown(human=human)
        head, body, total = self._cells(human=human)
        total = [f"**{c}**" if c else "" for c in total]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for b in [*body, total]:
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in b) + " |")
        return "\n".join(lines) + "\n"


def _check_depth(depth: Any) -> None:
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 0):
        raise ConfigError(f"depth={depth!r} must be None or an integer >= 0.")


def _aggregate(
    rows: Sequence[LayerProfile], depth: int, module_types: Mapping[str, str]
) -> list[LayerProfile]:
    order = {name: i for i, name in enumerate(module_types)}
    groups: dict[str, list[LayerProfile]] = {}
    for r in rows:
        parts = r.name.split(".") if r.name else []
        key = ".".join(parts[:depth])
        groups.setdefault(key, []).append(r)
    out = []
    for key in sorted(groups, key=lambda n: order.get(n, len(order))):
        members = groups[key]
        notes: list[str] = []
        for m in members:
            for n in m.note.split("; ") if m.note else []:
                if n not in notes and n != "not called":
                    notes.append(n)
        own = [m.calls for m in members if m.name == key]
        out.append(
            LayerProfile(
                name=key,
                type=module_types.get(key, members[0].type),
                calls=own[0] if own else max(m.calls for m in members),
                note="; ".join(notes),
                **{f: sum(getattr(m, f) for m in members) for f in _FIELDS},
            )
        )
    return out
