"""The CLI end to end, and every kind of bad input: one line, exit code 2, no result file."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mubench.cli import parse_method_args
from mubench.errors import UserError
from mubench.results import load_result

REPO = Path(__file__).resolve().parents[1]


def one_line_error(done, *fragments):
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mubench: error:"), done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_run_end_to_end(cli, tmp_path):
    done = cli("run", "--task", "digits", "--method", "salun", "--deletion-ratio", "0.02", "--seed", "87",
               "--method-args", "epochs=4,lr_decay_epochs=[2,3]", "--device", "cpu", "--output-path", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "forget_acc" in done.stdout and "overall_score" in done.stdout  # the summary table on stdout
    assert "unlearning: salun on digits/cnn" in done.stderr                  # logs on stderr
    [path] = tmp_path.glob("*.json")
    result = load_result(path)
    given = json.dumps({"epochs": 4, "lr_decay_epochs": [2, 3]}, sort_keys=True).encode()
    assert path.name == f"digits__cnn__salun__df2__seed87__args{hashlib.sha256(given).hexdigest()[:8]}.json"  # not the default run's
    assert result["config"]["method_args"]["lr_decay_epochs"] == [2, 3]
    assert result["split"]["n_forget"] == 29 and result["config"]["device"] == "cpu"
    assert result["environment"]["torch"] and result["task_card"]["sha256"]
    checked = cli("validate", path)
    assert checked.returncode == 0 and checked.stdout.strip() == f"{path}: ok (result)", checked.stderr


def test_train_then_list(cli):
    done = cli("train", "--task", "digits")
    assert done.returncode == 0, done.stderr
    assert "test_acc" in done.stdout
    models = cli("list", "models", "--task", "digits")
    header, row = models.stdout.splitlines()
    assert header.split() == ["task", "model", "parameters", "counted", "from", "architecture", "backbone", "original"]
    assert row.split() == ["digits", "cnn", "(default)", "151.3K", "built", "here", "small_cnn", "-", "train"]


@pytest.mark.parametrize("args, fragments", [
    (["run", "--task", "digts", "--method", "salun"],
     ["unknown task 'digts'", "Did you mean 'digits'?", "Known: biofact, breast_cancer, cifar10, cifar100, ddi2013, digits"]),
    (["run", "--task", "digits", "--method", "salunn"], ["unknown method 'salunn'", "Did you mean 'salun'?", "neggrad"]),
    (["run", "--task", "digits", "--method", "salun", "--model", "resnet"], ["unknown model for task 'digits' 'resnet'", "Known: cnn"]),
    (["run", "--task", "digits", "--method", "salun", "--deletion-ratio", "5"], ["--deletion-ratio", "strictly between 0 and 1"]),
    (["run", "--task", "digits", "--method", "salun", "--deletion-ratio", "abc"], ["expected a number"]),
    (["run", "--task", "digits", "--method", "salun", "--deletion-ratio", "0.15"], ["0.15 is not one of task 'digits''s ratios"]),
    (["run", "--task", "digits", "--method", "salun", "--method-args", "lr"], ["--method-args: expected key=value"]),
    (["run", "--task", "digits", "--method", "salun", "--method-args", "lr=[0.1"], ["cannot read the value of lr"]),
    (["run", "--task", "digits", "--method", "salun", "--time-budget", "soon"], ["--time-budget 'soon'"]),
    (["run", "--task", "digits", "--method", "salun", "--device", "tpu"], ["unknown device 'tpu'"]),
    (["list", "things"], ["invalid choice: 'things'"]),
    (["run", "--task", "digits"], ["the following arguments are required: --method"]),
])
def test_bad_input_is_one_line(cli, tmp_path, args, fragments):
    done = cli(*args, "--output-path", tmp_path) if args[0] == "run" and "--method" in args else cli(*args)
    one_line_error(done, *fragments)
    assert not list(tmp_path.glob("*.json"))


def test_unwritable_output_folder(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    one_line_error(cli("run", "--task", "digits", "--method", "salun", "--output-path", blocker / "out"),
                   "output folder", "is not writable")


def test_malformed_card_in_include_path(cli, tmp_path):
    card = yaml.safe_load((REPO / "tasks" / "digits" / "digits.yaml").read_text())
    card.update(task="broken", deletion={"ratios": "many", "split_seed": 0})
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(card))
    done = cli("run", "--task", "broken", "--method", "salun", "--include-path", tmp_path, "--output-path", tmp_path / "out")
    one_line_error(done, "broken.yaml", "key 'deletion.ratios'", "'many' is not of type 'array'")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.json"))


def test_validate_reports_bad_files(cli, tmp_path):
    bad = tmp_path / "result.json"
    bad.write_text(json.dumps({"task": "digits"}))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    done = cli("validate", bad, broken, REPO / "tasks" / "digits" / "digits.yaml")
    assert done.returncode == 2
    assert "digits.yaml: ok (task card 'digits')" in done.stdout
    assert "'schema_version' is a required property" in done.stderr and "not valid JSON" in done.stderr


@pytest.mark.parametrize(("sent", "code", "said"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_interrupted_run_leaves_no_result(tmp_path, mubench_home, sent, code, said):
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "mubench", "run", "--task", "digits", "--method", "retrain",
                                "--output-path", str(out)], stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    for line in process.stderr:
        if "unlearning: retrain" in line:
            break
    time.sleep(0.5)
    process.send_signal(sent)
    rest = process.stderr.read()
    assert process.wait(timeout=600) == code
    assert rest.strip().splitlines()[-1] == f"mubench: {said}; no result written" and "Traceback" not in rest
    assert list(out.iterdir()) == []


def test_an_interrupt_inside_generated_code_still_exits_130_under_python_m(tmp_path):
    # CPython marks a KeyboardInterrupt raised inside exec/eval of a string (a dataclass being made during an
    # import) as unhandled, and `python -m` then dies by SIGINT after main has returned 130; timing-free here
    (tmp_path / "interrupted_probe.py").write_text(
        "from mubench import cli\n"
        "def interrupted(args):\n"
        "    exec('raise KeyboardInterrupt')\n"
        "cli.COMMANDS['list'] = interrupted\n"
        "raise SystemExit(cli.main(['list', 'tasks']))\n")
    done = subprocess.run([sys.executable, "-m", "interrupted_probe"], cwd=tmp_path, capture_output=True, text=True,
                          env=os.environ.copy(), timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == "mubench: interrupted; no result written"


def test_version_and_verbosity_after_the_subcommand(cli):
    from mubench import __version__

    shown = cli("--version")
    assert shown.returncode == 0 and shown.stdout.strip() == f"mubench {__version__}"
    quiet = cli("list", "metrics", "-q")
    assert quiet.returncode == 0 and "acc" in quiet.stdout
    for flags in (["-v", "list", "methods"], ["list", "methods", "-v"]):
        loud = cli(*flags)
        assert loud.returncode == 0 and "plugin 'methods' (package mubench" in loud.stderr, flags  # -v: where each plugin comes from
    assert "plugin 'methods'" not in cli("list", "methods").stderr
    both = cli("list", "methods", "-q", "-v")
    assert both.returncode == 2 and both.stderr.count("\n") == 1 and "not allowed with" in both.stderr


def test_parse_method_args():
    assert parse_method_args("lr=0.01,epochs=3,lr_decay_epochs=[3, 5],relabel=shift,flag=true") == {
        "lr": 0.01, "epochs": 3, "lr_decay_epochs": [3, 5], "relabel": "shift", "flag": True}
    assert parse_method_args("") == {}
    with pytest.raises(UserError):
        parse_method_args("=3")


def test_file_names_say_what_makes_a_run_distinct_and_only_the_same_configuration_replaces_one(cli, tmp_path):
    from mubench.results import cell_filename, lora_tag

    base = ("digits", "cnn", "neggrad", 0.05, 42)
    assert cell_filename(*base) == "digits__cnn__neggrad__df5__seed42.json"
    assert cell_filename(*base, lora=lora_tag(8, None, 8)) == "digits__cnn__neggrad__df5__seed42__lora-r8.json"
    assert cell_filename(*base, lora=lora_tag(8, None, 16)).endswith("__lora-r8-a16.json")
    assert cell_filename(*base, lora=lora_tag(None, 0.1, None)).endswith("__lora-f0.1.json")
    assert cell_filename(*base, time_budget="none").endswith("__budget-none.json")
    assert cell_filename(*base, time_budget=30.0).endswith("__budget-30s.json")
    assert cell_filename(*base, split_seed=0, original_seed=0).endswith("__split0__orig0.json")  # 0 is a seed too
    card = yaml.safe_load((REPO / "tasks" / "digits" / "digits.yaml").read_text())
    card.update(task="digits_quick", train={**card["train"], "epochs": 2})
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "quick.yaml").write_text(yaml.safe_dump(card))
    run = ("run", "--task", "digits_quick", "--method", "neggrad", "--include-path", tmp_path / "cards", "--output-path", tmp_path)
    first, again = cli(*run), cli(*run)
    assert first.returncode == again.returncode == 0, again.stderr
    assert "replaced" not in first.stdout and "(replaced an earlier result of the same configuration)" in again.stdout
    lora = cli(*run, "--peft", "lora", "--lora-rank", "2")
    assert lora.returncode == 0, lora.stderr
    names = sorted(path.name for path in tmp_path.glob("*.json"))
    assert names == ["digits_quick__cnn__neggrad__df5__seed42.json", "digits_quick__cnn__neggrad__df5__seed42__lora-r2.json"]
    card["methods"]["neggrad"] = {"lr": 0.001}  # the card now gives the method another learning rate
    (tmp_path / "cards" / "quick.yaml").write_text(yaml.safe_dump(card))
    before = (tmp_path / names[0]).read_text()
    refused = cli(*run)
    [line] = refused.stderr.strip().splitlines()[-1:]
    assert refused.returncode == 2 and "holds a result of another configuration" in line
    assert "unlearning:" not in refused.stderr  # refused before any work
    assert "differs in task_card)" in line and (tmp_path / names[0]).read_text() == before
