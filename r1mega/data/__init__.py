"""r1mega.data"""
