from pathlib import Path

import pytest

from swarm.errors import ConfigError
from swarm.inventory import (
    KIT_GROUPS,
    ModelSettings,
    gpus_from_inventory,
    load_inventory,
    model_settings,
    parse_inventory,
)
from swarm.planner import GiB, Gpu

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "inventory.example.ini"


@pytest.mark.parametrize("use_ansible", [True, False], ids=["ansible-inventory", "python"])
def test_the_example_inventory_describes_gorina7(use_ansible: bool) -> None:
    inventory = load_inventory(EXAMPLE, use_ansible=use_ansible)
    for group in KIT_GROUPS:  # ansible-inventory leaves empty groups out
        assert group in inventory.members or (use_ansible and not inventory.hosts(group))
    assert inventory.hosts("gpu_servers") == ("gorina7",)
    assert inventory.hosts("public_contributors") == ()
    assert gpus_from_inventory(inventory) == [Gpu("gorina7", i, 40 * GiB) for i in range(4)]
    assert model_settings(inventory) == ModelSettings("petals-team/StableBeluga2", "bf16", 1, None)
    assert inventory.vars_for("gorina7")["ansible_host"] == "10.20.0.7"


def test_syntax_comments_quotes_and_decimals() -> None:
    inventory = parse_inventory(
        """
        # a comment
        ; another comment
        lonely ansible_host=10.20.0.99

        [gpu_servers]
        a petals_gpu_memory_gib=39.5,23.65   # inline comment
        b petals_gpu_memory_gib="[80, 40]" note='two words'
        a ansible_user=petals

        [all:vars]
        petals_model = "petals-team/StableBeluga2"  # spaces around = are fine here
        petals_quant=nf4
        petals_replication=2
        petals_attn_cache_tokens=8192
        """
    )
    assert inventory.hosts("ungrouped") == ("lonely",)
    assert inventory.hosts("gpu_servers") == ("a", "b")
    assert inventory.vars_for("a")["ansible_user"] == "petals"
    assert inventory.vars_for("b")["note"] == "two words"
    assert [g.memory_bytes for g in gpus_from_inventory(inventory)] == [
        round(39.5 * GiB),
        round(23.65 * GiB),
        80 * GiB,
        40 * GiB,
    ]
    assert model_settings(inventory) == ModelSettings("petals-team/StableBeluga2", "nf4", 2, 8192)


def test_variable_precedence_all_then_groups_then_host() -> None:
    inventory = parse_inventory(
        """
        [gpu_servers:children]
        lab

        [lab]
        x petals_gpu_memory_gib=40 level=host
        y petals_gpu_memory_gib=40

        [all:vars]
        level=all
        petals_quant=bf16
        only_all=1

        [gpu_servers:vars]
        level=parent
        petals_quant=int8

        [lab:vars]
        level=child
        """
    )
    assert inventory.hosts("gpu_servers") == ("x", "y")
    assert inventory.groups_of("x") == ("gpu_servers", "lab")
    assert inventory.vars_for("x")["level"] == "host"
    assert inventory.vars_for("y")["level"] == "child"
    assert inventory.vars_for("y")["only_all"] == "1"
    assert model_settings(inventory).quant == "int8"


def test_cpu_mode_hosts_count_as_one_device() -> None:
    inventory = parse_inventory(
        "[gpu_servers]\ncpu1 petals_cpu_mode=true petals_cpu_memory_gib=16\n"
        "gpu1 petals_cpu_mode=no petals_gpu_memory_gib=24\n"
    )
    assert gpus_from_inventory(inventory) == [
        Gpu("cpu1", 0, 16 * GiB, cpu=True),
        Gpu("gpu1", 0, 24 * GiB),
    ]


def test_defaults_without_model_vars() -> None:
    inventory = parse_inventory("[gpu_servers]\na petals_gpu_memory_gib=40\n")
    assert model_settings(inventory) == ModelSettings(None, "bf16", 1, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[gpu_servers]\ngorina7 petals_gpu_memory_gib=40,forty",
            "host gorina7: petals_gpu_memory_gib='40,forty' is not a list of positive numbers "
            "(GiB per GPU, example: 40,40,40,40)",
        ),
        ("[gpu_servers]\ng petals_gpu_memory_gib=40,,40", "petals_gpu_memory_gib='40,,40'"),
        ("[gpu_servers]\ng petals_gpu_memory_gib=-40", "petals_gpu_memory_gib='-40'"),
        ("[gpu_servers]\ng petals_gpu_memory_gib=nan", "petals_gpu_memory_gib='nan'"),
        ("[gpu_servers]\ng petals_gpu_memory_gib=", "petals_gpu_memory_gib=''"),
        ("[gpu_servers]\ng ansible_host=10.20.0.7", "host g: petals_gpu_memory_gib is not set"),
        ("[gpu_servers]\n", "group [gpu_servers] has no hosts"),
        ("[monitoring]\nm\n", "group [gpu_servers] has no hosts"),
        (
            "[gpu_servers]\nc petals_cpu_mode=maybe",
            "host c: petals_cpu_mode='maybe' is not a boolean",
        ),
        (
            "[gpu_servers]\nc petals_cpu_mode=true",
            "host c: petals_cpu_mode=true needs petals_cpu_memory_gib",
        ),
    ],
)
def test_bad_gpu_values_name_host_variable_and_value(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        gpus_from_inventory(parse_inventory(text))
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[all:vars]\npetals_quant=fp8", "petals_quant='fp8' is not supported"),
        ("[all:vars]\npetals_replication=0", "petals_replication='0' is not allowed"),
        ("[all:vars]\npetals_replication=two", "petals_replication='two' is not allowed"),
        ("[all:vars]\npetals_attn_cache_tokens=-1", "petals_attn_cache_tokens='-1'"),
        ("[gpu_servers:vars]\npetals_quant=nf4\n[other]\nb petals_quant=int8", None),
    ],
)
def test_bad_model_values_are_refused(extra: str, message: str | None) -> None:
    text = "[gpu_servers]\na petals_gpu_memory_gib=40\n" + extra
    if message is None:  # a host outside [gpu_servers] may say what it likes
        assert model_settings(parse_inventory(text)).quant == "nf4"
        return
    with pytest.raises(ConfigError, match=message):
        model_settings(parse_inventory(text))


def test_model_vars_must_agree_between_gpu_servers() -> None:
    inventory = parse_inventory(
        "[gpu_servers]\na petals_gpu_memory_gib=40 petals_quant=nf4\nb petals_gpu_memory_gib=40\n"
    )
    with pytest.raises(ConfigError, match=r"petals_quant differs.*a='nf4', b=None"):
        model_settings(inventory)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[gpu_servers:hostvars]\n", "is not a section header"),
        ("[gpu servers]\n", "is not a section header"),
        ("[all:vars]\njust_a_word\n", "line 2: 'just_a_word' in [all:vars] is not key=value"),
        ("[gpu_servers]\na memory\n", "line 2: host a: 'memory' is not key=value"),
        ("[gpu_servers]\ngpu[01:04]\n", "host range 'gpu[01:04]' is not supported"),
        ("[gpu_servers]\na note='unclosed\n", "line 2: cannot parse"),
        ("[lab:children]\none two\n", "is not a group name"),
    ],
)
def test_malformed_lines_are_refused_with_their_line_number(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_inventory(text, source="inv.ini")
    assert message in str(info.value)
    assert str(info.value).startswith("inv.ini")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.ini", None, "does not exist"),
        ("hosts.yml", "all: {}", "YAML inventories need Ansible installed"),
        ("latin1.ini", b"[gpu_servers]\n\xff\n", "cannot be read"),
    ],
)
def test_unreadable_inventory_files(tmp_path: Path, name: str, content, message: str) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):  # the pure-Python reader's messages
        load_inventory(path, use_ansible=False)


# --- group_vars/ and host_vars/, as Ansible resolves them ---------------------------------------

GROUP_VARS_INI = """
[dht_bootstrap]
a ansible_host=10.0.0.1

[gpu_servers]
a ansible_host=10.0.0.1
b ansible_host=10.0.0.2 petals_gpu_memory_gib=24

[all:vars]
petals_quant=bf16
"""


def _inventory_with_vars_folders(tmp_path: Path) -> Path:
    (tmp_path / "group_vars" / "all").mkdir(parents=True)
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "group_vars" / "all" / "model.yml").write_text(
        "petals_model: petals-team/StableBeluga2\npetals_quant: nf4\npetals_replication: 2\n"
    )
    (tmp_path / "group_vars" / "gpu_servers.yml").write_text(
        "petals_gpu_memory_gib: [40, 40]\nsecret: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  3131\n"
    )
    (tmp_path / "host_vars" / "a.yaml").write_text("petals_gpu_memory_gib: [80, 80, 24]\n")
    path = tmp_path / "inventory.ini"
    path.write_text(GROUP_VARS_INI)
    return path


@pytest.mark.parametrize("use_ansible", [True, False], ids=["ansible-inventory", "python"])
def test_group_vars_and_host_vars_count_like_ansible(tmp_path: Path, use_ansible: bool) -> None:
    inventory = load_inventory(_inventory_with_vars_folders(tmp_path), use_ansible=use_ansible)
    assert inventory.resolved_by == ("ansible-inventory" if use_ansible else "python")
    assert [(g.host, g.memory_bytes // GiB) for g in gpus_from_inventory(inventory)] == [
        ("a", 80),  # host_vars/a.yaml beats group_vars/gpu_servers.yml
        ("a", 80),
        ("a", 24),
        ("b", 24),  # the host line beats group_vars/gpu_servers.yml
    ]
    assert model_settings(inventory) == ModelSettings("petals-team/StableBeluga2", "nf4", 2, None)


def test_ansible_and_the_python_reader_agree_on_the_example() -> None:
    ansible, python = (load_inventory(EXAMPLE, use_ansible=u) for u in (True, False))
    assert gpus_from_inventory(ansible) == gpus_from_inventory(python)
    assert model_settings(ansible) == model_settings(python)
    for group in KIT_GROUPS:
        assert ansible.hosts(group) == python.hosts(group)
