"""data2vec 2.0 model core: pure PyTorch, single device, no I/O. Paper -> code, interface and deviations from
fairseq: docs/model.md."""
from model.build import build_model, config_from_dict
from model.config import Data2Vec2Config
from model.data2vec2 import Data2Vec2
from model.mae import MAE
from model.masking import make_mask
from model.mlm import MaskedLM
from model.presets import get_config
from model.wav2vec2 import Wav2Vec2

__all__ = ["Data2Vec2", "Data2Vec2Config", "MAE", "MaskedLM", "Wav2Vec2", "build_model", "config_from_dict",
           "get_config", "make_mask"]
