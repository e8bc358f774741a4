"""planforge.runtime"""
