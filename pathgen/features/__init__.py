"""Patch encoders (registry: ``get_encoder``) and CLAM/TRIDENT-compatible HDF5 feature bags."""
from pathgen.features.encoder import PatchEncoder
from pathgen.features.h5io import read_coords_h5, read_features_h5, write_features_h5, write_patches_h5
from pathgen.features.registry import ENCODERS, get_encoder, list_encoders, register_encoder

__all__ = [
    "ENCODERS", "PatchEncoder", "get_encoder", "list_encoders", "read_coords_h5", "read_features_h5",
    "register_encoder", "write_features_h5", "write_patches_h5",
]
