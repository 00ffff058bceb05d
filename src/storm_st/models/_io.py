"""Checkpoints: ``model.safetensors`` + ``config.json`` (with the weights' sha256). No pickle on load."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ._config import PRESETS, StormConfig
from ._storm import HEEncoder, StormModel

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT_VERSION = 1
_DEFAULT_DIR = Path(__file__).parent / "_weights" / "default"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_pretrained(
    model: StormModel, path: str | Path, *, dtype: torch.dtype | None = None, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` to the folder ``path`` (created if needed).

    Parameters
    ----------
    model
        The model.
    path
        Output folder; receives ``model.safetensors`` and ``config.json``.
    dtype
        Store floating-point weights in this dtype (e.g. ``torch.float16`` to halve the size).
    extra
        Extra JSON-serialisable metadata (training data, metrics, ...) stored under ``"extra"``.

    Returns
    -------
    The folder.
    """
    from safetensors.torch import save_file

    from storm_st import __version__

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        state[k] = v
    save_file(state, str(path / WEIGHTS), metadata={"format": "pt"})
    meta = {
        "format_version": FORMAT_VERSION,
        "storm_st_version": __version__,
        "config": model.config.to_dict(),
        "sha256": _sha256(path / WEIGHTS),
        "extra": extra or getattr(model, "extra", {}) or {},
    }
    (path / CONFIG).write_text(json.dumps(meta, indent=1))
    return path


def _read_meta(path: Path) -> dict[str, Any]:
    cfg = path / CONFIG
    if not (path / WEIGHTS).is_file() or not cfg.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a storm_st checkpoint folder: it needs {WEIGHTS} and {CONFIG} (written by "
            "storm_st.models.save_pretrained or `storm-st pretrain`)."
        )
    try:
        meta = json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg} is not valid JSON ({e}); the checkpoint is corrupted.") from e
    if not isinstance(meta, dict) or "config" not in meta or "sha256" not in meta:
        raise ValueError(f"{cfg} lacks 'config' or 'sha256'; it was not written by storm_st or is corrupted.")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"Checkpoint format {meta['format_version']} is newer than this storm_st understands ({FORMAT_VERSION}); "
            "upgrade storm_st."
        )
    return meta


def from_pretrained(path: str | Path, *, map_location: str | torch.device = "cpu", verify: bool = True) -> StormModel:
    """Load a checkpoint folder written by :func:`save_pretrained` (sha256 verified, no pickle).

    Parameters
    ----------
    path
        Checkpoint folder.
    map_location
        Device for the weights.
    verify
        Check the weights' sha256 against ``config.json``.

    Returns
    -------
    The model in ``eval()`` mode, float32.
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta = _read_meta(path)
    if verify:
        digest = _sha256(path / WEIGHTS)
        if digest != meta["sha256"]:
            raise ValueError(
                f"Checksum mismatch for {path / WEIGHTS}: expected sha256 {meta['sha256'][:12]}..., got {digest[:12]}.... "
                "The weights file is corrupted or was replaced; re-download or re-train it."
            )
    config = StormConfig.from_dict(meta["config"])
    model = StormModel(config)
    state = load_file(str(path / WEIGHTS), device=str(map_location))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or bad_shape:
        raise ValueError(
            "Weights do not match the architecture in config.json "
            f"(missing: {missing[:3]}, unexpected: {unexpected[:3]}, wrong shape: {bad_shape[:3]}). "
            "The config or the weights file is wrong."
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    model.extra = meta.get("extra", {})
    model.checkpoint_sha256 = meta["sha256"]
    model.eval()
    return model


def load_model(
    name_or_path: str | Path = "default",
    *,
    he_weights: str | Path | None = None,
    gene_vocab: list[str] | None = None,
    map_location: str | torch.device = "cpu",
    stain_normalize: bool | None = None,
    bn_stats: str | None = None,
    **config_overrides: Any,
) -> StormModel:
    """Load a STORM model.

    Parameters
    ----------
    name_or_path
        ``"default"``: the checkpoint embedded in the package (trained on the HER2ST training
        sections, works offline); a folder written by :func:`save_pretrained` or ``storm-st pretrain``;
        or an architecture name (``"storm-small"``, ``"storm-base"``) for a fresh, randomly
        initialised model.
    he_weights
        Weights of the H&E backbone of a fresh architecture: a local safetensors file with timm key
        names (e.g. H0-mini's ``model.safetensors`` for ``"storm-base"``), or, when online, a hub name
        such as ``"hf-hub:bioptimus/H0-mini"``.
    gene_vocab
        Gene vocabulary of a fresh architecture.
    map_location
        Device.
    stain_normalize
        ``True``: normalise every slide the model reads to the stains of its H&E training slides (Macenko;
        ``config.stain_reference`` is set from the checkpoint's record ``extra["training_stains"]``, written by
        ``storm-st pretrain`` and present in the default checkpoint) -- for slides from other labs or scanners.
        ``False``: read patches as they are. ``None`` (default): as the checkpoint says.
    bn_stats
        ``"slide"``: the H&E backbone normalises every slide with BatchNorm statistics of its own patches (AdaBN; see
        :func:`set_bn_stats`); ``"training"``: with those of its training slides. ``None`` (default): as the
        checkpoint says.
    **config_overrides
        Fields of :class:`~storm_st.models.StormConfig` for a fresh architecture.

    Returns
    -------
    The model, in ``eval()`` mode.
    """
    model = _load(name_or_path, he_weights=he_weights, gene_vocab=gene_vocab, map_location=map_location,
                  **config_overrides)
    if stain_normalize is not None:
        set_stain_normalization(model, stain_normalize)
    if bn_stats is not None:
        set_bn_stats(model, bn_stats)
    return model


def average_models(models: Sequence[StormModel]) -> StormModel:
    """Average the weights of several models of one architecture (a "model soup", Wortsman et al. 2022).

    Runs that start from the same weights and differ only in their data stream (``storm-st pretrain --set
    trainer.data_seed=N`` with one ``trainer.seed``) usually stay close enough in weight space for their average
    to work as one model of the same size (design experiment 22 in ``scripts/design_experiments.md``); models
    trained from different starts do not, and their average is meaningless. Floating-point tensors are averaged,
    BatchNorm running statistics included (not recomputed); integer buffers are taken from the first model.

    Parameters
    ----------
    models
        Two or more models with identical configurations (architecture, gene vocabulary, head genes).

    Returns
    -------
    A new model in ``eval()`` mode; the inputs are not modified. ``extra["averaged_from"]`` lists the inputs'
    names and checkpoint sha256; ``extra["training_stains"]`` is kept when all inputs record the same.
    """
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"average_models needs at least two models, got {len(models)}.")
    ref = {k: v for k, v in models[0].config.to_dict().items() if k != "name"}
    for i, m in enumerate(models[1:], start=1):
        other = {k: v for k, v in m.config.to_dict().items() if k != "name"}
        if other != ref:
            diff = sorted(k for k in ref.keys() | other.keys() if ref.get(k) != other.get(k))
            raise ValueError(
                f"Model {i} has another configuration than model 0 (differs in {diff}); only models of one architecture "
                "and gene vocabulary can be averaged."
            )
    states = [m.state_dict() for m in models]
    averaged = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            averaged[k] = torch.stack([s[k].detach().float().cpu() for s in states]).mean(0).to(v.dtype)
        else:
            averaged[k] = v.detach().cpu().clone()
    out = StormModel(StormConfig.from_dict(models[0].config.to_dict()))
    out.load_state_dict(averaged)
    extras = [getattr(m, "extra", None) or {} for m in models]
    out.extra = {"averaged_from": [{"name": getattr(m, "name", None), "sha256": getattr(m, "checkpoint_sha256", None)}
                                   for m in models]}
    stains = [e.get("training_stains") for e in extras]
    if stains[0] is not None and all(s == stains[0] for s in stains):
        out.extra["training_stains"] = stains[0]
    out.checkpoint_sha256 = None
    out.eval()
    return out


def set_stain_normalization(model: StormModel, on: bool) -> None:
    """Switch ``model``'s stain normalisation to its H&E training slides' stains on or off (see :func:`load_model`)."""
    if not on:
        model.config.stain_reference = None
        return
    ref = model.config.stain_reference or (getattr(model, "extra", None) or {}).get("training_stains")
    if ref is None:
        raise ValueError(
            "This checkpoint records no stains of its training slides (extra['training_stains']), so stain_normalize=True "
            "has no reference; set one from the slides it was trained on: "
            "model.config.stain_reference = storm_st.pp.stain_reference(training_slides)."
        )
    from storm_st.pp._stain import StainParams

    model.config.stain_reference = StainParams.from_dict(ref).to_dict()


def set_bn_stats(model: StormModel, value: str) -> None:
    """Set which BatchNorm statistics ``model``'s H&E backbone uses: ``"training"`` or ``"slide"`` (each slide's own).

    With ``"slide"`` every slide is encoded with BatchNorm statistics re-estimated on its own spot patches (AdaBN),
    which reads the slide's H&E only; see ``StormConfig.bn_stats``. A head fitted under one setting is best used under
    the same one: set it before :func:`storm_st.tl.fit_expression_head`.
    """
    from storm_st._inference import batchnorm_layers
    from storm_st.models._config import check_bn_stats

    check_bn_stats(value)
    if value == "slide" and not batchnorm_layers(model.he_encoder):
        raise ValueError(
            f"bn_stats='slide' re-estimates BatchNorm statistics, but this model's H&E backbone "
            f"({model.config.he_backbone}) has no BatchNorm layers: there is nothing to re-estimate."
        )
    model.config.bn_stats = value


def _load(name_or_path, *, he_weights, gene_vocab, map_location, **config_overrides) -> StormModel:
    name = str(name_or_path)
    if name == "default":
        if not (_DEFAULT_DIR / WEIGHTS).is_file():
            raise FileNotFoundError(
                f"The embedded default checkpoint is missing from {_DEFAULT_DIR}; reinstall storm_st."
            )
        model = from_pretrained(_DEFAULT_DIR, map_location=map_location)
        model.name = "default"
        return model
    if name in PRESETS:
        cfg = StormConfig(**{**PRESETS[name], **config_overrides})
        if gene_vocab is not None:
            cfg.gene_vocab = [str(g).upper() for g in gene_vocab]
        model = StormModel(cfg)
        if he_weights is not None:
            load_backbone_weights(model, he_weights)
        model.name = name
        model.eval()
        return model.to(map_location)
    path = Path(name_or_path)
    if path.exists():
        model = from_pretrained(path, map_location=map_location)
        model.name = str(path)
        return model
    raise ValueError(
        f"Unknown model {name!r}: give 'default', an architecture ({', '.join(PRESETS)}) or an existing checkpoint "
        "folder. Hub downloads are not supported offline: download the folder and pass its path."
    )


def load_backbone_weights(model: StormModel | HEEncoder, path: str | Path) -> None:
    """Load timm-format weights into the H&E backbone of a model (or of an H&E encoder alone); reports mismatches clearly.

    ``path`` is a local safetensors file, or (online only) a hub name such as
    ``"hf-hub:bioptimus/H0-mini"`` that timm can download.
    """
    from safetensors.torch import load_file

    encoder = getattr(model, "he_encoder", model)

    if str(path).startswith("hf-hub:"):
        import timm

        from ._storm import _timm_kwargs

        try:
            hub = timm.create_model(
                str(path), pretrained=True, num_classes=0, **_timm_kwargs(model.config.he_backbone_kwargs)
            )
        except Exception as e:  # network and hub errors vary
            raise RuntimeError(
                f"Could not fetch {path!s} from the hub ({type(e).__name__}: {e}). Offline, download the weights "
                "file once and pass its local path as he_weights."
            ) from e
        state = hub.state_dict()
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"H&E backbone weights {str(path)!r} not found.")
        state = load_file(str(path))
    state = {k.removeprefix("model.").removeprefix("backbone."): v for k, v in state.items()}
    res = encoder.backbone.load_state_dict(state, strict=False)
    core_missing = [k for k in res.missing_keys if not k.startswith("head")]
    if core_missing:
        raise ValueError(
            f"{path} does not fit backbone {model.config.he_backbone!r}: {len(core_missing)} missing keys "
            f"(e.g. {core_missing[:3]})."
        )
