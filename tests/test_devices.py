"""`--device auto` / `--provider auto`: the GPU when there is one, else the CPU, and the log says which and why."""

from __future__ import annotations

import argparse
import logging

import pytest
import torch

from optimum_gatenorm.devices import AUTO, choose_provider, resolve_device
from optimum_gatenorm.errors import InvalidConfigError


HAS_CUDA = torch.cuda.is_available()


def test_auto_picks_what_this_machine_has_and_says_why(caplog):
    with caplog.at_level(logging.INFO, logger="optimum_gatenorm"):
        device = resolve_device(AUTO)
    assert device == ("cuda" if HAS_CUDA else "cpu")
    (record,) = [r for r in caplog.records if r.name == "optimum_gatenorm.devices"]
    message = record.getMessage()
    assert message.startswith(f"`device='auto'`: {device} (")
    if not HAS_CUDA:
        assert "no CUDA support" in message or "no CUDA device is visible" in message


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU fallback; this machine has a GPU")
def test_auto_on_a_machine_without_a_gpu(caplog, monkeypatch):
    # A CUDA build of torch on a machine without a GPU: the reason is the missing device, not the build.
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with caplog.at_level(logging.INFO, logger="optimum_gatenorm"):
        assert resolve_device(AUTO) == "cpu"
        assert choose_provider(AUTO) == ("cpu", "no CUDA device is visible")
    assert any("no CUDA device is visible" in r.getMessage() for r in caplog.records)


def test_explicit_devices_are_checked():
    assert resolve_device("cpu") == "cpu"
    assert choose_provider("cpu") == ("cpu", None) and choose_provider("cuda") == ("cuda", None)
    with pytest.raises(InvalidConfigError, match="`device='tpu9'` is not usable here"):
        resolve_device("tpu9")


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal of cuda where there is none; this machine has a GPU")
def test_cuda_is_refused_where_there_is_none():
    with pytest.raises(InvalidConfigError, match="on a machine with a GPU"):
        resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_auto_picks_the_gpu():
    assert resolve_device(AUTO) == "cuda"
    onnxruntime = pytest.importorskip("onnxruntime")
    expected = "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"
    assert choose_provider(AUTO)[0] == expected


def test_every_command_that_runs_a_model_defaults_to_auto():
    from optimum_gatenorm.commands.gatenorm import GateNormCommand

    defaults = {}
    for info in GateNormCommand.SUBCOMMANDS:
        parser = argparse.ArgumentParser()
        info.subcommand_class.parse_args(parser)
        for action in parser._actions:
            if action.dest in ("device", "provider"):
                defaults[(info.name, action.dest)] = action.default
    assert defaults == {
        ("score", "device"): AUTO,
        ("prune", "device"): AUTO,
        ("export", "device"): AUTO,
        ("eval", "provider"): AUTO,
        ("benchmark", "provider"): AUTO,
    }
