"""scripts/plan_paper_scale.py's counting core, on the `tiny` preset (the paper presets take minutes)."""
import importlib.util
import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def plan():
    path = os.path.join(REPO, "scripts", "plan_paper_scale.py")
    spec = importlib.util.spec_from_file_location("plan_paper_scale", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny(plan):
    return plan.measure_preset("tiny", side=16)


def test_depthwise_weight_gradient_is_counted_per_group(plan):
    """A depthwise conv's backward costs twice its forward (input and weight gradients);
    torch's own formula counts the weight gradient `channels` times too large."""
    channels, side = 24, 8
    conv = torch.nn.Conv2d(channels, channels, 5, padding=2, groups=channels, bias=False)
    x = torch.randn(2, channels, side, side, requires_grad=True)
    counter = plan.flop_counter()
    with counter:
        y = conv(x)
    forward = counter.get_total_flops()
    assert forward == 2 * 2 * side * side * channels * 25
    assert plan.count_flops(lambda: y.sum().backward()) == 2 * forward


def test_flops_scale_with_batch_and_agree_on_meta_and_cpu(plan):
    config = plan._config("tiny")
    meta = plan._build(config, "meta")
    one_meta, two_meta = (plan.training_step_flops(meta, config, b) for b in (1, 2))
    two_cpu = plan.training_step_flops(plan._build(config, "cpu"), config, 2)
    assert two_cpu == two_meta
    for part in ("forward", "backward"):
        assert one_meta[part] > 0
        # Linear in the batch: every counted op (convolutions, linear layers) is per image.
        assert two_meta[part] == pytest.approx(2 * one_meta[part], rel=0.01)
    # A backward costs about twice a forward (two gradients per matrix op), never 30x.
    assert 1.5 < one_meta["backward"] / one_meta["forward"] < 2.5


def test_tiny_measurements_are_positive_and_consistent(tiny):
    assert tiny["train_flops_per_image"] > tiny["train_forward_flops_per_image"] > 0
    assert tiny["regularizer_flops_per_step"] > 0
    # Reduced side x pixel ratio reproduces the full-size count (fully convolutional model).
    assert abs(tiny["scaling_check"]["relative_error"]) < 0.02
    saved = tiny["saved_bytes_per_image"]
    assert 0 < saved["fused"] < saved["torch"]
    assert tiny["stage2"]["flops_per_image"] > tiny["stage2"]["vae_forward_flops_per_image"] > 0
    sampling = tiny["sampling"]
    # SIR scores 50 proposals per group on top of a base sample's decoding.
    assert sampling["sir_flops_per_image"] > sampling["base_flops_per_image"] > 0
    evaluation = tiny["evaluation"]
    assert evaluation["nll_ncp_flops_per_importance_sample"] > evaluation["nll_base_flops_per_importance_sample"] > 0


def test_rates_take_the_slower_bound(plan):
    gpu = dict(matrix_flops=100.0, bandwidth=1000.0)
    rate, bound = plan.images_per_second(10.0, 1.0, gpu, 0.5, 2.0)
    assert (rate, bound) == (5.0, "FLOPs")  # 50 FLOP/s / 10 vs 1000 B/s / 2 B
    rate, bound = plan.images_per_second(1.0, 100.0, gpu, 0.5, 2.0)
    assert (rate, bound) == (5.0, "bandwidth")


def test_commands_use_only_existing_flags(plan):
    from ncpfast.cli.evaluate import build_parser as evaluate_parser
    from ncpfast.cli.train import build_parser as train_parser
    from ncpfast.import_nvae import build_parser as import_parser

    parsers = {"ncpfast.train": train_parser, "ncpfast.evaluate": evaluate_parser, "ncpfast.import_nvae": import_parser}
    cmds = plan.commands("cifar10")
    for name, line in cmds.items():
        words = line.split()
        programs = [word for word in words if word in parsers]
        assert len(programs) == 1, f"{name}: expected one ncpfast program in {line!r}"
        args = words[words.index(programs[0]) + 1:]
        parsers[programs[0]]().parse_args(args)  # exits on an unknown flag
    assert "--rdzv_endpoint HOST:29500" in cmds["stage1_2x8gpus"]


def test_estimates_and_page_from_measurements(plan, tiny):
    """The estimate and the page from tiny's counts standing in for a paper preset's."""
    measured = {**tiny, "preset": "mnist"}
    result = plan.estimate(measured)
    rate = result["images_per_second_per_gpu"]
    assert 0 < rate["low"] <= rate["high"]
    one, eight = result["stage1_hours"]["1_gpu"], result["stage1_hours"]["8_gpus"]
    assert all(h > 0 for h in one + eight)
    assert max(eight) < min(one)  # 8 GPUs at 90% efficiency beat one
    memory = result["memory_bytes_per_gpu"]
    assert memory["parameters_and_optimizer"] < memory["bf16_fused"] < memory["fp32_fused"] < memory["fp32_eager"]
    results = {"mnist": result}
    plan.calibrate(results)
    assert results["mnist"]["calibrated"]["images_per_second_per_gpu"] > 0
    report = dict(meta=dict(command="test", date="today", machine="here", commit="HEAD", torch="x", seconds=0.0),
                  assumptions=plan.ASSUMPTIONS, gpus=plan.GPUS, datasets=plan.DATASETS,
                  measurements={"mnist": measured},
                  presets=results, commands={"mnist": plan.commands("mnist")})
    page = plan.render_markdown(report)
    assert "| `mnist`" in page and "torchrun --nnodes 2" in page
