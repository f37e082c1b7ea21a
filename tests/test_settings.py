"""The settings block and the command line built from it: defaults, types, help, refusals."""

import ast
import math
import re
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, SHIPPED, TINY, settings_table

import Deblur
from plumbing.command_line import (
    ANY_BLUR_QUICK_LOOK,
    BLIND_QUICK_LOOK,
    DERIVED,
    FOLDER_QUICK_LOOK,
    ORIGINAL,
    QUICK_LOOK,
    parse_settings,
)
from plumbing.device import pick_device
from plumbing.errors import DeblurError
from plumbing.settings import declared, defaults, number

# The original project's settings and their values: the defaults stay these
ORIGINALS = {"image_path": "data/sample.jpg", "image_size": 512, "num_epochs": 20000, "lr": 0.0001}
ORIGINALS |= {"weight_decay": 1e-5, "mse_weight": 1.0, "perceptual_weight": 0.1}
ORIGINALS |= {"max_grad_norm": 1.0, "model": "deblurnet", "restore_from": "blurred", **ORIGINAL}


def shipped(**edited):
    """Deblur.SETTINGS with the defaults as shipped, or with these lines edited."""
    values = {**SHIPPED, **edited}
    return {
        name: setting._replace(default=values[name]) for name, setting in Deblur.SETTINGS.items()
    }


def parse(argv):
    return parse_settings(Deblur.SETTINGS, argv)[0]


def test_the_settings_the_command_line_names_are_told_apart_from_defaults():
    given = parse_settings(shipped(), ["--blur_rad", "5"])[1]
    assert given == {"blur_radius"}  # named, abbreviated, even at its default value
    assert parse_settings(shipped(), [])[1] == set()


def test_the_settings_block_is_as_documented_and_keeps_the_originals_defaults():
    """The one test that pins default values: Deblur.py's settings lines against docs/settings.md's
    table (SHIPPED), and the original project's settings against its values.

    It fails when a settings line is edited, by design: if you changed a default on purpose, change
    that table too. No other test depends on a default."""
    assert defaults(Deblur.SETTINGS) == SHIPPED
    assert {name: SHIPPED[name] for name in ORIGINALS} == ORIGINALS


def test_the_settings_table_gives_each_settings_range_and_choices_as_its_line_declares_them():
    rows = {name: does for name, (_, does) in settings_table().items()}
    for name, setting in Deblur.SETTINGS.items():
        told = [*(setting.choices or ())]
        if setting.high < math.inf:
            told.append(f"{number(setting.low)} to {number(setting.high)}")
        missing = [what for what in told if what not in rows[name]]
        assert not missing, f"docs/settings.md's {name} row does not say {missing}"


def test_tests_give_every_setting_explicitly():
    assert set(TINY) | {"image_path", "output_dir"} == set(Deblur.SETTINGS)


def test_command_line_overrides_settings_with_their_types():
    cfg = parse(
        ["--num_epochs", "300", "--image_size", "128", "--lr", "3e-4", "--torch_compile", "on"]
        + ["--device", "cpu", "--blur_radius", "2", "--blur_kind", "motion"]
    )
    assert cfg.num_epochs == 300 and cfg.image_size == 128 and cfg.lr == 3e-4
    assert cfg.torch_compile == "on" and cfg.device == "cpu" and cfg.blur_kind == "motion"
    assert cfg.blur_radius == 2.0 and isinstance(cfg.blur_radius, float)
    assert cfg.perceptual_weight == Deblur.perceptual_weight  # untouched: the file's value


def test_a_renamed_setting_keeps_its_old_option():
    assert parse(["--compile", "on"]).torch_compile == "on"


def test_defaults_come_from_the_settings_lines():
    cfg = parse([])
    written = dict(
        re.findall(r"^([a-z_]+) = (.+?)  #", (ROOT / "Deblur.py").read_text(), re.MULTILINE)
    )
    assert written.keys() == vars(cfg).keys() - set(DERIVED)
    values = {name: ast.literal_eval(value) for name, value in written.items()}
    assert values == defaults(Deblur.SETTINGS)
    for name in written.keys() - {"image_path"}:
        assert values[name] == getattr(cfg, name), name
    assert cfg.image_path == str((ROOT / values["image_path"]).resolve())  # found, made absolute


def test_no_setting_shadows_a_builtin():
    import builtins

    assert not set(Deblur.SETTINGS) & set(dir(builtins))


def test_help_lists_every_setting_with_its_comment(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in Deblur.SETTINGS:
        assert f"--{name}" in text
    kinds = "{" + ",".join(Deblur.SETTINGS["blur_kind"].choices) + "}"  # a choice's values
    assert "Adam learning rate" in text and kinds in text and "[16 to 4096]" in text
    assert "(default: 0.0001)" in text


def test_every_blur_kind_on_the_command_line_has_a_kernel_and_no_other_does():
    generator = torch.Generator().manual_seed(0)
    for kind in Deblur.SETTINGS["blur_kind"].choices:
        cfg = SimpleNamespace(blur_kind=kind, blur_radius=2.0, blur_angle=0.0, noise_level=0.0)
        kernels, _ = Deblur.drawn(cfg, 1, generator)
        assert kernels.sum() == pytest.approx(1.0)
        assert kernels.shape[-1] == Deblur.kernel_width(cfg)
    with pytest.raises(ValueError, match="unknown blur kind 'swirl'; the kinds are gaussian"):
        Deblur.blur_kernel("swirl", 2.0)


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
        (["--batch_size", "10000000000000000000"], "--batch_size must be between 1 and 4,096"),
        (["--crop_size", "5000"], "--crop_size must be between 1 and 4,096"),
        (["--num_epochs", str(10**20)], "--num_epochs must be between 1 and 1,000,000,000"),
        (["--noise_level", "-1"], "--noise_level must be between 0 and 64"),
        (["--noise_level", "nan"], "--noise_level must be a finite number"),
        (["--noise_level", "100"], "--noise_level must be between 0 and 64"),
        (["--adversarial_weight", "-0.01"], "--adversarial_weight must be zero or positive"),
        (["--adversarial_weight", "nan"], "--adversarial_weight must be a finite number"),
        (["--blur_kind", "random", "--blur_radius", "0.5"], "--blur_radius must be at least 1"),
        (["--kernel", "psf.png"], "--kernel psf.png names the blur of a photo to --apply"),
        (["--apply", "a.jpg", "--kernel", "k.png", "--blur_kind", "box"], "--kernel and --blur"),
        (["--kernel_size", "3"], "--kernel_size must be between 5 and 101"),
        (["--kernel_size", "102"], "--kernel_size must be between 5 and 101"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else value,
)
def test_invalid_values_are_refused_by_name(args, name):
    with pytest.raises(DeblurError) as error:
        parse(args)
    assert error.value.exit_code == 2 and str(error.value).startswith(name)


@pytest.mark.parametrize("device", ["cpu:abc", "cpu:0:0", "cuda:x", "cpu:-1"])
def test_a_malformed_device_is_a_settings_error(device):
    with pytest.raises(DeblurError, match="no such device"):
        pick_device(device)


def test_the_settings_table_names_every_setting_and_the_readme_no_line_numbers():
    assert sorted(settings_table()) == sorted(Deblur.SETTINGS)
    readme = (ROOT / "README.md").read_text()
    assert not re.search(r"[Ll]ines? \d+", readme)  # a line number goes stale


def test_the_readmes_quick_looks_are_the_ones_a_long_run_suggests():
    readme = (ROOT / "README.md").read_text()
    assert f"python Deblur.py {QUICK_LOOK}\n" in readme
    for folder_quick_look in (FOLDER_QUICK_LOOK, ANY_BLUR_QUICK_LOOK, BLIND_QUICK_LOOK):
        assert f"python Deblur.py --image_path data/train {folder_quick_look}\n" in readme


def test_folder_mode_is_decided_with_the_settings_as_the_image_path_is_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data/train is not here, but beside Deblur.py, where it is found
    assert parse(["--image_path", "data/train"]).folder
    assert not parse(["--image_path", "data/sample.jpg"]).folder
    assert not parse(["--image_path", "data/train", "--apply", "photo.png"]).folder


def test_a_crop_too_small_for_the_discriminator_is_refused_by_name(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    with pytest.raises(DeblurError) as error:
        parse(["--image_path", str(folder), "--adversarial_weight", "0.01", "--crop_size", "11"])
    assert str(error.value).startswith("--crop_size must be at least 12 pixels with --adversarial")
    parse(["--image_path", str(folder), "--adversarial_weight", "0.01", "--crop_size", "12"])


def test_a_photos_blur_edited_in_the_settings_block_is_named_as_on_the_command_line():
    edited = shipped(blur_kind="motion", blur_radius=6.0, noise_level=2.0)
    cfg, given = parse_settings(edited, ["--apply", "a.jpg"])
    assert {"blur_kind", "blur_radius", "noise_level"} <= given and "blur_angle" not in given
    assert (cfg.blur_kind, cfg.blur_radius, cfg.noise_level) == ("motion", 6.0, 2.0)
    _, given = parse_settings(shipped(), ["--apply", "a.jpg"])
    assert given == {"apply"}  # the original's blur and noise, as shipped: named by nobody


def test_an_angle_for_a_blur_that_has_none_is_said(capsys):
    parse(["--blur_angle", "20", "--blur_kind", "gaussian"])
    assert "--blur_angle turns a motion blur only: the gaussian blur has no angle" in (
        capsys.readouterr().out
    )
    parse(["--blur_angle", "20", "--blur_kind", "motion"])
    assert "--blur_angle" not in capsys.readouterr().out


def test_a_settings_line_edited_out_of_shape_is_still_a_setting(tmp_path):
    script = tmp_path / "script.py"
    block = ["# -- The problem", "size = 8  # its size [1 to 9]", "# -- How", "lr=0.5"]
    script.write_text("\n".join(["# ---- Settings", *block, "rate = 2 # a step's", "# ----", ""]))
    namespace = {"size": 8, "lr": 0.5, "rate": 2, "NAMED": 1, "_hidden": 2, "function": print}
    settings = declared(namespace, script)
    assert list(settings) == ["size", "lr", "rate"]  # the block's values, its comments or not
    assert settings["size"].problem and (settings["size"].low, settings["size"].high) == (1, 9)
    assert settings["lr"].help == "" and not settings["lr"].problem
    assert settings["rate"].help == "a step's" and settings["rate"].fault(-1) is None
