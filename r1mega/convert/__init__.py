"""r1mega.convert"""
