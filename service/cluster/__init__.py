"""The service's cluster: :mod:`~service.cluster.runner` (the :class:`Runner` protocol the job
manager sees), :mod:`~service.cluster.ray_cluster` (the one module that imports Ray: the
runner on Ray's job API, tokens, the head's command line) and :mod:`~service.cluster.ray_head`
(the embedded local Ray head)."""
