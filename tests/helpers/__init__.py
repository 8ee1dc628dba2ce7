"""What several test folders (and the benchmarks) share: :mod:`tests.helpers.service` runs the
service (a thread or a process) on a free loopback port, with a fake cluster or the embedded
Ray head; :mod:`tests.helpers.net` finds free ports; :mod:`tests.helpers.configs` holds the
small training configs and :mod:`tests.helpers.specs` the small search specs the tests train on."""
