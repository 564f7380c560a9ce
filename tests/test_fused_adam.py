"""made_core.fused_adam: Adam fused with a many-mask MADE's mask products must train exactly as
torch.optim.Adam with the mask products does, and step aside wherever it cannot apply."""

from __future__ import annotations

import os
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import made_core.fused_adam as fused_adam
from made_core.config import TrainConfig
from made_core.fused_adam import MaskedAdam, load_kernels, masked_adam_applies
from made_core.hyperparameters import MASK_SAMPLING
from made_core.masks import make_degrees, make_masks
from made_core.model import MADE
from made_core.steps import FusedAdamStep
from made_core.train import Trainer

ROWS = (np.random.default_rng(0).random((600, 12)) < 0.3).astype(np.float32)

needs_kernels = pytest.mark.skipif(
    load_kernels() is None, reason=f"fused masked-Adam kernels unavailable ({fused_adam._load_error})"
)


def trained(monkeypatch, fused: bool, **overrides) -> Trainer:
    monkeypatch.setenv(fused_adam.OPT_OUT_VARIABLE, "1" if fused else "0")
    values: dict[str, Any] = dict(hidden_sizes=(24, 20), num_masks=3, ordering="agnostic", direct_connection=True,
                  batch_size=50, max_epochs=3, weight_decay=1e-3, learning_rate=1e-2, valid_masks=2)  # fmt: skip
    values.update(overrides)
    trainer = Trainer(TrainConfig(**values), ROWS[:500], ROWS[500:])
    for _ in trainer.epochs():
        pass
    return trainer


@needs_kernels
@pytest.mark.parametrize("num_masks,direct_connection", [(3, True), (3, False), (MASK_SAMPLING, True)])
def test_masked_adam_trains_as_torch_adam_with_mask_products(monkeypatch, num_masks, direct_connection):
    fused = trained(monkeypatch, True, num_masks=num_masks, direct_connection=direct_connection)
    reference = trained(monkeypatch, False, num_masks=num_masks, direct_connection=direct_connection)
    assert isinstance(fused.optimizer, MaskedAdam) and type(reference.optimizer) is torch.optim.Adam
    # 30 steps at learning rate 1e-2 with weight decay: float32 rounding apart (measured: at most
    # 8e-6; a step moves a weight by up to 1e-2), the same weights, cut entries included,
    # and the same Adam state.
    for name, value in reference.model.state_dict().items():
        assert torch.allclose(fused.model.state_dict()[name], value, rtol=0, atol=5e-5), name
    fused_state, reference_state = fused.optimizer.state_dict(), reference.optimizer.state_dict()
    assert fused_state["state"].keys() == reference_state["state"].keys()
    for index, expected in reference_state["state"].items():
        assert float(fused_state["state"][index]["step"]) == float(expected["step"]) == 30
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(fused_state["state"][index][key], expected[key], rtol=1e-3, atol=1e-6), (index, key)
    assert [r["valid_nll"] for r in fused.progress.history] == pytest.approx(
        [r["valid_nll"] for r in reference.progress.history], abs=1e-4
    )


@needs_kernels
def test_kernel_masks_equal_the_mask_products():
    torch.manual_seed(0)
    for degrees, mask in zip(
        make_degrees(9, (11, 7), "agnostic", 4, 2, True), make_masks(9, (11, 7), "agnostic", 4, 2, True).in_layer_order()
    ):
        weight = torch.randn(mask.shape)
        shift = 0.0 if degrees.strict else 1.0
        assert torch.equal(
            load_kernels().masked_weight(weight, degrees.rows.float(), degrees.columns.float(), shift), weight * mask
        )


@needs_kernels
def test_prepared_weights_are_not_used_after_the_weights_change(monkeypatch):
    monkeypatch.setenv(fused_adam.OPT_OUT_VARIABLE, "1")
    torch.manual_seed(0)
    model = MADE(12, (16,), num_masks=2, ordering="agnostic")
    optimizer = MaskedAdam(model, lr=1e-2)
    train_step = FusedAdamStep(model, optimizer)
    x = torch.tensor(ROWS[:20])
    loss = torch.nn.functional.binary_cross_entropy_with_logits(train_step.logits(x, 0), x)
    loss.backward()
    optimizer.step()
    # The step prepared mask 1's weights; an edit afterwards must not be ignored.
    with torch.no_grad():
        model.hidden_layers[0].weight.mul_(2.0)
    assert torch.allclose(train_step.logits(x, 1), model.logits(x, 1), rtol=0, atol=1e-6)
    model.load_state_dict(MADE(12, (16,), num_masks=2, ordering="agnostic", seed=5).state_dict())
    assert torch.allclose(train_step.logits(x, 1), model.logits(x, 1), rtol=0, atol=1e-6)


@needs_kernels
def test_step_needs_a_forward_pass_first():
    model = MADE(12, (16,), num_masks=2)
    optimizer = MaskedAdam(model)
    with pytest.raises(RuntimeError, match="masked_weights_for"):
        optimizer.step()
    with pytest.raises(ValueError, match="several masks"):
        MaskedAdam(MADE(12, (16,), num_masks=1))


def test_masked_adam_steps_aside_where_it_cannot_apply(monkeypatch):
    cpu = torch.device("cpu")
    several = MADE(12, (16,), num_masks=2)
    assert not masked_adam_applies(MADE(12, (16,), num_masks=1), cpu, None)  # nothing to fuse
    assert not masked_adam_applies(several, cpu, 1.0)  # clipping needs the masked gradients' norm
    assert not masked_adam_applies(several.double(), cpu, None)  # float32 kernels
    assert not masked_adam_applies(MADE(12, (16,), num_masks=2), torch.device("cuda"), None)
    monkeypatch.setenv(fused_adam.OPT_OUT_VARIABLE, "0")
    assert not masked_adam_applies(MADE(12, (16,), num_masks=2), cpu, None)
    assert type(trained(monkeypatch, True, grad_clip=1.0, max_epochs=1).optimizer) is torch.optim.Adam


def test_kernels_are_built_by_the_ninja_package_whatever_the_path(monkeypatch, tmp_path):
    """Another ninja earlier on PATH (a system one, a non-activated virtualenv) must not be used:
    two ninja versions rebuild the cached kernels for each other."""
    import ninja

    other = tmp_path / "bin"
    other.mkdir()
    (other / "ninja").write_text("#!/bin/sh\necho 1.0.0\n")
    (other / "ninja").chmod(0o755)
    monkeypatch.setenv("PATH", f"{other}{os.pathsep}{ninja.BIN_DIR}{os.pathsep}/usr/bin")
    assert fused_adam._put_ninja_on_path() == ninja.__version__
    assert os.environ["PATH"].split(os.pathsep)[0] == ninja.BIN_DIR
    assert Path(shutil.which("ninja") or "").parent == Path(ninja.BIN_DIR)
    path = os.environ["PATH"]
    fused_adam._put_ninja_on_path()
    assert os.environ["PATH"] == path  # not prepended twice
    assert fused_adam._build_key("1.11.1") != fused_adam._build_key("1.13.2")


def test_a_failed_build_warns_once_and_falls_back(monkeypatch):
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(fused_adam, "_kernels", None)
    monkeypatch.setattr(fused_adam, "_load_error", None)
    monkeypatch.setattr(torch.utils.cpp_extension, "load_inline", no_compiler)
    monkeypatch.setenv(fused_adam.OPT_OUT_VARIABLE, "1")
    with pytest.warns(UserWarning, match=r"no C\+\+ compiler"):
        assert load_kernels() is None
    assert not masked_adam_applies(MADE(12, (16,), num_masks=2), torch.device("cpu"), None)
    trainer = Trainer(TrainConfig(hidden_sizes=(16,), num_masks=2, max_epochs=1), ROWS[:500], ROWS[500:])
    assert type(trainer.optimizer) is torch.optim.Adam
    trainer.run_to_validation()


def test_a_lock_left_by_a_killed_build_is_cleared_and_a_live_one_waited_for(tmp_path):
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "lock").touch()
    (stale / "half_built.o").write_text("")
    old = time.time() - 2 * fused_adam.STALE_BUILD_LOCK_SECONDS
    os.utime(stale / "lock", (old, old))
    with pytest.warns(UserWarning, match="left by a kernel build that was killed"):
        fused_adam.clear_stale_build_lock(stale)
    assert not stale.exists()  # the half-built files went with the lock

    live = tmp_path / "live"
    live.mkdir()
    (live / "lock").touch()
    (live / "built.so").write_text("")
    threading.Timer(0.6, (live / "lock").unlink).start()  # the other build finishes
    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused_adam.clear_stale_build_lock(live)
    assert time.monotonic() - started >= 0.5 and (live / "built.so").exists()

    fused_adam.clear_stale_build_lock(tmp_path / "never built")  # no folder: nothing to wait for


def test_kernels_build_under_torch_extensions_dir_when_set(monkeypatch, tmp_path):
    from torch.utils.cpp_extension import get_default_build_root

    from made_core.fused_adam import kernel_build_directory

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert kernel_build_directory("k") == Path(get_default_build_root()) / "made_core" / "k"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # as torch's own builds read it
    assert kernel_build_directory("k") == tmp_path / "made_core" / "k"
