"""python -m ncpfast.experiments: the statistics on hand-made numbers, the pieces
that need no training (flag syntax, availability, markdown sections, the
summaries, the resume decision), and one --quick experiment end to end, run twice
(the second time reusing every finished run)."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from ncpfast.experiments import commands, definitions, provenance, report, runner
from ncpfast.experiments.results import summarize
from ncpfast.experiments.runner import Runner, RunRecord, complete_evaluation, digest
from ncpfast.experiments.stats import combined_se, critical_value, direction, mean_sd, paired_difference

# --- statistics ------------------------------------------------------------------------------


def test_mean_sd_uses_the_sample_standard_deviation():
    assert mean_sd([1.0, 2.0, 3.0]) == {"mean": 2.0, "sd": 1.0, "n": 3}
    one = mean_sd([4.5])
    assert one["mean"] == 4.5 and one["sd"] is None and one["n"] == 1


def test_mean_sd_refuses_empty_and_non_finite_input():
    with pytest.raises(ValueError, match="at least one"):
        mean_sd([])
    with pytest.raises(ValueError, match="finite"):
        mean_sd([1.0, float("nan")])


def test_paired_difference_over_seeds():
    # differences b - a: -1, 0, -2 -> mean -1, sd 1, se 1/sqrt(3)
    d = paired_difference([10.0, 12.0, 14.0], [9.0, 12.0, 12.0], within_se=[0.3, 0.4, 1.2])
    assert d["differences"] == [-1.0, 0.0, -2.0]
    assert d["mean"] == pytest.approx(-1.0) and d["sd"] == pytest.approx(1.0) and d["n"] == 3
    assert d["se_seeds"] == pytest.approx(1 / math.sqrt(3))
    assert d["se_within"] == pytest.approx(math.sqrt(0.09 + 0.16 + 1.44) / 3)
    assert d["se"] == d["se_seeds"]


def test_paired_difference_pairs_by_position_not_by_sorting():
    # unpaired, the two lists have equal means; paired, b is always 1 above a
    d = paired_difference([1.0, 5.0, 3.0], [2.0, 6.0, 4.0])
    assert d["mean"] == pytest.approx(1.0) and d["sd"] == pytest.approx(0.0) and d["se"] == pytest.approx(0.0)


def test_paired_difference_with_one_seed_falls_back_to_the_runs_error():
    d = paired_difference([5.0], [4.0], within_se=[0.5])
    assert d["mean"] == -1.0 and d["se_seeds"] is None and d["se"] == pytest.approx(0.5)
    assert paired_difference([5.0], [4.0])["se"] is None
    # one seed without its error: nothing to go on
    assert paired_difference([5.0, 6.0], [4.0, 4.0], within_se=[0.5, None])["se_within"] is None


def test_paired_difference_refuses_unpaired_lists():
    with pytest.raises(ValueError, match="as many values"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="one value per pair"):
        paired_difference([1.0, 2.0], [1.0, 3.0], within_se=[0.1])


def test_combined_se_and_direction():
    assert combined_se(3.0, 4.0) == pytest.approx(5.0)
    assert combined_se(3.0, None) is None
    assert direction(-1.0, 0.4) == "lower"
    assert direction(-1.0, 0.6) == "within noise"
    assert direction(1.0, 0.1) == "higher"
    assert direction(1.0, None) == "unknown"


def test_verdicts_over_seeds_use_students_t():
    """With 3 seeds the standard error has 2 degrees of freedom: a difference
    of 3 standard errors is inside the 95% interval (t = 4.30), not 'lower'."""
    assert critical_value(None) == pytest.approx(1.95996, abs=1e-4)
    assert critical_value(2) == pytest.approx(4.30265, abs=1e-4)
    assert direction(-3.0, 1.0, dof=2) == "within noise"
    assert direction(-4.5, 1.0, dof=2) == "lower"
    assert direction(-3.0, 1.0) == "lower"  # an error over images: normal quantile
    assert paired_difference([1.0, 2.0, 3.0], [0.0, 0.5, 2.5])["dof"] == 2
    assert paired_difference([1.0], [0.0], within_se=[0.1])["dof"] is None


def test_null_comparisons_over_3_seeds_are_called_at_the_nominal_rate():
    """Under no difference, 3 paired seeds called 'lower' or 'higher' in ~5% of
    cases (the old |t| > 2 rule called ~18%)."""
    g = np.random.default_rng(0)
    calls = sum(direction(d["mean"], d["se"], d["dof"]) != "within noise"
                for d in (paired_difference([0.0] * 3, list(g.normal(size=3))) for _ in range(4000)))
    assert 0.035 < calls / 4000 < 0.065


# --- command lines -----------------------------------------------------------------------------


def test_options_are_checked_against_the_programs_own_parsers():
    commands.check_arguments("train", ["--preset", "tiny", "--ncp-epochs=2", "--no-progress"])
    with pytest.raises(ValueError, match="python -m ncpfast.train has no option --ncp-base-k, --nope"):
        commands.check_arguments("train", ["--stage", "2", "--ncp-base-k", "5", "--nope"])
    with pytest.raises(ValueError, match="has no option --method:"):  # --mode, --num-proposals: train has them
        commands.check_arguments("train", definitions.Sampler("sir", "joint", 5).cli_args())


@pytest.mark.parametrize("name", definitions.ALL)
def test_every_experiment_passes_only_options_its_programs_accept(name):
    experiment = definitions.experiment(name)
    for quick in (False, True):
        sizes = experiment.sizes(quick)
        for training in experiment.trainings:
            commands.check_arguments("train", sizes.train_args + training.train_args)
            for _, variant_args in training.variants.values():
                commands.check_arguments("train", variant_args)
        for sampler in sizes.samplers:
            commands.check_arguments("evaluate", sampler.cli_args() + tuple(sizes.evaluate_args))
            commands.check_arguments("sample", sampler.sample_args(0.1))



# --- the generated markdown ----------------------------------------------------------------------


@pytest.mark.parametrize("value, error, expected", [
    (133.92, 0.522, ("133.92", "0.52")), (97.70, 2.47, ("97.7", "2.5")), (1234.5, 45.0, ("1234", "45")),
    (-1.44, 0.115, ("-1.44", "0.12")), (5.0, None, ("5.00", "-")),
])
def test_a_value_is_shown_to_the_decimal_place_of_its_error(value, error, expected):
    assert report._with_error(value, error) == expected


def test_the_section_names_the_commits_that_made_its_runs():
    def record(code, status="complete"):
        return RunRecord(0, "t", "", "", "run", status=status, code=code)

    line = report._code_line([record(["aaa"]), record(["aaa", "bbb"]), record(["bbb"]), record([]),
                              record(["ccc"], status="failed")])
    assert line.startswith("Runs made by commit `aaa` (2 runs), `bbb` (2 runs); 1 made before")
    assert report._code_line([record([])]).startswith("Runs made by commits not recorded")


def test_replace_section_appends_then_replaces_only_its_own_section():
    text = "# Results\n\nwritten by hand\n"
    once = report.replace_section(text, "groups", "first")
    assert once.startswith(text.rstrip()) and "<!-- experiment:groups:begin -->\nfirst\n" in once
    twice = report.replace_section(report.replace_section(once, "sampler", "other"), "groups", "second")
    assert "first" not in twice and "second" in twice and "other" in twice and "written by hand" in twice
    assert twice.count("<!-- experiment:groups:begin -->") == 1
    with pytest.raises(ValueError, match="no matching"):
        report.replace_section("<!-- experiment:groups:begin -->\nbroken", "groups", "x")


# --- the summaries on hand-made runs ---------------------------------------------------------------


def _evaluation(base_nll, ncp_nll, base_fd, ncp_fd, paired_se=0.05):
    return {"base": {"nll_nats": base_nll, "nll_std_error": 0.3, "fd": base_fd},
            "ncp": {"nll_nats": ncp_nll, "nll_std_error": 0.4, "fd": ncp_fd},
            "nll_difference_ncp_minus_base": ncp_nll - base_nll, "nll_difference_std_error": paired_se,
            "generated_images": 100}


def test_summary_pairs_base_and_ncp_by_seed_and_reports_unavailable_variants():
    experiment = definitions.experiment("single-latent")
    records = []
    for seed, (b, n, bf, nf) in enumerate([(90.0, 89.0, 20.0, 18.0), (92.0, 90.0, 22.0, 21.0)]):
        records.append(RunRecord(seed, "single", "", "", f"/runs/s{seed}", status="complete",
                                 evaluation=_evaluation(b, n, bf, nf)))
        records.append(RunRecord(seed, "single", "gmm", "", f"/runs/s{seed}-gmm", status="unavailable",
                                 reason="not available in this build: --ncp-base missing"))
    summary = summarize(experiment, records, quick=False)
    rows = {r["label"]: r for r in summary["rows"]}
    assert rows["Gaussian prior"]["metrics"]["nll_nats"]["mean"] == pytest.approx(91.0)
    assert rows["NCP (Gaussian base)"]["metrics"]["fd"]["values"] == [18.0, 21.0]
    assert rows["GMM prior"]["status"] == "unavailable" and "--ncp-base missing" in rows["GMM prior"]["reason"]
    comparisons = {(c["a"], c["b"]): c for c in summary["comparisons"]}
    nll = comparisons[("Gaussian prior", "NCP (Gaussian base)")]["metrics"]["nll_nats"]
    assert nll["differences"] == [-1.0, -2.0] and nll["se_seeds"] == pytest.approx(0.5)
    assert nll["se_within"] == pytest.approx(math.sqrt(2 * 0.05 ** 2) / 2)  # the runs' paired errors
    fd = comparisons[("Gaussian prior", "NCP (Gaussian base)")]["metrics"]["fd"]
    assert fd["differences"] == [-2.0, -1.0] and fd["se_within"] is None  # no FD error in these runs
    assert comparisons[("Gaussian prior", "GMM prior")]["status"] == "unavailable"


def test_gmm_rows_read_the_gmm_prior_and_pair_it_with_the_gaussian():
    """The GMM-variant run evaluates three priors: 'base' (the VAE's Gaussian),
    'gmm' and 'ncp' (NCP on the GMM). The GMM prior row reads 'gmm'."""
    experiment = definitions.experiment("single-latent")
    records = []
    for seed, (b, n, g, ng) in enumerate([(90.0, 89.0, 88.0, 86.0), (92.0, 90.0, 91.0, 88.0)]):
        records.append(RunRecord(seed, "single", "", "", f"/runs/s{seed}", status="complete",
                                 evaluation=_evaluation(b, n, 20.0, 18.0)))
        gmm_run = _evaluation(b, ng, 20.0, 15.0)
        gmm_run["gmm"] = {"nll_nats": g, "nll_std_error": 0.3, "fd": 17.0}
        gmm_run["nll_difference_gmm_minus_base_std_error"] = 0.02
        gmm_run["nll_difference_ncp_minus_gmm_std_error"] = 0.03
        records.append(RunRecord(seed, "single", "gmm", "", f"/runs/s{seed}-gmm", status="complete",
                                 evaluation=gmm_run))
    summary = summarize(experiment, records, quick=False)
    rows = {r["label"]: r for r in summary["rows"]}
    assert rows["GMM prior"]["metrics"]["nll_nats"]["values"] == [88.0, 91.0]
    assert rows["GMM prior"]["metrics"]["fd"]["values"] == [17.0, 17.0]
    assert rows["NCP (GMM base)"]["metrics"]["nll_nats"]["values"] == [86.0, 88.0]
    comparisons = {(c["a"], c["b"]): c["metrics"]["nll_nats"] for c in summary["comparisons"]}
    gmm_vs_gaussian = comparisons[("Gaussian prior", "GMM prior")]
    assert gmm_vs_gaussian["differences"] == [-2.0, -1.0]
    assert gmm_vs_gaussian["se_within"] == pytest.approx(math.sqrt(2 * 0.02 ** 2) / 2)
    ncp_vs_gmm = comparisons[("GMM prior", "NCP (GMM base)")]
    assert ncp_vs_gmm["differences"] == [-2.0, -3.0]
    assert ncp_vs_gmm["se_within"] == pytest.approx(math.sqrt(2 * 0.03 ** 2) / 2)
    # NCP on the Gaussian and NCP on the GMM come from two runs: no shared paired error.
    ncp_pair = comparisons.get(("NCP (Gaussian base)", "NCP (GMM base)"))
    if ncp_pair is not None:
        assert ncp_pair["se_within"] == pytest.approx(math.sqrt(2 * (0.4 ** 2 + 0.4 ** 2)) / 2)


def test_tables_show_log_z_ess_and_flag_unreliable_estimates():
    experiment = definitions.experiment("single-latent")
    records = []
    for seed, ess in enumerate([30.0, 9000.0]):
        evaluation = _evaluation(90.0, 89.0, 20.0, 18.0)
        evaluation["log_z_estimate"] = {"ess": ess, "num_samples": 10_000}
        records.append(RunRecord(seed, "single", "", "", f"/runs/s{seed}", status="complete", evaluation=evaluation))
    summary = summarize(experiment, records, quick=False)
    rows = {r["label"]: r for r in summary["rows"]}
    assert rows["NCP (Gaussian base)"]["log_z_ess"] == [30.0, 9000.0] and "log_z_ess" not in rows["Gaussian prior"]
    table = "\n".join(report._rows_table(summary["rows"], experiment.metrics))
    assert "| 30 (unreliable) |" in table
    records[0].evaluation["log_z_estimate"]["ess"] = 8000.0
    table = "\n".join(report._rows_table(summarize(experiment, records, quick=False)["rows"], experiment.metrics))
    assert "| 8,000 |" in table and "unreliable" not in table


def test_complete_evaluation_needs_both_priors_nll_and_fd():
    assert complete_evaluation(_evaluation(1.0, 1.0, 1.0, 1.0))
    partial = _evaluation(1.0, 1.0, 1.0, 1.0)
    del partial["ncp"]["fd"]
    assert not complete_evaluation(partial)
    assert not complete_evaluation({**_evaluation(1.0, 1.0, 1.0, 1.0), "base": {"nll_nats": float("nan"), "fd": 1}})
    assert not complete_evaluation(None)


# --- the resume decision (dry run: nothing is trained) --------------------------------------------------


@pytest.mark.slow
def test_a_run_with_a_checkpoint_resumes_one_without_starts_over(tmp_path):
    experiment = definitions.experiment("single-latent")
    training = experiment.training("single")
    train_args = experiment.quick.train_args + training.train_args
    run_dir = tmp_path / f"single-{digest(train_args + (provenance.code_fingerprint(),))}" / "seed0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    said = []
    records = Runner(str(tmp_path), dry_run=True, say=said.append).run(experiment, [0], quick=True)
    assert records[0].status == "planned" and "--resume" not in records[0].commands[-1]
    (run_dir / "checkpoints" / "latest.pt").write_bytes(b"")
    records = Runner(str(tmp_path), dry_run=True, say=said.append).run(experiment, [0], quick=True)
    assert records[0].commands[-1].split()[3:5] == ["--resume", str(run_dir)]
    assert run_dir.is_dir()  # a dry run deletes nothing


@pytest.mark.slow
def test_runs_of_other_code_are_not_reused(tmp_path, monkeypatch):
    """The run directory's name hashes the code's fingerprint: a finished run
    made by other code is not found, so it is neither reused nor resumed."""
    experiment = definitions.experiment("single-latent")
    monkeypatch.setattr(runner, "code_fingerprint", lambda: "code-a")
    first = Runner(str(tmp_path), dry_run=True, say=lambda _: None).run(experiment, [0], quick=True)[0].run_dir
    again = Runner(str(tmp_path), dry_run=True, say=lambda _: None).run(experiment, [0], quick=True)[0].run_dir
    monkeypatch.setattr(runner, "code_fingerprint", lambda: "code-b")
    other = Runner(str(tmp_path), dry_run=True, say=lambda _: None).run(experiment, [0], quick=True)[0].run_dir
    assert first == again and other != first


def test_code_fingerprint_follows_the_code_not_the_docs():
    fingerprint = provenance.code_fingerprint()
    assert len(fingerprint) == 12 and fingerprint == provenance.code_fingerprint()


def test_copies_of_a_run_leave_out_its_stage2_results_and_go_when_it_changes(tmp_path):
    run = tmp_path / "seed0"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.json", "checkpoints/latest.pt", "checkpoints/ncp.pt", "samples.png"):
        (run / name).write_text(name)
    (run / "metrics.json").write_text(json.dumps({"status": "complete", "ncp": {}, "evaluation": {"base": {}}}))
    runner.copy_run(str(run), str(tmp_path / "seed0-gmm-1"), keep_stage2=False)
    copied = tmp_path / "seed0-gmm-1"
    assert (copied / "checkpoints" / "latest.pt").is_file() and not (copied / "checkpoints" / "ncp.pt").exists()
    assert not (copied / "samples.png").exists()
    assert json.loads((copied / "metrics.json").read_text()) == {"status": "complete"}
    runner.copy_run(str(run), str(tmp_path / "seed0.evaluate"), keep_stage2=True)
    assert (tmp_path / "seed0.evaluate" / "checkpoints" / "ncp.pt").is_file()
    (tmp_path / "seed0-gmm-1.experiment.json").write_text("{}")
    (tmp_path / "seed01").mkdir()  # another seed's run: not derived from seed0
    runner._remove_derived(str(run))
    assert sorted(os.listdir(tmp_path)) == ["seed0", "seed01"]


def test_the_json_of_evaluate_is_found_after_other_output(tmp_path):
    out = tmp_path / "stdout"
    out.write_text('a warning {not json}\n{\n  "base": {"nll_nats": 1.0}\n}\n')
    assert runner._json_from_output(str(out)) == {"base": {"nll_nats": 1.0}}
    out.write_text("no json at all")
    assert runner._json_from_output(str(out)) is None


def test_a_sampler_setting_is_evaluated_once_then_reused(tmp_path, monkeypatch):
    """The sampler job with a stand-in for ncpfast.evaluate that prints its arguments in the JSON."""
    fake = tmp_path / "fake_evaluate.py"
    fake.write_text("import json, sys\nprint('loading...')\n"
                    "print(json.dumps({'argv': sys.argv[1:], 'generated_images': 100,\n"
                    "  'base': {'nll_nats': 90.0, 'fd': 30.0, 'sampling_seconds': 1.0},\n"
                    "  'ncp': {'nll_nats': 89.0, 'fd': 25.0, 'sampling_seconds': 4.0}}))\n")
    monkeypatch.setattr(commands, "python_command", lambda program: [sys.executable, str(fake)])
    run = tmp_path / "runs" / "seed3"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "ncp.pt").write_text("")
    primary = RunRecord(3, "sampler", "", "", str(run), status="complete")
    said = []
    first = Runner(str(tmp_path / "runs"), say=said.append)._sampler(
        primary, definitions.Sampler("sir", "group", 50), ("--num-generated", "100"))
    assert first.status == "complete" and not first.reused and first.peak_rss_mib > 0
    assert first.evaluation["argv"] == [f"{run}.evaluate", "--json", "--seed", "3", "--method", "sir",
                                        "--num-proposals", "50", "--mode", "group", "--num-generated", "100"]
    assert (run.parent / "seed3.evaluate" / "checkpoints" / "ncp.pt").is_file()  # evaluate sees a copy
    again = Runner(str(tmp_path / "runs"), say=said.append)._sampler(
        primary, definitions.Sampler("sir", "group", 50), ("--num-generated", "100"))
    assert again.reused and again.evaluation == first.evaluation and again.seconds_now == 0
    assert first.code and again.code == first.code  # the commit that made it, kept when reused
    with pytest.raises(ValueError, match="has no option --no-such-option"):
        Runner(str(tmp_path / "runs"), say=said.append)._sampler(
            primary, definitions.Sampler("sir", "joint", 50), ("--no-such-option", "1"))


# --- end to end --------------------------------------------------------------------------------------------


def _experiments(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-m", "ncpfast.experiments", *args], capture_output=True, text=True,
                            env=env, timeout=1800)
    assert result.returncode == 0, f"experiments failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.mark.slow
def test_quick_single_latent_end_to_end_then_reused(tmp_path):
    out, docs = tmp_path / "out", tmp_path / "docs" / "results.md"
    docs.parent.mkdir()
    docs.write_text("# Results\n\nkept as it is\n")
    args = ["single-latent", "--quick", "--out", str(out), "--docs", str(docs)]
    first = _experiments(*args)
    assert "training:" in first

    result = json.loads((out / "single-latent.json").read_text())
    assert result["experiment"] == "single-latent" and result["quick"] and result["seeds"] == [0]
    runs = {(r["training"], r["variant"]): r for r in result["runs"]}
    primary = runs[("single", "")]
    assert primary["status"] == "complete" and not primary["reused"] and primary["seconds_now"] > 0
    assert primary["code"] == [provenance.code_version()]
    metrics = json.loads((tmp_path / primary["run_dir"] / "metrics.json").read_text())["evaluation"]
    rows = {r["label"]: r for r in result["summary"]["rows"]}
    assert rows["Gaussian prior"]["metrics"]["nll_nats"]["values"] == [metrics["base"]["nll_nats"]]
    assert rows["NCP (Gaussian base)"]["metrics"]["fd"]["values"] == [metrics["ncp"]["fd"]]
    diff = {(c["a"], c["b"]): c for c in result["summary"]["comparisons"]}[("Gaussian prior", "NCP (Gaussian base)")]
    # the difference of the float32 means vs the mean of the differences
    assert diff["metrics"]["nll_nats"]["mean"] == pytest.approx(metrics["nll_difference_ncp_minus_base"], abs=1e-3)
    assert diff["metrics"]["nll_nats"]["se"] == pytest.approx(metrics["nll_difference_std_error"])
    assert runs[("single", "gmm")]["status"] == "complete"

    for figure in ("single-latent-bars.png", "single-latent-samples.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    text = docs.read_text()
    assert text.startswith("# Results\n\nkept as it is\n")
    begin, end = report.begin_marker("single-latent"), report.end_marker("single-latent")
    assert (begin, end) == ("<!-- experiment:single-latent:begin -->", "<!-- experiment:single-latent:end -->")
    section = text[text.index(begin):text.index(end)]
    assert "python -m ncpfast.experiments single-latent --quick" in section and result["git"]["commit"][:12] in section
    assert "python -m ncpfast.train" in section and "Gaussian prior" in section
    assert "](../out/single-latent-bars.png)" in section  # figures linked relative to the markdown file

    stamp = os.stat(tmp_path / primary["run_dir"] / "metrics.json").st_mtime_ns
    second = _experiments(*args)
    assert "training:" not in second and "stage 2 of:" not in second and "reused:" in second
    assert os.stat(tmp_path / primary["run_dir"] / "metrics.json").st_mtime_ns == stamp
    again = json.loads((out / "single-latent.json").read_text())
    done = [r for r in again["runs"] if r["status"] == "complete"]
    assert done and all(r["reused"] and r["seconds_now"] == 0 and r["code"] for r in done)
    assert again["summary"]["rows"] == result["summary"]["rows"]
    assert docs.read_text().count("<!-- experiment:single-latent:begin -->") == 1


def test_langevin_settings_tune_their_step_size_and_report_it():
    langevin = definitions.Sampler("langevin", "group", 20)
    arguments = langevin.cli_args()
    assert arguments[arguments.index("--step-size") + 1] == "auto"
    assert langevin.sample_args(0.03)[-2:] == ("--step-size", "0.03") and "auto" not in langevin.sample_args(0.03)
    assert "--step-size" not in definitions.Sampler("sir", "group", 5).cli_args()
    row = {"label": langevin.label, "status": "complete", "reason": "", "seeds": [0, 1], "step_sizes": [0.1, 0.03],
           "metrics": {"fd": {"mean": 1.0, "sd": 0.1, "values": [0.9, 1.1], "run_se": [None, None]}}}
    assert f"| {langevin.label} (step size 0.1, 0.03) |" in "\n".join(report._rows_table([row], ["fd"]))
    row["step_size_at_grid_edge"] = True
    assert "a larger one might do better" in "\n".join(report._rows_table([row], ["fd"]))


def test_a_child_s_peak_memory_is_its_own_not_this_process_s(tmp_path):
    """The experiments train in their own process, then start the evaluations whose
    peak memory the sampler table reports. A child's ru_maxrss also holds the
    high-water mark of the memory it leaves at exec (this process's, when it is
    spawned by vfork): the launcher between them keeps that out."""
    held = bytearray(600 * 2**20)  # this process: 600 MiB more, touched
    for i in range(0, len(held), 4096):
        held[i] = 1
    child = [sys.executable, "-c", "x = bytearray(60 * 2**20); x[::4096] = b'1' * len(x[::4096])"]
    done = runner.execute(child, str(tmp_path / "log"))
    assert done.returncode == 0
    assert 60 < done.peak_rss_mib < 300, done.peak_rss_mib  # the child's 60 MiB and an interpreter, not 600
    del held
