"""The prepared-zip source next to the direct source on the same bytes: one download of
`files` datafiles, delivered in alternating rounds by each source."""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import curl_speed, just_freed_memory, pipeline, sim_process, timed_sweep
from bench.many import one_download


def main(files: int = 64, size: int = 8 << 20, rounds: int = 5) -> dict:
    """Rounds of both sources, the first of each round alternating, each sweep starting on
    memory just freed (bench/common.py). Three rounds with the direct source always first
    gave ratios of 0.90 to 1.05 in four runs of the same code, 0.6-0.9 s a sweep."""
    work = Path(tempfile.mkdtemp(prefix="pollcat-zip-"))
    walls: dict[str, list[float]] = {"direct": [], "prepared-zip": []}
    curl_zip = []
    with sim_process(one_download(files, size)) as (url, _):
        for n in range(rounds):
            if n:  # the zip stream's own speed (the simulator zips on the fly): curl of it
                pipe = pipeline(url, work, "c", facility="MANY")
                prepared = pipe.topcat.pending("globus", "COMPLETE")[0].prepared_id
                pipe.clients.close()
                curl_zip.append(curl_speed(f"{url}/ids/getData?preparedId={prepared}")[0])
            for source in (list(walls) if n % 2 == 0 else list(walls)[::-1]):
                tag = f"{source}{n}"
                just_freed_memory(files * size + (files * size >> 3), work)
                outcomes, wall = timed_sweep(pipeline(url, work, tag, facility="MANY",
                                                      source=source))
                assert [o.outcome for o in outcomes] == ["completed"], outcomes
                walls[source].append(wall)
                shutil.rmtree(work / f"target{tag}")
    shutil.rmtree(work, ignore_errors=True)
    direct, zipped = (statistics.median(walls[s]) for s in ("direct", "prepared-zip"))
    result = {"files": files, "bytes_each": size, "rounds": rounds,
              "direct_s": [round(x, 2) for x in walls["direct"]],
              "prepared_zip_s": [round(x, 2) for x in walls["prepared-zip"]],
              "direct_MBps": round(files * size / direct / 1e6, 1),
              "prepared_zip_MBps": round(files * size / zipped / 1e6, 1),
              "ratio": round(direct / zipped, 2),
              "curl_zip_stream_MBps": round(statistics.median(curl_zip) / 1e6, 1)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
