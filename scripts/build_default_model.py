"""Build the embedded default checkpoint from a finished (or stopped) pretraining run.

    storm-st pretrain --config configs/default.yaml            # -> runs/default
    python scripts/build_default_model.py --run runs/default    # -> src/storm_st/models/_weights/default

Several ``--run`` folders (runs of one config from one start that differ in ``trainer.data_seed``) are averaged
into one pretrained model (``storm_st.models.average_models``, written to ``--average-out``) before the head is
fitted; the loss figure then draws every run (design experiment 47).

``--encoder PATH`` refits only the head on the encoder of an existing checkpoint (e.g. the shipped one, to
change ``--head-input``); the loss figure is then redrawn only if the run's log is still there.

Fits the expression head on the H&E + ST training sections (HER2ST C2-C4; never C5/C6) for the
1,000 most variable genes of those sections, stores the weights in float16 (safetensors + sha256),
and writes docs/pretraining.md with the loss curves, wall time and hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch

import storm_st as st
from storm_st.models import from_pretrained, save_pretrained
from storm_st.tl._expression import TARGET_SMOOTHING
from storm_st.train._runner import DEFAULTS, data_seed, export_run

ROOT = Path(__file__).resolve().parents[1]
#: Results of benchmarks/validate.py that motivated configs/default.yaml (kept with the report it generates).
VALIDATION = (ROOT / "scripts" / "design_experiments.md").read_text()
NOTES = (ROOT / "scripts" / "pretraining_notes.md").read_text()  # hand-written: held-out standing, what was tried
CONTIGUOUS_NOTE = """- **Contiguous window batches** and **patches of one pitch** (200 µm on legacy ST): each batch's 32
  window centres form a contiguous region, so the windows share their encoded spots (the backbone runs
  once per unique spot of a batch) and the 25 patches of a window tile it without gaps. This buys ~5x
  more windows per second than random centres and was the largest gain found on validation (below).
"""
TRAIN = ["C2", "C3", "C4"]
HEAD_READS = {
    "centre": "the spatial encoder's output for the centre spot (as in the paper)",
    "centre+spot": "the spatial encoder's output for the centre spot and the spot's own H&E token side by side "
    "(design experiment 10)",
    "spot": "the spot's own H&E token only",
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, no GPU"


def _wall_time(info: dict) -> str:
    """The pretraining wall-time cell: a resumed run's last process timed only its own steps."""
    wall = info.get("wall_time_s")
    if wall is None:
        return "see the log"
    if info.get("resumed_from_step"):
        return (f"{wall} s for steps {info['resumed_from_step']}–{info.get('steps', '?')} on the CPU above (a resumed run; "
                f"the first {info['resumed_from_step']} steps ran in an earlier process, shared with other work)")
    return f"{wall} s on the CPU above, shared with other work"


def _averaged_wall_time(averaged: list[dict]) -> str:
    """The wall-time cell of averaged runs: each ran in its own process, not necessarily on the machine of the head fit."""
    each = ", ".join(f"{r['run']} {r.get('wall_time_s', '?')} s" for r in averaged)
    return f"{each} (each on a 2-core CPU shared with other work; the head was fitted on the machine above)"


def _pretrained(runs: list[Path], average_out: str):
    """The exported model of one run, or the weight average of several (saved to ``average_out``)."""
    if len(runs) == 1:
        return from_pretrained(runs[0] / "model")
    models = [from_pretrained(run / "model") for run in runs]
    infos = [m.extra.get("pretraining", {}) for m in models]
    model = st.models.average_models(models)
    model.extra["pretraining"] = {
        **infos[0],
        "wall_time_s": sum(float(i.get("wall_time_s") or 0) for i in infos),
        "averaged_runs": [
            {"run": str(run), "data_seed": data_seed(i.get("config", {}).get("trainer", {})), "steps": i.get("steps"), "wall_time_s": i.get("wall_time_s"),
             "sha256": m.checkpoint_sha256}
            for run, i, m in zip(runs, infos, models)
        ],
    }
    save_pretrained(model, average_out)
    print(f"averaged pretrained model of {', '.join(map(str, runs))}: {average_out}")
    return from_pretrained(average_out)


def _pretrain_commands(averaged: list[dict]) -> str:
    """The ``storm-st pretrain`` command(s) of the run(s) the checkpoint was built from."""
    if not averaged:
        return "storm-st pretrain --config configs/default.yaml"
    lines = []
    for r in averaged:
        extra = "" if r["run"] == "runs/default" else f" --output {r['run']}"
        extra += f" --set trainer.data_seed={r['data_seed']}" if r["data_seed"] else ""
        lines.append(f"storm-st pretrain --config configs/default.yaml{extra}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", nargs="+", default=["runs/default"],
                    help="pretraining run folder(s); several are averaged into one pretrained model (average_models)")
    ap.add_argument("--average-out", default="runs/default_avg/model",
                    help="with several --run: where the averaged pretrained model (before the head) is saved")
    ap.add_argument("--n-genes", type=int, default=1000)
    ap.add_argument("--finetune-epochs", type=int, default=0, help="fit_expression_head(finetune_epochs=...)")
    ap.add_argument("--head-input", default="centre", choices=["centre", "centre+spot", "spot"],
                    help="fit_expression_head(head_input=...): what the head reads")
    ap.add_argument("--encoder-epochs", type=int, default=0,
                    help="fit_expression_head(encoder_epochs=...): tune the spatial encoder with the head (design experiment 12)")
    ap.add_argument("--smooth-targets", type=float, default=None,
                    help="fit_expression_head(smooth_targets=...): neighbour-smoothed head targets (design experiment 15); "
                         "default the package's platform default (0.25 on legacy ST)")
    ap.add_argument("--encoder", default=None, help="refit the head on this checkpoint's encoder instead of --run's")
    ap.add_argument("--out", default=str(ROOT / "src/storm_st/models/_weights/default"))
    ap.add_argument("--docs-only", action="store_true", help="rewrite docs/pretraining.md from the checkpoint at --out")
    ap.add_argument("--stain-normalize", action="store_true",
                    help="fit the head on stain-normalised patches and keep normalisation on in the checkpoint "
                         "(config.stain_reference = the stains of the H&E training slides; design experiment 17)")
    ap.add_argument("--bn-stats", default="training", choices=["training", "slide"],
                    help="fit the head with, and keep in the checkpoint, this BatchNorm setting of the H&E backbone "
                         "(config.bn_stats; 'slide': each slide's own statistics, design experiment 46)")
    ap.add_argument("--record-training-stains", action="store_true",
                    help="only record the stains of the training slides in the checkpoint at --out (extra['training_stains'], "
                         "used by load_model(stain_normalize=True); weights and behaviour unchanged), then rewrite the docs")
    args = ap.parse_args()
    runs = [Path(r) for r in args.run]
    if args.record_training_stains:
        model = from_pretrained(args.out)
        model.extra["training_stains"] = st.pp.stain_reference([st.datasets.her2st(s) for s in TRAIN])
        save_pretrained(model, args.out, dtype=torch.float16)
        args.docs_only = True
    if args.docs_only:  # the checkpoint stays byte-identical (benchmarks name it by its sha256)
        model = from_pretrained(args.out)
        head_s = float(model.extra["head"]["wall_time_s"])
        args.finetune_epochs = int(model.extra["head"].get("finetune_epochs", 0))
        args.head_input = model.config.head_input
        args.encoder_epochs = int(model.extra["head"].get("encoder_epochs", 0))
        used = float(model.extra["head"].get("smooth_targets", 0.0))
        args.smooth_targets = None if used == TARGET_SMOOTHING else used  # the command line shows a non-default only
        out = Path(args.out)
    else:
        if args.encoder:
            model = from_pretrained(args.encoder)
        else:
            for run in runs:
                if not (run / "model" / "config.json").is_file():
                    export_run(run)  # a run stopped before the end: export its last checkpoint
            model = _pretrained(runs, args.average_out)
        t0 = time.time()
        train = [st.datasets.her2st(s) for s in TRAIN]
        if args.stain_normalize:  # every slide, training ones included, normalised to the run's recorded training stains
            st.models.set_stain_normalization(model, True)
        st.models.set_bn_stats(model, args.bn_stats)  # before the head is fitted: it is fitted as it will predict
        genes = st.pp.select_hvgs(train, args.n_genes)
        model = st.tl.fit_expression_head(
            train, model, genes=genes, finetune_epochs=args.finetune_epochs, head_input=args.head_input,
            encoder_epochs=args.encoder_epochs, smooth_targets=args.smooth_targets, show_progress=False,
        )
        head_s = time.time() - t0
        model.extra["head"]["slides"] = TRAIN
        model.extra["head"]["wall_time_s"] = round(head_s, 1)
        model.extra["machine"] = machine()
        init = model.extra.get("pretraining", {}).get("config", {}).get("training", {}).get("init_backbone")
        if init and Path(init).with_suffix(".json").is_file():  # written by scripts/supervised_backbone.py; kept in the
            model.extra["backbone_start"] = json.loads(Path(init).with_suffix(".json").read_text())  # checkpoint for docs
        out = save_pretrained(model, args.out, dtype=torch.float16)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"default checkpoint: {out} ({size:.1f} MiB)")

    smooth_used = float(model.extra["head"].get("smooth_targets", 0.0))
    # ---- docs/pretraining.md: loss curves + facts of the run
    static = ROOT / "docs" / "_static"
    static.mkdir(parents=True, exist_ok=True)
    logs = [run / "logs" / "version_0" / "metrics.csv" for run in runs]
    # --docs-only keeps the figure drawn when the checkpoint was built: a run folder now on disk may be another run
    if all(log.is_file() for log in logs) and not args.docs_only:
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
        for i, (run, log) in enumerate(zip(runs, logs)):
            metrics = pd.read_csv(log)
            for key, a in (("train/loss_st", ax[0]), ("train/loss_he", ax[1])):
                d = metrics[["step", key]].dropna()
                a.plot(d["step"], d[key], lw=0.8, alpha=0.3, color=f"C{i}")
                a.plot(d["step"], d[key].rolling(10, min_periods=1).mean(), lw=2, color=f"C{i}",
                       label=f"{run.name} (rolling mean of 10)")
                a.set_xlabel("optimizer step")
                a.set_title({"train/loss_st": "ST: Gaussian NLL (masked spots)",
                             "train/loss_he": "H&E: EMA-feature MSE/2 (masked)"}[key])
        if len(runs) > 1:
            ax[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(static / "pretraining_loss.png", dpi=110)
    elif not (static / "pretraining_loss.png").is_file():
        raise FileNotFoundError(f"No pretraining log at {', '.join(map(str, logs))} and no loss figure in {static} to keep.")
    else:
        missing = [str(log) for log in logs if not log.is_file()]
        print(f"{'--docs-only' if args.docs_only else f'{missing} not found'}: docs/_static/pretraining_loss.png kept as it is")
    info = model.extra.get("pretraining", {})
    averaged = info.get("averaged_runs", [])  # several runs averaged into one model (design experiment 47)
    cfg = info.get("config", {})
    tcfg = cfg.get("training", {})
    init = tcfg.get("init_backbone")
    sup = model.extra.get("backbone_start", {})  # facts of the supervised start, recorded when the head was fitted
    sup_cmd = (
        f"python scripts/supervised_backbone.py --config configs/default.yaml --train {' '.join(sup.get('train', TRAIN))} "
        f"--epochs {sup.get('epochs', 40)} --out {init}\n" if init else ""
    )
    init_row = (
        f"supervised start (`scripts/supervised_backbone.py`: {sup.get('epochs', '?')} epochs on the {sup.get('n_spots', '?')} "
        f"spots of {', '.join(sup.get('train', TRAIN))} to predict their {sup.get('n_genes', '?')} top HVGs)"
        if init else "random init"
    )
    # a run records its resolved config; the package defaults fill in what an older checkpoint did not record
    paired = float({**DEFAULTS["data"], **cfg.get("data", {})}["paired_fraction"])
    training = {**DEFAULTS["training"], **tcfg}
    p_he_only, he_to_st = float(training["p_he_only"]), float(training["he_to_st_weight"])
    he_to_st_note = (
        f" An auxiliary term (weight {he_to_st:g}, `training.he_to_st_weight`) also makes every H&E token's encoder output\n"
        "  predict its own spot's expression in these windows (design experiments 34-35 below)." if he_to_st else ""
    )
    lr, blr, ld = tcfg.get("lr"), tcfg.get("backbone_lr") or tcfg.get("lr"), tcfg.get("layer_decay")
    lr_note = (
        f"the backbone's {lr / blr:g}x below the spatial encoder's, so that masked pretraining refines the supervised "
        "start instead of overwriting it (design experiment 7 below)" if init else
        "higher than the paper's 1e-4 and λ = 0.7, which fit fine-tuning a pretrained H0-mini, not a random one"
    )
    init_note = (
        "- **Backbone start**: with ~550 H&E-paired spots, how the backbone is initialised matters most. It starts\n"
        "  from a supervised model of the same paired spots (the config's backbone, patch geometry and augmentation,\n"
        "  trained to predict their highly variable genes), then learns further in masked pretraining with the\n"
        "  EMA-teacher target. Chosen on validation (C2 + C3 -> C4) and on the domain task of sections other than A1,\n"
        "  before any held-out number was seen: design experiments 7 and 9 below. Tissue tiles between the spots\n"
        "  were tried as extra H&E and did not help (experiment 8)."
        if init else
        "- **No separate self-supervised backbone pretraining** was run: within the CPU budget the EMA-teacher\n"
        "  term already gives the backbone a self-supervised signal on every H&E spot of the batch."
    )
    bn_row = (
        "each slide its own (`config.bn_stats = \"slide\"`: AdaBN, re-estimated on every slide's spot patches before it is "
        "encoded, the head fitted so; design experiment 46); `load_model(bn_stats=\"training\")` uses the training slides' "
        "running statistics" if model.config.bn_stats == "slide" else
        "the training slides' running statistics (`config.bn_stats = \"training\"`); `load_model(bn_stats=\"slide\")` "
        "re-estimates them on each slide (design experiment 46)"
    )
    doc = f"""# The default checkpoint

The embedded model (`storm_st.load_model()`) was trained by the package's own pretraining command on
{'2-core CPUs (each run on its own; see the wall-time row); its head was fitted on ' if averaged else ''}this machine: **{model.extra['machine']}**.

```bash
{sup_cmd}{_pretrain_commands(averaged)}
python scripts/build_default_model.py --run {' '.join(r['run'] for r in averaged) or 'runs/default'}{f' --finetune-epochs {args.finetune_epochs}' if args.finetune_epochs else ''}{f' --head-input {args.head_input}' if args.head_input != 'centre' else ''}{f' --encoder-epochs {args.encoder_epochs}' if args.encoder_epochs else ''}{'' if args.smooth_targets is None else f' --smooth-targets {args.smooth_targets:g}'}{' --stain-normalize' if model.config.stain_reference else ''}{' --bn-stats slide' if model.config.bn_stats == 'slide' else ''}
```

| | |
|---|---|
| H&E + ST slides | HER2ST {', '.join(TRAIN)} (the training split; C5 and C6 are never read) |
| expression-only slides | {', '.join(s for s in info.get('slides', []) if s not in TRAIN)} |
| spots | {info.get('n_spots', 'n/a')} |
| gene vocabulary | {len(model.config.gene_vocab)} genes (seurat_v3 highly variable genes over all pretraining slides, slides as batches) |
| H&E backbone | `{model.config.he_backbone}` at {model.config.image_size} px over {model.config.patch_fov_um(100):.0f} µm around each 100 µm spot ({model.config.patch_fov_um(100) / model.config.image_size:.2f} µm/px), {init_row} |
| spatial encoder | {model.config.depth} blocks, width {model.config.hidden_dim}, {model.config.num_heads} heads, MoME FFNs, 2-D ALiBi |
| optimizer steps | {info.get('steps')}{f' in each of {len(averaged)} runs that differ only in their data stream (`trainer.data_seed` ' + ', '.join(str(r['data_seed']) for r in averaged) + '), their weights averaged into one model (`average_models`, design experiment 47)' if averaged else ''} (windows per batch: {cfg.get('data', {}).get('windows_per_batch')}{', centres drawn as a contiguous region' if cfg.get('data', {}).get('contiguous') else ', random centres'}; {paired:.0%} of the windows from the H&E + ST slides, the rest from the expression-only ones, `data.paired_fraction`) |
| pretraining wall time | {_averaged_wall_time(averaged) if averaged else _wall_time(info)} |
| expression head | {len(model.config.head_genes)} genes (top HVGs of {', '.join(TRAIN)}), reads {HEAD_READS[model.config.head_input]}{f', trained on neighbour-smoothed targets (w = {smooth_used:g}, design experiment 15)' if smooth_used else ''}, 10 epochs on the frozen encoder, 8 flips/rotations per spot{f', then {args.encoder_epochs} epochs training the spatial encoder with the head on the frozen backbone tokens (design experiment 12; every embedding of the shipped model uses that tuned encoder)' if args.encoder_epochs else ''}{f', then {args.finetune_epochs} epochs of whole-network fine-tuning on spot crops' if args.finetune_epochs else ''}, {head_s:.0f} s |
| stain normalisation | {'every slide normalised to the stains of ' + ', '.join(TRAIN) + ' (Macenko; `config.stain_reference`; design experiment 17), head fitted on normalised patches; `load_model(stain_normalize=False)` reads patches as they are' if model.config.stain_reference else 'off (patches as read; design experiments 16, 17)'}{'; the stains of ' + ', '.join(TRAIN) + ' are recorded (`--record-training-stains`), so `load_model(stain_normalize=True)` normalises every slide to them' if model.extra.get('training_stains') and not model.config.stain_reference else ''} |
| BatchNorm statistics | {bn_row} |
| checkpoint | float16 safetensors + config.json with sha256 (of the weights), {size:.1f} MiB |

![pretraining loss](_static/pretraining_loss.png)

Design choices of this small CPU model, and why:

- **Backbone `resnet10t`** (4.9 M parameters): with ~550 H&E-paired spots, a convolutional network's
  inductive bias trains from scratch where a ViT would not, and it takes ~3 s per 128 patches forward +
  backward on 2 cores. The paper-sized `storm-base` (H0-mini-like ViT-B/14) is available for GPUs.
- **H&E target**: the layer-normalised features of an EMA copy (momentum {cfg.get('training', {}).get('ema_momentum')}) of the H&E
  encoder, with stop-gradient (data2vec-style): it cannot collapse since the teacher lags the student and
  the ST loss anchors the backbone.
{CONTIGUOUS_NOTE if cfg.get('data', {}).get('contiguous') else ''}- **Batch mix**: {paired:.0%} of the windows come from the H&E + ST slides, {1 - paired:.0%} from the expression-only
  sections. A lower share gave better expression-only embeddings (spatial domains) on validation slides at no
  cost to H&E → expression on C4 and in half the pretraining time, since expression-only windows skip the
  backbone (design experiment 21 below; 0.8 before it).
- **H&E-only windows** ({p_he_only:.0%} of the windows from H&E slides): all 25 H&E tokens visible, every ST token reconstructed.
  This is the virtual-ST setting of H&E-only slides, which a model pretrained only with 5 visible
  spots per modality never sees.{he_to_st_note}
- **Learning rates** {lr:g} (spatial encoder, decoders) and {blr:g} (backbone, layer-wise decay {ld:g}):
  {lr_note}.
{init_note}

{VALIDATION.strip()}

What the checkpoint is worth on held-out sections is measured in [benchmarks](benchmarks.md).

{NOTES}"""
    (ROOT / "docs" / "pretraining.md").write_text(doc)
    (ROOT / "docs" / "_static" / "default_model.json").write_text(json.dumps(model.extra, indent=1, default=str))


if __name__ == "__main__":
    main()
