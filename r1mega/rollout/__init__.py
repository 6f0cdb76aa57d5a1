"""r1mega.rollout"""
