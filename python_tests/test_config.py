"""ncpfast.config: sections that check themselves, presets as changes to a parent,
config.json in both formats, and one flag per concept in every program."""
import argparse
import dataclasses
import json
import pathlib

import pytest

from ncpfast.config import (
    PRESETS,
    Config,
    EvaluationConfig,
    add_config_flags,
    from_dotted,
    given_values,
    load_config,
    resolve_config,
    save_config,
    to_dotted,
    with_changes,
)
from ncpfast.config.options import PROGRAMS
from ncpfast.config.tree import from_json_values, leaves

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def test_format1_config_json_of_every_preset_loads_as_that_preset():
    """config_format1_presets.json: each preset's flat config.json as the format-1
    code wrote it (one flat dataclass, each preset spelling out its values). Read
    today, each is the preset resolved through its parents: the presets kept their
    values and old run directories keep theirs."""
    old = json.loads((FIXTURES / "config_format1_presets.json").read_text())
    assert set(old) == set(PRESETS)
    for name, values in old.items():
        assert from_json_values(values) == resolve_config(name), name


def test_format1_file_loads_with_its_own_values(tmp_path):
    values = json.loads((FIXTURES / "config_format1_presets.json").read_text())["tiny"]
    values.update(ncp_epochs=7, eval_iw_samples=11, output="bernoulli", model="nvae", seed=5, a_field_gone=1)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    config = load_config(str(path))
    assert (config.stage2.epochs, config.evaluation.iw_samples, config.run.seed) == (7, 11, 5)
    assert config.model.nvae.latent_channels == 8 and config.model.likelihood == "bernoulli"


def test_saved_config_round_trips_and_names_its_format(tmp_path):
    config = resolve_config("celebahq256", {"stage2.epochs": 3, "sampler.mode": "joint", "run.seed": 9})
    path = tmp_path / "config.json"
    save_config(config, str(path))
    saved = json.loads(path.read_text())
    assert saved["config_format"] == 2 and saved["stage2"]["epochs"] == 3 and saved["model"]["nvae"]["num_nf"] == 2
    assert load_config(str(path)) == config


def test_bad_config_files_name_what_is_wrong(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"config_format": 2, "stage2": {"epochz": 3}}))
    with pytest.raises(ValueError, match=r"stage2: unknown setting\(s\) \['epochz'\]"):
        load_config(str(path))
    path.write_text(json.dumps({"config_format": 7}))
    with pytest.raises(ValueError, match="config_format 7"):
        load_config(str(path))
    path.write_text(json.dumps({"config_format": 2, "stage1": {"epochs": 0}}))
    with pytest.raises(ValueError, match="stage1.epochs must be >= 1, got 0"):
        load_config(str(path))


@pytest.mark.parametrize("change, message", [
    ({"model.kind": "transformer"}, "model.kind must be one of nvae, mlp, conv"),
    ({"stage1.amp": "fp8"}, "stage1.amp must be one of"),
    ({"stage2.log_z_proposal": "uniform"}, "stage2.log_z_proposal must be one of prior, aggregate-posterior"),
    ({"evaluation.num_generated": 1}, "num_generated >= 2"),
    ({"evaluation.temperature": 0.0}, "temperature"),
    ({"sampler.mode": "sideways"}, "sampling mode"),
    ({"data.dataset": "imagenet"}, "data.dataset must be one of"),
    ({"model.nvae.num_nf": -1}, "model.nvae.num_nf must be >= 0"),
    ({"stage1.ema_decay": 1.0}, r"stage1.ema_decay must be in \[0, 1\)"),
    ({"stage2.lr": 0.0}, "stage2.lr must be > 0"),
])
def test_every_section_checks_its_values(change, message):
    with pytest.raises(ValueError, match=message):
        resolve_config("default", change)


def test_unknown_settings_and_presets_are_named():
    with pytest.raises(ValueError, match=r"unknown config setting\(s\) \['stage2.epoch'\]"):
        resolve_config("default", {"stage2.epoch": 3})
    with pytest.raises(ValueError, match="unknown preset 'huge'; choose one of .*default"):
        resolve_config("huge")


def test_presets_are_changes_to_their_parents():
    for name, preset in PRESETS.items():
        assert preset.parent is None or preset.parent in PRESETS, name
        parent = resolve_config(preset.parent) if preset.parent else Config()
        child = to_dotted(resolve_config(name))
        differ = {k for k, v in to_dotted(parent).items() if child[k] != v} - {"run.preset"}
        assert differ <= set(preset.changes), (name, differ - set(preset.changes))
        for key, value in preset.changes.items():
            assert child[key] == value, (name, key)
    # a child's change wins over its parent's
    assert resolve_config("default").stage2.epochs == 50 and resolve_config("mnist-single").stage2.epochs == 10


def test_with_changes_checks_again_and_leaves_the_original():
    config = resolve_config("tiny")
    changed = with_changes(config, stage1__max_steps=10)
    assert changed.stage1.max_steps == 10 and config.stage1.max_steps == 0
    with pytest.raises(ValueError, match="stage1.max_steps must be >= 0"):
        with_changes(config, stage1__max_steps=-1)
    assert from_dotted({}, config) == config


def _parser(program):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, program)
    return parser


def _flags(program) -> dict:
    """{flag: dest} of a program's config flags, the hidden earlier spellings included."""
    return {option: action.dest for action in _parser(program)._actions for option in action.option_strings
            if option.startswith("--") and option != "--help"}


def test_one_flag_per_concept_across_the_programs():
    by_program = {program: _flags(program) for program in PROGRAMS}
    # a flag means one setting (the field of one name) wherever it appears
    for flag in set().union(*by_program.values()):
        names = {dest.rsplit(".", 1)[-1] for flags in by_program.values() for f, dest in flags.items() if f == flag}
        assert len(names) == 1, (flag, names)
    # what train and evaluate both take has one spelling: the five pairs
    for flag in ("--iw-samples", "--iw-chunk", "--num-generated", "--num-proposals", "--mode", "--log-z-samples"):
        assert flag in by_program["train"] and flag in by_program["evaluate"], flag
    for flag in ("--num-proposals", "--mode", "--steps", "--step-size", "--temperature", "--readjust-bn"):
        assert flag in by_program["sample"], flag
    # every declared setting with a flag reaches at least one program
    for leaf in leaves():
        if leaf.option and leaf.option.flag:
            assert any(leaf.option.flag in by_program[p] for p in leaf.option.programs), leaf.path


def test_earlier_flag_spellings_still_work_but_are_not_listed():
    parser = _parser("train")
    old = parser.parse_args(["--eval-iw-samples", "7", "--ncp-num-proposals", "9", "--output", "logistic_mixture",
                             "--ncp-log-z-samples", "500", "--eval-chunk", "4"])
    new = parser.parse_args(["--iw-samples", "7", "--num-proposals", "9", "--likelihood", "logistic_mixture",
                             "--log-z-samples", "500", "--iw-chunk", "4"])
    assert given_values(old) == given_values(new) == {
        "evaluation.iw_samples": 7, "sampler.num_proposals": 9, "model.likelihood": "logistic_mixture",
        "stage2.log_z_samples": 500, "evaluation.iw_chunk": 4}
    assert "--eval-iw-samples" not in parser.format_help()


def test_flags_not_given_leave_the_preset_to_decide():
    parser = _parser("train")
    assert given_values(parser.parse_args([])) == {}
    config = resolve_config("default", given_values(parser.parse_args(["--no-kl-balance", "--ncp-epochs", "3"])))
    assert config.stage2.epochs == 3 and config.stage1.kl_balance is False
    assert config.evaluation.iw_samples == resolve_config("default").evaluation.iw_samples


def test_choices_are_checked_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        _parser("evaluate").parse_args(["--log-z-proposal", "uniform"])
    assert "invalid choice: 'uniform'" in capsys.readouterr().err


def test_evaluation_config_checks_fid_weights_only_when_asked(tmp_path):
    config = EvaluationConfig(fid_weights=str(tmp_path / "missing.pth"))  # a saved config from another machine
    with pytest.raises(ValueError, match="fid_weights: no file at"):
        config.check_files()
    assert dataclasses.replace(config, fid_weights="").check_files() is None


def test_errors_name_flags_for_command_line_users():
    from ncpfast.config import in_flag_terms

    assert (in_flag_terms("stage2.base gmm needs model.kind mlp; evaluation.iw_samples must be >= 1")
            == "--ncp-base gmm needs --model mlp; --iw-samples must be >= 1")
    assert in_flag_terms("model.nvae.num_nf must be >= 0, got -1") == "--num-nf must be >= 0, got -1"
    assert in_flag_terms("evaluation.tune_step_size is set from code") == "evaluation.tune_step_size is set from code"
    with pytest.raises(ValueError) as caught:
        resolve_config("default", {"stage2.epochs": 0})
    assert "--ncp-epochs must be >= 1, got 0" in in_flag_terms(str(caught.value))
