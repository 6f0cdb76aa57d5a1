"""Reward models: a megatron GPTModel with a scalar head (`model.head: score`), trained on preference
pairs (Bradley-Terry) and pointwise labels (BCE) by `r1mega rm`, exported as the family's
`...ForSequenceClassification`, and scored inside RL (`rewards.models`). Read in this order:
config.py, data.py, loss.py, trainer.py, job.py, init.py; docs/reward_models.md explains the choices.
"""
