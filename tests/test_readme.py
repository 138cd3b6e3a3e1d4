"""The README cannot drift from the tool: every `vmlp-deploy` command in its bash blocks runs here, in order, in
one fresh folder, and must exit 0. Commands get the tiny variants and short measurements (flags appended
below, which argparse lets win over the README's); nothing else about them is changed."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vmlp_deploy.models import create_model

README = Path(__file__).resolve().parents[1] / "README.md"
Cli = Callable[..., tuple[int, str, str]]

#: Appended per verb: tiny models and few samples/iterations, so the whole README runs in a couple of minutes.
FAST = {
    "export": ["--tiny"],
    "deploy": ["--tiny", "--num-samples", "16", "-n", "3", "--layer-runs", "0", "--no-charts"],
    "quantize": ["--num-samples", "16", "--holdout", "4", "--sensitivity-rounds", "1", "--layout", "as-given"],
    "profile": ["-n", "3", "--warmup", "1", "--layer-runs", "1", "--peak-size", "64", "--no-charts"],
}


def readme_commands() -> list[str]:
    """Every line of a ```bash block that starts with `vmlp-deploy`, comments dropped, in README order."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("vmlp-deploy"):
                commands.append(line)
    return commands


def _fast(argv: list[str]) -> list[str]:
    verb = argv[0]
    extra = list(FAST.get(verb, []))
    if argv == ["quantize"]:  # the runs `deploy` then reuses: only settings deploy also sets may differ from its own
        extra = ["--num-samples", "16"]
    if verb == "profile" and any(a in ("s2mlpv2_small", "s2mlpv2", "convnext_tiny") for a in argv[1:]):
        extra.append("--tiny")
    return argv + extra


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh folder with what the README's examples name: a checkpoint and a folder of images."""
    root = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    torch.save(create_model("resmlp_12_224", tiny=True).state_dict(), root / "resmlp_12.pth")
    rng = np.random.default_rng(0)
    (root / "imgs").mkdir()
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(root / "imgs" / f"{i}.png")
    return root


def test_readme_has_the_users_commands_first() -> None:
    commands = readme_commands()
    assert commands[:4] == ["vmlp-deploy export --model s2mlpv2", "vmlp-deploy quantize",
                            "vmlp-deploy profile --backend openvino", "vmlp-deploy deploy --model s2mlpv2 --backend openvino"]


def test_every_readme_command_runs(folder: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    commands = readme_commands()
    assert len(commands) >= 15
    for command in commands:
        argv = _fast(shlex.split(command)[1:])
        code, out, err = cli(*argv)
        assert code == 0, f"README command failed ({code}): {command}\n{err[-2000:]}"
        if argv[0] == "deploy":
            assert "quantize openvino: reusing" in out, "deploy reuses the INT8 run `quantize` made, as shown"
