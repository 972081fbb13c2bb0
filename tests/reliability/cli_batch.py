"""``python cli_batch.py < cases.json``: run many ``selfsup`` command lines in this one process.

``cases.json`` maps a case name to an argv list. Each is run through ``selfsup.cli.main`` exactly
as the ``selfsup`` command runs it; its exit status and output are recorded, and so is any
exception that escapes ``main`` (which would be a traceback for the user: a bug). Prints one JSON
object ``{name: {"status", "stdout", "stderr", "escaped"}}``. Start-up is paid once for all cases.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback


def main() -> int:
    from selfsup.cli import main as selfsup_main

    cases = json.load(sys.stdin)
    results = {}
    for name, argv in cases.items():
        print(f"cli_batch: {name}", file=sys.__stderr__, flush=True)  # where a hang would be
        out, err = io.StringIO(), io.StringIO()
        status, escaped = None, None
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = selfsup_main(argv)
            except SystemExit as exc:  # argparse's own usage errors
                status = exc.code
            except BaseException:  # noqa: BLE001 - exactly what must never happen
                escaped = traceback.format_exc()
        results[name] = {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue(), "escaped": escaped}
    json.dump(results, sys.__stdout__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
