"""The five pretext methods of the paper as Keras models trained with ``fit`` on views.

    from keras_music_ssl import MusicEncoder
    from keras_music_ssl.pretext import Contrastive

    model = Contrastive(MusicEncoder())
    model.compile()                      # AdamW, cosine learning rate and weight decay
    model.fit(views, epochs=10)          # views: (batch, views >= 2, 64000) float32
    model.encoder.save_to_preset("my_preset")

Several devices (``distribute``): build, compile and fit inside ``Distribution(...).scope()``.
"""

from keras_music_ssl.pretext.barlow_twins import BarlowTwins, barlow_twins_loss
from keras_music_ssl.pretext.base import PretextModel
from keras_music_ssl.pretext.byol import BYOL, byol_loss
from keras_music_ssl.pretext.clustering import Clustering, clustering_loss, updated_center
from keras_music_ssl.pretext.contrastive import Contrastive, nt_xent_loss
from keras_music_ssl.pretext.distribute import Distribution
from keras_music_ssl.pretext.monitor import CollapseMonitor, embedding_statistics
from keras_music_ssl.pretext.optimizer import ScheduledAdamW
from keras_music_ssl.pretext.vicreg import VICReg, vicreg_loss

METHODS = {"contrastive": Contrastive, "byol": BYOL, "clustering": Clustering,
           "barlow_twins": BarlowTwins, "vicreg": VICReg}

__all__ = [
    "BYOL",
    "BarlowTwins",
    "Clustering",
    "CollapseMonitor",
    "Contrastive",
    "Distribution",
    "METHODS",
    "PretextModel",
    "ScheduledAdamW",
    "VICReg",
    "barlow_twins_loss",
    "byol_loss",
    "clustering_loss",
    "embedding_statistics",
    "nt_xent_loss",
    "updated_center",
    "vicreg_loss",
]
