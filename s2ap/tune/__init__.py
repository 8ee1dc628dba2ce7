"""Hyperparameter search over the pipeline with Ray Tune, Optuna and ASHA.

``python -m s2ap.tune SPEC.yaml`` runs a search spec (see ``search_spaces/``). Importing
this package (and :mod:`s2ap.tune.spec`) never imports Ray, so a service can validate
specs without it.

The package, bottom to top: :mod:`~s2ap.tune.space` (the searched parameters' priors),
:mod:`~s2ap.tune.resources` (what a trial asks for, how many fit), :mod:`~s2ap.tune.clock`
(ASHA's clock), :mod:`~s2ap.tune.schema` (the published JSON Schema),
:mod:`~s2ap.tune.cells` (grid cells and what is searched in each),
:mod:`~s2ap.tune.spec` (the spec: one frozen dataclass, loaded and checked whole),
:mod:`~s2ap.tune.layout` (where a search keeps its files), :mod:`~s2ap.tune.trainable`
(one trial: the pipeline in its Tune actor, or a Ray Train run), :mod:`~s2ap.tune.results` (the two tables),
then the Ray side: :mod:`~s2ap.tune.searcher`, :mod:`~s2ap.tune.scheduler`,
:mod:`~s2ap.tune.callbacks`, :mod:`~s2ap.tune.cluster` and :mod:`~s2ap.tune.search`.
"""

from s2ap.tune.spec import ConfigError, SearchSpec, json_schema, load_spec, spec_to_dict

__all__ = ["ConfigError", "SearchSpec", "json_schema", "load_spec", "spec_to_dict"]
