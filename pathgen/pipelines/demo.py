"""``pathgen demo``: the main job, end to end on the demo cohort.

Stages (each resumable: a finished stage's output is kept and the stage skipped on re-runs; each
also runs on its own through its subcommand, on the same files):

 1. cohort      ``make-demo-cohort``: real TCGA-BLCA expression + survival, one rendered slide per case
 2. features    ``embed`` (weight-free ``stain-stats`` encoder; patches the slides first)
 3. splits      patient-level folds with validation and calibration parts (``splits.json``)
 4. generator   ``train-generator`` on each fold's training patients, ``gen_members`` seeds per fold
 5. synthesis   ``synthesize``: each fold's generators (one ensemble) write its own test + calibration
                patients, so every synthesized profile comes from models that never saw that patient
 6. fidelity    ``evaluate-generator`` per fold, with the training-mean and ridge baselines
 7. predictor   ``train-predictor``: slide-only and multimodal (trained on real expression)
 8. evaluation  ``evaluate``: slide-only vs slide + real vs slide + synthesized, CIs and p-values
 9. conformal   grade sets (LAC, APS) and survival lower bounds, calibrated on the calibration
                patients WITH SYNTHESIZED expression when testing with synthesized expression
10. fairness    per sex / age band groups
11. heatmaps    generator co-attention maps on the slides
12. report      one self-contained HTML file (``report.html``) + headline ``metrics.json``
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pathgen import info as info_mod
from pathgen.utils.io import atomic_write_text


@dataclasses.dataclass
class DemoConfig:
    cases: int = 60
    size: int = 2048
    n_folds: int = 5
    seed: int = 0
    gen_epochs: int = 40
    gen_patience: int = 12  # epochs (validated every epoch) without improvement
    gen_draws: int = 16  # noise draws per patient per step
    gen_members: int = 3  # generators per fold (seeds), synthesized as one ensemble
    gen_max_patches: int = 512
    samples: int = 3
    steps: int = 50
    pred_epochs: int = 30
    pred_patience: int = 8
    n_boot: int = 500
    alpha: float = 0.1
    heatmap_cases: int = 3

    @classmethod
    def quick(cls) -> "DemoConfig":
        # alpha 0.2: the quick cohort's pooled calibration set (~6 patients) is too small for 0.1
        return cls(cases=24, size=1024, n_folds=3, gen_epochs=4, gen_patience=2, gen_max_patches=256, gen_members=1,
                   samples=2, steps=10, pred_epochs=4, pred_patience=4, n_boot=100, alpha=0.2, heatmap_cases=1)


class Stages:
    """Prints each stage with its wall time; skips stages whose output already exists."""

    def __init__(self, run: Path):
        self.run = run
        self.times: dict[str, float] = {}
        path = run / "stage_times.json"
        if path.exists():
            self.times = json.loads(path.read_text())

    def __call__(self, name: str, done_marker: Path, fn):
        if done_marker.exists():
            print(f"[demo] {name}: done already ({done_marker.relative_to(self.run)}), skipping")
            return
        print(f"[demo] {name} ...", flush=True)
        t0 = time.perf_counter()
        fn()
        self.times[name] = round(time.perf_counter() - t0, 1)
        atomic_write_text(self.run / "stage_times.json", json.dumps(self.times, indent=1))
        print(f"[demo] {name}: {self.times[name]:.1f} s", flush=True)


def _cohort_args(run: Path, cfg: DemoConfig) -> argparse.Namespace:
    return argparse.Namespace(manifest=run / "cohort" / "manifest.csv", expression=run / "cohort" / "expression.csv",
                              signatures=None, features=run / "features",
                              splits=run / "splits.json" if (run / "splits.json").exists() else None,
                              n_folds=cfg.n_folds, seed=cfg.seed)


MIN_CASES_PER_FOLD = 8  # fewer leaves folds without a death or a grade class (the quick run: 24 cases, 3 folds)


def is_demo_run(run: Path) -> bool:
    """What ``--overwrite`` may delete: a folder ``pathgen demo`` made (its config.json and stage log)."""
    try:
        cfg = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and isinstance(cfg.get("demo"), dict) and (run / "stage_times.json").is_file()


def check_options(cfg: DemoConfig) -> None:
    if cfg.cases < MIN_CASES_PER_FOLD * cfg.n_folds:
        raise ValueError(f"--cases {cfg.cases} is too few for {cfg.n_folds} folds; use at least "
                         f"{MIN_CASES_PER_FOLD * cfg.n_folds}")


def check_same_config(run: Path, cfg: DemoConfig) -> None:
    """Valid options, and a demo folder resumes only under the configuration that made it: its
    finished stages would otherwise be reused under another one (a --quick run's 24 cases reported as 60)."""
    check_options(cfg)
    path = run / "config.json"
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text()).get("demo")
    except ValueError:
        old = None
    new = json.loads(json.dumps(dataclasses.asdict(cfg)))
    if old != new:
        diff = sorted(k for k in new if not isinstance(old, dict) or old.get(k) != new[k])
        raise ValueError(f"{run} holds a demo run made with another configuration (differ: {', '.join(diff)}; see "
                         f"{path}); its finished stages would be reused under this one. Fix: pass a new --out, the "
                         "options of that run (e.g. --quick), or --overwrite to start over")


def run_demo(run: Path, cfg: DemoConfig, device: str = "auto") -> dict:
    from pathgen import cli
    from pathgen.data.demo_cohort import make_demo_cohort
    from pathgen.pipelines.cohort import load_cohort

    run = Path(run)
    check_same_config(run, cfg)
    run.mkdir(parents=True, exist_ok=True)
    stage = Stages(run)
    t_start = time.perf_counter()
    atomic_write_text(run / "config.json", json.dumps({"demo": dataclasses.asdict(cfg), "device": device,
                                                        "environment": info_mod.collect()}, indent=2, default=str))

    # 1-2: data
    stage("cohort", run / "cohort" / "manifest.csv",
          lambda: make_demo_cohort(run / "cohort", cases=cfg.cases, seed=cfg.seed, size=cfg.size))

    def embed():
        rc = cli.main(["embed", str(run / "cohort" / "manifest.csv"), "--out", str(run), "--encoder", "stain-stats",
                       "--skip-errors"])
        if rc not in (0, 2):
            raise RuntimeError(f"pathgen embed failed with exit code {rc}")
        atomic_write_text(run / "features" / ".done", "")

    stage("features", run / "features" / ".done", embed)

    # 3: splits (written once; every later stage reuses them)
    cohort = load_cohort(_cohort_args(run, cfg), write_splits=None if (run / "splits.json").exists()
                         else run / "splits.json")
    folds = [f.k for f in cohort.folds]

    # 4-6: generator per fold, out-of-fold synthesis, fidelity
    for k in folds:
        for i in range(cfg.gen_members):
            stage(f"generator fold {k}" + (f" member {i}" if i else ""), _member_dir(run, k, i) / "train_summary.json",
                  lambda k=k, i=i: _train_generator(cohort, k, run, cfg, device, i))
        stage(f"synthesis fold {k}", run / "synth" / f"fold{k}" / "synthesized.csv",
              lambda k=k: _synthesize(cohort, k, run, cfg, device))
        stage(f"fidelity fold {k}", run / "generator_eval" / f"fold{k}" / "metrics.json",
              lambda k=k: _fidelity(cohort, k, run))
    stage("fidelity summary", run / "generator_eval" / "metrics.json", lambda: _fidelity_summary(cohort, run, folds))

    # 7-8: predictor
    for kind in ("slide", "multimodal"):
        stage(f"predictor {kind}", run / "predictor" / kind / "metrics.json",
              lambda kind=kind: _train_predictor(cohort, kind, run, cfg, device))
    stage("evaluation", run / "evaluation" / "metrics.json", lambda: _evaluate(cohort, run, cfg, folds, device))

    # 9-10: trust layer
    stage("conformal", run / "conformal" / "metrics.json", lambda: _conformal(cohort, run, cfg, folds, device))
    stage("fairness", run / "fairness" / "fairness.json", lambda: _fairness(run, cfg))

    # 11-12: heatmaps and report
    stage("heatmaps", run / "heatmaps" / ".done", lambda: _heatmaps(cohort, run, cfg, folds))
    headline = _headline(run, time.perf_counter() - t_start, stage.times)
    atomic_write_text(run / "metrics.json", json.dumps(headline, indent=2, default=_json_default))
    from pathgen.report.html import write_report

    write_report(run, run / "report.html")
    return headline


# ---------------------------------------------------------------------------------------------
def _member_dir(run: Path, k: int, i: int) -> Path:
    """Fold k's generator i: member 0 in ``generator/fold<k>``, the others in ``.../member<i>``."""
    return run / "generator" / f"fold{k}" / (f"member{i}" if i else "")


def _train_generator(cohort, k, run, cfg, device, member: int = 0):
    from pathgen.pipelines.train_generator import TrainOptions, train_generator

    # x0 ("sample") prediction: with ~35 training patients and a small model, epsilon prediction
    # through the per-family encoder/decoder bottleneck never learned the near-identity eps map of
    # 3,000-gene vectors (held-out per-gene Spearman 0.01 vs 0.29 for x0 on fold 0 of this cohort)
    opts = TrainOptions(epochs=cfg.gen_epochs, patience=cfg.gen_patience, max_patches=cfg.gen_max_patches,
                        seed=cfg.seed + k + 100 * member, device=device, batch_size=4, lr=1e-3, val_steps=10,
                        val_every=1, draws=cfg.gen_draws, prediction="sample")
    # resume: a stage re-run after a crash continues its last.pt (same options every time)
    train_generator(cohort, k, _member_dir(run, k, member), opts, resume=True)


def _synthesize(cohort, k, run, cfg, device):
    from pathgen.pipelines.synthesize import synthesize

    fold = cohort.fold(k)
    members = [_member_dir(run, k, i) / "generator.pt" for i in range(cfg.gen_members)]
    synthesize(members, cohort, fold.test + fold.calibration,
               run / "synth" / f"fold{k}", samples=cfg.samples, steps=cfg.steps, seed=cfg.seed + k, device=device,
               save_attention=True)


def _fidelity(cohort, k, run):
    from pathgen.data.expression import read_expression
    from pathgen.models.generator.checkpoint import load_checkpoint
    from pathgen.pipelines.evaluate_generator import evaluate_generator

    ckpt = load_checkpoint(run / "generator" / f"fold{k}" / "generator.pt")
    synth = read_expression(run / "synth" / f"fold{k}" / "synthesized.csv")
    evaluate_generator(cohort, synth, ckpt["train_case_ids"], cohort.fold(k).test, run / "generator_eval" / f"fold{k}",
                       figure=(k == 0))


def _mean_tree(trees: list):
    """Mean over folds of every numeric leaf (None where any fold has None)."""
    first = trees[0]
    if isinstance(first, dict):
        return {key: _mean_tree([t[key] for t in trees]) for key in first if all(key in t for t in trees)}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        vals = [t for t in trees if t is not None]
        return float(np.mean(vals)) if len(vals) == len(trees) else None
    if isinstance(first, list) and first and all(isinstance(x, (int, float)) for x in first):
        return [float(v) for v in np.mean(np.array(trees, dtype=float), axis=0)]
    return first


def _fidelity_summary(cohort, run, folds):
    per = [json.loads((run / "generator_eval" / f"fold{k}" / "metrics.json").read_text()) for k in folds]
    keep = ("families", "overall", "baselines")
    summary = {key: _mean_tree([p[key] for p in per]) for key in keep}
    summary.update({"aggregation": f"mean over {len(folds)} folds (each fold: its own generator, its test patients)",
                    "n_test": int(sum(p["n_test"] for p in per)),
                    "n_train": int(round(np.mean([p["n_train"] for p in per]))), "folds": per,
                    "definitions": per[0].get("definitions")})
    atomic_write_text(run / "generator_eval" / "metrics.json", json.dumps(summary, indent=2, default=_json_default))
    src = run / "generator_eval" / f"fold{folds[0]}" / "fidelity.png"
    if src.exists():
        shutil.copyfile(src, run / "generator_eval" / "fidelity.png")


def _train_predictor(cohort, kind, run, cfg, device):
    from pathgen.pipelines.train_predictor import PredictorOptions, train_predictor_cv

    opts = PredictorOptions(model=kind, epochs=cfg.pred_epochs, patience=cfg.pred_patience, n_boot=cfg.n_boot,
                            seed=cfg.seed, device=device)
    inputs = {"manifest": str(run / "cohort" / "manifest.csv"), "expression": str(run / "cohort" / "expression.csv"),
              "features": str(run / "features"), "splits": str(run / "splits.json")}
    train_predictor_cv(cohort, opts, run / "predictor" / kind, inputs=inputs)


def _synth_tables(run, folds) -> dict:
    return {k: run / "synth" / f"fold{k}" / "synthesized.csv" for k in folds}


def _evaluate(cohort, run, cfg, folds, device):
    from pathgen.pipelines.evaluate_predictor import evaluate_predictors, format_markdown

    res = evaluate_predictors([run / "predictor" / "slide", run / "predictor" / "multimodal"], run / "evaluation",
                              synthesized=_synth_tables(run, folds), cohort=cohort, n_boot=cfg.n_boot,
                              seed=cfg.seed, device=device)
    atomic_write_text(run / "evaluation" / "metrics.json", json.dumps(res, indent=2, default=_json_default))
    print(format_markdown(res))


def _conformal(cohort, run, cfg, folds, device):
    """Split conformal with the SAME input mode on both sides (synthesized expression for the synth
    arm's calibration patients too, real for the real arm).

    Each fold's calibration patients are scored by that fold's predictor (which never trained on
    them) and the scores are pooled over folds into one calibration set; every test patient is
    then predicted by its own fold's model. A single fold's calibration part (~15 % of ~50
    patients) is smaller than the ceil((n+1)(1-alpha)) <= n minimum at alpha = 0.1.
    """
    from pathgen.data.expression import read_expression
    from pathgen.pipelines.evaluate_predictor import predict_fold
    from pathgen.utils.io import atomic_path

    mm = run / "predictor" / "multimodal"
    results, rows = {}, []
    for mode in ("synth", "real"):
        cal_frames, test_frames = [], []
        for k in folds:
            fold = cohort.fold(k)
            expr = read_expression(run / "synth" / f"fold{k}" / "synthesized.csv") if mode == "synth" \
                else cohort.expression
            cal_ids = cohort.cases_with_features(fold.calibration)
            test_ids = cohort.cases_with_features(fold.test)
            if cal_ids:
                cal_frames.append(predict_fold(mm, k, cohort, cal_ids, expr, mode, part="calibration", device=device))
            test_frames.append(predict_fold(mm, k, cohort, test_ids, expr, mode, part="test", device=device))
        results[mode], per_patient = _conformal_arm(pd.concat(cal_frames, ignore_index=True),
                                                    pd.concat(test_frames, ignore_index=True), mode, cfg.alpha)
        rows.append(per_patient)
    out = run / "conformal"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "per_patient.csv") as tmp:
        pd.concat(rows, ignore_index=True).to_csv(tmp, index=False)
    _plot_coverage(results, cfg.alpha, out / "coverage.png")
    res = {"alpha": cfg.alpha, "target_coverage": 1 - cfg.alpha, "arms": results,
           "method": "split conformal; calibration scores pooled over folds (each from its own fold's model), "
                     "same input mode for calibration and test"}
    atomic_write_text(out / "metrics.json", json.dumps(res, indent=2, default=_json_default))


def _conformal_arm(cal: pd.DataFrame, test: pd.DataFrame, mode: str, alpha: float):
    from pathgen.eval import conformal as cp

    prob_cols = [c for c in cal.columns if c.startswith("prob_")]
    surv_cols = sorted([c for c in cal.columns if c.startswith("surv_")], key=lambda c: int(c[5:]))
    res = {"n_calibration": len(cal), "n_test": len(test)}
    keep = [c for c in ("case_id", "fold", "age", "is_female", "race", "survival_months", "censorship", "risk",
                        "grade_index", "survival_bin") if c in test.columns]
    prow = test[keep + prob_cols].copy()
    prow["input_mode"] = mode
    if len(cal) < cp.min_calibration_size(alpha):
        res["refused"] = (f"{len(cal)} calibration patients < {cp.min_calibration_size(alpha)} needed for "
                          f"alpha={alpha}; use more patients or a larger alpha")
        return res, prow
    # grade sets over the graded patients only (grade_index -1 = no grade label; none at all when the
    # cohort has no grades, and then there are no prob_ columns either)
    cal_g, test_g = cal["grade_index"].to_numpy() >= 0, test["grade_index"].to_numpy() >= 0
    res.update(n_calibration_graded=int(cal_g.sum()), n_test_graded=int(test_g.sum()))
    if not prob_cols or len(prob_cols) < 2:
        res["grade_refused"] = "no grade probabilities (the cohort has no grade labels)"
    elif cal_g.sum() < cp.min_calibration_size(alpha):
        res["grade_refused"] = (f"{int(cal_g.sum())} graded calibration patients < {cp.min_calibration_size(alpha)} "
                                f"needed for alpha={alpha}")
    else:
        truth = test["grade_index"].to_numpy()[test_g]
        for score in ("lac", "aps"):
            calib = cp.calibrate_sets(cal.loc[cal_g, prob_cols].to_numpy(), cal["grade_index"].to_numpy()[cal_g],
                                      input_mode=mode, alpha=alpha, score=score)
            pred = cp.predict_sets(calib, test.loc[test_g, prob_cols].to_numpy(), input_mode=mode, labels=truth)
            d = pred.to_dict()
            covered = np.asarray(pred.covered, dtype=float)
            per_class = {str(c): {"n": int((truth == c).sum()), "coverage": float(np.nanmean(covered[truth == c]))}
                         for c in sorted(set(truth.tolist())) if np.isfinite(covered[truth == c]).any()}
            # calibration scores are pooled over folds (each from its own fold's model), so exchangeability with
            # one fold's test scores is approximate: per-fold coverage shows whether it held
            folds = test["fold"].to_numpy()[test_g] if "fold" in test.columns else None
            per_fold = ({str(k): float(np.mean(covered[folds == k])) for k in sorted(set(folds.tolist()))}
                        if folds is not None else None)
            res[f"grade_{score}"] = {"coverage": d["coverage"], "mean_set_size": d["mean_set_size"],
                                     "per_class": per_class, "per_fold": per_fold, "qhat": calib.to_dict()["quantiles"]}
            for col, vals in ((f"covered_{score}", covered), (f"set_size_{score}", pred.set_size)):
                prow[col] = np.nan  # ungraded patients have no set
                prow.loc[test_g, col] = np.asarray(vals, dtype=float)
    scal = cp.calibrate_survival(cal[surv_cols].to_numpy(), cal["survival_bin"].to_numpy(),
                                 1 - cal["censorship"].to_numpy(), input_mode=mode, alpha=alpha)
    spred = cp.predict_survival(scal, test[surv_cols].to_numpy(), input_mode=mode,
                                y_bin=test["survival_bin"].to_numpy(), event=1 - test["censorship"].to_numpy())
    sd = spred.to_dict()
    res["survival_lower_bound"] = {k: sd[k] for k in ("coverage_lower", "coverage_upper", "coverage_deaths",
                                                          "mean_lower_bin", "frac_trivial")}
    return res, prow


def _wavg(vals, w):
    pairs = [(v, x) for v, x in zip(vals, w) if v is not None]
    return float(np.average([p[0] for p in pairs], weights=[p[1] for p in pairs])) if pairs else None


def _plot_coverage(results: dict, alpha: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pathgen.utils.io import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    labels, cov, size = [], [], []
    for mode, res in results.items():
        for score in ("grade_lac", "grade_aps"):
            if score in res:
                labels.append(f"{mode}\n{score[6:].upper()}")
                cov.append(res[score]["coverage"])
                size.append(res[score]["mean_set_size"])
    axes[0].bar(labels, cov, color="tab:blue")
    axes[0].axhline(1 - alpha, color="k", ls="--", lw=1, label=f"target {1 - alpha:.0%}")
    axes[0].set_ylim(0, 1.05)
    axes[0].set_title("grade set coverage (test)")
    axes[0].legend(loc="lower right", fontsize=8)
    axes[1].bar(labels, size, color="tab:orange")
    axes[1].set_title("mean set size")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _fairness(run, cfg):
    from pathgen.eval.fairness import fairness_report
    from pathgen.utils.io import atomic_path

    table = pd.read_csv(run / "conformal" / "per_patient.csv")
    df = table[table["input_mode"] == "synth"].copy()
    prob_cols = [c for c in df.columns if c.startswith("prob_")]
    df["event"] = 1 - df["censorship"]
    has_sets = "covered_aps" in df.columns
    graded = len(prob_cols) >= 2
    tidy, summary = fairness_report(df, time_col="survival_months", event_col="event", risk_col="risk",
                                    grade_col="grade_index" if graded else None,
                                    prob_cols=prob_cols if graded else None, fold_col="fold",
                                    covered_col="covered_aps" if has_sets else None,
                                    set_size_col="set_size_aps" if has_sets else None, alpha=cfg.alpha,
                                    n_boot=min(cfg.n_boot, 200), min_group_n=10)
    out = run / "fairness"
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "fairness.csv") as tmp:
        tidy.to_csv(tmp, index=False)
    atomic_write_text(out / "fairness.json", json.dumps({"arm": "slide + synthesized expression (multimodal)",
                                                         **summary}, indent=2, default=_json_default))


def _heatmaps(cohort, run, cfg, folds):
    from pathgen.pipelines.heatmap import run_heatmaps

    att = run / "synth" / f"fold{folds[0]}" / "attention"
    cases = sorted(p.stem for p in att.glob("*.h5"))[: cfg.heatmap_cases]
    pred = run / "predictor" / "multimodal" / f"fold_{folds[0]}" / "predictor.pt"
    run_heatmaps(run / "heatmaps", run / "cohort" / "manifest.csv", attention=att, features=run / "features",
                 cases=",".join(cases), predictor=pred if pred.exists() else None,
                 expression=run / "synth" / f"fold{folds[0]}" / "synthesized.csv")
    atomic_write_text(run / "heatmaps" / ".done", "")


def _headline(run: Path, seconds: float, times: dict) -> dict:
    def load(rel):
        p = run / rel
        return json.loads(p.read_text()) if p.exists() else None

    gen, ev, conf, fair = (load("generator_eval/metrics.json"), load("evaluation/metrics.json"),
                           load("conformal/metrics.json"), load("fairness/fairness.json"))
    head = {"wall_time_s": round(seconds, 1), "stage_times_s": times}
    if gen:
        head["generator_fidelity"] = {
            "overall": {k: gen["overall"].get(k) for k in ("spearman_gene_median", "spearman_pooled", "nmae")},
            "baselines": {b: {k: v["overall"].get(k) for k in ("spearman_gene_median", "spearman_pooled", "nmae")}
                          for b, v in gen["baselines"].items()}}
    if ev:
        head["predictor"] = {"arms": {a: {k: v.get(k) for k in ("c_index_mean", "c_index_sd", "grade_auc_macro_mean",
                                                                 "grade_auc_macro_sd", "n")}
                                      for a, v in ev.get("arms", {}).items()},
                             "comparisons": ev.get("comparisons")}
    if conf:
        head["conformal"] = {m: {k: v.get(k) for k in ("grade_lac", "grade_aps", "survival_lower_bound")}
                             for m, v in conf["arms"].items()}
    if fair:
        head["fairness_gaps"] = {attr: v.get("gaps") for attr, v in fair.get("attributes", {}).items()}
    return head


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="run folder (default: demo_out)")
    p.add_argument("--quick", action="store_true", help="a ~2-minute smoke run (fewer cases, folds and epochs)")
    p.add_argument("--cases", type=int, default=None, help="override the number of demo patients")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an existing demo run in --out (made with other options) and start over")


def main(args: argparse.Namespace) -> int:
    cfg = DemoConfig.quick() if args.quick else DemoConfig()
    if args.cases:
        cfg = dataclasses.replace(cfg, cases=args.cases)
    out = Path(args.out)
    if args.overwrite and out.exists():
        if not is_demo_run(out):
            raise ValueError(f"{out} is not a pathgen demo run folder (no config.json with a 'demo' entry and "
                             "stage_times.json): not deleting it; fix: pass a new --out")
        check_options(cfg)  # the options are valid before anything is deleted
        shutil.rmtree(out)
    check_same_config(out, cfg)  # before the long environment report (run_demo checks again, for API callers)
    print(info_mod.format_report(info_mod.collect()), "\n")
    head = run_demo(args.out, cfg, device=args.device)
    print(json.dumps(head, indent=2, default=_json_default)[:4000])
    print(f"\n[demo] report: {Path(args.out) / 'report.html'}  ({head['wall_time_s']:.0f} s)")
    return 0
