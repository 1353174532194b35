"""The probe harness: frozen embeddings -> MLP probes -> tagging metrics -> a comparison report.

    from keras_music_ssl.probe import run_probe
    results = run_probe("mtat:/data/mtat", ["deezer_contrastive", "random"], out="probe_mtat")

Files: ``datasets`` (MTAT, MTG-Jamendo, generic folders, validated), ``models`` (what to probe,
by name), ``baselines`` (``LogMelStats``), ``extract`` (cached embeddings), ``probe`` (the
heads and protocols), ``metrics`` (ROC/PR-AUC, bootstrap), ``fractions`` (limited data),
``report`` (results files, figures), ``harness`` (``run_probe``). Names import their module
on first use, so ``kmssl probe --help`` does not load Keras (nor does the package, for the command line:
``cli/__init__.py``).
"""

import importlib

_LAZY = {
    "load_probe_dataset": "datasets", "ProbeData": "datasets", "ProbeDataError": "datasets",
    "read_mtat": "datasets", "read_jamendo": "datasets", "MTAT_TAGS": "datasets",
    "resolve_model": "models", "probed_model": "models", "ProbedModel": "models",
    "LogMelStats": "baselines",
    "extract_split": "extract",
    "train_probe": "probe", "PROTOCOLS": "probe", "ProbeError": "probe",
    "tagging_metrics": "metrics", "bootstrap_metrics": "metrics",
    "training_subset": "fractions", "DEFAULT_FRACTIONS": "fractions",
    "write_report": "report",
    "run_probe": "harness",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
