"""HTTP job service: submit S2AP searches to a Ray cluster, follow them, fetch results.

``create_app(settings)`` builds the FastAPI app; ``python -m service`` serves it. The
service validates specs with :mod:`s2ap.tune.spec` and talks to Ray only through
:mod:`service.cluster.ray_cluster`, its one module that imports Ray; it never trains in its
own process.
"""

from service.app import create_app
from service.settings import Settings

__all__ = ["Settings", "create_app"]
