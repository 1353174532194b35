"""A quiet, fast command line: ``--help`` without Keras or a backend, no TensorFlow log lines
unless ``--verbose``, progress bars only on a terminal (one summary line otherwise), and the
package import still registering every class for ``keras.saving.load_model``.

Wall times are measured by hand, never asserted here (the guide forbids timed tests); what is
held is what makes ``--help`` fast: the modules a fresh process imports."""

import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import keras_music_ssl
from keras_music_ssl import cli, progress, tf_logs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(keras_music_ssl.__file__)))
HEAVY = ("tensorflow", "jax", "torch", "keras", "numpy")
# What TensorFlow's and absl's native logging write (quiet by default)
NOISE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:|absl::InitializeLog|oneDNN|cuda|cuInit|This TensorFlow binary",
                   re.IGNORECASE | re.MULTILINE)


def fresh_env(**changes):
    """This process's environment for a child on the same tree, without the tests' own log level
    (conftest sets TF_CPP_MIN_LOG_LEVEL=2: the command line must be quiet without it)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env.update(changes)
    return env


def imported_packages(argv, env=None):
    """(completed process, top-level packages it imported) of ``python -X importtime argv``."""
    done = subprocess.run([sys.executable, "-X", "importtime", *argv], env=env or fresh_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    names = {line.rsplit("|", 1)[1].strip().split(".")[0]
             for line in done.stderr.splitlines() if line.startswith("import time:") and line.count("|") == 2}
    return done, names


# --- --help: no Keras, no backend ------------------------------------------------------------

@pytest.mark.backend_independent
@pytest.mark.parametrize("command", [None, *cli.COMMANDS])
def test_help_imports_no_keras_and_no_backend(command):
    argv = ["-m", "keras_music_ssl"] + ([command] if command else []) + ["--help"]
    done, names = imported_packages(argv)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("usage: kmssl"), done.stdout[:500]
    assert "--verbose" in done.stdout
    assert not names & set(HEAVY), sorted(names & set(HEAVY))
    assert "keras_music_ssl" in names  # (the parse did import the package, in its light form)


@pytest.mark.backend_independent
def test_the_console_script_and_a_broken_backend_help_alike(tmp_path):
    """``kmssl`` (a console script named so, as pip writes it) is light too, and --help needs no
    working backend: KERAS_BACKEND is checked when a command runs."""
    script = tmp_path / "kmssl"
    script.write_text("import sys\nfrom keras_music_ssl.cli import main\nsys.exit(main())\n")
    done, names = imported_packages([str(script), "embed", "--help"], env=fresh_env(KERAS_BACKEND="bogus"))
    assert done.returncode == 0 and "--preset" in done.stdout, done.stderr[-3000:]
    assert not names & set(HEAVY), sorted(names & set(HEAVY))


def test_the_light_lists_match_the_heavy_ones():
    """The option lists that --help reads without Keras equal the ones the commands use."""
    from keras_music_ssl.cli.export import FORMATS
    from keras_music_ssl.export import FORMATS as EXPORT_FORMATS
    from keras_music_ssl.pretext import METHODS
    from keras_music_ssl.train import METHOD_NAMES

    assert FORMATS == EXPORT_FORMATS
    assert METHOD_NAMES == tuple(METHODS)


@pytest.mark.backend_independent
@pytest.mark.parametrize("argv", [["--verbose", "embed"], ["embed", "--verbose"], ["embed"]])
def test_verbose_goes_before_or_after_the_command(argv):
    parser, _ = cli._parser(argv)
    args = parser.parse_args(argv + ["a.wav", "--preset", "p", "--out", "o.npz"])
    assert args.verbose is (argv != ["embed"])


# --- TensorFlow's log lines and progress off a terminal: a real command in a fresh process -----

@pytest.fixture(scope="module")
def embed_inputs(tmp_path_factory):
    import keras
    from conftest import TINY_ENCODER

    from keras_music_ssl import MusicEncoder

    root = tmp_path_factory.mktemp("quiet")
    keras.utils.set_random_seed(0)
    encoder = MusicEncoder(**TINY_ENCODER)
    encoder.save_to_preset(root / "tiny", method="test")
    encoder.save(root / "tiny.keras")
    songs = []
    for i in range(2):
        songs.append(str(root / f"song{i}.wav"))
        sf.write(songs[-1], 0.3 * np.sin(np.arange(16000 * 2) * 0.05 * (i + 1)).astype(np.float32), 16000)
    return root, songs


def kmssl(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "keras_music_ssl", *map(str, argv)], env=fresh_env(), cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)


def test_a_command_off_a_terminal_prints_no_log_lines_and_one_progress_line(embed_inputs):
    root, songs = embed_inputs
    done = kmssl("embed", *songs, "--preset", root / "tiny", "--out", root / "quiet.npz", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not NOISE.search(done.stderr), done.stderr[-3000:]
    assert "\r" not in done.stderr + done.stdout and "\b" not in done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("embed: 100% 2/2"), done.stderr  # the summary line
    assert done.stdout.splitlines() == [f"2 file(s) embedded -> {root / 'quiet.npz'} (embeddings 2 x 32)"]


def test_verbose_keeps_tensorflows_log_lines(embed_inputs):
    root, songs = embed_inputs
    done = kmssl("--verbose", "embed", songs[0], "--preset", root / "tiny", "--out", root / "verbose.npz", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    if keras_music_ssl.backend_problem() is None and os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        assert NOISE.search(done.stderr), done.stderr[-3000:]  # TensorFlow 2.21's import logs through absl


def test_a_saved_encoder_loads_in_a_fresh_process_that_only_imported_the_package(embed_inputs):
    root, _ = embed_inputs
    code = ("import keras, keras_music_ssl\n"
            f"model = keras.saving.load_model({str(root / 'tiny.keras')!r})\n"
            "print(type(model).__name__, model.output_dim)")
    done = subprocess.run([sys.executable, "-c", code], env=fresh_env(), cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["MusicEncoder", "32"]


# --- progress: one home ---------------------------------------------------------------------

class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.backend_independent
def test_keras_verbosity_is_a_bar_on_a_terminal_and_one_line_per_epoch_elsewhere(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert [progress.keras_verbosity(v) for v in (0, 1, True, "auto", 2)] == [0, 2, 2, 2, 2]
    monkeypatch.setattr(sys, "stdout", Terminal())
    assert [progress.keras_verbosity(v) for v in (0, 1, True, "auto", 2)] == [0, 1, 1, 1, 2]


@pytest.mark.backend_independent
def test_a_bar_off_a_terminal_is_one_summary_line(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    out = io.StringIO()
    assert list(progress.bar(range(5), desc="embed", unit="file", file=out)) == list(range(5))
    with progress.bar(total=10, desc="prepare", unit="file", file=out) as bar:
        for _ in range(10):
            bar.update()
        bar.set_postfix(skipped=1)
    with pytest.raises(RuntimeError), progress.bar(total=3, desc="failed", file=out) as bar:
        raise RuntimeError  # the error speaks: no summary
    with pytest.raises(RuntimeError):
        failed = progress.bar(total=3, desc="failed", file=out)
        try:
            raise RuntimeError
        finally:
            failed.close()
    for _ in progress.bar(range(3), desc="off", file=out, enabled=False):
        pass
    for _ in progress.bar(range(3), desc="download", file=out, summary=False):
        pass
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue(), out.getvalue()
    assert lines[0].startswith("embed: 100% 5/5 [") and "file/s" in lines[0]
    assert lines[1].startswith("prepare: 100% 10/10 [") and lines[1].endswith("skipped=1]")
    from tqdm import tqdm

    on_a_terminal = progress.bar(range(2), file=Terminal())
    assert isinstance(on_a_terminal, tqdm) and not on_a_terminal.disable
    on_a_terminal.close()


def test_keras_progress_off_a_terminal_is_one_line_per_epoch_and_per_predict(capsys, tiny_encoder_config):
    """A probe fit with verbose=1 and an encoder's predict, stdout captured (not a terminal)."""
    from keras_music_ssl import MusicEncoder
    from keras_music_ssl.probe.probe import train_probe

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype("float32"), (rng.uniform(size=(64, 2)) > 0.5).astype("float32")
    capsys.readouterr()
    trained = train_probe(x, y, x[:16], y[:16], ["a", "b"], verbose=1, epochs=3, patience=10, lr_patience=0)
    out = capsys.readouterr().out
    epochs = len(trained.history["loss"])
    assert "\r" not in out and "\b" not in out, out
    lines = out.splitlines()
    assert len([line for line in lines if line.startswith("Epoch ")]) == epochs, out
    assert len([line for line in lines if re.match(r"\d+/\d+ - ", line)]) == epochs, out  # one per epoch
    assert len(lines) <= 2 * epochs + 2, out  # (+ EarlyStopping's own lines at verbose=1)
    encoder = MusicEncoder(**tiny_encoder_config)
    encoder.predict(np.zeros((3, encoder.num_samples), "float32"), batch_size=2)
    out = capsys.readouterr().out
    assert "\r" not in out and "\b" not in out and len(out.splitlines()) == 1, out


# --- the native log filter ------------------------------------------------------------------------

@pytest.mark.backend_independent
def test_the_native_filter_drops_absl_info_and_warnings_only():
    native = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
              "I0000 00:00:1796685542.978617    5424 port.cc:153] oneDNN custom operations are on.\n"
              "I0000 00:00:1796685543.112937    5424 cpu_feature_guard.cc:227] This TensorFlow binary is ...\n"
              "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.\n"
              "W0102 10:11:12.131415    5424 some.cc:1] a warning\n"
              "E0000 00:00:1796685550.345956    5424 cuda_platform.cc:52] failed call to cuInit\n"
              "/x/y.py:3: UserWarning: from Python\n"
              "  warnings.warn(message)\n"
              "I0000 00:00:1796685550.345956    5424 a.cc:1] again\n"
              "Traceback (most recent call last):\n")
    assert tf_logs.dropped_noise(native).splitlines() == [
        "E0000 00:00:1796685550.345956    5424 cuda_platform.cc:52] failed call to cuInit",
        "/x/y.py:3: UserWarning: from Python", "  warnings.warn(message)", "Traceback (most recent call last):"]
