"""What one trial asks for, and how many trials fit the nodes at once.

A one-worker trial is one Tune function trainable holding ``cpus_per_worker`` CPUs and
``gpus_per_worker`` GPUs (it runs the pipeline itself). A DDP trial is a trainable (a sliver
of a CPU: it only waits on its Train run) plus ``workers`` Train worker bundles of that size. :func:`check_resources` rejects what no node can provide; :func:`concurrency` packs
whole trials onto a cluster's nodes; :func:`embedded_cpus` sizes an embedded Ray so the
trials fit. This module never imports Ray (nor torch, unless GPUs are counted).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from s2ap.coerce import Checked, bounded
from s2ap.errors import ConfigError

# The Tune function trainable only waits on its Train run; it reserves a sliver of a CPU
# (Tune refuses zero) so Train's worker bundles, not trainables, decide what fits.
TRAINABLE_CPUS = 0.01
_EPS = 1e-9

Node = Mapping[str, float]  # a node's resources as Ray reports them: {"CPU": 8.0, "GPU": 1.0}
_BUILTIN = ("CPU", "GPU", "memory", "object_store_memory")


@dataclass(frozen=True)
class Resources(Checked):
    """What one trial's Ray Train run asks for."""

    workers: int = bounded(1, ge=1)
    cpus_per_worker: float = bounded(1.0, gt=0)
    gpus_per_worker: float = bounded(0.0, ge=0)
    # Custom Ray resources each worker also needs, e.g. {"trial_node": 1}: only nodes that
    # declare them (ray start --resources '{"trial_node": 4}') run trials.
    custom_per_worker: dict[str, float] = field(default_factory=dict)

    def check(self) -> None:
        # A rank trains on exactly one device: a share of a GPU only works alone (two ranks
        # on one GPU: NCCL refuses), and a second GPU per worker would sit idle.
        if self.workers > 1 and 0 < self.gpus_per_worker < 1:
            raise ConfigError(
                "gpus_per_worker",
                f"{self.gpus_per_worker:g} GPUs per worker with {self.workers} workers would put two ranks "
                "on one GPU (NCCL refuses): use 1 GPU per worker, or a share of a GPU with 1 worker",
            )
        if self.gpus_per_worker > 1:
            raise ConfigError(
                "gpus_per_worker",
                f"each worker trains on one GPU, got {self.gpus_per_worker:g}: "
                "use 1 and more workers (resources.workers) for more GPUs per trial",
            )
        for name, amount in self.custom_per_worker.items():
            if name in _BUILTIN or not name:
                raise ConfigError(
                    f"custom_per_worker.{name}",
                    f"{name!r} is not a custom resource: use cpus_per_worker / gpus_per_worker",
                )
            if not amount > 0:
                raise ConfigError(f"custom_per_worker.{name}", f"must be > 0, got {amount}")

    def per_worker(self) -> dict[str, float]:
        """One worker's Ray resource request (zero amounts left out)."""
        wants = {"CPU": self.cpus_per_worker, "GPU": self.gpus_per_worker, **self.custom_per_worker}
        return {k: float(v) for k, v in wants.items() if v > 0}

    @property
    def trial_cpus(self) -> float:
        return self.workers * self.cpus_per_worker

    @property
    def driver_cpus(self) -> float:
        """What the trainable asks for besides the workers: nothing when it is the worker."""
        return 0.0 if self.workers == 1 else TRAINABLE_CPUS

    @property
    def trial_gpus(self) -> float:
        return self.workers * self.gpus_per_worker


class Plan(Protocol):
    """What packing needs to know of a search (a :class:`~s2ap.tune.spec.SearchSpec`)."""

    @property
    def resources(self) -> Resources: ...

    @property
    def max_concurrent(self) -> int | None: ...

    def num_trials(self) -> int: ...


def local_nodes() -> list[dict[str, float]]:
    """This machine as the one node an embedded Ray instance will have."""
    return [{"CPU": float(os.cpu_count() or 1), "GPU": float(_local_gpus())}]


def _local_gpus() -> int:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return 0
    try:
        import torch  # lazily: slow to import, and only needed when GPUs are asked for
    except ImportError:  # pragma: no cover
        return 0
    return torch.cuda.device_count()


def _worker_slots(node: Node, res: Resources) -> int:
    wants = res.per_worker()
    return max(min(math.floor(float(node.get(k, 0.0)) / v + _EPS) for k, v in wants.items()), 0)


def check_resources(plan: Plan, nodes: Sequence[Node], *, embedded: bool = False) -> None:
    """Reject resources no node can provide. ``embedded``: the nodes will be sized to fit,
    so only one worker's bundle must fit a node; on a cluster one trial's workers must fit."""
    res = plan.resources
    if res.gpus_per_worker > 0 and not any(float(n.get("GPU", 0)) >= res.gpus_per_worker for n in nodes):
        have = max((float(n.get("GPU", 0)) for n in nodes), default=0.0)
        raise ConfigError(
            "resources.gpus_per_worker",
            f"{res.gpus_per_worker:g} GPUs per worker, but no node has more than {have:g}; "
            "use 0 to train on CPU",
        )
    cpus = max((float(n.get("CPU", 0)) for n in nodes), default=0.0)
    if res.cpus_per_worker > cpus:
        raise ConfigError(
            "resources.cpus_per_worker",
            f"{res.cpus_per_worker:g} CPUs per worker, but no node has more than {cpus:g}",
        )
    for name, amount in res.custom_per_worker.items():
        have = max((float(n.get(name, 0)) for n in nodes), default=0.0)
        if have + _EPS < amount:
            where = (
                "this machine's embedded Ray has none (join a cluster whose nodes declare it)"
                if embedded
                else (f"no node has more than {have:g}")
            )
            raise ConfigError(
                f"resources.custom_per_worker.{name}", f"{amount:g} {name!r} per worker, but {where}"
            )
    if not embedded:
        slots = sum(_worker_slots(n, res) for n in nodes)
        if slots < res.workers:
            raise ConfigError(
                "resources.workers",
                f"{res.workers} workers of {res.cpus_per_worker:g} CPUs / {res.gpus_per_worker:g} GPUs "
                f"do not fit this cluster (room for {slots}); ask for at most {slots}",
            )


def _place_trial(free: list[dict[str, float]], res: Resources) -> list[dict[str, float]] | None:
    """``free`` (resources per node) after placing one whole trial first-fit, or None."""
    after = [dict(f) for f in free]
    wants = res.per_worker()
    for _ in range(res.workers):
        for f in sorted(after, key=lambda f: f.get("CPU", 0.0)):
            if all(f.get(k, 0.0) + _EPS >= v for k, v in wants.items()):
                for k, v in wants.items():
                    f[k] = f.get(k, 0.0) - v
                break
        else:
            return None
    host = max(after, key=lambda f: f.get("CPU", 0.0))
    if host.get("CPU", 0.0) + _EPS < res.driver_cpus:
        return None
    host["CPU"] = host.get("CPU", 0.0) - res.driver_cpus
    return after


def concurrency(plan: Plan, nodes: Sequence[Node]) -> int:
    """How many trials can run at once without any trial's workers waiting for another's.

    Places whole trials (trainable sliver + every worker bundle) first-fit on the nodes and
    stops at the first trial that does not fit, so Tune never starts a trial whose Train
    worker group would sit waiting for resources (and time out) behind running ones.
    """
    free = [{k: float(v) for k, v in n.items()} for n in nodes]
    cap = plan.max_concurrent or plan.num_trials()
    placed = 0
    while placed < cap:
        after = _place_trial(free, plan.resources)
        if after is None:
            break
        free, placed = after, placed + 1
    return placed


def embedded_cpus(plan: Plan) -> tuple[int, int]:
    """(logical CPUs for an embedded Ray, concurrent trials). Logical CPUs are generous: a
    2-core laptop still runs a 2-worker trial, oversubscribed rather than deadlocked."""
    cores = os.cpu_count() or 1
    per_trial = plan.resources.trial_cpus
    conc = plan.max_concurrent or max(1, int(cores // per_trial))
    conc = max(1, min(conc, plan.num_trials()))
    need = math.ceil(conc * per_trial + conc * plan.resources.driver_cpus)
    return max(cores, need), conc
