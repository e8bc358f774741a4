"""planforge.cli"""
