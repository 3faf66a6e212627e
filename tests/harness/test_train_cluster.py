"""The training job across two Ray nodes (ray.cluster_utils.Cluster on this machine)."""

from __future__ import annotations

import pytest
import ray
from mlflow import MlflowClient
from ray.cluster_utils import Cluster

from harness.train import fit, ray_session

pytestmark = pytest.mark.slow


def test_two_nodes_one_worker_each(tiny_config):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        with ray_session(cluster.address):
            # Each node has 1 CPU and each worker needs 1, so the two workers must span both nodes.
            assert [n["Resources"]["CPU"] for n in ray.nodes() if n["Alive"]] == [1.0, 1.0]
            config = tiny_config("ray.num_workers=2", "train.epochs=2", "train.steps_per_epoch=2")
            result = fit(config, progress=False)
    finally:
        cluster.shutdown()
    client = MlflowClient(config.mlflow.tracking_uri)
    assert sorted(m.step for m in client.get_metric_history(result.run_id, "loss")) == [0, 1]
    assert client.get_run(result.run_id).data.tags["nvan.status"] == "finished"
    assert 0 <= result.best_scores["mars-official"]["map"] <= 1
