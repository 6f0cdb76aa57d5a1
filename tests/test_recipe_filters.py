"""The data-stage filters (r1mega.recipe.filters) on hand-written positives and negatives, their
per-filter counts, provenance kept on every sample, and the readable cold-start format."""

from __future__ import annotations

import pytest

from r1mega.configlib import ConfigError, from_dict
from r1mega.recipe.filters import FILTERS, FilterConfig, filter_samples, first_failure, to_readable
from r1mega.rewards.format import is_well_formatted

GOOD = "<think>\n12+7=19\n19*2=38\n</think> <answer>38</answer>"


def sample(response: str, *, answer: str = "38", task: str = "arithmetic", prefix: str = "", i: int = 0,
           metadata=None) -> dict:
    return {
        "prompt_id": f"p{i}", "sample_index": i, "prompt": "Calculate (12+7)*2", "response": response,
        "reference": {"answer": answer, "task": task, "metadata": metadata or {}, "prompt": "Calculate (12+7)*2",
                      "response_prefix": prefix, "source": f"test.jsonl:{i + 1}"},
        "task": task, "checkpoint": "runs/x/checkpoints/iter_0000010", "stage": "r1_zero_sampling",
    }


def fails(response: str, name: str, cfg: FilterConfig | None = None, **kw) -> bool:
    return first_failure(sample(response, **kw), [name], cfg or FilterConfig()) == name


# -- each filter: positives and negatives --------------------------------------------------------------

def test_correct_uses_the_tasks_rule_check():
    assert not fails(GOOD, "correct")
    assert fails(GOOD.replace("<answer>38", "<answer>39"), "correct")  # wrong answer
    assert fails("<think>\n12+7=19\n</think>", "correct")  # no answer at all
    assert fails("<think>\n<answer>38</answer>", "correct")  # an answer inside unclosed reasoning is not read
    # countdown: an expression reaching the target with each given number exactly once
    cd = dict(task="countdown", answer="22", metadata={"numbers": [3, 8, 2]})
    assert not fails("<think>\n3*8=24\n24-2=22\n</think> <answer>3*8-2</answer>", "correct", **cd)
    assert not fails("<think>\nx\n</think> <answer>8*3-2 = 22</answer>", "correct", **cd)
    assert fails("<think>\nx\n</think> <answer>3*8</answer>", "correct", **cd)  # 24, and 2 unused
    assert fails("<think>\nx\n</think> <answer>3*8-2/2*2</answer>", "correct", **cd)  # 2 used three times


def test_correct_reads_the_prompts_response_prefix():
    # the prompt opened <think>: the response alone has no opening tag, the completion does
    assert not fails("\n12+7=19\n</think> <answer>38</answer>", "correct", prefix="<think>")
    assert not fails("\n12+7=19\n</think> <answer>38</answer>", "closed_reasoning", prefix="<think>")
    assert fails("\n12+7=19\n</think> <answer>38</answer>", "closed_reasoning")


def test_correct_refuses_an_unknown_task_in_one_line():
    with pytest.raises(ValueError, match="no check for task 'poetry'"):
        first_failure(sample(GOOD, task="poetry"), ["correct"], FilterConfig())


def test_closed_reasoning():
    assert not fails(GOOD, "closed_reasoning")
    assert fails("<think>\n12+7=19\n19*2=", "closed_reasoning")  # cut off mid-thought
    assert fails("<answer>38</answer>", "closed_reasoning")  # no reasoning
    assert fails("</think> 12 <think> <answer>38</answer>", "closed_reasoning")  # wrong order
    assert fails("<think> </think> <answer>38</answer>", "closed_reasoning")  # empty
    assert fails("<think>a</think><think>b</think> <answer>38</answer>", "closed_reasoning")  # two blocks


def test_language_mixing():
    assert not fails(GOOD, "language")
    assert not fails("<think>\nadd twelve and seven\n</think> <answer>38</answer>", "language")
    mixed = "<think>\ntwelve plus 七 is 19\n</think> <answer>38</answer>"  # 1 Han word of 4
    assert fails(mixed, "language")
    assert not fails(mixed, "language", FilterConfig(min_language_share=0.75))
    assert fails(mixed, "language", FilterConfig(min_language_share=0.76))
    han = "<think>\n十二加七等于十九\n</think> <answer>38</answer>"
    assert fails(han, "language") and not fails(han, "language", FilterConfig(language="zh"))
    assert fails("<think>\ntwelve plus seven", "language")  # no closed reasoning: nothing to measure
    # words outside the reasoning do not count (the answer may be in any script)
    assert not fails("<think>\ntwelve\n</think> <answer>三十八</answer>", "language")


def test_long_paragraphs():
    cfg = FilterConfig(max_paragraph_chars=40)
    short = "<think>\n" + "step one is short\n\nstep two is short too\n" + "</think> <answer>38</answer>"
    long_ = "<think>\n" + "word " * 20 + "\n</think> <answer>38</answer>"  # one 100-char paragraph
    assert not fails(short, "paragraphs", cfg)
    assert fails(long_, "paragraphs", cfg)
    # the same text split by blank lines into short paragraphs passes
    assert not fails("<think>\n" + "\n\n".join(["word word word"] * 7) + "\n</think> <answer>38</answer>",
                     "paragraphs", cfg)
    assert not fails(long_, "paragraphs")  # default limit 1000


def test_code_blocks():
    assert not fails(GOOD, "code_blocks")
    assert not fails("<think>\nuse `x` inline\n</think> <answer>38</answer>", "code_blocks")  # inline code is fine
    assert fails("<think>\n```python\nprint(38)\n```\n</think> <answer>38</answer>", "code_blocks")
    assert fails("<think>\n  ~~~\nx = 38\n  ~~~\n</think> <answer>38</answer>", "code_blocks")
    assert fails("<think>\nok\n</think> <answer>38</answer>\n```\n38\n```", "code_blocks")  # outside too


def test_repetition_loops():
    cfg = FilterConfig(ngram_size=3, max_ngram_repeats=2, max_line_repeats=2)
    assert not fails(GOOD, "repetition", cfg)
    lines = "<think>\n19*2=38\n19*2=38\n19*2=38\n</think> <answer>38</answer>"
    assert fails(lines, "repetition", cfg)
    assert not fails(lines, "repetition", FilterConfig(max_line_repeats=3))
    loop = "<think>\nso we add the numbers so we add the numbers so we add the numbers\n</think> <answer>38</answer>"
    assert fails(loop, "repetition", cfg)  # one line, the 3-gram "so we add" three times
    assert not fails("<think>\nso we add the numbers and then we multiply them\n</think> <answer>38</answer>",
                     "repetition", cfg)


# -- filter_samples: order, counts, provenance ---------------------------------------------------------

def test_filter_samples_counts_the_first_failing_filter_and_keeps_provenance():
    responses = [
        GOOD,                                                              # kept
        GOOD.replace("<answer>38", "<answer>40"),                          # correct
        "<think>\n12+7=19\n19*2=38",                                       # correct (no answer) first
        "<think>\n12+7=19 十九\n</think> <answer>38</answer>",              # language
        "<think>\n```\n38\n```\n</think> <answer>38</answer>",             # code_blocks
        "<think>\n" + "19*2=38\n" * 5 + "</think> <answer>38</answer>",    # repetition
        "<think>\n" + "x" * 50 + "\n</think> <answer>38</answer>",          # paragraphs
        "<think>\nadd\n\nthen multiply\n</think> <answer>38</answer>",    # kept
    ]
    samples = [sample(r, i=i) for i, r in enumerate(responses)]
    cfg = FilterConfig(max_paragraph_chars=40)
    result = filter_samples(iter(samples), list(FILTERS), cfg)
    assert result.total == 8
    assert result.removed == {"correct": 2, "closed_reasoning": 0, "language": 1, "paragraphs": 1,
                              "code_blocks": 1, "repetition": 1}
    assert [s["sample_index"] for s in result.kept] == [0, 7]
    for kept in result.kept:
        original = samples[kept["sample_index"]]
        assert {k: kept[k] for k in original} == original  # every provenance field unchanged
        assert kept["filters_passed"] == list(FILTERS)
    assert "filters_passed" not in samples[0]  # the input is not modified
    assert "kept 2 of 8" in result.summary() and "correct=2" in result.summary()
    # another order: the unclosed one is now counted by closed_reasoning
    result = filter_samples(samples, ["closed_reasoning", "correct"], cfg)
    assert result.removed == {"closed_reasoning": 1, "correct": 1}
    # no filter: everything kept
    assert len(filter_samples(samples, [], cfg).kept) == 8


def test_filter_samples_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match=r"unknown filter\(s\) \['langauge'\]"):
        filter_samples([sample(GOOD)], ["langauge"], FilterConfig())
    with pytest.raises(ValueError, match="duplicates"):
        filter_samples([sample(GOOD)], ["correct", "correct"], FilterConfig())
    with pytest.raises(ValueError, match="must be a list"):
        filter_samples([sample(GOOD)], "correct", FilterConfig())
    bad = sample(GOOD)
    del bad["reference"]
    with pytest.raises(ValueError, match=r"sample 1 \(prompt_id 'p0'\): 'reference'"):
        filter_samples([sample(GOOD), bad], ["correct"], FilterConfig())
    with pytest.raises(ValueError, match="'response' is missing"):
        filter_samples([{"prompt_id": "q"}], ["language"], FilterConfig())


def test_filter_config_is_validated():
    with pytest.raises(ConfigError, match="min_language_share"):
        from_dict(FilterConfig, {"min_language_share": 1.5})
    with pytest.raises(ConfigError, match="ngram_size"):
        from_dict(FilterConfig, {"ngram_size": 0})
    with pytest.raises(ConfigError, match="task_accuracy.poetry"):
        from_dict(FilterConfig, {"task_accuracy": {"poetry": "not a path"}})


# -- the readable format -------------------------------------------------------------------------------

def test_to_readable_normalises_into_the_template_the_rewards_accept():
    messy = "  <think>\n\n   12+7=19   \n\n\n19*2=38\n</think>\n<answer>  38 </answer>\n"
    out = to_readable(messy)
    assert out == "<think>\n12+7=19\n19*2=38\n</think> <answer>38</answer>"
    assert is_well_formatted(out)
    assert to_readable(out) == out  # a fixed point
    # the built-in tasks' own worked solutions are already in the readable format
    from r1mega.data.tasks.base import format_solution

    solution = format_solution(["3*8=24", "24-2=22"], "22")
    assert to_readable(solution) == solution


@pytest.mark.parametrize("response", [
    "<think>\n12+7=19\n19*2=38",                                   # unclosed reasoning
    "12+7=19 <answer>38</answer>",                                 # no reasoning block
    "<think>\n12+7=19\n</think>",                                  # no summary / answer
    "<think>\n \n</think> <answer>38</answer>",                    # empty reasoning
    "<think>\nx\n</think> <answer>38</answer> <answer>39</answer>",  # two answers
    "Sure! <think>\nx\n</think> <answer>38</answer>",              # text around the blocks
])
def test_to_readable_refuses_what_cannot_be_reformatted(response):
    assert to_readable(response) is None
