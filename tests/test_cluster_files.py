"""The shipped cluster files: no placeholders, and what `ray up cluster.yaml` would launch on AWS (boto3 answered
by moto, in process: no network)."""

import copy
import re
import types

import pytest
import yaml
from conftest import ROOT

from bnsweep.cli import main
from bnsweep.cluster import validate_cluster
from bnsweep.errors import UserError

SHIPPED = sorted(p.relative_to(ROOT).as_posix() for p in [*ROOT.glob("cluster*.yaml"), *(ROOT / "cluster").glob("*")])

# Values a user would have to replace. Loopback and 0.0.0.0 are real values, so every other IPv4 is suspect.
PLACEHOLDERS = {
    "an AMI id": r"\bami-[0-9a-f]{8,17}\b",
    "an ARN": r"\barn:aws:",
    "an AWS account number": r"(?<![\d.])\d{12}(?![\d.])",
    "an IP address": r"\b(?!127\.0\.0\.1\b|0\.0\.0\.0\b)(?:\d{1,3}\.){3}\d{1,3}\b",
    "a filler word": r"change[-_ ]?me|replace[-_ ]?me|placeholder|(?<![.\w])x{3,}\b|\btodo\b|\bfixme\b|\bfoo\b|\bbar\b",
    "a 'your-...' name": r"\byour[-_][a-z0-9]|<your|\bmy[-_]?(bucket|cluster|key)\b",
    "an example domain": r"\bexample\.(com|org|net)\b",
    "an <angle-bracket> slot": r"<[a-z][a-z0-9 _-]*>",
    "a made-up digit run": r"0123456789|123456789|abcdef0",
}


def placeholders(text: str) -> list[str]:
    """`kind: line` for every line of `text` that holds a value looking like a placeholder."""
    return [f"{kind}: {line.strip()}" for line in text.splitlines() for kind, rx in PLACEHOLDERS.items()
            if re.search(rx, line, re.IGNORECASE)]


def test_the_shipped_files_are_the_expected_ones():
    assert {"cluster.yaml", "cluster-onprem.yaml", "cluster/slurm.sbatch"} <= set(SHIPPED)


@pytest.mark.parametrize("path", SHIPPED)
def test_no_placeholder_in_a_shipped_cluster_file(path):
    assert placeholders((ROOT / path).read_text()) == []


@pytest.mark.parametrize("line", [
    "ImageId: ami-0123456789abcdef0", 'IamInstanceProfile: {Arn: "arn:aws:iam::123456789012:instance-profile/x"}',
    "owner: 123456789012", "head_ip: 10.0.0.10", "worker_ips: [192.0.2.7]", "password: changeme",
    "output: s3://your-bucket/runs", "KeyName: xxx", "endpoint: https://ray.example.com", "head_ip: <head ip>",
])
def test_the_check_catches_the_placeholders_it_names(line):
    assert placeholders(line), line


@pytest.mark.parametrize("line", [
    "ImageId: latest_dlami", "IamInstanceProfile: {Name: ray-autoscaler-v1}", "--dashboard-host=127.0.0.1",
    "ulimit -n 65536", "image: rayproject/ray:2.60.0-py311-gpu", "# your login on every machine",
    "tmp=$(mktemp /tmp/bnsweep.XXXXXX)",
])
def test_the_check_passes_real_values(line):
    assert placeholders(line) == [], line


def test_cluster_yaml_leaves_ami_and_head_profile_to_ray():
    types_ = yaml.safe_load((ROOT / "cluster.yaml").read_text())["available_node_types"]
    assert {t["node_config"]["ImageId"] for t in types_.values()} == {"latest_dlami"}
    assert "IamInstanceProfile" not in types_["head"]["node_config"]
    assert types_["gpu_worker"]["node_config"]["IamInstanceProfile"] == {"Name": "ray-autoscaler-v1"}


# ---- on-premise: the machines are the user's to name ----

def test_onprem_file_is_refused_until_its_machines_are_named(capsys, tmp_path):
    with pytest.raises(UserError, match=r"provider\.head_ip, provider\.worker_ips, auth\.ssh_user not set"):
        validate_cluster(str(ROOT / "cluster-onprem.yaml"))
    assert main(["cluster", "validate", str(ROOT / "cluster-onprem.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "head_ip" in err and "PANIC" not in err
    cfg = yaml.safe_load((ROOT / "cluster-onprem.yaml").read_text())
    cfg["provider"].update(head_ip="127.0.0.1", worker_ips=["localhost", "127.0.0.1"])
    cfg["auth"]["ssh_user"] = "me"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    ready = validate_cluster(str(tmp_path / "c.yaml"))
    assert ready["available_node_types"]["local.cluster.node"]["max_workers"] == 2
    del cfg["auth"]["ssh_user"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match=r": auth\.ssh_user not set"):
        validate_cluster(str(tmp_path / "c.yaml"))


# ---- AWS: what `ray up cluster.yaml` resolves and launches ----

@pytest.fixture
def aws(monkeypatch, tmp_path):
    """moto in process, fake credentials, HOME in tmp_path (Ray writes the key pair it creates to ~/.ssh)."""
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")  # Ray attaches AmazonEC2FullAccess, AmazonS3FullAccess
    import moto.settings
    from moto import mock_aws
    from ray.autoscaler._private.aws import config as aws_config

    monkeypatch.setattr(aws_config, "time", types.SimpleNamespace(sleep=lambda s: None))  # IAM propagation waits
    monkeypatch.setattr(moto.settings, "ENABLE_AMI_VALIDATION", True)  # run_instances refuses unknown AMIs
    with mock_aws():
        yield aws_config


def test_ray_up_resolves_the_dlami_and_instance_profile_and_launches_with_them(aws):
    import boto3
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.amis import Ami
    from ray.autoscaler._private.aws.node_provider import AWSNodeProvider
    from ray.autoscaler._private.commands import _bootstrap_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    region = raw["provider"]["region"]
    cfg = _bootstrap_config(copy.deepcopy(raw), no_config_cache=True)  # what `ray up` does before it launches

    dlami = aws.DEFAULT_AMI[region]  # Ray's Deep Learning AMI table
    assert {t["node_config"]["ImageId"] for t in cfg["available_node_types"].values()} == {dlami}
    iam = boto3.client("iam")
    profile = iam.get_instance_profile(InstanceProfileName="ray-autoscaler-v1")["InstanceProfile"]
    assert cfg["head_node"]["IamInstanceProfile"] == {"Arn": profile["Arn"]}  # given to the head only
    assert "IamInstanceProfile" not in cfg["available_node_types"]["head"]["node_config"]
    (role,) = profile["Roles"]
    attached = {p["PolicyName"] for p in iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"]}
    assert attached == {"AmazonEC2FullAccess", "AmazonS3FullAccess"}

    # Launch one head and one worker as `ray up` and the autoscaler would; EC2 (moto) knows only the DLAMI.
    ec2 = boto3.client("ec2", region_name=region)
    backend = ec2_backends[DEFAULT_ACCOUNT_ID][region]
    provider = AWSNodeProvider(cfg["provider"], cfg["cluster_name"])
    with pytest.raises(Exception, match="InvalidAMIID"):  # the check below is real: an unknown AMI is refused
        provider.create_node(cfg["available_node_types"]["gpu_worker"]["node_config"], {}, 1)
    backend.amis[dlami] = Ami(backend, ami_id=dlami, name=aws.DEFAULT_AMI_NAME, public=True)
    head_config = {**cfg["head_node"], **cfg["available_node_types"]["head"]["node_config"]}  # get_or_create_head_node
    provider.create_node(head_config, {"ray-user-node-type": "head"}, 1)
    worker_config = cfg["available_node_types"]["gpu_worker"]["node_config"]
    provider.create_node(worker_config, {"ray-user-node-type": "gpu_worker"}, 1)
    launched = {}
    for reservation in ec2.describe_instances()["Reservations"]:
        for i in reservation["Instances"]:
            tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
            launched[tags["ray-user-node-type"]] = i
    assert {k: (i["InstanceType"], i["ImageId"], i["IamInstanceProfile"]["Arn"]) for k, i in launched.items()} == {
        "head": ("m6i.large", dlami, profile["Arn"]), "gpu_worker": ("g5.xlarge", dlami, profile["Arn"])}
