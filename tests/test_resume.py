"""Checkpoints and --resume: a resumed run is the uninterrupted one, earlier checkpoints are kept,
and a checkpoint that is not one, or of another problem, is refused before anything runs."""

import pickle

import pytest
import torch
from conftest import (
    HALF_PRECISION_SIZE,
    apply_deblur,
    assert_resumed_as_uninterrupted,
    checkpoint_of,
    run_deblur,
    save_photo,
)

import Deblur


@pytest.mark.parametrize(
    "extra",
    [(), ("--blur_kind", "random", "--noise_level", "4"), ("--adversarial_weight", "0.01")],
    ids=["one blur", "any blur", "adversarial"],
)
def test_interrupted_then_resumed_run_equals_an_uninterrupted_one(
    photo_path, tmp_path, capsys, extra
):
    # The split comes at epoch 2, between two logged and checkpointed epochs (3 and 5). Random
    # blur draws a fresh kernel and noise every epoch: the resumed run draws the same ones. The
    # adversarial term's discriminator and its Adam go on where they stopped
    common = ("--perceptual_weight", "0.1", "--checkpoint_every", "3", "--log_every", "3", *extra)
    assert run_deblur(photo_path, tmp_path / "whole", "--num_epochs", "5", *common) == 0
    assert run_deblur(photo_path, tmp_path / "split", "--num_epochs", "2", *common) == 0
    assert run_deblur(photo_path, tmp_path / "split", "--num_epochs", "5", "--resume", *common) == 0
    assert "resuming with num_epochs = 5" in capsys.readouterr().out
    whole, split = checkpoint_of(tmp_path / "whole"), checkpoint_of(tmp_path / "split")
    assert whole["epoch"] == 5
    assert_resumed_as_uninterrupted(whole, split)
    # progress.png's strip goes on where it stopped: the same frames, at the same PSNR
    assert [frame[:2] for frame in split["frames"]] == [frame[:2] for frame in whole["frames"]]
    assert [frame[0] for frame in whole["frames"]] == [1, 2, 5]


def test_fresh_runs_keep_every_earlier_checkpoint_under_a_new_number(photo_path, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"an earlier run's checkpoint")
    (out / "checkpoint.1.pt").write_bytes(b"an even earlier run's checkpoint")
    assert run_deblur(photo_path, out) == 0
    assert "was kept as checkpoint.2.pt" in capsys.readouterr().out
    assert (out / "checkpoint.1.pt").read_bytes() == b"an even earlier run's checkpoint"
    assert (out / "checkpoint.2.pt").read_bytes() == b"an earlier run's checkpoint"
    assert checkpoint_of(out)["epoch"] == 4


def test_a_kept_checkpoint_continues_as_its_note_says(photo_path, tmp_path, capsys):
    assert run_deblur(photo_path, tmp_path, "--num_epochs", "2") == 0
    assert run_deblur(photo_path, tmp_path, "--num_epochs", "2") == 0  # a fresh run beside it
    kept = tmp_path / "checkpoint.1.pt"
    assert f"the command that made it, with --resume {kept})" in capsys.readouterr().out
    assert run_deblur(photo_path, tmp_path, "--num_epochs", "4", "--resume", str(kept)) == 0
    assert f"Resumed from {kept} at epoch 2" in capsys.readouterr().out


def test_resume_with_another_image_size_is_refused_by_name(photo_path, tmp_path, capsys):
    assert run_deblur(photo_path, tmp_path) == 0
    assert run_deblur(photo_path, tmp_path, "--image_size", "48", "--resume") == 2
    assert "it was trained with image_size = 32, not 48" in capsys.readouterr().err


def test_resume_with_another_network_is_refused_by_name(photo_path, tmp_path, capsys):
    assert run_deblur(photo_path, tmp_path, "--num_epochs", "1") == 0
    assert run_deblur(photo_path, tmp_path, "--model", "unet", "--resume") == 2
    message = "it was trained with model = 'deblurnet', not 'unet'; use --model deblurnet"
    assert message in capsys.readouterr().err


def test_resume_with_a_new_learning_rate_is_allowed_and_said(photo_path, tmp_path, capsys):
    assert run_deblur(photo_path, tmp_path) == 0
    assert run_deblur(photo_path, tmp_path, "--num_epochs", "6", "--lr", "0.001", "--resume") == 0
    out = capsys.readouterr().out
    assert "resuming with lr = 0.001 (the checkpoint used 0.0001)" in out and "Resumed from" in out
    assert checkpoint_of(tmp_path)["optimizer"]["param_groups"][0]["lr"] == 0.001


def test_resume_may_switch_between_bfloat16_and_float16_with_a_grad_scaler(
    photo_path, tmp_path, capsys
):
    args = (*HALF_PRECISION_SIZE, "--num_epochs", "1", "--amp_dtype", "bfloat16")
    assert run_deblur(photo_path, tmp_path, *args) == 0
    args = (*HALF_PRECISION_SIZE, "--num_epochs", "2", "--amp_dtype", "float16", "--resume")
    assert run_deblur(photo_path, tmp_path, *args) == 0
    assert checkpoint_of(tmp_path)["scaler"]["scale"] > 0
    args = (*HALF_PRECISION_SIZE, "--num_epochs", "3", "--amp_dtype", "bfloat16", "--resume")
    assert run_deblur(photo_path, tmp_path, *args, "--log_every", "1") == 0
    message = "resuming with amp_dtype = 'bfloat16' (the checkpoint used 'float16')"
    assert message in capsys.readouterr().out


def test_an_image_changed_since_the_checkpoint_is_not_resumed(photo_path, tmp_path, capsys):
    assert run_deblur(photo_path, tmp_path / "out", "--num_epochs", "1") == 0
    save_photo(tmp_path, seed=7)  # another picture, the same name
    assert run_deblur(photo_path, tmp_path / "out", "--resume") == 2
    assert "has changed since it was trained on" in capsys.readouterr().err


def test_a_mistyped_resume_folder_is_not_created(photo_path, tmp_path, capsys):
    typo = tmp_path / "rnus" / "a"
    assert run_deblur(photo_path, typo, "--resume") == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert not (tmp_path / "rnus").exists()


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_crafted_pickle_checkpoint_is_refused_without_running_it(photo_path, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    torch.save({"model": Payload(marker)}, tmp_path / "checkpoint.pt")
    assert run_deblur(photo_path, tmp_path, "--resume") == 2
    message = "not a Deblur checkpoint, or is damaged, or was written before 2026-12-04"
    assert message in capsys.readouterr().err
    assert not marker.exists()


def test_a_plain_pickle_checkpoint_is_refused_in_one_line(photo_path, tmp_path, capsys, recwarn):
    with open(tmp_path / "checkpoint.pt", "wb") as file:  # pickle's protocol, not torch.save's
        pickle.dump({"model": Payload(tmp_path / "payload-ran")}, file)
    assert run_deblur(photo_path, tmp_path, "--resume") == 2
    error = capsys.readouterr().err.splitlines()
    assert len(error) == 1 and "not a Deblur checkpoint" in error[0], error
    assert not [warning for warning in recwarn if "pickle" in str(warning.message)]  # torch's
    assert not (tmp_path / "payload-ran").exists()


def with_a_nan_weight(checkpoint):
    checkpoint["model"]["main.0.weight"][0, 0, 0, 0] = float("nan")


def of_another_architecture(checkpoint):
    checkpoint["model"]["main.0.weight"] = torch.zeros(32, 3, 3, 3)


HAND_MADE = {
    "no history": (lambda c: c.update(history=None), "not a Deblur checkpoint"),
    "a fractional epoch": (lambda c: c.update(epoch=2.5), "not a Deblur checkpoint"),
    "a short history row": (lambda c: c.update(history=[[1, 2]]), "not a Deblur checkpoint"),
    "elapsed NaN": (lambda c: c.update(elapsed=float("nan")), "not a Deblur checkpoint"),
    "a NaN weight": (with_a_nan_weight, "holds NaN weights (its run diverged)"),
    "another architecture": (of_another_architecture, "different network architecture"),
    "a 7-byte generator state": (
        lambda c: c.update(crops_generator=torch.zeros(7, dtype=torch.uint8)),
        "not a Deblur checkpoint",
    ),
    "an empty optimizer state": (lambda c: c.update(optimizer={}), "not a Deblur checkpoint"),
    "a frame that is no image": (lambda c: c.update(frames=[[1, 20.0, None]]), "not a Deblur"),
}


@pytest.mark.parametrize("case", HAND_MADE)
def test_a_hand_made_checkpoint_is_refused_before_training(
    trained_checkpoint, tmp_path, capsys, case
):
    change, message = HAND_MADE[case]
    checkpoint = checkpoint_of(trained_checkpoint)  # as a user's script might
    change(checkpoint)
    torch.save(checkpoint, tmp_path / "hand.pt")
    photo = trained_checkpoint.parent / "train.png"  # the image it was trained on
    args = ("--resume", str(tmp_path / "hand.pt"), "--num_epochs", "3")
    assert run_deblur(photo, tmp_path / "out", *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "content",
    [b"not a checkpoint at all", {"weights": [1, 2, 3]}, [1, 2, 3]],
    ids=["bytes", "another dict", "a list"],
)
def test_files_that_are_not_checkpoints_are_refused(photo_path, tmp_path, capsys, content):
    path = tmp_path / "other.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    assert run_deblur(photo_path, tmp_path, "--resume", str(path)) == 2
    assert "is not a Deblur checkpoint" in capsys.readouterr().err


def test_resuming_a_finished_checkpoint_elsewhere_names_only_what_it_wrote(
    trained_checkpoint, tmp_path, capsys
):
    photo = trained_checkpoint.parent / "train.png"
    args = ("--resume", str(trained_checkpoint), "--num_epochs", "2")  # trained 2 already
    assert run_deblur(photo, tmp_path / "new", *args) == 0
    results = [line for line in capsys.readouterr().out.splitlines() if "Results are in" in line]
    assert "comparison.png" in results[0] and "checkpoint.pt" not in results[0]
    assert not (tmp_path / "new" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "name, value",
    [
        ("model", "foo"),
        ("blur_kind", "foo"),
        ("blur_radius", "5"),
        ("blur_radius", float("nan")),
        ("restore_from", "foo"),
        ("noise_level", -1.0),
        ("image_size", 2.5),
    ],
)
def test_a_hand_edited_setting_in_a_checkpoint_is_refused_in_one_line(
    trained_checkpoint, tmp_path, capsys, name, value
):
    checkpoint = checkpoint_of(trained_checkpoint)
    checkpoint["settings"][name] = value
    torch.save(checkpoint, tmp_path / "edited.pt")
    photo = trained_checkpoint.parent / "train.png"
    resume = ("--resume", str(tmp_path / "edited.pt"))
    assert run_deblur(photo, tmp_path / "resumed", *resume) == 2
    assert apply_deblur(photo, tmp_path / "applied", tmp_path / "edited.pt") == 2
    for error in capsys.readouterr().err.strip().splitlines():
        assert error.startswith("error:") and f"trained with {name} = {value!r}" in error
    assert not (tmp_path / "resumed").exists() and not (tmp_path / "applied").exists()


def test_a_checkpoint_that_does_not_say_its_network_is_refused_in_one_line(
    trained_checkpoint, tmp_path, capsys
):
    checkpoint = checkpoint_of(trained_checkpoint)
    del checkpoint["settings"]["model"]
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    photo = trained_checkpoint.parent / "train.png"
    assert run_deblur(photo, tmp_path / "out", "--resume", str(tmp_path / "checkpoint.pt")) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith(
        "does not say its model; it is damaged or hand-edited: use another "
        "checkpoint, or train afresh"
    )
    assert len(error.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_a_refused_resume_creates_nothing_and_loads_no_vgg(
    trained_checkpoint, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(Deblur, "load_vgg19_loss", lambda *args: pytest.fail("VGG19 loaded"))
    photo = trained_checkpoint.parent / "train.png"
    args = ("--resume", str(trained_checkpoint), "--model", "unet", "--perceptual_weight", "0.1")
    assert run_deblur(photo, tmp_path / "new", *args) == 2
    assert "it was trained with model = 'deblurnet', not 'unet'" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_checkpoint_from_a_device_without_fused_adam_resumes_in_float16(photo_path, tmp_path):
    """Adam's kernels are the resuming device's: a checkpoint saved where Adam is not fused (a
    Mac's MPS) resumes under a GradScaler, which hands its state only to fused Adam."""
    args = (*HALF_PRECISION_SIZE, "--amp_dtype", "float16")
    assert run_deblur(photo_path, tmp_path, *args, "--num_epochs", "1") == 0
    checkpoint = checkpoint_of(tmp_path)
    for group in checkpoint["optimizer"]["param_groups"]:
        group.update(fused=None, foreach=None)  # as torch.optim.Adam saves them on MPS
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    assert run_deblur(photo_path, tmp_path, *args, "--num_epochs", "2", "--resume") == 0
    assert checkpoint_of(tmp_path)["optimizer"]["param_groups"][0]["fused"]
