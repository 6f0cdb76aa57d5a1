"""r1mega.rewards"""
