"""Models: ResNet image encoder, T5 v1.1 text encoder-decoder, their fusion, decoding."""
from dynpt.models.configs import MODEL_NAMES, ResNetConfig, T5Config, VLConfig, get_config
from dynpt.models.vl_model import VLModel, normalize_image, num_visual_tokens
