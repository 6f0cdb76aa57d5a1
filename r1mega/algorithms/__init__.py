"""r1mega.algorithms"""
