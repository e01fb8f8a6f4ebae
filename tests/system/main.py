#!/usr/bin/env python3
"""Entry point of the system test (tests/system/run calls it): the checklist, then a power-cut
campaign of --cuts cuts, then its accounting. Exit 1 on any failed check."""
import argparse
import os
import shutil
import signal
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import analyse  # noqa: E402
import checklist  # noqa: E402
import powercut  # noqa: E402
from vm import Broker, accel, log  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--deb", required=True)
    ap.add_argument("--cuts", type=int, default=3)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--no-checklist", action="store_true")
    ap.add_argument("--drain-only", action="store_true",
                    help="finish a stopped campaign in --out: one draining boot, then the figures")
    ap.add_argument("--smp", type=int, default=2)
    ap.add_argument("--out", help="keep the campaign's records here (default: a temp dir, removed)")
    args = ap.parse_args()
    # SIGTERM (CI's timeout, a person) unwinds like Ctrl-C: every process is stopped, temp dirs go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    acc = accel()
    log(f"accelerator: {acc}")
    failed = 0
    work = tempfile.mkdtemp(prefix="systest-")
    broker = Broker(work)
    try:
        if not args.no_checklist:
            t = time.time()
            n = checklist.run(work, args.deb, broker, acc, args.smp)
            log(f"checklist: {'all passed' if n == 0 else f'{n} FAILED'} ({(time.time() - t) / 60:.1f} min)")
            failed += n
        if args.cuts > 0:
            t = time.time()
            out = args.out or os.path.join(work, "campaign")
            os.makedirs(out, exist_ok=True)
            log(f"power cuts: {args.cuts} (seed {args.seed}), records in {out}")
            powercut.campaign(out, args.deb, broker, acc, args.smp, args.cuts, args.seed,
                              drain_only=args.drain_only)
            res = analyse.analyse(out)
            print(analyse.summary(res), flush=True)
            bad = analyse.failures(res)
            for line in bad:
                print("  FAIL  " + line, flush=True)
            log(f"power cuts: {'passed' if not bad else 'FAILED'} ({(time.time() - t) / 60:.1f} min)")
            failed += len(bad)
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
        if args.out and os.path.exists(os.path.join(args.out, "disk.raw")):
            os.unlink(os.path.join(args.out, "disk.raw"))  # keep the records, not the 2 GiB disk
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
