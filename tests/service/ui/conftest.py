"""What the web page's tests share: the app on a real uvicorn server on a loopback port (a
fake cluster, so no training starts), a job that "finished" by having the search's own
writers put its two tables where the search would, and a signed-in HTTP client.

The finished search is quickstart-shaped: grid ``s2ap.enabled: [false, true]``, gamma and
warm-up searched; the Orig. cell ran one trial, the S2AP cell four (three finished, one
stopped early by ASHA after two pruning epochs). Every accuracy carries its n and interval,
made by :func:`s2ap.results.with_intervals` as a real run's row is.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from s2ap import results, storage
from s2ap.tune.results import epochs_schema, to_table, trials_schema
from service import Settings, create_app
from tests.helpers.service import FakeRunner, ThreadedServer
from tests.helpers.specs import tiny_search

TOKEN = "ui-test-token-3f9a"
SEARCH = "ui-quick"
SPEC: dict[str, Any] = tiny_search(
    {"prune.epochs": 3, "prune.sparsity": 0.9},
    name=SEARCH,
    grid={"s2ap.enabled": [False, True]},
    search={"s2ap.gamma": {"type": "loguniform", "low": 0.001, "high": 0.02}},
    num_samples=4,
)
# (trial id, grid cell, gamma, warm-up, status, final val PGD, test clean, test robust)
TRIALS = [
    ("t0-orig", 0, None, None, "ok", 0.61, 0.90, 0.58),
    ("t1-s2ap", 1, 0.002, 1, "ok", 0.66, 0.91, 0.63),
    ("t2-s2ap", 1, 0.011, 2, "ok", 0.70, 0.89, 0.62),
    ("t3-s2ap", 1, 0.0045, 1, "ok", 0.64, 0.92, 0.64),
    ("t4-s2ap", 1, 0.018, 1, "stopped", None, None, None),
]
VAL_N, TEST_N = 100, 360
PRUNE_EPOCHS = 3


def trial_row(
    tid: str,
    cell: int,
    gamma: float | None,
    warmup: int | None,
    status: str,
    val_pgd: float | None,
    clean: float | None,
    robust: float | None,
) -> dict[str, Any]:
    on = cell == 1
    done = status == "ok"
    row = {
        "trial_id": tid,
        "search": SEARCH,
        "grid_cell": cell,
        "cell_key": f"s2ap.enabled={on}",
        "status": status,
        "stopped_early": status == "stopped",
        "epochs_run": 6 if done else 3,
        "search_epochs_run": 4 if done else 2,
        "attempts": 1,
        "config_hash": f"hash-{tid}",
        "seed": 0,
        "code_version": results.code_version(),
        "model": "cnn",
        "dataset": "digits",
        "method": "hydra",
        "granularity": "weight",
        "objective": "trades",
        "sparsity": 0.9,
        "s2ap": on,
        "gamma": gamma,
        "warmup_epochs": warmup,
        "prune_epochs": PRUNE_EPOCHS,
        "s2ap_enabled": on,
        "s2ap_gamma": gamma,
        "s2ap_warmup_epochs": warmup,
        "prune_sparsity": 0.9,
    }
    if done:
        row.update(
            {
                "clean_acc": clean,
                "clean_acc_n": TEST_N,
                "pgd_acc": robust,
                "pgd_acc_n": TEST_N,
                "robust_acc": robust,
                "robust_acc_n": TEST_N,
                "robust_attack": "pgd",
                "final_val_pgd_acc": val_pgd,
                "final_val_pgd_acc_n": VAL_N,
                "final_val_clean_acc": (val_pgd or 0) + 0.2,
                "final_val_clean_acc_n": VAL_N,
                "hamming": hamming(cell, gamma, PRUNE_EPOCHS),
                "density": 0.1,
            }
        )
    return results.with_intervals(row)


def hamming(cell: int, gamma: float | None, epochs: int) -> list[float]:
    slope = 0.05 if cell == 0 else 0.05 - 10 * (gamma or 0) / 10
    return [round(slope * e, 4) for e in range(epochs)]


def epoch_rows(
    tid: str, cell: int, gamma: float | None, status: str, val_pgd: float | None
) -> list[dict[str, Any]]:
    """pretrain 0, prune 0..2, finetune 0 (a stopped trial: pretrain, prune 0..1)."""
    phases = [("pretrain", 0)] + [("prune", e) for e in range(PRUNE_EPOCHS)] + [("finetune", 0)]
    if status == "stopped":
        phases = phases[:3]
    end = val_pgd if val_pgd is not None else 0.45
    rows = []
    for i, (phase, epoch) in enumerate(phases):
        acc = round(end - 0.04 * (len(phases) - 1 - i), 4)
        rows.append(
            {
                "trial_id": tid,
                "search": SEARCH,
                "grid_cell": cell,
                "global_epoch": i + 1,
                "search_epoch": i,
                "config_hash": f"hash-{tid}",
                "seed": 0,
                "code_version": results.code_version(),
                "phase": phase,
                "epoch": epoch,
                "train_loss": 1.0 - 0.1 * i,
                "val_clean_acc": acc + 0.2,
                "val_clean_acc_n": VAL_N,
                "val_pgd_acc": acc,
                "val_pgd_acc_n": VAL_N,
                "hamming": hamming(cell, gamma, epoch + 1)[-1] if phase == "prune" else None,
                "s2ap_active": cell == 1 and phase == "prune" and epoch >= 1,
            }
        )
    return rows


def write_finished_search(results_dir: str | Path) -> None:
    """Both tables, as the search writes them (its schemas; a local folder or a storage URI)."""
    trials = [trial_row(*t) for t in TRIALS]
    epochs = [
        r
        for tid, cell, gamma, _, status, val, _, _ in TRIALS
        for r in epoch_rows(tid, cell, gamma, status, val)
    ]
    storage.write_table(to_table(trials, trials_schema()), storage.join(results_dir, "trials.parquet"))
    storage.write_table(to_table(epochs, epochs_schema()), storage.join(results_dir, "epochs.parquet"))


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Service:
    """The running app and what its tests need (test modules cannot import this conftest)."""

    url: str
    fake: FakeRunner
    data_dir: Path
    token: str = TOKEN
    search_name: str = SEARCH
    trial_ids: tuple[str, ...] = tuple(t[0] for t in TRIALS)
    storage: str | None = None  # S2AP_STORAGE, when job results live outside the data dir

    @staticmethod
    def spec(**changes: Any) -> dict[str, Any]:
        return {**copy.deepcopy(SPEC), **changes}

    @staticmethod
    def csrf_of(html: str) -> str:
        found = CSRF.search(html)
        assert found, "the page has no CSRF field"
        return found.group(1)

    @contextmanager
    def sign_in(self) -> Iterator[httpx.Client]:
        """A browser-like client (no bearer header) signed in with the service token."""
        with httpx.Client(base_url=self.url, timeout=60, follow_redirects=False) as client:
            r = client.post("/ui/login", data={"token": TOKEN, "next": "/ui"})
            assert r.status_code == 303, r.text
            yield client

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)

    def submit(self, spec: dict[str, Any] | None = None) -> str:
        with self.api() as c:
            r = c.post("/jobs", json=spec or SPEC)
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

    def results_dir(self, job_id: str) -> str:
        """Where the job's stored spec says its search writes (its storage, then its name)."""
        with self.api() as c:
            spec = c.get(f"/jobs/{job_id}").json()["spec"]
        return storage.join(spec["storage"], spec["name"])

    def finish(self, job_id: str) -> None:
        """The job's tables written, its Ray job succeeded, and the poller has seen both."""
        write_finished_search(self.results_dir(job_id))
        self.fake.finish(job_id)
        self.wait(job_id, lambda j: j["status"] == "succeeded" and j["trials"]["done"] == len(TRIALS))

    def wait(
        self, job_id: str, ready: Callable[[dict[str, Any]], bool], timeout_s: float = 60
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self.api() as c:
            while True:
                job = c.get(f"/jobs/{job_id}").json()
                if ready(job) or time.monotonic() > deadline:
                    return job
                time.sleep(0.05)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    fake = FakeRunner()
    app = create_app(Settings(api_token=TOKEN, data_dir=tmp_path, poll_interval_s=0.05), runner=fake)
    with ThreadedServer(app) as srv:
        yield Service(srv.url, fake, tmp_path)


@pytest.fixture
def s3_service(tmp_path: Path, s3_bucket: str) -> Iterator[Service]:
    """The same app with S2AP_STORAGE on moto's S3 server: job results live in the bucket."""
    fake = FakeRunner()
    where = f"{s3_bucket}/service"
    settings = Settings(api_token=TOKEN, data_dir=tmp_path, poll_interval_s=0.05, storage=where)
    with ThreadedServer(create_app(settings, runner=fake)) as srv:
        yield Service(srv.url, fake, tmp_path, storage=where)
