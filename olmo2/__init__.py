"""olmo2: the OLMo 2 language model from raw text to a laptop.

    from olmo2 import Olmo2, Tokenizer
    model = Olmo2.from_pretrained("DIR or hub id")
    tok = Tokenizer.from_pretrained("DIR or hub id")
"""
from olmo2.checkpoint import load_model, save_model
from olmo2.config import PRESETS, ModelConfig, preset
from olmo2.errors import Olmo2Error
from olmo2.model import Olmo2
from olmo2.tokenizer import Tokenizer

__all__ = ["Olmo2", "Tokenizer", "ModelConfig", "PRESETS", "preset", "load_model", "save_model", "Olmo2Error"]
__version__ = "0.1.0"
