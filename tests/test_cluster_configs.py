"""The cluster configs, checked as far as this machine allows: Ray's own launcher schema for the
AWS config, structure of the KubeRay manifest, shell syntax of the scripts, no secrets and no
0.0.0.0 anywhere."""
import copy
import re
import subprocess
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def test_aws_launcher_config_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` runs before touching AWS
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "RAY_AUTH_MODE=token" in start
    assert "mlflow server --host 127.0.0.1" in start
    assert any("pip install -q -e ~/hnet-sweeps" in c for c in config["setup_commands"])
    broken = copy.deepcopy(config)
    broken["available_node_types"]["head"]["node_confg"] = {}  # a typo must not pass
    with pytest.raises(Exception, match="node_confg"):
        validate_config(prepare_config(broken))


def test_kuberay_manifest_has_the_required_fields():
    volume_claim, cluster = yaml.safe_load_all((CLUSTER / "kuberay.yaml").read_text())
    assert volume_claim["kind"] == "PersistentVolumeClaim" and volume_claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster") and cluster["metadata"]["name"]
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["serviceType"] == "ClusterIP"
    groups = cluster["spec"]["workerGroupSpecs"]
    assert groups and all(g["groupName"] and g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in groups)
    for pod in [head["template"]["spec"]] + [g["template"]["spec"] for g in groups]:
        container = pod["containers"][0]
        assert container["image"] and {"name": "shared", "mountPath": "/shared"} in container["volumeMounts"]
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == volume_claim["metadata"]["name"]
    assert groups[0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize("script", ["slurm.sbatch", "local_cluster.sh"])
def test_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(CLUSTER / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_slurm_script_refuses_to_run_outside_a_job(tmp_path):
    proc = subprocess.run(["bash", str(CLUSTER / "slurm.sbatch")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "usage: sbatch cluster/slurm.sbatch SPEC" in proc.stderr


def test_no_secrets_and_no_wildcard_binds():
    for path in CLUSTER.iterdir():
        text = path.read_text()
        code = "\n".join(line.split("#")[0] for line in text.splitlines())  # comments may name what not to do
        assert "0.0.0.0" not in code, path
        assert not re.search(r"(aws_secret_access_key|password|auth_token)\s*[:=]\s*['\"]?\w{8,}", code, re.I), path


def test_slurm_script_runs_the_smoke_sweep_on_a_real_slurm(tmp_path):
    """sbatch on a one-node Slurm (.ci/start-slurm): Ray head + worker via srun, the sweep, teardown."""
    import os
    import shutil
    import sys

    ready = shutil.which("sbatch") and subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0
    if not ready:
        if os.environ.get("HNET_REQUIRE_SLURM"):  # .ci/run starts one
            pytest.fail("no Slurm controller answers (run .ci/start-slurm and export SLURM_CONF)")
        pytest.skip("no Slurm here: .ci/start-slurm starts a one-node Slurm")
    env = {**os.environ, "HNET_VENV": sys.prefix, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(["sbatch", "--wait", "--nodes=1", f"--cpus-per-task={os.cpu_count()}", "--gpus-per-node=0",
                           "--mem=2G", str(CLUSTER / "slurm.sbatch"), "smoke", "--num-samples", "2", "--iters", "20"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = "".join(p.read_text() for p in tmp_path.glob("hnet-sweep-*.log"))
    assert proc.returncode == 0, proc.stderr + log[-3000:]
    assert "2 trials, 2 completed" in log, log[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id], "tags.role = 'trial'")
    assert len(runs) == 2 and all(r.data.tags["trial_status"] == "completed" for r in runs)
    assert not list(tmp_path.glob(".ray-token-*"))  # the job's secret is removed at exit
