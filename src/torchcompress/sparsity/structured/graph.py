"""The channel dependency graph: which channels of which tensors must go together.

Every channel a pruning could remove is an integer *id*. A tensor seen in the recorded forward
carries a *label* per dimension: the id of each index along it (``None``: a dimension that never
shrinks, such as the batch or the tokens). Layers *produce* ids (their output channels), and ops
*couple* them: a residual add makes the channels of its operands one (:meth:`ChannelGraph.union`),
a concatenation places its inputs' ids side by side, a flatten repeats each channel's id over its
spatial block, a split of one dimension into heads makes each head one block. Ids that must never
go (the model's inputs and outputs, anything an op we do not understand touches) are *fixed*, with a
reason.

Parameters and buffers are *bound* to ids along their dimensions (a Linear's weight rows to its
output ids, its columns to its input's ids), as are pseudo-attributes such as an attention layer's
head count (keys ``"module#heads"``). When the forward is over, :meth:`ChannelGraph.units` collects
the equivalence classes of ids: each class is a *unit* (a channel, a head, a block of channels) that
is removed whole, with the slices of every parameter it owns; units that touch the same parameters
form a *group* (one layer's filters with everything that follows them), the level at which ratios
and rankings apply.

Example:
    >>> import numpy as np
    >>> g = ChannelGraph()
    >>> a = g.produce("conv1.weight", 0, 4, origin="conv1")   # conv1's 4 output channels
    >>> b = g.produce("conv2.weight", 0, 4, origin="conv2")
    >>> g.union(a, b)                                         # a residual add of the two
    >>> _ = g.bind("conv3.weight", 1, a)                      # conv3 reads the sum
    >>> [len(grp.units) for grp in g.groups()]
    [4]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ChannelGraph", "Group", "Ids", "Member", "Unit", "owner_of", "split_key"]

#: The ids along one dimension of a tensor or parameter (``int64``, one per index).
Ids = np.ndarray


def split_key(key: str) -> tuple[str, str]:
    """``"layer.conv.weight"`` -> ``("layer.conv", "weight")``; ``"attn#heads"`` -> ``("attn", "#heads")``."""
    if "#" in key:
        module, _, attr = key.partition("#")
        return module, "#" + attr
    module, _, attr = key.rpartition(".")
    return module, attr


def owner_of(key: str) -> str:
    """The module that holds the parameter, buffer or pseudo-attribute ``key``."""
    return split_key(key)[0]


@dataclass
class Member:
    """One parameter dimension (or pseudo-attribute) a group's units slice.

    Attributes:
        key: the qualified parameter/buffer name, or ``"module#attr"`` for a pseudo-attribute.
        dim: the dimension sliced.
        binder: the module whose handler bound it (``None``: bound by a generic op on the parameter).
        size: the dimension's size.
    """

    key: str
    dim: int
    binder: str | None
    size: int

    @property
    def pseudo(self) -> bool:
        """Whether this is a pseudo-attribute (no tensor behind it)."""
        return "#" in self.key

    def __str__(self) -> str:
        return f"{self.key}[{self.dim}]" if not self.pseudo else self.key


@dataclass
class Unit:
    """One removable block: an equivalence class of ids.

    Attributes:
        root: the class's representative id.
        slices: ``(key, dim)`` -> the indices along that dimension the unit owns.
        first: the smallest id in the class (creation order).
    """

    root: int
    slices: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    first: int = 0

    def width(self, members: Sequence[Member]) -> int:
        """Indices the unit owns along its widest real (non-pseudo) member."""
        real = [len(self.slices[(m.key, m.dim)]) for m in members if not m.pseudo]
        return max(real) if real else 1


@dataclass
class Group:
    """Units that slice the same parameter dimensions: one pruning decision per unit.

    Attributes:
        index: position in :meth:`ChannelGraph.groups` order.
        members: the parameter dimensions the units slice.
        units: the units, in the order of their first index along the first member.
        origin: a short description of where the group's channels are produced.
    """

    index: int
    members: list[Member]
    units: list[Unit]
    origin: str = ""
    _unit_of: dict[tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False)

    def unit_of(self, member: Member) -> np.ndarray:
        """For each index along ``member``, the unit (position in :attr:`units`) owning it, or -1."""
        k = (member.key, member.dim)
        cached = self._unit_of.get(k)
        if cached is None:
            pos: list[int] = []
            owner: list[int] = []
            for u, unit in enumerate(self.units):
                p = unit.slices[k]
                pos.extend(p)
                owner.extend([u] * len(p))
            cached = np.full(member.size, -1, dtype=np.int64)
            cached[np.asarray(pos, dtype=np.int64)] = np.asarray(owner, dtype=np.int64)
            self._unit_of[k] = cached
        return cached

    @property
    def name(self) -> str:
        """A readable name: the producing modules, or the first member."""
        return self.origin or str(self.members[0])

    def positions(self, member: Member, units: Iterable[int]) -> list[int]:
        """The indices along ``member`` owned by the units numbered ``units``."""
        out: list[int] = []
        for u in units:
            out.extend(self.units[u].slices[(member.key, member.dim)])
        return sorted(out)

    @property
    def width(self) -> int:
        """Channels per unit (a head's size; 1 for single channels): the gcd over real members."""
        counts = [len(self.units[0].slices[(m.key, m.dim)]) for m in self.members if not m.pseudo]
        return int(np.gcd.reduce(counts)) if counts else 1


class ChannelGraph:
    """Ids, their equivalence classes, fixed ids and parameter bindings (see the module docstring)."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._origin: list[str] = []
        self.active: set[int] = set()
        self.fixed: dict[int, str] = {}
        self.bindings: dict[tuple[str, int], Ids] = {}
        self.binders: dict[tuple[str, int], str | None] = {}

    # -- ids -------------------------------------------------------------------------------------
    def fresh(self, n: int, *, origin: str = "", active: bool = True) -> Ids:
        """``n`` new ids; active ids can lead a unit (layers' outputs), passive ones only follow."""
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        self._origin.extend([origin] * n)
        ids = np.arange(start, start + n, dtype=np.int64)
        if active:
            self.active.update(range(start, start + n))
        return ids

    def __len__(self) -> int:
        return len(self._parent)

    def find(self, i: int) -> int:
        """The representative of ``i``'s class."""
        parent = self._parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: Ids, b: Ids) -> None:
        """Make ``a[i]`` and ``b[i]`` one for every ``i`` (same length)."""
        if len(a) != len(b):
            raise ValueError(f"cannot couple {len(a)} channels with {len(b)}")
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                rx, ry = self.find(x), self.find(y)
                if rx != ry:
                    self._parent[max(rx, ry)] = min(rx, ry)

    def union_all(self, ids: Ids) -> None:
        """Make every id of ``ids`` one."""
        if len(ids) > 1:
            self.union(ids[:-1], ids[1:])

    def fix(self, ids: Ids | None, reason: str) -> None:
        """Mark ``ids`` as never removable (the first reason given is kept)."""
        if ids is None:
            return
        for i in ids.tolist():
            self.fixed.setdefault(i, reason)

    def tie(self, a: Ids | None, b: Ids | None, reason: str) -> None:
        """Couple ``a`` and ``b``; when one side has no ids (a fixed size), fix the other."""
        if a is not None and b is not None:
            self.union(a, b)
        elif a is not None:
            self.fix(a, reason)
        elif b is not None:
            self.fix(b, reason)

    # -- parameter bindings ----------------------------------------------------------------------
    def bound(self, key: str, dim: int) -> Ids | None:
        """The ids bound to ``key`` along ``dim`` (``None``: not bound)."""
        return self.bindings.get((key, dim))

    def bind(self, key: str, dim: int, ids: Ids, binder: str | None = None) -> Ids:
        """Bind ``key`` along ``dim`` to ``ids`` (coupling them with an earlier binding)."""
        old = self.bindings.get((key, dim))
        if old is None:
            self.bindings[(key, dim)] = np.asarray(ids, dtype=np.int64)
            self.binders[(key, dim)] = binder
            return self.bindings[(key, dim)]
        self.union(old, ids)
        if binder is not None and self.binders.get((key, dim)) is None:
            self.binders[(key, dim)] = binder
        return old

    def produce(
        self, key: str, dim: int, n: int, *, origin: str = "", binder: str | None = None
    ) -> Ids:
        """The ids of ``key`` along ``dim``: fresh active ids unless already bound (tied weights)."""
        old = self.bindings.get((key, dim))
        if old is not None:
            if binder is not None and self.binders.get((key, dim)) is None:
                self.binders[(key, dim)] = binder
            return old
        return self.bind(key, dim, self.fresh(n, origin=origin or key), binder)

    def passive(self, key: str, dim: int, n: int) -> Ids:
        """The ids of a parameter dimension met in a generic op (passive ids when unbound)."""
        old = self.bindings.get((key, dim))
        if old is not None:
            return old
        return self.bind(key, dim, self.fresh(n, origin=key, active=False), None)

    # -- the result ------------------------------------------------------------------------------
    def reasons(self) -> dict[int, str]:
        """Class representative -> why the class is fixed."""
        out: dict[int, str] = {}
        for i, why in self.fixed.items():
            out.setdefault(self.find(i), why)
        return out

    def roots(self) -> np.ndarray:
        """The representative of every id (``roots()[i] == find(i)``)."""
        return np.fromiter(
            (self.find(i) for i in range(len(self._parent))), np.int64, len(self._parent)
        )

    def units(self) -> tuple[list[Unit], dict[int, str]]:
        """``(prunable units, fixed class root -> reason)``.

        A unit is prunable when its class holds an active id, no fixed id and owns some slice.
        """
        fixed = self.reasons()
        roots = self.roots()
        ok = np.zeros(len(roots), dtype=bool)
        if self.active:
            ok[roots[np.fromiter(self.active, np.int64, len(self.active))]] = True
        if fixed:
            ok[np.fromiter(fixed, np.int64, len(fixed))] = False
        first = np.full(len(roots), np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, roots, np.arange(len(roots), dtype=np.int64))
        units: dict[int, Unit] = {}
        split: dict[int, list[tuple[int, list[int]]]] = {}  # by id(ids): [(root, positions)]
        for (key, dim), ids in self.bindings.items():
            parts = split.get(id(ids))
            if parts is None:
                r = roots[ids]
                keep = np.nonzero(ok[r])[0]
                parts = []
                if len(keep):
                    rk = r[keep]
                    order = np.argsort(rk, kind="stable")
                    uniq, start = np.unique(rk[order], return_index=True)
                    if len(uniq) == len(keep):  # one index per unit: the common case
                        parts = [(a, [b]) for a, b in zip(rk.tolist(), keep.tolist())]
                    else:
                        bounds = [*start.tolist(), len(keep)]
                        sorted_pos = keep[order].tolist()
                        parts = [
                            (root, sorted_pos[bounds[i] : bounds[i + 1]])
                            for i, root in enumerate(uniq.tolist())
                        ]
                split[id(ids)] = parts
            for root, pos in parts:
                unit = units.get(root)
                if unit is None:
                    unit = units[root] = Unit(root, first=int(first[root]))
                unit.slices[(key, dim)] = pos
        return sorted(units.values(), key=lambda u: u.first), fixed

    def groups(self) -> list[Group]:
        """The prunable units, grouped by the parameter dimensions they slice."""
        units, _ = self.units()
        by_sig: dict[tuple[tuple[str, int], ...], list[Unit]] = {}
        for u in units:
            by_sig.setdefault(tuple(sorted(u.slices)), []).append(u)
        groups = []
        for sig, members in sorted(by_sig.items(), key=lambda kv: kv[1][0].first):
            mem = [
                Member(k, d, self.binders.get((k, d)), len(self.bindings[(k, d)])) for k, d in sig
            ]
            # the first member: the one whose ids were created first (the producer)
            mem.sort(
                key=lambda m: (
                    int(self.bindings[(m.key, m.dim)].min()),
                    m.pseudo,
                    not m.key.endswith("weight"),
                    m.key,
                    m.dim,
                )
            )
            first = mem[0]
            members.sort(key=lambda u: u.slices[(first.key, first.dim)][0])
            origins = sorted({self._origin[u.first] for u in members if self._origin[u.first]})
            groups.append(Group(len(groups), mem, members, ", ".join(origins[:3])))
        return groups
