"""The adversarial term: a PatchGAN discriminator trained before the network each step, logged and
checkpointed only when adversarial_weight is above 0, and resumed only with what it needs."""

import re
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, apply_deblur, checkpoint_of, history, run_deblur, save_photo
from torch import nn

import Deblur
from networks import ResNet

ADVERSARIAL = ("--adversarial_weight", "0.01")


@pytest.fixture(scope="module")
def adversarial_checkpoint(tmp_path_factory):
    """A checkpoint of a 2-epoch run with the adversarial term, made once; copy it to change it."""
    folder = tmp_path_factory.mktemp("adversarial")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPLBACKEND", "Agg")
        photo = save_photo(folder, "train.png")
        assert run_deblur(photo, folder, *ADVERSARIAL, "--num_epochs", "2") == 0
    return folder / "checkpoint.pt"


def test_the_weighted_term_is_in_the_loss_the_log_line_and_history_csv(
    photo_path, tmp_path, capsys
):
    assert run_deblur(photo_path, tmp_path, *ADVERSARIAL) == 0
    out = capsys.readouterr().out
    assert "+ 0.01*adversarial (least squares, a PatchGAN's scores)" in out
    row = history(tmp_path)[-1]
    assert list(row)[-2:] == ["adversarial", "discriminator"]
    adversarial, judged = float(row["adversarial"]), float(row["discriminator"])
    line = re.search(r"Epoch 4, .*", out).group()
    assert f"Adversarial: {adversarial:.6f}, Discriminator: {judged:.6f}, PSNR" in line
    # MSE only besides it (TINY's perceptual_weight is 0): the total is the two, weighted (to
    # bfloat16's precision, in which a CPU with AVX512-BF16 or AMX sums them under autocast)
    total = float(row["mse"]) + 0.01 * adversarial
    assert float(row["total"]) == pytest.approx(total, rel=2**-8)
    assert adversarial > 0 and judged > 0
    assert set(checkpoint_of(tmp_path)["discriminator"]) == {"model", "optimizer", "scaler"}


def test_each_step_trains_the_discriminator_first_then_the_network_each_clipped(
    photo_path, tmp_path, monkeypatch
):
    clipped = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm, **kwargs):
        parameters = list(parameters)
        theirs = parameters[0].shape[-1] == 4  # the discriminator's convolutions are 4x4
        clipped.append(("discriminator" if theirs else "network", max_norm))
        return real_clip(parameters, max_norm, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    args = (*ADVERSARIAL, "--num_epochs", "2", "--max_grad_norm", "0.5")
    assert run_deblur(photo_path, tmp_path, *args) == 0
    assert clipped == [("discriminator", 0.5), ("network", 0.5)] * 2


def test_the_discriminator_learns_sharp_as_1_and_restored_as_0_and_the_network_aims_at_1():
    # A discriminator that scores a patch its mean brightness and does not learn (SGD at lr 0); a
    # sharp image of 0.8 and a blurred one of 0.2, which the untrained network returns as it is
    scorer = nn.Conv2d(3, 1, kernel_size=1)
    nn.init.constant_(scorer.weight, 1 / 3)
    nn.init.zeros_(scorer.bias)
    unscaled = torch.amp.GradScaler("cpu", enabled=False)  # float32
    sgd = torch.optim.SGD(scorer.parameters(), lr=0.0)
    discriminator = Deblur.Discriminator(scorer, sgd, unscaled)
    cfg = SimpleNamespace(**{**TINY, "adversarial_weight": 0.5})
    facts = SimpleNamespace(device=torch.device("cpu"), amp=torch.float32, multi_tensor=True)
    net = ResNet()
    batch = torch.full((1, 3, 16, 16), 0.2), torch.full((1, 3, 16, 16), 0.8), None
    adam = torch.optim.Adam(net.parameters(), lr=1e-3)
    terms = Deblur.training_step(cfg, net, None, adam, unscaled, batch, facts, discriminator)
    values = {name: term.item() for name, term in terms.items()}
    loss, mse, adversarial, told_apart = (
        values[name] for name in ("total", "mse", "adversarial", "discriminator")
    )
    assert adversarial == pytest.approx((0.2 - 1) ** 2)  # the network's patches aim at 1
    assert told_apart == pytest.approx((0.8 - 1) ** 2 + 0.2**2)  # sharp ones at 1, restored at 0
    assert loss == pytest.approx(mse + 0.5 * adversarial)
    # The discriminator's gradient is its own step's alone: the network's step leaves its weights be
    own = 2 * (0.8 - 1) * 0.8 + 2 * 0.2 * 0.2  # d/dw of the two squared distances, each colour
    torch.testing.assert_close(scorer.weight.grad, torch.full_like(scorer.weight, own))


def test_a_run_with_the_term_is_not_resumed_without_it(adversarial_checkpoint, tmp_path, capsys):
    photo = adversarial_checkpoint.parent / "train.png"
    before = adversarial_checkpoint.read_bytes()
    resume = ("--resume", str(adversarial_checkpoint), "--num_epochs", "3")
    assert run_deblur(photo, tmp_path / "out", *resume) == 2
    error = capsys.readouterr().err.strip()
    assert "cannot resume" in error and "without its adversarial term" in error
    assert "use --adversarial_weight 0.01, or start afresh" in error and "\n" not in error
    assert adversarial_checkpoint.read_bytes() == before and not (tmp_path / "out").exists()


def test_adding_the_term_on_resume_starts_a_fresh_discriminator_and_says_so(
    photo_path, tmp_path, capsys
):
    assert run_deblur(photo_path, tmp_path, "--num_epochs", "2", "--log_every", "1") == 0
    args = (*ADVERSARIAL, "--num_epochs", "4", "--log_every", "1", "--resume")
    assert run_deblur(photo_path, tmp_path, *args) == 0
    said = "checkpoint.pt was trained without the adversarial term: a fresh discriminator starts"
    assert said in capsys.readouterr().out
    rows = history(tmp_path)
    assert [row["adversarial"] for row in rows[:2]] == ["", ""]  # trained before it was added
    assert all(float(row["adversarial"]) > 0 for row in rows[2:])
    assert "discriminator" in checkpoint_of(tmp_path)


def without_discriminator(checkpoint):
    checkpoint["discriminator"] = None


def with_another_discriminator(checkpoint):
    checkpoint["discriminator"]["model"]["main.0.weight"] = torch.zeros(8, 3, 4, 4)


def with_an_empty_adam(checkpoint):
    checkpoint["discriminator"]["optimizer"] = {}


DAMAGED = {
    "missing": (without_discriminator, "but holds no discriminator; it is damaged"),
    "another network's": (with_another_discriminator, "discriminator is damaged"),
    "its Adam emptied": (with_an_empty_adam, "discriminator is damaged"),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_a_checkpoint_whose_discriminator_is_missing_or_damaged_is_refused_in_one_line(
    adversarial_checkpoint, tmp_path, capsys, case
):
    change, message = DAMAGED[case]
    checkpoint = checkpoint_of(adversarial_checkpoint)
    change(checkpoint)
    torch.save(checkpoint, tmp_path / "damaged.pt")
    photo = adversarial_checkpoint.parent / "train.png"
    resume = (*ADVERSARIAL, "--resume", str(tmp_path / "damaged.pt"), "--num_epochs", "3")
    assert run_deblur(photo, tmp_path / "out", *resume) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and error.startswith("error:") and "\n" not in error
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_a_checkpoint_trained_with_the_term_applies_without_its_discriminator(
    adversarial_checkpoint, tmp_path
):
    photo = adversarial_checkpoint.parent / "train.png"
    assert apply_deblur(photo, tmp_path / "out", adversarial_checkpoint) == 0
    assert (tmp_path / "out" / "train_deblurred.png").stat().st_size > 0
