"""``camdeploy serve``: an HTTP service on Ray Serve (see :mod:`camdeploy.distributed.ray_serve`).

Only argparse here: Ray is imported when the command runs, so that ``camdeploy --help`` stays light.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from camdeploy.cli.common import add_box_source, add_int8
from camdeploy.errors import CamdeployError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve a model over HTTP (Ray Serve)",
        description="Serve an exported model over HTTP with Ray Serve (the 'ray' extra): POST /predict takes an image "
        "(the raw body, or the file of a multipart form) and answers its results.jsonl object, with file set to the "
        "form's file name or null; GET /health says when the replica is ready; GET /metadata gives the labels, input "
        "size and the model's metadata. Requests are batched on each replica (up to --max-batch images, waiting at "
        "most --batch-wait-ms). An empty, oversized or unreadable image gets a 4xx with {\"error\": reason}. Ctrl-C or "
        "SIGTERM stops the service (and the private Ray cluster it started).",
        epilog="exit status: 0 stopped by Ctrl-C or SIGTERM; 1 an error")
    p.add_argument("model", metavar="MODEL.onnx", help="a model written by `camdeploy export`")
    p.add_argument("--engine", choices=("ray",), default="ray", help="ray (the only engine: camdeploy has no HTTP "
                   "server of its own)")
    p.add_argument("--host", default="127.0.0.1", help="address of the HTTP proxy (default 127.0.0.1; 0.0.0.0 for "
                   "every interface)")
    p.add_argument("--port", type=int, default=8000, help="port of the HTTP proxy (default 8000)")
    p.add_argument("--replicas", type=int, default=1, help="replicas, one ONNX Runtime session each (default 1)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per replica, and the CPUs each "
                   "reserves (default 1)")
    p.add_argument("--max-batch", type=int, default=16, help="largest batch a replica forms (default 16; 1: no "
                   "batching)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill, in ms "
                   "(default 5)")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body in MiB (default 20); "
                   "larger ones get 413")
    p.add_argument("--max-pixels", type=int, help="largest image to decode, in pixels (default 100000000); larger "
                   "ones get 413")
    p.add_argument("--resize", choices=("stretch", "crop"), help="image resize (default: the model's own)")
    p.add_argument("--box-threshold", type=float, help="tau of the box rule (default: the model's)")
    add_box_source(p)
    add_int8(p)
    p.add_argument("--address", help="the Ray cluster to deploy on (host:port of its head, or auto; default "
                   "$RAY_ADDRESS, else a private local cluster, stopped with the service)")
    p.add_argument("--name", default="camdeploy", help="the Serve application's name (default camdeploy)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from camdeploy.backends import RunnerOptions, make_runner
    from camdeploy.cli.run import sigterm_as_interrupt
    from camdeploy.distributed.cluster import RayOptions, driver_log_path, import_ray, ray_session
    from camdeploy.distributed.model import share_model
    from camdeploy.distributed.ray_serve import ServeOptions, start_service, stop_service

    options = ServeOptions(host=args.host, port=args.port, replicas=args.replicas, threads=args.threads,
                           max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, max_body_mb=args.max_body_mb,
                           max_pixels=args.max_pixels, resize=args.resize, name=args.name)
    options.check()
    import_ray()
    runner_options = RunnerOptions(box_threshold=args.box_threshold, box_source=args.box_source, int8=args.int8,
                                   outputs="boxes")
    with make_runner("ort", args.model, runner_options) as runner:  # a bad model stops here, before any cluster
        execution = runner.execution
    with ray_session(RayOptions(address=args.address, driver_log=driver_log_path())) as session:
        url = None
        try:
            with sigterm_as_interrupt():  # after Ray's start, which replaces the SIGTERM handler
                url = start_service(share_model(Path(args.model)), runner_options, options)
                where = "a private local Ray cluster" if session.started else f"the Ray cluster at {session.address}"
                print(f"camdeploy serve: {Path(args.model).name} ({execution}) on {where}: {args.replicas} "
                      f"replica(s) x {args.threads} thread(s), batches of up to {args.max_batch} "
                      f"(waiting {args.batch_wait_ms:g} ms)", file=sys.stderr)
                print(f"camdeploy serve: POST {url}/predict, GET {url}/health, GET {url}/metadata; Ctrl-C stops",
                      file=sys.stderr, flush=True)
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            print("camdeploy serve: stopping", file=sys.stderr, flush=True)
        except CamdeployError:
            raise
        except Exception as exc:  # Ray's own errors while starting: one line
            raise CamdeployError(f"cannot start the service on Ray ({type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:300]})") from exc
        finally:
            try:
                stop_service(args.name)
            except Exception as exc:  # already gone (a dead cluster): nothing left to stop
                print(f"camdeploy serve: stopping Serve: {type(exc).__name__}", file=sys.stderr)
    print("camdeploy serve: stopped", file=sys.stderr)
    return 0
