"""The one ``torch.fx`` tracer of torchcompress: :class:`Tracer` and :func:`trace`.

Leaf rules (a leaf is one ``call_module`` node; its forward is not traced into):

1. the leaves a client names: qualified module names, module instances or classes
   (``isinstance``);
2. classes registered with :func:`register_leaf` (the compression families register the modules
   that must never be traced into, e.g. fake-quantizers), and their subclasses;
3. with ``costed_leaves`` (the default), a class that has its own registered cost
   (:func:`torchcompress.costs.register_cost`) and is not a torch class: a compressed layer is one
   op. A client that must see inside compressed layers (quantizing a factorized model) passes
   ``costed_leaves=False``;
4. plain ``torch.nn`` layers (``torch.nn`` / ``torch.ao.nn`` classes other than the containers
   ``Sequential``, ``ModuleList``, ``ModuleDict``), parametrized layers included;
5. Hugging Face layer classes (``transformers.pytorch_utils``, e.g. GPT-2's ``Conv1D``), detected
   by module name, without importing transformers.

:func:`trace` keeps a submodule whose forward does not trace (data-dependent control flow, a
Hugging Face attention block) as an opaque call and retries, so one untraceable block does not hide
the rest of the model; with ``descend`` it then traces each opaque part on its own, and where a
module's own forward does not trace (a Hugging Face model's top level), its children. The result
(:class:`Traced`) says which parts are opaque and why.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torchcompress.tracing import trace
    >>> class Gate(nn.Module):
    ...     def forward(self, x):
    ...         return x if x.sum() > 0 else -x  # data-dependent: fx cannot trace it
    >>> model = nn.Sequential(nn.Linear(4, 4), Gate(), nn.ReLU())
    >>> traced = trace(model)
    >>> [n.target for n in traced.graph.nodes if n.op == "call_module"]
    ['0', '1', '2']
    >>> list(traced.opaque)
    ['1']
    >>> traced.failed["1"].startswith("TraceError")
    True
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx
from torch import nn

from ..costs import registered_cost_types
from ..errors import ConfigError

__all__ = ["LeafSpec", "Traced", "Tracer", "is_registered_leaf", "register_leaf", "trace"]

log = logging.getLogger(__name__)

#: what a client may name as a leaf: a qualified module name, a module instance or a module class
LeafSpec = str | nn.Module | type

_LEAF_CLASSES: list[type[nn.Module]] = []
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def register_leaf(cls: type[nn.Module]) -> type[nn.Module]:
    """Register ``cls`` (and its subclasses) as a leaf of every trace; usable as a decorator.

    Families register the modules that must never be traced into (quantizers, integer layers);
    torchcompress's own tracer and recorder-based analyses then treat them as one op.

    Raises:
        ConfigError: ``cls`` is not an ``nn.Module`` subclass.

    Example:
        >>> from torch import nn
        >>> from torchcompress.tracing import is_registered_leaf, register_leaf
        >>> @register_leaf
        ... class Packed(nn.Module):
        ...     def forward(self, x):
        ...         return x
        >>> is_registered_leaf(Packed())
        True
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"register_leaf needs an nn.Module subclass, got {cls!r}.")
    if cls not in _LEAF_CLASSES:
        _LEAF_CLASSES.append(cls)
    return cls


def _is_torch_class(cls: type) -> bool:
    return cls.__module__.startswith("torch.")


def is_registered_leaf(module: nn.Module, *, costed: bool = True) -> bool:
    """Whether ``module`` is a leaf by registration (rules 2 and 3 of the module documentation).

    Args:
        module: the module.
        costed: also count classes with their own registered cost that are not torch classes
            (modules made by a compression family).
    """
    cls = type(module)
    if any(issubclass(cls, c) for c in _LEAF_CLASSES):
        return True
    return costed and not _is_torch_class(cls) and cls in registered_cost_types()


def _is_torch_layer(module: nn.Module) -> bool:
    mod = type(module).__module__
    return mod.startswith(("torch.nn", "torch.ao.nn")) and not isinstance(module, _CONTAINERS)


def _is_hf_layer(module: nn.Module) -> bool:
    return type(module).__module__ == "transformers.pytorch_utils"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 200:
        first = first[:197] + "..."
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


class Tracer(fx.Tracer):
    """``torch.fx.Tracer`` with torchcompress's leaf rules, a module stack and the failure location.

    Args:
        leaves: extra leaves: qualified module names (relative to the model, ``prefix`` included),
            module instances or module classes (``isinstance``).
        prefix: the qualified name of the module being traced within the model (``""``: the model),
            so that names in ``leaves``, :attr:`stack` and :attr:`failed_at` are the model's.
        costed_leaves: treat classes with their own registered cost (compressed layers) as leaves.

    Attributes:
        stack: qualified names of the modules being traced into, outermost first.
        failed_at: the innermost module whose forward raised while tracing (``None``: the traced
            module's own code raised, or nothing did).
        failure: the exception raised there.
    """

    def __init__(
        self, leaves: Iterable[LeafSpec] = (), *, prefix: str = "", costed_leaves: bool = True
    ) -> None:
        super().__init__()
        self.prefix = prefix
        self.costed_leaves = costed_leaves
        self.leaf_names: set[str] = set()
        self.leaf_ids: set[int] = set()
        classes: list[type] = []
        for leaf in leaves:
            if isinstance(leaf, str):
                self.leaf_names.add(leaf)
            elif isinstance(leaf, nn.Module):
                self.leaf_ids.add(id(leaf))
            elif isinstance(leaf, type) and issubclass(leaf, nn.Module):
                classes.append(leaf)
            else:
                raise ConfigError(
                    f"A leaf is a module name, a module or an nn.Module class, got {leaf!r}."
                )
        self.leaf_types: tuple[type, ...] = tuple(classes)
        self.stack: list[str] = []
        self.failed_at: str | None = None
        self.failure: BaseException | None = None

    def is_leaf(self, module: nn.Module, name: str) -> bool:
        """Whether the module called ``name`` (qualified within the model) is a leaf."""
        return (
            name in self.leaf_names
            or id(module) in self.leaf_ids
            or isinstance(module, self.leaf_types)
            or is_registered_leaf(module, costed=self.costed_leaves)
            or _is_torch_layer(module)
            or _is_hf_layer(module)
        )

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """torch.fx's hook: :meth:`is_leaf` on the name within the model."""
        return self.is_leaf(m, _join(self.prefix, module_qualified_name))

    def call_module(
        self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Trace a module call, keeping :attr:`stack` and recording where tracing failed."""
        try:
            name = _join(self.prefix, self.path_of_module(m))
        except NameError:  # not a submodule of the root: torch.fx raises the same error
            return super().call_module(m, forward, args, kwargs)
        self.stack.append(name)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as e:
            if self.failed_at is None:
                self.failed_at, self.failure = name, e
            raise
        finally:
            self.stack.pop()


@dataclass
class Traced:
    """What :func:`trace` saw of a model.

    Attributes:
        model: the traced model.
        graphs: qualified name -> the graph of that module's forward, in tracing order (``""``: the
            model; other entries: parts traced on their own because they are opaque in their parent's
            graph or their parent's own forward does not trace). Node targets are relative to that
            module, as in any graph of it.
        opaque: qualified name -> why that module is an opaque call in its parent's graph (its
            forward did not trace inside the parent).
        failed: qualified name -> why that module's own forward did not trace when traced on its
            own: the model, and with ``descend`` the opaque parts and the children tried in turn.
        leaves: the leaf names and classes the client asked for (passed on to :class:`Tracer`).
        costed_leaves: as passed to :func:`trace`.
    """

    model: nn.Module
    graphs: dict[str, fx.Graph] = field(default_factory=dict)
    opaque: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    leaves: tuple[LeafSpec, ...] = ()
    costed_leaves: bool = True
    _rules: Tracer | None = field(default=None, init=False, repr=False)

    @property
    def graph(self) -> fx.Graph | None:
        """The graph of the whole model, or ``None`` when its own forward does not trace."""
        return self.graphs.get("")

    def graph_module(self, root: str = "") -> fx.GraphModule:
        """A runnable ``GraphModule`` of the graph traced for ``root``.

        Raises:
            KeyError: nothing was traced for ``root`` (see :attr:`failed`).
        """
        return fx.GraphModule(self.model.get_submodule(root), self.graphs[root])

    def is_leaf(self, name: str) -> bool:
        """Whether module ``name`` is a leaf (by the rules, or kept opaque) in this trace."""
        if name in self.opaque:
            return True
        if self._rules is None:
            self._rules = Tracer(self.leaves, costed_leaves=self.costed_leaves)
        return self._rules.is_leaf(self.model.get_submodule(name), name)

    def describe(self) -> str:
        """The opaque and untraceable parts, one per line (empty when everything traced)."""
        lines = [f"{n or '(model)'}: kept opaque ({why})" for n, why in self.opaque.items()]
        lines += [
            f"{n or '(model)'}: does not trace ({why})"
            for n, why in self.failed.items()
            if n not in self.opaque
        ]
        return "\n".join(lines)


def _trace_one(
    root: nn.Module, root_name: str, leaves: tuple[LeafSpec, ...], costed: bool
) -> tuple[fx.Graph | None, dict[str, str], str]:
    """Trace one module, keeping failing submodules opaque: ``(graph or None, opaque, reason)``."""
    extra: list[str] = []
    opaque: dict[str, str] = {}
    for _ in range(sum(1 for _ in root.modules()) + 1):
        tracer = Tracer((*leaves, *extra), prefix=root_name, costed_leaves=costed)
        try:
            return tracer.trace(root), opaque, ""
        except Exception as e:  # whatever fx cannot follow
            culprit = tracer.failed_at
            if culprit is None or culprit == root_name or culprit in extra:
                return None, {}, _reason(e)
            culprit_module = root.get_submodule(
                culprit[len(root_name) + 1 :] if root_name else culprit
            )
            if tracer.is_leaf(culprit_module, culprit):
                return None, {}, _reason(e)
            log.debug("keeping %r as an opaque call (%s)", culprit, e)
            extra.append(culprit)
            opaque[culprit] = _reason(tracer.failure or e)
    return None, {}, "too many untraceable submodules"


def trace(
    model: nn.Module,
    leaves: Iterable[LeafSpec] = (),
    *,
    descend: bool = True,
    costed_leaves: bool = True,
) -> Traced:
    """Trace ``model`` with :class:`Tracer`, keeping submodules that do not trace as opaque calls.

    Args:
        model: the model (not modified).
        leaves: extra leaves (qualified names, module instances or classes).
        descend: also trace each opaque submodule on its own, and the children of a module whose own
            forward does not trace (the model's included), recursively; otherwise only the model.
        costed_leaves: see :class:`Tracer`.

    Returns:
        A :class:`Traced`; ``traced.graph`` is ``None`` when the model's own forward does not trace.
    """
    leaves = tuple(leaves)
    traced = Traced(model=model, leaves=leaves, costed_leaves=costed_leaves)
    rules = Tracer(leaves, costed_leaves=costed_leaves)
    queue = [""]
    while queue:
        root_name = queue.pop(0)
        root = model.get_submodule(root_name)
        graph, opaque, reason = _trace_one(root, root_name, leaves, costed_leaves)
        if graph is None:
            traced.failed[root_name] = reason
            if descend:
                for child_name, child in root.named_children():
                    full = _join(root_name, child_name)
                    if not rules.is_leaf(child, full):
                        queue.append(full)
            continue
        traced.graphs[root_name] = graph
        traced.opaque.update(opaque)
        if descend:
            queue.extend(sorted(opaque))
    return traced
