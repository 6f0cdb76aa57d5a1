"""Rule-based rewards on hand-written completions, adversarial ones included (in-process, no pool)."""

import pytest

from r1mega.configlib import ConfigError, from_dict
from r1mega.data.expr import ExprError, evaluate
from r1mega.rewards.accuracy import accuracy_reward, arithmetic_correct, countdown_correct, math_equal
from r1mega.rewards.config import RewardConfig
from r1mega.rewards.format import format_reward
from r1mega.rewards.language import language_reward, language_share
from r1mega.rewards.parse import extract_answer, last_boxed, parse_completion
from r1mega.rewards.pool import RewardError, RewardPool
from r1mega.rewards.types import SampleView


def S(text):
    return SampleView(prompt_token_ids=[5, 6], response_token_ids=[7], response_logprobs=[-0.5],
                      finish_reason="stop", response_text=text)


def ref(answer, task="math", **metadata):
    return {"answer": answer, "task": task, "metadata": metadata, "response_prefix": "", "source": "t.jsonl:1"}


def acc(text, reference, **kw):
    return accuracy_reward(S(text), reference, **kw)


# ---------------------------------------------------------------------------------------------
# format
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>2+2 is 4</think> <answer>4</answer>", 1.0),
        ("  \n<think>\nsteps\n</think>\n<answer>4</answer>\n", 1.0),  # surrounding whitespace is fine
        ("<think>x</think><answer>4</answer>", 1.0),  # no space between blocks is fine
        ("Sure! <think>x</think> <answer>4</answer>", 0.0),  # text before <think>
        ("<think>x</think> <answer>4</answer> Hope this helps", 0.0),  # text after </answer>
        ("<think>x</think> so <answer>4</answer>", 0.0),  # text between the blocks
        ("<think>x</think> <answer>4</answer><answer>5</answer>", 0.0),  # several answers
        ("<think>a<think>b</think></think> <answer>4</answer>", 0.0),  # nested reasoning
        ("<think> </think> <answer>4</answer>", 0.0),  # empty reasoning
        ("<think>x</think> <answer> </answer>", 0.0),  # empty answer
        ("<think>x</think>", 0.0),  # no answer block
        ("<answer>4</answer>", 0.0),  # no reasoning block
        ("<think>x <answer>4</answer>", 0.0),  # unclosed reasoning
        ("<answer>4</answer> <think>x</think>", 0.0),  # wrong order
        ("The answer is 4", 0.0),
        ("", 0.0),
    ],
)
def test_format_reward(text, expected):
    assert format_reward(S(text), ref("4")) == expected


def test_format_counts_the_prompts_open_think_tag():
    # data.think_in_prompt: the prompt ends with "<think>", the response starts inside the reasoning
    r = dict(ref("4"), response_prefix="<think>")
    assert format_reward(S("2+2=4</think> <answer>4</answer>"), r) == 1.0
    assert format_reward(S("<think>2+2=4</think> <answer>4</answer>"), r) == 0.0  # a second <think>


# ---------------------------------------------------------------------------------------------
# answer extraction
# ---------------------------------------------------------------------------------------------


def test_last_boxed_balances_braces():
    assert last_boxed(r"x \boxed{\frac{1}{2}} y \boxed{3}") == "3"
    assert last_boxed(r"\boxed{\frac{a}{b+\sqrt{c}}}") == r"\frac{a}{b+\sqrt{c}}"
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed(r"\boxed{unclosed") is None
    assert last_boxed("no box") is None


@pytest.mark.parametrize(
    "text, answer, how",
    [
        ("<think>t</think> <answer>42</answer>", "42", "answer_tag"),
        (r"<think>t</think> <answer>so \boxed{42}</answer>", "42", "boxed_in_tag"),
        ("<think>t</think> <answer>1</answer> <answer>2</answer>", None, "multiple_answers"),
        (r"<think>t</think> The answer is \boxed{42}.", "42", "boxed"),
        (r"<think>maybe \boxed{41}</think> The answer is 42.", None, "no_answer"),  # boxed inside reasoning
        (r"<think>still thinking \boxed{41}", None, "no_answer"),  # unclosed reasoning: all of it is reasoning
        # an <answer> block obeys the same rule as a box: inside reasoning, closed or not, it is no answer
        ("<think>reasoning that never closes <answer>42</answer>", None, "no_answer"),
        ("<think>maybe <answer>41</answer></think> <answer>42</answer>", "42", "answer_tag"),
        ("<think>maybe <answer>41</answer></think> no answer block", None, "no_answer"),
        ("<think>t</think> <answer>42</answer> <think>more <answer>43</answer>", "42", "answer_tag"),
        ("The answer is 42.", None, "no_answer"),  # plain text outside tags is never read
        ("<think>t</think> <answer>   </answer>", None, "no_answer"),
        ("<answer>" + "9" * 2000 + "</answer>", None, "too_long"),
    ],
)
def test_extract_answer(text, answer, how):
    assert extract_answer(parse_completion(text)) == (answer, how)


def test_boxed_fallback_can_be_disabled():
    text = r"<think>t</think> \boxed{42}"
    assert extract_answer(parse_completion(text), boxed_fallback=False) == (None, "no_answer")


# ---------------------------------------------------------------------------------------------
# math accuracy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, gold, expected",
    [
        ("0.5", r"\frac{1}{2}", True),
        (r"\frac12", "0.5", True),
        ("1/2", "0.5", True),
        (r"2^{1/2}", r"\sqrt{2}", True),
        (r"(x+1)^2", r"x^2+2x+1", True),
        ("x = 3", "3", True),
        ("1,000", "1000", True),
        ("-7", "-7", True),
        ("3.0", "3", True),
        ("2.9999999", "3", False),  # close is not equal
        ("4", "5", False),
        ("2, 3", "2", False),  # a set of candidates is not the answer
        ("2 or 3", "2", False),
        (r"\frac{", "5", False),  # unparsable LaTeX
        (r"\sqrt{\sqrt{\sqrt{", "5", False),
        ("}{}{", "5", False),
        ("9" * 900, "9" * 900, True),  # huge numbers are compared exactly, without sympy
        ("9" * 900, "9" * 899 + "8", False),
    ],
)
def test_math_equal(answer, gold, expected):
    assert math_equal(answer, gold) is expected


def test_math_accuracy_end_to_end():
    r = ref(r"\frac{1}{2}")
    assert acc("<think>half</think> <answer>0.5</answer>", r) == {"score": 1.0, "answer_found": 1.0}
    assert acc(r"<think>half</think> <answer>\boxed{\frac{2}{4}}</answer>", r)["score"] == 1.0
    assert acc(r"<think>half</think> the result is \boxed{0.5}", r)["score"] == 1.0  # boxed fallback
    assert acc(r"<think>half</think> the result is \boxed{0.5}", r, boxed_fallback=False)["score"] == 0.0
    # the right answer outside the tags, or among several answers, earns nothing
    assert acc("The answer is 0.5", r) == {"score": 0.0, "answer_found": 0.0}
    assert acc("<think>t</think> <answer>0.4</answer> <answer>0.5</answer>", r) == {
        "score": 0.0,
        "answer_found": 0.0,
    }
    assert acc("<think>t</think> <answer>0.4</answer> actually 0.5", r)["score"] == 0.0
    # an answer inside reasoning that never closes is not an answer
    assert acc("<think>reasoning that never closes <answer>0.5</answer>", r) == {
        "score": 0.0,
        "answer_found": 0.0,
    }


# ---------------------------------------------------------------------------------------------
# countdown and arithmetic accuracy, and the safe evaluator under them
# ---------------------------------------------------------------------------------------------

NUMS = [2, 3, 5, 7]


@pytest.mark.parametrize(
    "answer, target, use_all, expected",
    [
        ("7*5-3*2", 29, True, True),
        ("(7*5)-(3*2)", 29, True, True),
        ("7*5-3*2 = 29", 29, True, True),  # the stated result must be the target
        ("7*5-3*2 = 30", 29, True, False),
        ("7×5−3×2", 29, True, True),  # typeset operators
        (r"7 \times 5 - 3 \times 2", 29, True, True),
        ("7*5-6", 29, True, False),  # 6 is not a given number
        ("7*5-3*2+7-7", 29, True, False),  # 7 used three times
        ("7*5", 35, True, False),  # not every number used
        ("7*5", 35, False, True),  # ... allowed when each is used at most once
        ("7*5*7", 245, False, False),  # at most once still means once
        ("5*7-3*2", 28, True, False),  # wrong value
        ("2**5+3-7", 28, True, False),  # powers are not countdown operators
        ("-2+3*7+5", 24, True, False),  # unary minus is not allowed
        ("__import__('os').system('true')", 0, True, False),  # never evaluated as Python
        ("7*5-3*2=29=29", 29, True, False),
        ("", 29, True, False),
        ("(" * 200 + "7" + ")" * 200, 7, False, True),  # deep but legal nesting
        ("(" * 5000 + "7" + ")" * 5000, 7, False, False),  # beyond the length bound
    ],
)
def test_countdown_correct(answer, target, use_all, expected):
    assert countdown_correct(answer, NUMS, target, use_all=use_all) is expected


def test_countdown_exact_division_and_operator_restriction():
    assert countdown_correct("6/(1-3/4)", [1, 3, 4, 6], 24)  # fractional intermediates are exact
    assert not countdown_correct("6/(1-3/4)", [1, 3, 4, 6], 24, operators="+-*")
    assert not countdown_correct("7/0+2+3+5", [0, 2, 3, 5, 7], 10)  # division by zero


def test_countdown_accuracy_reads_metadata():
    r = ref("29", task="countdown", numbers=NUMS, use_all=True, operators=["+", "-", "*"])
    assert acc("<think>35-6</think> <answer>7*5-3*2</answer>", r)["score"] == 1.0
    assert acc("<think>x</think> <answer>7*5-3*2</answer> <answer>7*5-6</answer>", r)["score"] == 0.0


@pytest.mark.parametrize(
    "answer, gold, expected",
    [
        ("1281", "1281", True),
        ("1,281", "1281", True),
        ("1281.", "1281", True),
        (" -564 ", "-564", True),
        ("1280", "1281", False),
        ("12+1269", "1281", False),  # an expression is not the result
        ("1281 apples", "1281", False),
        ("9" * 5000, "9" * 5000, False),  # beyond the digit bound: no giant int parsing
    ],
)
def test_arithmetic_correct(answer, gold, expected):
    assert arithmetic_correct(answer, gold) is expected


def test_evaluator_bounds():
    assert evaluate("2**10", operators={"**"}).value == 1024
    with pytest.raises(ExprError, match="exponent"):
        evaluate("9**99", operators={"**"})
    with pytest.raises(ExprError, match="bits"):
        evaluate("9**9**9", operators={"**"}, max_exponent=10**12)
    with pytest.raises(ExprError, match="bits"):
        evaluate("*".join(["9" * 20] * 20), operators={"*"}, max_bits=1000)  # about 20 * 67 bits
    with pytest.raises(ExprError, match="not allowed"):
        evaluate("abs(-3)")
    with pytest.raises(ExprError, match="only integer literals"):
        evaluate("1.5+2")
    with pytest.raises(ExprError, match="only integer literals"):
        evaluate("True+1")


# ---------------------------------------------------------------------------------------------
# language consistency
# ---------------------------------------------------------------------------------------------


def test_language_share():
    assert language_share("Let me think about it", "en") == 1.0
    assert language_share("Let me 想一想", "en") == pytest.approx(2 / 5)  # each Han character is a word
    assert language_share("Let me 想一想", "zh") == pytest.approx(3 / 5)
    assert language_share("Привет мир ok", "en") == pytest.approx(1 / 3)
    assert language_share("let α be the angle", "en") == 1.0  # Greek letters are math, not a language
    assert language_share("3+4=7, 7*2=14", "en") == 1.0  # no words: nothing inconsistent
    assert language_share("café naïve", "en") == 1.0  # accented Latin is Latin


def test_language_reward_reads_only_the_reasoning():
    r = ref("4")
    assert language_reward(S("<think>Let me 想一想</think> <answer>四</answer>"), r) == pytest.approx(0.4)
    assert language_reward(S("<think>Let me add</think> <answer>四四四四</answer>"), r) == 1.0
    assert language_reward(S("no reasoning at all"), r) == 0.0
    assert language_reward(S("<think>只用中文</think>"), r, language="zh") == 1.0


# ---------------------------------------------------------------------------------------------
# combination, custom functions, routing and config (in-process scoring: num_workers 0)
# ---------------------------------------------------------------------------------------------


def _inline(**kw):
    return RewardPool(RewardConfig(num_workers=0, **kw))


def test_weighted_sum_and_per_component_values():
    cfg = dict(weights={"accuracy": 1.0, "format": 0.5, "language": 0.25})
    with _inline(**cfg) as pool:
        samples = [
            S("<think>Let me 想</think> <answer>4</answer>"),  # right, well formatted, language 2/3
            S("The answer is <answer>4</answer>"),  # right, badly formatted, no reasoning
            S("<think>adding</think> <answer>5</answer>"),  # wrong, well formatted
        ]
        out = pool.score(samples, [ref("4")] * 3)
    assert [o["accuracy"] for o in out] == [1.0, 1.0, 0.0]
    assert [o["format"] for o in out] == [1.0, 0.0, 1.0]
    assert out[0]["language"] == pytest.approx(2 / 3)
    for o in out:
        expected = 1.0 * o["accuracy"] + 0.5 * o["format"] + 0.25 * o["language"]
        assert o["reward"] == pytest.approx(expected)
    assert out[0]["accuracy/answer_found"] == 1.0


def test_r1_zero_default_is_accuracy_plus_format():
    with _inline() as pool:
        (o,) = pool.score([S("<think>Let me 想</think> <answer>4</answer>")], [ref("4")])
    assert o["reward"] == 2.0 and 0 < o["language"] < 1  # language is logged with weight 0


def test_custom_reward_by_import_path_with_extra_keys():
    with _inline(
        weights={"format": 1.0, "length": 2.0}, custom={"length": "tests._reward_fns:length_with_details"}
    ) as pool:
        (o,) = pool.score([S("<think>x</think> <answer>4</answer>")], [ref("4")])
    n = len("<think>x</think> <answer>4</answer>")
    assert o["length/chars"] == n
    assert o["reward"] == pytest.approx(1.0 + 2.0 * (-0.001 * n))


def test_accuracy_routes_custom_tasks_and_rejects_unknown_ones():
    with _inline(task_accuracy={"echo": "tests._reward_fns:echo_task_accuracy"}) as pool:
        out = pool.score([S("it is banana"), S("it is apple")], [ref("banana", task="echo")] * 2)
        assert [o["accuracy"] for o in out] == [1.0, 0.0]
        with pytest.raises(RewardError, match=r"no check for task 'poetry' \(row t.jsonl:1\)"):
            pool.score([S("x")], [ref("y", task="poetry")])


def test_reward_errors_raise_or_count():
    kw = dict(weights={"bad": 1.0, "format": 1.0}, custom={"bad": "tests._reward_fns:raise_on_request"})
    with _inline(**kw) as pool:
        with pytest.raises(RewardError, match=r"(?s)reward 'bad' raised on sample 1.*broken on purpose"):
            pool.score([S("fine"), S("RAISE")], [ref("4")] * 2)
    with _inline(on_error="zero", **kw) as pool:
        out = pool.score([S("fine"), S("RAISE")], [ref("4")] * 2)
        assert [o["bad"] for o in out] == [1.0, 0.0]
        assert pool.last_stats["errors/bad"] == 1


def test_non_finite_reward_is_an_error():
    with _inline(weights={"nan": 1.0}, custom={"nan": "tests._reward_fns:returns_nan"}) as pool:
        with pytest.raises(RewardError, match="must be a finite number"):
            pool.score([S("x")], [ref("4")])


def test_bad_import_paths_fail_at_construction():
    with pytest.raises(ValueError, match=r"rewards.custom.x: cannot import module 'tests.nope'"):
        _inline(weights={"x": 1.0}, custom={"x": "tests.nope:f"})
    with pytest.raises(ValueError, match=r"has no attribute 'nope'"):
        _inline(weights={"x": 1.0}, custom={"x": "tests._reward_fns:nope"})


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"weights": {"acuracy": 1.0}}, r"rewards.weights.acuracy: unknown component"),
        ({"weights": {"x": 1.0}, "custom": {"x": "not a path"}}, r"rewards.custom.x: 'not a path' is not an import"),
        ({"weights": {"format": 1.0}, "custom": {"x": "a.b:c"}}, r"rewards.custom.x: defined but has no weight"),
        ({"custom": {"format": "a:b"}}, r"rewards.custom.format: 'format' is a built-in"),
        ({"timeout_s": 0}, r"rewards.timeout_s: must be > 0"),
        ({"num_workers": -1}, r"rewards.num_workers: must be >= 0"),
        ({"language": "fr"}, r"rewards.language: 'fr' is not one of"),
    ],
)
def test_reward_config_validation(raw, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(RewardConfig, raw, where="rewards")


def test_check_tasks_names_tasks_without_accuracy():
    cfg = RewardConfig(task_accuracy={"echo": "tests._reward_fns:echo_task_accuracy"})
    cfg.check_tasks({"math", "countdown", "echo"})
    with pytest.raises(ConfigError, match=r"task types \['poetry'\]"):
        cfg.check_tasks({"math", "poetry"})


def test_score_rejects_mismatched_lengths():
    with _inline() as pool, pytest.raises(ValueError, match="2 samples but 1 references"):
        pool.score([S("a"), S("b")], [ref("4")])


def test_rollout_samples_are_scored_through_a_torch_free_view():
    import torch

    from r1mega.rollout.types import Sample

    sample = Sample(
        prompt_token_ids=[1, 2, 3], response_token_ids=[4, 5], response_logprobs=[-0.1, -0.2],
        finish_reason="stop", response_text="<think>t</think> <answer>4</answer>",
        metadata={"engine": "builtin", "routing": torch.ones(2)},
    )
    view = SampleView.of(sample)
    assert view.response_text == sample.response_text and view.response_length == 2
    assert view.prompt_token_ids == [1, 2, 3] and view.response_logprobs == [-0.1, -0.2]
    assert view.metadata == {"engine": "builtin"}  # the tensor stays behind
    with _inline() as pool:
        assert pool.score([sample], [ref("4")])[0]["reward"] == 2.0
