from pyg_hsa.nn.models.hsa_gps import HSAGPS

__all__ = ['HSAGPS']
