"""The generative judge (r1mega.recipe.judge): prompts filled from the template, greedy requests,
verdicts parsed from what the engine returns (a test double returning fixed token ids, and a real
tiny model on the built-in engine), unparsable and over-long prompts counted as None."""

from __future__ import annotations

import pytest

from r1mega.configlib import ConfigError, from_dict
from r1mega.recipe.judge import JudgeConfig, judge_prompt, judge_samples, parse_verdict, verdict_counts
from r1mega.rollout.types import Sample
from tests.rollout_helpers import one_torch_thread  # noqa: F401  (autouse: tiny models run fastest on one thread)


@pytest.fixture(scope="module")
def tokenizer():
    from r1mega.data.tokenizer import load_tokenizer

    return load_tokenizer("tiny")


def sample(response: str, answer: str = "x^2+1", question: str = "Simplify (x+1)^2 - 2x", i: int = 0) -> dict:
    return {"prompt_id": f"q{i}", "sample_index": i, "prompt": question, "response": response,
            "reference": {"answer": answer, "task": "open", "prompt": question, "response_prefix": ""},
            "task": "open", "checkpoint": "c", "stage": "rejection_sampling"}


class FixedEngine:
    """RolloutEngine double: answers a prompt containing a key with that key's fixed token ids."""

    def __init__(self, tokenizer, replies: dict[str, str]):
        self.tokenizer = tokenizer
        self.replies = {k: tokenizer(v, add_special_tokens=False)["input_ids"] for k, v in replies.items()}
        self.requests = []

    def generate(self, prompts_token_ids, sampling):
        self.requests.append((list(prompts_token_ids), sampling))
        out = []
        for ids in prompts_token_ids:
            text = self.tokenizer.decode(ids)
            key = next(k for k in self.replies if k in text)
            out.append(Sample(prompt_token_ids=list(ids), response_token_ids=list(self.replies[key]),
                              response_logprobs=[0.0] * len(self.replies[key]), finish_reason="stop"))
        return out  # no response_text: the judge decodes the ids itself

    def update_weights(self, buckets): ...
    def release_memory(self): ...
    def resume_memory(self): ...


def test_verdicts_from_fixed_token_ids(tokenizer):
    replies = {"ANSWER-A": " Yes, they match.", "ANSWER-B": " no", "ANSWER-C": " hmm, maybe",
               "ANSWER-D": " It is not equivalent; yes-men would disagree", "ANSWER-E": "Correct"}
    engine = FixedEngine(tokenizer, replies)
    samples = [sample(f"<think>\nwork\n</think> <answer>{k}</answer>", i=i) for i, k in enumerate(replies)]
    cfg = JudgeConfig()
    verdicts = judge_samples(engine, tokenizer, samples, cfg)
    assert verdicts == [True, False, None, False, True]
    assert verdict_counts(verdicts) == {"accepted": 2, "rejected": 2, "unparsable": 1}
    ((prompts, sampling),) = engine.requests  # one batched, greedy request
    assert sampling.temperature == 0.0 and sampling.max_new_tokens == cfg.max_new_tokens
    first = tokenizer.decode(prompts[0], skip_special_tokens=True)
    assert "Question: Simplify (x+1)^2 - 2x" in first and "Reference answer: x^2+1" in first
    assert "Response: <answer>ANSWER-A</answer>" in first and "work" not in first  # the summary only


def test_full_response_custom_template_and_patterns(tokenizer):
    engine = FixedEngine(tokenizer, {"KEY1": "[[ACCEPT]]", "KEY2": "[[REJECT]]", "KEY3": "[[ACCEPT]] [[REJECT]]"})
    cfg = from_dict(JudgeConfig, {
        "template": "Q={question} R={response} {{verdict}}:", "response_part": "full",
        "yes_pattern": r"\[\[ACCEPT\]\]", "no_pattern": r"\[\[REJECT\]\]",
    })
    samples = [sample(f"<think>KEY{i}</think> <answer>1</answer>", i=i) for i in (1, 2, 3)]
    assert judge_samples(engine, tokenizer, samples, cfg) == [True, False, True]  # both: the earlier wins
    text = judge_prompt(samples[0], cfg)
    assert text == "Q=Simplify (x+1)^2 - 2x R=<think>KEY1</think> <answer>1</answer> {verdict}:"


def test_over_long_prompts_are_not_sent_and_count_as_unparsable(tokenizer):
    engine = FixedEngine(tokenizer, {"short": "yes"})
    cfg = JudgeConfig(max_prompt_tokens=200)
    verdicts = judge_samples(engine, tokenizer, [sample("<answer>short</answer>"), sample("<answer>" + "long " * 300 + "</answer>")], cfg)
    assert verdicts == [True, None]
    assert len(engine.requests[0][0]) == 1
    assert judge_samples(engine, tokenizer, [], cfg) == []


def test_parse_verdict_rules():
    cfg = JudgeConfig()
    assert parse_verdict("YES", cfg) is True and parse_verdict("No.", cfg) is False
    assert parse_verdict("yesterday nobody", cfg) is None  # whole words only
    assert parse_verdict("", cfg) is None


def test_judge_config_is_validated(tokenizer):
    for raw, match in [({"template": "{question} {reference}"}, "must contain {response}"),
                       ({"template": "{response} {answer}"}, r"unknown field\(s\) \['answer'\]"),
                       ({"template": "{response} {"}, "not a valid format string"),
                       ({"yes_pattern": "(yes"}, "yes_pattern: not a valid regular expression"),
                       ({"max_new_tokens": 0}, "max_new_tokens")]:
        with pytest.raises(ConfigError, match=match):
            from_dict(JudgeConfig, raw)


def test_chat_wraps_the_filled_template_in_the_judges_chat_template(tokenizer):
    engine = FixedEngine(tokenizer, {"ANS": "yes"})
    assert judge_samples(engine, tokenizer, [sample("<answer>ANS</answer>")], JudgeConfig(chat=True)) == [True]
    sent = tokenizer.decode(engine.requests[0][0][0], skip_special_tokens=True)
    want = tokenizer.apply_chat_template([{"role": "user", "content": judge_prompt(sample("<answer>ANS</answer>"),
                                          JudgeConfig())}], tokenize=False, add_generation_prompt=True)
    assert sent == want and sent.startswith("User: Decide") and sent.endswith("Assistant:")


def test_judge_on_a_tiny_model_served_by_the_builtin_engine(tokenizer):
    import torch

    from r1mega.rollout.builtin import BuiltinEngine
    from r1mega.rollout.types import SamplingParams
    from tests.rollout_helpers import tiny_config

    torch.manual_seed(0)
    engine = BuiltinEngine(tiny_config(vocab_size=len(tokenizer)), tokenizer=tokenizer, seed=0,
                           eos_token_ids=[tokenizer.eos_token_id])
    samples = [sample(f"<think>\nstep {i}\n</think> <answer>{i}</answer>", answer=str(i % 2), i=i) for i in range(4)]
    short = "Q {question} R {reference} A {response}:"
    cfg = JudgeConfig(max_new_tokens=6, template=short)
    prompts = [tokenizer(judge_prompt(s, cfg))["input_ids"] for s in samples]
    outputs = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=6))
    texts = [o.response_text for o in outputs]
    assert len(set(texts)) > 1 or texts[0]  # the model's own greedy outputs, whatever they say
    want = [parse_verdict(t, cfg) for t in texts]
    assert judge_samples(engine, tokenizer, samples, cfg) == want
    assert judge_samples(engine, tokenizer, samples, cfg) == want  # greedy: the same verdicts again
    # patterns that match anything / nothing turn every output into an acceptance / a rejection
    assert judge_samples(engine, tokenizer, samples, JudgeConfig(max_new_tokens=6, template=short, yes_pattern=r"[\s\S]",
                                                                  no_pattern=r"(?!x)x")) == [True] * 4
    assert judge_samples(engine, tokenizer, samples, JudgeConfig(max_new_tokens=6, template=short, yes_pattern=r"(?!x)x",
                                                                  no_pattern=r"[\s\S]")) == [False] * 4
