"""The channel graph: union-find of channel ids, groups, units and members."""

from __future__ import annotations

from torchcompress.sparsity.structured import ChannelGraph


def test_union_find_fixed_and_passive_units() -> None:
    g = ChannelGraph()
    a = g.produce("l1.weight", 0, 3, origin="l1")
    b = g.produce("l2.weight", 0, 3, origin="l2")
    p = g.passive("pos", 0, 3)  # a parameter met in a generic op: follows, never leads
    g.union(a, b)
    g.bind("l3.weight", 1, b)
    g.fix(a[:1], "kept for a reason")
    groups = g.groups()
    assert len(groups) == 1 and len(groups[0].units) == 2
    assert groups[0].units[0].slices[("l3.weight", 1)] == [1]
    assert all(("pos", 0) not in u.slices for u in groups[0].units)
    g.union(p, a)  # coupled to a layer's channels: it follows them
    assert ("pos", 0) in g.groups()[0].units[0].slices
    assert g.reasons()[g.find(int(b[0]))] == "kept for a reason"
