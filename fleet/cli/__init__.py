"""`edgefleet`: the engineer's and the CI pipeline's client of the EdgeFleet REST API.

Standard library only (urllib): it imports nothing of the server, so it ships
as its own small wheel (`edgefleet-cli`, built from this directory's
pyproject.toml) and installs on a CI runner in seconds. In the server tree it
is importable as `fleet.cli` (for tests); in the wheel as `edgefleet_cli`.

Exit codes, the same for every command:

    0  done (and, for `compress --wait`, a variant meets every KPI;
       for `deploy --wait`, the deployment completed)
    1  server or transport error: unreachable, 5xx, a job that crashed
    2  bad input: usage, missing or invalid file, unknown id, refused token,
       permission denied, anything the server refused with a 4xx
    3  below the bar: no variant meets the KPIs, or a gate paused the
       deployment (it was aborted or rolled back)
    4  gave up waiting (--timeout); the work goes on on the server
"""

__version__ = "0.1.0"

OK, ERROR, BAD_INPUT, MISSED, TIMEOUT = 0, 1, 2, 3, 4


class CliError(Exception):
    """One line for the user and the exit code it maps to."""

    def __init__(self, message: str, code: int = ERROR):
        super().__init__(message)
        self.message, self.code = message, code
