"""``camdeploy run``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from camdeploy.cli.common import MAX_BATCH, add_backend, add_runner_options, runner_options
from camdeploy.console import warn
from camdeploy.errors import CamdeployError

if TYPE_CHECKING:
    from camdeploy.runtime.inputs import Listing
    from camdeploy.runtime.pipeline import RunOptions, RunSummary
    from camdeploy.runtime.runner import Runner

EXIT_PARTIAL = 3
ENGINES = ("local", "ray")


class EngineChoice(argparse.Action):
    """``--engine local|ray``; any other value is the former ``--engine PLAN`` of ``--backend
    tensorrt`` (now ``--plan``), still accepted with a warning."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        if values in ENGINES:
            namespace.run_engine = values
            return
        warn(f"--engine {values}: a TensorRT engine file is now given with --plan (--engine chooses local or ray); "
             "the old use will go")
        namespace.engine = Path(str(values))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="classify images and localise each top class",
        description="Run an exported model over images; write OUT/results.jsonl with one object per image "
        "(file, classes, labels, scores, and boxes [x0,y0,x1,y1] per class in original pixels, pixel-edge "
        "coordinates), appended as batches finish; OUT/failures.jsonl with every input left out and why; and "
        "OUT/run.json with the model's SHA-256, the settings, the status and the counts. An interrupted run keeps "
        "what it finished: --resume completes it.",
        epilog="exit status: 0 every input processed; 3 some inputs left out (see failures.jsonl; --allow-partial "
        "gives 0); 1 an error or nothing could be read; 130 interrupted")
    p.add_argument("model", metavar="MODEL.onnx", help="a model written by `camdeploy export`")
    p.add_argument("inputs", metavar="INPUT", nargs="+", help="image files or folders (recursive, following "
                   "symbolic links)")
    p.add_argument("--out", required=True, help="output folder (one writer at a time: a second run, resume or "
                   "overwrite of the same folder is refused while this one runs)")
    add_backend(p)
    add_runner_options(p, engine_alias=False)
    p.add_argument("--engine", action=EngineChoice, metavar="{local,ray}", default="local", dest="run_engine",
                   help="local (default): this process; ray: a Ray cluster (the 'ray' extra), Ray Data tasks read "
                   "and prepare the images and an actor pool runs ONNX Runtime, same results.jsonl (no --overlays); "
                   "--threads is then per actor (default 1)")
    p.add_argument("--address", help="with --engine ray: the cluster to use (host:port of its head, or auto for one "
                   "started on this machine; default $RAY_ADDRESS, else a private local cluster for this run)")
    p.add_argument("--actors", type=int, help="with --engine ray: inference actors, one ONNX Runtime session each "
                   "(default: the cluster's CPUs, less a fifth left to reading, divided by --threads)")
    p.add_argument("--stall-timeout", type=float, metavar="SECONDS", help="with --engine ray: stop (exit 1, finished "
                   "results kept for --resume) and say what the cluster lacks when no result came for this long "
                   "(default: 600 s for the first, then 20 x the longest interval seen between results, at least "
                   "120 s; 0 waits for ever)")
    p.add_argument("--batch-size", type=int, default=8, help=f"images per inference (default 8, at most "
                   f"{MAX_BATCH})")
    p.add_argument("--resize", choices=("stretch", "crop"), help="image resize (default: the model's own)")
    p.add_argument("--max-pixels", type=int, help="largest image to decode, in pixels (default 100000000); larger "
                   "ones are left out (large JPEGs are decoded reduced when that stays within the limit)")
    p.add_argument("--overlays", action="store_true",
                   help="also write a PNG per image with the top-1 heatmap, box and label")
    state = p.add_mutually_exclusive_group()
    state.add_argument("--resume", action="store_true", help="complete the results already in --out (made with the "
                       "same model and settings): skip the files they hold, retry the failed ones")
    state.add_argument("--overwrite", action="store_true", help="start over in an --out that holds results")
    p.add_argument("--allow-partial", action="store_true", help="exit 0 even when some inputs were left out")
    p.add_argument("--why", type=int, nargs="?", const=3, default=0, metavar="N",
                   help="add to each record the N units (default 3) contributing most to its top class's logit, "
                   "W[c, k] times the pooled feature: {unit, share} (see `camdeploy units`)")
    p.add_argument("--why-concepts", metavar="UNITS_DIR", help="with --why: the --out folder (or units.json) of "
                   "`camdeploy units` on this model, to name each unit's concept (its label when it is a detector)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's pre-emption) stops the run like Ctrl-C: finished results are kept."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not in the main thread: leave the handler alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_engine(args: argparse.Namespace) -> None:
    if args.run_engine == "ray":
        if args.overlays:
            raise CamdeployError("--overlays with --engine ray: overlays are drawn by the local engine only (they need "
                                 "each decoded image on the machine that writes --out); drop --overlays, or run "
                                 "--engine local --overlays on the images you want to look at")
        if args.backend != "ort" or args.provider != "cpu":
            chosen = f"--backend {args.backend}" if args.backend != "ort" else f"--provider {args.provider}"
            raise CamdeployError(f"{chosen} with --engine ray: the Ray engine runs ONNX Runtime on CPUs (--backend ort "
                                 "--provider cpu); use --engine local for other backends and providers")
        if args.actors is not None and args.actors < 1:
            raise CamdeployError(f"--actors {args.actors}: expected a positive number of actors")
        if args.stall_timeout is not None and not args.stall_timeout >= 0:
            raise CamdeployError(f"--stall-timeout {args.stall_timeout:g}: expected seconds >= 0 (0 waits for ever)")
    else:
        for flag, value in (("--address", args.address), ("--actors", args.actors),
                            ("--stall-timeout", args.stall_timeout)):
            if value is not None:
                raise CamdeployError(f"{flag} {value}: an option of --engine ray (this run uses --engine local)")
    if args.threads is not None and args.threads < 1:
        raise CamdeployError(f"--threads {args.threads}: expected a positive number")
    if args.why < 0:
        raise CamdeployError(f"--why {args.why}: expected a positive number of units")
    if args.why_concepts and not args.why:
        raise CamdeployError(f"--why-concepts {args.why_concepts}: names the units of --why; add --why")
    if args.why and args.run_engine == "ray":
        raise CamdeployError("--why with --engine ray: the units behind a prediction are found by the local engine "
                             "only; use --engine local")


def cmd_run(args: argparse.Namespace) -> int:
    from camdeploy.backends import make_runner
    from camdeploy.runtime.inputs import list_inputs
    from camdeploy.runtime.pipeline import RunInterrupted, RunOptions, run_files

    _check_engine(args)
    if not 1 <= args.batch_size <= MAX_BATCH:
        raise CamdeployError(f"--batch-size {args.batch_size}: expected 1 to {MAX_BATCH}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise CamdeployError(f"--max-pixels {args.max_pixels}: expected a positive number of pixels")
    if not args.out.strip():
        raise CamdeployError("--out '': expected a folder path (an empty one would write into the current folder)")
    args.out = Path(args.out)
    listing = list_inputs(args.inputs)
    out = args.out.resolve()
    listing.files = [p for p in listing.files if out not in p.resolve().parents]  # not our own overlays
    if not listing.files and not listing.problems:
        raise CamdeployError(f"INPUT {' '.join(args.inputs)}: no images found (outside --out {args.out}); expected "
                             "files or folders holding image files")
    for message in listing.warnings:
        warn(message)
    # run asks for boxes only, unless overlays need the maps: the runner loads that graph first
    chosen = dataclasses.replace(runner_options(args, args.batch_size), outputs="all" if args.overlays else "boxes")
    runner = make_runner(args.backend, args.model, chosen)
    options = RunOptions(batch_size=args.batch_size, resize=args.resize, overlays=args.overlays,
                         progress=not args.no_progress, resume=args.resume, overwrite=args.overwrite,
                         max_pixels=args.max_pixels, int8=args.int8, why=args.why, why_concepts=args.why_concepts)
    engine = ""
    try:
        if args.run_engine == "ray":
            summary, engine = _run_on_ray(args, runner, listing, options)
        else:
            with sigterm_as_interrupt(), runner:
                summary = run_files(runner, listing, args.out, options, model=Path(args.model))
    except RunInterrupted as stop:
        done = stop.summary
        print(f"camdeploy run: interrupted after {done.processed + done.previously} of {done.total} images "
              f"({done.remaining} not reached); the results so far are in {done.results_path}; rerun with --resume "
              "to complete them", file=sys.stderr)
        return 130
    finished = summary.processed + summary.previously
    if summary.processed:
        print(f"{summary.processed} images in {summary.seconds:.2f} s "
              f"({1000 * summary.seconds / summary.processed:.1f} ms/image, backend {args.backend}"
              f"{', ' + runner.execution if runner.execution != 'fp32' else ''}{engine}); results in "
              f"{summary.results_path}")
    if summary.previously:
        print(f"{summary.previously} images were already done (--resume)")
    if summary.unlisted:
        print(f"{summary.unlisted} results in {summary.results_path} are of files this run did not list (the run "
              "that wrote them had other inputs); they are kept, and run.json counts them as unlisted")
    if not finished:
        print(f"camdeploy run: error: none of the {summary.total} inputs could be read; see "
              f"{summary.failures_path}", file=sys.stderr)
        return 1
    if summary.skipped:
        print(f"{summary.skipped} inputs left out (reasons in {summary.failures_path})")
        return 0 if args.allow_partial else EXIT_PARTIAL
    return 0


def _run_on_ray(args: argparse.Namespace, runner: Runner, listing: Listing, options: RunOptions
                ) -> tuple[RunSummary, str]:
    """``run --engine ray``: check the model here, then run on the cluster (see camdeploy.distributed)."""
    from camdeploy.distributed.cluster import RayOptions, driver_log_path, import_ray, ray_session
    from camdeploy.distributed.ray_batch import RayBatchOptions, default_actors, run_on_ray
    from camdeploy.lock import hold_folder

    import_ray()  # without the extra: one line, before anything starts
    with runner:  # a model that does not load stops here, before any cluster starts
        pass
    batch = RayBatchOptions(actors=args.actors, threads=args.threads or 1, stall_timeout=args.stall_timeout)
    # The folder is this run's before a cluster starts (another writer is refused at once); Ray
    # replaces the SIGTERM handler when it starts: install ours after it.
    cluster = RayOptions(address=args.address, driver_log=driver_log_path())
    with hold_folder(args.out), ray_session(cluster) as session, sigterm_as_interrupt():
        actors = default_actors(session.cpus, batch.threads) if batch.actors is None else batch.actors
        where = "a private local cluster" if session.started else f"the cluster at {session.address}"
        pool = f"{actors} actor{'s' if actors > 1 else ''} x {batch.threads} thread{'s' if batch.threads > 1 else ''}"
        print(f"camdeploy run: Ray: {where}, {session.cpus} CPUs; {pool}", file=sys.stderr)
        summary = run_on_ray(runner, listing, args.out, options, batch,
                             dataclasses.replace(runner_options(args, args.batch_size), outputs="boxes"))
    return summary, f", engine ray: {pool}"
