"""python -m harness.evaluate: features of a checkpoint's test set, scored under the MARS / DukeV protocols."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from datasets.loaders import EvalClips
from harness.errors import UserError
from harness.cli import config_parser, load_from_args, run
from harness.config import Config
from harness.evaluate.features import extract_features, load_features, save_features, score_features
from harness.evaluate.metrics import Scores
from harness.evaluate.queries import scores_table, write_queries
from harness.evaluate.statistics import query_interval, table_values
from harness.io import check_writable, write_json_atomic
from harness.precision import set_tf32
from harness.prepared import prepared_dataset
from harness.checkpoint import load_model
from models.checkpoints import load_official_checkpoint

log = logging.getLogger("harness.evaluate")


def format_scores(scores: dict[str, Scores], intervals: dict[str, dict[str, list[float]]] | None = None) -> str:
    """A table of rank-1/5/10/20, mAP and mINP in percent, one row per protocol, then each protocol's 95 % query
    intervals of rank-1 and mAP when given."""
    lines = [f"{'protocol':<14}{'R1':>7}{'R5':>7}{'R10':>7}{'R20':>7}{'mAP':>7}{'mINP':>7}{'queries':>9}"]
    for name, s in scores.items():
        values = (s.rank1, s.rank5, s.rank10, s.rank20, s.map, s.minp)
        lines.append(f"{name:<14}" + "".join(f"{100 * v:7.2f}" for v in values) + f"{s.num_queries:9d}")
    for name, found in (intervals or {}).items():
        lines.append(f"{name}: 95 % interval over queries: rank-1 [{100 * found['rank1'][0]:.1f}, "
                     f"{100 * found['rank1'][1]:.1f}], mAP [{100 * found['map'][0]:.1f}, {100 * found['map'][1]:.1f}]")
    return "\n".join(lines)


def _model_from_args(args, config: Config) -> nn.Module:
    if args.official:
        return load_official_checkpoint(args.official, args.preset or config.model.preset)
    model, spec = load_model(args.checkpoint)
    if args.preset:
        expected = config.spec(spec.num_classes, args.preset)
        if expected != spec:
            raise UserError(f"checkpoint {args.checkpoint} holds {spec}, not preset {args.preset!r} ({expected}); "
                            f"drop --preset or pass the matching one")
    return model


def main(argv: list[str] | None = None) -> int:
    parser = config_parser(
        "harness.evaluate", "Extract test features and score them under the MARS / DukeV protocols.\n"
                            "In the examples, CHECKPOINT is a run record's best_checkpoint: a folder under "
                            "ray.storage_path.",
        ["python -m harness.evaluate --checkpoint ray_results/CHECKPOINT --save-features reports/eval/features "
         "--out reports/eval/scores.json",
         "python -m harness.evaluate --features reports/eval/features --set eval.metric=euclidean",
         "python -m harness.evaluate --params examples/paper-mars.yaml --official NVAN.pth --preset nvan"])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a checkpoint of harness.train (state.pt or its folder)")
    source.add_argument("--official", type=Path, help="an official STE-NVAN checkpoint (.pth); give --preset")
    source.add_argument("--features", type=Path, help="re-score features saved with --save-features")
    parser.add_argument("--preset", choices=["baseline", "nvan", "ste_nvan"], help="the preset the weights must be")
    parser.add_argument("--save-features", type=Path, help="write features.npy + index.parquet here")
    parser.add_argument("--out", type=Path, help="write the scores, with their 95 %% query intervals, as JSON here")
    parser.add_argument("--queries", type=Path, help="write the per-query outcomes (parquet) every score is a mean of")
    args = parser.parse_args(argv)
    if args.preset:  # before validation: the config's checks (stripes at the input) concern this preset
        args.overrides.append(f"model.preset={args.preset}")
    config = load_from_args(args)
    for target in (args.out, args.queries):
        if target:
            check_writable(target)
    if args.save_features:
        for name in ("features.npy", "index.parquet"):
            check_writable(args.save_features / name)
    protocols, metric = config.eval.protocols, config.eval.metric
    if args.features:
        features, rows = load_features(args.features)
    else:
        directory = prepared_dataset(config.data).directory
        dataset = EvalClips(directory, config.data.frames, config.eval.sampler)
        model = _model_from_args(args, config)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        set_tf32(config.train.tf32)  # as the model was trained: float32 is float32 unless train.tf32
        log.info("extracting features of %d test tracklets on %s", len(dataset), device)
        features = extract_features(model, dataset, config.eval.batch_size, device, compile=config.eval.compile)
        rows = dataset.rows
        if args.save_features:
            save_features(args.save_features, features, rows)
            log.info("saved features to %s", args.save_features)
    scores = score_features(features, rows, protocols, metric)
    queries = scores_table(scores, rows)  # with each query's identity, which clusters the queries
    intervals = {name: query_interval(*table_values(queries, name)) for name in scores}
    print(format_scores(scores, intervals))
    if args.queries:
        write_queries(args.queries, queries)
    if args.out:
        write_json_atomic(args.out, {name: s.as_dict() | {"cmc": s.cmc.tolist(), "ci95": intervals[name]}
                                     for name, s in scores.items()})
    return 0


if __name__ == "__main__":
    run(main)
