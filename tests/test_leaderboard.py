"""The leaderboard: validated results grouped only when comparable, aggregated over seeds, ranked, written as JSON
with its schema and as a static page that a real browser (headless Chromium) shows without errors."""
import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from mubench.api.card import schema_errors
from mubench.errors import UserError
from mubench.leaderboard import build, collect, competition_ranks, markdown, summarise, write_site

SEEDS = (42, 87, 21)


@pytest.fixture(scope="session")
def results_folder(run_digits, tmp_path_factory):
    """finetune and neggrad on three seeds, original on one, neggrad on another deletion set (split seed 1), each with
    the retrained reference; plus a tampered copy and a duplicate in a subfolder."""
    folder = tmp_path_factory.mktemp("board_results")
    for method, seeds, options in (("finetune", SEEDS, {}), ("neggrad", SEEDS[:2], {}), ("original", SEEDS[:1], {}),
                                   ("neggrad", SEEDS[:1], {"split_seed": 1})):
        for seed in seeds:
            _, path = run_digits(method, seed=seed, reference="retrain", **options)
            shutil.copy(path, folder / path.name)
    other = folder / "submitted"
    other.mkdir()
    shutil.copy(folder / "digits__cnn__finetune__df5__seed42.json", other / "duplicate.json")
    tampered = json.loads((folder / "digits__cnn__neggrad__df5__seed87.json").read_text())
    tampered["results"]["unlearned"]["forget_acc"] = 1.5
    (other / "tampered.json").write_text(json.dumps(tampered))
    return folder


@pytest.fixture(scope="session")
def board(results_folder, registry):
    return build(*collect([results_folder], registry), registry)


def rows_of(board, method, split_seed=0):
    return [row for row in board["tasks"]["digits"]["rows"] if row["method"] == method and row["split_seed"] == split_seed]


def test_rows_aggregate_seeds_with_mean_std_and_ci(board, results_folder):
    [row] = rows_of(board, "finetune")
    assert row["seeds"] == sorted(SEEDS) and len(row["files"]) == 3
    values = [json.loads((results_folder / f"digits__cnn__finetune__df5__seed{s}.json").read_text())["results"]["unlearned"]["test_acc"]
              for s in SEEDS]
    summary = row["values"]["test_acc"]
    assert summary["mean"] == pytest.approx(np.mean(values), abs=1e-12)
    assert summary["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert summary["ci95"] == pytest.approx(stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3), abs=1e-12)
    assert summary["n"] == 3
    assert {"overall_score", "deep_unlearn_score", "unlearn_s", "gap_test_acc"} <= set(row["values"])


def test_different_deletion_sets_are_never_averaged_and_ranks_stay_within_one(board):
    [default] = rows_of(board, "neggrad")
    [other] = rows_of(board, "neggrad", split_seed=1)
    assert default["forget_sha256"] != other["forget_sha256"] and default["deletion_set"] != other["deletion_set"]
    assert default["seeds"] == sorted(SEEDS[:2]) and other["seeds"] == [42]
    assert other["rank_overall"] == 1 and other["rank_gap"] == 1  # alone in its deletion set
    group = [row for row in board["tasks"]["digits"]["rows"] if row["deletion_set"] == default["deletion_set"]]
    assert {row["method"] for row in group} == {"finetune", "neggrad", "original"}
    by_score = sorted(group, key=lambda row: -row["values"]["overall_score"]["mean"])
    assert [row["rank_overall"] for row in by_score] == sorted(row["rank_overall"] for row in group)
    by_gap = sorted(group, key=lambda row: row["values"]["deep_unlearn_score"]["mean"])
    assert by_gap[0]["rank_gap"] == 1


def test_results_from_other_bits_of_theta_0_are_never_averaged_or_ranked_together(results_folder, registry, tmp_path):
    """Two machines of other CPU kinds train other θ₀ bits from one seed: their results stay in rows of their own."""
    folder = tmp_path / "two_machines"
    shutil.copytree(results_folder, folder, ignore=shutil.ignore_patterns("submitted"))
    for path in sorted(folder.glob("digits__cnn__finetune__*.json"))[:2]:  # two of the three seeds, "made elsewhere"
        result = json.loads(path.read_text())
        result["model_info"]["original_sha256"] = "0" * 64
        (folder / "elsewhere").mkdir(exist_ok=True)
        (folder / "elsewhere" / path.name).write_text(json.dumps(result))
        path.unlink()
    board = build(*collect([folder], registry, read_data=False), registry)
    finetune = [row for row in board["tasks"]["digits"]["rows"] if row["method"] == "finetune"]
    assert sorted(len(row["seeds"]) for row in finetune) == [1, 2]
    here, elsewhere = sorted(finetune, key=lambda row: row["original_sha256"] == "0" * 64)
    assert elsewhere["original_sha256"] == "0" * 64 and here["original_sha256"] not in (None, "0" * 64)
    assert here["deletion_set"] != elsewhere["deletion_set"] and elsewhere["rank_gap"] == 1  # alone in its group
    # the deletion-capacity table pairs each row with the other ratios' rows of its own θ₀
    rows = board["tasks"]["digits"]["rows"]
    for ratio, mark in ((0.01, 0.25), (0.1, 0.75)):
        for row in [row for row in rows if row["deletion_ratio"] == 0.05]:
            other = json.loads(json.dumps(row))
            other["deletion_ratio"] = ratio
            other["values"]["test_acc"]["mean"] = mark + (0.125 if row is elsewhere else 0)
            rows.append(other)
    lines = [line for line in markdown(board, registry).split("**Deletion capacity")[1].splitlines() if "`finetune`" in line]
    assert sorted(line.split("|")[2].strip()[:5] for line in lines) == ["0.250", "0.375"]


def test_rows_carry_the_taxonomy_and_the_board_groups_ranks_by_facet(board, registry):
    rows = board["tasks"]["digits"]["rows"]
    for row in rows:
        assert row["taxonomy"] == registry.method(row["method"]).taxonomy.as_dict()
    corruption = board["tasks"]["digits"]["by_facet"]["corruption"]
    assert set(corruption) == {"gradient", "none"}  # neggrad; finetune and original
    assert corruption["gradient"]["rows"] == 2 and corruption["none"]["rows"] == 2
    gradient = [row["rank_gap"] for row in rows if row["method"] == "neggrad"]
    assert corruption["gradient"]["mean_rank_gap"] == pytest.approx(sum(gradient) / len(gradient))
    assert set(board["tasks"]["digits"]["by_facet"]) == {"knowledge", "corruption", "retention", "parameters"}


def test_the_markdown_table_shows_each_row_s_mean_and_ci_and_no_speed_for_doing_nothing(board, registry):
    lines = markdown(board, registry).splitlines()
    header = next(line for line in lines if line.startswith("| method |"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    cells = {line.split("|")[1].strip(" `"): [c.strip() for c in line.strip("|").split("|")] for line in lines
             if line.startswith("| `")}
    assert set(cells) == {"finetune", "neggrad", "original"}  # the card's split seed only; no retrain row was run
    [row] = rows_of(board, "finetune")
    test = row["values"]["test_acc"]
    assert cells["finetune"][columns.index("test acc")] == f"{test['mean']:.3f} ± {test['ci95']:.3f}"
    assert cells["finetune"][columns.index("efficiency")] != "–" and cells["original"][columns.index("efficiency")] == "–"
    assert rows_of(board, "original")[0]["values"]["efficiency"]["mean"] > 0  # measured, yet not shown as a speed


def test_a_tampered_or_duplicated_file_is_listed_and_skipped(board):
    rejected = {entry["file"].rsplit("/", 1)[-1]: entry["error"] for entry in board["rejected"]}
    assert "results.unlearned.forget_acc" in rejected["tampered.json"]
    assert "the same configuration and seed as" in rejected["duplicate.json"]
    assert board["n_results"] == 3 + 2 + 1 + 1


def test_ranks_share_ties_and_summaries_handle_edges():
    assert competition_ranks([0.5, 0.7, 0.7, None], higher_is_better=True) == [3, 1, 1, None]
    assert competition_ranks([0.5, 0.7, 0.7], higher_is_better=False) == [1, 2, 2]
    assert competition_ranks([], True) == [] and competition_ranks([None], True) == [None]
    assert summarise([]) is None and summarise([None, float("nan")]) is None
    assert summarise([0.25]) == {"mean": 0.25, "std": None, "ci95": None, "n": 1}
    assert summarise([1.0, 1.0, float("nan")]) == {"mean": 1.0, "std": 0.0, "ci95": 0.0, "n": 2}


def test_the_board_follows_its_schema_and_a_broken_one_does_not(board):
    schema_errors(board, "leaderboard", "board")
    broken = json.loads(json.dumps(board))
    del broken["tasks"]["digits"]["rows"][0]["values"]
    with pytest.raises(UserError, match=r"rows\[0\]': 'values' is a required property"):
        schema_errors(broken, "leaderboard", "board")
    broken = json.loads(json.dumps(board))
    broken["tasks"]["digits"]["rows"][0]["values"]["test_acc"]["n"] = 0
    with pytest.raises(UserError, match=r"values.test_acc.n.: 0 is less than the minimum of 1"):
        schema_errors(broken, "leaderboard", "board")


def test_the_cli_writes_the_site_and_lists_what_it_skipped(cli, results_folder, tmp_path):
    done = cli("leaderboard", results_folder, "--out", tmp_path / "site", "--no-data")
    assert done.returncode == 0, done.stderr
    assert "leaderboard: 7 results in 4 rows over 1 tasks; 2 files skipped" in done.stdout
    assert done.stderr.count("mubench: skipped:") == 2
    written = json.loads((tmp_path / "site" / "leaderboard.json").read_text())
    schema_errors(written, "leaderboard", "written")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    refused = cli("leaderboard", results_folder, "--out", tmp_path / "mine", "--no-data")
    assert refused.returncode == 2 and "is not a leaderboard built before" in refused.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def chromium_page(index, viewport=(1400, 1000)):
    from playwright.sync_api import sync_playwright

    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]
    manager = sync_playwright().start()
    browser = manager.chromium.launch(executable_path=shutil.which("chromium"), args=flags)
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type in ("error", "warning") else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("requestfailed", lambda request: errors.append(f"failed to load {request.url}"))
    page.goto(index.as_uri())
    return manager, browser, page, errors


def test_the_page_opens_from_the_file_system_in_headless_chromium(board, tmp_path, registry):
    """No console errors; a table per task with its rows; the plots drawn; a click sorts a column; sample images load;
    and a screenshot shows it rendered."""
    assert shutil.which("chromium"), "Debian's chromium is installed by the README's test command"
    with_samples = json.loads(json.dumps(board))
    image = tmp_path / "sample.png"
    Image.fromarray(np.tile(np.arange(32, dtype=np.uint8)[:, None, None] * 8, (1, 32, 3))).save(image)
    with_samples["tasks"]["digits"]["rows"][0]["samples"] = [{"file": str(image), "model": "unlearned", "part": "forget",
                                                              "prompt": "a photo of a seven"}]
    index = write_site(with_samples, tmp_path / "site", registry)
    assert (tmp_path / "site" / "tables.md").read_text().startswith("**`digits`** (5%")
    manager, browser, page, errors = chromium_page(index)
    try:
        rows = board["tasks"]["digits"]["rows"]
        assert page.locator("table.board").count() == len(board["tasks"])
        assert page.locator("#task-digits table.facet").count() == 4  # mean ranks by each taxonomy facet
        assert page.locator("#task-digits table.board tbody tr").count() == len(rows)
        assert page.locator("svg.plot").count() >= 1 and page.locator("svg.plot circle").count() >= len(rows) - 1
        assert page.locator("h2", has_text="Rejected files").count() == 1
        loaded = page.evaluate("Array.from(document.images).map(function (img) { return img.complete && img.naturalWidth; })")
        assert loaded == [32]

        header = page.locator("#task-digits table.board th", has_text="test_acc")
        column = page.evaluate("Array.from(document.querySelectorAll('#task-digits table.board th'))"
                               ".map(function (th) { return th.textContent; })").index("test_acc")
        read = ("Array.from(document.querySelectorAll('#task-digits table.board tbody tr')).map("
                f"function (tr) {{ return Number(tr.cells[{column}].dataset.sort); }})")
        header.click()
        ascending = page.evaluate(read)
        assert ascending == sorted(ascending) and len(set(ascending)) > 1
        header.click()
        assert page.evaluate(read) == sorted(ascending, reverse=True)

        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot))
        pixels = np.asarray(Image.open(shot).convert("RGB"))
        assert pixels.shape[:2] == (1000, 1400)
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, table lines, coloured plots: not a blank page
        assert errors == []
    finally:
        browser.close()
        manager.stop()


def test_runs_on_several_originals_are_aggregated_over_theta_0_and_run_seeds_apart(registry, tmp_path):
    """A sweep over two original seeds × two run seeds: one row per θ₀, and one over-initialisations entry whose spreads
    are those of the θ₀ means and, averaged, of the run seeds within each θ₀."""
    from mubench.sweep import Sweep, cells, execute

    sweep = Sweep.read(None, {"tasks": ["digits"], "methods": ["neggrad"], "seeds": [42, 87], "original_seeds": [1, 2],
                              "output": str(tmp_path)})
    planned = cells(sweep, registry, {})
    assert sorted(c.filename for c in planned)[0] == "digits__cnn__neggrad__df5__seed42__orig1.json" and len(planned) == 4
    assert {o.state for o in execute(sweep, planned, registry, {})} == {"ran"}
    board = build(*collect([tmp_path], registry), registry)
    entry = board["tasks"]["digits"]
    assert len(entry["rows"]) == 2 and {row["original_seed"] for row in entry["rows"]} == {1, 2}
    [over] = entry["over_originals"]
    assert over["original_seeds"] == [1, 2] and over["seeds_per_original"] == [2]
    per_original = {row["original_seed"]: row["values"]["test_acc"] for row in entry["rows"]}
    means = [per_original[s]["mean"] for s in (1, 2)]
    value = over["values"]["test_acc"]
    assert value["mean"] == pytest.approx(sum(means) / 2)
    assert value["std_originals"] == pytest.approx(abs(means[0] - means[1]) / math.sqrt(2))
    assert value["std_seeds"] == pytest.approx((per_original[1]["std"] + per_original[2]["std"]) / 2)
    assert "Over initialisations on `digits`" in markdown(board, registry)
    schema_errors(board, "leaderboard", "leaderboard.json")


def test_a_single_original_gives_no_over_initialisations_entry(board):
    assert board["tasks"]["digits"]["over_originals"] == []


def test_seed_lists_take_ranges():
    import argparse

    from mubench.cli import seed_list

    assert seed_list("0..3") == [0, 1, 2, 3] and seed_list("5,0..1") == [5, 0, 1] and seed_list("7") == [7]
    for bad in ("3..1", "a..b", "1,1"):
        with pytest.raises(argparse.ArgumentTypeError):
            seed_list(bad)
