"""Prompt data: datasets (jsonl/parquet), templates, procedural tasks, the tiny tokenizer.

Entry points (import from their modules; this package imports nothing heavy):
- `r1mega.data.prompts.load_prompt_dataset(cfg, split)`: RL prompts + references for the rewards.
- `r1mega.data.sft.load_sft_dataset(cfg, split)`: SFT examples with a response-only loss mask.
- `r1mega.data.sampler.PromptSampler`: seeded per-epoch shuffle, resumable from a checkpoint.
- `r1mega.data.tokenizer.load_tokenizer(name_or_path)`: `tiny` or a local HF tokenizer directory,
  refused when transformers would build another tokenizer than its files (`tokenizer_check`).
- `r1mega.data.tasks.generate(cfg, split)`: countdown / arithmetic problems with worked solutions.
- `r1mega.data.templates`: the R1-Zero template, chat templates, raw prompts.
"""
