"""`make demo`: pollcat run the way a facility runs it, on the embedded simulated facility.

Starts the simulated facility (scenarios/demo.yaml: two-level storage, 6 downloads over the
globus and scarf transports) and a real `prefect server start` (SQLite), then does what the
README tells an operator: bootstrap, save the blocks, deploy `prefect.yaml`, start a process
worker. The *schedule* then delivers the downloads; the script waits until TopCAT shows every
download COMPLETE, prints a summary and the UI's address, and stops everything.

    python scripts/demo.py           # finishes by itself
    python scripts/demo.py --keep    # keeps server, worker and facility up until Ctrl-C

The demo is infrastructure, not product: only it and the tests import both pollcat and
simfacility. Its Prefect home, logs and the delivered files are under ./demo-output/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import threading
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FACILITY_BLOCK = "demo-lils"
OUT = REPO / "demo-output"
TRANSPORTS = ("globus", "scarf")
SWEEP_INTERVAL_S = 10
DEADLINE_S = 170

sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.monotonic()
    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    from simfacility.globus import running_globus
    from simfacility.server import running_facility
    from tests.prefect_server.server import SERVER_ENV, PrefectServer

    server = PrefectServer(out / "prefect", port=_port(args.port), **SERVER_ENV)
    with running_facility(REPO / "scenarios" / "demo.yaml", out / "ids-storage") as sim, \
            running_globus(GLOBUS_SPEC) as globus:
        print(f"simulated facility LILS (ICAT, IDS, TopCAT) at {sim.url}: "
              f"{len(sim.store.datafiles)} datafiles on two-level storage; Globus Auth and "
              f"Transfer emulated at {globus.url}")
        accounts = _accounts(out)
        try:
            server.start()
            print(f"Prefect server up after {time.monotonic() - t0:.0f} s: {server.url}")
            ok = _run(server, sim, globus, accounts, out, t0)
            if ok and args.keep:
                _keep_running(server, sim)
        finally:
            server.stop()
    print(f"stopped; logs and delivered files are under {out}/")
    return 0 if ok else 1


def _run(server, sim, globus, accounts: Path | None, out: Path, t0: float) -> bool:
    """The operator's steps, then wait for the schedule to deliver everything."""
    _step(server, "bootstrap", "-m", "pollcat.deployments.bootstrap")
    _save_blocks(server, sim.url, globus, accounts, out)
    t_deploy = time.monotonic()
    _step(server, "deploy", "-m", "pollcat.deployments.bootstrap", "--deploy",
          "--sweep-interval", str(SWEEP_INTERVAL_S))
    server.worker()
    print(f"worker started; the sweep-{FACILITY_BLOCK} schedule fires every "
          f"{SWEEP_INTERVAL_S} s\n  UI: {server.url}/deployments")
    first_file = None
    last = ""
    while time.monotonic() - t0 < DEADLINE_S:
        if first_file is None and any(_delivered(out / t) for t in TRANSPORTS):
            first_file = time.monotonic() - t_deploy
        st = _statuses(sim.url)
        line = ", ".join(f"{i}:{s}" for i, s in sorted(st.items()))
        if line != last:
            print(f"  {time.monotonic() - t0:5.0f} s  TopCAT {line}")
            last = line
        if st and set(st.values()) == {"COMPLETE"}:
            break
        time.sleep(1)
    else:
        print(f"demo: not every download completed in time; see {out}/prefect/*.log",
              file=sys.stderr)
        return False
    _summary(server, sim, out, time.monotonic() - t0, first_file)
    _show_access(globus, accounts, out)
    return True


def _step(server, what: str, *args: str) -> None:
    res = server.python(*args)
    if res.returncode != 0:
        raise SystemExit(f"demo: {what} failed:\n{res.stdout}{res.stderr}")
    print(f"{what}: " + "; ".join(res.stdout.strip().splitlines()))


def _save_blocks(server, sim_url: str, globus, accounts: Path | None, out: Path) -> None:
    """README "Configure", run in a process of its own against the demo server: the globus
    transport goes to a Globus guest collection (read rules for each user's identity), the
    scarf transport to a cluster directory where only the user may read (when run as root)."""
    globus_settings = {"client_id": GLOBUS_CLIENT, "client_secret": GLOBUS_SECRET,
                       "collection_id": GLOBUS_COLLECTION,
                       "username_template": "{user}@idp.example.org",
                       "auth_url": globus.auth_url, "transfer_url": globus.transfer_url}
    access = {"account_db_root": str(accounts)} if accounts else None
    code = (
        "from blocks import DeliveryTarget, PollcatFacility\n"
        f"DeliveryTarget(url='file://{out}/globus', concurrency=4,\n"
        f"               globus={globus_settings!r}).save('demo-globus')\n"
        f"DeliveryTarget(url='file://{out}/scarf', concurrency=4, access={access!r},\n"
        "               custom_value='Delivered to {path}').save('demo-scarf')\n"
        f"PollcatFacility(facility_name='LILS', icat_url={sim_url!r}, ids_url={sim_url!r},\n"
        f"    topcat_url={sim_url!r}, username='pollcat', password='pollpass',\n"
        "    routes={t: 'demo-' + t for t in " + repr(TRANSPORTS) + "},\n"
        f"    state_dir={str(out / 'pollcat-state')!r}).save({FACILITY_BLOCK!r})\n")
    res = server.python("-c", code)
    if res.returncode != 0:
        raise SystemExit(f"demo: saving the blocks failed:\n{res.stdout}{res.stderr}")
    print(f"blocks saved: {FACILITY_BLOCK} routes " +
          ", ".join(f"{t} → demo-{t}" for t in TRANSPORTS))


GLOBUS_CLIENT = "6c4a7b3e-0d1f-4a52-9b1e-5f0e6a9c2d11"
GLOBUS_SECRET = "demo-client-secret"
GLOBUS_COLLECTION = "0f9e8d7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f"
GLOBUS_SPEC = {
    "idp_domains": ["idp.example.org"],
    "clients": [{"id": GLOBUS_CLIENT, "secret": GLOBUS_SECRET}],
    "identities": [{"username": f"{u}@idp.example.org", "email": f"{u}@example.org"}
                   for u in ("alice", "bob", "carol")],
    "collections": [{"id": GLOBUS_COLLECTION, "managers": {GLOBUS_CLIENT: "access_manager"}}],
}


def _accounts(out: Path) -> Path | None:
    """alice, bob and carol as accounts in a private account database (real `useradd
    --prefix`, the machine's own is not touched), so the scarf target's access policy has
    someone to grant to. Needs root and the acl tools; otherwise the demo runs without it."""
    import subprocess

    if os.geteuid() != 0 or not shutil.which("setfacl") or not shutil.which("useradd"):
        print("access demo skipped (it needs root and the acl tools: setfacl, useradd)")
        return None
    root = out / "accounts"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "shadow", "group", "gshadow"):
        (root / "etc" / name).touch()
    for n, user in enumerate(("alice", "bob", "carol")):
        uid = 47100 + n
        for argv in (["groupadd", "--prefix", str(root), "-g", str(uid), user],
                     ["useradd", "--prefix", str(root), "-M", "-u", str(uid), "-g", str(uid),
                      "-s", "/usr/sbin/nologin", "-d", "/nonexistent", user]):
            subprocess.run(argv, check=True, capture_output=True, timeout=30)
    out.chmod(0o711)  # the users must be able to reach their deliveries
    return root


def _show_access(globus, accounts: Path | None, out: Path) -> None:
    import subprocess

    print("\nGlobus read rules granted on the guest collection:")
    names = {i.id: i.username for i in globus.state.identities.values()}
    for rule in globus.state.collections[GLOBUS_COLLECTION].rules.values():
        if rule.get("principal_type") == "identity":
            print(f"  {names.get(rule['principal'], rule['principal']):24s} "
                  f"{rule['permissions']:3s} {rule['path']}  (expires "
                  f"{str(rule.get('expiration_date'))[:10]})")
    if accounts is None:
        return
    print("\nwho can read the scarf deliveries (read as each account, by the kernel):")
    for path in sorted((out / "scarf").glob("*/*/")):
        sample = next((p for p in path.rglob("*") if p.is_file() and ".pollcat" not in
                       p.parts and p.name != "pollcat-manifest.json"), None)
        if sample is None:
            continue
        verdicts = []
        for n, user in enumerate(("alice", "bob", "carol")):
            uid = 47100 + n
            ok = subprocess.run(["/bin/cat", str(sample)], user=uid, group=uid,
                                extra_groups=[], capture_output=True, timeout=30,
                                cwd="/").returncode == 0
            verdicts.append(f"{user} {'can' if ok else 'cannot'}")
        print(f"  {sample.relative_to(out)}: {', '.join(verdicts)} read it")


def _statuses(url: str) -> dict[int, str]:
    from tests.support import statuses

    return statuses(url)


def _delivered(root: Path) -> list[Path]:
    from tests.support import delivered_files

    return list(delivered_files(root).values()) if root.exists() else []


def _summary(server, sim, out: Path, total_s: float, first_file_s: float | None) -> None:
    by_name = {(df.name, df.size): df for df in sim.store.datafiles.values()}
    print("\ndelivered (size and CRC32 checked against ICAT here, again):")
    for t in TRANSPORTS:
        files = _delivered(out / t)
        good = sum(1 for p in files if _matches(p, by_name))
        size = sum(p.stat().st_size for p in files)
        print(f"  {t:7s} {len(files):3d} files {size / 1e6:7.1f} MB  {good} match ICAT  "
              f"under {out / t}")
    runs = server.api("POST", "/flow_runs/filter", json={
        "sort": "START_TIME_ASC"}).json()
    print("\nflow runs:")
    for r in runs:
        if r["state_type"] in ("SCHEDULED", "CANCELLED"):
            continue
        how = "by the schedule" if r["auto_scheduled"] else "by hand"
        print(f"  {r['name']:28s} {r['state_name']:10s} ({how})")
    print(f"\ne-mails TopCAT sent: {len(sim.facility.mail_outbox)}")
    for m in sim.facility.mail_outbox:
        print(f"  to {m.get('to')}: {m.get('subject')}")
    first = f"{first_file_s:.0f} s" if first_file_s is not None else "n/a"
    print(f"\ndeploy → first delivered file: {first}; demo total {total_s:.0f} s")
    print(f"Prefect UI: {server.url}  (runs, the sweep artifact under Artifacts, blocks)")


def _matches(path: Path, by_name: dict) -> bool:
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    size = path.stat().st_size
    return any(size == s and int(df.checksum, 16) == crc
               for (name, s), df in by_name.items() if path.as_posix().endswith(name))


def _keep_running(server, sim) -> None:
    """Until Ctrl-C (or SIGTERM): a newcomer explores the UI and triggers runs."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"""
--keep: everything stays up until Ctrl-C.
  Prefect UI           {server.url}
  simulated facility   {sim.url}   (ICAT /icat, IDS /ids, TopCAT /topcat; admin pollcat/pollpass)
  use the server from another shell:
    export PREFECT_API_URL={server.api_url}
    prefect deployment run 'pollcat-deliver/deliver-{FACILITY_BLOCK}' --param download_id=1 \\
        --param force=true
  or in the UI: Deployments ▸ deliver-{FACILITY_BLOCK} ▸ Run ▸ Custom run.""")
    stop.wait()


def _port(wanted: int) -> int | None:
    """`wanted` if it is free on 127.0.0.1, else None (a free one is picked)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", wanted))
        except OSError:
            return None
    return wanted


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", action="store_true",
                   help="keep the Prefect server, the worker and the facility running")
    p.add_argument("--out", type=Path, default=OUT,
                   help="where the Prefect home, logs and delivered files go (emptied first)")
    p.add_argument("--port", type=int, default=4200,
                   help="Prefect server port (a free one if this is taken)")
    return p


if __name__ == "__main__":
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    sys.exit(main())
