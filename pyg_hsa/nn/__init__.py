from pyg_hsa.nn.hsa_conv import HSAConv
from pyg_hsa.nn.hsa_encoder_layer import HSAEncoderLayer
from pyg_hsa.nn.models import HSAGPS

__all__ = [
    'HSAConv',
    'HSAEncoderLayer',
    'HSAGPS',
]
