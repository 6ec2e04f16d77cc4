"""`pollcat-sim --scenario FILE [--port N] [--data-dir DIR]`: serve a facility in the foreground."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

import yaml

from simfacility.scenario import ScenarioError
from simfacility.server import RunningFacility


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pollcat-sim", description=__doc__)
    p.add_argument("--scenario", required=True, help="scenario YAML file")
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--data-dir", default=None, help="main storage (default: a temp dir)")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.monotonic()
    try:
        sim = RunningFacility(args.scenario, args.data_dir, host=args.host, port=args.port,
                              log_level="warning").start()
    except (ScenarioError, OSError, ValueError, yaml.YAMLError, RuntimeError) as exc:
        # ValueError: a wrongly typed value (`size: big`); YAMLError: syntax;
        # RuntimeError: the server could not start (e.g. the port is in use)
        print(f"pollcat-sim: {exc}", file=sys.stderr)
        return 2
    n = len(sim.store.datafiles)
    print(f"pollcat-sim: {sim.facility.config.facility} serving {sim.url} "
          f"({n} datafiles, started in {time.monotonic() - t0:.2f}s)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(0.5)
    sim.stop()
    print("pollcat-sim: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
