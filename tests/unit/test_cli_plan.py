import json
from pathlib import Path

import pytest

from petalctl.main import main

pytestmark = pytest.mark.unit

EXAMPLE = str(Path(__file__).resolve().parents[2] / "inventory.example.ini")


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("petalctl: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_plan_of_the_example_inventory_covers_all_80_blocks(capsys) -> None:
    assert main(["plan", "-i", EXAMPLE]) == 0
    out = capsys.readouterr().out
    assert "Model petals-team/StableBeluga2: 80 blocks, bf16, replication target 1" in out
    for start in (0, 20, 40, 60):
        assert f"{start}:{start + 20}" in out
    assert "  blocks 0-79: 1 server\n" in out


def test_flags_override_the_inventory(capsys) -> None:
    assert main(["plan", "-i", EXAMPLE, "--quant", "nf4", "--replication", "2"]) == 0
    out = capsys.readouterr().out
    assert "nf4, replication target 2" in out
    assert "  blocks 0-79: 2 servers\n" in out


def test_json_lists_servers_per_host(capsys) -> None:
    assert main(["plan", "-i", EXAMPLE, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    servers = document["hosts"]["gorina7"]
    assert [(s["gpu"], s["start"], s["end"]) for s in servers] == [
        (0, 0, 20),
        (1, 20, 40),
        (2, 40, 60),
        (3, 60, 80),
    ]
    assert document["coverage"] == [{"start": 0, "end": 80, "servers": 1}]


def test_previous_plan_with_the_same_inputs_changes_nothing(capsys, tmp_path: Path) -> None:
    assert main(["plan", "-i", EXAMPLE, "--json"]) == 0
    previous = tmp_path / "plan.json"
    previous.write_text(capsys.readouterr().out)
    assert main(["plan", "-i", EXAMPLE, "--previous", str(previous)]) == 0
    assert "Changes from the previous plan:\n  none\n" in capsys.readouterr().out


def _inventory(tmp_path: Path, body: str) -> str:
    path = tmp_path / "inventory.ini"
    path.write_text(body)
    return str(path)


@pytest.mark.parametrize(
    ("body", "args", "fragment"),
    [
        (
            "[gpu_servers]\ngorina7 petals_gpu_memory_gib=40,forty\n"
            "[all:vars]\npetals_model=petals-team/StableBeluga2\n",
            [],
            "host gorina7: petals_gpu_memory_gib='40,forty'",
        ),
        (
            "[gpu_servers]\ng petals_gpu_memory_gib=40,40,40\n",
            ["--model", "petals-team/StableBeluga2"],
            "missing 14 blocks",
        ),
        ("[gpu_servers]\ng petals_gpu_memory_gib=40\n", [], "no model: set petals_model"),
        (
            "[gpu_servers]\ng petals_gpu_memory_gib=40\n",
            ["--model", "no/such-model"],
            "unknown model 'no/such-model'",
        ),
    ],
)
def test_bad_inventories_exit_2_with_one_line(capsys, tmp_path, body, args, fragment) -> None:
    assert main(["plan", "-i", _inventory(tmp_path, body), *args]) == 2
    captured = capsys.readouterr()
    assert fragment in _one_error_line(captured.err)
    assert captured.out == ""


def test_replication_the_gpus_cannot_reach_exits_2(capsys) -> None:
    assert main(["plan", "-i", EXAMPLE, "--replication", "2"]) == 2
    assert "need 160 block slots" in _one_error_line(capsys.readouterr().err)


def test_missing_inventory_file_exits_2(capsys, tmp_path: Path) -> None:
    assert main(["plan", "-i", str(tmp_path / "nope.ini")]) == 2
    assert "does not exist" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("value", ["0", "two"])
def test_bad_replication_flag_is_a_usage_error(capsys, value: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["plan", "-i", EXAMPLE, "--replication", value])
    assert info.value.code == 2
    assert "--replication" in capsys.readouterr().err


def test_help_explains_options_and_defaults(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["plan", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in (
        "--inventory",
        "default: petals_quant from the inventory, else bf16",
        "default: petals_replication from the inventory, else 1",
        "16384",
        "--json",
    ):
        assert text in out
