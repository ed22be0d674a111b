"""accelctl: one-time conversions in process, and task commands against a running acceld."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from accel import __version__
from accel.cli import tasks
from accel.cli.logs import demote_http_client_logs
from accel.cli.process import end_process, skip_unused_imports
from accel.cli.progress import LogProgress
from accel.config import Config, DriverConfig, Rule, load_config
from accel.converter import ConversionResult, Converter
from accel.drivers import available_drivers, create_driver
from accel.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, AccelError, ConfigError
from accel.oci.platform import Platform

if TYPE_CHECKING:
    from accel.cli.bars import BarProgress
    from accel.converter.check import CheckReport


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="accelctl", description="Convert OCI images into lazy-pulling images (one-time or via acceld)."
    )
    parser.add_argument("--version", action="version", version=f"accelctl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser("convert", help="convert one image now, in this process (no daemon needed)")
    convert.add_argument("--config", required=True, help="acceld YAML config (registries, driver, rules)")
    drivers = available_drivers()
    convert.add_argument(
        "--driver",
        choices=drivers,
        metavar="NAME",
        help=f"override converter.driver.type: {', '.join(drivers)} (its options are kept only if same)",
    )
    convert.add_argument(
        "--platform",
        action="append",
        default=[],
        type=_platform,
        metavar="OS/ARCH[/VARIANT]",
        help="convert only this platform (repeatable; default converter.platforms, else all)",
    )
    convert.add_argument(
        "--target",
        help="target reference (default: source tag + the rule's tag_suffix, or the --driver's own suffix)",
    )
    convert.add_argument(
        "--force",
        action="store_true",
        help="replace a target tag that holds something else (converter.overwrite)",
    )
    convert.add_argument("--output", choices=("text", "json"), default="text", help="summary format")
    convert.add_argument("source", help="image reference (host/repo:tag, host/repo@digest, oci:PATH[:TAG])")
    convert.set_defaults(func=_convert)

    check = commands.add_parser(
        "check", help="verify a converted image: every layer by its format, its files against the source"
    )
    check.add_argument(
        "--config", help="config naming the registries and credentials (default: OCI layouts only)"
    )
    check.add_argument(
        "--source", help="compare with this image (default: the source named in our annotations)"
    )
    check.add_argument(
        "--no-source", action="store_true", help="check the layers only, without comparing file trees"
    )
    check.add_argument(
        "--lazy",
        nargs="+",
        default=[],
        metavar="PATH",
        help="read these files through each layer's index with ranged requests only, and count the bytes",
    )
    check.add_argument("--output", choices=("text", "json"), default="text", help="report format")
    check.add_argument("target", help="the converted image (host/repo:tag, host/repo@digest, oci:PATH:TAG)")
    check.set_defaults(func=_check)

    tasks.register(commands)
    return parser


def _platform(spec: str) -> str:
    """``--platform`` names os and architecture: a lone ``arm64`` would silently mean this host's OS."""
    if "/" not in spec:
        raise argparse.ArgumentTypeError(f"invalid platform {spec!r}: expected os/arch[/variant]")
    try:
        return str(Platform.parse(spec))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _override(config: Config, args: argparse.Namespace) -> Config:
    converter = config.converter
    if args.driver and args.driver != converter.driver.type:
        # The config's rules name the suffix of the config's driver; another driver writes its own.
        suffix = create_driver(DriverConfig(type=args.driver)).tag_suffix
        rules = [rule.model_copy(update={"tag_suffix": suffix}) for rule in converter.rules]
        converter = converter.model_copy(
            update={"driver": DriverConfig(type=args.driver), "rules": rules or [Rule(tag_suffix=suffix)]}
        )
    if args.platform:
        converter = converter.model_copy(update={"platforms": ",".join(args.platform)})
    if args.force:
        converter = converter.model_copy(update={"overwrite": True})
    return config.model_copy(update={"converter": converter})


def _convert(args: argparse.Namespace) -> int:
    config = _override(load_config(args.config), args)
    display: AbstractContextManager[BarProgress | LogProgress]
    if sys.stderr.isatty() and args.output == "text":
        from accel.cli.bars import BarProgress

        display = BarProgress()
    else:
        display = LogProgress()
    with Converter(config) as converter, display as progress:
        result = converter.convert(args.source, target=args.target, progress=progress)
    _print_summary(result, args.output)
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    if args.config:
        config = load_config(args.config)
    else:
        work_dir = Path("~/.cache/acceleration-service").expanduser()
        config = Config.model_validate(
            {"provider": {"work_dir": work_dir}, "converter": {"driver": {"type": "oci"}}}
        )
    with Converter(config) as converter:
        report = converter.check(args.target, source=args.source, compare=not args.no_source, lazy=args.lazy)
    if args.output == "json":
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _print_check(report)
    if report.ok:
        return EXIT_OK
    failures = report.failures
    first = failures[0].describe() if failures else "the target holds no image"
    print(f"accelctl: error: check failed: {first}", file=sys.stderr)
    return EXIT_FAILED


def _print_check(report: CheckReport) -> None:
    print(f"target  {report.target}  {report.target_digest}")
    for image in report.images:
        print(
            f"image   {image.manifest_digest}  {image.platform or '-'}"
            + (f"  from {image.source}" if image.source else "")
        )
        for finding in image.findings:
            mark = "ok  " if finding.ok else "FAIL"
            where = f" (entry {finding.entry})" if finding.entry else ""
            print(f"  {mark}  {finding.subject:<80.80}  {finding.check:<18}  {finding.detail}{where}")
    print("result  " + ("every check passed" if report.ok else f"{len(report.failures)} check(s) failed"))


def _print_summary(result: ConversionResult, output: str) -> None:
    if output == "json":
        print(json.dumps(result.to_dict(), indent=2))
        return
    timings = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    lines = [
        f"source  {result.source}  {result.source_digest}  {result.source_size} bytes",
        f"target  {result.target}  {result.target_digest}  {result.target_size} bytes",
        f"driver  {result.driver} {result.driver_version}"
        + (f"  platforms {', '.join(result.platforms)}" if result.platforms else ""),
        f"time    {timings}",
        f"bytes   pulled {result.bytes_in}, pushed {result.bytes_out}",
    ]
    lines += [f"note    {note}" for note in result.notes]
    print("\n".join(lines))


def _failure(exc: AccelError) -> dict[str, Any]:
    return {
        "error": {
            "code": exc.code,
            "message": exc.message,
            "exit_code": exc.exit_code,
            "notes": exc.notes,
        }
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="time=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)r",
    )
    demote_http_client_logs()
    try:
        code: int = args.func(args)
        return code
    except AccelError as exc:
        print(f"accelctl: error: {exc.message}", file=sys.stderr)
        if getattr(args, "output", "text") == "json":
            print(json.dumps(_failure(exc), indent=2))
        return exc.exit_code
    except KeyboardInterrupt:
        print("accelctl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run() -> NoReturn:
    """The ``accelctl`` command: :func:`main` in a process of its own."""
    skip_unused_imports()
    end_process(main())


if __name__ == "__main__":
    run()
