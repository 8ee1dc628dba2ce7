"""The Ray a search runs on: start an embedded one, join a cluster, size the concurrency.

:func:`connect` uses a Ray that is already initialised, else joins ``address``, else starts
a single-node Ray for this process (:func:`start_local_ray`), then checks the spec's
resources against the nodes it found and says how many trials may run at once.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import ray

from s2ap.errors import ConfigError
from s2ap.tune.resources import check_resources, concurrency, embedded_cpus
from s2ap.tune.spec import SearchSpec

log = logging.getLogger(__name__)

# Environment of every Ray process of the search. Train's controller polls its workers at
# this interval; the default 2 s would add up to 2 s to each epoch's report. A one-worker
# trial runs the pipeline in its Tune actor: it keeps the process's working directory (as
# Train workers do), so relative paths in a config (data.root) mean the same on both paths.
WORKER_ENV = {
    "RAY_TRAIN_V2_ENABLED": "1",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
}


def runtime_env(address: str | None = None) -> dict[str, Any]:
    """The job-level runtime env a search needs; pass it to ``ray.init`` when you start or
    join Ray yourself (tests, notebooks).

    ``address`` becomes ``RAY_ADDRESS`` in every Ray process of the job. Train's
    PlacementGroupCleaner (which frees a trial's worker resources when Tune kills the
    trial, e.g. an ASHA stop) queries the state API without an address; on a machine that
    runs more than one Ray instance that lookup fails, the cleaner dies, the stopped trial's
    placement group is never released, and the next trials wait for CPUs forever.
    """
    env = dict(WORKER_ENV)
    if address and not address.startswith("ray://") and address not in ("auto", "local"):
        env["RAY_ADDRESS"] = address
    return {"env_vars": env}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def start_local_ray(num_cpus: int, *, verbose: bool = False) -> str:
    """Start a new single-node Ray for this process (never joining another instance on the
    machine) whose processes all know its address. Returns the GCS address."""
    port = _free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"
    saved = os.environ.get("RAY_GCS_SERVER_PORT")
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)  # fixes the address before it starts
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            runtime_env=runtime_env(address),
            log_to_driver=verbose,
            logging_level=logging.WARNING,
        )
    finally:
        if saved is None:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
        else:
            os.environ["RAY_GCS_SERVER_PORT"] = saved
    actual = ray.get_runtime_context().gcs_address
    if actual != address:
        log.warning("Ray started at %s, not %s: placement-group cleanup may not find it", actual, address)
    return actual


def join_ray(address: str, *, verbose: bool = False) -> None:
    """Join an existing cluster (``host:port``, ``auto`` or ``ray://``)."""
    ray.init(
        address=address,
        runtime_env=runtime_env(address),
        log_to_driver=verbose,
        logging_level=logging.WARNING,
    )


def cluster_nodes() -> list[dict[str, float]]:
    """The resources of every live node."""
    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def connect(spec: SearchSpec, address: str | None, verbose: bool) -> tuple[bool, int]:
    """Join (or start) Ray. Returns (started here, concurrent trials); a Ray started here is
    shut down again when the spec does not fit it."""
    if ray.is_initialized():
        started = False
    elif address:
        join_ray(address, verbose=verbose)
        started = True
    else:
        start_local_ray(embedded_cpus(spec)[0], verbose=verbose)
        started = True
    nodes = cluster_nodes()
    embedded = started and not address
    try:
        check_resources(spec, nodes, embedded=embedded)
        conc = embedded_cpus(spec)[1] if embedded else concurrency(spec, nodes)
        if spec.max_concurrent is not None:
            conc = min(conc, spec.max_concurrent)
        if conc < 1:
            raise ConfigError(
                "resources",
                f"one trial ({spec.resources.workers} x {spec.resources.cpus_per_worker:g} CPUs + "
                f"{spec.resources.driver_cpus:g} for its driver) does not fit this cluster",
            )
    except ConfigError:
        if started:
            ray.shutdown()
        raise
    return started, conc
