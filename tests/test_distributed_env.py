"""Launcher environment parsing (torchrun, SLURM, none) without starting any process."""

import pytest

from r1mega.configlib import ConfigError
from r1mega.parallel.distributed import launch_env, parse_slurm_nodelist


def test_torchrun_env():
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node7", "MASTER_PORT": "29400"}
    info = launch_env(env)
    assert (info.rank, info.world_size, info.local_rank, info.master_addr, info.master_port, info.source) == (
        5, 8, 1, "node7", 29400, "torchrun",
    )


def test_torchrun_env_missing_master_is_named():
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        launch_env({"RANK": "0", "WORLD_SIZE": "2"})


def test_slurm_env_master_is_first_host_and_port_from_job_id():
    env = {
        "SLURM_PROCID": "9",
        "SLURM_NTASKS": "16",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[007-008,010],login1",
        "SLURM_JOB_ID": "123456",
    }
    info = launch_env(env)
    assert (info.rank, info.world_size, info.local_rank, info.source) == (9, 16, 1, "slurm")
    assert info.master_addr == "gpu007"
    assert info.master_port == 20000 + 123456 % 10000
    assert launch_env({**env, "MASTER_PORT": "31000"}).master_port == 31000
    assert launch_env({**env, "MASTER_ADDR": "10.0.0.1"}).master_addr == "10.0.0.1"


def test_torchrun_wins_over_slurm():
    # torchrun inside an sbatch allocation: torchrun's variables describe the process
    env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_NODELIST": "b"}
    assert launch_env(env).source == "torchrun"


def test_no_launcher_is_a_single_process():
    info = launch_env({})
    assert (info.rank, info.world_size, info.local_rank, info.source) == (0, 1, 0, "single")


def test_bad_integer_is_named():
    with pytest.raises(ConfigError, match="SLURM_NTASKS='many'"):
        launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "many", "SLURM_JOB_NODELIST": "a"})


@pytest.mark.parametrize(
    "nodelist,hosts",
    [
        ("node1", ["node1"]),
        ("gpu[001-004,007],login1", ["gpu001", "gpu002", "gpu003", "gpu004", "gpu007", "login1"]),
        ("a[1-3]", ["a1", "a2", "a3"]),
        ("a[9-11]", ["a9", "a10", "a11"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("x1,y[2,5],z", ["x1", "y2", "y5", "z"]),
        ("host-a.cluster,host-b.cluster", ["host-a.cluster", "host-b.cluster"]),
    ],
)
def test_parse_slurm_nodelist(nodelist, hosts):
    assert parse_slurm_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["gpu[1-", "gpu]1[", "gpu[3-1]", "gpu[a-b]", "gpu[]", ""])
def test_parse_slurm_nodelist_rejects_malformed(bad):
    with pytest.raises(ValueError):
        parse_slurm_nodelist(bad)
