#!/usr/bin/env python3
"""Set up a virtual environment for keras-music-ssl and run a command in it (stdlib only).

    python3 bootstrap.py quickstart [ARGS...]   # kmssl quickstart ARGS      (installs .[data])
    python3 bootstrap.py test [ARGS...]         # tests/run_backends.py ARGS (installs .[jax,torch,data,test,onnx,beam,hub,docs],
                                                #  with npm js/'s onnxruntime-node and -web, as root Debian's chromium)
    python3 bootstrap.py test-slow [ARGS...]    # tests/run_backends.py --slow ARGS
    python3 bootstrap.py install                # (re)install everything the tests need, then stop
    python3 bootstrap.py run CMD [ARGS...]      # run CMD (e.g. kmssl, python) from the venv
    python3 bootstrap.py shell                  # an interactive $SHELL with the venv first on PATH

The venv is ``.venv`` in the repository root, or ``$KMSSL_VENV``. It is created with the Python
running this script (3.11 or newer). pip runs only when needed: the venv keeps a stamp (a hash
of pyproject.toml, this file and the extras installed), so a second call goes straight to the
command. Every install ends with ``pip check``; a failure stops here. ``install`` always runs pip;
deleting ``<venv>/kmssl-bootstrap.json`` does the same for the next call.

Besides the package's own extras this installs two things pyproject.toml cannot declare:
tinysoundfont (the SoundFont renderer of the offline dataset) with its metadata fixed, see
``patched_tinysoundfont``, and, for the tests, hearvalidator (the HEAR 2021 API checker). The
tests' set-up also installs js/'s Node.js packages (``install_node_packages``) and, when it runs
as root, Debian's chromium for the browser test (``install_browser``).
"""

import sys

if sys.version_info < (3, 11):  # before anything newer than Python 3.6 syntax is needed
    sys.exit("bootstrap.py: keras-music-ssl needs Python 3.11 or newer, this is %s (%s); "
             "run it with python3.11 (or newer) instead" % (sys.version.split()[0], sys.executable))

import base64
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.abspath(__file__))
STAMP = "kmssl-bootstrap.json"

# The one place these two pins live.
# tinysoundfont: every release's wheel says `Requires-Dist: pyaudio` (used only by Synth.start(),
# live playback; rendering never imports it). pyaudio has no Linux wheel and its source build needs
# the portaudio headers, so a plain install fails, and `--no-deps` leaves a requirement `pip check`
# reports as missing. So the wheel is installed with that requirement moved to an extra, see below.
TINYSOUNDFONT = "tinysoundfont==0.3.7"
# hearvalidator: run by tests/test_hear.py. It requires tensorflow>=2.0 and torch>=1.7, which the
# core dependencies and the [torch] extra (torch==2.13.0) satisfy: installed in the same pip run as
# those, it resolves to them and pulls nothing else, so no --no-deps is needed.
HEARVALIDATOR = "hearvalidator==2021.0.2"

QUICKSTART_EXTRAS = ("data",)
TEST_EXTRAS = ("jax", "torch", "data", "test", "onnx", "beam", "hub", "docs")


def fail(message):
    sys.exit(f"bootstrap.py: {message}")


def log(message):
    print(f"bootstrap.py: {message}", flush=True)


# --- the venv ------------------------------------------------------------------------------------

def venv_dir():
    return os.path.abspath(os.path.expanduser(os.environ.get("KMSSL_VENV") or os.path.join(ROOT, ".venv")))


def venv_bin(venv):
    return os.path.join(venv, "Scripts" if os.name == "nt" else "bin")


def venv_python(venv):
    return os.path.join(venv_bin(venv), "python.exe" if os.name == "nt" else "python")


def ensure_venv(venv):
    python = venv_python(venv)
    if os.path.isdir(venv) and not os.listdir(venv):
        os.rmdir(venv)  # an empty folder (e.g. made for KMSSL_VENV): create the venv there
    if os.path.exists(venv):
        if not os.path.exists(os.path.join(venv, "pyvenv.cfg")):
            fail(f"{venv} exists but is not a virtual environment; remove it or set KMSSL_VENV to another path")
        probe = subprocess.run([python, "-c", "import sys; print(sys.version_info >= (3, 11))"],
                               capture_output=True, text=True) if os.path.exists(python) else None
        if probe is None or probe.returncode != 0:
            fail(f"the venv {venv} has no working Python; remove it (rm -rf {venv}) and run again")
        if probe.stdout.strip() != "True":
            fail(f"the venv {venv} has a Python older than 3.11; remove it (rm -rf {venv}) and run again")
        return
    log(f"creating the virtual environment {venv} ({sys.executable}, Python {sys.version.split()[0]})")
    made = subprocess.run([sys.executable, "-m", "venv", venv], capture_output=True, text=True)
    if made.returncode != 0:
        # Debian/Ubuntu split ensurepip into python3.X-venv; without it, a venv without pip can
        # still get one from this Python's own pip (pip >= 22.3 installs into another interpreter).
        shutil.rmtree(venv, ignore_errors=True)
        bare = subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], capture_output=True, text=True)
        if bare.returncode == 0:
            got_pip = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "pip"])
            if got_pip.returncode == 0:
                return
        shutil.rmtree(venv, ignore_errors=True)
        detail = (made.stderr.strip().splitlines() or ["no message"])[-1]
        fail(f"`{sys.executable} -m venv` failed ({detail}); install your Python's venv module "
             f"(e.g. apt install python3.{sys.version_info[1]}-venv) and run again")


# --- the install, only when needed ---------------------------------------------------------------

def inputs_hash():
    digest = hashlib.sha256()
    for name in ("pyproject.toml", os.path.basename(__file__)):
        with open(os.path.join(ROOT, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()


def read_stamp(venv):
    try:
        with open(os.path.join(venv, STAMP)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def pip(venv, *args):
    code = subprocess.call([venv_python(venv), "-m", "pip", *args],
                           env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    if code != 0:
        fail(f"`pip {' '.join(args)}` failed (exit {code}); see pip's output above")


def _without_requirement(metadata, name, extra):
    """METADATA text with every ``Requires-Dist: <name>`` made conditional on ``extra``."""
    head, sep, body = metadata.partition("\n\n")
    lines, moved = [], False
    pattern = re.compile(r"Requires-Dist:\s*" + re.escape(name) + r"(?![\w.-])([^;]*)(?:;(.*))?$", re.IGNORECASE)
    for line in head.split("\n"):
        match = pattern.match(line.rstrip("\r"))
        if match:
            marker = f'({match.group(2).strip()}) and extra == "{extra}"' if match.group(2) else f'extra == "{extra}"'
            line = f"Requires-Dist: {name}{match.group(1).rstrip()}; {marker}"
            moved = True
        lines.append(line)
    if moved and f"Provides-Extra: {extra}" not in lines:
        lines.append(f"Provides-Extra: {extra}")
    return "\n".join(lines) + sep + body, moved


def _record_hash(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def patch_wheel_requirement(wheel, out_dir, name, extra):
    """Copy ``wheel`` into ``out_dir`` (same file name) with requirement ``name`` moved to ``extra``.

    Only ``*.dist-info/METADATA`` changes, and its line in ``RECORD`` (sha256, urlsafe base64
    without padding, and size), so the wheel still installs and verifies as a normal wheel.
    """
    target = os.path.join(out_dir, os.path.basename(wheel))
    with zipfile.ZipFile(wheel) as src:
        infos = src.infolist()
        meta_name = next(i.filename for i in infos
                         if re.fullmatch(r"[^/]+\.dist-info/METADATA", i.filename))
        record_name = meta_name[: -len("METADATA")] + "RECORD"
        metadata, moved = _without_requirement(src.read(meta_name).decode("utf-8"), name, extra)
        if not moved:  # a release without the requirement: nothing to fix
            shutil.copyfile(wheel, target)
            return target
        meta_bytes = metadata.encode("utf-8")
        rows = list(csv.reader(io.StringIO(src.read(record_name).decode("utf-8"))))
        rows = [[meta_name, _record_hash(meta_bytes), str(len(meta_bytes))] if row and row[0] == meta_name else row
                for row in rows]
        record = io.StringIO()
        csv.writer(record, lineterminator="\n").writerows(rows)
        with zipfile.ZipFile(target + ".partial", "w", zipfile.ZIP_DEFLATED) as dst:
            for info in infos:
                data = (meta_bytes if info.filename == meta_name
                        else record.getvalue().encode("utf-8") if info.filename == record_name
                        else src.read(info))
                dst.writestr(info, data)
    os.replace(target + ".partial", target)
    return target


def patched_tinysoundfont(venv):
    """The tinysoundfont wheel with ``pyaudio`` moved to an extra ``playback``, built once per venv.

    pip fetches the release wheel (or builds it from the sdist where no wheel fits the platform);
    the copy differs only in METADATA: ``Requires-Dist: pyaudio; extra == "playback"``. That is
    what the package really needs (pyaudio is imported inside ``Synth.start()`` only), so the
    install needs no portaudio, and ``pip check`` is honest instead of reporting pyaudio missing.
    """
    out_dir = os.path.join(venv, "kmssl-wheels")
    version = TINYSOUNDFONT.split("==")[1]
    existing = [f for f in os.listdir(out_dir) if f.startswith(f"tinysoundfont-{version}-")] \
        if os.path.isdir(out_dir) else []
    if existing:
        return os.path.join(out_dir, existing[0])
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pip(venv, "wheel", "-q", "--no-deps", "--wheel-dir", tmp, TINYSOUNDFONT)
        wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        if len(wheels) != 1:
            fail(f"`pip wheel {TINYSOUNDFONT}` gave {wheels}, expected one wheel")
        return patch_wheel_requirement(os.path.join(tmp, wheels[0]), out_dir, "pyaudio", "playback")


def install(venv, extras, force=False):
    """Install the package editable with ``extras`` (plus what the venv had) unless the stamp says done."""
    stamp = read_stamp(venv)
    digest = inputs_hash()
    had = set(stamp.get("extras", ()))
    if not force and stamp.get("inputs") == digest and set(extras) <= had:
        return
    extras = sorted(set(extras) | had)
    stamp_path = os.path.join(venv, STAMP)
    if os.path.exists(stamp_path):
        os.remove(stamp_path)  # a failed install below leaves no stamp
    log(f"installing keras-music-ssl[{','.join(extras)}] into {venv} (the first time takes a few minutes)")
    requirements = [f"{ROOT}[{','.join(extras)}]"]
    if "test" in extras:
        requirements.append(HEARVALIDATOR)
    pip(venv, "install", "-e", *requirements)
    # --no-deps: the patched wheel's only requirement left is under the extra "playback";
    # --force-reinstall: replaces an unpatched 0.3.7 (installed with --no-deps by hand).
    pip(venv, "install", "-q", "--no-deps", "--force-reinstall", patched_tinysoundfont(venv))
    check = subprocess.run([venv_python(venv), "-m", "pip", "check"], capture_output=True, text=True)
    output = (check.stdout + check.stderr).strip()
    print(output, flush=True)
    if check.returncode != 0:
        fail(f"`pip check` failed in {venv} (see above); the venv is left as it is, unstamped")
    with open(stamp_path, "w") as f:
        json.dump({"inputs": digest, "extras": extras, "tinysoundfont": TINYSOUNDFONT,
                   "hearvalidator": HEARVALIDATOR if "test" in extras else None}, f, indent=1)
        f.write("\n")


def install_node_packages():
    """``npm ci`` in js/ (onnxruntime-node, pinned by js/package-lock.json) for the Node.js ONNX test.

    ``--ignore-scripts``: the CPU binaries ship inside the npm package; its install script only
    fetches GPU add-ons from NuGet. Skipped while js/node_modules matches the lock file. Without
    npm the set-up goes on and that one test is skipped, saying why.
    """
    folder = os.path.join(ROOT, "js")
    with open(os.path.join(folder, "package-lock.json"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    stamp = os.path.join(folder, "node_modules", ".kmssl-lock-sha256")
    if os.path.exists(stamp) and open(stamp).read().strip() == digest:
        return
    npm = shutil.which("npm")
    if npm is None:
        log("npm not found: the Node.js ONNX test will be skipped (install Node.js 18+ with npm to run it)")
        return
    log("installing the Node.js packages of js/ (npm ci)")
    code = subprocess.call([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=folder)
    if code != 0:
        fail(f"`npm ci` in {folder} failed (exit {code}); see npm's output above")
    with open(stamp, "w") as f:
        f.write(digest + "\n")


def install_browser():
    """Debian's ``chromium`` for tests/test_web.py, the browser tagger in a real headless browser.

    Installed with apt-get when this runs as root and no ``chromium`` is on PATH. Not root, or
    no apt-get: the set-up goes on and that test is skipped, saying why. Playwright (the ``test``
    extra) drives this system browser; its own browser download is never used.
    """
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        return
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        log("chromium not found and not running as root: the browser test (tests/test_web.py) will be "
            "skipped (install Debian's chromium, e.g. `sudo apt-get install chromium`, to run it)")
        return
    apt = shutil.which("apt-get")
    if apt is None:
        log("chromium not found and no apt-get: the browser test (tests/test_web.py) will be skipped "
            "(install Chromium as `chromium` on PATH to run it)")
        return
    log("installing Debian's chromium for the browser test (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for args in (["update", "-q"], ["install", "-y", "-q", "--no-install-recommends", "chromium"]):
        code = subprocess.call([apt, *args], env=env)
        if code != 0:
            fail(f"`apt-get {' '.join(args)}` failed (exit {code}); see apt's output above")


class venv_lock:
    """One bootstrap at a time per venv (a lock file in the temp folder, so nothing lands in the repo)."""

    def __init__(self, venv):
        key = hashlib.sha256(venv.encode()).hexdigest()[:16]
        self.path = os.path.join(tempfile.gettempdir(), f"kmssl-bootstrap-{key}.lock")

    def __enter__(self):
        self.file = open(self.path, "w")
        try:
            import fcntl
        except ImportError:  # Windows: no lock
            return self
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("waiting for another bootstrap.py working on the same venv")
            fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.file.close()


# --- the commands --------------------------------------------------------------------------------

def run_in_venv(venv, argv):
    """Replace this process with ``argv`` run in the venv (its bin first on PATH); returns its exit status."""
    env = dict(os.environ, VIRTUAL_ENV=venv, PATH=venv_bin(venv) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("PYTHONHOME", None)
    program = argv[0]
    if not os.path.dirname(program):
        program = shutil.which(program, path=env["PATH"])
        if program is None:
            fail(f"`{argv[0]}` not found in {venv_bin(venv)} or on PATH")
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(ROOT)
    if os.name == "nt":
        return subprocess.call([program, *argv[1:]], env=env)
    os.execve(program, [program, *argv[1:]], env)


def main(argv):
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    venv = venv_dir()
    python = venv_python(venv)
    if command == "quickstart":
        extras, target = QUICKSTART_EXTRAS, [os.path.join(venv_bin(venv), "kmssl"), "quickstart", *args]
    elif command == "test":
        extras, target = TEST_EXTRAS, [python, os.path.join("tests", "run_backends.py"), *args]
    elif command == "test-slow":
        extras, target = TEST_EXTRAS, [python, os.path.join("tests", "run_backends.py"), "--slow", *args]
    elif command == "install":
        extras, target = TEST_EXTRAS, None
    elif command == "run":
        if not args:
            fail("usage: python3 bootstrap.py run CMD [ARGS...]")
        extras, target = QUICKSTART_EXTRAS, args
    elif command == "shell":
        extras, target = QUICKSTART_EXTRAS, [os.environ.get("SHELL") or ("cmd.exe" if os.name == "nt" else "/bin/sh")]
    else:
        fail(f"unknown command {command!r}; one of quickstart, test, test-slow, install, run, shell (--help)")
    with venv_lock(venv):
        ensure_venv(venv)
        install(venv, extras, force=command == "install")
        if "test" in extras:
            install_node_packages()
            install_browser()
    if target is None:
        log(f"ready: activate with `. {os.path.join(venv_bin(venv), 'activate')}`")
        return 0
    return run_in_venv(venv, target)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
