"""Every example is a complete params.yaml: DVC parses it, a missing dataset stops the pipeline with a message that
names the key to fix, and the paper recipe runs through `dvc repro` on a MARS-layout tree at tiny sizes."""

from __future__ import annotations

import json
import shutil
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from datasets.synthetic import write_mars
from harness.config import Config, PresetParams
from harness.results.records import read_record
from models.presets import PRESETS
from project_copy import (DVC, ROOT, TINY, TINY_MARS, copy_project, copy_with_params, merge, params_of, ran_stages,
                          run, strings)

FILES = ["params.yaml", *sorted(f"examples/{p.name}" for p in (ROOT / "examples").glob("*.yaml"))]


def nested_model(annotation) -> tuple[str | None, type[BaseModel] | None]:
    """How a field holds params sections: ("section", M) for M itself, ("list", M) / ("map", M) for a list or a
    name -> M mapping of them (M without its `| None`), or (None, None) for a value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section", annotation
    args = typing.get_args(annotation)
    container = {list: "list", dict: "map"}.get(typing.get_origin(annotation))
    if container and isinstance(args[-1], type) and issubclass(args[-1], BaseModel):
        return container, args[-1]
    return None, None


def missing_keys(model: type[BaseModel], tree: dict, prefix: str = "") -> list[str]:
    """The keys of `model` (and of its sections, list items and named entries) that `tree` leaves out: each one a
    value the harness would take from harness/config.py while DVC saw nothing."""
    missing = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if name not in tree:
            missing.append(key)
            continue
        kind, section = nested_model(field.annotation)
        value = tree[name]
        if kind == "section":
            missing += missing_keys(section, value, f"{key}.")
        elif kind == "list":
            missing += [k for i, item in enumerate(value) for k in missing_keys(section, item, f"{key}[{i}].")]
        elif kind == "map" and section is PresetParams:
            # A preset's block holds only its overrides (null and absent alike keep the preset's value), but
            # dvc.yaml's cost and train stages name presets.<preset>, so each preset needs its block.
            missing += [f"{key}.{preset}" for preset in PRESETS if preset not in value]
        elif kind == "map":
            missing += [k for entry, item in value.items() for k in missing_keys(section, item, f"{key}.{entry}.")]
    return missing


def test_missing_keys_walks_sections_lists_and_named_entries():
    tree = params_of("params.yaml")
    del tree["train"]["tf32"], tree["cost"]["inputs"][0]["frames"], tree["data"]["sources"]["mars"]["root"]
    del tree["presets"]["nvan"], tree["seeds"]
    assert missing_keys(Config, tree) == [
        "seeds", "data.sources.mars.root", "presets.nvan", "cost.inputs[0].frames", "train.tf32"]


@pytest.mark.parametrize("name", FILES)
def test_every_key_of_the_config_is_in_the_file(name):
    """No default of harness/config.py fills a gap in a committed params file: DVC and the harness see the same
    values (DVC refuses a stage whose param is missing; the harness would silently take the default)."""
    assert missing_keys(Config, params_of(name)) == [], f"{name} leaves these keys out; copy them from params.yaml"


def expected_stages(params: dict) -> set[str]:
    """The stages of dvc.yaml that `params` instantiate: its foreach stages once per synthetic dataset, source and
    preset."""
    return ({f"synthesize@{k}" for k in params["synthetic"]}
            | {f"{stage}@{k}" for k in params["data"]["sources"] for stage in ("source", "prepare")}
            | {f"{stage}@{p}" for p in PRESETS for stage in ("cost", "train")} | {"report"})


@pytest.fixture(scope="module")
def code(tmp_path_factory) -> Path:
    """A project copy (code, no results) for the tests that each put a params.yaml in it before running DVC."""
    return copy_project(tmp_path_factory.mktemp("copy"), lambda path: not path.startswith(("reports/", "dvc.lock")),
                        untracked=True)


@pytest.mark.parametrize("name", FILES)
def test_dvc_parses_the_file_as_params_yaml(code, name):
    shutil.copyfile(ROOT / name, code / "params.yaml")
    # --force: a plain dry run hashes every dependency for DVC's run cache and stops at the first that does not exist
    # yet (a dataset a stage would write, or one not in place: treeverse/dvc#9818); forced, it only lists the stages.
    listed = run(DVC, "repro", "--dry", "--force", cwd=code)
    assert ran_stages(listed) == expected_stages(params_of(name))


@pytest.mark.parametrize("name, source, folder", [("examples/paper-mars.yaml", "mars", "bbox_train/"),
                                                  ("examples/paper-dukev.yaml", "duke", "train/")])
def test_repro_without_the_dataset_says_which_key_to_fix(code, tmp_path, name, source, folder):
    params = params_of(name)
    absent = tmp_path / "no-dataset-here"  # the example's own root might exist on some machine
    params["data"]["sources"][source]["root"] = str(absent)
    (code / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = run(DVC, "repro", cwd=code, check=False)
    assert proc.returncode != 0 and ran_stages(proc) == {f"source@{source}"}
    assert f"failed to reproduce 'source@{source}'" in proc.stderr and "exited with 2" in proc.stderr
    message = next(line for line in proc.stderr.splitlines() if line.startswith("error: "))
    assert f"data.sources.{source}.root" in message and str(absent) in message and folder in message
    assert "nothing is there" in message and "then run dvc repro again" in message


@pytest.mark.slow(seconds=210, cores=2)
def test_the_paper_recipe_runs_through_dvc_on_the_real_layout(tmp_path):
    """The real-data path as a user takes it, at tiny sizes: examples/paper-mars.yaml with the root of a MARS-layout
    tree (bbox_train/, bbox_test/, info/) outside the project and no synthetic data, through every stage."""
    root = tmp_path / "MARS"
    write_mars(root, **{k: v for k, v in TINY_MARS.items() if k != "format"})
    rehearsal = {
        "seeds": [0],
        "data": {"sources": {"mars": {"root": str(root)}}, "prepare_workers": 0},
        # The recipe's baseline block, down to one epoch: the block still applies over train.*.
        "presets": {"baseline": {"train": {"epochs": 1, "weight_decay": 1.0e-5}}},
        "train": {"imagenet_init": None, "loader_workers": 0},
        "ray": {"use_gpu": False},
    }
    params = merge(merge(params_of("examples/paper-mars.yaml"), TINY), rehearsal)
    assert params["synthetic"] == {} and params["data"]["store"] == "jpeg"
    repo = copy_with_params(tmp_path / "copy", params)

    first = run(DVC, "repro", cwd=repo)
    assert ran_stages(first) == expected_stages(params)  # no synthesize stage: synthetic is {}
    manifest = json.loads((repo / "data/prepared/mars/manifest.json").read_text())
    # Frames written at the input size are kept as the JPEGs they are, as real MARS frames at 256 x 128 are.
    assert manifest["store"]["format"] == "jpeg" and manifest["store"]["encoded_frames"] == 0
    baseline = read_record(repo / "reports/runs/baseline/seed0.json")
    # The dataset's root is this machine's folder: no path in the record is absolute.
    assert not [s for s in strings(baseline.written()) if s.startswith("/")]
    assert (baseline.config.train.epochs, baseline.config.train.weight_decay) == (1, 1.0e-5)
    # The recipe's checkpoint selection: the best rank-1 on the test set, which the record says it chose by.
    assert baseline.config.eval.select_by == "rank1" and baseline.selection == "test"
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert sorted(metrics["mars (synthetic)"]) == sorted(PRESETS)
    assert ran_stages(run(DVC, "repro", cwd=repo)) == set()  # the dataset outside the project hashes the same
