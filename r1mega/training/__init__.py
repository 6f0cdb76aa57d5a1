"""r1mega.training"""
