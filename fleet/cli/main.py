"""`edgefleet` command line: parse, resolve the server and token, run one command,
turn every failure into one line on stderr and the documented exit code."""

from __future__ import annotations

import argparse
import getpass
import sys

from . import BAD_INPUT, ERROR, OK, CliError, __version__, config, registry, rollout
from .client import Client

EXIT_CODES = """exit codes:
  0  done (compress --wait: a variant meets every KPI; deploy --wait: completed)
  1  server or transport error (unreachable, 5xx, a job that crashed)
  2  bad input (usage, missing or invalid file, unknown id, refused token, 4xx)
  3  below the bar (no variant meets the KPIs; a gate paused the deployment)
  4  gave up waiting (--timeout); the work goes on on the server

configuration: --url/--token, else EDGEFLEET_URL/EDGEFLEET_TOKEN, else the file
`edgefleet login` writes ($XDG_CONFIG_HOME/edgefleet/config.json, mode 0600)."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors are bad input: exit 2, one line
        self.print_usage(sys.stderr)
        raise CliError(message, BAD_INPUT)


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
        return value

    return parse


def _add_wait(parser, what: str) -> None:
    """`--wait` to follow the started `what` to its end, `--timeout` to give up."""
    parser.add_argument("--wait", action="store_true", help=f"follow the {what} to its end")
    parser.add_argument(
        "--timeout",
        type=_positive(float),
        default=3600,
        help="with --wait: give up after this many seconds (exit 4)",
    )


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument(
        "--url",
        help="server, e.g. https://edgefleet.example.com "
        "(default: $EDGEFLEET_URL or the saved login)",
    )
    common.add_argument(
        "--token",
        help="API token (default: $EDGEFLEET_TOKEN or the saved "
        "login; prefer those: flags show in process lists)",
    )
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    fmt = argparse.RawDescriptionHelpFormatter
    parser = Parser(
        prog="edgefleet",
        formatter_class=fmt,
        epilog=EXIT_CODES,
        description="Push a model, compress it under KPIs, gate the build on the "
        "result, roll it out and watch the fleet.",
    )
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    def command(name, help_text, **kwargs):
        return sub.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text,
            epilog=EXIT_CODES,
            formatter_class=fmt,
            **kwargs,
        )

    p = command("login", "Check a token against the server and save both (0600).")
    p.add_argument("--token-stdin", action="store_true", help="read the token from stdin")
    p.set_defaults(func=login, needs_server=False)
    p = command("logout", "Forget the saved server and token.")
    p.set_defaults(func=logout, needs_server=False)

    p = command(
        "push",
        "Upload an ONNX model (and its datasets) as a version of NAME; print "
        "the version id. The same bytes again give the same version.",
    )
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--name", required=True, help="model name (created if new)")
    p.add_argument("--calibration", metavar="CAL.npz", help="calibration data (static INT8)")
    p.add_argument(
        "--eval", metavar="EVAL.npz", help="evaluation data; a `labels` array enables accuracy KPIs"
    )
    p.add_argument("--task", default="classification", help="model task (default %(default)s)")
    p.add_argument("--notes", help="free text stored with the version")
    p.add_argument(
        "--timeout",
        type=_positive(float),
        default=300,
        help="seconds to wait for server-side validation (default %(default)s)",
    )
    p.set_defaults(func=registry.push)

    p = command(
        "compress",
        "Start a compression job on VERSION; with --wait follow it, print "
        "the results and exit 0 if a variant meets every KPI, 3 if none.",
    )
    p.add_argument("version", type=int, metavar="VERSION", help="model version id (from push)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--auto", action="store_true", help="search the recipes against the KPIs")
    how.add_argument(
        "--recipe",
        action="append",
        metavar="R",
        help="a recipe to try, e.g. int8-static, fp16 (repeatable)",
    )
    for name, flag in registry.KPI_FLAGS.items():
        p.add_argument(
            flag,
            dest=name,
            type=float,
            metavar="X",
            help={
                "max_latency_ms": "KPI: p50 latency at most X ms",
                "min_fidelity": "KPI: top-1 agreement with the original at least X (0-1)",
                "max_accuracy_drop": "KPI: accuracy at most X points below the original",
                "max_size_mb": "KPI: file at most X MB",
            }[name],
        )
    p.add_argument(
        "--profile",
        metavar="P",
        help="hardware profile slug to measure for (threads, provider), e.g. rpi4",
    )
    p.add_argument(
        "--eval-dataset",
        type=int,
        metavar="ID",
        help="evaluation dataset id (default: the model's newest)",
    )
    p.add_argument(
        "--calibration-dataset",
        type=int,
        metavar="ID",
        help="calibration dataset id (default: the model's newest, if any)",
    )
    p.add_argument(
        "--time-budget",
        type=int,
        default=600,
        metavar="S",
        help="server-side budget of the search (default %(default)s s)",
    )
    for flag, help_text in (
        ("--bench-group", "last step: benchmark the variants on this device group's devices"),
        ("--bench-profile", "...or on devices of this hardware profile slug"),
        ("--bench-device", "...or on this device uid"),
    ):
        p.add_argument(flag, action="append", metavar="X", help=help_text + " (repeatable)")
    p.add_argument(
        "--choose-by-devices",
        action="store_true",
        help="the devices' measured p50 chooses the variant (with --bench-*)",
    )
    p.add_argument(
        "--device-timeout",
        type=int,
        metavar="S",
        help="seconds to wait for device results before the estimate decides (default 3600)",
    )
    _add_wait(p, "job")
    p.set_defaults(func=registry.compress)

    p = command("release", "Releases: what a deployment installs.")
    rsub = p.add_subparsers(dest="release_command", metavar="ACTION", parser_class=Parser)
    rsub.required = True
    r = rsub.add_parser(
        "create",
        parents=[common],
        formatter_class=fmt,
        epilog=EXIT_CODES,
        help="Create a release from a compression job's chosen variant; print its id.",
        description="Create a release from a compression job's chosen variant "
        "(the one that meets the KPIs); print its id.",
    )
    r.add_argument("--from-job", type=int, required=True, metavar="JOB")
    r.add_argument("--name", help="release name (default: model, version, recipe and job)")
    r.add_argument("--recipe", help="release this job candidate instead of the chosen one")
    r.add_argument(
        "--slot", default="default", help="model slot on the device (default %(default)s)"
    )
    r.add_argument("--notes")
    r.add_argument(
        "--pin-profile", action="store_true", help="only for devices of the job's hardware profile"
    )
    r.set_defaults(func=rollout.release_create)

    p = command(
        "deploy",
        "Start a phased deployment of RELEASE; with --wait follow it: exit 0 "
        "when it completes, 3 when a gate pauses it (reason printed).",
    )
    p.add_argument("release", type=int, metavar="RELEASE", help="release id")
    p.add_argument(
        "--group", action="append", metavar="G", help="device group name or id (repeatable)"
    )
    p.add_argument("--tag", action="append", metavar="T", help="device tag (repeatable)")
    p.add_argument("--device", action="append", metavar="UID", help="device uid (repeatable)")
    p.add_argument(
        "--phases",
        default="1,10,50,100",
        help="cumulative percentages of the target per phase (default %(default)s)",
    )
    gates = p.add_argument_group("gates (each phase must pass them to advance)")
    gates.add_argument(
        "--max-failure-rate",
        type=float,
        metavar="F",
        help="install failures / finished devices (server default 0.2)",
    )
    gates.add_argument(
        "--min-successful",
        type=int,
        metavar="N",
        help="devices that must succeed per phase (default 1)",
    )
    gates.add_argument(
        "--max-latency-ratio",
        metavar="K|off",
        help="on-device p95 at most K x the benchmark estimate (default 1.5)",
    )
    gates.add_argument(
        "--max-confidence-drop",
        metavar="D|off",
        help="mean top-1 confidence drop against the previous version",
    )
    gates.add_argument(
        "--min-soak-s",
        type=int,
        metavar="S",
        help="seconds each phase runs before it may advance (default 0)",
    )
    gates.add_argument(
        "--min-latency-samples",
        type=int,
        metavar="N",
        help="telemetry points before latency is judged (default 3)",
    )
    _add_wait(p, "deployment")
    p.set_defaults(func=rollout.deploy)

    p = command("status", "Who you are, devices online and offline, the latest deployments.")
    p.add_argument("--limit", type=int, default=10, help="deployments shown (default 10)")
    p.set_defaults(func=rollout.status)

    p = command("logs", "The latest log lines of one device, oldest first.")
    p.add_argument("device", metavar="DEVICE", help="device uid")
    p.add_argument("--level", help="only this level (debug, info, warning, error)")
    p.add_argument("--limit", type=int, default=50, help="lines (default 50, at most 200)")
    p.set_defaults(func=rollout.logs)
    return parser


def login(args) -> int:
    settings = config.resolve(args.url, None)
    token = args.token
    if args.token_stdin:
        token = sys.stdin.readline().strip()
    elif not token and sys.stdin.isatty():
        token = getpass.getpass(f"API token for {settings.url}: ").strip()
    if not token:
        raise CliError("no token: pass --token-stdin (or --token), or run interactively", BAD_INPUT)
    me = Client(settings.url, token).get("/api/v1/me/")
    path = config.save_file(settings.url, token)
    print(
        f"signed in to {settings.url} as {me['username']} ({me['role'] or 'no role'}); "
        f"saved to {path}"
    )
    return OK


def logout(args) -> int:
    print("forgot the saved login" if config.remove_file() else "no saved login")
    return OK


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "needs_server", True):
            settings = config.resolve(args.url, args.token)
            if not settings.token:
                raise CliError(
                    "no API token: set EDGEFLEET_TOKEN, pass --token or run `edgefleet login`",
                    BAD_INPUT,
                )
            return args.func(Client(settings.url, settings.token), args)
        return args.func(args)
    except CliError as exc:
        print(f"edgefleet: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("edgefleet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return ERROR
