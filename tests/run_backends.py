"""Run the test suite once per Keras backend (TensorFlow first), each in its own process.

    python tests/run_backends.py              # default suite on tensorflow, jax, torch
    python tests/run_backends.py --slow       # only the tests marked slow
    python tests/run_backends.py --backends jax -- -k frontend   # pytest args after --
"""

import argparse
import os
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--slow", action="store_true", help="run only the tests marked slow")
    parser.add_argument("pytest_args", nargs="*", help="extra arguments for pytest (after --)")
    args = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    marker = "slow" if args.slow else "not slow"
    failed = []
    for backend in args.backends:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        cmd = [sys.executable, "-m", "pytest", "-m", marker, "-p", "no:cacheprovider", "--durations=15",
               *args.pytest_args]  # the slowest tests, to keep both CI steps within their bounds
        print(f"\n=== KERAS_BACKEND={backend}: {' '.join(cmd[2:])}", flush=True)
        start = time.time()
        code = subprocess.call(cmd, cwd=root, env=env)
        print(f"=== {backend}: exit {code} in {time.time() - start:.0f} s", flush=True)
        if code not in (0, 5):  # 5: no tests collected (e.g. no slow test on this backend)
            failed.append(backend)
    if failed:
        print(f"FAILED on: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
