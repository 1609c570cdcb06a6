"""The GPU session's tooling, checked on the CPU: scripts/gpu_session.sh (its dry
run's commands and paths, its summary when stages fail or time out), the
per-op smoke script that compute-sanitizer runs, and bench/end_to_end.py."""
import importlib.util
import json
import os
import re
import stat
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_session.sh")
ENV = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def session(*args, out, cwd=ROOT, env=None, timeout=300):
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**(env or ENV), "OUT": out})


def dry_run(call, out, cwd=ROOT):
    result = session(call, "--dry-run", out=out, cwd=cwd)
    assert result.returncode == 0, result.stderr
    stages = re.findall(r"^\[([\w-]+)\] timeout (\d+) s: (.*)$", result.stdout, re.M)
    return result.stdout, {name: (int(seconds), command) for name, seconds, command in stages}


@pytest.mark.parametrize("call", ["check", "bench"])
@pytest.mark.parametrize("relative", [False, True])
def test_dry_run_resolves_out_once_to_an_absolute_path(tmp_path, call, relative):
    out = "session/out" if relative else str(tmp_path / "abs" / "out")
    text, stages = dry_run(call, out, cwd=tmp_path)
    expected = str(tmp_path / "session" / "out") if relative else out
    assert f"OUT={expected}\n" in text
    assert f"summary: {expected}/summary.md" in text
    written = [p for _, cmd in stages.values() for p in re.findall(r"--(?:out|benchmark-json)[ =](\S+?\.json)", cmd)]
    assert all(p.startswith(expected + "/") for p in written), written
    assert "../" not in text
    assert not os.path.exists(expected), "a dry run writes nothing"
    if call == "bench":
        assert {p.rsplit("/", 1)[1] for p in written} == {
            "end-to-end-nvidia-h200.json", "bench-sir-nvidia-h200.json", "bench-mlp-nvidia-h200.json",
            "bench-cells-nvidia-h200.json", "bench-compile-nvidia-h200.json"}


@pytest.mark.parametrize("call", ["check", "bench"])
def test_dry_run_prints_every_stage_within_the_call_budget(call):
    text, stages = dry_run(call, "gpu-out")
    budget = int(re.search(r"call budget (\d+) s", text).group(1))
    assert budget <= 380 and sum(t for t, _ in stages.values()) <= budget
    assert all(t > 0 for t, _ in stages.values())
    commands = "\n".join(cmd for _, cmd in stages.values())
    assert "TORCH_CUDA_ARCH_LIST=9.0 " in commands  # the GPU's arch only
    if call == "check":
        assert list(stages)[:4] == ["env", "native", "build", "pytest"]
        assert "-DCMAKE_CUDA_ARCHITECTURES=90 " in stages["native"][1]
        assert "ctest" in stages["native"][1] and "--timeout" in stages["native"][1]
        assert "-k cuda" in stages["pytest"][1]
        for tool in ("memcheck", "racecheck", "initcheck", "synccheck"):
            assert re.search(rf"--tool {tool} .*build-gpu/test_sir_cuda$", stages[f"{tool}-native"][1])
        for tool in ("memcheck", "racecheck"):
            assert "scripts/gpu_smoke/ops_smoke.py all" in stages[f"{tool}-ops"][1]
        assert stages["memcheck-ops"][1].startswith("PYTORCH_NO_CUDA_MEMORY_CACHING=1 ")
    else:
        assert list(stages) == ["env", "build", "end-to-end", "bench-sir", "bench-mlp", "bench-cells", "bench-compile"]
        assert "--device cuda" in stages["end-to-end"][1]
        assert all("-m cuda" in stages[f"bench-{k}"][1] for k in ("sir", "mlp", "cells", "compile"))
        assert all("--bench-compile=none" in stages[f"bench-{k}"][1] for k in ("sir", "mlp", "cells"))
        assert "--bench-compile=one" in stages["bench-compile"][1]


def test_bad_arguments_are_named():
    for args, message in [(["run"], "must be all, check or bench"), (["check", "--stages", "nope"], "no stage 'nope'"),
                          (["bench", "--budget", "soon"], "--budget must be whole seconds"),
                          (["check", "--fast"], "unknown option '--fast'")]:
        result = session(*args, "--dry-run", out="gpu-out")
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


def _fake_python(tmp_path, body):
    """A PYTHON for the script: answers the script's own `-c` probes with 'no
    GPU', and runs `body` (shell) for every stage's command."""
    path = tmp_path / "fake-python"
    path.write_text(f'#!/bin/sh\nif [ "$1" = -c ]; then echo none; exit 0; fi\n{body}\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.mark.parametrize("body, status, code", [("exit 3", "FAILED (exit 3)", 1),
                                                ("sleep 60", "TIMED OUT after", 1)])
def test_summary_is_written_when_a_stage_fails_or_times_out(tmp_path, body, status, code):
    out = tmp_path / "out"
    env = {**ENV, "PYTHON": _fake_python(tmp_path, body)}
    result = session("check", "--allow-no-gpu", "--stages", "pytest", "--budget", "9", out=str(out), env=env)
    assert result.returncode == code, result.stderr
    assert sorted(os.listdir(out)) == ["check.log", "summary.md"]  # the stage's own log folded into check.log
    summary = (out / "summary.md").read_text()
    assert re.search(rf"^\| pytest \| {re.escape(status)}", summary, re.M), summary
    assert "stages not passed: 1" in summary and "-k cuda" in summary


@pytest.fixture(scope="module")
def smoke():
    path = os.path.join(ROOT, "scripts", "gpu_smoke", "ops_smoke.py")
    spec = importlib.util.spec_from_file_location("ops_smoke", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_script_runs_every_op_on_the_cpu(smoke, capsys):
    assert smoke.main(["all", "--device", "cpu", "--calls", "1"]) == 0
    printed = capsys.readouterr().out
    assert all(f"{name} on cpu: ok" in printed for name in smoke.OPS)


def test_smoke_script_reports_a_wrong_kernel(smoke, monkeypatch):
    """One dropped (zeroed) element of one op's output must fail the smoke run."""
    fused = smoke.ops.bn_swish_given_stats

    def dropped(*args):
        y = fused(*args).clone()
        y.view(-1)[-1] = 0.0
        return y

    monkeypatch.setattr(smoke.ops, "bn_swish_given_stats", dropped)
    messages = smoke.run(["bn_swish_given_stats"], torch.device("cpu"), 1)
    assert any(m.startswith("bn_swish_given_stats (2, 5, 7, 6, 5) float32 output 0: 1 of 420 elements")
               for m in messages), messages


@pytest.mark.slow
def test_end_to_end_figures_on_the_cpu(tmp_path):
    out = tmp_path / "e2e.json"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "end_to_end.py"), "--quick", "--device", "cpu",
                             "--out", str(out)], capture_output=True, text=True, env=ENV, timeout=900)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["errors"] == {} and report["device"] == "cpu" and report["quick"] is True
    step = report["training_step"]
    assert set(step["variants"]) == {"fused-fp32", "torch-fp32"}
    for entry in step["variants"].values():
        assert entry["saved_activation_bytes"] > 0 and entry["peak_allocated_bytes"] is None
        assert 0 < entry["images_per_second"]["min"] <= entry["images_per_second"]["median"] \
            <= entry["images_per_second"]["max"]
        assert set(entry["step_ms"]) == {"median_ms", "min_ms", "max_ms", "rounds"}
    assert step["eager_over_fused"]["fp32"]["saved_activation_bytes"] > 1  # the fused cells save less
    stage2 = report["stage2_training"]
    assert set(stage2["variants"]) == {"fused", "torch"}
    assert all(v["train_images_per_second"]["median"] > 0 for v in stage2["variants"].values())
    setting = report["sampler"]["settings"]["M=4"]
    assert setting["fused"]["images_per_second"]["median"] > 0 and setting["reference"]["call_ms"]["rounds"] == 1
    assert 0 <= setting["same_images_fraction"] <= 1


def test_the_one_call_fits_a_lease():
    """`all` in one device call: its budget, plus a machine start of up to 3
    minutes and the transfers, stays well under the lease's 900 s and the 600 s
    a command may run; at most 8 result files come back (the tool's limit)."""
    text, stages = dry_run("all", "gpu-out")
    budget = int(re.search(r"call budget (\d+) s", text).group(1))
    assert sum(t for t, _ in stages.values()) <= budget <= 540 and budget + 180 <= 760
    assert list(stages)[:3] == ["env", "build", "pytest"]  # what a lease must not miss comes first
    written = {p for _, cmd in stages.values() for p in re.findall(r"--(?:out|benchmark-json)[ =](\S+?\.json)", cmd)}
    assert len(written) + 2 <= 8  # + summary.md and all.log


def test_a_python_without_torch_is_named(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    result = session("all", out=str(tmp_path / "out"), env={**ENV, "PYTHON": str(fake)})
    assert result.returncode == 1 and "cannot import torch" in result.stderr
