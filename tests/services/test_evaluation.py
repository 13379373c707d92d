"""Sampled evaluation: the unbiased pass@k estimator, `rlx.eval` on a trained run, in-run `run.eval_samples`."""

import itertools
import json
from math import comb

import pytest

from rlx.config import load_config
from rlx.eval import evaluate_run, main as eval_main
from rlx.services import train
from rlx.services.evaluation import pass_at_k, reported_ks
from rlx.services.tracking import read_metrics
from tests.conftest import tiny_overrides


@pytest.mark.parametrize("n, c, k", [(8, 0, 1), (8, 3, 1), (8, 3, 2), (8, 3, 8), (10, 1, 5), (5, 4, 2), (4, 4, 4)])
def test_pass_at_k_is_the_probability_that_a_random_k_subset_holds_a_correct_sample(n, c, k):
    subsets = list(itertools.combinations([True] * c + [False] * (n - c), k))
    by_enumeration = sum(any(s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(by_enumeration)
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_pass_at_k_edges():
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)
    assert pass_at_k(8, 6, 3) == 1.0  # fewer than k wrong samples: every k-subset holds a correct one
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)
    assert reported_ks(8) == [1, 2, 4, 8] and reported_ks(6) == [1, 2, 4, 6] and reported_ks(1) == [1]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    train(load_config("configs/demo.yaml", [*tiny_overrides(out), "run.steps=2", "run.eval_samples=4", "data.val_size=6"]))
    return out


def test_in_run_validation_reports_sampled_pass_at_k(trained_run):
    rows = read_metrics(trained_run / "metrics.jsonl")
    for row in (rows[0], rows[2]):
        assert {"val/accuracy", "val/pass@1", "val/pass@2", "val/pass@4", "val/avg@4"} <= set(row)
        assert 0 <= row["val/pass@1"] <= row["val/pass@2"] <= row["val/pass@4"] <= 1
        assert row["val/avg@4"] == pytest.approx(row["val/pass@1"])  # 0/1 rewards: the mean over samples is pass@1


def test_rlx_eval_writes_eval_json_from_the_checkpoint(trained_run, capsys):
    assert eval_main(["--run", str(trained_run), "--samples", "4", "--step", "2"]) == 0
    table = capsys.readouterr().out
    result = json.loads((trained_run / "eval.json").read_text())
    assert {"pass@1", "pass@4", "avg@4", "response_length/mean"} <= set(result)
    assert result["step"] == 2 and result["samples"] == 4 and result["prompts"] == 6 and result["split"] == "val"
    assert "pass@4" in table and f"{result['pass@4']:.4f}" in table
    # The same weights, prompts, sampling settings and key as the run's own last validation.
    last = read_metrics(trained_run / "metrics.jsonl")[-1]
    assert result["pass@1"] == pytest.approx(last["val/pass@1"]) and result["avg@4"] == pytest.approx(last["val/avg@4"])


def test_rlx_eval_on_a_jsonl_split_skips_what_the_tokenizer_cannot_encode(trained_run, tmp_path):
    split = tmp_path / "extra.jsonl"
    rows = [{"prompt": "1+2=", "answer": "3"}, {"prompt": "12+30=", "answer": "42"}, {"prompt": "what?", "answer": "x"}]
    split.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = evaluate_run(trained_run, samples=2, split=str(split))
    assert result["prompts"] == 2 and result["split"] == str(split)
    assert set(reported_ks(2)) == {1, 2} and "pass@2" in result and "avg@2" in result


def test_rlx_eval_errors(tmp_path, capsys):
    assert eval_main(["--run", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("run:\n  steps: 2\n")
    assert eval_main(["--run", str(tmp_path)]) == 2
    assert "no checkpoint under" in capsys.readouterr().err
