"""musicnn's pretrained taggers (Pons & Serra, 2019) in Keras 3: ``musicnn_mtt``, ``musicnn_msd``,
``vgg_mtt``, ``vgg_msd``.

- ``frontend.py``: ``MusicnnLogMel``, musicnn's librosa preprocessing as a Keras layer;
- ``models.py``: ``Musicnn`` and ``Vgg`` (a 3 s waveform patch -> tag probabilities and
  ``penultimate`` features; ``model.track(waveform)`` tags a whole track);
- ``track.py``: how a track is cut into patches, as musicnn's extractor cuts it;
- ``features.py``: ``PatchFeatures``, a tagger as a frozen embedder of 4 s clips (the probe's reference);
- ``convert.py``: the wheel's TF1 checkpoints -> Keras weights (strict name map);
- ``release.py``: the presets, converted on first use from the ``musicnn`` wheel on PyPI.
"""

from keras_music_ssl.musicnn.features import PatchFeatures
from keras_music_ssl.musicnn.frontend import MusicnnLogMel
from keras_music_ssl.musicnn.models import Musicnn, PatchTagger, Vgg

__all__ = ["MusicnnLogMel", "Musicnn", "PatchFeatures", "PatchTagger", "Vgg"]
