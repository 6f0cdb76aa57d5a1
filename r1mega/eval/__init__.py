"""r1mega.eval: the DeepSeek-R1 evaluation (pass@1 over k samples, cons@k, unbiased pass@k,
format, language consistency, length) behind `r1mega eval`; docs/eval.md."""
