"""The web page at ``/ui``: :mod:`~service.ui.routes` (the pages, sign-in as a dependency),
:mod:`~service.ui.session` (cookies, CSRF), :mod:`~service.ui.views` (a job's tables as rows),
:mod:`~service.ui.plots` (its figures), :mod:`~service.ui.forms` (the submit form), and the
``templates/`` and ``static/`` files they serve. It reads jobs through the same job manager
as the JSON API and never imports Ray."""
