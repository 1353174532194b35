"""LogMelSpectrogram against independent references: librosa (float64) and torchaudio's formulas."""

import os
import warnings

import keras
import librosa
import numpy as np
import pytest

from keras_music_ssl import LogMelSpectrogram
from keras_music_ssl.frontend import DFT_MODES

SR = 16000
N = 64000  # 4 s


def _signals():
    rng = np.random.default_rng(0)
    t = np.arange(N) / SR
    return {
        "noise": 0.3 * rng.standard_normal(N),
        # linear chirp 50 Hz -> 7.9 kHz over 4 s
        "chirp": 0.8 * np.sin(2 * np.pi * (50 * t + (7900 - 50) / 8 * t ** 2)),
        "silence": np.zeros(N),
        "half_silent": np.concatenate([np.zeros(N // 2), 0.5 * rng.standard_normal(N // 2)]),
    }


SIGNALS = _signals()


def reference_logmel(y, amin=1e-10, top_db=100.0):
    """torchaudio MelSpectrogram(normalized=True, slaney, norm=None, f_max=11025) + AmplitudeToDB,
    recomputed in float64 with librosa (reflect-padded STFT, periodic Hann)."""
    y = np.asarray(y, np.float64)
    stft = librosa.stft(y, n_fft=1024, hop_length=512, window="hann", center=True, pad_mode="reflect")
    window = librosa.filters.get_window("hann", 1024, fftbins=True)
    power = np.abs(stft) ** 2 / np.sum(window ** 2)
    with warnings.catch_warnings():  # f_max > Nyquist: the 11 empty filters are expected
        warnings.simplefilter("ignore")
        fb = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=128, fmin=0.0, fmax=11025.0, htk=False,
                                 norm=None, dtype=np.float64)
    db = 10 * np.log10(np.maximum(fb @ power, amin))
    return np.maximum(db, db.max() - top_db)  # (mel, frames)


# dB within 80 dB of a clip's maximum. The DFT as a matrix product sums 1,024 float32 products
# per bin, so its round-off grows faster than the FFT's: 2.0e-3 dB at -60..-80 dB on the chirp
# (the FFT: 6.7e-4), 1.4e-2 dB below -80 dB (8.3e-3).
NEAR_TOLERANCE = {"fft": 1e-3, "matmul": 3e-3}


@pytest.fixture(scope="module", params=DFT_MODES)
def float32_output(request):
    """The float32 log-mel of every signal, through the FFT and through the DFT matrix product."""
    x = np.stack([SIGNALS[k] for k in SIGNALS]).astype(np.float32)
    out = keras.ops.convert_to_numpy(LogMelSpectrogram(dft=request.param)(x))[..., 0]
    return {"dft": request.param, **dict(zip(SIGNALS, out))}


@pytest.mark.parametrize("name", list(SIGNALS))
def test_logmel_matches_librosa_float64_reference(name, float32_output):
    ours = float32_output[name]
    ref = reference_logmel(SIGNALS[name].astype(np.float32))
    assert ours.shape == ref.shape == (128, 126)
    err = np.abs(ours - ref)
    near = ref > ref.max() - 80.0
    # 1e-3 dB (FFT) within 80 dB of the clip's maximum. Further down, float32 FFT round-off sets the
    # floor: about 1e-2 dB at -97 dB on the chirp (docs/paper.md#frontend-tolerance).
    tolerance = NEAR_TOLERANCE[float32_output["dft"]]
    assert err[near].max() <= tolerance, f"{name}: {err[near].max():.2e} dB within 80 dB of max"
    assert err.max() <= 2e-2, f"{name}: {err.max():.2e} dB anywhere"


@pytest.mark.parametrize("dft", DFT_MODES)
@pytest.mark.parametrize("name", list(SIGNALS))
def test_logmel_in_float64_matches_reference_on_every_bin(name, dft):
    """In float64 the layer's algorithm equals the reference on every bin, floor included."""
    layer = LogMelSpectrogram(dtype="float64", dft=dft)
    x = SIGNALS[name][None]
    if keras.backend.backend() == "jax":
        import jax

        with jax.enable_x64(True):
            ours = np.asarray(layer(x))[0, ..., 0]
    else:
        ours = keras.ops.convert_to_numpy(layer(x))[0, ..., 0]
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, reference_logmel(SIGNALS[name]), rtol=0, atol=1e-3)


def test_silence_gives_finite_floor(float32_output):
    silence = float32_output["silence"]
    assert np.all(np.isfinite(silence))
    np.testing.assert_array_equal(silence, -100.0)  # 10 * log10(amin)
    half = float32_output["half_silent"]
    assert np.all(np.isfinite(half))
    assert half.min() == pytest.approx(half.max() - 100.0, abs=1e-4)  # per-example top_db floor


def test_top_db_floor_is_per_example():
    loud = 3.0 * SIGNALS["noise"]
    x = np.stack([loud, 0.1 * loud]).astype(np.float32)
    out = keras.ops.convert_to_numpy(LogMelSpectrogram()(x))[..., 0]
    assert out[0].max() - out[1].max() == pytest.approx(20.0, abs=1e-2)  # 20 * log10(10)
    assert out[0].max() > 0 > out[1].max()
    for example in out:  # floor: the example's own max - top_db, never below 10 * log10(amin)
        assert example.min() == pytest.approx(max(example.max() - 100.0, -100.0), abs=1e-3)


def test_filterbank_equals_torchaudio_formula():
    from torch_reference import torchaudio_mel_fbanks

    ours = LogMelSpectrogram().mel_filterbank
    theirs = torchaudio_mel_fbanks(513, 0.0, 11025.0, 128, SR).numpy()
    assert ours.shape == theirs.shape == (513, 128)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    # f_max = 11025 > 8 kHz Nyquist: filters 117..127 are empty, kept for fidelity (docs/paper.md#frontend).
    empty = np.flatnonzero(ours.max(axis=0) == 0)
    np.testing.assert_array_equal(empty, np.arange(117, 128))


def test_window_is_periodic_hann_normalised_like_torchaudio():
    layer = LogMelSpectrogram()
    np.testing.assert_allclose(layer.window, np.hanning(1025)[:-1], atol=1e-7)
    assert np.sum(layer.window.astype(np.float64) ** 2) == pytest.approx(384.0)


def test_accepts_channel_axis_and_variable_batch():
    layer = LogMelSpectrogram()
    x = SIGNALS["noise"].astype(np.float32)
    a = keras.ops.convert_to_numpy(layer(x[None]))
    b = keras.ops.convert_to_numpy(layer(np.stack([x, x, x])[..., None]))
    assert a.shape == (1, 128, 126, 1) and b.shape == (3, 128, 126, 1)
    np.testing.assert_allclose(b, np.repeat(a, 3, axis=0), atol=1e-5)


def test_output_shape_for_other_lengths_and_settings():
    layer = LogMelSpectrogram(n_mels=64, f_max=8000, hop_length=256)
    y = keras.ops.convert_to_numpy(layer(np.zeros((2, 16000), np.float32)))
    assert y.shape == (2, 64, 1 + 16000 // 256, 1)
    assert layer.compute_output_shape((None, 16000)) == (None, 64, 63, 1)


def test_config_round_trip_keeps_every_argument():
    layer = LogMelSpectrogram(sample_rate=22050, n_fft=2048, hop_length=441, n_mels=96, f_min=30.0,
                              f_max=None, mel_scale="htk", mel_norm="slaney", power=1.0,
                              normalized=False, center=False, pad_mode="constant", amin=1e-5,
                              top_db=None, dft="matmul", name="fe")
    clone = LogMelSpectrogram.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    np.testing.assert_array_equal(clone.mel_filterbank, layer.mel_filterbank)
    x = np.random.default_rng(3).standard_normal((2, 22050)).astype(np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone(x)),
                                  keras.ops.convert_to_numpy(layer(x)))


def test_keras_file_round_trip(tmp_path):
    inputs = keras.Input((N,))
    model = keras.Model(inputs, LogMelSpectrogram(top_db=80.0, dft="matmul")(inputs))
    path = os.path.join(tmp_path, "frontend.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = SIGNALS["chirp"][None].astype(np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x)),
                                  keras.ops.convert_to_numpy(model(x)))
    assert (loaded.layers[1].top_db, loaded.layers[1].dft) == (80.0, "matmul")


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="mel_scale"):
        LogMelSpectrogram(mel_scale="bark")
    with pytest.raises(ValueError, match="amin"):
        LogMelSpectrogram(amin=0.0)
    with pytest.raises(ValueError, match="dft"):
        LogMelSpectrogram(dft="rfft")


def test_dft_as_matrix_product_equals_the_fft_path():
    """The two DFTs are interchangeable on the same model: 1e-4 dB within 40 dB of each clip's
    maximum (where the music is), the sum of both round-offs further down."""
    x = np.stack([SIGNALS[k] for k in SIGNALS]).astype(np.float32)
    fft = keras.ops.convert_to_numpy(LogMelSpectrogram()(x))[..., 0]
    matmul = keras.ops.convert_to_numpy(LogMelSpectrogram(dft="matmul")(x))[..., 0]
    below = fft.max(axis=(1, 2), keepdims=True) - fft
    err = np.abs(matmul - fft)
    assert err[below < 40].max() <= 1e-4
    assert err[below < 80].max() <= NEAR_TOLERANCE["fft"] + NEAR_TOLERANCE["matmul"]
    assert err.max() <= 3e-2


def test_mixed_precision_does_not_quantise_the_audio():
    """Under a float16 policy the output is float16, but the STFT still sees float32 audio."""
    x = SIGNALS["chirp"][None].astype(np.float32)
    ref = keras.ops.convert_to_numpy(LogMelSpectrogram()(x))
    half = keras.ops.convert_to_numpy(LogMelSpectrogram(dtype="mixed_float16")(x))
    assert half.dtype == np.float16
    assert np.all(np.isfinite(half))
    # float16 spacing at |x| = 100 dB is 0.0625: the only error left is the output cast.
    np.testing.assert_allclose(half.astype(np.float32), ref, atol=0.04)


def test_float16_compute_keeps_silence_finite():
    """dependencies.md §4d: with amin = 1e-10 rounded to 0 in float16, a linear-domain clamp gives
    log(0) = -inf and then NaN; the log-domain floor does not depend on amin being representable."""
    layer = LogMelSpectrogram(dtype="float16")
    x = np.stack([np.zeros(N), SIGNALS["half_silent"]]).astype(np.float32)
    out = keras.ops.convert_to_numpy(layer(x)).astype(np.float32)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[0], -100.0)


@pytest.mark.tf_only
def test_tflite_float16_export_of_frontend_has_no_nan_and_no_flex_ops(tmp_path):
    """The paper's frontend converted with float16 weights (constants rounded to fp16) stays finite."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    layer = LogMelSpectrogram()
    fn = tf.function(lambda w: layer(w), input_signature=[tf.TensorSpec((1, N), tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], layer)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # fails on any Flex op
    path = tmp_path / "frontend_fp16.tflite"
    path.write_bytes(converter.convert())
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    for name in ("silence", "half_silent", "chirp"):
        x = SIGNALS[name][None].astype(np.float32)
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])[0, ..., 0]
        assert np.all(np.isfinite(y)), name
        ref = reference_logmel(x[0])
        # float16 rounding of the window constant raises spectral leakage: measured 0.12 dB at
        # 50 dB below the chirp's peak, several dB near -90 dB. Bins within 60 dB stay close.
        near = ref > ref.max() - 60.0
        np.testing.assert_allclose(y[near], ref[near], atol=0.2, err_msg=name)
