"""The channel graph: union-find of channel ids, groups, units and members."""

from __future__ import annotations

import numpy as np
import pytest

from torchcompress.sparsity.structured import ChannelGraph
from torchcompress.sparsity.structured.graph import Member, owner_of, split_key


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


def test_keys_name_their_owner() -> None:
    assert split_key("layer1.0.conv1.weight") == ("layer1.0.conv1", "weight")
    assert split_key("encoder.attn#heads") == ("encoder.attn", "#heads")
    assert split_key("scale") == ("", "scale")
    assert owner_of("fc.bias") == "fc"
    member = Member("attn#heads", 0, "attn", 4)
    assert member.pseudo and str(member) == "attn#heads"
    assert str(Member("fc.weight", 1, "fc", 8)) == "fc.weight[1]"


def test_union_requires_equal_lengths_and_tie_fixes_a_lone_side() -> None:
    g = ChannelGraph()
    a, b = g.fresh(3), g.fresh(2)
    with pytest.raises(ValueError, match="cannot couple 3 channels with 2"):
        g.union(a, b)
    g.tie(a, None, "fixed size")
    assert all(g.fixed[int(i)] == "fixed size" for i in a)
    g.tie(None, b, "other side")
    g.fix(b, "a later reason")  # the first reason stays
    assert g.fixed[int(b[0])] == "other side"
    assert g.units()[0] == []  # every id fixed: nothing to prune


def test_tied_weights_share_ids_and_passive_ids_never_lead() -> None:
    g = ChannelGraph()
    first = g.produce("emb.weight", 1, 4, origin="emb")
    again = g.produce("emb.weight", 1, 4, origin="head", binder="head")  # a tied LM head
    assert first is again and g.binders[("emb.weight", 1)] == "head"
    p = g.passive("pos", 0, 5)
    assert g.passive("pos", 0, 5) is p
    units, _ = g.units()
    assert len(units) == 4 and all(("pos", 0) not in u.slices for u in units)
    g.union_all(p)  # passive ids coupled only with each other: still no unit
    assert len(g.units()[0]) == 4


def test_heads_are_units_of_several_channels() -> None:
    g = ChannelGraph()
    heads = g.fresh(2, origin="attn")  # two heads of 3 channels: each id repeated over its block
    g.bind("q.weight", 0, np.repeat(heads, 3), binder="q")
    g.bind("o.weight", 1, np.repeat(heads, 3), binder="o")
    g.bind("attn#heads", 0, heads, binder="attn")
    (group,) = g.groups()
    assert group.width == 3 and len(group.units) == 2 and group.name == "attn"
    q = next(m for m in group.members if m.key == "q.weight")
    assert group.unit_of(q).tolist() == [0, 0, 0, 1, 1, 1]
    assert group.positions(q, [1]) == [3, 4, 5]
    assert group.units[1].width(group.members) == 3
    heads_member = next(m for m in group.members if m.pseudo)
    assert group.positions(heads_member, [0, 1]) == [0, 1]
