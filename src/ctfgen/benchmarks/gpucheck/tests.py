"""The test suite's device tests (`pytest -m cuda`), run in a child process; counts from its JUnit XML."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from .env import REPO


def run_cuda_tests(out_dir: Path, *, paths: list[str] | None = None, timeout: float = 300.0) -> dict:
    """Run the tests marked `cuda` under `paths` (default: the checkout's tests/). They skip
    without a GPU; on one, every one of them must pass."""
    paths = paths or [str(REPO / "tests")]
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        return {"ok": False, "error": f"test path(s) not found: {missing} (run the check from a ctfgen checkout)"}
    xml = out_dir / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
           "-o", "junit_family=xunit1", *paths]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"pytest timed out after {timeout:.0f} s", "seconds": time.perf_counter() - t0}
    tail = (done.stdout + done.stderr)[-4000:]
    if not xml.is_file():
        return {"ok": False, "returncode": done.returncode, "error": "pytest wrote no report", "output_tail": tail}
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    # exit code 5: nothing selected; 0: all selected passed or skipped
    return {"ok": done.returncode == 0 and not failed, "returncode": done.returncode, **counts, "failed": failed,
            "seconds": time.perf_counter() - t0, "output_tail": tail if done.returncode else tail[-800:]}
