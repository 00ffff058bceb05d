"""STORM network: spot encoders, spatial encoder, heads (plain torch modules)."""


def load_model(name_or_path="default", **kwargs):
    """Load a STORM model (placeholder until the model layer lands)."""
    raise NotImplementedError
