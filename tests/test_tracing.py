"""torchcompress.tracing: the tracer's leaf rules and opaque parts, the recorder's events, the ops."""

from __future__ import annotations

import doctest
import importlib
import operator

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

import torchcompress as tc
from torchcompress import costs
from torchcompress.errors import ConfigError
from torchcompress.tracing import (
    ACTIVATION,
    ADD,
    CONCAT,
    ELEMENTWISE,
    INDEX,
    INT_EXACT,
    MAX_POOL,
    NON_TENSOR,
    OPS,
    POOLING,
    RANGE_PRESERVING,
    RELU,
    RELU6,
    RELU_LIKE,
    RESHAPE,
    SPLIT,
    ZERO_PAD,
    Listener,
    OpEvent,
    Recorder,
    Source,
    Tracer,
    is_registered_leaf,
    register_leaf,
    trace,
)
from torchcompress.tracing import tracer as tracer_module

# --- models ---------------------------------------------------------------------------------


class Gate(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace this forward."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:
            return self.body(x)
        return -x


class WithGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.gate = Gate()
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.gate(self.fc(x)))


class Untraceable(nn.Module):
    """Its own forward does not trace; its children do."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.b = WithGate()

    def forward(self, x: Tensor) -> Tensor:
        for _ in range(int(x.shape[0] > 0)):  # a Python loop over a traced value
            x = self.a(x)
        return self.b(x)


def call_targets(graph: fx.Graph) -> list[str]:
    return [str(n.target) for n in graph.nodes if n.op == "call_module"]


# --- the tracer ------------------------------------------------------------------------------


def test_opaque_submodule_is_kept_and_reported() -> None:
    model = WithGate()
    with pytest.raises(Exception):  # noqa: B017 - whatever fx raises
        fx.symbolic_trace(model)
    traced = trace(model)
    assert call_targets(traced.graph) == ["fc", "gate", "head"]
    assert list(traced.opaque) == ["gate"]
    assert "TraceError" in traced.opaque["gate"]
    # traced on its own, the gate's forward fails too; its child traces
    assert "gate" in traced.failed and "TraceError" in traced.failed["gate"]
    assert list(traced.graphs) == ["", "gate.body"]
    assert "gate: kept opaque" in traced.describe()
    # the graph runs as the model does
    x = torch.randn(3, 4)
    torch.testing.assert_close(traced.graph_module()(x), model(x))


def test_trace_without_descend_stays_at_the_top() -> None:
    traced = trace(WithGate(), descend=False)
    assert list(traced.graphs) == [""] and list(traced.opaque) == ["gate"]
    assert traced.failed == {}


def test_untraceable_top_level_traces_its_children() -> None:
    model = Untraceable()
    traced = trace(model)
    assert traced.graph is None
    assert "" in traced.failed
    assert list(traced.graphs) == ["a", "b", "b.gate.body"]
    assert traced.opaque == {"b.gate": traced.opaque["b.gate"]}
    assert call_targets(traced.graphs["b"]) == ["fc", "gate", "head"]  # relative to "b"
    # without descend the caller learns that the model does not trace, and why
    flat = trace(model, descend=False)
    assert flat.graph is None and list(flat.failed) == [""] and not flat.graphs


def test_trace_does_not_change_the_model() -> None:
    model = WithGate().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trace(model)
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_tracer_keeps_a_module_stack_and_the_failure_location() -> None:
    tracer = Tracer()
    with pytest.raises(Exception):  # noqa: B017
        tracer.trace(WithGate())
    assert tracer.failed_at == "gate" and tracer.stack == []
    assert tracer.failure is not None
    prefixed = Tracer(prefix="b")
    with pytest.raises(Exception):  # noqa: B017
        prefixed.trace(WithGate())
    assert prefixed.failed_at == "b.gate"


class Scale(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * 2 + 1


class Holder(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seq = nn.Sequential(nn.Linear(3, 3), Scale())

    def forward(self, x: Tensor) -> Tensor:
        return self.seq(self.inner(x))


def test_leaf_rules() -> None:
    model = Holder(Scale())
    # plain torch.nn layers are leaves, containers and user modules are traced into
    assert call_targets(trace(model).graph) == ["seq.0"]
    # explicit names, instances and classes
    assert call_targets(trace(model, leaves=["inner"]).graph) == ["inner", "seq.0"]
    assert call_targets(trace(model, leaves=[model.seq[1]]).graph) == ["seq.0", "seq.1"]
    assert call_targets(trace(model, leaves=[Scale]).graph) == ["inner", "seq.0", "seq.1"]
    with pytest.raises(ConfigError):
        trace(model, leaves=[3])


def test_registered_leaf_class() -> None:
    class Packed(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.flip(-1)

    class SubPacked(Packed):
        pass

    model = Holder(SubPacked())
    assert "inner" not in call_targets(trace(model).graph)
    register_leaf(Packed)
    try:
        assert is_registered_leaf(SubPacked())
        assert call_targets(trace(model).graph) == ["inner", "seq.0"]
        with pytest.raises(ConfigError):
            register_leaf(int)  # type: ignore[arg-type]
    finally:
        tracer_module._LEAF_CLASSES.remove(Packed)
    assert not is_registered_leaf(SubPacked())


def test_a_class_with_its_own_cost_is_a_leaf_unless_asked_otherwise() -> None:
    class Compressed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(2, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(self.a(x))

    model = Holder(Compressed())
    assert call_targets(trace(model).graph) == ["inner.a", "inner.b", "seq.0"]
    costs.register_cost(Compressed)(lambda m, a, k, o: costs.LayerCost(macs=0))
    try:
        assert is_registered_leaf(model.inner)
        assert call_targets(trace(model).graph) == ["inner", "seq.0"]
        # e.g. quantizing a factorized model must see the factors
        see_inside = trace(model, costed_leaves=False).graph
        assert call_targets(see_inside) == ["inner.a", "inner.b", "seq.0"]
        # torch classes with a registered cost (the profiler's nn.Linear) are not "compressed"
        assert not is_registered_leaf(nn.Linear(2, 2))
    finally:
        costs._COSTS.pop(Compressed)


def test_hugging_face_layers_are_leaves_without_importing_transformers() -> None:
    class Conv1D(nn.Module):  # as transformers.pytorch_utils.Conv1D, weight (in, out)
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 5))

        def forward(self, x: Tensor) -> Tensor:
            return x @ self.weight

    Conv1D.__module__ = "transformers.pytorch_utils"
    model = Holder(nn.Identity())
    model.seq[1] = Conv1D()
    model.seq.append(nn.Identity())
    assert call_targets(trace(model).graph) == ["inner", "seq.0", "seq.1", "seq.2"]


@pytest.mark.hf
@pytest.mark.slow
def test_hugging_face_model_degrades_gracefully() -> None:
    pytest.importorskip("transformers")
    hf = pytest.importorskip("torchcompress.models.hf")
    try:
        model, tok = hf.load_minilm()
    except tc.errors.DependencyError as e:
        pytest.skip(str(e))
    traced = trace(model)
    assert traced.graph is None and traced.failed[""]  # BERT's own forward does not trace
    # ... but the parts that trace are there, each with its layers
    assert "pooler" in traced.graphs
    assert "encoder.layer.0.intermediate" in traced.graphs
    assert call_targets(traced.graphs["encoder.layer.0.intermediate"]) == ["dense"]
    batch = dict(tok(["A sentence.", "Another one."], padding=True, return_tensors="pt"))

    class Matmuls(Listener):
        def __init__(self) -> None:
            self.where: list[str] = []

        def on_op(self, event: OpEvent) -> None:
            if event.func in (torch.matmul, Tensor.matmul, Tensor.__matmul__):
                self.where.append(event.name)

    listener = Matmuls()
    with Recorder(model, [listener]):
        model(**batch)
    assert listener.where and all(w.endswith("attention.self") for w in listener.where)


# --- the recorder ----------------------------------------------------------------------------


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return torch.matmul(self.lin(x), torch.ones(4, 4))


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()
        self.shared = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        y = self.inner(x)
        a = self.shared(y)
        b = self.shared(a)  # called twice
        return torch.relu(y) + b * 2  # y used by two consumers (and shared's first call)


class Log(Listener):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, int]] = []
        self.ops: list[OpEvent] = []

    def on_module_enter(self, call) -> None:
        self.events.append(("enter", call.name, call.index))

    def on_module_exit(self, call) -> None:
        self.events.append(("exit", call.name, call.index))

    def on_op(self, event: OpEvent) -> None:
        self.ops.append(event)


def test_recorder_attributes_ops_to_nested_modules() -> None:
    model, log, x = Outer(), Log(), torch.randn(2, 4)
    with Recorder(model, [log]) as rec:
        out = model(x)
    assert log.events[:6] == [
        ("enter", "", 0),
        ("enter", "inner", 0),
        ("enter", "inner.lin", 0),
        ("exit", "inner.lin", 0),
        ("exit", "inner", 0),
        ("enter", "shared", 0),
    ]
    by_op = [(e.func_name, e.name) for e in log.ops if e.func_name != "ones"]
    assert by_op == [
        ("linear", "inner.lin"),
        ("matmul", "inner"),
        ("linear", "shared"),
        ("linear", "shared"),
        ("relu", ""),
        ("mul", ""),
        ("add", ""),
    ]
    assert [e.index for e in log.ops] == list(range(len(log.ops))) and rec.ops == len(log.ops)
    # the module stack at each op: the linear inside inner runs under inner
    lin = log.ops[0]
    assert lin.call.name == "inner.lin" and lin.call.parent.name == "inner"
    assert [c.name for c in lin.call.ancestors()] == ["inner", ""]
    src = rec.source(out)
    assert src.op.func_name == "add" and src.module == ""


def test_module_called_twice_and_tensor_used_twice() -> None:
    model, log, x = Outer(), Log(), torch.randn(2, 4)
    with Recorder(model, [log]):
        model(x)
    assert ("enter", "shared", 1) in log.events and ("exit", "shared", 1) in log.events
    first, second = (e for e in log.ops if e.func_name == "linear" and e.name == "shared")
    assert first.call.index == 0 and second.call.index == 1
    # the second call reads the first call's output
    assert second.inputs[0].source.calls[0] is first.call
    assert second.inputs[0].source.op is first
    # y (inner's output) feeds shared's first call and relu: two consumers, one source
    matmul = next(e for e in log.ops if e.func_name == "matmul")
    consumers = [e for e in log.ops if any(u.source and u.source.op is matmul for u in e.inputs)]
    assert [(e.func_name, e.name) for e in consumers] == [("linear", "shared"), ("relu", "")]
    y_source = consumers[0].inputs[0].source
    assert [c.name for c in y_source.calls] == ["inner"]
    # parameters and inputs are sources too
    weight = first.inputs[1]
    assert weight.where == (1,) and weight.source.param == "shared.weight"
    assert log.ops[0].inputs[0].source.input


def test_non_tensor_args_cat_and_split_are_kept() -> None:
    class CatSplit(nn.Module):
        def forward(self, a: Tensor, b: Tensor) -> Tensor:
            c = torch.cat([a, b], dim=1)
            p, q = torch.split(c, [2, 5], dim=1)
            r, s = c.chunk(2, 0)
            return p.sum() + q.flatten(1).mean() + r.size(0) + s.shape[0]

    log, model = Log(), CatSplit()
    a, b = torch.randn(2, 3), torch.randn(2, 4)
    with Recorder(model, [log]):
        model(a, b)
    cat, split, chunk = log.ops[0], log.ops[1], log.ops[2]
    assert cat.func is torch.cat and cat.kwargs == {"dim": 1}
    assert [(u.where, u.tensor is t) for u, t in zip(cat.inputs, (a, b))] == [
        ((0, 0), True),
        ((0, 1), True),
    ]
    assert [u.source.input for u in cat.inputs] == [True, True]
    assert split.args[1] == [2, 5] and split.kwargs == {"dim": 1}
    assert [tuple(t.shape) for t in split.outputs] == [(2, 2), (2, 5)]
    assert split.inputs[0].source.op is cat
    assert chunk.func_name == "chunk" and chunk.args[1:] == (2, 0)
    assert CONCAT in cat.categories and SPLIT in split.categories and SPLIT in chunk.categories
    names = [e.func_name for e in log.ops]
    assert "size" in names and "__get__" in names  # x.size(0) and x.shape, non-tensor calls
    size = next(e for e in log.ops if e.func_name == "size")
    shape = next(e for e in log.ops if e.func_name == "__get__")
    assert NON_TENSOR in size.categories and NON_TENSOR in shape.categories
    assert size.outputs == [] and size.args[1:] == (0,)


def test_parameter_reads_outside_their_owner() -> None:
    class Reads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm1d(3)

        def forward(self, x: Tensor) -> Tensor:
            return self.bn(x) + F.batch_norm(x, self.bn.running_mean, self.bn.running_var)

    log, model = Log(), Reads()
    with Recorder(model, [log]):
        model(torch.randn(4, 3))
    own, outside = (e for e in log.ops if e.func_name == "batch_norm")
    assert own.name == "bn" and own.param_reads == []
    assert outside.name == "" and outside.param_reads == [
        ("bn.running_mean", "bn"),
        ("bn.running_var", "bn"),
    ]


def _state(model: nn.Module) -> dict[str, tuple]:
    return {
        n: (m.training, dict(m._forward_hooks), dict(m._forward_pre_hooks), sorted(vars(m)))
        for n, m in model.named_modules()
    }


def test_hooks_removed_and_modes_restored_when_the_forward_raises() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(5, 2)).train()
    model[1].eval()
    before = _state(model)
    stats = model[1].running_mean.clone()
    rec = Recorder(model, [Log()])
    with pytest.raises(RuntimeError), rec:
        assert not model.training and torch.is_grad_enabled() is False
        model(torch.randn(2, 4))
    assert rec.where == "2" and [c.name for c in rec.stack] == ["", "2"]
    assert _state(model) == before
    assert torch.is_grad_enabled()
    assert not torch.overrides._get_current_function_mode_stack()
    torch.testing.assert_close(model[1].running_mean, stats, rtol=0, atol=0)
    # the recorder can run again, and refuses to be entered twice at once
    with rec:
        with pytest.raises(RuntimeError, match="already recording"):
            rec.__enter__()
        model[:2](torch.randn(2, 4))
    assert _state(model) == before

    # a listener that raises stops the forward the same way
    class Boom(Listener):
        def on_module_exit(self, call) -> None:
            raise ValueError("listener failed")

    with pytest.raises(ValueError, match="listener failed"), Recorder(model, [Boom()]):
        model(torch.randn(2, 4))
    assert _state(model) == before


def test_recorder_options_keep_train_mode_and_grad() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    with Recorder(model, eval=False, no_grad=False, sources=False) as rec:
        assert model.training and torch.is_grad_enabled()
        y = model(torch.randn(3, 2))
    assert y.requires_grad and rec.source(y) is None


def test_caught_failure_inside_a_module_is_reported_on_exit() -> None:
    class Fails(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            raise RuntimeError("inner failure")

    class Catches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fails = Fails()
            self.lin = nn.Linear(2, 2)

        def forward(self, x: Tensor) -> Tensor:
            try:
                return self.fails(x)
            except RuntimeError:
                return self.lin(x)

    seen = []

    class Failed(Listener):
        def on_module_exit(self, call) -> None:
            seen.append((call.name, call.failed))

    model = Catches()
    with Recorder(model, [Failed()]) as rec:
        model(torch.randn(1, 2))
    assert seen == [("lin", False), ("fails", True), ("", False)]
    assert rec.stack == []


def test_busy_listener_work_is_not_recorded() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    side = nn.Linear(3, 3)

    class Busy(Log):
        def on_module_enter(self, call) -> None:
            super().on_module_enter(call)
            torch.ones(3).sum()  # ops and a module call made by the listener itself
            side(torch.ones(1, 3))

        def on_op(self, event: OpEvent) -> None:
            super().on_op(event)
            torch.zeros(1) + 1

    log, x = Busy(), torch.randn(2, 3)
    with Recorder(model, [log]):
        model(x)
    assert [e.func_name for e in log.ops] == ["linear", "relu"]
    assert [n for kind, n, _ in log.events if kind == "enter"] == ["", "0", "1"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_scripted_modules_are_not_hooked() -> None:
    model = nn.Sequential(torch.jit.script(nn.Linear(2, 2)), nn.ReLU())
    log = Log()
    with Recorder(model, [log]):
        model(torch.randn(1, 2))
    assert [n for kind, n, _ in log.events if kind == "enter"] == ["", "1"]


# --- the op taxonomy -------------------------------------------------------------------------


class Zoo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU6()
        self.clip = nn.Hardtanh(-1.0, 1.0)
        self.pool = nn.MaxPool2d(2)
        self.pool_idx = nn.MaxPool2d(2, return_indices=True)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.conv(x))
        y = self.clip(self.act(y))
        z = F.pad(y, (1, 1, 1, 1))
        w = F.pad(y, (1, 1, 1, 1), mode="reflect")
        u = F.interpolate(self.pool(y), scale_factor=2.0)
        v = F.interpolate(self.pool(y), scale_factor=2.0, mode="bilinear")
        c = torch.cat([u, v], dim=1)
        parts = torch.split(c, 4, dim=1)
        flat = parts[0].view(x.size(0), -1)[:, :5]
        t = self.pool_idx(y)[0]
        return flat.sum() + z.mean() + w.mean() + t.mean() + y.add(1).mean()


def _fx_categories(model: nn.Module) -> dict[str, frozenset[str]]:
    graph = trace(model).graph
    return {n.name: OPS.of_node(n, model) for n in graph.nodes}


def test_taxonomy_on_fx_nodes() -> None:
    model = Zoo()
    cats = _fx_categories(model)
    assert {RELU, RELU_LIKE, ACTIVATION, ELEMENTWISE} <= cats["relu"]
    assert {RELU6, RELU_LIKE, ACTIVATION} <= cats["act"] and RELU not in cats["act"]
    assert ACTIVATION in cats["clip"] and RELU_LIKE not in cats["clip"]  # clips at -1
    assert ZERO_PAD in cats["pad"] and ZERO_PAD not in cats["pad_1"]
    assert {MAX_POOL, POOLING, INT_EXACT} <= cats["pool"]
    assert MAX_POOL in cats["pool_idx"] and INT_EXACT not in cats["pool_idx"]  # indices
    assert INT_EXACT in cats["interpolate"] and INT_EXACT not in cats["interpolate_1"]
    assert RANGE_PRESERVING in cats["interpolate_1"]  # bilinear stays within the input's range
    assert CONCAT in cats["cat"] and SPLIT in cats["split"]
    assert INDEX in cats["getitem"] and INT_EXACT in cats["getitem"]
    assert RESHAPE in cats["view"] and NON_TENSOR in cats["size"]
    assert ADD in cats["add"] and ELEMENTWISE in cats["add"]  # operator.add
    assert ADD in cats["add_3"]  # the method y.add(1)
    assert cats["x"] == frozenset() and cats["output"] == frozenset()
    # node_is and a dict of modules work the same
    graph = trace(model).graph
    node = next(n for n in graph.nodes if n.name == "act")
    assert OPS.node_is(node, RELU6, dict(model.named_modules()))


def test_taxonomy_on_recorded_ops_matches_fx() -> None:
    model = Zoo()
    log = Log()
    with Recorder(model, [log]):
        model(torch.randn(1, 3, 8, 8))
    cats = {}
    for e in log.ops:
        cats.setdefault(e.func_name, []).append(e.categories)
    assert RELU in cats["relu"][0] and RELU6 in cats["hardtanh"][0]  # nn.ReLU6 -> F.hardtanh
    assert RELU_LIKE not in cats["hardtanh"][1]  # Hardtanh(-1, 1)
    assert ZERO_PAD in cats["pad"][0] and ZERO_PAD not in cats["pad"][1]
    assert INT_EXACT in cats["max_pool2d"][0]
    assert MAX_POOL in cats["max_pool2d_with_indices"][0]
    assert INT_EXACT not in cats["max_pool2d_with_indices"][0]
    assert INT_EXACT in cats["interpolate"][0] and INT_EXACT not in cats["interpolate"][1]
    assert CONCAT in cats["cat"][0] and SPLIT in cats["split"][0]
    assert RESHAPE in cats["view"][0] and INDEX in cats["__getitem__"][0]
    assert ADD in cats["add"][0]
    # the same functions looked up directly
    assert OPS.op_is(torch.Tensor.view, RESHAPE)
    assert OPS.op_is(operator.getitem, INDEX)
    assert OPS.module_is(nn.ReLU(), RELU) and not OPS.module_is(nn.Hardtanh(), RELU6)
    assert OPS.module_is(nn.Hardtanh(0.0, 2.0), RELU6)


def test_categories_for_shape_following() -> None:
    """What channel pruning's dependency graph asks of recorded ops."""
    from torchcompress.tracing import (
        ALONG_DIM,
        ATTENTION,
        CAST,
        COMPARE,
        FACTORY,
        LIKE,
        LINEAR,
        MATMUL,
        PERMUTE,
        REDUCE,
    )

    log = Log()
    x = torch.randn(2, 3, 4)
    w = torch.randn(5, 4)
    with Recorder(nn.Identity(), [log]):
        x.transpose(1, 2)
        x.permute(0, 2, 1)
        _ = x.mT
        _ = x > 0
        x.to(torch.float64)
        x.softmax(-1)
        F.normalize(x, dim=-1)
        x.sum(-1)
        x.max(dim=1)
        torch.max(x, x)
        x @ x.transpose(-1, -2)
        F.linear(x, w)
        F.scaled_dot_product_attention(x, x, x)
        torch.zeros_like(x)
        x.new_zeros(3)
        x.norm(2, -1)
    cats = [(e.func_name, e.categories) for e in log.ops]
    got = dict(cats[:3] + cats[3:])
    assert PERMUTE in cats[0][1] and PERMUTE in cats[1][1] and PERMUTE in cats[2][1]
    assert COMPARE in got["gt"] and ELEMENTWISE in got["gt"]
    assert CAST in got["to"] and ALONG_DIM in got["softmax"] and ALONG_DIM in got["normalize"]
    assert REDUCE in got["sum"]
    maxes = [c for n, c in cats if n == "max"]
    assert REDUCE in maxes[0] and ELEMENTWISE not in maxes[0]
    assert ELEMENTWISE in maxes[1] and REDUCE not in maxes[1]  # max of two tensors
    assert MATMUL in got["matmul"] and LINEAR in got["linear"]
    assert ATTENTION in got["scaled_dot_product_attention"]
    assert LIKE in got["zeros_like"] and FACTORY in got["new_zeros"] and REDUCE in got["norm"]
    assert not OPS.op_is(torch.Tensor.size, PERMUTE)


def test_module_classes_match_exactly() -> None:
    class MyReLU(nn.ReLU):  # a subclass may compute something else
        def forward(self, x: Tensor) -> Tensor:
            return x

    assert not OPS.module_is(MyReLU(), RELU)


def test_taxonomy_is_registrable() -> None:
    class Swish(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x * torch.sigmoid(x)

    def gelu_tanh(x: Tensor) -> Tensor:
        return F.gelu(x, approximate="tanh")

    model = nn.Sequential(nn.Linear(2, 2), Swish())
    assert "custom" not in OPS.categories()
    OPS.register(ACTIVATION, Swish)
    OPS.register("custom", gelu_tanh, "my_method", when=lambda c: len(c.args) == 1)
    try:
        graph = trace(model, leaves=[Swish]).graph
        node = next(n for n in graph.nodes if n.target == "1")
        assert OPS.node_is(node, ACTIVATION, model)
        assert OPS.op_is(gelu_tanh, "custom", (torch.zeros(1),))
        assert not OPS.op_is(gelu_tanh, "custom", (torch.zeros(1), 2))
        assert "custom" in OPS.categories() and set(OPS.members("custom")) == {
            gelu_tanh,
            "my_method",
        }
        with pytest.raises(ConfigError):
            OPS.register("", gelu_tanh)
        with pytest.raises(ConfigError):
            OPS.register("custom", 3)
        with pytest.raises(ConfigError):
            OPS.register("custom")
    finally:
        OPS.remove(ACTIVATION, Swish)
        OPS.remove("custom", gelu_tanh, "my_method")
    assert not OPS.module_is(Swish(), ACTIVATION)
    assert OPS.of_op(lambda x: x) == frozenset()
    assert OPS.of_op({}.get) == frozenset()  # an unhashable-free builtin without entry


# --- QAT's ReLU-origin analysis as a listener (the replacement for quant/qat.py _ReluTracker) ---


class ReluOrigins(Listener):
    """Which layers read a ReLU's output (through ops that keep it in range) or the model's input."""

    def __init__(self, recorder: Recorder, names: list[str]) -> None:
        self.recorder, self.names = recorder, set(names)
        self.relu_ops: set[int] = set()
        self.seen: dict[str, str] = {}

    def _from_relu(self, src: Source | None) -> bool:
        return src is not None and src.op is not None and src.op.index in self.relu_ops

    def on_op(self, event: OpEvent) -> None:
        if not isinstance(event.output, Tensor):
            return
        cats = event.categories
        # the first argument's source as it was before this op (an op may return its input)
        first = event.inputs[0] if event.inputs and event.inputs[0].where == (0,) else None
        if RELU_LIKE in cats or (
            RANGE_PRESERVING in cats and first is not None and self._from_relu(first.source)
        ):
            self.relu_ops.add(event.index)

    def on_module_enter(self, call) -> None:
        if call.name in self.names:
            x = call.args[0] if call.args else None
            src = self.recorder.source(x)
            kind = "input" if src is not None and src.input else "other"
            self.seen.setdefault(call.name, "relu" if self._from_relu(src) else kind)


def relu_origins(model: nn.Module, names: list[str], x: Tensor) -> dict[str, str]:
    rec = Recorder(model)
    listener = ReluOrigins(rec, names)
    rec.listeners.append(listener)
    with rec:
        model(x)
    return listener.seen


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 4, 1)
        self.act6 = nn.ReLU6()
        self.fc = nn.Linear(4, 2)
        self.fc2 = nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = F.max_pool2d(F.relu(self.conv1(x)), 2)
        z = self.conv2(y)
        w = self.conv3(self.act6(z).contiguous())
        v = F.adaptive_avg_pool2d(w.relu(), 1).flatten(1)
        return self.fc2(torch.tanh(self.fc(v)))


def test_relu_origins_listener() -> None:
    model = SmallCNN()
    names = ["conv1", "conv2", "conv3", "fc", "fc2"]
    origins = relu_origins(model, names, torch.randn(2, 3, 8, 8))
    assert origins == {
        "conv1": "input",
        "conv2": "relu",
        "conv3": "relu",
        "fc": "relu",
        "fc2": "other",
    }


# --- docs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", ".ops", ".op_table", ".tracer", ".recorder"])
def test_docstring_examples(name: str) -> None:
    mod = importlib.import_module("torchcompress.tracing" + name)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
