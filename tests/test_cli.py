import ast
import re
import signal

import pytest
import torch
from conftest import ROOT, TINY, run_script, start_a_long_run, tiny_run_args

import Deblur
import support

# The settings as shipped: the original project's defaults, and the new settings' own.
SHIPPED = {
    "image_path": "data/sample.jpg",
    "image_size": 512,
    "crop_size": 48,
    "batch_size": 16,
    "blur_kind": "gaussian",
    "blur_radius": 5.0,
    "blur_angle": 0.0,
    "num_epochs": 20000,
    "lr": 0.0001,
    "weight_decay": 1e-5,
    "mse_weight": 1.0,
    "perceptual_weight": 0.1,
    "max_grad_norm": 1.0,
    "log_every": 10,
    "checkpoint_every": 1000,
    "seed": 0,
    "device": "auto",
    "amp_dtype": "auto",
    "compile": "auto",
    "holdout_path": "data/holdout.jpg",
    "output_dir": ".",
    "resume": "",
    "apply": "",
}


def parse(argv):
    return support.parse_settings(Deblur.SETTINGS, Deblur.__file__, argv)


def test_shipped_defaults_are_the_original_projects():
    """The one test that pins default values, in Deblur.py and in the README's settings table.

    It fails when a settings line is edited, by design: if you changed a default on purpose, update
    SHIPPED
    above and the README's table. No other test depends on a default."""
    assert Deblur.SETTINGS == SHIPPED
    table = dict(
        re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", (ROOT / "README.md").read_text(), re.MULTILINE)
    )
    assert {name: ast.literal_eval(value) for name, value in table.items()} == SHIPPED


def test_tests_give_every_setting_explicitly():
    assert set(TINY) | {"image_path", "output_dir"} == set(Deblur.SETTINGS)


def test_command_line_overrides_settings_with_their_types():
    cfg = parse(
        [
            "--num_epochs",
            "300",
            "--image_size",
            "128",
            "--lr",
            "3e-4",
            "--compile",
            "on",
            "--device",
            "cpu",
            "--blur_radius",
            "2",
            "--blur_kind",
            "motion",
        ]
    )
    assert (cfg.num_epochs, cfg.image_size, cfg.lr, cfg.compile, cfg.device) == (
        300,
        128,
        3e-4,
        "on",
        "cpu",
    )
    assert (
        cfg.blur_radius == 2.0 and isinstance(cfg.blur_radius, float) and cfg.blur_kind == "motion"
    )
    assert (
        cfg.perceptual_weight == Deblur.perceptual_weight
    )  # an untouched setting keeps the file's value


def test_defaults_come_from_the_settings_lines():
    cfg = parse([])
    written = dict(
        re.findall(r"^([a-z_]+) = (.+?)  #", (ROOT / "Deblur.py").read_text(), re.MULTILINE)
    )
    assert written.keys() == vars(cfg).keys()
    for name, value in vars(cfg).items():
        assert ast.literal_eval(written[name]) == value, name


def test_help_lists_every_setting_with_its_comment(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in Deblur.SETTINGS:
        assert f"--{name}" in text
    assert "Adam learning rate" in text and "{gaussian,motion,defocus,box}" in text


@pytest.mark.parametrize(
    "args, name",
    [
        (["--num_epochs", "0"], "--num_epochs"),
        (["--image_size", "-5"], "--image_size"),
        (["--lr", "0"], "--lr"),
        (["--perceptual_weight", "-1"], "--perceptual_weight"),
        (["--mse_weight", "-0.5"], "--mse_weight"),
        (["--lr", "nan"], "--lr"),
        (["--log_every", "0"], "--log_every"),
        (["--seed", "-1"], "--seed"),
        (["--seed", "99999999999"], "--seed"),
        (["--blur_angle", "inf"], "--blur_angle"),
        (["--blur_radius", "700"], "--blur_radius"),
        (["--crop_size", "0"], "--crop_size"),
    ],
)
def test_invalid_values_are_refused_by_name(args, name):
    with pytest.raises(support.DeblurError) as error:
        parse(args)
    assert error.value.exit_code == 2 and str(error.value).startswith(name)


def test_readme_names_every_setting_and_no_line_numbers():
    readme = (ROOT / "README.md").read_text()
    table = re.findall(r"^\| `(\w+)` \| `[^`]*` \|", readme, re.MULTILINE)
    assert sorted(table) == sorted(Deblur.SETTINGS)
    assert not re.search(
        r"[Ll]ines? \d+", readme
    )  # a line number goes stale when a comment is added above


def test_script_runs_from_another_folder_with_the_shipped_images(tmp_path):
    args = tiny_run_args(
        "data/sample.jpg", ".", "--num_epochs", "2", "--holdout_path", "data/holdout.jpg"
    )
    result = run_script(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Using device: cpu" in result.stdout and "held out:" in result.stdout
    assert (tmp_path / "reconstructed_image.jpg").exists() and (
        tmp_path / "comparison.png"
    ).exists()


def test_ctrl_c_stops_cleanly_and_leaves_everything_needed_to_resume(photo_path, tmp_path):
    out = tmp_path / "out"
    process = start_a_long_run(photo_path, out, until="Epoch 10,")
    process.send_signal(signal.SIGINT)
    rest, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    stopped = re.search(
        r"Training stopped early at epoch (\d+) of 100000\. "
        r"To continue: python \S*Deblur.py --resume",
        rest,
    )
    assert stopped, rest
    assert "Traceback" not in err
    for name in (
        "checkpoint.pt",
        "history.csv",
        "comparison.png",
        "reconstructed_image.jpg",
        "training_curves.png",
    ):
        assert (out / name).exists(), name
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == int(stopped.group(1))
