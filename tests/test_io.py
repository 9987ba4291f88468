"""torchcompress.io: save/load round trips without pickle."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import torchcompress as tc
from torchcompress import io
from torchcompress.errors import CompressionStateError, DataError, SelectionError


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def test_round_trip_of_a_plain_model(tmp_path):
    m = net().eval()
    m[1].running_mean.add_(0.5)
    path = tmp_path / "m.safetensors"
    tc.save(m, path)
    fresh = net()
    for p in fresh.parameters():
        nn.init.zeros_(p)
    tc.load(path, fresh)
    fresh.eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(m(x), fresh(x))
    assert io.describe(path)["format"] == "torchcompress"


def test_resized_layers_are_rebuilt(tmp_path):
    m = net()
    # what structured pruning leaves behind: fewer channels, matching BN and Linear
    m[0], m[1], m[3], m[6] = (
        nn.Conv2d(3, 5, 3, padding=1),
        nn.BatchNorm2d(5),
        nn.Conv2d(5, 6, 3, padding=1, bias=False),
        nn.Linear(6, 4),
    )
    m.eval()
    path = tmp_path / "small.safetensors"
    tc.save(m, path)
    fresh = tc.load(path, net()).eval()
    assert fresh[0].out_channels == 5 and fresh[3].in_channels == 5 and fresh[6].in_features == 6
    assert fresh[3].bias is None and fresh[1].num_features == 5
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(m(x), fresh(x))


def test_tied_weights_stay_tied_and_are_stored_once(tmp_path):
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(self.emb(ids))

    torch.manual_seed(0)
    m = LM()
    path = tmp_path / "lm.safetensors"
    tc.save(m, path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert len(list(f.keys())) == 1
    assert io.describe(path)["aliases"] in (
        {"head.weight": "emb.weight"},
        {"emb.weight": "head.weight"},
    )
    fresh = tc.load(path, LM())
    assert fresh.head.weight is fresh.emb.weight
    assert torch.equal(fresh.emb.weight, m.emb.weight)


def test_history_and_attributes_round_trip(tmp_path):
    m = net()
    io.add_history(m, "prune", {"sparsity": 0.5})
    io.add_history(m, "quantize", {"bits": 8}, note="x")
    io.set_attribute(m, "6", "tc_heads", 3)
    path = tmp_path / "h.safetensors"
    tc.save(m, path)
    fresh = tc.load(path, net())
    assert io.history(fresh) == [
        {"step": "prune", "config": {"sparsity": 0.5}},
        {"step": "quantize", "config": {"bits": 8}, "note": "x"},
    ]
    assert fresh[6].tc_heads == 3
    assert io.describe(path)["history"][0]["step"] == "prune"


def test_wrong_architecture_is_an_error_and_leaves_the_model_unchanged(tmp_path):
    path = tmp_path / "m.safetensors"
    tc.save(net(), path)
    other = nn.Sequential(nn.Linear(3, 3))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(SelectionError, match="Pass a fresh model of the architecture"):
        tc.load(path, other)
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in before.items())
    # same module names, but a tensor the fresh model does not have
    extra = net()
    extra.add_module("7", nn.Linear(4, 2))
    tc.save(extra, path)
    target = net()
    w = target[0].weight.clone()
    with pytest.raises(SelectionError):
        tc.load(path, target)
    assert torch.equal(target[0].weight, w) and len(target) == 7


def test_missing_tensors_are_an_error(tmp_path):
    class A(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

    class B(A):
        def __init__(self):
            super().__init__()
            self.register_buffer("scale", torch.ones(2))

    path = tmp_path / "a.safetensors"
    tc.save(A(), path)
    b = B()
    with pytest.raises(CompressionStateError, match="missing \\['scale'\\]"):
        tc.load(path, b)


def test_not_a_torchcompress_file(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(DataError, match=r"not written by tc\.save"):
        tc.load(plain, net())
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"definitely not safetensors")
    with pytest.raises(DataError, match="is not a safetensors file"):
        tc.load(junk, net())
    with pytest.raises(FileNotFoundError):
        tc.load(tmp_path / "missing.safetensors", net())
    newer = tmp_path / "newer.safetensors"
    save_file(
        {"w": torch.zeros(2)},
        str(newer),
        metadata={"torchcompress": json.dumps({"format_version": 99})},
    )
    with pytest.raises(CompressionStateError, match="newer torchcompress"):
        tc.load(newer, net())


def test_custom_codec_rebuilds_a_family_module(tmp_path):
    class Scaled(nn.Module):
        def __init__(self, inner: nn.Linear, k: int):
            super().__init__()
            self.inner, self.k = inner, k
            self.register_buffer("scale", torch.full((inner.out_features,), float(k)))

        def forward(self, x):
            return self.inner(x) * self.scale

    class ScaledCodec(io.ModuleCodec):
        name = "test-scaled"

        def __init__(self):
            self.loaded: list[str] = []

        def matches(self, module):
            return isinstance(module, Scaled)

        def encode(self, module):
            return {"inner": io.encode_plain(module.inner), "k": module.k}

        def decode(self, spec, current):
            return Scaled(io.decode_plain(spec["inner"]), spec["k"])

        def after_load(self, module):
            self.loaded.append(type(module).__name__)

    codec = ScaledCodec()
    io.register_codec(codec)
    m = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    m[0] = Scaled(nn.Linear(3, 2), 3)
    path = tmp_path / "s.safetensors"
    tc.save(m, path)
    fresh = tc.load(path, nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    assert isinstance(fresh[0], Scaled) and fresh[0].k == 3 and codec.loaded == ["Scaled"]
    x = torch.randn(2, 3)
    assert torch.equal(m(x), fresh(x))
    spec = io.describe(path)["modules"]
    assert {"name": "0", "codec": "test-scaled", "spec": codec.encode(m[0])} in spec


# --- finding the codecs: data-driven, io names no family --------------------------------------


def _run(code: str) -> str:
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_file_records_the_module_of_each_codec(tmp_path):
    m = tc.prune(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), tc.PruneConfig(0.5))
    path = tmp_path / "m.safetensors"
    tc.save(m, path)
    providers = io.describe(path)["codec_modules"]
    codecs = {r["codec"] for r in io.describe(path)["modules"]}
    assert set(providers) == codecs
    for name, module in providers.items():
        assert any(c.name == name and type(c).__module__ == module for c in io._CODECS)


def test_load_imports_only_the_family_the_file_names(tmp_path):
    torch.manual_seed(0)
    m = tc.prune(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), tc.PruneConfig(0.5))
    path = tmp_path / "m.safetensors"
    tc.save(m, path)
    torch.save(m(torch.ones(2, 4)).detach(), tmp_path / "y.pt")
    out = _run(  # a fresh interpreter, where no family is imported yet
        "import sys, torch, torchcompress as tc\n"
        "from torch import nn\n"
        "m = tc.load(" + repr(str(path)) + ", nn.Sequential(nn.Linear(4, 4), nn.ReLU(), "
        "nn.Linear(4, 2)))\n"
        f"assert torch.equal(m(torch.ones(2, 4)), torch.load({str(tmp_path / 'y.pt')!r}))\n"
        "print(sorted(f for f in ('quant', 'sparsity', 'lowrank') "
        "if 'torchcompress.' + f in sys.modules))\n"
    )
    assert out.strip().splitlines()[-1] == "['sparsity']"


def test_a_file_cannot_make_load_import_a_foreign_module(tmp_path):
    import sys

    path = tmp_path / "m.safetensors"
    tc.save(nn.Sequential(nn.Linear(2, 2)), path)
    desc = io.describe(path)
    desc["modules"] = [{"name": "0", "codec": "no-such-codec", "spec": {}}]
    desc["codec_modules"] = {"no-such-codec": "tabnanny"}
    save_file(
        {"0.weight": torch.zeros(2, 2), "0.bias": torch.zeros(2)},
        str(path),
        metadata={"torchcompress": json.dumps(desc)},
    )
    assert "tabnanny" not in sys.modules
    with pytest.raises(CompressionStateError, match=r"'no-such-codec'.*'tabnanny'"):
        tc.load(path, nn.Sequential(nn.Linear(2, 2)))
    assert "tabnanny" not in sys.modules


def test_a_moved_codec_module_falls_back_to_the_scan(tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    m = tc.prune(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), tc.PruneConfig(0.5))
    path = tmp_path / "m.safetensors"
    tc.save(m, path)
    desc = io.describe(path)
    desc["codec_modules"] = dict.fromkeys(desc["codec_modules"], "torchcompress.sparsity.moved")
    save_file(load_file(str(path)), str(path), metadata={"torchcompress": json.dumps(desc)})
    torch.save(m(torch.ones(2, 4)).detach(), tmp_path / "y.pt")
    _run(  # a fresh interpreter, where no family is imported yet
        "import torch, torchcompress as tc\n"
        "from torch import nn\n"
        "m = tc.load(" + repr(str(path)) + ", nn.Sequential(nn.Linear(4, 4), nn.ReLU(), "
        "nn.Linear(4, 2)))\n"
        f"assert torch.equal(m(torch.ones(2, 4)), torch.load({str(tmp_path / 'y.pt')!r}))\n"
    )
