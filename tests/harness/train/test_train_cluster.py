"""The training job across two Ray nodes (ray.cluster_utils.Cluster on this machine), through a worker failure."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
from mlflow import MlflowClient
from ray.cluster_utils import Cluster

from harness.train.node_check import NodeInputError, check_node
from harness.train.driver import fit
from harness.cluster import ray_session

def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.slow(seconds=80)
def test_two_nodes_train_track_and_survive_a_failure(tiny_config, prepared_root, monkeypatch):
    # A relative data path, as in params.yaml: workers do not share the driver's cwd.
    monkeypatch.chdir(prepared_root.parent)
    # P = 2 identities per step over 2 workers: one identity per worker. Mining on a worker's own
    # share would find no negative and the triplet term would be 0; on the global batch it is not.
    # One worker fails in epoch 1 (global step 3, 2 a epoch); Ray restarts the group from epoch 0's
    # checkpoint and the run goes on as one MLflow run, with no epoch logged twice. The head (the driver's
    # node) has no CPU for a worker, so the latency, timed with a worker's resources, is timed on a worker node.
    config = tiny_config("ray.num_workers=2", "train.epochs=3", "train.batch_size=4", "train.k=2",
                         "train.steps_per_epoch=2", "ray.max_failures=1", "cost.measure=true", "cost.repeats=2",
                         f"data.prepared_root={prepared_root.name}")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = {cluster.add_node(num_cpus=1).node_id for _ in range(2)}
    cluster.wait_for_nodes()
    try:
        with ray_session(cluster.address):
            # Each worker node has 1 CPU and each worker needs 1, so the two workers must span both nodes.
            assert sorted(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]) == [0, 1.0, 1.0]
            head = ray.get_runtime_context().get_node_id()
            result = fit(config, progress=False, fail_at_step=3)
            # What a worker's node check says on a node whose copy of the data is another version.
            stale = ray.remote(num_cpus=1, max_retries=0)(check_node).remote(
                prepared_root / "mars", "blake2b:other", None, None)
            with pytest.raises(ray.exceptions.RayTaskError) as error:
                ray.get(stale)
    finally:
        cluster.shutdown()
    client = MlflowClient(config.mlflow.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(config.mlflow.experiment).experiment_id])
    assert [r.info.run_id for r in runs] == [result.run_id]
    assert (Path(config.ray.storage_path) / result.ray_run / ".injected-failure").exists()
    run = client.get_run(result.run_id)
    losses = [v for _, v in history(client, result.run_id, "loss")]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert all(v > 0.05 for _, v in history(client, result.run_id, "triplet"))
    assert run.data.params["model.preset"] == "nvan" and run.data.params["spec.non_local"] == "[0, 2, 3, 0]"
    assert run.data.params["git_commit"] and run.data.params["dataset.manifest_hash"] != "unknown"
    assert {"cost.gmacs", "cost.params_m", "cost.latency_ms", "best.rank1", "best.map"} <= set(run.data.metrics)
    assert [s for s, _ in history(client, result.run_id, "map")] == [0, 1, 2]
    assert run.data.tags["nvan.status"] == "finished" and run.data.tags["dataset"] == "mars"
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "metrics.json", "cmc.png"} <= artifacts
    assert result.checkpoint and (Path(result.checkpoint) / "state.pt").exists()
    assert 0 <= result.best_scores["mars-official"]["rank1"] <= 1
    latency = result.cost["latency"]
    assert latency["node_id"] in workers and head not in workers
    assert latency["threads"] == config.ray.cpus_per_worker and latency["device"].startswith("cpu: ")
    assert latency["model"].startswith("BN-folded") and run.data.tags["cost.node"] == latency["node"]
    message = str(error.value.cause)
    assert isinstance(error.value.cause, NodeInputError) and "another version" in message and "dvc pull" in message
    assert [w for w in workers if f"Ray node {w[:12]}" in message]  # it names the worker node it ran on

