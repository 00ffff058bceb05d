"""``storm-st pretrain``: read slides from a YAML config, pretrain with Lightning, export a checkpoint."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "model": {},
    "vocab": {"n_top_genes": 2000, "genes": None},
    "data": {"slides": [], "windows_per_batch": 32, "cache_patch_size": None, "num_workers": 0, "paired_fraction": 0.75,
             "contiguous": False, "novae_model": None},
    "training": {
        "n_visible": 5,
        "p_he_only": 0.5,
        "lr": 1e-4,
        "backbone_lr": None,
        "weight_decay": 0.05,
        "layer_decay": 0.7,
        "warmup_steps": 100,
        "max_steps": 2000,
        "ema_momentum": 0.996,
        "st_loss": "gaussian",
        "he_to_st_weight": 0.0,
        "crop_scale": [0.5, 1.0],
        "jitter": 0.1,
        "stain_jitter": 0.0,
        "init_backbone": None,
        "init_model": None,
    },
    "trainer": {
        "accelerator": "auto",
        "devices": "auto",
        "strategy": "auto",
        "precision": None,
        "accumulate_grad_batches": 1,
        "log_every_n_steps": 10,
        "checkpoint_every_n_steps": 100,
        "seed": 0,
        "data_seed": None,  # windows, masks, crops, dropout; None = seed. Same seed, other data_seed: same start
        "enable_progress_bar": True,
    },
}


def data_seed(trainer: dict[str, Any]) -> int:
    """The seed of a run's data stream: ``trainer.data_seed``, or ``trainer.seed`` when it is unset (or not recorded)."""
    seed = trainer.get("data_seed")
    return int(trainer.get("seed", 0) if seed is None else seed)


def _apply_overrides(user: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``section.key=value`` strings (values read as YAML) set on a copy of a config's content."""
    import yaml

    user = dict(user)  # sections are rebuilt below, never edited in place
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or (section != "output" and (not dot or not name)) or (section == "output" and dot):
            raise ValueError(f"Config override {item!r} is not section.key=value (e.g. trainer.data_seed=1, output=runs/x).")
        value = yaml.safe_load(raw)
        if section == "output":
            user["output"] = value
            continue
        if section not in DEFAULTS:
            raise ValueError(f"Config override {item!r}: unknown section {section!r}; expected one of {sorted(DEFAULTS)}.")
        user[section] = {**(user.get(section) or {}), name: value}
    return user


def _read_with_extends(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config's content, after the file it ``extends`` (if any).

    ``extends: other.yaml`` (relative to this file) is read first and this file's keys are set on top of it,
    section by section; a list (such as ``data.slides``) is replaced as a whole.
    """
    import yaml

    path = path.resolve()
    if path in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path))
        raise ValueError(f"Config files extend each other in a loop ({chain}); remove one 'extends'.")
    if not path.is_file():
        hint = f" (named by 'extends' in {str(_seen[-1])!r})" if _seen else ""
        raise FileNotFoundError(f"Config file {str(path)!r} not found{hint}.")
    user = yaml.safe_load(path.read_text()) or {}
    if not isinstance(user, dict):
        raise ValueError(f"Config file {str(path)!r} must hold a mapping of sections, not {type(user).__name__}.")
    parent = user.pop("extends", None)
    if parent is None:
        return user
    merged = _read_with_extends(path.parent / str(parent), (*_seen, path))
    for k, v in user.items():
        if k != "output" and isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = {**merged[k], **v}
        else:
            merged[k] = v
    return merged


def load_config(path: str | Path | dict, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a YAML pretraining config and fill in defaults (unknown sections raise).

    A file may start from another with ``extends: other.yaml`` (a path relative to it): this file's keys are set on
    top of the other's, section by section, lists replaced as a whole; relative paths inside either file are read
    from the folder of the file given here. ``overrides`` are ``section.key=value`` strings applied on top of the
    file (``storm-st pretrain --set``).
    """
    if isinstance(path, dict):
        user = path
        base = Path.cwd()
    else:
        path = Path(path)
        user = _read_with_extends(path)
        base = path.parent
    if overrides:
        user = _apply_overrides(user, overrides)
    unknown = set(user) - set(DEFAULTS) - {"output"}
    if unknown:
        raise ValueError(f"Unknown config sections {sorted(unknown)}; expected {sorted(DEFAULTS)} and 'output'.")
    cfg = {k: dict(v) for k, v in DEFAULTS.items()}
    for k, v in user.items():
        if k == "output":
            cfg["output"] = v
            continue
        bad = set(v or {}) - set(DEFAULTS[k]) if k not in ("model",) else set()
        if bad:
            raise ValueError(f"Unknown keys {sorted(bad)} in config section {k!r}; known: {sorted(DEFAULTS[k])}.")
        cfg[k].update(v or {})
    cfg["_base"] = str(base)
    return cfg


def read_slide_spec(spec: dict[str, Any], base: str | Path = ".") -> Any:
    """Read one slide of a config.

    ``{reader: her2st, root: ..., section: C2}``, ``{reader: dlpfc, path: ...}``, ``{reader: wsi, path: he.tif,
    mpp: 0.5, pitch_um: 100, ...}`` (an H&E-only image tiled into virtual spots over its tissue, the arguments
    of :func:`storm_st.io.read_wsi`; give it ``use: he``), or ``{path: slide.h5ad | store.zarr | spaceranger_dir}``.
    Paths starting with ``@data/`` are read from the shared data folder (``$STORM_ST_DATA`` or ``../shared/data``);
    others are relative to the config.
    """
    import anndata as ad

    from storm_st import io

    spec = dict(spec)  # a bare path in a config was made {path: ...} by pretrain
    if "adata" in spec:  # an object in memory (from Python: storm_st.train.pretrain with a dict config)
        return spec["adata"]
    reader = spec.pop("reader", None)
    for key in ("use", "weight", "library_key", "layer"):
        spec.pop(key, None)

    def _p(key: str) -> Path:
        raw = str(spec.pop(key))
        if raw.startswith("@data/"):  # the shared data folder: $STORM_ST_DATA or ../shared/data
            from storm_st._utils import data_dir

            return data_dir() / raw.removeprefix("@data/")
        p = Path(raw)
        return p if p.is_absolute() else Path(base) / p

    if reader == "her2st":
        root = _p("root")
        return io.read_her2st_section(root, spec.pop("section"), **spec)
    if reader == "dlpfc":
        return io.read_dlpfc(_p("path"), **spec)
    if reader == "visium":
        return io.read_visium(_p("path"), **spec)
    if reader == "wsi":
        if "mpp" not in spec:
            raise ValueError("A 'wsi' slide spec needs mpp (µm per full-resolution pixel of the image), e.g. mpp: 0.5.")
        return io.read_wsi(_p("path"), **spec)
    if reader is not None:
        raise ValueError(f"Unknown reader {reader!r} in slide spec; use her2st, dlpfc, visium, wsi or a plain path.")
    path = _p("path")
    if path.suffix == ".h5ad":
        return ad.read_h5ad(path)
    if path.suffix == ".zarr":
        return io.read_spatialdata(path, **spec)
    if path.is_dir():
        return io.read_visium(path, **spec)
    raise ValueError(f"Cannot tell how to read {str(path)!r}: give an .h5ad, a .zarr store, or a Space Ranger folder.")


def _gene_features_dim(key: str, adatas: list, novae_model: Any) -> int:
    """Width of ``obsm[key]`` on the expression slides (computed with NOVAE first when ``data.novae_model`` is set)."""
    if not adatas:
        raise ValueError(f"model.gene_input reads obsm[{key!r}] but no pretraining slide has expression (use: st or he+st).")
    dims = set()
    for a in adatas:
        if key not in a.obsm and novae_model is not None:
            from storm_st.pp import novae_embeddings

            novae_embeddings(a, novae_model, key_added=key)
        if key not in a.obsm:
            raise KeyError(
                f"model.gene_input reads obsm[{key!r}], missing on a pretraining slide: give slides that carry it "
                "(e.g. .h5ad files) or set data.novae_model to a local NOVAE model folder to compute it."
            )
        dims.add(int(np.asarray(a.obsm[key]).shape[1]))
    if len(dims) != 1:
        raise ValueError(f"obsm[{key!r}] has different widths across the pretraining slides: {sorted(dims)}.")
    return dims.pop()


def pretrain(
    config: str | Path | dict,
    *,
    output: str | Path | None = None,
    resume: bool = False,
    max_steps: int | None = None,
    stop_at_step: int | None = None,
    overrides: Sequence[str] = (),
) -> Path:
    """Pretrain STORM as described by ``config``; returns the exported checkpoint folder.

    What ``storm-st pretrain`` runs. ``config`` is a YAML file or the same content as a dict (sections ``output``,
    ``model``, ``vocab``, ``data``, ``training``, ``trainer``; see the command-line page of the docs). With
    ``training.init_model`` (``"default"`` or a model folder) the run continues that checkpoint on the config's
    slides instead of starting from scratch.

    The run folder holds Lightning checkpoints (``checkpoints/last.ckpt`` every
    ``checkpoint_every_n_steps``; ``resume=True`` continues from it and reaches the same result, since
    every step's randomness is seeded by the step number), ``metrics.csv`` and, at the end, the
    exported model (``model/``: safetensors + config.json). ``max_steps`` overrides the schedule's
    length; ``stop_at_step`` stops earlier without changing the schedule (train in chunks, then
    ``resume``). ``overrides`` (``["trainer.data_seed=1"]``) change single config values, as
    ``storm-st pretrain --set`` does.
    """
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from storm_st.data import WindowSampler, prepare_slides
    from storm_st.models import StormConfig
    from storm_st.pp import select_hvgs

    from ._pretrain import StormPretraining

    cfg = load_config(config, overrides)
    if max_steps is not None:
        cfg["training"]["max_steps"] = int(max_steps)
    init = _init_model(cfg)  # continued pretraining: architecture, vocabulary and weights of a checkpoint
    out = Path(output or cfg.get("output") or "runs/storm")
    out.mkdir(parents=True, exist_ok=True)
    tr = cfg["trainer"]
    L.seed_everything(tr["seed"], workers=True)
    t0 = time.time()
    slide_specs = cfg["data"]["slides"]
    if not slide_specs:
        raise ValueError("The config lists no slides under data.slides.")
    adatas, uses, weights, prep_kw = [], [], [], []
    for raw in slide_specs:
        spec = raw if isinstance(raw, dict) else {"path": raw}  # a bare path reads as {path: ...}
        use = spec.get("use", "he+st")
        weights.append(float(spec.get("weight", 1.0)))
        if use not in ("he+st", "he", "st"):
            raise ValueError(f"slide 'use' must be he+st, he or st, got {use!r}.")
        a = read_slide_spec(spec, cfg["_base"])
        if "st" in use and a.n_vars == 0:
            raise ValueError(f"Slide {raw!r} has no expression (n_vars == 0): give it use: he.")
        adatas.append(a)
        uses.append(use)
        prep_kw.append({k: spec[k] for k in ("library_key", "layer") if spec.get(k)})
    vocab = cfg["vocab"]["genes"] if init is None else list(init.config.gene_vocab)
    vocab_file = out / "vocabulary.json"
    if vocab is None and resume and vocab_file.is_file():
        vocab = json.loads(vocab_file.read_text())
    if vocab is None:
        vocab = select_hvgs([a for a, u in zip(adatas, uses, strict=True) if u != "he"], cfg["vocab"]["n_top_genes"])
    vocab_file.write_text(json.dumps(vocab))
    base_kw = {} if init is None else {**init.config.to_dict(), "head_genes": []}
    model_kw = {**base_kw, **cfg["model"], "gene_vocab": [str(g).upper() for g in vocab]}
    if str(model_kw.get("gene_input", "expression")).startswith("obsm:"):
        model_kw["gene_input_dim"] = _gene_features_dim(
            model_kw["gene_input"][5:], [a for a, u in zip(adatas, uses, strict=True) if "st" in u], cfg["data"]["novae_model"]
        )
    he_slides = [a for a, u in zip(adatas, uses, strict=True) if "he" in u]
    training_stains = None
    if he_slides:  # recorded in the checkpoint (export_run): load_model(stain_normalize=True)
        from storm_st.pp import stain_reference

        training_stains = stain_reference(he_slides)
        (out / "training_stains.json").write_text(json.dumps(training_stains))
    if model_kw.get("stain_reference") == "auto":  # normalise every slide to the stains of the H&E training slides
        if training_stains is None:
            raise ValueError("model.stain_reference: auto needs at least one slide with H&E (use he+st or he).")
        model_kw["stain_reference"] = training_stains
    model_cfg = StormConfig(**model_kw)
    slides, slide_weights = [], []
    if cfg["data"]["cache_patch_size"] and model_cfg.patch_mpp is not None:
        raise ValueError(
            "data.cache_patch_size cannot be combined with model.patch_mpp: patches are then cached at each slide's "
            "own size (field / patch_mpp). Remove one of them."
        )
    cache_size = cfg["data"]["cache_patch_size"]  # None: each slide's own patch size (config.patch_px)
    for a, use, w, kw in zip(adatas, uses, weights, prep_kw, strict=True):
        prepared = prepare_slides(
            a, model_cfg, use_he="he" in use, use_gene="st" in use, cache_patches=(cache_size or True) if "he" in use else None, **kw
        )
        slides += prepared
        slide_weights += [w] * len(prepared)
    n_spots = sum(s.n for s in slides)
    logger.info("pretraining on %d slides, %d spots, vocabulary of %d genes", len(slides), n_spots, len(vocab))
    acc = int(tr["accumulate_grad_batches"])
    steps = int(cfg["training"]["max_steps"])
    stream_seed = data_seed(tr)
    sampler = WindowSampler(slides, windows=cfg["data"]["windows_per_batch"], steps=steps * acc, patch_size=cache_size, seed=stream_seed,
        paired_fraction=cfg["data"]["paired_fraction"], contiguous=cfg["data"]["contiguous"], weights=slide_weights,
    )
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    (out / "config_resolved.json").write_text(
        json.dumps(
            {
                "slides": [s.library_id for s in slides],
                "n_spots": n_spots,
                "config": _printable(cfg),
                **({} if init is None else {"init_model": {"name": _model_name(cfg["training"]["init_model"]),
                                                           "sha256": getattr(init, "checkpoint_sha256", None)}}),
            },
            default=str,
        )
    )
    resuming = resume and last.is_file()
    training_kw = {k: v for k, v in cfg["training"].items() if k != "init_model"}
    if resuming:  # the checkpoint holds the weights: the start file is not needed (nor read) again
        training_kw["init_backbone"] = None
    module = StormPretraining(model_cfg.to_dict(), seed=stream_seed, **training_kw)
    if init is not None and not resuming:
        module.start_from(init)
    start_step, log_dir = 0, out / "logs" / "version_0"  # where the CSVLogger below writes (name="logs", version=0)
    if resuming:
        state = torch.load(last, map_location="cpu", weights_only=False)
        start_step = int(state.get("global_step", 0))
        sampler.start = start_step * acc
        _keep_earlier_log(log_dir, start_step)
    loader = torch.utils.data.DataLoader(
        sampler, batch_size=None, num_workers=cfg["data"]["num_workers"], persistent_workers=False
    )
    trainer = L.Trainer(
        accelerator=tr["accelerator"],
        devices=tr["devices"],
        strategy=tr["strategy"],
        precision=tr["precision"] or ("bf16-mixed" if torch.cuda.is_available() else "32-true"),
        max_steps=min(stop_at_step, steps) if stop_at_step else steps,
        max_epochs=-1,
        accumulate_grad_batches=acc,
        log_every_n_steps=tr["log_every_n_steps"],
        logger=CSVLogger(out, name="logs", version=0, flush_logs_every_n_steps=tr["log_every_n_steps"]),
        # no version counter: a run folder that was moved or copied (its checkpoint remembers the old path) keeps
        # writing last.ckpt, the file --resume reads, instead of a last-v1.ckpt that a second resume would not see
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=tr["checkpoint_every_n_steps"], save_last=True,
                                   save_top_k=0, enable_version_counter=False)],
        enable_progress_bar=bool(tr["enable_progress_bar"]),
        enable_model_summary=bool(tr["enable_progress_bar"]),
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        deterministic=False,
    )
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(last) if resuming else None)
    wall = time.time() - t0
    if trainer.is_global_zero:
        _merge_logs(log_dir)
        return export_run(out, module=module, wall_time_s=wall, world_size=int(trainer.world_size),
                          resumed_from_step=start_step or None)
    return out / "model"


def _model_name(model: Any) -> str:
    return str(model) if isinstance(model, str | Path) else str(getattr(model, "name", None) or "in-memory model")


def _printable(cfg: dict[str, Any]) -> dict[str, Any]:
    """The resolved config for ``config_resolved.json``: in-memory slides and models named, not printed."""
    out = {k: v for k, v in cfg.items() if k != "_base"}
    out["data"] = {**cfg["data"], "slides": [
        {**{k: v for k, v in s.items() if k != "adata"}, "adata": f"<in-memory {type(s['adata']).__name__} "
         f"{getattr(s['adata'], 'n_obs', '?')} x {getattr(s['adata'], 'n_vars', '?')}>"}
        if isinstance(s, dict) and "adata" in s else s for s in cfg["data"]["slides"]]}
    if cfg["training"].get("init_model") is not None:
        out["training"] = {**cfg["training"], "init_model": _model_name(cfg["training"]["init_model"])}
    return out


def _init_model(cfg: dict[str, Any]) -> Any:
    """The checkpoint named by ``training.init_model``, or ``None``.

    ``"default"``, a model folder this package wrote, or (from Python) a :class:`~storm_st.models.StormModel`.
    """
    name = cfg["training"].get("init_model")
    if name is None or (isinstance(name, str) and not name):
        return None
    if cfg["training"].get("init_backbone"):
        raise ValueError(
            "training.init_model and training.init_backbone both set: init_model already starts every weight, the "
            "backbone's included, from its checkpoint; remove init_backbone."
        )
    if cfg["vocab"].get("genes") is not None:
        raise ValueError(
            "training.init_model continues a checkpoint, whose gene encoder is tied to its own vocabulary; remove "
            "vocab.genes (the checkpoint's vocabulary is used)."
        )
    arch = sorted(set(cfg["model"]) & _ARCHITECTURE_KEYS)
    if arch:
        raise ValueError(
            f"training.init_model continues a checkpoint, so its architecture is fixed; remove "
            f"{', '.join('model.' + k for k in arch)} from the config, or pretrain from scratch without init_model."
        )
    from storm_st.models import StormModel, load_model

    if isinstance(name, StormModel):
        return name
    path = str(name)
    if path != "default" and not Path(path).is_absolute():
        path = str(Path(cfg["_base"]) / path)
    return load_model(path)


#: model-section keys that change the shapes of the weights (a continued checkpoint keeps them)
_ARCHITECTURE_KEYS = {
    "he_backbone", "he_backbone_kwargs", "image_size", "hidden_dim", "depth", "num_heads", "mlp_ratio",
    "gene_embed_dim", "gene_input", "gene_input_dim", "gene_vocab",
}


def _keep_earlier_log(log_dir: Path, start_step: int) -> None:
    """Keep the rows of a run's log before ``start_step``, which a resumed run's logger would delete.

    Lightning's CSVLogger deletes ``metrics.csv`` when it starts again; the rows go to ``metrics_part<k>.csv`` and
    :func:`_merge_logs` joins them back when the run ends. Only the rank-0 process does it (the one that logs): under
    DDP the other ranks run this script too, before the trainer exists, and know their rank from the environment.
    """
    import pandas as pd
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return

    log = log_dir / "metrics.csv"
    if not log.is_file() or log.stat().st_size == 0:
        return
    rows = pd.read_csv(log)
    rows = rows[rows["step"] < start_step]
    if len(rows):
        k = len(list(log_dir.glob("metrics_part*.csv")))
        rows.to_csv(log_dir / f"metrics_part{k}.csv", index=False)


def _merge_logs(log_dir: Path) -> None:
    """One ``metrics.csv`` over every process of a (resumed) run, in step order."""
    import pandas as pd

    parts = sorted(log_dir.glob("metrics_part*.csv"), key=lambda f: int(f.stem[len("metrics_part"):]))
    log = log_dir / "metrics.csv"
    if not parts:
        return
    frames = [pd.read_csv(f) for f in parts] + ([pd.read_csv(log)] if log.is_file() and log.stat().st_size else [])
    merged = pd.concat(frames, ignore_index=True).drop_duplicates("step", keep="last").sort_values("step", kind="stable")
    merged.to_csv(log, index=False)
    for f in parts:
        f.unlink()


def export_run(
    run_dir: str | Path,
    *,
    module: Any = None,
    wall_time_s: float | None = None,
    world_size: int | None = None,
    resumed_from_step: int | None = None,
) -> Path:
    """Export ``run_dir/model`` (safetensors + config.json) from a finished module or from ``checkpoints/last.ckpt``.

    A run stopped early can be exported from its last periodic checkpoint. ``world_size`` (number of training
    processes, e.g. GPUs under DDP) is recorded with the steps and wall time when known; for a resumed run the wall
    time is that of the last process, which started at ``resumed_from_step`` (recorded too).
    """
    import torch

    from storm_st.models import save_pretrained

    from ._pretrain import StormPretraining

    out = Path(run_dir)
    if module is None:
        ckpt = out / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise FileNotFoundError(f"No checkpoint at {ckpt}.")
        state = torch.load(ckpt, map_location="cpu", weights_only=False)  # our own training state
        module = StormPretraining(**{**state["hyper_parameters"], "init_backbone": None})  # weights come from the checkpoint
        module.load_state_dict(state["state_dict"])
        step = int(state.get("global_step", 0))
    else:
        step = int(module.global_step)
    cfg_file = out / "config_resolved.json"
    model = module.model.cpu().eval()
    info = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    info.update({"steps": step, "wall_time_s": None if wall_time_s is None else round(wall_time_s, 1)})
    if world_size is not None:
        info["world_size"] = world_size
    if resumed_from_step:
        info["resumed_from_step"] = int(resumed_from_step)
    extra = {"pretraining": info}
    if (out / "training_stains.json").is_file():
        extra["training_stains"] = json.loads((out / "training_stains.json").read_text())
    model.extra = extra
    save_pretrained(model, out / "model", extra=extra)
    return out / "model"
