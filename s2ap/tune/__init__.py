"""Hyperparameter search over the pipeline with Ray Tune, Optuna and ASHA.

``python -m s2ap.tune SPEC.yaml`` runs a search spec (see ``search_spaces/``). Importing
this package (and :mod:`s2ap.tune.spec`) never imports Ray, so a service can validate
specs without it; :mod:`s2ap.tune.search` and :mod:`s2ap.tune.trainable`'s Ray parts load
Ray only when a search actually runs.
"""

from s2ap.tune.spec import ConfigError, SearchSpec, json_schema, load_spec, spec_to_dict

__all__ = ["ConfigError", "SearchSpec", "json_schema", "load_spec", "spec_to_dict"]
