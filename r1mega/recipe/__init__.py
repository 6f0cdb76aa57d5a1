"""r1mega.recipe"""
