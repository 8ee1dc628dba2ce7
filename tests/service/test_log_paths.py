"""The job log the page and the API show names no path of the service's host: the data
directory, the interpreter and its install, the source checkout and the home folder are
replaced by short names."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import s2ap
from service import Settings, create_app
from service.log_paths import PathNames
from tests.helpers.service import FakeRunner, ThreadedServer

TOKEN = "log-paths-token-2b7d"
ABSOLUTE = re.compile(r"(?:^|[\s'\"=(:,])(/[\w.-]+)", re.M)  # a path not behind a short name


def host_log(data_dir: Path, job_id: str) -> str:
    """What a real driver prints: Ray's entrypoint line, the results folder, a traceback."""
    src = Path(s2ap.__file__).resolve().parent
    site = Path(sys.prefix) / "lib" / "python3.11" / "site-packages" / "ray" / "tune" / "tune.py"
    return (
        f"Running entrypoint for job {job_id}: {sys.executable} -m s2ap.tune "
        f"{data_dir.resolve()}/jobs/{job_id}/spec.yaml --out {data_dir.resolve()}/jobs/{job_id}/search\n"
        "Traceback (most recent call last):\n"
        f'  File "{src}/tune/search.py", line 120, in run\n'
        f'  File "{site}", line 990, in run\n'
        f"error: cache: cannot write {Path.home()}/.cache/s2ap (see {data_dir.resolve()}/jobs/{job_id})\n"
    )


def test_the_log_endpoint_and_page_show_no_absolute_path_of_the_host(tmp_path: Path) -> None:
    import httpx

    fake = FakeRunner()
    data_dir = tmp_path / "data"
    app = create_app(Settings(api_token=TOKEN, data_dir=data_dir, poll_interval_s=0.05), runner=fake)
    with ThreadedServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        spec = "name: t\nbase: {data: {name: digits, image_size: 8}}\n"
        r = c.post("/jobs", content=spec, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        fake.logs = lambda jid: host_log(data_dir, jid)  # type: ignore[method-assign]
        text = c.get(f"/jobs/{job_id}/logs", headers={"Authorization": f"Bearer {TOKEN}"}).text
        assert c.post("/ui/login", data={"token": TOKEN}).status_code == 303
        page = c.get(f"/ui/jobs/{job_id}").text
    assert ABSOLUTE.findall(text) == [], text
    for host_path in (str(data_dir.resolve()), sys.executable, sys.prefix, str(Path.home())):
        assert host_path not in text
    assert f"{sys.executable} -m" not in page and f"{data_dir.resolve()}/jobs/{job_id}/search\n" not in page
    assert f"python -m s2ap.tune <data>/jobs/{job_id}/spec.yaml --out <data>/jobs/{job_id}/search" in text
    assert '"<src>/tune/search.py"' not in text and "<src>/s2ap/tune/search.py" in text
    assert "<env>/lib/python3.11/site-packages/ray/tune/tune.py" in text
    assert f"--out &lt;data&gt;/jobs/{job_id}/search" in page  # the page shows the same log, escaped


def test_only_whole_path_components_are_replaced() -> None:
    names = PathNames([("/srv/data", "<data>"), ("/srv", "<srv>"), ("/", "<root>"), (None, "x")])
    assert names("/srv/data/jobs /srv/data2/x /srv/other /srvx '/srv/data'") == (
        "<data>/jobs <srv>/data2/x <srv>/other /srvx '<data>'"
    )
