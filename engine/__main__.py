"""`python -m engine`: the command line (engine/cli/main.py)."""
import signal
import sys

from engine.cli.main import main


def _exit_on(signum, _frame):
    # SIGTERM (kill, timeout, a batch scheduler) and SIGHUP (the terminal closed) unwind like Ctrl-C:
    # an atomic write in progress removes its temp file (a 35 MB '.<out>.qwtmp-*' would stay otherwise).
    # Objects torn down on the way out (a ZipFile interrupted with a member open) may fail in __del__: the
    # process is ending on the user's signal, so that is not worth an "Exception ignored" traceback.
    sys.unraisablehook = lambda _unraisable: None
    raise SystemExit(128 + signum)


if __name__ == "__main__":       # not when a spawned worker process (`--dask local:N`) imports it as __mp_main__
    for _sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(_sig) is signal.SIG_DFL:     # never undo `nohup` (SIG_IGN)
            signal.signal(_sig, _exit_on)
    sys.exit(main())
