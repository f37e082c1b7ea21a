import ast
import re
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, run_script, tiny_run_args

import Deblur


def test_command_line_overrides_settings_with_their_types():
    cfg = Deblur.parse_settings(["--num_epochs", "300", "--image_size", "128", "--lr", "3e-4", "--compile", "on",
                                 "--device", "cpu", "--blur_radius", "2"])
    assert (cfg.num_epochs, cfg.image_size, cfg.lr, cfg.compile, cfg.device) == (300, 128, 3e-4, "on", "cpu")
    assert cfg.blur_radius == 2.0 and isinstance(cfg.blur_radius, float)
    assert cfg.perceptual_weight == Deblur.perceptual_weight == 0.1  # untouched settings keep the file's values


def test_defaults_come_from_the_settings_lines():
    cfg = Deblur.parse_settings([])
    source = (ROOT / "Deblur.py").read_text()
    written = dict(re.findall(r"^(\w+) = (.+?)  #", source, re.MULTILINE))
    for name, value in vars(cfg).items():
        assert ast.literal_eval(written[name]) == value, name


def test_settings_match_the_seed():
    cfg = Deblur.parse_settings([])
    assert (cfg.image_path, cfg.image_size, cfg.blur_radius, cfg.num_epochs, cfg.lr, cfg.weight_decay,
            cfg.mse_weight, cfg.perceptual_weight, cfg.max_grad_norm, cfg.log_every, cfg.output_dir) == (
        "data/sample.jpg", 512, 5.0, 20000, 0.0001, 1e-5, 1.0, 0.1, 1.0, 10, ".")


def test_help_lists_every_setting_with_its_comment(capsys):
    with pytest.raises(SystemExit) as exit_:
        Deblur.parse_settings(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in Deblur.SETTINGS:
        assert f"--{name}" in text
    assert "Adam learning rate" in text


@pytest.mark.parametrize("args, name", [
    (["--num_epochs", "0"], "--num_epochs"), (["--image_size", "-5"], "--image_size"),
    (["--lr", "0"], "--lr"), (["--perceptual_weight", "-1"], "--perceptual_weight"),
    (["--mse_weight", "-0.5"], "--mse_weight"), (["--lr", "nan"], "--lr"), (["--log_every", "0"], "--log_every"),
])
def test_invalid_values_are_refused_by_name(args, name):
    with pytest.raises(Deblur.DeblurError) as error:
        Deblur.parse_settings(args)
    assert error.value.exit_code == 2 and str(error.value).startswith(name)


def test_readme_line_references_point_at_those_settings():
    readme = (ROOT / "README.md").read_text()
    lines = (ROOT / "Deblur.py").read_text().splitlines()
    references = re.findall(r"^\| `(\w+)` \| `([^`]+)` \| (\d+) \|", readme, re.MULTILINE)
    assert {name for name, _, _ in references} == set(Deblur.SETTINGS)
    for name, default, number in references:
        assert lines[int(number) - 1].startswith(f"{name} = {default}  #"), (name, number)
    locations = re.findall(r"[Ll]ine (\d+) in `Deblur.py`(?: holds `|\s*```python\s*)(\w+) =", readme)
    assert {name for _, name in locations} == {"lr", "num_epochs", "mse_weight", "perceptual_weight"}
    for number, name in locations:
        assert lines[int(number) - 1].startswith(f"{name} = "), (name, number)


def test_script_runs_from_another_folder_with_the_shipped_sample(tmp_path):
    result = run_script("--image_size", "32", "--num_epochs", "3", "--perceptual_weight", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Using device: cpu" in result.stdout
    assert (tmp_path / "reconstructed_image.jpg").exists() and (tmp_path / "comparison.png").exists()


def test_ctrl_c_stops_cleanly_and_leaves_everything_needed_to_resume(photo_path, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-u", str(ROOT / "Deblur.py"),
         *tiny_run_args(photo_path, out, "--num_epochs", "1000000", "--log_every", "5")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("Epoch 10,"):
            break
    process.send_signal(signal.SIGINT)
    rest, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    stopped = re.search(r"Training stopped early at epoch (\d+) of 1000000\. To continue: python Deblur.py --resume",
                        rest)
    assert stopped, rest
    assert "Traceback" not in err
    for name in ("checkpoint.pt", "history.csv", "comparison.png", "reconstructed_image.jpg", "training_curves.png"):
        assert (out / name).exists(), name
    import torch
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == int(stopped.group(1))
