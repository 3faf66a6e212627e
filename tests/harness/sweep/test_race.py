"""sweep.seeds: adaptive: the racing decision on synthetic samples, its config, and one raced sweep end to end."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from harness import storage
from harness.errors import ConfigError
from harness.evaluate.statistics import FRONT_SCORES, SCORES, Sample, difference, interval
from harness.params import load_config
from harness.results.records import read_record
from harness.sweep.race import BUDGET, DOMINATED, FRONT, decide

ROOT = Path(__file__).resolve().parents[3]
QUERIES, SEEDS = 400, 3
CLUSTERS = np.arange(QUERIES) // 2  # two queries per identity


def hits(p: float, rng: np.random.Generator) -> np.ndarray:
    """(SEEDS, SCORES, QUERIES) 0/1 values, each a hit with probability `p`."""
    return (rng.random((SEEDS, 1, QUERIES)) < p).repeat(len(SCORES), axis=1).astype(np.float64)


def sample(values: np.ndarray, seeds: int = SEEDS) -> Sample:
    return Sample(tuple(range(seeds)), values[:seeds], CLUSTERS)


def test_race_decides_dominated_front_and_leaves_a_tie_undecided_until_the_budget():
    rng = np.random.default_rng(7)
    best = hits(0.9, rng)
    # The tie: the best one's values with a tenth of its queries drawn again at the same rate.
    tie = np.where(rng.random((SEEDS, 1, QUERIES)) < 0.1, hits(0.9, rng), best)
    values = {"cheap": hits(0.5, rng), "best": best, "worse": hits(0.2, rng), "tie": tie}
    cost = {"cheap": 1.0, "best": 2.0, "worse": 3.0, "tie": 2.5}
    samples = {k: sample(v) for k, v in values.items()}
    assert decide(samples, cost, "map", max_seeds=4) == {"cheap": FRONT, "best": FRONT, "worse": DOMINATED,
                                                          "tie": None}
    assert decide(samples, cost, "rank1", max_seeds=3)["tie"] == BUDGET
    # Seed lists of different lengths compare unpaired: the verdicts hold.
    samples["tie"] = sample(tie, 2)
    assert decide(samples, cost, "map", max_seeds=3) == {"cheap": FRONT, "best": FRONT, "worse": DOMINATED,
                                                         "tie": None}



class Seeds:
    """The race's I/O on a dict: each seed's (SCORES, QUERIES) values by record path, and the paths trained so far;
    `train` trains a round, or its first `stop_after` entrants and then stops as a preempted round does."""

    def __init__(self, values: dict[str, np.ndarray], min_seeds: int):
        self.values, self.done, self.rounds = values, set(), []
        self.done |= {p for p in values if int(p.rpartition("/")[2]) < min_seeds}  # the Tune trials' seeds
        self.stop_after = None

    def train(self, todo: dict) -> None:
        self.rounds.append(dict(todo))
        for n, (key, index) in enumerate(todo.items()):
            if self.stop_after is not None and n >= self.stop_after:
                return
            assert f"{key}/{index}" not in self.done, "a seed trained twice"
            self.done.add(f"{key}/{index}")

    def read(self, runs: list, protocol: str) -> Sample:
        return Sample(tuple(i for i, _ in runs), np.stack([self.values[p] for _, p in runs]), CLUSTERS)


def test_the_race_trains_only_undecided_candidates_and_resumes_a_stopped_round(monkeypatch):
    """race() round by round on known samples: decided candidates stop training unless an undecided one needs them as
    a rival, the ties race to max_seeds, and a round stopped halfway (SIGTERM) resumes from the records to the same
    verdicts, no seed trained twice."""
    from harness.sweep import race as racing

    rng = np.random.default_rng(9)  # "best" is undecided at 2 seeds (1 df) here
    max_seeds, min_seeds = 6, 2
    seeds = {k: np.concatenate([hits(p, rng) for _ in range(2)])[:, 0] for k, p in
             {"cheap": 0.5, "best": 0.9, "worse": 0.2}.items()}  # (6, QUERIES) hit or miss per seed
    for tie, like, rate in (("tie", "best", 0.9), ("tie2", "cheap", 0.5)):  # a tenth of the queries drawn again
        seeds[tie] = np.where(rng.random((max_seeds, QUERIES)) < 0.1, rng.random((max_seeds, QUERIES)) < rate,
                              seeds[like])
    values = {f"{k}/{i}": np.repeat(v[i][None], len(SCORES), axis=0) for k, v in seeds.items()
              for i in range(max_seeds)}
    entrants = {k: racing.Entrant(c, tuple(f"{k}/{i}" for i in range(max_seeds)))
                for k, c in {"cheap": 1.0, "tie2": 1.5, "best": 2.0, "worse": 3.0, "tie": 2.5}.items()}

    def run(io: Seeds, train: bool) -> dict:
        monkeypatch.setattr(racing, "trained", io.done.__contains__)
        monkeypatch.setattr(racing, "queries_path", str)
        monkeypatch.setattr(racing, "read_sample", io.read)
        return racing.race(entrants, "mars-official", "map", min_seeds, max_seeds, io.train if train else None)

    whole = Seeds(values, min_seeds)
    verdicts = run(whole, train=True)
    assert verdicts == {"cheap": FRONT, "tie2": BUDGET, "best": FRONT, "worse": DOMINATED, "tie": BUDGET}
    trained = {k: sum(p.startswith(f"{k}/") for p in whole.done) for k in entrants}
    # The ties race to the budget; "cheap" and "best", decided, train on beside them as the rivals that can decide
    # them (paired, not stuck at 1 df: without that "best" ends at "budget" against "cheap" stopped at 2 seeds);
    # "worse", the dearest, is no one's rival and stops at min_seeds.
    assert trained == {"cheap": max_seeds, "tie2": max_seeds, "best": max_seeds, "worse": min_seeds, "tie": max_seeds}
    for n, todo in enumerate(whole.rounds):  # each round trains the next seed of exactly the undecided ones
        assert todo == {k: min_seeds + n for k in entrants if trained[k] > min_seeds + n}
    rounds = len(whole.rounds)
    assert run(whole, train=False) == verdicts and len(whole.rounds) == rounds  # replayed from the records

    stopped = Seeds(values, min_seeds)
    stopped.stop_after = 1
    partial_verdicts = run(stopped, train=True)  # the first round stops after its first entrant
    assert len(stopped.rounds) == 1 and set(partial_verdicts) < set(verdicts)
    stopped.stop_after = None
    assert run(stopped, train=True) == verdicts and stopped.done == whole.done
    assert stopped.rounds[1] == {k: i for k, i in whole.rounds[0].items() if k != next(iter(whole.rounds[0]))}


def looped_decide(samples: dict, cost: dict, score: str, max_seeds: int) -> dict:
    """The replaced decide, verbatim, with the replaced surely_on_front: every rival's difference in a loop."""
    i = SCORES.index(score)
    out = {}
    for key, sample in samples.items():
        rivals = [k for k in samples if k != key and cost[k] <= cost[key]]
        if any(interval(difference(samples[k], sample))[0][i] > 0 for k in rivals):
            out[key] = DOMINATED
        elif looped_surely_on_front(key, samples, cost)[score]:
            out[key] = FRONT
        else:
            out[key] = BUDGET if len(sample.seeds) >= max_seeds else None
    return out


def looped_surely_on_front(key, samples: dict, cost: dict) -> dict[str, bool]:
    rivals = [k for k, c in cost.items() if k != key and c <= cost[key]] if key in cost else None
    if rivals is None or any(k not in samples for k in rivals):
        return {name: False for name in FRONT_SCORES}
    index = [SCORES.index(name) for name in FRONT_SCORES]
    sure = np.ones(len(index), dtype=bool)
    for rival in rivals:
        sure &= interval(difference(samples[key], samples[rival]))[0][index] > 0
    return dict(zip(FRONT_SCORES, sure.tolist()))


def random_race(rng: np.random.Generator, candidates: int) -> tuple[dict, dict]:
    """Candidates at 2 to 4 seeds (paired and unpaired), some copies of others (ties in accuracy), costs of a few
    values (ties in cost), now and then a NaN cost."""
    samples: dict = {}
    for n in range(candidates):
        seeds = int(rng.integers(2, 5))
        if samples and rng.random() < 0.25:
            earlier = samples[f"c{int(rng.integers(len(samples)))}"]
            samples[f"c{n}"] = Sample(earlier.seeds, earlier.values, CLUSTERS)
            continue
        values = hits(rng.uniform(0.2, 0.9), rng)
        if seeds == 4:
            values = np.concatenate([values, hits(rng.uniform(0.2, 0.9), rng)[:1]])
        samples[f"c{n}"] = sample(values, seeds)
    levels = rng.choice([1.0, 2.0, 3.0, 5.0, 8.0], int(rng.integers(1, 6)), replace=False)
    cost = {k: float(rng.choice(levels)) if rng.random() > 0.05 else np.nan for k in samples}
    return samples, cost


def test_decide_equals_the_looped_decide_on_random_races():
    rng = np.random.default_rng(8)
    seen = set()
    for trial in range(40):
        samples, cost = random_race(rng, int(rng.integers(1, 14)))
        score = ("map", "rank1")[trial % 2]
        max_seeds = int(rng.integers(2, 5))
        got = decide(samples, cost, score, max_seeds)
        assert got == looped_decide(samples, cost, score, max_seeds), trial
        seen |= set(got.values())
    assert seen == {DOMINATED, FRONT, BUDGET, None}


def test_decide_on_a_score_without_a_front_fails_as_before():
    rng = np.random.default_rng(9)
    samples, cost = random_race(rng, 3)
    with pytest.raises(KeyError):
        looped_decide(samples, {k: 1.0 for k in samples}, "rank5", 3)
    with pytest.raises(KeyError):
        decide(samples, {k: 1.0 for k in samples}, "rank5", 3)


@pytest.mark.parametrize("overrides, message", [
    (["sweep.seeds=adaptive", "sweep.min_seeds=4", "sweep.max_seeds=3"], "sweep.min_seeds = 4 exceeds sweep.max_seeds = 3"),
    (["sweep.min_seeds=1"], "sweep.min_seeds = 1"),
    (["sweep.seeds=many"], "sweep.seeds: 'many' is neither"),
    (["sweep.seeds=0"], "sweep.seeds: 0 is neither"),
    (["sweep.seeds=adaptive", "sweep.max_seeds=4", "seed=4294967295"], "sweep.max_seeds = 4"),
])
def test_adaptive_seed_settings_are_validated_with_their_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(ROOT / "params.yaml", overrides)


def test_adaptive_seeds_start_at_min_and_a_fixed_count_stays_as_it_was():
    sweep = load_config(ROOT / "params.yaml", ["sweep.seeds=adaptive", "sweep.min_seeds=3"]).sweep
    assert sweep.adaptive and (sweep.first_seeds, sweep.most_seeds) == (3, 5)
    sweep = load_config(ROOT / "params.yaml", ["sweep.seeds=2"]).sweep
    assert not sweep.adaptive and (sweep.first_seeds, sweep.most_seeds) == (2, 2)


@pytest.mark.slow(seconds=170, cores=2)
def test_an_adaptive_sweep_races_its_tied_candidates_to_the_budget(tiny_sets, tmp_path):
    """The grid's one point twice: two candidates that train alike tie, so the race adds a seed to each (side by
    side, in the sweep's Ray session) until max_seeds, and the table counts every seed."""
    args = [sys.executable, "-m", "harness.sweep", *tiny_sets, "--set", f"report.out_dir={tmp_path / 'reports'}",
            "--set", "sweep.search=grid", "--set", "sweep.space={placement: [p0200]}", "--set", "sweep.scheduler=fifo",
            "--set", "sweep.trial={train: {epochs: 1, steps_per_epoch: 2}, eval: {every: 1}}",
            "--set", "sweep.seeds=adaptive", "--set", "sweep.min_seeds=2", "--set", "sweep.max_seeds=3",
            "--set", "report.draws=1000", "--name", "r", "--num-samples", "2", "--max-concurrent", "2"]
    done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    results = pl.read_parquet(tmp_path / "reports" / "sweeps" / "r" / "results.parquet")
    assert results.height == 2 and results["status"].to_list() == ["finished", "finished"]
    assert results["seeds"].to_list() == [3, 3] and results["race"].to_list() == [BUDGET, BUDGET]
    for row in results.iter_rows(named=True):
        paths = [storage.join(str(tmp_path / "ray"), "r", "records", f"{row['trial_id']}{f'-seed{i}' if i else ''}.json")
                 for i in range(3)]
        records = [read_record(p) for p in paths]
        assert [r.config.seed for r in records] == [0, 1, 2] and {r.status for r in records} == {"finished"}
        maps = [r.scores["mars-official"].map for r in records]
        assert row["map"] == pytest.approx(np.mean(maps), abs=1e-15) and row["map_lo"] <= row["map"] <= row["map_hi"]
    assert "budget" in done.stdout
