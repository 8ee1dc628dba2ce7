"""Least privilege for the embedded Ray head: the environment it, and everything it starts
(raylet, workers, each job's driver, the trials), gets is built from an allowlist.

Trials run user-named model code (``S2AP_ALLOWED_MODEL_MODULES``, torchvision, timm), and
every process of the head inherits the head's environment: a copy of the service's would
hand ``S2AP_API_TOKEN`` (and whatever else the operator keeps there) to that code. So only
what Ray, torch and the job's storage need passes:

* the process basics: ``PATH``, ``HOME``, user, locale, time zone, temp dir, the Python path
  and virtual environment (the job runs ``python -m s2ap.tune`` from the same install);
* Ray's own variables (``RAY_*``: its token, ``RAY_AUTH_TOKEN_PATH``, tuning flags),
  ``RAY_ADDRESS`` aside (the head is its own cluster);
* thread and accelerator settings (``OMP_NUM_THREADS`` and its kin, ``CUDA_*``, ``NCCL_*``,
  ``TORCH_*``), the CA bundle and the library path;
* the object store's SDK settings and credentials (``AWS_*``, ``GOOGLE_APPLICATION_
  CREDENTIALS``, ``AZURE_*``) and ``S2AP_STORAGE``, only when ``S2AP_STORAGE`` is an object
  store: the jobs then write their results there.

Nothing else: no ``S2AP_API_TOKEN``, no other ``S2AP_*`` setting, no unrelated secret.
"""

from __future__ import annotations

from collections.abc import Mapping

from s2ap import storage

BASICS = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "PYTHONPATH",
        "VIRTUAL_ENV",
        "LD_LIBRARY_PATH",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "XDG_CACHE_HOME",
    }
)
PREFIXES = (
    "RAY_",
    "LC_",
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "NUMEXPR_",
    "VECLIB_",
    "KMP_",
    "CUDA_",
    "NCCL_",
    "NVIDIA_",
    "TORCH_",
    "PYTORCH_",
)
OBJECT_STORE = frozenset({"S2AP_STORAGE", "GOOGLE_APPLICATION_CREDENTIALS"})
OBJECT_STORE_PREFIXES = ("AWS_", "AZURE_", "GCS_", "HADOOP_")
NEVER = frozenset({"RAY_ADDRESS"})


def allowed_environment(base: Mapping[str, str], storage_location: str | None) -> dict[str, str]:
    """The part of ``base`` a Ray head may see; the object store's part only when
    ``storage_location`` (``S2AP_STORAGE``) is one."""
    names, prefixes = BASICS, PREFIXES
    if storage_location is not None and storage.is_remote(storage_location):
        names, prefixes = names | OBJECT_STORE, (*PREFIXES, *OBJECT_STORE_PREFIXES)
    return {
        name: value
        for name, value in base.items()
        if name not in NEVER and (name in names or name.startswith(prefixes))
    }
